#!/usr/bin/env bash
# The node tier's smoke test (e2e/test.sh's `nodes` tier runs it with two nodes). As root:
#   e2e/nodes/try-node.sh [N]     control plane + N kubelet nodes (default 1); smoke test; teardown
#   e2e/nodes/try-node.sh down    remove whatever a crashed run left behind
#   STRAIT_KEEP=1 e2e/nodes/try-node.sh   leave everything running (then `... down`)
# Needs e2e/setup/controlplane.sh, e2e/setup/nodes.sh and e2e/setup/images.sh to have run.
#
# The smoke test, per node: Node Ready; a hostNetwork pod with the strait-agent image on that node
# (scheduled by kube-scheduler) whose init container runs `strait-agent --help` and whose main
# container runs a standalone agent (respond-only tunnel, no data plane); `kubectl logs` of both;
# `kubectl exec ... -- strait-agent status` against the agent's status socket; the agent's bound
# UDP 500 is in the node's network namespace; pod deleted and gone from containerd. Then teardown
# and a check that no netns, link, cgroup, mount or process of ours is left.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=node-lib.sh
source "$HERE/node-lib.sh"

if [ "${1:-}" = down ]; then
	nodes_down
	left="$(nodes_leftovers)"
	[ -z "$left" ] && nlog "clean" || { echo "$left"; exit 1; }
	exit 0
fi
N="${1:-1}"
nodes_check
if [ -d "$NODES_DIR" ] || ip link show "$BRIDGE" >/dev/null 2>&1; then
	nlog "leftovers of an earlier run: removing them first"
	nodes_down
fi

t_start=$SECONDS
teardown() {
	local rc=$?
	if [ "${STRAIT_KEEP:-0}" = 1 ] && [ "$rc" = 0 ]; then
		nlog "STRAIT_KEEP=1: leaving it running; KUBECONFIG=$KUBECONFIG_ADMIN; stop with: $0 down"
		return
	fi
	if [ "$rc" != 0 ]; then
		nlog "FAILED (rc=$rc); last lines of the logs:"
		for f in "$CP"/*.log "$NODES_DIR"/node-*/{node,containerd,kubelet}.log; do
			[ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }
		done
		[ -n "${STRAIT_KEEP_LOGS:-}" ] && cp -a "$NODES_DIR" "$STRAIT_KEEP_LOGS" 2>/dev/null
	fi
	local t0=$SECONDS
	nodes_down
	local left
	left="$(nodes_leftovers)"
	if [ -n "$left" ]; then
		nlog "LEFTOVERS after teardown:"
		echo "$left"
		exit 1
	fi
	nlog "teardown took $((SECONDS - t0)) s; nothing left (no netns, links, cgroups, mounts, processes)"
}
trap teardown EXIT

cp_up
nlog "control plane up after $((SECONDS - t_start)) s"
for ((i = 1; i <= N; i++)); do node_up "$i"; done
for ((i = 1; i <= N; i++)); do
	t0=$SECONDS
	node_wait_ready "$i" 180 || ndie "strait-node$i not Ready within 180 s"
	nlog "strait-node$i Ready ($((SECONDS - t0)) s after start of wait, $((SECONDS - t_start)) s total)"
done
kc get nodes -o wide

# kube-controller-manager creates the default ServiceAccount and kube-root-ca.crt; pods need both.
wait_for 60 "default ServiceAccount" kc get serviceaccount default -n default || ndie "no default ServiceAccount"
wait_for 60 "kube-root-ca.crt" kc get configmap kube-root-ca.crt -n default || ndie "no kube-root-ca.crt"

t_pods=$SECONDS
for ((i = 1; i <= N; i++)); do
	node="strait-node$i"
	pod="agent-smoke-$i"
	nlog "pod $pod on $node"
	kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: smoke-tunnel-$i, namespace: default}
data:
  tunnels.yaml: |
    apiVersion: strait.dev/v1alpha1
    kind: IPsecTunnel
    metadata: {name: smoke}
    spec:
      local: {id: node.example, address: 127.0.0.1, subnets: [198.51.100.0/28]}
      remote: {id: peer.example, address: 127.0.0.2, subnets: [203.0.113.0/28]}
      auth: {psk: {secretRef: {name: smoke-psk, key: psk}}}
      initiation: respond
  psk: "not-a-secret-smoke-test-key-0123456789"
