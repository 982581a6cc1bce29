//! Leader election on a real kube-apiserver: two operator processes, only the holder of the Lease
//! `strait-operator-leader` reconciles; SIGKILL it and the other takes over after the lease runs
//! out.
//!
//! Run alone: `cargo test -p strait-e2e --test operator_leader`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod operator_support;

use std::time::{Duration, Instant};

use operator_support::*;
use strait_e2e::controlplane::ControlPlane;

fn holder(cp: &ControlPlane) -> String {
    cp.kubectl([
        "get",
        "lease",
        "strait-operator-leader",
        "-n",
        NS,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
    .unwrap_or_default()
}

/// `strait_operator_reconciles_total{result="success"}` of one operator.
fn reconciles(op: &Daemon) -> u64 {
    op.metrics()
        .lines()
        .find_map(|l| l.strip_prefix("strait_operator_reconciles_total{result=\"success\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("control plane: {e:#}"));
    install_crd(&cp);
    node(&cp, "gw-a", &[("strait.dev/gateway", "true")]);
    let _hb = StandInHeartbeat::start(&cp, "gw-a", 10);
    let args = [
        "--leader-election",
        "--leader-election-lease-duration=4s",
        "--leader-election-renew-interval=1s",
    ];
    let mut one = operator(&cp, "op-one", &args);
    let first = wait_for(Duration::from_secs(60), "a leader", || {
        let h = holder(&cp);
        (!h.is_empty()).then_some(h)
    });
    assert_eq!(first, "op-one");
    let mut two = operator(&cp, "op-two", &args);

    apply(&cp, &tunnel_yaml("t1", "strait.dev/gateway"));
    wait_for(Duration::from_secs(30), "t1 reconciled", || {
        (tunnel_field(&cp, "t1", "{.status.activeGateway}") == "gw-a").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(reconciles(&one) > 0, "the leader did not reconcile");
    wait_for(Duration::from_secs(10), "the standby's metrics", || {
        two.metrics()
            .contains("strait_operator_leader 0")
            .then_some(())
    });
    assert_eq!(reconciles(&two), 0, "the standby reconciled");
    assert_eq!(holder(&cp), "op-one");
    assert!(two.running(), "the standby exited");

    // SIGKILL the leader: no release, so the standby waits for the Lease to run out.
    one.kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(30), "op-two to lead", || {
        (holder(&cp) == "op-two").then_some(())
    });
    let took_lease = killed.elapsed();
    apply(&cp, &tunnel_yaml("t2", "strait.dev/gateway"));
    wait_for(Duration::from_secs(30), "t2 reconciled by op-two", || {
        (tunnel_field(&cp, "t2", "{.status.activeGateway}") == "gw-a").then_some(())
    });
    println!(
        "leader killed -> standby holds the Lease after {took_lease:?} (lease 4 s); -> reconciling a \
         new tunnel after {:?}",
        killed.elapsed()
    );
    assert!(reconciles(&two) > 0);
    assert!(two.metrics().contains("strait_operator_leader 1"));
}
