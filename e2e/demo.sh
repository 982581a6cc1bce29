#!/usr/bin/env bash
# The README's demo: installs what it needs, builds, and runs the whole product on this machine
# (real API server, gateway nodes and a strongSwan remote site in network namespaces).
# Exit status: 0 tunnel Ready; 3 stopped where the product ends today (it says where); else failed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root "e2e/demo.sh"
cd "$REPO"
e2e/setup/install.sh packages controlplane
say "building"
cargo build --release --locked -p strait-agent -p strait-operator -p strait-e2e --bin strait-demo
target=${CARGO_TARGET_DIR:-$REPO/target}/release
export STRAIT_AGENT_BIN=$target/strait-agent
exec "$target/strait-demo"
