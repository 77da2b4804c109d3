#!/usr/bin/env bash
# The Xen lab's scenarios (docs/experiments.md, "Real Xen"): builds the lab (cached in
# /var/cache/vw-xenlab), then runs each scenario on Xen hosts booted in QEMU; results go
# to perf/xenlab/<scenario>/ (not in git) and their summaries and tables to
# docs/results/xen/<scenario>/. Needs root.
#
#   scripts/experiments/xen.sh [SCENARIO...]   # default: cluster (smoke is CI's)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/vw-target}"
bash "$here/scripts/install-deps.sh" --xenlab
(cd "$here" && cargo build -q --profile dev -p vw-node --bin vwd -p vw-cli --bin vw)
bin=$(mktemp -d /var/tmp/vw-xenlab-bin.XXXXXX)
trap 'rm -rf "$bin"' EXIT
cp "$CARGO_TARGET_DIR/debug/vwd" "$CARGO_TARGET_DIR/debug/vw" "$bin/"
bash "$here/scripts/xenlab/build.sh"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(cluster)
status=0
for s in "${scenarios[@]}"; do
  echo "== $s"
  VW_BIN=$bin bash "$here/scripts/xenlab/run.sh" "$s" "$here/perf/xenlab/$s" || status=1
  # The raw results: every host's text and CSV outputs (not the serial logs).
  res=$here/docs/results/xen/$s
  rm -rf "$res"; mkdir -p "$res"
  cp "$here/perf/xenlab/$s/accel" "$res/"
  for h in "$here/perf/xenlab/$s"/host*/; do
    mkdir -p "$res/$(basename "$h")"
    find "$h" -maxdepth 1 -type f \( -name '*.txt' -o -name '*.csv' -o -name '*.md' \) \
      -exec cp {} "$res/$(basename "$h")/" \;
  done
done
exit $status
