#!/usr/bin/env bash
# Builds Strait's container images as OCI image archives, with no container daemon and no registry:
#   localhost/pause:3.10.2            the pod sandbox image (Kubernetes' own pause.c, gcc -static)
#   localhost/strait-agent:VERSION     strait-agent on a distroless-style root, plus nft (the agent's
#                                      masquerade exemption and MSS clamping), runs as root
#   localhost/strait-operator:VERSION  strait-operator on the same root, runs as 65532 (non-root)
# Import one into a node's containerd with `ctr -n k8s.io images import ARCHIVE`.
#
# The root ("base" layer) holds only what the Rust binaries need: the glibc shared libraries and
# loader from Debian bookworm's libc6, libgcc_s from libgcc-s1, the CA bundle from ca-certificates
# (concatenated as update-ca-certificates would), /etc/passwd and /etc/group, /tmp, and the
# packages' copyright files. No shell, no package manager. The .debs are pinned below and fetched
# once with `apt-get download` into the cache; files are taken out with `dpkg-deb -x`.
# Layers and archives are written by e2e/nodes/oci-image.py: fixed mtimes, sorted entries, uid 0, so
# the same inputs give the same digests (run twice and compare the printed manifest digests).
#
# Usage: e2e/setup/images.sh [--agent PATH] [--operator PATH]
#   Without paths, builds them: cargo build --release --locked -p strait-agent -p strait-operator with
#   CARGO_TARGET_DIR=${STRAIT_NODES_TARGET:-$STRAIT_CACHE/target-nodes}.
# Out:  ${STRAIT_CACHE:-/var/cache/strait}/images/{pause,strait-agent,strait-operator}.tar and
#       images.json (name, digest, sizes of each).
set -euo pipefail

PAUSE_VERSION=3.10.2           # kubernetes v1.37.2 build/pause/Makefile TAG
K8S_VERSION=v1.37.2            # where pause.c comes from (the module controlplane.sh downloads)
LIBC6_VERSION=2.36-9+deb12u14  # bookworm
LIBGCC_VERSION=12.2.0-14+deb12u1  # also gcc-12-base: libgcc-s1's copyright file is that package's
CACERTS_VERSION=20250419~deb12u2
# nft and its libraries, for the agent image only (bookworm)
NFT_DEBS="nftables=1.0.6-2+deb12u2 libnftables1=1.0.6-2+deb12u2 libedit2=3.1-20221030-2
libmnl0=1.0.4-3 libnftnl11=1.2.4-2 libxtables12=1.8.9-2 libjansson4=2.14-2
libgmp10=2:6.2.1+dfsg1-1.1 libtinfo6=6.4-4 libbsd0=0.11.7-2 libmd0=1.0.4-2"
# Every file's mtime in every layer: 2025-01-01T00:00:00Z.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1735689600}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${STRAIT_CACHE:-/var/cache/strait}"
OUT="$CACHE/images"
DEBS="$OUT/debs"
WORK="$OUT/work"
OCI="$REPO/e2e/nodes/oci-image.py"

log() { printf '[images] %s\n' "$*"; }
die() {
	printf '[images] ERROR: %s\n' "$*" >&2
	exit 1
}

AGENT_BIN="" OPERATOR_BIN=""
while [ $# -gt 0 ]; do
	case "$1" in
	--agent) AGENT_BIN="$2"; shift 2 ;;
	--operator) OPERATOR_BIN="$2"; shift 2 ;;
	*) die "unknown argument $1 (usage: $0 [--agent PATH] [--operator PATH])" ;;
	esac
done

for t in python3 dpkg-deb apt-get gcc strip; do
	command -v "$t" >/dev/null || die "$t is needed"
done
mkdir -p "$OUT" "$DEBS" || die "cannot create $OUT (run as root or set STRAIT_CACHE)"
start=$SECONDS

APP_VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml")"
[ -n "$APP_VERSION" ] || die "cannot read the workspace version from $REPO/Cargo.toml"

