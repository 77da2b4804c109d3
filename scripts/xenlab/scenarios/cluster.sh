# cluster: the paper's virtual cluster on real Xen, and its Fig. 2(b) operations.
# Two Xen hosts; vw deploys a head (NFS server, Slurm controller, public NIC) and two
# workers (NFS clients, Slurm nodes) from images it stages, waits for every guest to say
# it is up with the addresses, MACs, swap and mounts vw gave it, then checks from inside
# the guests that Slurm lists every worker and runs an MPI job across them, and drives
# pause, unpause, stop and unstage through the real xl, comparing `vw status` with
# `xl list` on every host after each. Then it times the same xl operations directly in
# dom0, for the emulation's slowdown beside the paper's figures.
# One emulated CPU per host: two hosts of two vCPUs each on this machine's two cores
# left Xen's vCPU threads preempted by each other, and guests took 6-10 min to boot.
HOSTS=2 HOST_CPUS=1 HOST_MEM=3072 DOM0_MEM=768

prepare() {
  t import-head vw image import /vwimages/head.img --name lab/head:1 &&
  t import-worker vw image import /vwimages/worker.img --name lab/worker:1
}

on_head_host() {
  OUT=/vwlab/out/host1
  check() { # check NAME cmd...: runs, records ok/FAILED in checks.txt
    name=$1; shift
    if "$@" >> "$OUT/checks.log" 2>&1; then echo "ok      $name" >> "$OUT/checks.txt"
    else echo "FAILED  $name" >> "$OUT/checks.txt"; FAILED=1; fi
  }
  FAILED=0
  : > "$OUT/checks.txt"
  t deploy vw deploy --vo lab /vwlab/workspaces/cluster.xml > "$OUT/deploy.txt" 2>&1
  check "deploy: every guest ready with its addresses, MACs, swap and NFS mounts" [ $? = 0 ]
  cat "$OUT/deploy.txt"
  # A guest's private address, as it reported it (vw checked it against its own).
  guest_ip() { sed -n "s/.*host=$1 .*nics=eth0=[^=]*=\([0-9.]*\)\/.*/\1/p" "$OUT/deploy.txt" | head -1; }
  on_guest() { # on_guest NAME cmd: runs cmd in guest NAME over ssh
    ip=$(guest_ip "$1"); shift
    ssh -n -i /vwlab/lab_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
      -o ConnectTimeout=30 -o LogLevel=ERROR "root@$ip" "$@"
  }
  on_head() { # like on_guest head, but passes stdin on
    ssh -i /vwlab/lab_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
      -o ConnectTimeout=30 -o LogLevel=ERROR "root@$(guest_ip head)" "$@"
  }
  check "ssh to the head" on_head true
  check "the head's public NIC has its public address" on_head 'ip -4 -o addr show eth1 | grep -q "inet 172\.30\."'
  # Both integration strategies: edits to the head's image (cloud-init finds no seed
  # and stays off) and cloud-init from vw's seed volume on the workers.
  strategies() {
    on_guest head 'cloud-init status' | grep -qx 'status: disabled' &&
      on_guest worker1 'cloud-init status' | grep -qx 'status: done' &&
      on_guest worker2 'cloud-init status' | grep -qx 'status: done'
  }
  check "the head was integrated by edits, the workers by cloud-init from the seed" strategies
  routes() {
    on_guest head 'ip route show default' | grep -q 'via 172\.30\.0\.1 dev eth1' &&
      on_guest worker1 'ip route show default' | grep -q 'via 10\.77\.0\.1 dev eth0' &&
      on_guest worker2 'ip route show default' | grep -q 'via 10\.77\.0\.1 dev eth0'
  }
  check "each guest's default route is the gateway vw gave it" routes
  slurm_up() {
    for i in $(seq 60); do
      n=$(on_head 'sinfo -h -N -o "%N %t"' | grep -cE '^worker[0-9]+ (idle|mix|alloc)')
      [ "$n" = 2 ] && { on_head 'sinfo -N'; return 0; }
      sleep 5
    done
    on_head 'sinfo -N; scontrol show nodes' ; return 1
  }
  check "slurm lists every worker, up" slurm_up
  on_head 'timeout 300 srun -N2 -n2 hostname' > "$OUT/srun.txt" 2>&1
  check "srun -N2 hostname ran on worker1 and worker2" \
    sh -c "grep -qx worker1 '$OUT/srun.txt' && grep -qx worker2 '$OUT/srun.txt'"
  on_head 'cat > /home/hello.c' <<'EOC'
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int rank, size; char host[256];
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  gethostname(host, sizeof host);
  printf("hello from rank %d of %d on %s\n", rank, size, host);
  MPI_Finalize();
  return 0;
}
EOC
  check "mpicc builds the job on the head, into the NFS export" on_head 'mpicc -o /home/hello /home/hello.c'
  on_head 'cd /home && timeout 600 salloc -N2 -n2 mpiexec -n 2 /home/hello' > "$OUT/mpi.txt" 2>&1
  cat "$OUT/mpi.txt"
  check "an MPI job over NFS runs across both workers" \
    sh -c "grep -q 'rank 0 of 2 on worker' '$OUT/mpi.txt' && grep -q 'rank 1 of 2 on worker' '$OUT/mpi.txt' && [ \$(grep -o 'on worker[0-9]*' '$OUT/mpi.txt' | sort -u | wc -l) = 2 ]"
  on_head 'swapon --show; findmnt -t nfs,nfs4' > "$OUT/head-mounts.txt" 2>&1
  inspect_guests

  # The lifecycle through the real xl; after each step `vw status` against `xl list`.
  snapshot initial
  for op in pause unpause stop unstage; do
    t "$op" vw "$op" lab > "$OUT/$op.txt" 2>&1
    check "vw $op lab" [ $? = 0 ]
    snapshot "$op"
    check "after $op, vw status agrees with xl list on every host" agrees "$op"
  done

  direct_xl
  summary
  return $FAILED
}

