#!/usr/bin/env bash
# Instruction count of one in-memory IKE handshake (examples/handshake_once.rs) under
# callgrind. Unlike criterion's times, the count does not move with machine load, so it can
# be compared between commits on a shared machine. The example is run RUNS times (default 2)
# to show the count is repeatable; then once counting only inside the handshake, for the top
# functions.
#
# Usage: agent/ike/benches/callgrind.sh [x25519|modp2048]
# Env:   RUNS=n (default 2), KEEP_DIR=dir to keep the callgrind.out files (default: discarded),
#        TOP=n functions to list (default 10).
set -euo pipefail

group=${1:-x25519}
runs=${RUNS:-2}
top=${TOP:-10}
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root"

for tool in valgrind callgrind_annotate; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install valgrind)" >&2; exit 1; }
done

cargo build --quiet --release -p strait-ike --example handshake_once
bin=${CARGO_TARGET_DIR:-$root/target}/release/examples/handshake_once

if [[ -n ${KEEP_DIR:-} ]]; then
    out=$KEEP_DIR
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

echo "valgrind: $(valgrind --version); group: $group; binary: $bin"
for i in $(seq 1 "$runs"); do
    file=$out/callgrind.$group.$i.out
    valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" "$group" \
        >"$out/stdout.$i" 2>"$out/valgrind.$i.log" ||
        { cat "$out/stdout.$i" "$out/valgrind.$i.log" >&2; exit 1; }
    total=$(awk '/^totals:/ {print $2}' "$file")
    # Inclusive cost of Pair::handshake alone: without process start-up and endpoint setup.
    hs=$(callgrind_annotate --inclusive=yes "$file" 2>/dev/null |
        awk '/sim::Pair::handshake/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
    printf 'run %d: total Ir %s (handshake itself %s)\n' "$i" "$total" "${hs:-?}"
done

# One more run that counts only inside Pair::handshake, so start-up (dynamic linking, std
# runtime) does not crowd the list of where the handshake's instructions go.
file=$out/callgrind.$group.handshake-only.out
valgrind --tool=callgrind --toggle-collect='*sim::Pair::handshake*' --callgrind-out-file="$file" \
    "$bin" "$group" >/dev/null 2>"$out/valgrind.handshake-only.log"
echo
echo "top $top functions by self Ir inside Pair::handshake ($(awk '/^totals:/ {print $2}' "$file") Ir):"
# The function table follows the "file:function" header and its rule; source paths and object
# names are dropped to keep the lines readable. (awk reads to the end rather than exit early:
# with pipefail, SIGPIPE upstream would fail the script.)
callgrind_annotate "$file" 2>/dev/null |
    awk -v top="$top" '/file:function/ {table = 1; getline; next} table && NF && n++ < top' |
    sed -E 's#^( *[0-9,]+ \( *[0-9.]+%\)  )[^:]*:#\1#; s# \[[^]]*\]$##'
