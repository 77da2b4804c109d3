#!/usr/bin/env bash
# Staging on a loopback cluster of vwds (docs/experiments.md, "Staging on loopback"):
# N = 8 hosts capped at 100 Mbit/s, chain and star, against the limit measured in the
# same run (the bytes a host lacks over the cap; wire compression off, so the limit is
# the bytes); then one uncapped multi-GB stage to read the hosts' peak RSS; then the
# real Debian worker image at 100 Mbit/s with compression off and on. Writes
# perf/stage/results.jsonl.
#
#   scripts/experiments/stage.sh [OUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$here/perf/stage}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/vw-target}"
mkdir -p "$out"
bash "$here/scripts/install-deps.sh"
(cd "$here" && cargo build -q --profile dev -p vw-node --bin vwd --example stage_bench)
bench="$CARGO_TARGET_DIR/debug/examples/stage_bench"
: > "$out/results.jsonl"
for strategy in chain star; do
  "$bench" --hosts 8 --cap 100Mbit --strategy "$strategy" --size-mib 256 --compress never 2>> "$out/log" | tee -a "$out/results.jsonl"
done
# A multi-GB worker image, uncapped: the hosts' vwd peak RSS while staging it.
"$bench" --hosts 3 --cap none --strategy chain --size-mib 4096 2>> "$out/log" | tee -a "$out/results.jsonl"
# Wire compression on a real image (scripts/xenlab/build.sh), if there is one.
worker=/var/cache/vw-xenlab/images/worker.img
if [ -f "$worker" ]; then
  for c in never always; do
    "$bench" --hosts 4 --cap 100Mbit --strategy chain --image "$worker" --compress "$c" 2>> "$out/log" | tee -a "$out/results.jsonl"
  done
fi
