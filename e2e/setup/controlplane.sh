#!/usr/bin/env bash
# Installs the real Kubernetes control plane used by Strait's tier-3 tests:
# kube-apiserver and kubectl (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3) and helm
# (helm.sh/helm/v4), each built from a pinned Go module version.
#
# Binaries land in ${STRAIT_CACHE:-/var/cache/strait}/bin/<name>-<version>, with a stable symlink
# bin/<name>. Go's module and build caches live under the same directory, so a second run only
# checks that the binaries are there and work (seconds). Safe to run any number of times.
#
# Usage: e2e/setup/controlplane.sh            (as root, or with STRAIT_CACHE set to a writable dir)
# Env:   STRAIT_CACHE   cache root (default /var/cache/strait)
#        STRAIT_GO_NICE nice level for Go builds (default 10)
set -euo pipefail

# ---- pinned versions (see docs/testing-controlplane.md for why) -----------------------------------
K8S_VERSION=v1.37.2   # kube-apiserver and kubectl; newest 1.37.x the Go proxy had
ETCD_VERSION=v3.7.3   # k8s 1.37 is built against the etcd 3.7 client (kubeadm default 3.7.0)
HELM_VERSION=v4.3.1   # newest helm v4 release

CACHE="${STRAIT_CACHE:-/var/cache/strait}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
NICE="${STRAIT_GO_NICE:-10}"
NET_TIMEOUT=900   # seconds for a module download step (the kubernetes graph is large)
BUILD_TIMEOUT=3600

log() { printf '[controlplane] %s\n' "$*"; }
die() {
	printf '[controlplane] ERROR: %s\n' "$*" >&2
	exit 1
}

# ---- preconditions -------------------------------------------------------------------------------
if ! mkdir -p "$BIN" "$SRC" 2>/dev/null || [ ! -w "$CACHE" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		die "cannot write to $CACHE: run as root, or set STRAIT_CACHE to a writable directory"
	fi
	die "cannot create or write to $CACHE"
fi

# Go's caches live under the Strait cache so that a rebuild is warm and `rm -rf $CACHE` resets all.
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go/build"
export GOPATH="$CACHE/go"
export GOTOOLCHAIN=local     # never fetch another Go toolchain; use the one on PATH
export GOFLAGS="-modcacherw -buildvcs=false"
export CGO_ENABLED=0
export GOWORK=off

have_binary() { # name version -> 0 if the versioned binary exists and is executable
	[ -x "$BIN/$1-$2" ]
}

link() { # name version: point the stable symlink at the versioned binary
	ln -sfn "$1-$2" "$BIN/$1.tmp.$$"
	mv -Tf "$BIN/$1.tmp.$$" "$BIN/$1"
}

need_build=0
have_binary kube-apiserver "$K8S_VERSION" || need_build=1
have_binary kubectl "$K8S_VERSION" || need_build=1
have_binary etcd "$ETCD_VERSION" || need_build=1
have_binary helm "$HELM_VERSION" || need_build=1

go_checked=0
check_go() {
	[ "$go_checked" = 1 ] && return 0
	if ! command -v go >/dev/null 2>&1; then
		if [ -x /usr/local/go/bin/go ]; then
			export PATH="/usr/local/go/bin:$PATH"
		else
			die "go is not installed (looked on PATH and in /usr/local/go/bin); Go >= 1.26 is needed"
		fi
	fi
	local v
	v="$(go env GOVERSION 2>/dev/null)" || die "'go env' failed: the Go installation is broken"
	case "$v" in
	go1.2[6-9]* | go1.[3-9][0-9]* | go[2-9]*) ;;
	*) die "Go $v is too old: kubernetes $K8S_VERSION, etcd $ETCD_VERSION and helm $HELM_VERSION need Go >= 1.26" ;;
	esac
	local proxy
	proxy="$(go env GOPROXY)"
	if [ -z "$proxy" ] || [ "$proxy" = off ]; then
		die "GOPROXY is '$proxy': the builds need the Go module proxy"
	fi
	log "using $v, GOPROXY=$proxy, caches under $CACHE/go"
	# Fail fast (and not after minutes) when the proxy cannot be reached.
	if ! timeout 60 go list -m -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>"$CACHE/proxy-check.log"; then
		die "the Go module proxy ($proxy) did not answer for k8s.io/kubernetes@$K8S_VERSION within 60 s: $(tail -n 3 "$CACHE/proxy-check.log")"
	fi
	go_checked=1
}

