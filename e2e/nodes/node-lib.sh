# shellcheck shell=bash
# A control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and kubelet nodes
# (each: its own network namespace, mount namespace, containerd, kubelet, cgroup tree) on one
# machine, from the binaries of e2e/setup/controlplane.sh, e2e/setup/nodes.sh and the images of
# e2e/setup/images.sh. Sourced by e2e/nodes/try-node.sh; see docs/testing-nodes.md.
#
# Network (nothing leaves the machine):
#   root namespace: bridge strait-nbr0, 198.51.100.241/28 (kube-apiserver listens there, port 6443)
#   node i:         netns strait-node<i>, eth0 198.51.100.(241+i)/28, veth peer strait-nv<i> on the
#                   bridge; no default route, so nothing a node runs can reach beyond the bridge.
# (192.0.2.0/24, the first documentation range, is this machine's uplink on eth0: not used here.)
#
# State: $NODES_DIR (default /tmp/strait-nodes): pki/, cp/ (control-plane data and logs),
# node-<name>/ (everything a node owns). `nodes_down` removes all of it, and can be run after a
# crash: it finds what to remove from the names alone.

CACHE="${STRAIT_CACHE:-/var/cache/strait}"
BIN="$CACHE/bin"
CNI_BIN="$CACHE/cni/bin"
IMAGES="$CACHE/images"
NODES_DIR="${STRAIT_NODES_DIR:-/tmp/strait-nodes}"
NODES_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PKI="$NODES_DIR/pki"
CP="$NODES_DIR/cp"
BRIDGE=strait-nbr0
BRIDGE_IP=198.51.100.241
PREFIX=28
APISERVER_PORT=6443
APISERVER_URL="https://$BRIDGE_IP:$APISERVER_PORT"
KUBECONFIG_ADMIN="$NODES_DIR/admin.kubeconfig"
PAUSE_IMAGE=localhost/pause:3.10.2
# containerd's shim socket directory must be at most 42 characters long: not under $NODES_DIR.
SHIM_ROOT=/run/strait-nodes

nlog() { printf '[nodes %s] %s\n' "$(date +%T)" "$*" >&2; }
ndie() {
	printf '[nodes] ERROR: %s\n' "$*" >&2
	exit 1
}

# kubectl's discovery/http cache of our API server stays with our state, not in ~/.kube/cache.
export KUBECACHEDIR="$NODES_DIR/kube-cache"
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# Paths kubelet and the CNI library use whatever their configuration says (device-plugin socket,
# container log symlinks, CNI result cache). Each node bind-mounts a directory of its own over them
# in its mount namespace; on the host they exist only as empty mount points while nodes run.
# /run/strait-agent is the chart's agent.stateDir: each node's agents keep their own IKE state.
HOST_FIXED_DIRS="/var/lib/kubelet /var/lib/cni /var/log/containers /run/strait-agent"

node_ip() { echo "198.51.100.$((241 + $1))"; }

# ---- preconditions -------------------------------------------------------------------------------
nodes_check() {
	[ "$(id -u)" = 0 ] || ndie "must run as root (network namespaces, cgroups, mounts)"
	local b
	for b in etcd kube-apiserver kubectl; do
		[ -x "$BIN/$b" ] || ndie "$BIN/$b missing: run e2e/setup/controlplane.sh"
	done
	for b in kube-controller-manager kube-scheduler kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc; do
		[ -x "$BIN/$b" ] || ndie "$BIN/$b missing: run e2e/setup/nodes.sh"
	done
	for b in pause strait-agent strait-operator; do
		[ -f "$IMAGES/$b.tar" ] || ndie "$IMAGES/$b.tar missing: run e2e/setup/images.sh"
	done
	for b in openssl nsenter unshare ip python3 nft; do
		command -v "$b" >/dev/null || ndie "$b is needed"
	done
}

