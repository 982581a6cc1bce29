#!/usr/bin/env bash
# Root file systems for the IKE peers that cannot be installed on the host: Libreswan 4.10
# (bookworm; its packages conflict with strongSwan's) and Libreswan 5.2 (trixie; needs trixie's
# glibc). Each is built once with mmdebstrap from Debian's packages and entered per test with
# chroot inside a network namespace (e2e/src/libreswan.rs):
#   $STRAIT_CACHE/peers/libreswan-bookworm    Libreswan 4.10
#   $STRAIT_CACHE/peers/libreswan-trixie      Libreswan 5.2
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
need_root "e2e/setup/peers.sh"
need_cmd mmdebstrap "run e2e/setup/packages.sh"
dir=$STRAIT_CACHE/peers
mkdir -p "$dir"
# one builder at a time: mmdebstrap mounts /proc, /sys and /dev inside a root while it builds
exec 9>"$dir/.lock"
flock 9
# certutil/pk12util (libnss3-tools) fill pluto's NSS database; iproute2 for its updown script,
# which routes the remote subnets as on a real site
include=libreswan,libnss3-tools,iproute2
mirror=http://deb.debian.org/debian
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
for suite in bookworm trixie; do
  root=$dir/libreswan-$suite
  stamp=$root.include
  if [ -x "$root/usr/libexec/ipsec/pluto" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$include" ]; then
    echo "peers.sh: $root present ($(chroot "$root" ipsec --version 2>/dev/null))"
    continue
  fi
  start=$SECONDS
  rm -rf --one-file-system "$root"
  # one retry: a dpkg run inside the new root has failed once for no reason it printed
  for attempt in 1 2; do
    rm -rf --one-file-system "$root.tmp"
    mmdebstrap --variant=apt --include="$include" --quiet "$suite" "$root.tmp" \
      "deb [signed-by=$keyring] $mirror $suite main" && break
    [ $attempt -eq 2 ] && die "mmdebstrap could not build the $suite Libreswan root"
    warn "peers.sh: mmdebstrap failed for $suite; trying once more"
  done
  mv "$root.tmp" "$root"
  echo "$include" > "$stamp"
  echo "peers.sh: built $root ($(chroot "$root" ipsec --version), $(du -sh "$root" | cut -f1)) in $((SECONDS - start)) s"
done