run_net() { # bounded network step; on failure show the tail of the log
	local what="$1"
	shift
	local logf="$SRC/last-step.log"
	if ! timeout "$NET_TIMEOUT" "$@" >"$logf" 2>&1; then
		tail -n 20 "$logf" >&2
		die "$what failed (or took longer than ${NET_TIMEOUT}s); full log: $logf"
	fi
}

go_build() { # name version dir pkg ldflags
	local name="$1" version="$2" dir="$3" pkg="$4" ldflags="$5"
	local out="$BIN/$name-$version"
	local logf="$SRC/build-$name-$version.log"
	log "building $name $version ($pkg) ... log: $logf"
	local start=$SECONDS
	# Everything was downloaded by the `go get` step: the build itself must not touch the network.
	if ! (cd "$dir" && GOPROXY=off timeout "$BUILD_TIMEOUT" nice -n "$NICE" \
		go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg") >"$logf" 2>&1; then
		tail -n 30 "$logf" >&2
		rm -f "$out.tmp"
		die "building $name $version failed; full log: $logf"
	fi
	mv -f "$out.tmp" "$out"
	log "built $name $version in $((SECONDS - start)) s"
}

new_wrapper() { # dir module-name: an empty Go module to build pinned tools from
	local dir="$1"
	rm -rf "$dir"
	mkdir -p "$dir"
	(cd "$dir" && go mod init "$2" >/dev/null 2>&1) || die "go mod init failed in $dir"
}

# ---- kube-apiserver + kubectl --------------------------------------------------------------------
build_kubernetes() {
	local dir="$SRC/kubernetes-$K8S_VERSION"
	local minor patch staging_version
	minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
	patch="$(echo "$K8S_VERSION" | cut -d. -f3)"
	staging_version="v0.$minor.$patch"

	if [ ! -f "$dir/.ready" ]; then
		log "preparing wrapper module for k8s.io/kubernetes $K8S_VERSION in $dir"
		new_wrapper "$dir" strait.dev/e2e/kubernetes-wrapper
		local gomod
		run_net "downloading k8s.io/kubernetes@$K8S_VERSION" go mod download -json "k8s.io/kubernetes@$K8S_VERSION"
		gomod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' "$SRC/last-step.log")"
		[ -f "$gomod" ] || die "could not find the go.mod of k8s.io/kubernetes@$K8S_VERSION"
		# Every staging module is required at v0.0.0 (the monorepo replaces it with ./staging/...);
		# outside the monorepo it must point at the matching published v0.<minor>.<patch>.
		local staged
		staged="$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$gomod" | sort -u)"
		[ -n "$staged" ] || die "found no k8s.io/* v0.0.0 requirements in $gomod"
		local args=() m
		for m in $staged; do
			args+=("-replace=$m=$m@$staging_version")
		done
		(cd "$dir" && go mod edit "${args[@]}") || die "go mod edit failed in $dir"
		log "replaced $(echo "$staged" | wc -l) staging modules with $staging_version"
		(cd "$dir" && run_net "resolving k8s.io/kubernetes@$K8S_VERSION (go get -tool)" \
			go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
			"k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION")
		touch "$dir/.ready"
	fi

	local date ldflags="-s -w" key val
	date="$(date -u -d "$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' \
		"$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.info")" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null ||
		echo 1970-01-01T00:00:00Z)"
	for kv in "gitVersion=$K8S_VERSION" "gitMajor=1" "gitMinor=$minor" "gitTreeState=clean" "buildDate=$date"; do
		key="${kv%%=*}"
		val="${kv#*=}"
		ldflags+=" -X k8s.io/client-go/pkg/version.$key=$val -X k8s.io/component-base/version.$key=$val"
	done
	have_binary kube-apiserver "$K8S_VERSION" ||
		go_build kube-apiserver "$K8S_VERSION" "$dir" k8s.io/kubernetes/cmd/kube-apiserver "$ldflags"
	have_binary kubectl "$K8S_VERSION" ||
		go_build kubectl "$K8S_VERSION" "$dir" k8s.io/kubernetes/cmd/kubectl "$ldflags"
}

