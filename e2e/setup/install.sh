#!/usr/bin/env bash
# Installs everything the test tiers and the demo need, idempotently; a warm run takes seconds.
#   e2e/setup/install.sh            all of it
#   e2e/setup/install.sh PART...    some of: packages controlplane vm nodes debroot peers
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
need_root "e2e/setup/install.sh"
need_cmd cargo "install Rust (https://rustup.rs) first"
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(packages controlplane vm nodes debroot peers)
mkdir -p "$STRAIT_CACHE"
for p in "${parts[@]}"; do
  [ -x "$REPO/e2e/setup/$p.sh" ] || die "no installer for '$p' (e2e/setup/$p.sh)"
  start=$SECONDS
  say "install: $p"
  "$REPO/e2e/setup/$p.sh"
  say "install: $p done in $((SECONDS - start)) s"
done
