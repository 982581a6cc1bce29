#!/usr/bin/env bash
# Root file systems for the IKE peers that cannot be installed on the host: Libreswan 4.10
# (bookworm; its packages conflict with strongSwan's), Libreswan 5.2 and strongSwan 6.0.1
# (trixie; they need trixie's glibc). Each is built once with mmdebstrap from Debian's packages
# and entered per test with chroot inside a network namespace (e2e/src/libreswan.rs,
# e2e/src/strongswan.rs):
#   $STRAIT_CACHE/peers/libreswan-bookworm    Libreswan 4.10
#   $STRAIT_CACHE/peers/libreswan-trixie      Libreswan 5.2
#   $STRAIT_CACHE/peers/strongswan-trixie     strongSwan 6.0.1
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
libreswan=libreswan,libnss3-tools,iproute2
# charon with the plugins the host's 5.9.8 loads (kernel-libipsec is in the extra plugins)
strongswan=strongswan-charon,strongswan-swanctl,libstrongswan-standard-plugins,libcharon-extra-plugins
mirror=http://deb.debian.org/debian
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# name suite packages the-binary-that-must-exist
roots=("libreswan-bookworm bookworm $libreswan usr/libexec/ipsec/pluto"
  "libreswan-trixie trixie $libreswan usr/libexec/ipsec/pluto"
  "strongswan-trixie trixie $strongswan usr/lib/ipsec/charon")
for r in "${roots[@]}"; do
  read -r name suite include binary <<<"$r"
  root=$dir/$name
  stamp=$root.include
  if [ -x "$root/$binary" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$include" ]; then
    echo "peers.sh: $root present"
    continue
  fi
  start=$SECONDS
  rm -rf --one-file-system "$root"
  # one retry: a dpkg run inside the new root has failed once for no reason it printed
  for attempt in 1 2; do
    rm -rf --one-file-system "$root.tmp"
    mmdebstrap --variant=apt --include="$include" --quiet "$suite" "$root.tmp" \
      "deb [signed-by=$keyring] $mirror $suite main" && break
    [ $attempt -eq 2 ] && die "mmdebstrap could not build $name"
    warn "peers.sh: mmdebstrap failed for $name; trying once more"
  done
  mv "$root.tmp" "$root"
  echo "$include" > "$stamp"
  echo "peers.sh: built $root ($(du -sh "$root" | cut -f1)) in $((SECONDS - start)) s"
done
