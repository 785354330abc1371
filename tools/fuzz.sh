#!/usr/bin/env bash
# Runs cargo-fuzz targets on this machine's stable toolchain.
#   tools/fuzz.sh <target|all> <seconds>
# cargo-fuzz needs nightly-only compiler flags (-Z sanitizer); RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept them. AddressSanitizer is on (cargo-fuzz's default).
# New inputs go to fuzz/corpus/<target>; crashes to fuzz/artifacts/<target>. Keep a crash
# as fuzz/regressions/<target>/<name> once fixed: `cargo test` replays both directories.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
# Pinned (builds with Rust 1.95); another installed version is replaced by this one.
cargo_fuzz_version=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi
target=${1:?usage: tools/fuzz.sh <target|all> <seconds>}
seconds=${2:?usage: tools/fuzz.sh <target|all> <seconds>}
if [ "$target" = all ]; then
  targets=$(RUSTC_BOOTSTRAP=1 cargo fuzz list)
else
  targets=$target
fi
for t in $targets; do
  echo "== $t: ${seconds}s" >&2
  mkdir -p "corpus/$t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -jobs=1 -workers=1
done
