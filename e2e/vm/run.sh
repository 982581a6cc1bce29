#!/bin/bash
# Run a command as root inside a stock Debian kernel (which has ESP, XFRM, AES-GCM) booted under
# qemu TCG by virtme-ng, with the host's root filesystem shared read-only over 9p.
#
#   e2e/vm/run.sh [--rwdir DIR]... [--timeout SECS] [--mem SIZE] [--net-user] -- CMD ARGS...
#
# Exits with CMD's status; 124 when the VM was killed by the timeout; 2 on usage errors; 3 when
# the VM pieces are missing (run e2e/setup/vm.sh). Inside the guest, before CMD: the ESP/XFRM/
# crypto/veth/nftables modules are loaded, lo is up, the working directory is the host's $PWD.
# Guest writes reach the host only under a --rwdir (the rest is read-only or guest tmpfs).
# The guest has its own empty tmpfs on /tmp, /var/tmp and /var/cache: host files there are not
# visible inside unless passed with --rwdir.
# --net-user: a NIC on qemu's user-mode network (slirp, DHCP); the guest reaches the host's
# loopback at 10.0.2.2 (e.g. a control plane the host runs). Without it the guest has no network.
#
# Environment: STRAIT_CACHE (default /var/cache/strait), STRAIT_VM_TIMEOUT (default 300 s),
# STRAIT_VM_MEM (default 512M), STRAIT_VM_CPUS (default 2).
set -uo pipefail
SELF=$(readlink -f "$0")

# ---------------------------------------------------------------- guest side
if [ "${1:-}" = --in-guest ]; then
  shift
  cwd=$1; shift; [ "${1:-}" = -- ] && shift
  echo "strait-vm: guest up, uptime $(cut -d' ' -f1 /proc/uptime)s, kernel $(uname -r)"
  # Required: ESP (v4/v6; ESP-in-UDP is part of esp4), xfrm netlink, veth, and the algorithms the
  # tests use: rfc4106(gcm(aes)), cbc(aes) with hmac(sha256/384/512). One modprobe process for
  # all: under TCG every module costs (signature check), so load only what is needed; the rest
  # (nftables NAT, tun, ...) the kernel autoloads on first use.
  required=(esp4 esp6 xfrm_user veth gcm cbc hmac sha256_generic sha512_generic authenc seqiv)
  optional=(af_key xfrm_interface aesni_intel ghash_clmulni_intel virtio_rng)
  t0=$(cut -d' ' -f1 /proc/uptime)
  # virtme links /lib/modules/<ver> to the kernel tree on 9p, where every file access is a slow
  # round trip under TCG; each modprobe (also those the kernel runs itself, e.g. when charon or
  # the af_alg plugin asks for a crypto algorithm) reads the index files. Copy the indexes to
  # the guest's tmpfs and reach the .ko files through a symlink.
  kv=$(uname -r)
  if [ -L "/lib/modules/$kv" ]; then
    src=$(readlink -f "/lib/modules/$kv")
    rm "/lib/modules/$kv" && mkdir "/lib/modules/$kv" &&
      cp "$src"/modules.*.bin "$src"/modules.builtin* "$src"/modules.softdep "$src"/modules.order \
        "/lib/modules/$kv/" && ln -s "$src/kernel" "/lib/modules/$kv/kernel" ||
      { rm -rf "/lib/modules/$kv"; ln -sfn "$src" "/lib/modules/$kv"; }
  fi
  if ! modprobe -a "${required[@]}"; then
    echo "strait-vm: FAILED to load required modules (${required[*]})" >&2
    exit 3
  fi
  modprobe -a -q "${optional[@]}" 2>/dev/null || true
  echo "strait-vm: modules loaded in $(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN{printf "%.1f", b-a}')s"
  ip link set lo up
  # --net-user: the guest's init runs no DHCP client; qemu's user network has fixed addresses
  for d in /sys/class/net/*; do
    n=${d##*/}
    [ "$n" != lo ] && [ -e "$d/device" ] || continue
    ip link set "$n" up && ip addr add 10.0.2.15/24 dev "$n" && echo "strait-vm: $n is 10.0.2.15/24" && break
  done
  cd "$cwd" 2>/dev/null || cd /
  echo "strait-vm: running $*"
  "$@"
  rc=$?
  echo "strait-vm: command exited $rc, uptime $(cut -d' ' -f1 /proc/uptime)s"
  exit $rc
