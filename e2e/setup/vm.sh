#!/bin/bash
# Fetch what the kernel data-plane VM needs into ${STRAIT_CACHE:-/var/cache/strait}/vm/:
#   kernel/<ver>/   the current Debian linux-image-<ABI>-amd64 package, extracted (not installed):
#                   boot/vmlinuz-<ver> and lib/modules/<ver> (ESP, XFRM, GCM as modules)
#   venv/           a python venv with virtme-ng (vng), which boots it under qemu
#   current         the path of the vmlinuz to boot (read by e2e/vm/run.sh)
# Idempotent; warm it only asks apt-cache which ABI package is current (about a second).
# Needs the Debian packages from e2e/setup/packages.sh (qemu-system-x86, busybox-static, kmod,
# python3-venv) and root for apt-get.
set -euo pipefail

VNG_VERSION=1.42
FLAVOUR=${STRAIT_VM_FLAVOUR:-amd64}
CACHE=${STRAIT_CACHE:-/var/cache/strait}
VM=$CACHE/vm

need=()
for c in qemu-system-x86_64 busybox modprobe; do command -v "$c" >/dev/null || need+=("$c"); done
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -ne 0 ]; then
  echo "vm.sh: missing ${need[*]}: run e2e/setup/packages.sh first" >&2
  exit 1
fi
mkdir -p "$VM"

# Which ABI package does linux-image-<flavour> point at right now? (e.g. linux-image-6.1.0-56-amd64)
abi_pkg() { apt-cache depends "linux-image-$FLAVOUR" 2>/dev/null |
  awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KPKG=$(abi_pkg)
if [ -z "$KPKG" ]; then
  [ "$(id -u)" -eq 0 ] && apt-get update -qq
  KPKG=$(abi_pkg)
fi
if [ -z "$KPKG" ]; then
  if [ -s "$VM/current" ] && [ -f "$(cat "$VM/current")" ]; then
    echo "vm.sh: apt-cache knows no linux-image-$FLAVOUR; keeping $(cat "$VM/current")" >&2
  else
    echo "vm.sh: apt-cache knows no linux-image-$FLAVOUR (run apt-get update?)" >&2
    exit 1
  fi
else
  KVER=${KPKG#linux-image-}
  KDIR=$VM/kernel/$KVER
  if [ ! -f "$KDIR/boot/vmlinuz-$KVER" ]; then
    if [ "$(id -u)" -ne 0 ]; then echo "vm.sh: must run as root to fetch $KPKG" >&2; exit 1; fi
    echo "vm.sh: fetching $KPKG"
    tmp=$(mktemp -d "$VM/.dl.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # apt-get download writes into the current directory; _apt must be able to write there
    chmod 777 "$tmp"
    if ! (cd "$tmp" && apt-get download -qq "$KPKG"); then
      apt-get update -qq   # stale lists give 404s
      (cd "$tmp" && apt-get download -qq "$KPKG")
    fi
    dpkg-deb -x "$tmp/${KPKG}"_*.deb "$tmp/x"
    # the package leaves modules.dep to its postinst; generate it so modprobe works in the guest
    depmod -b "$tmp/x" "$KVER"
    rm -rf "$KDIR"; mkdir -p "$VM/kernel"; mv "$tmp/x" "$KDIR"
    rm -rf "$tmp"; trap - EXIT
  fi
  echo "$KDIR/boot/vmlinuz-$KVER" > "$VM/current.tmp" && mv "$VM/current.tmp" "$VM/current"
fi

if ! "$VM/venv/bin/vng" --version 2>/dev/null | grep -q "$VNG_VERSION"; then
  echo "vm.sh: creating venv with virtme-ng==$VNG_VERSION"
  rm -rf "$VM/venv"
  /usr/bin/python3 -m venv "$VM/venv"
  "$VM/venv/bin/pip" install -q "virtme-ng==$VNG_VERSION"
fi
echo "vm.sh: kernel $(cat "$VM/current"), vng $("$VM/venv/bin/vng" --version 2>&1 | head -1)"
