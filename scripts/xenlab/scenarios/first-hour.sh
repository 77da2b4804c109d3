# first-hour: the README's order of commands (docs/operations.md, "From package to a
# running virtual cluster", steps 1-9) as an operator runs them, on two fresh Xen hosts
# with nothing of vw on them but the package scripts/package/build.sh made. Each host
# installs it with dpkg, makes its configs from the packaged examples, prints its peer
# id for the others, checks its config and starts vwd under systemd; a non-root
# operator in the `vw` group uses the socket; the head creates the VO whose entry every
# host adds (then restarts vwd), imports the images through the running vwd, deploys
# with `vw status --watch` running beside, then drives status, pause, unpause, stop and
# unstage on every host, and upgrades the package in place. Where the lab departs from
# an operator's cluster: its cluster settings (scripts/xenlab/cluster.toml stand for
# the operator's edits of the example), its images, and a workspace sized to two
# emulated hosts (workspaces/grid3.xml: the example's head and two of its workers).
HOSTS=2 HOST_CPUS=1 HOST_MEM=3072 DOM0_MEM=768 PACKAGE=1

run_host() {
  N=$1
  SYNC=/vwlab/out/sync
  mkdir -p "$SYNC"
  : > "$OUT/steps.txt"
  role=host
  [ "$N" = 1 ] && role=head

  # step NAME cmd...: runs cmd (its output to steps.log) and records "ok|FAILED NAME
  # (ms)" in steps.txt and times.csv; a failure is marked for every host and ends the run.
  step() {
    name=$1; shift
    echo "== $name: $*" >> "$OUT/steps.log"
    a=$(date +%s%N)
    if "$@" >> "$OUT/steps.log" 2>&1; then r=ok; else r=FAILED; fi
    b=$(date +%s%N)
    printf '%-6s %s (%d ms)\n' "$r" "$name" $(((b - a) / 1000000)) >> "$OUT/steps.txt"
    echo "$name,$(((b - a) / 1000000)),$r" >> "$OUT/times.csv"
    [ "$r" = ok ] && return 0
    echo "host$N: $name" >> "$SYNC/failed"
    finish 1
  }
  # await FILE: another host's part is written to the share (or one has failed).
  await() {
    for _ in $(seq 1800); do
      [ -e "$1" ] && return 0
      [ -s "$SYNC/failed" ] && { echo "another host failed: $(cat "$SYNC/failed")"; return 1; }
      sleep 1
    done
    return 1
  }
  # vwd answers on its socket (`vw status` through it lists hosts; without one, vw
  # would read the store itself and list this host's capacity instead).
  serving() {
    vw --json status | grep -q '"hosts"'
  }
  # Publishes a file to the other hosts whole.
  publish() { cat > "$SYNC/$1.tmp" && mv "$SYNC/$1.tmp" "$SYNC/$1"; }
  finish() {
    journalctl -u vwd --no-pager > "$OUT/vwd.log" 2>&1
    cp /var/log/xen/console/*.log "$OUT/" 2>/dev/null
    [ "$N" = 1 ] && touch /vwlab/out/done
    exit "$1"
  }

  # 1. Install.
  step "dpkg -i the package" dpkg -i /vwlab/pkg/vw_*.deb
  step "the package made the group vw" getent group vw
  step "vwd.service is enabled" systemctl is-enabled vwd
  step "vwd waits for its config" sh -c '! systemctl is-active -q vwd'
  # 2. The cluster config, the same on every host: the example, with the lab's values.
  step "cluster.toml from the example" cp /usr/share/doc/vw/examples/cluster.toml /etc/vw/cluster.toml
  step "the lab's cluster settings" cp /vwlab/cluster.toml /etc/vw/cluster.toml
  # 3. This host's vwd.toml: role, name, listen; its peer id out, the others' in.
  step "vwd.toml from the example" cp /usr/share/doc/vw/examples/vwd.toml /etc/vw/
  step "role, name and listen set" sed -i -e "s/^role = .*/role = \"$role\"/" \
    -e "s/^name = .*/name = \"host$N\"/" \
    -e "s#^listen = .*#listen = [\"/ip4/10.77.0.$((10 + N))/tcp/7400\"]#" \
    -e '/^\[\[peer\]\]/,$d' /etc/vw/vwd.toml
  step "vwd --print-id" sh -c 'vwd --config /etc/vw/vwd.toml --print-id > /root/id'
  publish "id$N" < /root/id
  for m in $(seq "$HOSTS"); do
    [ "$m" = "$N" ] && continue
    step "host$m's peer id" await "$SYNC/id$m"
    printf '\n[[peer]]\nname = "host%s"\nid = "%s"\naddr = "/ip4/10.77.0.%s/tcp/7400"\n' \
      "$m" "$(cat "$SYNC/id$m")" $((10 + m)) >> /etc/vw/vwd.toml
    [ "$m" = 1 ] && echo 'head = true' >> /etc/vw/vwd.toml
  done
  cp /etc/vw/vwd.toml "$OUT/vwd.toml"
  # 4. Check and start.
  step "vwd --check-config" sh -c "vwd --check-config /etc/vw/vwd.toml > $OUT/check-config.txt 2>&1"
  step "the check names the xl driver, the vw group, the key" sh -c \
    "grep -qx 'Xen driver xl' $OUT/check-config.txt && grep -q 'mode 0660, group id' $OUT/check-config.txt && grep -q 'peer 12D3' $OUT/check-config.txt"
  step "systemctl start vwd" systemctl start vwd
  step "vwd serves its socket" serving
  # (journald may take a moment to have vwd's lines)
  journal_says() {
    for _ in $(seq 30); do
      journalctl -u vwd --no-pager > "$OUT/journal-start.txt"
      grep -q 'Xen driver' "$OUT/journal-start.txt" && grep -q 'local socket' "$OUT/journal-start.txt" &&
        grep -q 'link mbit_s' "$OUT/journal-start.txt" && return 0
      sleep 1
    done
    return 1
  }
  step "journalctl -u vwd: driver, link, socket" journal_says
  # 5. An operator without root.
  step "adduser alice" adduser --disabled-password --gecos '' alice
  step "adduser alice vw" adduser alice vw
  # (alice cannot write to the lab's share: her output is written by root.)
  step "alice: vw status through the socket" sh -c "su alice -c 'vw status' > $OUT/alice-status.txt 2>&1"
  # 6. The VO: made on the head, its entry in every host's cluster config.
  if [ "$N" = 1 ]; then
    step "vw vo create grid3" vw vo create grid3
    vw vo export grid3 | publish vo
  fi
  step "the VO's entry" await "$SYNC/vo"
  { echo; cat "$SYNC/vo"; } >> /etc/vw/cluster.toml
  step "systemctl restart vwd" systemctl restart vwd
  step "vwd serves again" serving
  touch "$SYNC/restarted$N"
  if [ "$N" != 1 ]; then
    step "the head is done" await /vwlab/out/done
    finish 0
  fi
  for m in $(seq 2 "$HOSTS"); do step "host$m restarted" await "$SYNC/restarted$m"; done

  # 7. Images, through the running vwd.
  cd /vwimages || finish 1
  step "import head.img" vw --store /var/lib/vw image import head.img --name grid3/head:1.0
  step "import worker.img" vw --store /var/lib/vw image import worker.img --name grid3/worker:1.0
  cd / || finish 1
  # 8. Deploy, watched.
  vw status --watch 5 > "$OUT/watch.txt" 2>&1 &
  watch=$!
  step "vw deploy --vo grid3" sh -c \
    "vw --store /var/lib/vw deploy --vo grid3 /vwlab/workspaces/grid3.xml > $OUT/deploy.txt 2>&1"
  kill "$watch"
  step "vw status --watch showed each host's phase and bytes" sh -c \
    "grep -q '^grid3 under way: ' $OUT/watch.txt && grep -qE '^  host1 +(stage|load|start)' $OUT/watch.txt && grep -qE '^  host2 +(stage|load|start)' $OUT/watch.txt"
  # 9. Run and end, on every host.
  step "vw status grid3" sh -c "vw status grid3 > $OUT/status.txt 2>&1"
  step "every VM running" sh -c "[ \$(grep -c ' running' $OUT/status.txt) -ge 3 ]"
  step "vw pause grid3" vw pause grid3
  step "vw unpause grid3" vw unpause grid3
  step "vw stop grid3" vw stop grid3
  step "vw unstage grid3" vw unstage grid3
  step "no guest left on this host" sh -c "[ \$(xl list | tail -n +2 | grep -vc '^Domain-0') = 0 ]"
  step "alice: vw status after" sh -c "su alice -c 'vw status' > $OUT/alice-status-after.txt 2>&1"
  # The upgrade: the same package again restarts vwd, the store stays.
  before=$(systemctl show -p MainPID --value vwd)
  step "upgrade: dpkg -i the package again" dpkg -i /vwlab/pkg/vw_*.deb
  step "vwd serves after the upgrade" serving
  step "the upgrade restarted vwd" sh -c "[ \"\$(systemctl show -p MainPID --value vwd)\" != $before ]"
  step "the images are still there" sh -c "vw image ls > $OUT/images.txt && grep -q grid3/worker:1.0 $OUT/images.txt"
  {
    echo "# first-hour on $(cat /vwlab/accel) Xen: the README's commands on fresh hosts"
    echo
    echo '```'
    cat "$OUT/steps.txt"
    echo '```'
    echo
    echo '```'
    cat "$OUT/deploy.txt"
    echo '```'
  } > "$OUT/summary.md"
  finish 0
}
