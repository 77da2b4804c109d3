#!/usr/bin/env bash
# Runs a scenario on real Xen: boots N Xen hosts as QEMU guests (Xen 4.17 + a Debian
# dom0 from build.sh), joined by two bridges (private, public) in a network namespace of
# their own, each running vwd with the xl driver in dom0; host 1 is the head and runs the
# scenario's script; then everything is torn down.
#
#   sudo scripts/xenlab/run.sh SCENARIO [OUT]    # scenarios: scripts/xenlab/scenarios/*.sh
#
# OUT (default perf/xenlab/SCENARIO) receives each host's serial log, vwd log, guest
# consoles and the scenario's results. Environment: VW_XENLAB_CACHE (build.sh's cache),
# VW_BIN (folder with vw and vwd; default $CARGO_TARGET_DIR/debug), VW_XENLAB_ACCEL
# (tcg or kvm; default: kvm if a probe boots a stock kernel with it, else tcg),
# VW_XENLAB_TIMEOUT (seconds for the whole run, default 3600), VW_SCENARIO_* (passed to
# the scenario in every dom0, e.g. VW_SCENARIO_WARM=1 for lazy's warm runs). A scenario that sets
# PACKAGE=1 installs vw from its Debian package in each fresh dom0 and configures it as
# an operator would: the run then brings only the package (VW_DEB, default the newest
# target/debian/vw_*.deb, from scripts/package/build.sh), the lab's cluster settings
# and the workspaces, and makes no keys, ids or vwd configs itself.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
C=${VW_XENLAB_CACHE:-/var/cache/vw-xenlab}
SCENARIO=${1:?usage: run.sh SCENARIO [OUT]}
OUT=$(realpath -m "${2:-$repo/perf/xenlab/$SCENARIO}")
BIN=${VW_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug}
TIMEOUT=${VW_XENLAB_TIMEOUT:-3600}
log() { echo "xenlab: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "run as root (network namespaces, taps)"; exit 1; }
[ -f "$here/scenarios/$SCENARIO.sh" ] || { log "no scenario $SCENARIO in $here/scenarios"; exit 2; }
for f in "$C/boot/xen.elf" "$C/boot/vmlinuz" "$C/boot/initrd.img" "$C/dom0.img" "$C/images/worker.img"; do
  [ -e "$f" ] || { log "$f is missing: run scripts/xenlab/build.sh first"; exit 1; }
done
command -v qemu-system-x86_64 >/dev/null || { log "qemu-system-x86_64 is missing: scripts/install-deps.sh --xenlab"; exit 1; }

# The scenario says how many hosts and how big: HOSTS, HOST_CPUS (QEMU vCPUs, Xen's
# physical CPUs), HOST_MEM and DOM0_MEM (MiB).
HOSTS=1 HOST_CPUS=2 HOST_MEM=2048 DOM0_MEM=768 PACKAGE=0
# shellcheck source=/dev/null
. "$here/scenarios/$SCENARIO.sh"
if [ "$PACKAGE" = 1 ]; then
  DEB=${VW_DEB:-$(ls -t "$repo"/target/debian/vw_*.deb 2>/dev/null | head -1)}
  [ -f "$DEB" ] || { log "no package: bash scripts/package/build.sh (or set VW_DEB)"; exit 1; }
else
  for b in vw vwd; do [ -x "$BIN/$b" ] || { log "$BIN/$b is missing: cargo build --bins (or set VW_BIN)"; exit 1; }; done
fi

NS=vwlab$$
RUN=$(mktemp -d /tmp/vwlab.XXXXXX)
SHARE=$RUN/share
pids=()
teardown() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$RUN"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# ---- acceleration: KVM only where it boots a stock kernel ----------------------------
# The probe's answer is kept until the machine reboots (/run is a tmpfs).
accel() {
  if [ -n "${VW_XENLAB_ACCEL:-}" ]; then echo "$VW_XENLAB_ACCEL"; return; fi
  [ -w /dev/kvm ] || { echo tcg; return; }
  local known=/run/vw-xenlab-accel probe=$RUN/kvm-probe.log
  [ -s "$known" ] && { cat "$known"; return; }
  timeout 30 qemu-system-x86_64 -accel kvm -cpu host -m 256 -kernel "$C/kernels/vmlinuz-vw-guest" \
    -append "console=ttyS0 panic=-1" -display none -monitor none -serial "file:$probe" \
    -no-reboot >/dev/null 2>&1 || true
  if grep -q "Linux version" "$probe" 2>/dev/null; then echo kvm; else echo tcg; fi | tee "$known"
}
ACCEL=$(accel)
if [ "$ACCEL" = kvm ]; then QACCEL=(-accel kvm -cpu host); else QACCEL=(-accel tcg -cpu qemu64); fi
log "$SCENARIO: $HOSTS host(s), acceleration $ACCEL"

# ---- the share every dom0 mounts: binaries, configs, keys, the scenario --------------
mkdir -p "$SHARE/out"
cp "$here/dom0/host.sh" "$SHARE/host.sh"
# The scenario as each dom0 sources it, after the VW_SCENARIO_* settings of this run
# (the dom0s do not inherit this environment).
{
  for v in $(compgen -v VW_SCENARIO_ || true); do printf '%s=%q\n' "$v" "${!v}"; done
  cat "$here/scenarios/$SCENARIO.sh"
} > "$SHARE/scenario.sh"
cp -r "$here/workspaces" "$SHARE/workspaces"
echo "$ACCEL" > "$SHARE/accel"
install -m 0600 "$C/lab_key" "$SHARE/lab_key"
addr() { echo "10.77.0.$((10 + $1))"; }
# Memory and CPUs are measured by vwd (`xl info`). The lab's hosts have one or two
# emulated CPUs, which its guests share: allow four vCPUs on each.
lab_cluster() { cat "$here/cluster.toml"; printf '\n[host]\nvcpus_per_cpu = 4\n'; }
# Without the package: the lab's binaries, vwd unit, VO and each host's vwd.toml, made
# here (host.sh installs them in dom0).
lab_configs() {
  mkdir -p "$SHARE/bin" "$SHARE/vo"
  cp "$BIN/vw" "$BIN/vwd" "$SHARE/bin/"
  cp "$here/../../packaging/vwd.service" "$SHARE/vwd.service"
  local n m ids=()
  for n in $(seq "$HOSTS"); do
    mkdir -p "$SHARE/host$n"
    printf 'role = "host"\ndata_dir = "%s"\nlisten = []\n' "$SHARE/host$n" > "$RUN/id.toml"
    ids+=("$("$BIN/vwd" --config "$RUN/id.toml" --print-id)")
  done
  "$BIN/vw" vo create lab --vo-dir "$SHARE/vo" >/dev/null
  { lab_cluster; echo; "$BIN/vw" vo export lab --vo-dir "$SHARE/vo"; } > "$SHARE/cluster.toml"
  for n in $(seq "$HOSTS"); do
    {
      [ "$n" = 1 ] && echo 'role = "head"' || echo 'role = "host"'
      echo "name = \"host$n\""
      echo 'data_dir = "/var/lib/vw"'
      echo "listen = [\"/ip4/$(addr "$n")/tcp/7400\"]"
      echo 'cluster_config = "/vwlab/cluster.toml"'
      for m in $(seq "$HOSTS"); do
        [ "$m" = "$n" ] && continue
        printf '\n[[peer]]\nname = "host%s"\nid = "%s"\naddr = "/ip4/%s/tcp/7400"\n' \
          "$m" "${ids[$((m - 1))]}" "$(addr "$m")"
        [ "$m" = 1 ] && echo 'head = true'
      done
    } > "$SHARE/host$n/vwd.toml"
  done
}
if [ "$PACKAGE" = 1 ]; then
  mkdir -p "$SHARE/pkg"
  cp "$DEB" "$SHARE/pkg/"
  lab_cluster > "$SHARE/cluster.toml"
else
  lab_configs
fi

# ---- the network: a private and a public bridge, one tap per host on each -------------
ip netns add "$NS"
ip -n "$NS" link set lo up
for b in 0 1; do
  ip -n "$NS" link add br$b type bridge
  ip -n "$NS" link set br$b up
done
for n in $(seq "$HOSTS"); do
  for b in 0 1; do
    ip -n "$NS" tuntap add "t${b}h$n" mode tap
    ip -n "$NS" link set "t${b}h$n" master br$b up
  done
done

# ---- boot the hosts ---------------------------------------------------------------------
T0=$(date +%s.%N)
for n in $(seq "$HOSTS"); do
  mkdir -p "$SHARE/out/host$n"
  XENCMD="console=com1 com1=115200,8n1 dom0_mem=${DOM0_MEM}M,max:${DOM0_MEM}M dom0_max_vcpus=$HOST_CPUS noreboot"
  DOM0CMD="root=/dev/vda ro console=hvc0 vwlab.run vwlab.host=$n vwlab.addr=$(addr "$n")/16"
  ip netns exec "$NS" qemu-system-x86_64 "${QACCEL[@]}" -smp "$HOST_CPUS" -m "$HOST_MEM" -no-reboot \
    -kernel "$C/boot/xen.elf" -append "$XENCMD" \
    -initrd "$C/boot/vmlinuz $DOM0CMD,$C/boot/initrd.img" \
    -drive "file=$C/dom0.img,if=virtio,format=raw,snapshot=on" \
    -virtfs "local,path=$SHARE,mount_tag=vwlab,security_model=none" \
    -virtfs "local,path=$C/images,mount_tag=vwimages,security_model=none,readonly=on" \
    -netdev "tap,id=n0,ifname=t0h$n,script=no,downscript=no" -device "virtio-net-pci,netdev=n0,mac=52:54:00:77:00:$(printf %02x "$n")" \
    -netdev "tap,id=n1,ifname=t1h$n,script=no,downscript=no" -device "virtio-net-pci,netdev=n1,mac=52:54:00:77:01:$(printf %02x "$n")" \
    -display none -monitor none -serial "file:$SHARE/out/host$n/serial.log" &
  pids+=($!)
done

# Wait for every host to power off; stop early on a crash or the deadline.
status=0
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
  alive=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
  [ "$alive" = 0 ] && break
  if grep -qsE "Hardware Dom0 crashed|Panic on CPU" "$SHARE"/out/host*/serial.log; then
    log "Xen crashed (see serial.log)"; status=1; break
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then log "the run took more than $TIMEOUT s"; status=1; break; fi
  sleep 2
done
elapsed=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}')

# ---- results ----------------------------------------------------------------------------
rm -rf "$OUT"; mkdir -p "$OUT"
cp -r "$SHARE/out/." "$OUT/"
echo "$ACCEL" > "$OUT/accel"
for n in $(seq "$HOSTS"); do
  rc=$(cat "$SHARE/out/host$n/rc" 2>/dev/null || echo "none")
  log "host$n: scenario exit $rc"
  [ "$rc" = 0 ] || status=1
done
log "$SCENARIO: $( [ $status = 0 ] && echo passed || echo FAILED ) in ${elapsed} s on $ACCEL; results in $OUT"
[ -f "$OUT/host1/summary.md" ] && cat "$OUT/host1/summary.md"
exit $status
