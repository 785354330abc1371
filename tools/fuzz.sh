#!/usr/bin/env bash
# Runs cargo-fuzz targets on this machine's stable toolchain.
#   tools/fuzz.sh <target|all> <seconds>
# cargo-fuzz needs nightly-only compiler flags (-Z sanitizer); RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept them. AddressSanitizer is on (cargo-fuzz's default).
# Debug assertions and overflow checks are on (-a). Each target runs on a scratch copy of
# its committed corpus and regressions; what it found is merged back into fuzz/corpus/<target>
# only where it adds coverage (-merge=1), so the corpus does not grow with every run.
# Crashes go to fuzz/artifacts/<target>. Keep a crash as fuzz/regressions/<target>/<name>
# once fixed: `cargo test --test fuzz_corpus` replays both directories (run at the end).
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
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  echo "== $t: ${seconds}s" >&2
  [ -d "corpus/$t" ] || { echo "fuzz: corpus/$t is missing" >&2; exit 1; }
  work="$scratch/$t"
  mkdir -p "$work"
  cp corpus/"$t"/* "$work"/
  [ ! -d "regressions/$t" ] || cp regressions/"$t"/* "$work"/
  case $t in
    # Room past the 4096-byte control-line limit the first byte can choose.
    server_ops | client_ops | round_trip) max_len=8192 ;;
    *) max_len=4096 ;;
  esac
  RUSTC_BOOTSTRAP=1 cargo fuzz run -a "$t" "$work" -- \
    -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -jobs=1 -workers=1
  RUSTC_BOOTSTRAP=1 cargo fuzz run -a "$t" "corpus/$t" "$work" -- -merge=1 -max_len="$max_len"
done
cd .. && cargo test --quiet --test fuzz_corpus
