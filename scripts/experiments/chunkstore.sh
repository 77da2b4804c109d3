#!/usr/bin/env bash
# Real-image chunk store experiment (docs/experiments.md, "Chunk store on real images").
#
# Builds the project's Debian images (scripts/xenlab/build.sh) if needed, then for each image:
# import time with vw and with `casync make` (same page-cache state, same run), per-image
# chunks and stored bytes, the bytes each pair of images shares, the dedup ratio of all
# four in one store for both tools, and vw's peak RSS importing a 10 GiB image.
#
#   scripts/experiments/chunkstore.sh [IMAGES_DIR] [OUT_DIR]
#
# IMAGES_DIR defaults to /var/cache/vw-xenlab/images, OUT_DIR to perf/chunkstore (git-ignored).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
images=${1:-/var/cache/vw-xenlab/images}
out=${2:-$here/perf/chunkstore}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/vw-target}"
mkdir -p "$out"
bash "$here/scripts/install-deps.sh" --experiments
[ -f "$images/vo2worker.img" ] || bash "$here/scripts/xenlab/build.sh" guests
(cd "$here" && cargo build -q --bin vw --example chunk_sweep -p vw-cli -p vw-chunkstore)
vw="$CARGO_TARGET_DIR/debug/vw"
sweep="$CARGO_TARGET_DIR/debug/examples/chunk_sweep"
work=$(mktemp -d /var/tmp/vw-exp.XXXXXX)
trap 'rm -rf "$work"' EXIT
names=(guest-base worker head vo2worker)
now() { date +%s.%N; }

# Best of 3 for both tools: the disk is shared and noisy. Each timed run starts with a
# warm page cache for the image, a fresh store and no pending writeback (sync).
best_of_3() { # label cmd...: prints the best wall time in seconds
  local best=""
  for _ in 1 2 3; do
    rm -rf "$work/run" "$work/run.caibx"; sync
    local t0 t1; t0=$(now); "$@" > "$work/last.out"; t1=$(now)
    best=$(python3 -c "import sys; a=float(sys.argv[1])-float(sys.argv[2]); b=sys.argv[3]; print(a if b=='' or a<float(b) else b)" "$t1" "$t0" "$best")
  done
  echo "$best"
}
echo "## per image: vw import vs casync make (warm page cache, best of 3 each)" | tee "$out/import.md"
echo "| image | size MiB | vw s | casync s | casync/vw | vw chunks | vw new MiB | vw zero MiB |" | tee -a "$out/import.md"
echo "|---|---:|---:|---:|---:|---:|---:|---:|" | tee -a "$out/import.md"
for n in "${names[@]}"; do
  img="$images/$n.img"
  cat "$img" > /dev/null
  vw_s=$(best_of_3 "$vw" --store "$work/run" --json image import "$img" --name "exp/$n:1")
  cp "$work/last.out" "$work/$n.json"
  ca_s=$(best_of_3 casync make --store="$work/run" "$work/run.caibx" "$img")
  python3 - "$n" "$img" "$vw_s" "$ca_s" "$work/$n.json" <<'PY' | tee -a "$out/import.md"
import json, os, sys
n, img, vw, ca, rep = sys.argv[1:]
r = json.load(open(rep)); vw = float(vw); ca = float(ca)
M = 1 << 20
print(f"| {n} | {os.path.getsize(img)/M:.0f} | {vw:.2f} | {ca:.2f} | {ca/vw:.1f} | {r['chunks']} | {r['new_bytes']/M:.1f} | {r['zero_bytes']/M:.1f} |")
PY
done
rm -rf "$work/run" "$work/run.caibx"

echo | tee -a "$out/import.md"
echo "## all four images in one store: dedup" | tee -a "$out/import.md"
for n in "${names[@]}"; do
  "$vw" --store "$work/vw-all" --json image import "$images/$n.img" --name "exp/$n:1" > /dev/null
  casync make --store="$work/ca-all" "$work/all-$n.caibx" "$images/$n.img" > /dev/null
