#!/usr/bin/env bash
# The testnet scenarios (docs/experiments.md, "Testnet"): each in network namespaces
# with tc-shaped links, one vwd per host. Results (runs.csv, ops.csv, PNGs, summary.md,
# and reports/ with every deploy's report, timeline and vwd logs) go to
# perf/testnet/<scenario>/ (not in git); the tables and plots are copied to
# docs/results/testnet/<scenario>/, which docs/experiments.md shows. Needs root. The binaries are copied aside first, so a
# rebuild during a long run does not change them under it.
#
#   scripts/experiments/testnet.sh [SCENARIO...]   # default: every shipped scenario
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/vw-target}"
# --experiments: debootstrap for the Debian images, aria2c and opentracker for the swarm.
bash "$here/scripts/install-deps.sh" --experiments
(cd "$here" && cargo build -q --profile dev -p vw-node --bin vwd -p vw-testnet --bin vw-testnet)
bin=$(mktemp -d /var/tmp/vw-testnet-bin.XXXXXX)
trap 'rm -rf "$bin"' EXIT
cp "$CARGO_TARGET_DIR/debug/vwd" "$CARGO_TARGET_DIR/debug/vw-testnet" "$bin/"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(smoke paper-fig2a paper-fig2a-ack paper-fig2b scale two-vo fault lazy)
for s in "${scenarios[@]}"; do
  echo "== $s"
  "$bin/vw-testnet" run "$here/testnet/scenarios/$s.toml" --out "$here/perf/testnet/$s" --vwd "$bin/vwd"
  mkdir -p "$here/docs/results/testnet/$s"
  cp "$here/perf/testnet/$s/"{runs.csv,summary.md,*.png} "$here/docs/results/testnet/$s/"
  if [ -f "$here/perf/testnet/$s/ops.csv" ]; then
    cp "$here/perf/testnet/$s/ops.csv" "$here/docs/results/testnet/$s/"
  fi
done