# ---- certificates --------------------------------------------------------------------------------
# One CA signs everything: the API server's serving cert, the kubelets' client and serving certs and
# the API server's client cert for kubelets. Users (admin, controller-manager, scheduler) use tokens.
pki_cert() { # name subject [SANs] [client|server|both]
	local name="$1" subj="$2" sans="${3:-}" usage="${4:-client}" ext="$PKI/$1.ext"
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		case "$usage" in
		client) echo "extendedKeyUsage=clientAuth" ;;
		server) echo "extendedKeyUsage=serverAuth" ;;
		both) echo "extendedKeyUsage=serverAuth,clientAuth" ;;
		esac
		[ -n "$sans" ] && echo "subjectAltName=$sans"
	} >"$ext"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
	openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
		-days 2 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null || ndie "signing $name failed"
	rm -f "$PKI/$name.csr" "$ext"
}

pki_init() {
	mkdir -p "$PKI"
	chmod 700 "$PKI"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
	openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=strait-test-ca" -days 2 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
		-out "$PKI/ca.crt" 2>/dev/null || ndie "creating the CA failed"
	pki_cert apiserver "/CN=kube-apiserver" \
		"IP:$BRIDGE_IP,IP:127.0.0.1,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" server
	pki_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "" client
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
	openssl pkey -pubout -in "$PKI/sa.key" -out "$PKI/sa.pub" 2>/dev/null
	local t_admin t_kcm t_sched
	t_admin="$(openssl rand -hex 24)"
	t_kcm="$(openssl rand -hex 24)"
	t_sched="$(openssl rand -hex 24)"
	{
		echo "$t_admin,strait-admin,strait-admin-uid,\"system:masters\""
		echo "$t_kcm,system:kube-controller-manager,kcm-uid"
		echo "$t_sched,system:kube-scheduler,sched-uid"
	} >"$PKI/tokens.csv"
	write_kubeconfig "$KUBECONFIG_ADMIN" "token: $t_admin"
	write_kubeconfig "$CP/kcm.kubeconfig" "token: $t_kcm"
	write_kubeconfig "$CP/scheduler.kubeconfig" "token: $t_sched"
}

write_kubeconfig() { # path user-lines...
	local path="$1"
	shift
	{
		cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: strait
  cluster:
    server: $APISERVER_URL
    certificate-authority: $PKI/ca.crt
contexts:
- name: strait
  context: {cluster: strait, user: u}
current-context: strait
users:
- name: u
  user:
EOF
		local l
		for l in "$@"; do echo "    $l"; done
	} >"$path"
	chmod 600 "$path"
}

# ---- network -------------------------------------------------------------------------------------
net_up() {
	ip link show "$BRIDGE" >/dev/null 2>&1 && return 0
	ip link add "$BRIDGE" type bridge
	sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1"
	ip addr add "$BRIDGE_IP/$PREFIX" dev "$BRIDGE"
	ip link set "$BRIDGE" up
}

# ---- processes -----------------------------------------------------------------------------------
# Every long-running process is started with setsid (its own session and process group) and its
# pid recorded in $NODES_DIR/pids/<name>; stopping kills that process group.
spawn() { # name log cmd...
	local name="$1" logf="$2"
	shift 2
	mkdir -p "$NODES_DIR/pids"
	setsid "$@" </dev/null >"$logf" 2>&1 &
	echo $! >"$NODES_DIR/pids/$name"
}

