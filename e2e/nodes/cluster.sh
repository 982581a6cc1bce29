#!/usr/bin/env bash
# The kubelet cluster the node-tier tests and the demo run on, as root:
#   e2e/nodes/cluster.sh up [N]   control plane, N kubelet nodes (default 2), the remote site's
#                                 namespace; prints the admin kubeconfig's path on stdout
#   e2e/nodes/cluster.sh restart-node I   node I down (everything it runs stops) and up again,
#                                 Ready; the API objects (Node, pods) stay, as for a rebooted node
#   e2e/nodes/cluster.sh down     remove all of it (also after a crash); fails if anything is left
# Names and addresses are fixed (docs/testing-nodes.md), so one cluster runs at a time.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=node-lib.sh
source "$HERE/node-lib.sh"

case "${1:-}" in
up)
	nodes_check
	if [ -d "$NODES_DIR" ] || ip link show "$BRIDGE" >/dev/null 2>&1; then
		nlog "leftovers of an earlier run: removing them first"
		nodes_down
	fi
	# a failure anywhere (set -e or ndie) takes down what was started
	trap 'nlog "cluster up failed: taking it down"; nodes_down >&2' EXIT
	cluster_up "${2:-2}" >&2
	trap - EXIT
	echo "$KUBECONFIG_ADMIN"
	;;
restart-node)
	# (not `i`: node-lib's loops use it without `local`)
	which="${2:?which node}"
	node_down "strait-node$which" >&2
	node_up "$which" >&2
	node_wait_ready "$which" 180 || ndie "strait-node$which not Ready within 180 s of its restart"
	;;
down)
	nodes_down >&2
	left="$(nodes_leftovers)"
	if [ -n "$left" ]; then
		echo "left behind after teardown:" >&2
		echo "$left" >&2
		exit 1
	fi
	;;
*)
	echo "usage: $0 up [N] | restart-node I | down" >&2
	exit 2
	;;
esac
