#!/usr/bin/env bash
# Builds the strait-agent Debian package: the agent for a remote site without Kubernetes, with a
# hardened systemd unit and the /etc/strait layout (docs/packaging.md).
#   packaging/deb/build.sh BINARY OUTDIR     -> OUTDIR/strait-agent_<version>_amd64.deb
# BINARY is a built strait-agent (`cargo build --release -p strait-agent`); it is stripped here.
# Plain dpkg-deb: the package is one binary and a few files, so no packaging tool is needed.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BINARY OUTDIR" >&2; exit 2; }
bin=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
[ -x "$bin" ] || { echo "build.sh: $bin is not an executable" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
[ -n "$version" ] || { echo "build.sh: no version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)

stage=$(mktemp -d "${TMPDIR:-/tmp}/strait-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/strait-agent_${version}_$arch
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
  "$root/usr/share/doc/strait-agent" "$root/etc/strait"
install -d -m 0700 "$root/etc/strait/secrets"
strip -o "$root/usr/bin/strait-agent" "$bin"
chmod 0755 "$root/usr/bin/strait-agent"
install -m 0644 "$here/strait-agent.service" "$root/lib/systemd/system/strait-agent.service"
install -m 0600 "$here/tunnels.yaml.example" "$root/etc/strait/tunnels.yaml.example"
install -m 0644 "$here/README.Debian" "$root/usr/share/doc/strait-agent/README.Debian"
{
  echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
  echo "Upstream-Name: strait"
  echo
  echo "Files: *"
  echo "License: Apache-2.0"
  echo " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0."
} > "$root/usr/share/doc/strait-agent/copyright"
installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: strait-agent
Version: $version
Architecture: $arch
Maintainer: Strait developers <strait@localhost>
Section: net
Priority: optional
Depends: libc6 (>= 2.36), libgcc-s1, nftables, procps
Recommends: iproute2
Installed-Size: $installed_kb
Description: Strait IPsec agent: IKEv2 and kernel XFRM, without Kubernetes
 The agent of the Strait Kubernetes operator, run from a YAML file: the remote
 site's end of a site-to-site tunnel. Its own IKEv2 (memory-safe, in Rust)
 programs the kernel's XFRM SAs and policies, serves its status on a local
 socket and Prometheus metrics on loopback.
CONTROL
echo /etc/strait/tunnels.yaml.example > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  # enabled, but it starts only once /etc/strait/tunnels.yaml exists (ConditionPathExists)
  [ "$1" = configure ] && systemctl enable strait-agent.service >/dev/null 2>&1 || true
fi
POSTINST
cat > "$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl disable --now strait-agent.service >/dev/null 2>&1 || true
fi
PRERM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"
mkdir -p "$out"
deb="$out/strait-agent_${version}_$arch.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
