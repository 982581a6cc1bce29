#!/bin/bash
# Guest side of e2e/tests/vm_smoke.rs; runs INSIDE the VM as root (e2e/vm/run.sh -- this):
# a hand-made ESP tunnel-mode SA pair with rfc4106(gcm(aes)) between two namespaces over veth,
# a ping through it, and non-zero byte/packet counters on both SAs in both namespaces.
# Prints "SMOKE-ESP PASS" and exits 0 on success.
set -euo pipefail
L=strait-smoke-l R=strait-smoke-r
OL=192.0.2.1 OR=192.0.2.2          # outer (veth) addresses
IL=198.51.100.1 IR=203.0.113.1     # inner "site" addresses on lo
# 256-bit AES key + 32-bit salt each (test keys, fixed on purpose)
KLR=0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff01020304
KRL=0xffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100a1b2c3d4
SPI_LR=0x5a000001 SPI_RL=0x5a000002

cleanup() { ip netns del $L 2>/dev/null || true; ip netns del $R 2>/dev/null || true; }
trap cleanup EXIT
cleanup
ip netns add $L; ip netns add $R
ip link add vl netns $L type veth peer name vr netns $R
ip -n $L addr add $OL/24 dev vl; ip -n $R addr add $OR/24 dev vr
for n in $L $R; do ip -n $n link set lo up; done
ip -n $L link set vl up; ip -n $R link set vr up
ip -n $L addr add $IL/32 dev lo; ip -n $R addr add $IR/32 dev lo
ip -n $L route add $IR/32 via $OR src $IL; ip -n $R route add $IL/32 via $OL src $IR

# ns, src, dst, spi, key
state() { ip -n "$1" xfrm state add src "$2" dst "$3" proto esp spi "$4" reqid "$4" mode tunnel \
  aead 'rfc4106(gcm(aes))' "$5" 128; }
for n in $L $R; do
  state $n $OL $OR $SPI_LR $KLR
  state $n $OR $OL $SPI_RL $KRL
done
# ns, local net, remote net, local gw, remote gw, out spi/reqid, in spi/reqid
policy() {
  ip -n "$1" xfrm policy add src "$2" dst "$3" dir out tmpl src "$4" dst "$5" proto esp reqid "$6" mode tunnel
  ip -n "$1" xfrm policy add src "$3" dst "$2" dir in  tmpl src "$5" dst "$4" proto esp reqid "$7" mode tunnel
}
policy $L $IL/32 $IR/32 $OL $OR $SPI_LR $SPI_RL
policy $R $IR/32 $IL/32 $OR $OL $SPI_RL $SPI_LR

ip netns exec $L ping -c 3 -i 0.3 -W 3 -I $IL $IR

fail=0
for n in $L $R; do
  echo "--- ip -s xfrm state in $n"
  out=$(ip -n $n -s xfrm state)
  echo "$out"
  # the line after "lifetime current:" reads "<bytes>(bytes), <packets>(packets)"
  counts=$(echo "$out" | awk '/lifetime current:/{getline; gsub(/[(),a-z]/," "); print $1, $2}')
  [ "$(echo "$counts" | wc -l)" -eq 2 ] || { echo "FAIL: expected 2 SAs in $n"; fail=1; }
  while read -r bytes pkts; do
    if [ "${bytes:-0}" -lt 1 ] || [ "${pkts:-0}" -lt 1 ]; then
      echo "FAIL: zero ESP counters in $n ($bytes bytes, $pkts packets)"; fail=1
    fi
  done <<< "$counts"
done
[ $fail -eq 0 ] || exit 1
echo "SMOKE-ESP PASS"