# What each guest's own system says about the services the checks need, for a failed
# check's cause: guest-NAME.txt.
inspect_guests() {
  sed -n 's/.*host=\([a-z0-9-]*\) .*/\1/p' "$OUT/deploy.txt" |
    while read -r name; do
      on_guest "$name" \
        'uptime; free -m; systemctl --failed --no-pager; findmnt -t nfs,nfs4; swapon --show
         ip route; cloud-init status --long
         systemctl status --no-pager munge slurmd slurmctld nfs-server 2>&1 | grep -E "^[^ ]|Active:"
         journalctl -b --no-pager -u munge -u slurmd -u slurmctld | tail -40
         dmesg | grep -iE "oom|killed process" | tail' > "$OUT/guest-$name.txt" 2>&1
    done
}

# Every host writes its `xl list` for snapshot NAME; the head also `vw status`.
snapshot() {
  echo "$1" > /vwlab/out/snap.tmp && mv /vwlab/out/snap.tmp /vwlab/out/snap
  vw status > "$OUT/status-$1.txt" 2>&1
  xl list > "$OUT/xl-$1.txt" 2>&1
  for n in $(seq 2 "$HOSTS"); do
    for i in $(seq 120); do [ -e "/vwlab/out/host$n/xl-$1.txt" ] && break; sleep 1; done
  done
}

# Serves snapshots on the other hosts while the head runs.
serve() {
  last=""
  while [ ! -e /vwlab/out/done ]; do
    s=$(cat /vwlab/out/snap 2>/dev/null)
    if [ -n "$s" ] && [ "$s" != "$last" ]; then
      xl list > "$OUT/xl-$s.tmp" 2>&1 && mv "$OUT/xl-$s.tmp" "$OUT/xl-$s.txt"
      last=$s
    fi
    sleep 1
  done
}

# Each VM `vw status` lists is on its host's `xl list` in the same state, and no domain
# of the deployment is on any host that vw does not list.
agrees() {
  awk -v snap="$1" '
    FNR == 1 { file = FILENAME }
    # vw status: host, driver, VM, deployment, state, ...
    file ~ /status-/ && FNR > 1 && $4 == "lab" { want[$3] = $5; host[$3] = $1; next }
    file ~ /xl-/ && FNR > 1 {
      h = file; sub(/.*\/host/, "host", h); sub(/\/.*/, "", h)
      st = ($5 ~ /p/) ? "paused" : "running"
      have[$1] = st; where[$1] = h
    }
    END {
      bad = 0
      for (vm in want) {
        should = want[vm]
        if (should != "running" && should != "paused") should = "absent"
        got = (vm in have) ? have[vm] : "absent"
        if (got != "absent" && where[vm] != host[vm]) got = got " on " where[vm]
        if (got != should) { print vm ": vw says " want[vm] " on " host[vm] ", xl says " got; bad = 1 }
      }
      for (vm in have) if (vm ~ /^lab-/ && !(vm in want)) { print vm ": on xl list, not in vw status"; bad = 1 }
      exit bad
    }' "$OUT/status-$1.txt" /vwlab/out/host*/xl-"$1".txt
}