---
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: default}
spec:
  nodeSelector: {kubernetes.io/hostname: $node}
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: help
    image: localhost/strait-agent:0.1.0
    imagePullPolicy: Never
    args: [--help]
  containers:
  - name: agent
    image: localhost/strait-agent:0.1.0
    imagePullPolicy: Never
    args: [standalone, --config, /etc/strait/config/tunnels.yaml, --secrets-dir, /etc/strait/secrets,
           --dataplane, none, --metrics-addr, "off", --node, $node]
    securityContext:
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL], add: [NET_ADMIN, NET_BIND_SERVICE]}
    volumeMounts:
    - {name: config, mountPath: /etc/strait/config}
    - {name: secrets, mountPath: /etc/strait/secrets/smoke-psk}
    - {name: run, mountPath: /run/strait}
  volumes:
  - name: config
    configMap: {name: smoke-tunnel-$i, items: [{key: tunnels.yaml, path: tunnels.yaml}]}
  - name: secrets
    configMap: {name: smoke-tunnel-$i, items: [{key: psk, path: psk}]}
  - {name: run, emptyDir: {}}
EOF
done
# All agents run at the same time, each bound to UDP 500 in its own node's network namespace.
for ((i = 1; i <= N; i++)); do
	node="strait-node$i"
	pod="agent-smoke-$i"
	if ! kc wait --for=condition=Ready "pod/$pod" --timeout=120s >/dev/null; then
		kc describe pod "$pod" | tail -30
		ndie "pod $pod not Ready"
	fi
	nlog "pod $pod Running on $(kc get pod "$pod" -o jsonpath='{.spec.nodeName}') $((SECONDS - t_pods)) s after creation"
	echo "--- kubectl logs $pod -c help (first lines)"
	# (captured first: `kubectl ... | head` can kill kubectl with SIGPIPE, which pipefail reports)
	out="$(kc logs "$pod" -c help)"
	printf '%s\n' "$out" | sed -n 1,8p
	case "$out" in *"Strait's per-node IPsec agent"*) ;; *) ndie "help output missing from kubectl logs" ;; esac
	echo "--- kubectl logs $pod -c agent"
	wait_for 30 "agent log" sh -c "'$BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' logs $pod -c agent | grep -q ." ||
		ndie "no agent log"
	out="$(kc logs "$pod" -c agent)"
	printf '%s\n' "$out" | sed -n 1,5p
	echo "--- kubectl exec $pod -c agent -- strait-agent status"
	wait_for 30 "status" kc exec "$pod" -c agent -- strait-agent status || true
	kc exec "$pod" -c agent -- strait-agent status || ndie "kubectl exec strait-agent status failed"
	echo "--- the agent's IKE socket is in $node's network namespace"
	ip netns exec "$node" ss -ulnp | grep -E ':(500|4500)\b' || ndie "no UDP 500/4500 socket in $node"
	if ss -ulnp | grep -E '127\.0\.0\.1:500\b' | grep -q strait-agent; then ndie "agent socket in the root namespace"; fi
done
echo "--- all agent pods at once"
kc get pods -o wide
if [ "$N" -ge 2 ]; then
	echo "--- node to node over the bridge"
	ip netns exec strait-node1 ping -c 1 -W 2 "$(node_ip 2)" | grep -E 'packets|rtt' || ndie "strait-node1 cannot reach strait-node2"
fi
for ((i = 1; i <= N; i++)); do
	node="strait-node$i"
	pod="agent-smoke-$i"

	t0=$SECONDS
	kc delete pod "$pod" --wait=true --timeout=60s >/dev/null
	kc delete configmap "smoke-tunnel-$i" >/dev/null
	nlog "pod $pod deleted in $((SECONDS - t0)) s"
	# kubelet removes the sandbox as well: containerd has no task left for the pod
	d="$NODES_DIR/node-$node"
	wait_for 60 "no tasks" sh -c "[ -z \"\$('$BIN/ctr' --address '$d/containerd.sock' -n k8s.io tasks ls -q)\" ]" ||
		ndie "containers of $pod still running in $node's containerd: $("$BIN/ctr" --address "$d/containerd.sock" -n k8s.io tasks ls)"
	nlog "no container left in $node's containerd"
done
nlog "smoke test passed for $N node(s) in $((SECONDS - t_start)) s"
