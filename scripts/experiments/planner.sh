#!/usr/bin/env bash
# Predicted staging time against cluster size, per strategy, cold and with the base OS
# cached (docs/experiments.md, "The planner: predicted staging time"). Uses `vw plan`
# on the real Debian images (scripts/xenlab/build.sh) and generated hosts files: a
# head host holding the images on a ~10 MB/s link (the paper's), N hosts at 100 Mbit/s,
# a head node and N workers. Writes perf/planner/scaling.md and scaling.csv.
#
#   scripts/experiments/planner.sh [IMAGES_DIR] [OUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
images=${1:-/var/cache/vw-xenlab/images}
out=${2:-$here/perf/planner}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/vw-target}"
mkdir -p "$out"
bash "$here/scripts/install-deps.sh" --experiments
[ -f "$images/head.img" ] || bash "$here/scripts/xenlab/build.sh" guests
(cd "$here" && cargo build -q --bin vw -p vw-cli)
vw="$CARGO_TARGET_DIR/debug/vw"
work=$(mktemp -d /var/tmp/vw-plan.XXXXXX)
trap 'rm -rf "$work"' EXIT
store="$work/store"
for i in base worker head; do "$vw" --store "$store" image import "$images/$i.img" --name "grid3/$i:1.0" > /dev/null; done
# A private pool big enough for 10,000 workers.
sed 's/private = \["10.77.1.10-10.77.1.250"\]/private = ["10.77.1.1-10.77.255.254"]/' "$here/examples/cluster.toml" > "$work/cluster.toml"

hosts_file() { # N cached?
  {
    printf '[defaults]\nmemory_mib = 4096\nvcpus = 4\ncpus = 2\nup = "100Mbit"\ndown = "100Mbit"\n'
    [ "$2" = cached ] && printf 'images = ["grid3/base:1.0"]\n'
    printf '\n[[host]]\nname = "head"\nup = "10MB"\ndown = "10MB"\nimages = ["grid3/head:1.0", "grid3/worker:1.0"]\nsource = true\n'
    for i in $(seq 1 "$1"); do printf '\n[[host]]\nname = "n%d"\nrack = "r%d"\n' "$i" $(( (i - 1) / 40 )); done
  } > "$work/hosts.toml"
}
workspace() { # N
  cat > "$work/ws.xml" <<XML
<virtualWorkspace type="cluster" name="grid3" nodeNumber="$(( $1 + 1 ))">
  <headnode name="head"><memory>1024</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="grid3/head:1.0" device="xvda1" role="root"/></headnode>
  <workernode name="w"><memory>512</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="grid3/worker:1.0" device="xvda1" role="root"/></workernode>
</virtualWorkspace>
XML
}

strategies=(star chain tree2 tree4 striped4x1 striped4x2 auto)
echo "n,cache,strategy,chosen,predicted_s,limit_s,ratio,wall_s" > "$out/scaling.csv"
run() { # label N cache hostsfile wsfile
  for s in "${strategies[@]}"; do
    t0=$(date +%s.%N)
    "$vw" --store "$store" --cluster "$work/cluster.toml" --json plan "$5" --hosts "$4" --strategy "$s" > "$work/out.json"
    t1=$(date +%s.%N)
    python3 - "$work/out.json" "$1" "$2" "$3" "$s" "$t0" "$t1" >> "$out/scaling.csv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["workspaces"][0]; sim = r["simulation"]
st = r["strategy"]
chosen = {"tree": lambda: f"tree{st['k']}", "striped": lambda: f"striped{st['stripes']}x{st['k']}"}.get(st["kind"], lambda: st["kind"])()
print(f"{sys.argv[2]},{sys.argv[4]},{sys.argv[5]},{chosen},{sim['finish']:.2f},{sim['limit']:.2f},{sim['finish']/sim['limit'] if sim['limit'] else 1:.3f},{float(sys.argv[7])-float(sys.argv[6]):.2f}")
PY
  done
}
for cache in cold cached; do
  if [ "$cache" = cold ]; then sed '/^images = \[\]/d' "$here/examples/hosts-paper.toml" > "$work/paper.toml"
  else sed 's/^rack = "lan"/rack = "lan"\nimages = ["grid3\/base:1.0"]/' "$here/examples/hosts-paper.toml" > "$work/paper.toml"; fi
  run paper 8 "$cache" "$work/paper.toml" "$here/examples/grid3-cluster.xml"
  for n in 1 2 4 8 16 32 64 128 256 1000 2500 5000 10000; do
    hosts_file "$n" "$cache"; workspace "$n"
    run "$n" "$n" "$cache" "$work/hosts.toml" "$work/ws.xml"
  done
done

python3 - "$out" <<'PY'
import csv, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/scaling.csv")))
strategies = ["star", "chain", "tree2", "tree4", "striped4x1", "striped4x2", "auto"]
lines = []
for cache in ("cold", "cached"):
    lines.append(f"### {cache}: predicted staging time, seconds (ratio to the physical limit)")
    lines.append("")
    lines.append("| hosts | limit s | " + " | ".join(strategies) + " | auto chose | vw plan wall s (auto) |")
    lines.append("|---|---|" + "---|" * len(strategies) + "---|---|")
    ns = []
    for r in rows:
        if r["cache"] == cache and r["n"] not in ns:
            ns.append(r["n"])
    for n in ns:
        cell = {r["strategy"]: r for r in rows if r["cache"] == cache and r["n"] == n}
        limit = cell["auto"]["limit_s"]
        label = "paper (8 hosts, grid3)" if n == "paper" else n
        vals = [f"{float(cell[s]['predicted_s']):.1f} ({float(cell[s]['ratio']):.2f})" for s in strategies]
        lines.append(f"| {label} | {float(limit):.1f} | " + " | ".join(vals) + f" | {cell['auto']['chosen']} | {cell['auto']['wall_s']} |")
    lines.append("")
open(f"{out}/scaling.md", "w").write("\n".join(lines))
print("\n".join(lines))
PY
