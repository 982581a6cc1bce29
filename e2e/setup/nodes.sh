#!/usr/bin/env bash
# Installs the node tier used by Strait's kubelet tests: kube-controller-manager, kube-scheduler,
# kubelet and kube-proxy (k8s.io/kubernetes, the same release as the control plane's kube-apiserver), containerd 2.x
# with its runc shim and ctr (github.com/containerd/containerd/v2), runc (github.com/opencontainers/
# runc, with seccomp) and the CNI plugins bridge, host-local and loopback
# (github.com/containernetworking/plugins), each built from a pinned Go module version.
#
# Binaries land in ${STRAIT_CACHE:-/var/cache/strait}/bin/<name>-<version> with a stable symlink
# bin/<name>; the CNI plugins in cni/<version>/ with a stable symlink cni/bin. Go's module and build
# caches are the control plane's (same GOCACHE/GOMODCACHE as e2e/setup/controlplane.sh), so the
# Kubernetes builds reuse the packages kube-apiserver already compiled. A second run only checks that
# the binaries are there and work (seconds). Safe to run any number of times.
#
# Usage: e2e/setup/nodes.sh            (as root, or with STRAIT_CACHE set to a writable dir)
# Env:   STRAIT_CACHE   cache root (default /var/cache/strait)
#        STRAIT_GO_NICE nice level for Go builds (default 10)
# Needs: Go >= 1.26 and the Go module proxy; gcc, pkg-config and libseccomp-dev for runc (cgo).
set -euo pipefail

# ---- pinned versions (see docs/testing-nodes.md for why) -----------------------------------------
K8S_VERSION=v1.37.2        # same release as kube-apiserver (e2e/setup/controlplane.sh)
CONTAINERD_VERSION=v2.4.2  # newest containerd 2.x on the proxy; 2.x has the CRI RuntimeConfig call
RUNC_VERSION=v1.5.3        # newest runc release on the proxy
CNI_VERSION=v1.9.1         # newest containernetworking/plugins release on the proxy

CACHE="${STRAIT_CACHE:-/var/cache/strait}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
CNI_DIR="$CACHE/cni"
NICE="${STRAIT_GO_NICE:-10}"
NET_TIMEOUT=900
BUILD_TIMEOUT=3600

log() { printf '[nodes] %s\n' "$*"; }
die() {
	printf '[nodes] ERROR: %s\n' "$*" >&2
	exit 1
}

if ! mkdir -p "$BIN" "$SRC" "$CNI_DIR" 2>/dev/null || [ ! -w "$CACHE" ]; then
	[ "$(id -u)" -ne 0 ] && die "cannot write to $CACHE: run as root, or set STRAIT_CACHE to a writable directory"
	die "cannot create or write to $CACHE"
fi

# The control plane's Go caches: one build cache for every Kubernetes binary.
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go/build"
export GOPATH="$CACHE/go"
export GOTOOLCHAIN=local
export GOFLAGS="-modcacherw -buildvcs=false"
export CGO_ENABLED=0
export GOWORK=off

have() { [ -x "$BIN/$1-$2" ]; }
link() { # name version
	ln -sfn "$1-$2" "$BIN/$1.tmp.$$"
	mv -Tf "$BIN/$1.tmp.$$" "$BIN/$1"
}
CNI_PLUGINS="bridge host-local loopback"
have_cni() {
	local p
	for p in $CNI_PLUGINS; do [ -x "$CNI_DIR/$CNI_VERSION/$p" ] || return 1; done
}

K8S_BINS="kube-controller-manager kube-scheduler kubelet kube-proxy"
CONTAINERD_BINS="containerd containerd-shim-runc-v2 ctr"
need_build=0
for b in $K8S_BINS; do have "$b" "$K8S_VERSION" || need_build=1; done
for b in $CONTAINERD_BINS; do have "$b" "$CONTAINERD_VERSION" || need_build=1; done
have runc "$RUNC_VERSION" || need_build=1
have_cni || need_build=1

