#!/usr/bin/env bash
# The whole test suite, every tier, against real parts. Installs what it needs first.
#   sudo e2e/test.sh                 all tiers
#   sudo e2e/test.sh unit e2e        some tiers: lint unit e2e vm fuzz demo nodes
# Prints one closing line "N passed, N failed" and exits non-zero on any failure.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
need_root "e2e/test.sh"
cd "$REPO"

tiers=("$@"); [ ${#tiers[@]} -eq 0 ] && tiers=(lint unit e2e vm fuzz demo nodes)
LOGS=${STRAIT_LOGS:-$(mktemp -d /tmp/strait-test.XXXXXX)}
mkdir -p "$LOGS"
passed=0 failed=0 ignored=0 failures=()
# where the interop tests record the matrix cells they judge (strait_e2e::matrix)
export STRAIT_MATRIX_DIR="$LOGS/matrix"
rm -rf "$STRAIT_MATRIX_DIR"

# Sum cargo's "test result:" lines of one log into the totals.
count() {
  local p f i
  read -r p f i < <(awk '/^test result:/{for(k=1;k<=NF;k++){if($(k+1)~/^passed/)p+=$k; if($(k+1)~/^failed/)f+=$k; if($(k+1)~/^ignored/)i+=$k}} END{print p+0, f+0, i+0}' "$1")
  passed=$((passed + p)); failed=$((failed + f)); ignored=$((ignored + i))
}

# step NAME CMD...: run, tee the log, count tests, remember failures.
step() {
  local name=$1; shift
  local log="$LOGS/$name.log" start=$SECONDS
  say "$name: $*"
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  count "$log"
  # A step with no test harness of its own (fmt, clippy, fuzz) counts as one check.
  if [ "$rc" -ne 0 ]; then
    failures+=("$name (exit $rc, log $log)")
    grep -q '^test result:' "$log" || failed=$((failed + 1))
  elif ! grep -q '^test result:' "$log"; then
    passed=$((passed + 1))
  fi
  say "$name: exit $rc after $((SECONDS - start)) s"
}

# Kernel objects and processes the tests could leave behind if cleanup failed.
leftovers() {
  ip netns list 2>/dev/null | grep -E '^strait-' || true
  # (zombies are left out: they hold nothing, and an orphan's is reaped by pid 1 in its own time)
  ps -eo pid=,stat=,args= 2>/dev/null | awk '$2 !~ /^Z/' \
    | grep -E '/strait-(agent|operator)|kube-(apiserver|controller-manager|scheduler|proxy)|/kubelet |/containerd --config|etcd --data-dir|/usr/lib/ipsec/charon|qemu-system' \
    | grep -v -E "grep|$$" || true
}
xfrm_root() { echo "$(ip xfrm state 2>/dev/null | wc -l) $(ip xfrm policy 2>/dev/null | wc -l)"; }

before_xfrm=$(xfrm_root)
say "logs: $LOGS"
step install e2e/setup/install.sh

for t in "${tiers[@]}"; do
  case $t in
    lint)
      step fmt cargo fmt --all -- --check
      step clippy cargo clippy --workspace --all-targets --locked -- -D warnings ;;
    unit)
      # Default members only: the e2e crate is left out on purpose and runs in its own tier.
      step unit cargo test --locked --no-fail-fast
      # Each criterion benchmark once, to keep them working (never judged on a number).
      # --workspace with a target filter, not -p strait-ike: one crate alone resolves features
      # differently and compiles its dependencies (AWS-LC's C code among them) once more.
      step benches cargo test --workspace --bench '*' --locked
      # The deterministic simulator on fresh seeds (printed: a failure replays from its line);
      # --workspace for the same reason (its release build is then the demo's too).
      step simulation env STRAIT_SIM_SCHEDULES="${STRAIT_SIM_SCHEDULES:-10000}" \
        cargo test --release --locked --workspace --test simulation -- --nocapture ;;
    e2e)
      # The demo and the node tier need a release build (7 min cold on 2 cores). Start it now at
      # the lowest priority, so it uses the CPU the e2e and VM tests leave idle while they wait
      # on lifetimes, timeouts and the VM; cargo locks target/release only, so the dev builds
      # below are not held up. demo.sh builds again (a no-op by then, or it waits for this).
      if [[ " ${tiers[*]} " == *" demo "* || " ${tiers[*]} " == *" nodes "* ]]; then
        say "release build in the background (log: $LOGS/release-prebuild.log)"
        nice -n 19 cargo build --release --locked -p strait-agent -p strait-operator \
          -p kubectl-strait > "$LOGS/release-prebuild.log" 2>&1 &
        prebuild=$!
      fi
      # The e2e tests run the real binaries as processes; build them first.
      step build cargo build --locked -p strait-agent -p strait-operator -p kubectl-strait
      # Tests that create namespaces, charons, API servers and VMs run one at a time, but for
      # the rekey cases and the two API server outages, which mostly wait (for lifetimes, for
      # the outage) and run side by side in a step of their own (interop_rekey.rs and
      # apiserver_outage.rs say why that is safe).
      step e2e cargo test -p strait-e2e --locked --no-fail-fast -- --test-threads=1 \
        --skip rekeys_by_ --skip apiserver_outage_of_
      step e2e-side-by-side cargo test -p strait-e2e --locked --no-fail-fast \
        --test interop_rekey --test apiserver_outage -- --test-threads=3 ;;
    vm)
      # Tests that need a kernel with ESP, all in one boot of the Debian kernel under qemu.
      step vm e2e/vm/tier.sh ;;
    fuzz)
      if [ -x fuzz/run.sh ]; then step fuzz fuzz/run.sh --short; else
        say "fuzz: no fuzz targets in this tree yet (fuzz/run.sh)"; fi ;;
    demo)
      # The README's first command, exactly as a new user runs it, so it cannot break unseen.
      step demo e2e/demo.sh ;;
    nodes)
      # Real kubelets: two nodes, each with its own containerd in its own network namespace,
      # running the images built here (e2e/nodes/try-node.sh says what it checks).
      rel=${CARGO_TARGET_DIR:-$REPO/target}/release
      step nodes-build cargo build --release --locked -p strait-agent -p strait-operator -p kubectl-strait
      step images e2e/setup/images.sh --agent "$rel/strait-agent" --operator "$rel/strait-operator"
      step nodes e2e/nodes/try-node.sh 2
      # The chart on those kubelets: helm install, tunnels against charon, failover, upgrade,
      # uninstall (--nocapture: the failover and upgrade figures are printed as they are measured).
      step nodes-helm cargo test -p strait-e2e --features node-tests --locked --test nodes_helm \
        -- --test-threads=1 --nocapture ;;
    *) die "unknown tier '$t' (lint unit e2e vm fuzz demo nodes)" ;;
  esac
