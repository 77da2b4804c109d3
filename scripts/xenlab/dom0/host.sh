#!/bin/sh
# One host's part of a lab run, in dom0 (started by vwlab-boot with the host's number).
# Starts vwd with the xl driver; host 1 (the head) then runs the scenario's `on_head_host`
# function and marks the run done; the others serve until then. A scenario with a
# `run_host` function (one that installs the package) runs that instead.
set -u
N=$1
OUT=/vwlab/out/host$N
. /vwlab/scenario.sh
# A scenario that installs the package does its host's part itself, from a fresh dom0.
if type run_host > /dev/null 2>&1; then run_host "$N"; exit $?; fi
export PATH=/vwlab/bin:$PATH VW_STORE=/var/lib/vw VW_VO_DIR=/vwlab/vo VW_CLUSTER=/vwlab/cluster.toml
mkdir -p /var/lib/vw
install -m 0600 "/vwlab/host$N/node.key" /var/lib/vw/node.key

# Times a command in ms: `t NAME cmd...` appends NAME,ms,rc to $OUT/times.csv.
t() {
  local name=$1; shift
  local a b; a=$(date +%s%N); "$@"; rc=$?; b=$(date +%s%N)
  echo "$name,$(( (b - a) / 1000000 )),$rc" >> "$OUT/times.csv"
  return $rc
}

# vwd runs under the unit the package ships (packaging/vwd.service: its capabilities and
# sandbox are what this run checks), with a drop-in for the lab's paths, and a `vw`
# group for its socket as the package makes.
start_vwd() {
  getent group vw > /dev/null || groupadd --system vw
  # What the package's modules-load.d loads at boot (lazy disks): the lab's dom0 image
  # loads nbd; the hand-over's device-mapper and loop are loaded here.
  modprobe -a nbd dm_mod loop || echo "modprobe nbd dm_mod loop failed: lazy disks unavailable or unmapped"
  install -m 0644 /vwlab/vwd.service /etc/systemd/system/vwd.service
  mkdir -p /etc/systemd/system/vwd.service.d
  cat > /etc/systemd/system/vwd.service.d/lab.conf <<EOF
[Unit]
ConditionPathExists=
[Service]
ExecStartPre=
ExecStartPre=/vwlab/bin/vwd --check-config /vwlab/host$N/vwd.toml
ExecStart=
ExecStart=/vwlab/bin/vwd --config /vwlab/host$N/vwd.toml
Environment=RUST_LOG=${RUST_LOG:-info}
StandardOutput=truncate:$OUT/vwd.out
StandardError=truncate:$OUT/vwd.log
EOF
  systemctl daemon-reload
  if ! systemctl start vwd; then
    systemctl status vwd > "$OUT/vwd.status" 2>&1
    echo "vwd did not start; see vwd.log and vwd.status"; return 1
  fi
  for i in $(seq 120); do grep -q '^socket ' "$OUT/vwd.out" 2>/dev/null && return 0; sleep 1; done
  echo "vwd did not start; see vwd.log"; return 1
}

stop_vwd() {
  systemctl show vwd -p CapabilityBoundingSet -p NRestarts > "$OUT/vwd.unit" 2>&1
  systemctl stop vwd
}

# Guest consoles are kept with the results.
save_consoles() { cp /var/log/xen/console/*.log "$OUT/" 2>/dev/null || true; }

if [ "$N" = 1 ]; then
  prepare 2>&1 || { echo "prepare failed"; exit 1; }
  start_vwd || exit 1
  on_head_host
  rc=$?
  save_consoles
  stop_vwd
  touch /vwlab/out/done
  exit $rc
else
  start_vwd || exit 1
  # A scenario may serve the head meanwhile (snapshots of `xl list`); or just wait.
  if type serve > /dev/null 2>&1; then serve; else
    while [ ! -e /vwlab/out/done ]; do sleep 2; done
  fi
  save_consoles
  stop_vwd
  exit 0
fi