go_checked=0
check_go() {
	[ "$go_checked" = 1 ] && return 0
	if ! command -v go >/dev/null 2>&1; then
		[ -x /usr/local/go/bin/go ] || die "go is not installed (looked on PATH and in /usr/local/go/bin); Go >= 1.26 is needed"
		export PATH="/usr/local/go/bin:$PATH"
	fi
	local v proxy
	v="$(go env GOVERSION 2>/dev/null)" || die "'go env' failed: the Go installation is broken"
	case "$v" in
	go1.2[6-9]* | go1.[3-9][0-9]* | go[2-9]*) ;;
	*) die "Go $v is too old: kubernetes $K8S_VERSION and containerd $CONTAINERD_VERSION need Go >= 1.26" ;;
	esac
	proxy="$(go env GOPROXY)"
	[ -n "$proxy" ] && [ "$proxy" != off ] || die "GOPROXY is '$proxy': the builds need the Go module proxy"
	log "using $v, GOPROXY=$proxy, caches under $CACHE/go"
	if ! timeout 60 go list -m -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>"$CACHE/proxy-check.log"; then
		die "the Go module proxy ($proxy) did not answer within 60 s: $(tail -n 3 "$CACHE/proxy-check.log")"
	fi
	go_checked=1
}

run_net() { # what cmd...: a bounded network step; on failure show the tail of its log
	local what="$1" logf="$SRC/last-step-nodes.log"
	shift
	if ! timeout "$NET_TIMEOUT" "$@" >"$logf" 2>&1; then
		tail -n 20 "$logf" >&2
		die "$what failed (or took longer than ${NET_TIMEOUT}s); full log: $logf"
	fi
}

TIMES="$SRC/build-times-nodes.txt"
go_build() { # name version dir pkg ldflags out [extra go build args...]
	local name="$1" version="$2" dir="$3" pkg="$4" ldflags="$5" out="$6"
	shift 6
	local logf="$SRC/build-$name-$version.log" start=$SECONDS
	log "building $name $version ($pkg) ... log: $logf"
	# Everything was downloaded by the `go get` step: the build itself must not touch the network.
	if ! (cd "$dir" && GOPROXY=off timeout "$BUILD_TIMEOUT" nice -n "$NICE" \
		go build -trimpath "$@" -ldflags "$ldflags" -o "$out.tmp" "$pkg") >"$logf" 2>&1; then
		tail -n 30 "$logf" >&2
		rm -f "$out.tmp"
		die "building $name $version failed; full log: $logf"
	fi
	mv -f "$out.tmp" "$out"
	log "built $name $version in $((SECONDS - start)) s"
	printf '%s %s %s s (%s)\n' "$name" "$version" "$((SECONDS - start))" "$(date -u +%FT%TZ)" >>"$TIMES"
}

new_wrapper() { # dir module-name
	rm -rf "$1"
	mkdir -p "$1"
	(cd "$1" && go mod init "$2" >/dev/null 2>&1) || die "go mod init failed in $1"
}

