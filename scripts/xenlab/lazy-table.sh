#!/usr/bin/env bash
# The lazy scenario's table (docs/experiments.md, "Real Xen (the lab)") from its deploy
# reports: each deploy's phases, the time from `vw deploy` until every guest reported
# ready (every phase but settle) against the full deploy of the same cache state, and
# per VM its time to ready from its start, what it read before, and what it fetched at
# once (chunks, the mean wait for one) against what it read from the store.
#
#   scripts/xenlab/lazy-table.sh OUT/host1            # a run's results (run.sh lazy OUT)
#   scripts/xenlab/lazy-table.sh docs/results/xenlab/lazy run15-
set -euo pipefail
dir=${1:?usage: lazy-table.sh DIR [PREFIX]}
prefix=${2:-}
python3 - "$dir" "$prefix" <<'PY'
import json, os, sys

d, prefix = sys.argv[1], sys.argv[2]
names = ["lazy-cold", "full-cold", "lazy-traced",
         "lazy-cached", "full-cached", "lazy-cached-traced", "full-warm", "lazy-warm"]
runs = {}
for n in names:
    p = os.path.join(d, f"{prefix}deploy-{n}.json")
    if os.path.exists(p) and os.path.getsize(p) > 0:
        with open(p) as f:
            runs[n] = json.load(f)
if not runs:
    sys.exit(f"no deploy reports ({prefix}deploy-*.json) in {d}")

def phases(r):
    return {p["phase"]: p["micros"] / 1e6 for p in r["phases"]}

def ready(r):
    return sum(s for p, s in phases(r).items() if p != "settle")

def whole(r):
    """Every placed VM reported ready, and no host failed or was lost."""
    up = {v["vm"] for v in r["ready"] if not v.get("problem")}
    return (all(p["vm"] in up for p in r["placement"])
            and not any(h.get("error") for h in r["hosts"]) and not r.get("lost"))

simulated = any((v.get("report") or {}).get("simulated") for r in runs.values() for v in r["ready"])
print("# lazy against full:", "SIMULATED guests" if simulated else "real Xen guests")
print()
print("| deploy | stage | load | create | ready phase | until every guest ready | settle | host 2 fetch |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for n, r in runs.items():
    ph = phases(r)
    state = next((s for s in ("cached", "warm") if s in n), "cold")
    full = runs.get("full-" + state) if n.startswith("lazy") else None
    vs = f" ({ready(r) / ready(full):.2f}×)" if full and whole(full) else ""
    if not whole(r):
        vs = " (not every guest ready)"
    stage = next((h["stage"] for h in r["hosts"] if h["host"] == "host2"), None) or {}
    fetch = f"{stage.get('fetch_micros', 0) / 1e6:.1f} s, {stage.get('received', 0) / 1e6:.1f} MB"
    print(f"| {n} | {ph.get('stage', 0):.1f} s | {ph.get('load', 0):.1f} s | "
          f"{ph.get('create', 0):.1f} s | {ph.get('ready', 0):.1f} s | {ready(r):.1f} s{vs} | "
          f"{ph.get('settle', 0):.1f} s | {fetch} |")
print()
print("| deploy | VM | ready from its start | read before ready | fetched at once | from the store |")
print("|---|---|---:|---:|---:|---:|")
for n, r in runs.items():
    for v in r["ready"]:
        lz = v.get("lazy") or {}
        if v.get("problem"):
            print(f"| {n} | {v['vm']} | not ready: {v['problem']} | | | |")
            continue
        line = f"| {n} | {v['vm']} | {v['ready_ms'] / 1000:.1f} s |"
        if lz:
            fc, lc = lz["fetched_chunks"], lz["local_chunks"]
            wait = f", {lz['fetch_micros'] / fc / 1000:.0f} ms each" if fc else ""
            held = f", {lz['local_micros'] / lc / 1000:.1f} ms each" if lc else ""
            line += (f" {lz['read'] / 1e6:.1f} MB | {fc} chunks ({lz['fetched'] / 1e6:.2f} MB){wait} |"
                     f" {lc} chunks{held} |")
        else:
            line += " | | |"
        print(line)
PY
