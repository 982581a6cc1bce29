//! The operator against a real kube-apiserver: gateway election, conditions from the agent's
//! report, server-side apply that leaves the agents' entries alone, failover, Events, metrics,
//! and the API server refusing invalid tunnels.
//!
//! The agents are not running here. Their two contracts with the operator are played by the test:
//! the heartbeat Lease (`StandInHeartbeat`, a STAND-IN for the agent's heartbeat until the agent's
//! cluster mode lands) and the `status.gateways[]` entry, written with server-side apply under
//! the field manager `strait-agent/<node>` exactly as the agent will.
//!
//! Run alone: `cargo test -p strait-e2e --test operator_reconcile` (builds the operator first).

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

const ESTABLISHED: &str = r#"    ikeState: Established
    ikeProposal: aes256gcm16-prfsha384-x25519
    ikeSpis: "0a1b2c3d4e5f6071/8192a3b4c5d6e7f8"
    natDetected: false
    childSas:
    - spiIn: c0ffee01
      spiOut: c0ffee02
      proposal: aes256gcm16-x25519
      mode: tunnel
"#;

const AUTH_FAILED: &str = r#"    ikeState: Connecting
    lastError:
      reason: AuthenticationFailed
      message: the peer refused our AUTH payload (AUTHENTICATION_FAILED notify)
"#;

fn start() -> ControlPlane {
    ControlPlane::start().unwrap_or_else(|e| panic!("could not start the control plane: {e:#}"))
}

fn active(cp: &ControlPlane, t: &str) -> String {
    tunnel_field(cp, t, "{.status.activeGateway}")
}