# ---- the Rust binaries ---------------------------------------------------------------------------
if [ -z "$AGENT_BIN" ] || [ -z "$OPERATOR_BIN" ]; then
	target="${STRAIT_NODES_TARGET:-$CACHE/target-nodes}"
	log "cargo build --release -p strait-agent -p strait-operator (CARGO_TARGET_DIR=$target)"
	t0=$SECONDS
	(cd "$REPO" && CARGO_TARGET_DIR="$target" nice -n 10 cargo build --release --locked \
		-p strait-agent -p strait-operator) || die "cargo build failed"
	log "cargo build took $((SECONDS - t0)) s"
	AGENT_BIN="${AGENT_BIN:-$target/release/strait-agent}"
	OPERATOR_BIN="${OPERATOR_BIN:-$target/release/strait-operator}"
fi
for b in "$AGENT_BIN" "$OPERATOR_BIN"; do [ -x "$b" ] || die "$b is not an executable"; done

# ---- Debian packages for the base root -----------------------------------------------------------
fetch_deb() { # package version -> path of the cached .deb
	local pkg="$1" ver="$2" f
	f="$(ls "$DEBS/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n 1 || true)"
	if [ -z "$f" ]; then
		(cd "$DEBS" && timeout 300 apt-get download "$pkg=$ver" >"$DEBS/download.log" 2>&1) || {
			cat "$DEBS/download.log" >&2
			die "apt-get download $pkg=$ver failed; the mirror has $(apt-cache policy "$pkg" |
				sed -n 's/ *Candidate: //p'): update the pin in $0"
		}
		f="$(ls "$DEBS/${pkg}_${ver//:/%3a}_"*.deb | head -n 1)"
	fi
	echo "$f"
}

rm -rf "$WORK"
mkdir -p "$WORK/x" "$WORK/base" "$WORK/pause" "$WORK/agent/usr/local/bin" "$WORK/operator/usr/local/bin"
for spec in "libc6 $LIBC6_VERSION" "libgcc-s1 $LIBGCC_VERSION" "gcc-12-base $LIBGCC_VERSION" \
	"ca-certificates $CACERTS_VERSION"; do
	set -- $spec
	deb="$(fetch_deb "$1" "$2")"
	mkdir -p "$WORK/x/$1"
	dpkg-deb -x "$deb" "$WORK/x/$1"
done

B="$WORK/base"
X="$WORK/x"
mkdir -p "$B/lib/x86_64-linux-gnu" "$B/lib64" "$B/etc/ssl/certs" "$B/tmp" "$B/run" "$B/usr/share/doc"
# glibc: the loader and the shared libraries (no gconv modules, locales, binaries or docs).
cp -a "$X/libc6/lib/x86_64-linux-gnu/." "$B/lib/x86_64-linux-gnu/"
cp -a "$X/libc6/lib64/ld-linux-x86-64.so.2" "$B/lib64/"
cp -a "$X/libgcc-s1/lib/x86_64-linux-gnu/libgcc_s.so.1" "$B/lib/x86_64-linux-gnu/"
# The CA bundle, as update-ca-certificates builds it (the package ships only the single certificates).
find "$X/ca-certificates/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat \
	>"$B/etc/ssl/certs/ca-certificates.crt"
[ -s "$B/etc/ssl/certs/ca-certificates.crt" ] || die "empty CA bundle"
for p in libc6 gcc-12-base ca-certificates; do
	mkdir -p "$B/usr/share/doc/$p"
	cp "$X/$p/usr/share/doc/$p/copyright" "$B/usr/share/doc/$p/copyright"
done
ln -s gcc-12-base "$B/usr/share/doc/libgcc-s1"  # as the package ships it
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$B/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$B/etc/group"
printf 'hosts: files dns\n' >"$B/etc/nsswitch.conf"
chmod 1777 "$B/tmp"
printf 'PRETTY_NAME="Strait distroless-style root (Debian 12 libc6 %s)"\nID=strait-base\n' \
	"$LIBC6_VERSION" >"$B/etc/os-release"