# ---- kube-controller-manager, kube-scheduler, kubelet ---------------------------------------------
build_kubernetes() {
	# Our own wrapper (controlplane.sh owns kubernetes-$K8S_VERSION), made the same way: every
	# k8s.io/<staging> v0.0.0 requirement replaced by the published v0.<minor>.<patch>. The module
	# graph is the same, so the shared GOCACHE already holds most compiled packages.
	local dir="$SRC/kubernetes-nodes-$K8S_VERSION"
	local minor patch staging_version
	minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
	patch="$(echo "$K8S_VERSION" | cut -d. -f3)"
	staging_version="v0.$minor.$patch"
	# The marker names the commands the wrapper resolved: adding one re-resolves.
	if [ "$(cat "$dir/.ready" 2>/dev/null)" != "$K8S_BINS" ]; then
		log "preparing wrapper module for k8s.io/kubernetes $K8S_VERSION in $dir"
		new_wrapper "$dir" strait.dev/e2e/kubernetes-nodes-wrapper
		local gomod staged args=() m
		run_net "downloading k8s.io/kubernetes@$K8S_VERSION" go mod download -json "k8s.io/kubernetes@$K8S_VERSION"
		gomod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' "$SRC/last-step-nodes.log")"
		[ -f "$gomod" ] || die "could not find the go.mod of k8s.io/kubernetes@$K8S_VERSION"
		staged="$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$gomod" | sort -u)"
		[ -n "$staged" ] || die "found no k8s.io/* v0.0.0 requirements in $gomod"
		for m in $staged; do args+=("-replace=$m=$m@$staging_version"); done
		(cd "$dir" && go mod edit "${args[@]}") || die "go mod edit failed in $dir"
		local tools=()
		for b in $K8S_BINS; do tools+=("k8s.io/kubernetes/cmd/$b@$K8S_VERSION"); done
		(cd "$dir" && run_net "resolving k8s.io/kubernetes@$K8S_VERSION node commands (go get -tool)" \
			go get -tool "${tools[@]}")
		echo "$K8S_BINS" >"$dir/.ready"
	fi
	# The same version stamps as controlplane.sh, so `--version` reports the release.
	local date ldflags="-s -w" key val kv b
	date="$(date -u -d "$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' \
		"$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.info")" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null ||
		echo 1970-01-01T00:00:00Z)"
	for kv in "gitVersion=$K8S_VERSION" "gitMajor=1" "gitMinor=$minor" "gitTreeState=clean" "buildDate=$date"; do
		key="${kv%%=*}"
		val="${kv#*=}"
		ldflags+=" -X k8s.io/client-go/pkg/version.$key=$val -X k8s.io/component-base/version.$key=$val"
	done
	for b in $K8S_BINS; do
		have "$b" "$K8S_VERSION" ||
			go_build "$b" "$K8S_VERSION" "$dir" "k8s.io/kubernetes/cmd/$b" "$ldflags" "$BIN/$b-$K8S_VERSION"
	done
}

# ---- containerd, containerd-shim-runc-v2, ctr -----------------------------------------------------
build_containerd() {
	local dir="$SRC/containerd-$CONTAINERD_VERSION" mod=github.com/containerd/containerd/v2
	if [ ! -f "$dir/.ready" ]; then
		log "preparing wrapper module for $mod $CONTAINERD_VERSION in $dir"
		new_wrapper "$dir" strait.dev/e2e/containerd-wrapper
		(cd "$dir" && run_net "resolving $mod@$CONTAINERD_VERSION (go get -tool)" \
			go get -tool "$mod/cmd/containerd@$CONTAINERD_VERSION" \
			"$mod/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" "$mod/cmd/ctr@$CONTAINERD_VERSION")
		touch "$dir/.ready"
	fi
	local v=github.com/containerd/containerd/v2/version b
	local ldflags="-s -w -X $v.Version=$CONTAINERD_VERSION -X $v.Revision=module-proxy -X $v.Package=$mod"
	# Static (CGO_ENABLED=0): no btrfs snapshotter (it needs cgo); overlayfs and native are pure Go.
	for b in $CONTAINERD_BINS; do
		have "$b" "$CONTAINERD_VERSION" ||
			go_build "$b" "$CONTAINERD_VERSION" "$dir" "$mod/cmd/$b" "$ldflags" "$BIN/$b-$CONTAINERD_VERSION" \
				-tags "no_btrfs urfave_cli_no_docs"
	done
}

# ---- runc ----------------------------------------------------------------------------------------
build_runc() {
	local dir="$SRC/runc-$RUNC_VERSION" mod=github.com/opencontainers/runc
	command -v gcc >/dev/null || die "runc needs cgo: install gcc"
	pkg-config --exists libseccomp 2>/dev/null ||
		die "runc is built with seccomp support: install Debian's libseccomp-dev and pkg-config"
	if [ ! -f "$dir/.ready" ]; then
		log "preparing wrapper module for $mod $RUNC_VERSION in $dir"
		new_wrapper "$dir" strait.dev/e2e/runc-wrapper
		(cd "$dir" && run_net "resolving $mod@$RUNC_VERSION (go get -tool)" go get -tool "$mod@$RUNC_VERSION")
		touch "$dir/.ready"
	fi
	# cgo for libseccomp (the `seccomp` tag), linked dynamically against the host's libseccomp2.
	CGO_ENABLED=1 go_build runc "$RUNC_VERSION" "$dir" "$mod" \
		"-s -w -X main.version=${RUNC_VERSION#v} -X main.gitCommit=module-proxy" \
		"$BIN/runc-$RUNC_VERSION" -tags seccomp
}

