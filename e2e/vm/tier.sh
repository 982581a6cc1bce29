#!/usr/bin/env bash
# The kernel data-plane tier: builds every test binary that needs a kernel with ESP and runs them
# all in ONE boot of the VM (a boot costs ~30 s under TCG). Binaries are staged in a directory
# the guest can see, because the guest mounts its own tmpfs over /tmp and /var/cache, where a
# CARGO_TARGET_DIR may live.
#   e2e/vm/tier.sh          exit status: non-zero if any binary failed or the VM did not run
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
need_root "e2e/vm/tier.sh"
cd "$REPO"

# package:feature:test-target triples whose tests run only in the VM.
SUITES=("strait-e2e:vm-tests:vm_smoke" "strait-xfrm:kernel-esp-tests:kernel_esp"
  "strait-e2e:vm-tests:vm_agent")
# Suites that run on the host and boot their own VM (with user networking): they keep the
# control plane on the host (kube-apiserver needs minutes to start under TCG). One boot each.
HOST_SUITES=("strait-e2e:vm-tests:vm_cluster")
# STRAIT_VM_SUITES=NAME[,NAME...]: only these test targets (e.g. vm_cluster), for a narrow run.
# STRAIT_VM_TEST_FILTER=SUBSTRING: only the tests whose names contain it (libtest's filter).
only=${STRAIT_VM_SUITES:-}
selected() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
LOCKED=${STRAIT_CARGO_LOCKED---locked}

stage=$(mktemp -d "${TMPDIR:-/tmp}/strait-vmtier.XXXXXX")
trap 'rm -rf "$stage"' EXIT
bins=()
host_bins=()
for s in "${SUITES[@]}" "${HOST_SUITES[@]}"; do
  IFS=: read -r pkg feat target <<<"$s"
  selected "$target" || continue
  say "vm tier: building $pkg --test $target --features $feat"
  exe=$(cargo test -p "$pkg" --features "$feat" --test "$target" $LOCKED --no-run --message-format=json \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$target")
  [ -n "$exe" ] || die "vm tier: cargo built no binary for $pkg --test $target"
  cp "$exe" "$stage/$target"
  if [[ " ${HOST_SUITES[*]} " == *" $s "* ]]; then host_bins+=("$stage/$target"); else bins+=("$stage/$target"); fi
done
[ $((${#bins[@]} + ${#host_bins[@]})) -gt 0 ] || die "vm tier: no VM test binaries were built"

# the agent binary the agent suites run (found through STRAIT_AGENT_BIN in the guest), and the
# operator for the host suites: one build of both, the command e2e/test.sh's build step runs, so
# features unify the same way and nothing is compiled again (one -p alone resolves differently).
say "vm tier: building strait-agent and strait-operator"
products=$(cargo build -p strait-agent -p strait-operator -p kubectl-strait $LOCKED --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bin"]:
        print(m["target"]["name"], m["executable"])')
agent=$(awk '$1 == "strait-agent" {print $2}' <<<"$products")
operator=$(awk '$1 == "strait-operator" {print $2}' <<<"$products")
[ -n "$agent" ] && [ -n "$operator" ] || die "vm tier: cargo built no strait-agent or strait-operator"
# stripped: the guest reads it over 9p under TCG, and a debug build is ~200 MB
strip -o "$stage/strait-agent" "$agent"
plugin=$(awk '$1 == "kubectl-strait" {print $2}' <<<"$products")
[ -n "$plugin" ] || die "vm tier: cargo built no kubectl-strait"
strip -o "$stage/kubectl-strait" "$plugin"

# The guest runs each binary serially and reports each one's status; the host exits non-zero if
# any failed.
{ echo '#!/bin/bash'; printf 'filter=(%q)\n' "${STRAIT_VM_TEST_FILTER:-}"; } > "$stage/run-all.sh"
cat >> "$stage/run-all.sh" <<'GUEST'
[ -n "${filter[0]}" ] || filter=()
rc=0
# run the agent from the guest's tmpfs, not over 9p; a cold start under TCG is slow
cp "$(dirname "$0")/strait-agent" /tmp/strait-agent && export STRAIT_AGENT_BIN=/tmp/strait-agent
export KUBECTL_STRAIT_BIN=$(dirname "$0")/kubectl-strait
export STRAIT_AGENT_START_TIMEOUT_SECS=${STRAIT_AGENT_START_TIMEOUT_SECS:-60}
# the interop matrix's records (strait_e2e::matrix), copied out by the host
mkdir -p "$(dirname "$0")/matrix" && export STRAIT_MATRIX_DIR=$(dirname "$0")/matrix
for b in "$@"; do
  echo "===== vm tier: $(basename "$b")"
  "$b" --test-threads=1 --nocapture "${filter[@]}" || rc=1
done
# 42 / 43 rather than 0 / 1, so the host can tell that the guest's status came back at all
[ $rc -eq 0 ] && exit 42
exit 43
GUEST
chmod +x "$stage/run-all.sh"
rc=0
if [ ${#bins[@]} -gt 0 ]; then
  say "vm tier: ${#bins[@]} binaries, one VM boot"
  vmrc=0
  e2e/vm/run.sh --timeout "${STRAIT_VM_TIMEOUT:-1500}" --mem 1G --rwdir "$stage" -- "$stage/run-all.sh" "${bins[@]}" || vmrc=$?
  if [ -n "${STRAIT_MATRIX_DIR:-}" ] && [ -d "$stage/matrix" ]; then
    mkdir -p "$STRAIT_MATRIX_DIR"
    # (the guest's pids are not the host's: a prefix keeps its files apart)
    for f in "$stage/matrix/"*.jsonl; do [ -e "$f" ] && cp "$f" "$STRAIT_MATRIX_DIR/vm-$(basename "$f")"; done
  fi
  case $vmrc in
    42) ;;
    43) rc=1 ;;
    *) warn "vm tier: the guest's exit status did not come back (e2e/vm/run.sh exited $vmrc)"; rc=1 ;;
  esac
fi
for b in "${host_bins[@]}"; do
  say "vm tier: $(basename "$b") on the host (boots its own VM)"
  STRAIT_AGENT_BIN="$stage/strait-agent" STRAIT_OPERATOR_BIN="$operator" \
    "$b" --test-threads=1 --nocapture ${STRAIT_VM_TEST_FILTER:+"$STRAIT_VM_TEST_FILTER"} || rc=1
done
exit $rc
