//! The operator against a real kube-apiserver: the agent DaemonSet follows the tunnels' node
//! selectors, and deletion waits for the agents (or for the timeout, with an Event).
//!
//! The agent's heartbeat is a STAND-IN (`StandInHeartbeat`) until the agent's cluster mode lands;
//! the agent's status entries are written with server-side apply under `strait-agent/<node>`.
//!
//! Run alone: `cargo test -p strait-e2e --test operator_lifecycle`

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

/// `jsonpath` of the agent DaemonSet.
fn daemonset(cp: &ControlPlane, jsonpath: &str) -> anyhow::Result<String> {
    cp.kubectl([
        "get",
        "daemonset",
        "strait-agent",
        "-n",
        NS,
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
}

fn daemonset_terms(cp: &ControlPlane) -> Option<String> {
    daemonset(
        cp,
        "{range .spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[*]}{range .matchExpressions[*]}{.key} {.operator} {.values}{end};{end}",
    )
    .ok()
}

fn exists(cp: &ControlPlane, what: &[&str]) -> bool {
    let out = cp
        .kubectl_output(
            ["get"]
                .into_iter()
                .chain(what.iter().copied())
                .chain(["-o", "name"]),
            None,
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("NotFound"),
        "kubectl get {what:?}: {stderr}"
    );
    out.status.success()
}

#[test]
fn daemonset_follows_selectors_and_deletion_waits_for_agents() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("control plane: {e:#}"));
    install_crd(&cp);
    node(&cp, "gw-a", &[("strait.dev/gateway", "true")]);
    node(&cp, "edge-1", &[("site-b", "true")]);
    let _op = operator(
        &cp,
        "op-1",
        &[
            "--deletion-timeout=4s",
            "--agent-image=registry.example/strait-agent:test",
            "--agent-arg=cluster",
            "--agent-arg=--dataplane=kernel",
        ],
    );
    let _hb = StandInHeartbeat::start(&cp, "gw-a", 10);

    // No tunnel: no DaemonSet.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !exists(&cp, &["daemonset", "strait-agent", "-n", NS]),
        "a DaemonSet without tunnels"
    );

    // Two tunnels with different selectors: two OR'ed terms.
    apply(&cp, &tunnel_yaml("to-dc2", "strait.dev/gateway"));
    apply(&cp, &tunnel_yaml("to-site-b", "site-b"));
    let terms = wait_for(
        Duration::from_secs(30),
        "a DaemonSet with two terms",
        || daemonset_terms(&cp).filter(|t| t.matches(';').count() == 2),
    );
    assert!(
        terms.contains(r#"strait.dev/gateway In ["true"]"#),
        "{terms}"
    );
    assert!(terms.contains(r#"site-b In ["true"]"#), "{terms}");
    let pod = daemonset(
        &cp,
        "{.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].args} {.spec.template.spec.hostNetwork} {.spec.template.spec.serviceAccountName}",
    )
    .unwrap();
    assert_eq!(
        pod,
        r#"registry.example/strait-agent:test ["cluster","--dataplane=kernel","--state-dir=/run/strait-state/ike","--metrics-addr=$(HOST_IP):9470"] true strait-agent"#
    );

    // Deleting a tunnel no agent reported on releases it at once and narrows the DaemonSet.
    let t = Instant::now();
    cp.kubectl([
        "delete",
        "ipsectunnel",
        "to-site-b",
        "--wait=true",
        "--timeout=30s",
    ])
    .unwrap();
    println!("deletion without agent entries: {:?}", t.elapsed());
    wait_for(Duration::from_secs(30), "a DaemonSet with one term", || {
        daemonset_terms(&cp).filter(|t| t.matches(';').count() == 1 && !t.contains("site-b"))
    });

    // The agent reports, then the tunnel is deleted: the finalizer holds it until the agent
    // clears its entry (an apply of its status without the entry removes it, as the agent will).
    wait_for(Duration::from_secs(30), "gw-a elected", || {
        (tunnel_field(&cp, "to-dc2", "{.status.activeGateway}") == "gw-a").then_some(())
    });
    agent_report(&cp, "to-dc2", "gw-a", "    ikeState: Established\n");
    wait_for(Duration::from_secs(30), "the agent's entry", || {
        (tunnel_field(&cp, "to-dc2", "{.status.gateways[0].node}") == "gw-a").then_some(())
    });
    cp.kubectl(["delete", "ipsectunnel", "to-dc2", "--wait=false"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !tunnel_field(&cp, "to-dc2", "{.metadata.deletionTimestamp}").is_empty(),
        "the tunnel went away before its agent cleaned up"
    );
    assert!(
        exists(&cp, &["daemonset", "strait-agent", "-n", NS]),
        "the agent must stay to clean up"
    );
    let cleared = Instant::now();
    cp.kubectl_stdin(
        agent_status_apply("gw-a"),
        "apiVersion: strait.dev/v1alpha1\nkind: IPsecTunnel\nmetadata:\n  name: to-dc2\nstatus: {}\n",
    )
    .unwrap();
    wait_for(Duration::from_secs(30), "to-dc2 deleted", || {
        (!exists(&cp, &["ipsectunnel", "to-dc2"])).then_some(())
    });
    println!(
        "agent cleared its entry -> finalizer released: {:?}",
        cleared.elapsed()
    );
    wait_for(
        Duration::from_secs(30),
        "the DaemonSet deleted with the last tunnel",
        || (!exists(&cp, &["daemonset", "strait-agent", "-n", NS])).then_some(()),
    );

    // A dead agent cannot block deletion forever: released after --deletion-timeout, with an Event.
    apply(&cp, &tunnel_yaml("stuck", "strait.dev/gateway"));
    wait_for(Duration::from_secs(30), "gw-a elected for stuck", || {
        (tunnel_field(&cp, "stuck", "{.status.activeGateway}") == "gw-a").then_some(())
    });
    agent_report(&cp, "stuck", "gw-a", "    ikeState: Established\n");
    wait_for(
        Duration::from_secs(30),
        "the agent's entry on stuck",
        || (tunnel_field(&cp, "stuck", "{.status.gateways[0].node}") == "gw-a").then_some(()),
    );
    let t = Instant::now();
    cp.kubectl(["delete", "ipsectunnel", "stuck", "--wait=false"])
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "stuck deleted after the timeout",
        || (!exists(&cp, &["ipsectunnel", "stuck"])).then_some(()),
    );
    let took = t.elapsed();
    println!("deletion with a silent agent: released after {took:?} (timeout 4 s)");
    assert!(
        took >= Duration::from_secs(3),
        "released before the timeout: {took:?}"
    );
    let notes = wait_for(Duration::from_secs(10), "the CleanupTimedOut Event", || {
        let n = event_notes(&cp, "stuck", "CleanupTimedOut");
        (!n.is_empty()).then_some(n)
    });
    assert!(
        notes.contains("gw-a") && notes.contains("did not confirm"),
        "{notes}"
    );
}
