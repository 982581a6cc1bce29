#!/usr/bin/env bash
# The README's demo: installs what it needs, builds the binaries and the images, and runs the whole
# product on this machine: a real control plane and two kubelet nodes (e2e/nodes), `helm install`
# of the chart with the images built here, a tunnel applied with kubectl against a strongSwan
# remote site, `kubectl wait --for=condition=Ready`.
# This host's kernel has no ESP: the agents negotiate with charon but install no kernel SAs.
# Exit status: 0 when the tunnel is Ready; anything else: failed (the output says where).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root "e2e/demo.sh"
cd "$REPO"
e2e/setup/install.sh packages controlplane nodes
say "building"
# Two invocations: cargo's --bin filter applies to every -p, so one command that names
# strait-demo would build only strait-demo and leave the agent and operator unbuilt.
# The product goes into the images as a release build; the demo's own driver (strait-demo) is a
# harness, built in the dev profile the test suite already builds (a release build of the
# harness's dependencies cost minutes on a cold machine for nothing).
# kubectl-strait, the kubectl plugin, shares every dependency with the product (seconds more).
cargo build --release --locked -p strait-agent -p strait-operator -p kubectl-strait
cargo build --locked -p strait-e2e --bin strait-demo
target=${CARGO_TARGET_DIR:-$REPO/target}
say "images"
e2e/setup/images.sh --agent "$target/release/strait-agent" --operator "$target/release/strait-operator"
# the plugin is found on PATH, as kubectl finds it for a user
STRAIT_PLUGIN_DIR="$target/release" exec "$target/debug/strait-demo"