# ---- etcd ----------------------------------------------------------------------------------------
build_etcd() {
	local dir="$SRC/etcd-$ETCD_VERSION"
	if [ ! -f "$dir/.ready" ]; then
		log "preparing wrapper module for go.etcd.io/etcd/server/v3 $ETCD_VERSION in $dir"
		new_wrapper "$dir" strait.dev/e2e/etcd-wrapper
		# server/v3's own go.mod replaces its siblings with ../ paths; as a dependency those replaces
		# are ignored and its requirements (the same-version api/client/pkg modules) are used.
		(cd "$dir" && run_net "resolving go.etcd.io/etcd/server/v3@$ETCD_VERSION (go get -tool)" \
			go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
		touch "$dir/.ready"
	fi
	go_build etcd "$ETCD_VERSION" "$dir" go.etcd.io/etcd/server/v3 "-s -w"
}

# ---- helm ----------------------------------------------------------------------------------------
build_helm() {
	local dir="$SRC/helm-$HELM_VERSION"
	if [ ! -f "$dir/.ready" ]; then
		log "preparing wrapper module for helm.sh/helm/v4 $HELM_VERSION in $dir"
		new_wrapper "$dir" strait.dev/e2e/helm-wrapper
		(cd "$dir" && run_net "resolving helm.sh/helm/v4@$HELM_VERSION (go get -tool)" \
			go get -tool "helm.sh/helm/v4/cmd/helm@$HELM_VERSION")
		touch "$dir/.ready"
	fi
	local v=helm.sh/helm/v4/internal/version
	go_build helm "$HELM_VERSION" "$dir" helm.sh/helm/v4/cmd/helm \
		"-s -w -X $v.version=$HELM_VERSION -X $v.metadata= -X $v.gitTreeState=clean"
}

# ---- main ----------------------------------------------------------------------------------------
start=$SECONDS
if [ "$need_build" = 1 ]; then
	check_go
	{ have_binary kube-apiserver "$K8S_VERSION" && have_binary kubectl "$K8S_VERSION"; } || build_kubernetes
	have_binary etcd "$ETCD_VERSION" || build_etcd
	have_binary helm "$HELM_VERSION" || build_helm
else
	log "all binaries already in $BIN (nothing to build)"
fi

link kube-apiserver "$K8S_VERSION"
link kubectl "$K8S_VERSION"
link etcd "$ETCD_VERSION"
link helm "$HELM_VERSION"

# Smoke-check that each binary runs and reports the pinned version.
check_version() { # name expected-version command...
	local name="$1" want="$2" out
	shift 2
	if ! out="$(timeout 30 "$@" 2>&1)"; then
		die "$name does not run: $out (delete $BIN/$name-$want and re-run this script)"
	fi
	case "$out" in
	*"${want#v}"*) log "ok: $name $(echo "$out" | head -n 1)" ;;
	*) die "$name reports '$out', expected $want" ;;
	esac
}
check_version kube-apiserver "$K8S_VERSION" "$BIN/kube-apiserver" --version
check_version kubectl "$K8S_VERSION" "$BIN/kubectl" version --client
check_version etcd "$ETCD_VERSION" "$BIN/etcd" --version
check_version helm "$HELM_VERSION" "$BIN/helm" version --short

log "control plane ready in $BIN ($((SECONDS - start)) s)"