# ---- CNI plugins ---------------------------------------------------------------------------------
build_cni() {
	local dir="$SRC/cni-plugins-$CNI_VERSION" mod=github.com/containernetworking/plugins p pkg
	if [ ! -f "$dir/.ready" ]; then
		log "preparing wrapper module for $mod $CNI_VERSION in $dir"
		new_wrapper "$dir" strait.dev/e2e/cni-wrapper
		(cd "$dir" && run_net "resolving $mod@$CNI_VERSION (go get -tool)" \
			go get -tool "$mod/plugins/main/bridge@$CNI_VERSION" \
			"$mod/plugins/ipam/host-local@$CNI_VERSION" "$mod/plugins/main/loopback@$CNI_VERSION")
		touch "$dir/.ready"
	fi
	mkdir -p "$CNI_DIR/$CNI_VERSION"
	for p in $CNI_PLUGINS; do
		case "$p" in host-local) pkg="$mod/plugins/ipam/$p" ;; *) pkg="$mod/plugins/main/$p" ;; esac
		[ -x "$CNI_DIR/$CNI_VERSION/$p" ] ||
			go_build "cni-$p" "$CNI_VERSION" "$dir" "$pkg" \
				"-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_VERSION" \
				"$CNI_DIR/$CNI_VERSION/$p"
	done
}

# ---- main ----------------------------------------------------------------------------------------
start=$SECONDS
if [ "$need_build" = 1 ]; then
	check_go
	# One at a time (2 shared cores): cheap ones first so a failure shows early.
	have_cni || build_cni
	have runc "$RUNC_VERSION" || build_runc
	for b in $CONTAINERD_BINS; do have "$b" "$CONTAINERD_VERSION" || { build_containerd; break; }; done
	for b in $K8S_BINS; do have "$b" "$K8S_VERSION" || { build_kubernetes; break; }; done
else
	log "all binaries already in $BIN and $CNI_DIR (nothing to build)"
fi

for b in $K8S_BINS; do link "$b" "$K8S_VERSION"; done
for b in $CONTAINERD_BINS; do link "$b" "$CONTAINERD_VERSION"; done
link runc "$RUNC_VERSION"
ln -sfn "$CNI_VERSION" "$CNI_DIR/bin.tmp.$$" && mv -Tf "$CNI_DIR/bin.tmp.$$" "$CNI_DIR/bin"

check_version() { # name expected command...
	local name="$1" want="$2" out
	shift 2
	out="$(timeout 30 "$@" 2>&1)" || die "$name does not run: $out (delete its binary and re-run this script)"
	case "$out" in
	*"${want#v}"*) log "ok: $name $(echo "$out" | grep -m1 "${want#v}")" ;;
	*) die "$name reports '$out', expected $want" ;;
	esac
}
for b in $K8S_BINS; do check_version "$b" "$K8S_VERSION" "$BIN/$b" --version; done
check_version containerd "$CONTAINERD_VERSION" "$BIN/containerd" --version
check_version ctr "$CONTAINERD_VERSION" "$BIN/ctr" --version
check_version containerd-shim-runc-v2 "$CONTAINERD_VERSION" "$BIN/containerd-shim-runc-v2" -v
check_version runc "$RUNC_VERSION" "$BIN/runc" --version
"$BIN/runc" --version | grep -q "^libseccomp: " || die "runc was built without seccomp support"
# A CNI plugin answers VERSION on stdin/env with the spec versions it supports.
for p in $CNI_PLUGINS; do
	out="$(echo '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION timeout 10 "$CNI_DIR/bin/$p" 2>&1)" ||
		die "CNI plugin $p does not run: $out"
	case "$out" in *'"1.0.0"'*) ;; *) die "CNI plugin $p answers VERSION with '$out'" ;; esac
done
log "ok: CNI plugins $CNI_PLUGINS $CNI_VERSION in $CNI_DIR/bin"
log "node tier ready in $BIN ($((SECONDS - start)) s)"
