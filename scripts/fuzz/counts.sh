#!/usr/bin/env bash
# Run fuzz targets to a number of executions, one after another, and write what
# libFuzzer reported (executions, seconds, crashes) as a Markdown table.
#
#   scripts/fuzz/counts.sh [RUNS] [crate/target ...] > docs/results/fuzz/counts.md
#
# RUNS defaults to 10000000; the default targets are every target of both crates.
# The runs are built without a sanitizer (`-s none`): the code under test is safe Rust,
# where AddressSanitizer finds nothing the language does not already check, and it cost
# the slowest target (check_order, an Ed25519 check per input) 9x its speed here.
# Each target uses its crate's own fuzz target directory and RUSTC_BOOTSTRAP only on
# its own command line (see README § Fuzzing). A target that crashes stops the script
# with libFuzzer's status; its input is under <crate>/fuzz/artifacts/<target>/.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-10000000}
shift || true
if [ $# -eq 0 ]; then
    set -- chunkstore/manifest_decode chunkstore/image_ref \
        node/workspace_xml node/xl_config node/chunk_frames node/control_messages \
        node/signed_envelopes node/wire_read node/packed_frames node/inventory \
        node/domain_config node/check_order
fi

command -v cargo-fuzz >/dev/null || { echo "counts.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2; exit 2; }

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

echo "| target | executions | seconds | exec/s | crashes | date | command |"
echo "|---|---:|---:|---:|---:|---|---|"
for spec in "$@"; do
    crate=${spec%%/*}
    target=${spec#*/}
    extra=()
    corpus=()
    case $target in
        packed_frames) extra=(-malloc_limit_mb=64) ;;
        workspace_xml) corpus=(fuzz/corpus/workspace_xml ../examples) ;;
    esac
    [ ${#corpus[@]} -eq 0 ] || mkdir -p "$root/$crate/${corpus[0]}"
    log=$logs/$target.log
    cmd="CARGO_TARGET_DIR=fuzz/target RUSTC_BOOTSTRAP=1 cargo fuzz run -O -s none $target ${corpus[*]:-} -- -runs=$runs ${extra[*]:-}"
    echo "counts.sh: $crate: $cmd" >&2
    status=0
    (cd "$root/$crate" && CARGO_TARGET_DIR=fuzz/target RUSTC_BOOTSTRAP=1 \
        cargo fuzz run -O -s none "$target" "${corpus[@]}" -- -runs="$runs" -print_final_stats=1 "${extra[@]}") \
        >"$log" 2>&1 || status=$?
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
    if [ "$status" -ne 0 ] || [ -z "$done_line" ]; then
        echo "counts.sh: $target failed (status $status); the end of its log:" >&2
        tail -30 "$log" >&2
        exit $(( status ? status : 1 ))
    fi
    executions=$(awk '{print $2}' <<<"$done_line")
    seconds=$(awk '{print $5}' <<<"$done_line")
    rate=$(( executions / (seconds > 0 ? seconds : 1) ))
    echo "| \`$crate/$target\` | $executions | $seconds | $rate | 0 | $(date -u +%F) | \`cd $crate && $cmd\` |"
done
