# lazy: booting before the image has arrived, on real Xen (issue 19). Two Xen hosts; a
# two-VM cluster of the Debian worker image places one VM on each: host 1 (the head)
# holds the image, host 2 lacks it unless a run before left it cached. Four deploys in
# turn, each until every guest reports ready (and, lazily, until every image is whole),
# then stopped and unstaged:
#   lazy-cold, full-cold   host 2's copy evicted first (vw image rm, vw gc); lazy-cold
#                          is the image's first lazy boot: vw keeps its boot trace
#   lazy-traced            cold again, with that trace (its chunks fetched first)
#   full-warm, lazy-warm   (VW_SCENARIO_WARM=1) host 2 holds the image from the run before
# VW_SCENARIO_BASE=1 runs the same three with the base OS cached: before each, host 2
# drops its images and then imports guest-base.img (the base OS alone, on which the
# worker image is built), so it lacks only the worker's own chunks; the deploys are
# lazy-cached (the image's first lazy boot), full-cached and lazy-cached-traced.
# VW_SCENARIO_CAP=50% (or 40Mbit) deploys with `--cap` (every deploy): the stage held to
# a share of each link (run 8, 8Mbit: the lazy deploy lost its VMs at load all the same).
# Each deploy's report (--json, OUT/deploy-NAME.json) is kept beside times.csv (each
# step's wall time, ms); docs/experiments.md's lab table is read from them.
HOSTS=2 HOST_CPUS=1 HOST_MEM=3072 DOM0_MEM=768

prepare() {
  t import vw image import /vwimages/worker.img --name lab/worker:1
}

# What each device-mapper device maps onto now: a lazy disk's map is over its NBD
# device while the image arrives, over a loop device on the local copy once handed over.
maps() {
  for d in /sys/block/dm-*; do
    [ -e "$d" ] && echo "$(basename "$d") -> $(ls "$d/slaves" | tr '\n' ' ')"
  done
}

# While a hotplug script runs (xl's `block add` has timed out in lazy deploys, decision
# 86), what it and the processes around it wait in, appended to $OUT/hotplug.log.
hotplug() {
  pgrep -f /etc/xen/scripts/block > /dev/null || return 0
  { date +%T.%N
    ps -eo pid,ppid,ni,stat,wchan:24,etime,time,rss,args \
      | grep -E 'scripts/block|xenstore|udev|blkid|losetup|stat |flock|vwd|xl ' | grep -v grep
    # Run 7 saw a `dirname` take 13 s (2 s of CPU) and the whole dom0 crawl while
    # vwd used little CPU: memory, and who has the CPU (kernel threads included).
    free -m | head -3
    grep -E '^(Dirty|Writeback|MemAvailable|SwapFree):' /proc/meminfo | tr -s ' ' | paste -sd ' '
    ps -eo pid,stat,time,rss,comm --sort=-time | head -6
  } >> "$OUT/hotplug.log" 2>&1
}

# How slow dom0 is: a turn of a 1 s loop that took over 3 s, logged to $OUT/slow.log
# with the time it took (runs 7 and 8 saw 5–25 s while `block add` ran; this says
# whether it was so before load too). Call with the turn's start, `date +%s`.
slow() {
  local took=$(( $(date +%s) - $1 ))
  [ "$took" -gt 3 ] && echo "$(date +%T) turn ${took}s" >> "$OUT/slow.log"
  return 0
}

# Watches hotplug scripts until the file $1 exists.
watch_hotplug() {
  local t0
  while [ ! -e "$1" ]; do t0=$(date +%s); hotplug; sleep 1; slow "$t0"; done
}