fi

# ---------------------------------------------------------------- host side
usage() { echo "usage: $0 [--rwdir DIR]... [--timeout SECS] [--mem SIZE] [--net-user] -- CMD ARGS..." >&2; exit 2; }
CACHE=${STRAIT_CACHE:-/var/cache/strait}
VM=$CACHE/vm
TIMEOUT=${STRAIT_VM_TIMEOUT:-300}
MEM=${STRAIT_VM_MEM:-512M}
CPUS=${STRAIT_VM_CPUS:-2}
rw=()
while [ $# -gt 0 ]; do
  case $1 in
    --rwdir) [ $# -ge 2 ] || usage; rw+=("--rwdir=$(readlink -f "$2")"); shift 2 ;;
    --rwdir=*) rw+=("--rwdir=$(readlink -f "${1#--rwdir=}")"); shift ;;
    --timeout) [ $# -ge 2 ] || usage; TIMEOUT=$2; shift 2 ;;
    --mem) [ $# -ge 2 ] || usage; MEM=$2; shift 2 ;;
    --net-user) rw+=(--network user); shift ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[ $# -ge 1 ] || usage

if [ "$(id -u)" -ne 0 ]; then echo "run.sh: must run as root" >&2; exit 2; fi
KERNEL=$(cat "$VM/current" 2>/dev/null || true)
if [ -z "$KERNEL" ] || [ ! -f "$KERNEL" ] || [ ! -x "$VM/venv/bin/vng" ]; then
  echo "run.sh: no VM kernel/virtme-ng under $VM: run e2e/setup/vm.sh (after e2e/setup/packages.sh)" >&2
  exit 3
fi
for c in qemu-system-x86_64 busybox; do
  command -v $c >/dev/null || { echo "run.sh: $c missing: run e2e/setup/packages.sh" >&2; exit 3; }
done
export PATH="$VM/venv/bin:$PATH"   # vng finds virtme-run etc. through PATH
# the peers' root file systems (e2e/setup/peers.sh), under /var/cache like the kernel tree
[ -d "$CACHE/peers" ] && rw+=("--rodir=$CACHE/peers")

# The guest command line goes through a shell inside the guest: quote every word.
guest_cmd=$(printf '%q ' "$SELF" --in-guest "$PWD" -- "$@")
start=$(date +%s.%N)
# - stdin from /dev/null: vng otherwise attaches the terminal and can hang without one
# - output through cat: qemu re-opens a regular-file stdout with O_TRUNC and clobbers it
# - --rodir for the kernel tree: the guest mounts a tmpfs over /var/cache (and /tmp, /var/tmp),
#   which would hide the modules virtme links into /lib/modules
# - virtio-rng: entropy for the guest's /dev/random (charon's random plugin reads it)
# - timeout -k: TERM first, then KILL; qemu under TCG can hang on a wedged guest
timeout -k 10 "$TIMEOUT" vng --run "$KERNEL" --disable-kvm --force-9p \
  --memory "$MEM" --cpus "$CPUS" --user root "${rw[@]}" --rodir="$VM/kernel" \
  --qemu-opts="-device virtio-rng-pci" --exec "$guest_cmd" </dev/null 2>&1 | cat
rc=${PIPESTATUS[0]}
end=$(date +%s.%N)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}')
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "run.sh: VM timed out after ${TIMEOUT}s (STRAIT_VM_TIMEOUT)" >&2
  exit 124
fi
echo "strait-vm: VM run took ${secs}s (boot + command), exit $rc"
exit "$rc"