done

# docs/interop.md's matrix must be this run's: it needs every interop case, so only a run of
# both the e2e and the vm tier judges it (`cargo run -p strait-e2e --bin interop-matrix -- $STRAIT_LOGS/matrix --write docs/interop.md` regenerates it)
if [[ " ${tiers[*]} " == *" e2e "* && " ${tiers[*]} " == *" vm "* ]]; then
  step matrix cargo run -q --locked -p strait-e2e --bin interop-matrix -- "$STRAIT_MATRIX_DIR" --check docs/interop.md
  cargo run -q --locked -p strait-e2e --bin interop-matrix -- "$STRAIT_MATRIX_DIR" > "$LOGS/interop-matrix.md" 2>&1 || true
else
  say "matrix: docs/interop.md's interop matrix not checked (it needs the e2e and vm tiers)"
fi

# the background release build, if a tier started it and none waited for it
if [ -n "${prebuild:-}" ]; then wait "$prebuild" 2>/dev/null || true; fi
say "checking that the tests left nothing behind"
left=$(leftovers)
if [ -n "$left" ]; then
  failures+=("leftovers: $left"); failed=$((failed + 1))
  printf 'left behind:\n%s\n' "$left"
fi
after_xfrm=$(xfrm_root)
if [ "$before_xfrm" != "$after_xfrm" ]; then
  failures+=("root-namespace XFRM changed: before $before_xfrm, after $after_xfrm (states policies)")
  failed=$((failed + 1))
fi

if [ "$ignored" -gt 0 ]; then
  warn "$ignored test(s) were ignored: they are not counted as passed"
fi
if [ ${#failures[@]} -gt 0 ]; then
  printf '\nFAILED:\n'; printf '  %s\n' "${failures[@]}"
fi
echo
echo "$passed passed, $failed failed"
[ ${#failures[@]} -eq 0 ] && [ "$failed" -eq 0 ]