#[test]
fn election_conditions_failover_events_and_metrics() {
    let cp = start();
    install_crd(&cp);
    node(&cp, "gw-a", &[("strait.dev/gateway", "true")]);
    node(&cp, "gw-b", &[("strait.dev/gateway", "true")]);
    node(&cp, "worker", &[("role", "worker")]);
    let op = operator(&cp, "op-1", &[]);
    let mut hb_a = StandInHeartbeat::start(&cp, "gw-a", 3);
    let _hb_b = StandInHeartbeat::start(&cp, "gw-b", 3);

    // Apply -> elected, waiting for the agent.
    let applied = Instant::now();
    apply(&cp, &tunnel_yaml("dc2", "strait.dev/gateway"));
    wait_for(
        Duration::from_secs(60),
        "activeGateway gw-a, WaitingForAgent",
        || {
            (active(&cp, "dc2") == "gw-a" && ready(&cp, "dc2") == "False/WaitingForAgent")
                .then_some(())
        },
    );
    let elected_after = applied.elapsed();
    assert_eq!(
        tunnel_field(&cp, "dc2", "{.metadata.finalizers[0]}"),
        "strait.dev/cleanup"
    );

    // The agent reports an established tunnel -> Ready.
    let reported = Instant::now();
    agent_report(&cp, "dc2", "gw-a", ESTABLISHED);
    wait_for(Duration::from_secs(30), "Ready=True", || {
        (ready(&cp, "dc2") == "True/TunnelEstablished").then_some(())
    });
    let ready_after_report = reported.elapsed();
    let ready_after_apply = applied.elapsed();
    println!(
        "apply -> activeGateway+WaitingForAgent: {elected_after:?}; agent report -> Ready: \
         {ready_after_report:?}; apply -> Ready (stand-in agent): {ready_after_apply:?}"
    );
    cp.kubectl([
        "wait",
        "--for=condition=Ready",
        "ipsectunnel/dc2",
        "--timeout=10s",
    ])
    .unwrap();
    for (ty, want) in [
        ("IkeEstablished", "True"),
        ("ChildSasInstalled", "True"),
        ("Degraded", "False"),
    ] {
        let got = tunnel_field(
            &cp,
            "dc2",
            &format!(r#"{{.status.conditions[?(@.type=="{ty}")].status}}"#),
        );
        assert_eq!(got, want, "{ty}");
    }

    // The operator's status writes leave the agent's entry alone: bump the generation so the
    // operator must write observedGeneration, then check the entry field by field.
    cp.kubectl([
        "patch",
        "ipsectunnel",
        "dc2",
        "--type=merge",
        "-p",
        r#"{"spec":{"mtu":1400}}"#,
    ])
    .unwrap();
    wait_for(Duration::from_secs(30), "observedGeneration 2", || {
        (tunnel_field(&cp, "dc2", "{.status.observedGeneration}") == "2").then_some(())
    });
    let entry = tunnel_field(
        &cp,
        "dc2",
        "{.status.gateways[0].node}|{.status.gateways[0].ikeProposal}|{.status.gateways[0].ikeSpis}|{.status.gateways[0].childSas[0].spiIn}",
    );
    assert_eq!(
        entry,
        "gw-a|aes256gcm16-prfsha384-x25519|0a1b2c3d4e5f6071/8192a3b4c5d6e7f8|c0ffee01"
    );
    let managers = cp
        .kubectl([
            "get",
            "ipsectunnel",
            "dc2",
            "--show-managed-fields",
            "-o",
            r#"jsonpath={range .metadata.managedFields[*]}{.manager}:{.operation}:{.subresource}:{.fieldsV1}{"\n"}{end}"#,
        ])
        .unwrap();
    let line = |m: &str| {
        managers
            .lines()
            .find(|l| l.starts_with(&format!("{m}:Apply:status:")))
            .unwrap_or_else(|| panic!("no status apply entry for {m}: {managers}"))
            .to_owned()
    };
    let (agent, operator) = (line("strait-agent/gw-a"), line("strait-operator"));
    assert!(
        agent.contains(r#"k:{\"node\":\"gw-a\"}"#) || agent.contains(r#"k:{"node":"gw-a"}"#),
        "{agent}"
    );
    assert!(!agent.contains("f:conditions"), "{agent}");
    assert!(
        operator.contains("f:conditions") && operator.contains("f:activeGateway"),
        "{operator}"
    );
    assert!(
        !operator.contains("f:gateways"),
        "the operator owns part of gateways[]: {operator}"
    );

    // An authentication failure is propagated with the agent's reason.
    agent_report(&cp, "dc2", "gw-a", AUTH_FAILED);
    wait_for(
        Duration::from_secs(30),
        "Ready=False AuthenticationFailed",
        || (ready(&cp, "dc2") == "False/AuthenticationFailed").then_some(()),
    );
    let msg = tunnel_field(
        &cp,
        "dc2",
        r#"{.status.conditions[?(@.type=="Ready")].message}"#,
    );
    assert!(
        msg.contains("gw-a") && msg.contains("AUTHENTICATION_FAILED"),
        "{msg}"
    );
    assert_eq!(
        tunnel_field(
            &cp,
            "dc2",
            r#"{.status.conditions[?(@.type=="Degraded")].status}"#
        ),
        "True"
    );
    agent_report(&cp, "dc2", "gw-a", ESTABLISHED);
    wait_for(Duration::from_secs(30), "Ready again", || {
        (ready(&cp, "dc2") == "True/TunnelEstablished").then_some(())
    });

    // Failover: gw-a's agent stops renewing its Lease (3 s) -> gw-b is elected.
    let last_renewal = hb_a.stop();
    wait_for(Duration::from_secs(30), "failover to gw-b", || {
        (active(&cp, "dc2") == "gw-b").then_some(())
    });
    let failover = last_renewal.elapsed();
    println!(
        "failover: gw-a's last heartbeat -> gw-b active in {failover:?} (lease duration 3 s, so \
         {:?} after expiry)",
        failover.saturating_sub(Duration::from_secs(3))
    );
    assert_eq!(
        ready(&cp, "dc2"),
        "False/WaitingForAgent",
        "gw-b has not reported yet"
    );
    let notes = wait_for(Duration::from_secs(10), "the GatewayFailover Event", || {
        let n = event_notes(&cp, "dc2", "GatewayFailover");
        (!n.is_empty()).then_some(n)
    });
    assert!(
        notes.contains("from gw-a to gw-b") && notes.contains("heartbeat"),
        "{notes}"
    );
    let reasons = event_reasons(&cp, "dc2");
    for r in ["GatewayElected", "Ready", "NotReady", "GatewayFailover"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} Event: {reasons:?}");
    }

    // Stability: gw-a comes back, but gw-b keeps the tunnel.
    let _hb_a2 = StandInHeartbeat::start(&cp, "gw-a", 3);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        active(&cp, "dc2"),
        "gw-b",
        "a returning node must not take the tunnel back"
    );

    // gw-b stops matching the selector -> back to gw-a.
    cp.kubectl(["label", "node", "gw-b", "strait.dev/gateway-"])
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "failover to gw-a after relabel",
        || (active(&cp, "dc2") == "gw-a").then_some(()),
    );
    let notes = event_notes(&cp, "dc2", "GatewayFailover");
    assert!(notes.contains("no longer matches"), "{notes}");
    assert_eq!(
        ready(&cp, "dc2"),
        "True/TunnelEstablished",
        "gw-a's entry is still there"
    );

    // gw-a's Node disappears -> nobody left.
    cp.kubectl(["delete", "node", "gw-a"]).unwrap();
    wait_for(Duration::from_secs(30), "NoGatewayAvailable", || {
        (ready(&cp, "dc2") == "False/NoGatewayAvailable" && active(&cp, "dc2").is_empty())
            .then_some(())
    });
    let notes = event_notes(&cp, "dc2", "GatewayLost");
    assert!(notes.contains("gw-a was removed"), "{notes}");

    // Metrics: valid exposition (promtool), fixed series present.
    let metrics = op.metrics();
    for series in [
        "strait_operator_reconciles_total{result=\"success\"}",
        "strait_operator_tunnels{ready=\"False\"} 1",
        "strait_operator_reconcile_duration_seconds_bucket",
        "strait_operator_gateway_failovers_total 2",
        "strait_operator_leader 1",
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
    promtool_check(&metrics);
    assert_eq!(op.health("/healthz").map(|r| r.0), Some(200));
    assert_eq!(op.health("/readyz").map(|r| r.0), Some(200));
}