# The same xl operations timed directly in dom0: the emulation's own cost.
direct_xl() {
  cp --sparse=always /vwimages/worker.img /var/lib/direct.img
  truncate -s 200M /var/lib/direct.swap && mkswap /var/lib/direct.swap > /dev/null
  cat > /etc/xen/direct.cfg <<EOC
name = "direct"
type = "pv"
kernel = "/var/lib/vw-kernels/vmlinuz-vw-guest"
ramdisk = "/var/lib/vw-kernels/initrd-vw-guest.img"
root = "/dev/xvda1 ro"
extra = "console=hvc0 net.ifnames=0"
memory = 384
vcpus = 1
disk = [ "format=raw, vdev=xvda1, access=rw, target=/var/lib/direct.img", "format=raw, vdev=xvda2, access=rw, target=/var/lib/direct.swap" ]
vif = [ "bridge=xenbr0" ]
on_poweroff = "destroy"
EOC
  t xl-create-p xl create -p /etc/xen/direct.cfg
  t xl-unpause xl unpause direct
  # Let it boot (its guest reports as vw's do) before pausing and stopping it.
  for i in $(seq 900); do
    D=$(xl domid direct) && xenstore-read "/local/domain/$D/data/vw-ready" > /dev/null 2>&1 && break
    sleep 1
  done
  t xl-pause xl pause direct
  t xl-unpause-again xl unpause direct
  t xl-shutdown-w xl shutdown -w direct
  for i in $(seq 60); do xl list direct > /dev/null 2>&1 || break; sleep 0.5; done
  rm -f /var/lib/direct.img /var/lib/direct.swap
}

summary() {
  phase() { awk -v p="$1" '$1 == p && $3 == "s" {print $2}' "$OUT/deploy.txt"; }
  took() { awk -F, -v n="$1" '$1 == n {printf "%.3f", $2 / 1000}' "$OUT/times.csv"; }
  {
    echo "# cluster on Xen 4.17 ($(cat /vwlab/accel), nested in QEMU), $HOSTS hosts"
    echo
    echo "A head (NFS server, Slurm controller, public NIC) and 2 workers, deployed by vw"
    echo "with the xl driver from images it staged; checks from inside the guests:"
    echo
    echo '```'
    cat "$OUT/checks.txt"
    echo '```'
    echo
    echo "## Fig. 2(b): the operations across the cluster"
    echo
    echo "vw: the deploy's phases (stage, load, create, ready), then each \`vw OP lab\` as run"
    echo "on the head. xl: the same operation on one domain, directly in dom0, same run."
    echo "Slowdown: xl here over the paper's figure."
    echo
    echo "| operation | vw, cluster (s) | xl in dom0, 1 domain (s) | paper (s) | slowdown |"
    echo "|---|---:|---:|---:|---:|"
    row() { # name vw xl paper
      slow=$(awk -v a="$3" -v b="$4" 'BEGIN { if (a != "" && b != "") printf "%.2f×", a / b; else print "–" }')
      echo "| $1 | ${2:-–} | ${3:-–} | ${4:-–} | $slow |"
    }
    row stage "$(phase stage)" "" ""
    row load "$(phase load)" "$(took xl-create-p)" 2.83
    row "create (start)" "$(phase create)" "$(took xl-unpause)" 0.453
    row "ready (guest's word)" "$(phase ready)" "" ""
    row pause "$(took pause)" "$(took xl-pause)" 0.27
    row unpause "$(took unpause)" "$(took xl-unpause-again)" ""
    row stop "$(took stop)" "$(took xl-shutdown-w)" 1.01
    row unstage "$(took unstage)" "" ""
    echo
    echo "Every timed step (name, ms, exit):"
    echo
    echo '```'
    cat "$OUT/times.csv"
    echo '```'
  } > "$OUT/summary.md"
}
