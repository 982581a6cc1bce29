#!/bin/bash
# Install the Debian packages every e2e tier needs (strongSwan peers, namespaces + NAT,
# packet capture, the kernel data-plane VM, promtool, valgrind). Idempotent: when everything
# is already present this is a dpkg-query and nothing else (well under a second).
#
# Debian's strongswan-charon pulls in strongswan-starter, whose service would run a charon in
# the root network namespace. The tests run their own charons in their own namespaces, so the
# system one is kept from starting: a policy-rc.d that refuses service starts is in place for
# the duration of the install, and on systemd hosts the units of packages installed by this run
# are disabled and stopped.
set -euo pipefail

PKGS=(
  strongswan-charon strongswan-swanctl strongswan-pki
  libcharon-extra-plugins libstrongswan-standard-plugins libstrongswan-extra-plugins
  iproute2 iputils-ping nftables tcpdump tshark
  qemu-system-x86 busybox-static kmod file python3-venv
  prometheus valgrind openssl
  # the Debian package's test root (e2e/setup/debroot.sh)
  mmdebstrap
  # the node tier: runc is built with seccomp (cgo), the pause image with gcc -static
  gcc libc6-dev libseccomp-dev pkg-config
)
# services that arrive with the packages above and must not run on a test machine
SERVICES=(strongswan-starter.service strongswan.service ipsec.service prometheus.service)

if [ "$(id -u)" -ne 0 ]; then
  echo "packages.sh: must run as root (it installs Debian packages with apt-get)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "packages.sh: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "packages.sh: installing ${missing[*]}"

# Refuse service starts during the install, unless the machine already has a policy.
prc=/usr/sbin/policy-rc.d
made_prc=
if [ ! -e "$prc" ]; then
  printf '#!/bin/sh\n# temporary, from strait e2e/setup/packages.sh\nexit 101\n' > "$prc"
  chmod 755 "$prc"
  made_prc=1
fi
cleanup() { [ -z "$made_prc" ] || rm -f "$prc"; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer no without a prompt
echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections || true
apt-get update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

if [ -d /run/systemd/system ]; then
  for u in "${SERVICES[@]}"; do
    if systemctl list-unit-files "$u" 2>/dev/null | grep -q "^$u"; then
      systemctl disable --now "$u" >/dev/null 2>&1 || true
    fi
  done
fi

# A charon/starter in the root namespace would own UDP 500/4500 there and could touch the host's
# XFRM state: say so loudly instead of letting tests fail in confusing ways later.
for f in /run/charon.pid /run/starter.charon.pid /var/run/charon.pid; do
  if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
    echo "packages.sh: WARNING: a system charon is running (pid $(cat "$f"), $f);" \
      "stop it: the tests run their own charons" >&2
  fi
done

still=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || still+=("$p")
done
if [ ${#still[@]} -ne 0 ]; then
  echo "packages.sh: still missing after install: ${still[*]}" >&2
  exit 1
fi
echo "packages.sh: done"