/// Tunnels sharing a gateway selector spread over its nodes (least loaded first, then by name,
/// including tunnels applied at once); a cordoned node's tunnels move to an open one, and it is
/// elected again only when every candidate is cordoned.
#[test]
fn tunnels_spread_over_gateways_and_leave_a_cordoned_node() {
    let cp = start();
    install_crd(&cp);
    for n in ["gw-a", "gw-b"] {
        node(&cp, n, &[("strait.dev/gateway", "true")]);
    }
    let _op = operator(&cp, "op-spread", &[]);
    let _hb_a = StandInHeartbeat::start(&cp, "gw-a", 10);
    let _hb_b = StandInHeartbeat::start(&cp, "gw-b", 10);
    let names = ["t1", "t2", "t3", "t4"];
    // applied in one go, so they are reconciled together
    let all: Vec<String> = names
        .iter()
        .map(|t| tunnel_yaml(t, "strait.dev/gateway"))
        .collect();
    apply(&cp, &all.join("---\n"));
    let on = |node: &str| -> Vec<&str> {
        names
            .iter()
            .copied()
            .filter(|t| active(&cp, t) == node)
            .collect()
    };
    wait_for(Duration::from_secs(60), "every tunnel elected", || {
        names
            .iter()
            .all(|t| !active(&cp, t).is_empty())
            .then_some(())
    });
    let (a, b) = (on("gw-a"), on("gw-b"));
    assert_eq!(
        (a.len(), b.len()),
        (2, 2),
        "not spread: gw-a {a:?}, gw-b {b:?}"
    );

    // cordon gw-a: its tunnels move to gw-b, and the Event says why
    cp.kubectl(["cordon", "gw-a"]).unwrap();
    wait_for(Duration::from_secs(30), "every tunnel on gw-b", || {
        (on("gw-b").len() == names.len()).then_some(())
    });
    let notes = event_notes(&cp, a[0], "GatewayFailover");
    assert!(notes.contains("cordoned"), "{notes}");
    // uncordoned, it takes nothing back (a move tears the tunnel down)
    cp.kubectl(["uncordon", "gw-a"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(on("gw-b").len(), names.len(), "tunnels moved back to gw-a");
    // a new tunnel goes to the idle node
    apply(&cp, &tunnel_yaml("t5", "strait.dev/gateway"));
    wait_for(Duration::from_secs(30), "t5 on gw-a", || {
        (active(&cp, "t5") == "gw-a").then_some(())
    });
    // cordoned nodes one after the other (a rolling drain): t5 moves to gw-b, and once every
    // candidate is cordoned the tunnels stay where they are rather than go nowhere
    cp.kubectl(["cordon", "gw-a"]).unwrap();
    wait_for(Duration::from_secs(30), "t5 on gw-b", || {
        (active(&cp, "t5") == "gw-b").then_some(())
    });
    cp.kubectl(["cordon", "gw-b"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(active(&cp, "t5"), "gw-b");
    assert_eq!(on("gw-b").len(), names.len());
}

fn promtool_check(metrics: &str) {
    let promtool = std::path::Path::new("/usr/bin/promtool");
    assert!(
        promtool.is_file(),
        "/usr/bin/promtool is missing: install the Debian package `prometheus`"
    );
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn invalid_tunnels_are_refused_with_readable_messages() {
    let cp = start();
    install_crd(&cp);
    let good = tunnel_yaml("bad", "strait.dev/gateway");
    let cases = [
        (
            "two auth methods",
            good.replace(
                "    psk: {secretRef: {name: dc2-psk, key: psk}}\n",
                "    psk: {secretRef: {name: dc2-psk, key: psk}}\n    certificate: {secretRef: {name: tls}}\n    ca: {secretRef: {name: ca, key: ca.crt}}\n",
            ),
            "set exactly one of auth.psk or auth.certificate",
        ),
        (
            "bad duration",
            format!("{good}  ike: {{lifetime: 1.5h}}\n"),
            "spec.ike.lifetime",
        ),
        (
            "missing remote",
            good.replace(
                "  remote: {id: 'dc2.example.com', address: 192.0.2.2, subnets: [203.0.113.0/24]}\n",
                "",
            ),
            "spec.remote: Required value",
        ),
    ];
    for (what, yaml, message) in cases {
        assert_ne!(yaml, good, "{what}: the test did not change the tunnel");
        let out = cp
            .kubectl_output(["apply", "-f", "-"], Some(&yaml))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            stderr.contains(message),
            "{what}: refused without {message:?}: {stderr}"
        );
        println!("{what}: {}", stderr.trim());
    }
    assert!(
        cp.kubectl_output(["get", "ipsectunnel", "bad"], None)
            .map(|o| !o.status.success())
            .unwrap()
    );
}