done
"$vw" --store "$work/vw-all" --json cache stats > "$work/stats.json"
for a in 0 1 2 3; do for b in 0 1 2 3; do
  [ "$a" -lt "$b" ] || continue
  "$vw" --store "$work/vw-all" --json image diff "exp/${names[$a]}:1" "exp/${names[$b]}:1" > "$work/diff-$a-$b.json"
done; done
python3 - "$work" "$images" "${names[@]}" <<'PY' | tee -a "$out/import.md"
import json, os, struct, sys
work, images, names = sys.argv[1], sys.argv[2], sys.argv[3:]
M = 1 << 20
def caibx(path):
    """(digest, size) per chunk of a casync blob index: 48-byte index header, 16-byte
    table header, then (end offset u64, digest[32]) items until a zero offset."""
    data = open(path, "rb").read()
    pos, prev, out = 64, 0, []
    while pos + 40 <= len(data):
        end, = struct.unpack_from("<Q", data, pos)
        if end == 0:
            break
        out.append((data[pos + 8:pos + 40], end - prev)); prev = end; pos += 40
    return out
logical = sum(os.path.getsize(f"{images}/{n}.img") for n in names)
uniq = {}
for n in names:
    for d, s in caibx(f"{work}/all-{n}.caibx"):
        uniq[d] = s
ca_unique = sum(uniq.values())
ca_disk = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(f"{work}/ca-all") for f in fs)
st = json.load(open(f"{work}/stats.json"))
vw_unique = st["chunk_bytes"]
print("| tool | logical MiB | unique chunk MiB | dedup ratio (logical/unique) | on disk MiB |")
print("|---|---:|---:|---:|---:|")
print(f"| vw | {logical/M:.0f} | {vw_unique/M:.1f} | {logical/vw_unique:.2f} | {st['pack_bytes']/M:.1f} |")
print(f"| casync | {logical/M:.0f} | {ca_unique/M:.1f} | {logical/ca_unique:.2f} | {ca_disk/M:.1f} (zstd) |")
print()
print("## bytes shared between images (vw, distinct non-zero chunks)")
print("| pair | shared MiB | only first MiB | only second MiB |")
print("|---|---:|---:|---:|")
for a in range(4):
    for b in range(a + 1, 4):
        d = json.load(open(f"{work}/diff-{a}-{b}.json"))
        print(f"| {names[a]} / {names[b]} | {d['shared_bytes']/M:.1f} | {d['only_a_bytes']/M:.1f} | {d['only_b_bytes']/M:.1f} |")
PY
rm -rf "$work/ca-all" "$work/vw-all"

echo | tee -a "$out/import.md"
echo "## chunk size sweep" | tee -a "$out/import.md"
"$sweep" "$images/guest-base.img" "$images/worker.img" "$images/head.img" "$images/vo2worker.img" 2>/dev/null | tee -a "$out/import.md" || true

echo | tee -a "$out/import.md"
echo "## peak RSS importing a 10 GiB image" | tee -a "$out/import.md"
big="$work/big.img"
python3 - "$big" <<'PY'
import os, sys
# 10 GiB: 60% distinct random data in 48 MiB extents, 40% holes.
with open(sys.argv[1], "wb") as f:
    f.truncate(10 << 30)
    for i in range(0, 10 << 30, 80 << 20):
        f.seek(i); f.write(os.urandom(48 << 20))
PY
/usr/bin/time -v "$vw" --store "$work/vw-big" --json image import "$big" --name exp/big:1 > "$work/big.json" 2> "$work/big.time"
python3 - "$work/big.json" "$work/big.time" <<'PY' | tee -a "$out/import.md"
import json, re, sys
r = json.load(open(sys.argv[1])); t = open(sys.argv[2]).read()
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
print(f"10 GiB image: {r['chunks']} chunks, {r['new_bytes']/(1<<20):.0f} MiB stored, {r['millis']/1000:.1f} s, peak RSS {rss/1024:.0f} MiB")
PY
