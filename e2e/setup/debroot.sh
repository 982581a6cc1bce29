#!/usr/bin/env bash
# A clean Debian 12 (bookworm) root file system with systemd and nftables, the target the
# strait-agent package is installed into by e2e/tests/debian_package.rs. Built once with
# mmdebstrap from the machine's own apt sources and cached as a tarball:
#   $STRAIT_CACHE/debroot/bookworm.tar
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
need_root "e2e/setup/debroot.sh"
need_cmd mmdebstrap "run e2e/setup/packages.sh"
dir=$STRAIT_CACHE/debroot
out=$dir/bookworm.tar
# the packages a Debian server has that the package's Depends and its unit's checks need
include=systemd,procps,nftables,libgcc-s1
stamp=$dir/bookworm.include
if [ -s "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$include" ]; then
  echo "debroot.sh: $out present"
  exit 0
fi
mkdir -p "$dir"
start=$SECONDS
mmdebstrap --variant=apt --include="$include" --quiet bookworm "$dir/bookworm.tmp.tar" \
  || die "mmdebstrap could not build the bookworm root"
mv "$dir/bookworm.tmp.tar" "$out"
echo "$include" > "$stamp"
echo "debroot.sh: built $out ($(du -h "$out" | cut -f1)) in $((SECONDS - start)) s"
