#!/usr/bin/env bash
# Staging on a loopback cluster of vwds (docs/experiments.md, "Staging on loopback"):
# N = 8 hosts capped at 100 Mbit/s, chain and star, against the limit measured in the
# same run (the bytes a host lacks over the cap); then one uncapped multi-GB stage to
# read the hosts' peak RSS. Writes perf/stage/results.jsonl.
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
  "$bench" --hosts 8 --cap 100Mbit --strategy "$strategy" --size-mib 256 2>> "$out/log" | tee -a "$out/results.jsonl"
done
# A multi-GB worker image, uncapped: the hosts' vwd peak RSS while staging it.
"$bench" --hosts 3 --cap none --strategy chain --size-mib 4096 2>> "$out/log" | tee -a "$out/results.jsonl"