# ---- nft for the agent: the binary, its shared libraries and their copyright files -------------------
A="$WORK/agent"
mkdir -p "$A/usr/sbin" "$A/usr/lib/x86_64-linux-gnu" "$A/usr/share/doc"
for spec in $NFT_DEBS; do
	pkg="${spec%%=*}"
	deb="$(fetch_deb "$pkg" "${spec#*=}")"
	mkdir -p "$X/$pkg"
	dpkg-deb -x "$deb" "$X/$pkg"
	find "$X/$pkg" \( -type f -o -type l \) -name '*.so.*' -path '*/x86_64-linux-gnu/*' \
		-exec cp -a {} "$A/usr/lib/x86_64-linux-gnu/" \;
	if [ -f "$X/$pkg/usr/share/doc/$pkg/copyright" ]; then
		mkdir -p "$A/usr/share/doc/$pkg"
		cp "$X/$pkg/usr/share/doc/$pkg/copyright" "$A/usr/share/doc/$pkg/copyright"
	fi
done
cp -a "$X/nftables/usr/sbin/nft" "$A/usr/sbin/nft"

# ---- the pause binary ----------------------------------------------------------------------------
pause_c="${GOMODCACHE:-$CACHE/go/mod}/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
[ -f "$pause_c" ] || die "$pause_c is missing: run e2e/setup/controlplane.sh first (it downloads k8s.io/kubernetes@$K8S_VERSION)"
gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-strait" -o "$WORK/pause/pause" "$pause_c"
strip "$WORK/pause/pause"

# ---- the Strait binaries (debug info stripped: line tables are 2/3 of the file) ------------------
install -m 0755 "$AGENT_BIN" "$WORK/agent/usr/local/bin/strait-agent"
install -m 0755 "$OPERATOR_BIN" "$WORK/operator/usr/local/bin/strait-operator"
strip --strip-debug "$WORK/agent/usr/local/bin/strait-agent" "$WORK/operator/usr/local/bin/strait-operator"

# Smoke check of the root without a runtime: each binary starts from the assembled root alone.
check_root() { # app-layer-dir binary
	local r="$WORK/check"
	rm -rf "$r"
	cp -a "$B" "$r"
	cp -a "$1/." "$r/"
	chroot "$r" "$2" --version >/dev/null 2>"$WORK/check.log" || {
		cat "$WORK/check.log" >&2
		die "$2 does not start from the image root"
	}
	rm -rf "$r"
}
check_root "$WORK/agent" /usr/local/bin/strait-agent
check_root "$WORK/agent" /usr/sbin/nft
check_root "$WORK/operator" /usr/local/bin/strait-operator

# ---- the archives --------------------------------------------------------------------------------
ENV_PATH="PATH=/usr/local/bin:/usr/sbin:/usr/bin:/bin"
ENV_SSL="SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"
REV_LABEL="org.opencontainers.image.revision=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
: >"$OUT/images.json.tmp"
python3 "$OCI" --name "localhost/pause:$PAUSE_VERSION" --out "$OUT/pause.tar" --layer "$WORK/pause" \
	--entrypoint /pause --user 65535:65535 --mtime "$SOURCE_DATE_EPOCH" >>"$OUT/images.json.tmp"
python3 "$OCI" --name "localhost/strait-agent:$APP_VERSION" --out "$OUT/strait-agent.tar" \
	--layer "$B" --layer "$WORK/agent" --entrypoint /usr/local/bin/strait-agent --user 0:0 \
	--env "$ENV_PATH" --env "$ENV_SSL" --label "$REV_LABEL" --mtime "$SOURCE_DATE_EPOCH" >>"$OUT/images.json.tmp"
python3 "$OCI" --name "localhost/strait-operator:$APP_VERSION" --out "$OUT/strait-operator.tar" \
	--layer "$B" --layer "$WORK/operator" --entrypoint /usr/local/bin/strait-operator --user 65532:65532 \
	--env "$ENV_PATH" --env "$ENV_SSL" --label "$REV_LABEL" --mtime "$SOURCE_DATE_EPOCH" >>"$OUT/images.json.tmp"
mv -f "$OUT/images.json.tmp" "$OUT/images.json"
rm -rf "$WORK"

python3 - "$OUT/images.json" <<'PY' | while read -r line; do log "$line"; done
import json, sys
for line in open(sys.argv[1]):
    j = json.loads(line)
    print(f"{j['name']}: {j['compressed_bytes'] / 1e6:.1f} MB compressed "
          f"(layers {', '.join(str(round(b / 1e6, 2)) for b in j['layers_compressed_bytes'])} MB), "
          f"manifest {j['manifest']}")
PY
log "images in $OUT ($((SECONDS - start)) s)"
