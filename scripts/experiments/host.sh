#!/usr/bin/env bash
# One host deploying a head node and two workers from real Debian images with the
# simulated Xen driver: the duration of every lifecycle step (docs/experiments.md,
# "One host: the lifecycle", beside the paper's Fig. 2(b)).
#
# For each integration strategy (seed volume, in-image ext4 edits), three rounds of
# create (stage + load + start), pause, unpause, stop, unstage on a fresh deployment.
# Baselines measured in the same run: `vw image export` of each image alone (the
# reconstruction), and `cp --sparse=always` + fsync of the same files (a plain copy).
#
#   scripts/experiments/host.sh [IMAGES_DIR] [OUT_DIR]
#
# IMAGES_DIR defaults to /var/cache/vw-xenlab/images, OUT_DIR to perf/host (git-ignored).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
images=${1:-/var/cache/vw-xenlab/images}
out=${2:-$here/perf/host}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/vw-target}"
mkdir -p "$out"
bash "$here/scripts/install-deps.sh" --experiments
[ -f "$images/worker.img" ] || bash "$here/scripts/xenlab/build.sh" guests
(cd "$here" && cargo build -q --bin vw -p vw-cli)
vw="$CARGO_TARGET_DIR/debug/vw"
work=$(mktemp -d /var/tmp/vw-host.XXXXXX)
trap 'rm -rf "$work"' EXIT
store="$work/store"
now() { date +%s.%N; }

"$vw" --store "$store" --json image import "$images/head.img" --name grid3/head:1.0 > /dev/null
"$vw" --store "$store" --json image import "$images/worker.img" --name grid3/worker:1.0 > /dev/null

# Baselines: reconstruction alone, and a plain sparse copy with fsync, per image.
: > "$out/baseline.csv"
for img in head worker; do
  for round in 1 2 3; do
    rm -f "$work/x.img"; sync
    t0=$(now); "$vw" --store "$store" --json image export "grid3/$img:1.0" "$work/x.img" > /dev/null; t1=$(now)
    rm -f "$work/x.img"; sync
    t2=$(now); cp --sparse=always "$images/$img.img" "$work/x.img"; sync "$work/x.img"; t3=$(now)
    echo "$img,$round,$(python3 -c "print($t1-$t0, $t3-$t2, sep=',')")" >> "$out/baseline.csv"
  done
done

for strategy in seed edit; do
  ws="$work/grid3-$strategy.xml"
  cat > "$ws" <<XML
<virtualWorkspace type="cluster" name="grid3" nodeNumber="3">
  <headnode name="head">
    <memory>1024</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="grid3/head:1.0" device="xvda1" role="root"/>
    <swap device="xvda2" size="200MB"/>
    <integration strategy="$strategy"/>
    <roles><nfsServer export="/home"/><batchServer/></roles>
  </headnode>
  <workernode name="worker" count="2">
    <memory>512</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="grid3/worker:1.0" device="xvda1" role="root"/>
    <swap device="xvda2" size="200MB"/>
    <integration strategy="$strategy"/>
    <roles><nfsClient export="/home"/><batchWorker/></roles>
  </workernode>
</virtualWorkspace>
XML
  for round in 1 2 3; do
    sync
    for op in create pause unpause stop unstage; do
      target=grid3; [ "$op" = create ] && target=$ws
      "$vw" --store "$store" --json "$op" "$target" > "$work/$strategy-$round-$op.json"
      [ "$op" = create ] && "$vw" --store "$store" --json status grid3 > "$work/$strategy-$round-status.json"
    done
  done
done

python3 - "$work" "$out" <<'PY'
import csv, json, statistics, sys, os
work, out = sys.argv[1], sys.argv[2]
rows = []
for strategy in ("seed", "edit"):
    for rnd in (1, 2, 3):
        for op in ("create", "pause", "unpause", "stop", "unstage"):
            doc = json.load(open(f"{work}/{strategy}-{rnd}-{op}.json"))
            assert doc["simulated"], "this experiment uses the simulated driver"
            for vm in doc["vms"]:
                for t in vm["steps"]:
                    rows.append((strategy, rnd, vm["vm"], t["step"], t["micros"] / 1e6))
with open(f"{out}/lifecycle.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["strategy", "round", "vm", "step", "seconds"]); w.writerows(rows)
base = list(csv.reader(open(f"{out}/baseline.csv")))
def med(xs): return statistics.median(xs) if xs else float("nan")
vms = ("grid3-head", "grid3-worker1", "grid3-worker2")
lines = ["| strategy | step | head s | worker1 s | worker2 s | deployment s (sum) |", "|---|---|---|---|---|---|"]
for strategy in ("seed", "edit"):
    for step in ("stage", "load", "start", "pause", "unpause", "stop", "unstage"):
        cols = [med([s for (st, r, vm, sp, s) in rows if st == strategy and sp == step and vm == name]) for name in vms]
        total = med([sum(s for (st, r, vm, sp, s) in rows if st == strategy and sp == step and r == rnd) for rnd in (1, 2, 3)])
        lines.append(f"| {strategy} | {step} | " + " | ".join(f"{c:.3f}" for c in cols) + f" | {total:.3f} |")
lines.append("")
lines.append("Medians of 3 rounds. Simulated driver: load, start, pause, unpause and stop time vw's own work (config check, state file, records), not Xen's.")
lines.append("")
lines.append("Where the stage step went (median of 3 rounds, seconds):")
lines.append("")
lines.append("| strategy | VM | rebuild | clone | swap | integrate | config | placed (rebuilt/cloned/taken) |")
lines.append("|---|---|---|---|---|---|---|---|")
for strategy in ("seed", "edit"):
    per = {}
    for rnd in (1, 2, 3):
        for vm in json.load(open(f"{work}/{strategy}-{rnd}-status.json"))["vms"]:
            per.setdefault(vm["name"], []).append(vm["staged"]["phases"])
    for name, ps in per.items():
        cols = [f"{med([p[k] / 1e6 for p in ps]):.3f}" for k in ("rebuild", "clone", "swap", "integrate", "config")]
        p0 = ps[0]
        lines.append(f"| {strategy} | {name} | " + " | ".join(cols) + f" | {p0['rebuilt']}/{p0['cloned']}/{p0['taken']} |")
lines.append("")
lines.append("| image | export s (median of 3) | cp --sparse + fsync s (median of 3) |")
lines.append("|---|---|---|")
for img in ("head", "worker"):
    e = [float(r[2]) for r in base if r[0] == img]; c = [float(r[3]) for r in base if r[0] == img]
    lines.append(f"| {img} | {med(e):.3f} | {med(c):.3f} |")
open(f"{out}/lifecycle.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
