#!/usr/bin/env bash
# Builds the Debian package (vw, vwd, vwd's unit, the `vw` group, example configs):
#   scripts/package/build.sh [OUT_DIR] [PROFILE]
# PROFILE is `release` (default: what an operator installs) or `dev` (CI: packs the
# tests' build, so RocksDB is not compiled a second time; cargo-deb warns about it).
# Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-${CARGO_TARGET_DIR:-target}/debian}
PROFILE=${2:-release}
CARGO_DEB_VERSION=3.8.0
if [ "$(cargo deb --version 2>/dev/null | awk '{print $NF}')" != "$CARGO_DEB_VERSION" ]; then
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet
fi
cargo build --bins --profile "$PROFILE" --quiet
mkdir -p "$OUT"
cargo deb -p vw-cli --no-build --profile "$PROFILE" -o "$OUT" 2> "$OUT/cargo-deb.log" ||
  { cat "$OUT/cargo-deb.log" >&2; exit 1; }