# Host 2 drops every image it holds when host 1 asks (the store is vwd's: through it),
# and logs each change of its maps and what running hotplug scripts wait in.
serve() {
  local last="" m t0
  while [ ! -e /vwlab/out/done ]; do
    t0=$(date +%s)
    m=$(maps)
    if [ "$m" != "$last" ]; then
      { date +%T; echo "$m"; } >> "$OUT/maps.log"
      last=$m
    fi
    hotplug
    if [ -e /vwlab/out/evict ]; then
      # Every image by name (the first column after the header), then its chunks.
      for image in $(vw image ls 2>/dev/null | awk 'NR > 1 { print $1 }'); do
        vw image rm "$image" >> "$OUT/evict.log" 2>&1
      done
      vw gc >> "$OUT/evict.log" 2>&1
      # With the base cached: the base OS alone, which the worker image is built on.
      # A failed import fails the deploy that wanted it, not labels a cold one cached.
      if [ -e /vwlab/out/keep-base ] \
        && ! vw image import /vwimages/guest-base.img --name lab/base:1 >> "$OUT/evict.log" 2>&1; then
        touch /vwlab/out/base-failed
      fi
      vw image ls >> "$OUT/evict.log" 2>&1
      rm -f /vwlab/out/evict
      touch /vwlab/out/evicted
      t0=$(date +%s) # the eviction's own time is not dom0's slowness
    fi
    sleep 1
    slow "$t0"
  done
}

# Host 2 drops every image; with VW_SCENARIO_BASE=1 it then holds the base OS.
evict() {
  rm -f /vwlab/out/evicted /vwlab/out/base-failed
  if [ "${VW_SCENARIO_BASE:-0}" = 1 ]; then touch /vwlab/out/keep-base; else rm -f /vwlab/out/keep-base; fi
  touch /vwlab/out/evict
  for i in $(seq 300); do
    if [ -e /vwlab/out/evicted ]; then
      [ -e /vwlab/out/base-failed ] || return 0
      echo "host 2 could not import the base OS (its evict.log)"; return 1
    fi
    sleep 1
  done
  echo "host 2 did not evict its images"; return 1
}

run() { # NAME [deploy options]
  local name=$1; shift
  [ -n "${VW_SCENARIO_CAP:-}" ] && set -- "$@" --cap "$VW_SCENARIO_CAP"
  rm -f "$OUT/deployed"
  watch_hotplug "$OUT/deployed" &
  t "deploy-$name" vw --json deploy --vo lab "$@" /vwlab/workspaces/lazy.xml \
    > "$OUT/deploy-$name.json" 2> "$OUT/deploy-$name.err"
  rc=$?
  touch "$OUT/deployed"
  echo "$name: exit $rc"
  # Deployed: every guest ready and, lazily, every image whole and handed over.
  maps > "$OUT/maps-$name.log"
  # Bounded: a stop that hangs is a fault to see in the logs, not the end of the run.
  t "stop-$name" timeout 900 vw stop lazy > "$OUT/stop-$name.log" 2>&1 || rc=1
  t "unstage-$name" timeout 900 vw unstage lazy > "$OUT/unstage-$name.log" 2>&1 || rc=1
  xl list >> "$OUT/stop-$name.log" 2>&1
  return $rc
}

on_head_host() {
  OUT=/vwlab/out/host1
  rc=0
  # The first lazy boot runs first (the image's trace is taken from it): under
  # emulation each deploy takes minutes.
  if [ "${VW_SCENARIO_BASE:-0}" = 1 ]; then
    evict && run lazy-cached --lazy || rc=1
    evict && run full-cached || rc=1
    evict && run lazy-cached-traced --lazy || rc=1
  else
    evict && run lazy-cold --lazy || rc=1
    evict && run full-cold || rc=1
    evict && run lazy-traced --lazy || rc=1
  fi
  [ "${VW_SCENARIO_WARM:-0}" = 1 ] && { run full-warm || rc=1; run lazy-warm --lazy || rc=1; }
  {
    echo "# lazy on $(cat /vwlab/accel) Xen"
    echo
    for r in lazy-cold full-cold lazy-traced lazy-cached full-cached lazy-cached-traced \
      full-warm lazy-warm; do
      [ -e "$OUT/deploy-$r.json" ] || continue
      echo "## $r"
      echo '```'
      head -c 4000 "$OUT/deploy-$r.json"
      echo '```'
    done
  } > "$OUT/summary.md"
  return $rc
}
