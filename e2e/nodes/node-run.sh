#!/usr/bin/env bash
# One Strait test node: runs INSIDE the node's network namespace and its own private mount
# namespace (node-lib.sh starts it with nsenter --net + unshare --mount). Starts containerd, imports
# the locally built images, starts kubelet, and on SIGTERM stops kubelet, every container and
# containerd, in that order. When this script and its children are gone, the mount namespace (and
# every overlay, tmpfs and bind mount in it) goes with them.
# Usage: node-run.sh NODE_NAME NODE_DIR NODE_IP
set -uo pipefail
name="$1" d="$2" ip="$3"
CACHE="${STRAIT_CACHE:-/var/cache/strait}"
BIN="$CACHE/bin"
IMAGES="$CACHE/images"
sock="$d/containerd.sock"
log() { printf '[%s %s] %s\n' "$name" "$(date +%T.%3N)" "$*"; }

# kubelet checks (protectKernelDefaults: true) that these host-wide sysctls have the values it
# wants, and would otherwise write them for the whole machine. Here it reads our copies instead.
for s in vm.overcommit_memory kernel.panic kernel.panic_on_oops; do
	mount --bind "$d/sysctl/$s" "/proc/sys/${s//.//}" || { log "cannot bind-mount over /proc/sys/${s//.//}"; exit 1; }
done

# kubelet's fixed host paths (see HOST_FIXED_DIRS in node-lib.sh): this node's own directories
for p in ${HOST_FIXED_DIRS:-}; do
	mount --bind "$d/host$p" "$p" || { log "cannot bind-mount $d/host$p over $p"; exit 1; }
done

ctr_() { "$BIN/ctr" --address "$sock" -n k8s.io "$@"; }

kubelet_pid="" containerd_pid="" proxy_pid=""
stop_all() {
	trap - TERM INT
	log "stopping"
	if [ -n "$proxy_pid" ]; then
		kill -TERM "$proxy_pid" 2>/dev/null
		wait "$proxy_pid" 2>/dev/null
	fi
	if [ -n "$kubelet_pid" ]; then
		kill -TERM "$kubelet_pid" 2>/dev/null
		wait "$kubelet_pid" 2>/dev/null
	fi
	# kubelet leaves containers running when it exits: stop them through containerd.
	local c
	for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1; done
	sleep 0.5
	for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$c" >/dev/null 2>&1; done
	for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1; done
	if [ -n "$containerd_pid" ]; then
		kill -TERM "$containerd_pid" 2>/dev/null
		wait "$containerd_pid" 2>/dev/null
	fi
	log "stopped"
	exit 0
}
trap stop_all TERM INT

log "containerd"
"$BIN/containerd" --config "$d/containerd.toml" --log-level info >"$d/containerd.log" 2>&1 &
containerd_pid=$!
for ((i = 0; i < 120; i++)); do
	"$BIN/ctr" --address "$sock" version >/dev/null 2>&1 && break
	kill -0 "$containerd_pid" 2>/dev/null || { log "containerd exited"; tail -20 "$d/containerd.log"; exit 1; }
	sleep 0.25
done
for img in ${STRAIT_NODE_IMAGES:-pause strait-agent strait-operator}; do
	t0=$(date +%s.%N)
	ctr_ images import --local "$IMAGES/$img.tar" >"$d/import-$img.log" 2>&1 ||
		{ log "importing $img failed: $(cat "$d/import-$img.log")"; stop_all; }
	log "imported $img ($(python3 -c "print(round($(date +%s.%N)-$t0,2))") s)"
done

log "kubelet"
"$BIN/kubelet" --config="$d/kubelet-config.yaml" --kubeconfig="$d/kubelet.kubeconfig" \
	--root-dir="$d/kubelet" --cert-dir="$d/pki" --hostname-override="$name" --node-ip="$ip" \
	--node-labels="strait.dev/test-node=$name" --v=2 >"$d/kubelet.log" 2>&1 &
kubelet_pid=$!

log "kube-proxy"
"$BIN/kube-proxy" --config="$d/kube-proxy.yaml" --v=1 >"$d/kube-proxy.log" 2>&1 &
proxy_pid=$!

# Exit (and stop everything) when either daemon dies.
wait -n "$kubelet_pid" "$containerd_pid" "$proxy_pid"
state() { kill -0 "$1" 2>/dev/null && echo running || echo exited; }
log "a daemon exited: kubelet $(state $kubelet_pid), containerd $(state $containerd_pid), kube-proxy $(state $proxy_pid)"
stop_all
