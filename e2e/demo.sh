#!/usr/bin/env bash
# The README's demo: installs what it needs, builds, and runs the whole product on this machine
# (real API server, gateway nodes and a strongSwan remote site in network namespaces).
# The operator and two gateway-node agents in cluster mode, `kubectl wait --for=condition=Ready`.
# This host's kernel has no ESP: the agents negotiate with charon but install no kernel SAs.
# Exit status: 0 when the tunnel is Ready; anything else: failed (the output says where).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root "e2e/demo.sh"
cd "$REPO"
e2e/setup/install.sh packages controlplane
say "building"
# Two invocations: cargo's --bin filter applies to every -p, so one command that names
# strait-demo would build only strait-demo and leave the agent and operator unbuilt.
cargo build --release --locked -p strait-agent -p strait-operator
cargo build --release --locked -p strait-e2e --bin strait-demo
target=${CARGO_TARGET_DIR:-$REPO/target}/release
export STRAIT_AGENT_BIN=$target/strait-agent
export STRAIT_OPERATOR_BIN=$target/strait-operator
exec "$target/strait-demo"
