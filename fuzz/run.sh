#!/usr/bin/env bash
# Runs every cargo-fuzz target. The targets live outside the main workspace (fuzz/Cargo.toml has
# its own [workspace]) so ordinary builds never compile libFuzzer.
#   fuzz/run.sh --short            each target for a bounded number of runs (CI)
#   fuzz/run.sh --runs N [--no-asan] [TARGET]  N executions of one or every target, no time limit
# cargo-fuzz needs nightly-only rustc flags; on the machine's stable toolchain RUSTC_BOOTSTRAP=1
# allows them. cargo-fuzz itself is installed, pinned, into the cache.
set -euo pipefail
. "$(dirname "$0")/../e2e/lib.sh"
cd "$REPO/fuzz"

VERSION=0.13.1
ROOT="$STRAIT_CACHE/cargo-fuzz-$VERSION"
runs=20000 only="" sanitizer=address max_time=300
while [ $# -gt 0 ]; do
  case $1 in
    # The short run builds without ASan: the fuzzed code has no unsafe, and the sanitizer build
    # costs minutes on 2 cores. Long runs keep ASan.
    --short) runs=20000; sanitizer=none; shift ;;
    # A long run is bounded by its number of executions, not by time.
    --runs) runs=$2; max_time=0; shift 2 ;;
    --no-asan) sanitizer=none; shift ;;
    -*) die "usage: fuzz/run.sh [--short | --runs N [--no-asan]] [TARGET]" ;;
    *) only=$1; shift ;;
  esac
done

if [ ! -x "$ROOT/bin/cargo-fuzz" ]; then
  say "installing cargo-fuzz $VERSION into $ROOT"
  # A target dir of its own: in the shared CARGO_TARGET_DIR the built binary was once gone before
  # cargo install could copy it ("failed to copy .../release/cargo-fuzz").
  cargo install cargo-fuzz --locked --version "$VERSION" --root "$ROOT" --target-dir "$ROOT/build" \
    || die "could not build cargo-fuzz $VERSION from crates.io"
  rm -rf "$ROOT/build"
fi
export PATH="$ROOT/bin:$PATH" RUSTC_BOOTSTRAP=1
# Cached outside the work tree, so a fresh clone (CI) does not rebuild everything.
TARGET_DIR=${STRAIT_FUZZ_TARGET:-$STRAIT_CACHE/fuzz-target}

targets=$(cargo fuzz list)
[ -n "$only" ] && targets=$only
failed=0
for t in $targets; do
  corpus="corpus/$t"; mkdir -p "$corpus"
  # committed seeds (fuzz/seeds/<target>/) start the corpus; corpus/ itself is not committed
  if [ -d "seeds/$t" ]; then cp -n "seeds/$t"/* "$corpus"/; fi
  say "fuzz $t: $runs runs"
  log=$(mktemp)
  if cargo fuzz run --sanitizer "$sanitizer" --target-dir "$TARGET_DIR" "$t" "$corpus" -- -runs="$runs" -max_total_time="$max_time" 2>&1 | tee "$log" | grep -E '^(#[0-9]+\s+(DONE|INITED)|==[0-9]+==|SUMMARY|thread .* panicked)'; then :; fi
  if grep -qE 'DONE|Done [0-9]+ runs' "$log" && ! grep -qE 'SUMMARY|panicked|deadly signal' "$log"; then
    execs=$(grep -oE 'Done [0-9]+ runs' "$log" | tail -1 | grep -oE '[0-9]+')
    echo "fuzz $t: ${execs:-$runs} executions, no crash"
  else
    echo "fuzz $t: FAILED (see artifacts/$t)"; tail -30 "$log"; failed=1
  fi
  rm -f "$log"
done
exit $failed