# A recorded pid is only signalled while it is still ours (after a crash it may have been reused):
# every process we start has $NODES_DIR in its command line.
ours() { { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null | grep -qF "$NODES_DIR"; }

stop_group() { # name [grace-seconds]
	local f="$NODES_DIR/pids/$1" pid i
	[ -f "$f" ] || return 0
	pid="$(cat "$f")"
	if ours "$pid"; then
		kill -TERM -- "-$pid" 2>/dev/null || true
		for ((i = 0; i < ${2:-10} * 10; i++)); do
			ours "$pid" || break
			sleep 0.1
		done
		if ours "$pid"; then
			nlog "$1 did not stop within ${2:-10} s of SIGTERM: SIGKILL"
			kill -KILL -- "-$pid" 2>/dev/null || true
		fi
		wait "$pid" 2>/dev/null || true
	fi
	rm -f "$f"
}

wait_for() { # seconds description command...: poll until the command succeeds
	local secs="$1" what="$2" i
	shift 2
	for ((i = 0; i < secs * 4; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.25
	done
	return 1
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---- control plane -------------------------------------------------------------------------------
cp_up() {
	mkdir -p "$CP"
	pki_init
	net_up
	local c p
	c="$(free_port)"
	p="$(free_port)"
	nlog "etcd on 127.0.0.1:$c"
	spawn etcd "$CP/etcd.log" "$BIN/etcd" --name=strait-nodes --data-dir="$CP/etcd" \
		--listen-client-urls="http://127.0.0.1:$c" --advertise-client-urls="http://127.0.0.1:$c" \
		--listen-peer-urls="http://127.0.0.1:$p" --initial-advertise-peer-urls="http://127.0.0.1:$p" \
		--initial-cluster="strait-nodes=http://127.0.0.1:$p" --unsafe-no-fsync --log-level=warn
	wait_for 30 etcd curl -sf "http://127.0.0.1:$c/health" || ndie "etcd not healthy: $(tail -5 "$CP/etcd.log")"
	nlog "kube-apiserver on $APISERVER_URL"
	spawn kube-apiserver "$CP/kube-apiserver.log" "$BIN/kube-apiserver" \
		--etcd-servers="http://127.0.0.1:$c" \
		--bind-address="$BRIDGE_IP" --advertise-address="$BRIDGE_IP" --secure-port="$APISERVER_PORT" \
		--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
		--client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
		--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority="$PKI/ca.crt" \
		--kubelet-preferred-address-types=InternalIP \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--service-cluster-ip-range=10.0.0.0/24 \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
		--allow-privileged=true --v=1
	wait_for 120 apiserver kc get --raw /readyz --request-timeout=5s ||
		ndie "kube-apiserver not ready: $(tail -5 "$CP/kube-apiserver.log")"
	nlog "kube-controller-manager, kube-scheduler"
	spawn kube-controller-manager "$CP/kube-controller-manager.log" "$BIN/kube-controller-manager" \
		--kubeconfig="$CP/kcm.kubeconfig" --authentication-kubeconfig="$CP/kcm.kubeconfig" \
		--authorization-kubeconfig="$CP/kcm.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$(free_port)" --leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
		--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
		--flex-volume-plugin-dir="$CP/flex-volume" \
		--allocate-node-cidrs=false --controllers='*,-bootstrapsigner,-tokencleaner' --v=1
	spawn kube-scheduler "$CP/kube-scheduler.log" "$BIN/kube-scheduler" \
		--kubeconfig="$CP/scheduler.kubeconfig" --authentication-kubeconfig="$CP/scheduler.kubeconfig" \
		--authorization-kubeconfig="$CP/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$(free_port)" --leader-elect=false --v=1
}

# ---- a node --------------------------------------------------------------------------------------
render() { # template out node-name node-dir node-ip pod-cidr
	sed -e "s|@NODE_NAME@|$3|g" -e "s|@NODE_DIR@|$4|g" -e "s|@NODE_IP@|$5|g" -e "s|@POD_CIDR@|$6|g" \
		-e "s|@BIN@|$BIN|g" -e "s|@CNI_BIN@|$CNI_BIN|g" -e "s|@PKI@|$PKI|g" \
		-e "s|@PAUSE_IMAGE@|$PAUSE_IMAGE|g" -e "s|@SHIM_DIR@|$SHIM_ROOT/$3|g" "$1" >"$2"
}

# The cgroup v1 hierarchies of this machine (one directory per mounted controller set).
cgroup_v1_dirs() {
	awk '$3 == "cgroup" { print $2 }' /proc/self/mounts
}
# ... and the cgroup2 one of a hybrid host (/sys/fs/cgroup/unified): runc creates the pods' paths
# there too, so teardown and the leftover check look there as well.
cgroup_all_dirs() {
	awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts
}

node_up() { # index (1, 2, ...)
	local i="$1" name="strait-node$1" ip d veth="strait-nv$1"
	ip="$(node_ip "$i")"
	d="$NODES_DIR/node-$name"
	nlog "node $name: $ip, state in $d"
	mkdir -p "$d"/{pki,containerd,cni/net.d,cni/ipam,pod-logs,kubelet,sysctl,volume-plugins} "$SHIM_ROOT/$name"
	local p
	# /run is tmpfs on a real node: what the agents saved there is gone at reboot, like the
	# kernel SAs it belongs to (node_down removed this node's network namespace)
	rm -rf "$d/host/run"
	for p in $HOST_FIXED_DIRS; do
		mkdir -p "$d/host$p"
		if [ ! -e "$p" ]; then
			mkdir -p "$p"
			echo "$p" >>"$NODES_DIR/created-mountpoints"
		fi
	done
	# credentials: a client cert in group system:nodes (Node authorizer) and a serving cert
	pki_cert "node-$name" "/O=system:nodes/CN=system:node:$name" "" client
	mv "$PKI/node-$name.crt" "$d/pki/client.crt"
	mv "$PKI/node-$name.key" "$d/pki/client.key"
	pki_cert "kubelet-$name" "/CN=$name" "IP:$ip,DNS:$name" server
	mv "$PKI/kubelet-$name.crt" "$d/pki/kubelet.crt"
	mv "$PKI/kubelet-$name.key" "$d/pki/kubelet.key"
	write_kubeconfig "$d/kubelet.kubeconfig" "client-certificate: $d/pki/client.crt" \
		"client-key: $d/pki/client.key"
	# kube-proxy as user system:kube-proxy (bound to system:node-proxier by the default RBAC)
	pki_cert "proxy-$name" "/CN=system:kube-proxy" "" client
	mv "$PKI/proxy-$name.crt" "$d/pki/proxy.crt"
	mv "$PKI/proxy-$name.key" "$d/pki/proxy.key"
	write_kubeconfig "$d/kube-proxy.kubeconfig" "client-certificate: $d/pki/proxy.crt" \
		"client-key: $d/pki/proxy.key"
	render "$NODES_LIB_DIR/kube-proxy.yaml.in" "$d/kube-proxy.yaml" "$name" "$d" "$ip" "10.244.$i.0/24"
	render "$NODES_LIB_DIR/containerd.toml.in" "$d/containerd.toml" "$name" "$d" "$ip" "10.244.$i.0/24"
	render "$NODES_LIB_DIR/kubelet-config.yaml.in" "$d/kubelet-config.yaml" "$name" "$d" "$ip" "10.244.$i.0/24"
	render "$NODES_LIB_DIR/cni.conflist.in" "$d/cni/net.d/10-strait.conflist" "$name" "$d" "$ip" "10.244.$i.0/24"
	# DNS for pods with dnsPolicy Default: the node's own loopback, where nothing answers.
	echo "nameserver 127.0.0.1" >"$d/resolv.conf"
	# What kubelet wants these host-wide sysctls to be; bind-mounted over /proc/sys in the node's
	# mount namespace, so it finds them as it wants them and never writes the host's (see the doc).
	echo 1 >"$d/sysctl/vm.overcommit_memory"
	echo 10 >"$d/sysctl/kernel.panic"
	echo 1 >"$d/sysctl/kernel.panic_on_oops"

	# cgroups: /strait-nodeN in every v1 hierarchy (kubelet's cgroupRoot must exist)
	local h
	for h in $(cgroup_v1_dirs); do
		mkdir -p "$h/$name"
		if [ -f "$h/cpuset.cpus" ]; then
			cat "$h/cpuset.cpus" >"$h/$name/cpuset.cpus"
			cat "$h/cpuset.mems" >"$h/$name/cpuset.mems"
		fi
	done

	# network namespace with one veth to the bridge
	ip netns add "$name"
	ip link add "$veth" type veth peer name eth0 netns "$name"
	ip link set "$veth" master "$BRIDGE" up
	ip -n "$name" link set lo up
	ip -n "$name" addr add "$ip/$PREFIX" dev eth0
	ip -n "$name" link set eth0 up
	# The Service range (kube-proxy DNATs it) needs a route for the node's own connections, as a
	# real node's default route gives it; nothing else leaves the bridge.
	ip -n "$name" route add 10.0.0.0/24 via "$BRIDGE_IP"
	# The API server's replies to pods (ClusterIP traffic keeps the pod's source address): the
	# node's pod range is behind the node, as a cloud's route table or a routing CNI would say.
	ip route replace "10.244.$i.0/24" via "$ip" dev "$BRIDGE"

	# containerd and kubelet in the node's network namespace and one private mount namespace of
	# their own (kubelet's volume mounts must be visible to containerd and runc; none reach the host)
	spawn "$name" "$d/node.log" nsenter --net="/run/netns/$name" \
		unshare --mount --propagation private -- \
		env PATH="$BIN:/usr/sbin:/usr/bin:/sbin:/bin" HOST_FIXED_DIRS="$HOST_FIXED_DIRS" \
		bash "$NODES_LIB_DIR/node-run.sh" "$name" "$d" "$ip"
}

node_wait_ready() { # index timeout: fails early when the node's processes have exited
	local name="strait-node$1" i pid gone=0
	pid="$(cat "$NODES_DIR/pids/$name")"
	for ((i = 0; i < ${2:-120} * 2; i++)); do
		# Exited only when it is not ours twice in a row, 0.5 s apart: while the spawned chain
		# (setsid, nsenter, unshare, env, bash) execs, its command line reads as this shell's or
		# empty for a moment, and one such read took a starting node for an exited one (twice
		# in four tier runs, right after restart-node).
		if ours "$pid"; then
			gone=0
		else
			gone=$((gone + 1))
			[ "$gone" -lt 2 ] || { nlog "$name: node-run.sh exited"; return 1; }
		fi
		[ "$(kc get node "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] &&
			return 0
		sleep 0.5
	done
	return 1
}

# Stops a node: kubelet first, then every container through containerd, then containerd, then
# whatever is left in its cgroups or network namespace; removes cgroups, netns and state.
node_down() { # name
	local name="$1" d="$NODES_DIR/node-$1" h pid
	if [ -f "$NODES_DIR/pids/$name" ]; then
		pid="$(cat "$NODES_DIR/pids/$name")"
		# node-run.sh stops kubelet, the containers and containerd on SIGTERM
		ours "$pid" && kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 300; i++)); do
			ours "$pid" || break
			sleep 0.1
		done
		stop_group "$name" 1
	fi
	# Anything left (a shim, a container process) dies now: by cgroup, then by network namespace.
	for h in $(cgroup_all_dirs); do
		[ -d "$h/$name" ] || continue
		find "$h/$name" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
	done
	if ip netns list | grep -qw "$name"; then
		ip netns pids "$name" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
	fi
	sleep 0.3
	for h in $(cgroup_all_dirs); do
		[ -d "$h/$name" ] || continue
		find "$h/$name" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		[ -d "$h/$name" ] && nlog "WARNING: cgroup $h/$name not removed (processes left?)"
	done
	if ip netns list | grep -qw "$name"; then ip netns del "$name"; fi
	ip link del "strait-nv${name#strait-node}" 2>/dev/null || true
	rm -rf "${SHIM_ROOT:?}/$name"
	rmdir "$SHIM_ROOT" 2>/dev/null || true
	if grep -q " $d" /proc/self/mountinfo; then
		nlog "WARNING: mounts under $d are left in the root mount namespace"
	else
		rm -rf "$d"
	fi
}

cp_down() {
	local g
	# SIGTERM to all at once (they shut down in parallel), then wait for each in turn
	for g in kube-scheduler kube-controller-manager kube-apiserver etcd; do
		[ -f "$NODES_DIR/pids/$g" ] && ours "$(cat "$NODES_DIR/pids/$g")" &&
			kill -TERM -- "-$(cat "$NODES_DIR/pids/$g")" 2>/dev/null || true
	done
	stop_group kube-scheduler
	stop_group kube-controller-manager
	stop_group kube-apiserver
	stop_group etcd
	if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
}

# ---- the remote site ------------------------------------------------------------------------------
# A network namespace on the bridge for the remote site's gateway (a strongSwan charon the tests
# start): SITE_IP on eth0, and the first address of each half of SITE_NET on lo (charon's
# kernel-libipsec wants an address of its own inside each traffic selector).
SITE_NS=strait-nsite
SITE_IP=198.51.100.254
SITE_NET=203.0.113.0/24
site_up() {
	ip netns add "$SITE_NS"
	ip link add strait-nvs type veth peer name eth0 netns "$SITE_NS"
	ip link set strait-nvs master "$BRIDGE" up
	ip -n "$SITE_NS" link set lo up
	ip -n "$SITE_NS" addr add "$SITE_IP/$PREFIX" dev eth0
	ip -n "$SITE_NS" addr add 203.0.113.1/32 dev lo
	ip -n "$SITE_NS" addr add 203.0.113.129/32 dev lo
	ip -n "$SITE_NS" link set eth0 up
}
site_down() {
	if ip netns list | grep -qw "$SITE_NS"; then
		ip netns pids "$SITE_NS" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
		ip netns del "$SITE_NS"
	fi
	ip link del strait-nvs 2>/dev/null || true
}

# The control plane, N Ready nodes and the remote site's namespace: what the kubelet tests and the
# demo start from.
cluster_up() { # nodes
	local n="$1" i t0=$SECONDS
	cp_up
	nlog "control plane up after $((SECONDS - t0)) s"
	for ((i = 1; i <= n; i++)); do node_up "$i"; done
	for ((i = 1; i <= n; i++)); do
		node_wait_ready "$i" 180 || ndie "strait-node$i not Ready within 180 s"
	done
	nlog "$n node(s) Ready after $((SECONDS - t0)) s"
	# kube-controller-manager creates the default ServiceAccount and kube-root-ca.crt; pods need both.
	wait_for 60 "default ServiceAccount" kc get serviceaccount default -n default || ndie "no default ServiceAccount"
	wait_for 60 "kube-root-ca.crt" kc get configmap kube-root-ca.crt -n default || ndie "no kube-root-ca.crt"
	site_up
}

# Everything down, also after a crash (names are fixed; pid files say what we started).
nodes_down() {
	local n
	site_down
	# ask every node to stop at once; node_down then waits for each and cleans up
	for n in "$NODES_DIR"/pids/strait-node*; do
		[ -f "$n" ] && ours "$(cat "$n")" && kill -TERM "$(cat "$n")" 2>/dev/null || true
	done
	for n in $(ip netns list | awk '{print $1}' | grep -E '^strait-node[0-9]+$'); do node_down "$n"; done
	for n in "$NODES_DIR"/node-strait-node*; do [ -d "$n" ] && node_down "${n##*/node-}"; done
	for n in $(cgroup_all_dirs); do
		for c in "$n"/strait-node*; do [ -d "$c" ] && node_down "${c##*/}"; done
	done
	cp_down
	# the empty mount points we created on the host (rmdir: never removes anything with content)
	if [ -f "$NODES_DIR/created-mountpoints" ]; then
		sort -ru "$NODES_DIR/created-mountpoints" | while read -r n; do rmdir "$n" 2>/dev/null || true; done
	fi
	rm -rf "$NODES_DIR"
}

# What is left of us on this machine: netns, links, cgroups, mounts, processes. Empty = clean.
nodes_leftovers() {
	ip netns list | grep -E '^strait-n(ode|site)' | sed 's/^/netns: /'
	ip -br link | awk '$1 ~ /^strait-n/ { print "link: " $1 }'
	[ -e "$SHIM_ROOT" ] && echo "dir: $SHIM_ROOT"
	for h in $HOST_FIXED_DIRS; do [ -e "$h" ] && echo "dir: $h"; done
	local h
	for h in $(cgroup_all_dirs); do ls -d "$h"/strait-node* 2>/dev/null | sed 's/^/cgroup: /'; done
	grep -h "$NODES_DIR" /proc/[0-9]*/mountinfo 2>/dev/null | sort -u | sed 's/^/mount: /'
	python3 - "$NODES_DIR" <<'PY'
import os, sys
me = {os.getpid(), os.getppid()}
for p in os.listdir("/proc"):
    if not p.isdigit() or int(p) in me:
        continue
    try:
        cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        continue
    if sys.argv[1] in cmd and "nodes_leftovers" not in cmd:
        print(f"process: {p} {cmd[:120]}")
PY
	[ -d "$NODES_DIR" ] && echo "dir: $NODES_DIR"
	return 0
}
