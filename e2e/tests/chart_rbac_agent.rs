//! The product installed by the chart, run with the chart's identities and nothing more: the real
//! operator with the `strait-operator` ServiceAccount's token and the real agent (cluster mode,
//! in a namespace, `--dataplane none` since the host has no ESP) with the `strait-agent`
//! ServiceAccount's token, against a strongSwan peer. `helm_chart.rs` checks the RBAC rule by
//! rule with kubectl; this proves the agent's own calls (streaming watch of Secrets without
//! `list`, heartbeat Lease, status apply) fit inside it end to end.
//!
//! Run alone: `cargo test -p strait-e2e --test chart_rbac_agent`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod operator_support;

use std::time::{Duration, Instant};

use operator_support::{NS, Operator, node, ready, tunnel_field, wait_for, workspace};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns::{self, Topology};
use strait_e2e::product::{Daemon, service_account_kubeconfig};
use strait_e2e::strongswan::{
    Charon, CharonConfig, ChildConfig, Connection, Endpoint, KeyType, Secret, TestPki,
};

const TUNNEL: &str = "chart-dc2";
const PSK: &str = "strait-chart-rbac-psk-71c0aa";
const LOCAL_ID: &str = "dc1.strait.example";
const REMOTE_ID: &str = "dc2.strait.example";
const REMOTE_ADDR: &str = "192.0.2.100";
const IKE: &str = "aes256gcm16-prfsha256-x25519";
const ESP: &str = "aes256gcm16-x25519";

fn charon_config() -> CharonConfig {
    let mut conn = Connection::new(TUNNEL, Endpoint::psk(REMOTE_ID), Endpoint::psk(LOCAL_ID));
    conn.local_addrs = vec![REMOTE_ADDR.into()];
    conn.proposals = vec![IKE.into()];
    let mut child = ChildConfig::new("net", "203.0.113.0/24", "198.51.100.0/24");
    child.esp_proposals = vec![ESP.into()];
    conn.children.push(child);
    CharonConfig {
        connections: vec![conn],
        secrets: vec![Secret::Ike {
            ids: vec![LOCAL_ID.into(), REMOTE_ID.into()],
            secret: PSK.into(),
        }],
        ..CharonConfig::default()
    }
}

/// The tunnel, authenticated by `auth` (the YAML of `spec.auth`), identities `local` / `remote`.
fn tunnel_yaml(auth: &str, local: &str, remote: &str) -> String {
    format!(
        r#"apiVersion: strait.dev/v1alpha1
kind: IPsecTunnel
metadata: {{name: {TUNNEL}}}
spec:
  gateway: {{nodeSelector: {{matchLabels: {{strait.dev/gateway: "true"}}}}}}
  local:  {{id: "{local}", subnets: [198.51.100.0/24]}}
  remote: {{id: "{remote}", address: {REMOTE_ADDR}, subnets: [203.0.113.0/24]}}
  auth:   {auth}
  ike:    {{proposals: [{IKE}]}}
  esp:    {{proposals: [{ESP}]}}
  dpd:    {{interval: 2s, timeout: 6s}}
"#
    )
}

fn manifests() -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: dc2-psk, namespace: {NS}}}\nstringData: {{psk: \"{PSK}\"}}\n---\n{}",
        tunnel_yaml(
            "{psk: {secretRef: {name: dc2-psk, key: psk}}}",
            LOCAL_ID,
            REMOTE_ID
        )
    )
}

/// The chart installed, node gw1 labelled, namespaces gw1 and remote with charon (`charon_cfg`)
/// on remote, the operator and the agent on gw1 running with the chart's ServiceAccounts, and
/// the agent's heartbeat Lease written.
struct Installed {
    agent: Daemon,
    operator: Operator,
    charon: Charon,
    topo: Topology,
    cp: ControlPlane,
}

fn install(charon_cfg: &CharonConfig) -> Installed {
    strait_e2e::cmd::require_root().expect("root");
    strait_e2e::product::build_binaries().unwrap_or_else(|e| panic!("{e:#}"));
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("control plane: {e:#}"));
    let chart = workspace().join("charts/strait");
    // No --wait: without a kubelet the chart's pods never start; the binaries run as processes.
    let out = cp
        .helm([
            "install",
            "strait",
            chart.to_str().unwrap(),
            "--namespace",
            NS,
            "--create-namespace",
        ])
        .unwrap();
    assert!(out.contains("STATUS: deployed"), "{out}");
    cp.kubectl([
        "wait",
        "--for=condition=Established",
        "crd/ipsectunnels.strait.dev",
        "--timeout=60s",
    ])
    .unwrap();
    let op_kubeconfig = service_account_kubeconfig(&cp, NS, "strait-operator").unwrap();
    let agent_kubeconfig = service_account_kubeconfig(&cp, NS, "strait-agent").unwrap();
    node(&cp, "gw1", &[("strait.dev/gateway", "true")]);

    let topo = Topology::builder()
        .node("gw1")
        .node("remote")
        .link("gw1", "192.0.2.1/30", "remote", "192.0.2.2/30")
        .subnet("remote", &format!("{REMOTE_ADDR}/32"))
        // charon with kernel-libipsec wants an address of its own inside its traffic selector
        .subnet("remote", "203.0.113.1/32")
        .route("gw1", &[REMOTE_ADDR, "via", "192.0.2.2"])
        .build()
        .expect("namespaces");
    let charon = Charon::start(topo.ns("remote").unwrap(), charon_cfg).expect("charon");
    let operator = Operator::start_with_kubeconfig(&cp, "chart-op", &op_kubeconfig, &[]);
    let agent = Daemon::cluster_agent_as(
        &cp,
        topo.ns("gw1").unwrap(),
        "gw1",
        &["--dataplane", "none", "--metrics-addr", "off"],
        &agent_kubeconfig,
    )
    .expect("agent gw1");
    // The heartbeat Lease is written with the agent's token.
    wait_for(
        Duration::from_secs(60),
        "the agent's heartbeat Lease",
        || {
            cp.kubectl(["get", "lease", "-n", NS, "strait-agent-gw1"])
                .ok()
        },
    );
    Installed {
        agent,
        operator,
        charon,
        topo,
        cp,
    }
}

/// `kubectl wait` Ready, then charon's IKE SA with a CHILD SA, the agent's field manager, and
/// neither log refused anything by RBAC.
fn assert_ready(cp: &ControlPlane, agent: &Daemon, operator: &Operator, charon: &Charon) {
    let out = cp.kubectl([
        "wait",
        "--for=condition=Ready",
        &format!("ipsectunnel/{TUNNEL}"),
        "--timeout=90s",
    ]);
    assert!(
        out.is_ok(),
        "kubectl wait Ready: {out:?}\nagent:\n{}\noperator:\n{}\ncharon:\n{}",
        agent.log(),
        operator.log_text(),
        charon.log()
    );
    let sas = charon.list_sas().unwrap();
    let ike = sas
        .ike(TUNNEL)
        .unwrap_or_else(|| panic!("charon has no IKE SA:\n{}", sas.raw));
    assert_eq!(ike.state, "ESTABLISHED", "{}", sas.raw);
    assert!(
        !ike.children.is_empty(),
        "no CHILD SA at charon:\n{}",
        sas.raw
    );
    let managers = cp
        .kubectl([
            "get",
            "ipsectunnel",
            TUNNEL,
            "--show-managed-fields",
            "-o",
            "jsonpath={range .metadata.managedFields[*]}{.manager}{\"\\n\"}{end}",
        ])
        .unwrap();
    assert!(managers.contains("strait-agent/gw1"), "{managers}");
    // Nothing was refused on the way: a 403 would be logged even if a retry then succeeded.
    for (who, log) in [("agent", agent.log()), ("operator", operator.log_text())] {
        assert!(
            !log.contains("forbidden") && !log.contains("Forbidden"),
            "{who} was refused something by the chart's RBAC:\n{log}"
        );
    }
}

#[test]
fn real_agent_and_operator_with_the_charts_service_accounts_reach_ready() {
    let _serial = netns::serial();
    // bound in this order so they drop in reverse: processes before namespaces before the API
    let Installed {
        cp,
        topo,
        charon,
        operator,
        agent,
    } = install(&charon_config());
    cp.kubectl_stdin(["apply", "-f", "-"], &manifests())
        .unwrap();
    assert_ready(&cp, &agent, &operator, &charon);
    for (who, log) in [("agent", agent.log()), ("operator", operator.log_text())] {
        assert!(!log.contains(PSK), "the PSK is in the {who}'s log");
    }

    // The peer dies: DPD declares it unreachable and the condition says so; when it is back, the
    // agent brings the tunnel up again by itself.
    let pid = charon.pid().expect("charon runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    drop(charon);
    wait_for(
        Duration::from_secs(30),
        "Ready=False PeerUnreachable",
        || (ready(&cp, TUNNEL) == "False/PeerUnreachable").then_some(()),
    );
    let message = tunnel_field(
        &cp,
        TUNNEL,
        "{.status.conditions[?(@.type==\"Ready\")].message}",
    );
    println!(
        "peer killed -> Ready=False PeerUnreachable after {:.1} s (DPD 2 s / 6 s): {message}",
        killed.elapsed().as_secs_f64()
    );
    assert!(!message.is_empty() && !message.contains(PSK), "{message}");
    let charon = Charon::start(topo.ns("remote").unwrap(), &charon_config()).expect("charon");
    let back = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "Ready again with the peer back",
        || ready(&cp, TUNNEL).starts_with("True/").then_some(()),
    );
    println!(
        "peer back -> Ready after {:.1} s",
        back.elapsed().as_secs_f64()
    );
    assert!(charon.list_sas().unwrap().ike(TUNNEL).is_some());

    // Deletion: the agent (with its RBAC) clears its entry, the finalizer is released, and the
    // IKE SA is deleted at charon.
    cp.kubectl([
        "delete",
        "ipsectunnel",
        TUNNEL,
        "--wait=true",
        "--timeout=30s",
    ])
    .unwrap_or_else(|e| panic!("delete: {e:#}\n{}", agent.log()));
    wait_for(Duration::from_secs(10), "charon's IKE SA deleted", || {
        charon.list_sas().ok().filter(|s| s.ike_sas.is_empty())
    });
}

/// A certificate tunnel in cluster mode: our certificate and key from a `kubernetes.io/tls`
/// Secret (as `kubectl create secret tls` or cert-manager writes it), the peer's CA from another
/// Secret, both read by the agent with its ServiceAccount; charon authenticates with its own
/// certificate from the same CA.
#[test]
fn certificate_tunnel_from_kubernetes_tls_secrets_reaches_ready() {
    let _serial = netns::serial();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), KeyType::Ecdsa(256)).expect("test CA");
    let ours = pki
        .issue("dc1", LOCAL_ID, KeyType::Ecdsa(256))
        .expect("our cert");
    let theirs = pki
        .issue("dc2", REMOTE_ID, KeyType::Ecdsa(256))
        .expect("charon's cert");
    let mut conn = Connection::new(
        TUNNEL,
        Endpoint::pubkey(REMOTE_ID, Some("own.crt")),
        Endpoint::pubkey(LOCAL_ID, None),
    );
    conn.local_addrs = vec![REMOTE_ADDR.into()];
    conn.proposals = vec![IKE.into()];
    let mut child = ChildConfig::new("net", "203.0.113.0/24", "198.51.100.0/24");
    child.esp_proposals = vec![ESP.into()];
    conn.children.push(child);
    let mut cfg = CharonConfig::default();
    cfg.connections.push(conn);
    cfg.add_cert_auth(&pki, &theirs, "own");

    let Installed {
        cp,
        topo: _topo,
        charon,
        operator,
        agent,
    } = install(&cfg);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    cp.kubectl([
        "create",
        "secret",
        "tls",
        "dc1-tls",
        "-n",
        NS,
        &format!("--cert={}", path(&ours.cert)),
        &format!("--key={}", path(&ours.key)),
    ])
    .unwrap();
    cp.kubectl([
        "create",
        "secret",
        "generic",
        "dc2-ca",
        "-n",
        NS,
        &format!("--from-file=ca.crt={}", path(&pki.ca.cert)),
    ])
    .unwrap();
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &tunnel_yaml(
            "{certificate: {secretRef: {name: dc1-tls}}, ca: {secretRef: {name: dc2-ca, key: ca.crt}}}",
            LOCAL_ID,
            REMOTE_ID,
        ),
    )
    .unwrap();
    assert_ready(&cp, &agent, &operator, &charon);
    // charon's connection accepts only a certificate from the test CA for LOCAL_ID (no PSK is
    // configured anywhere), so its ESTABLISHED IKE SA is the proof our certificate was accepted.
    // the private key reached neither log nor status
    let key = std::fs::read_to_string(&ours.key).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let status = cp
        .kubectl(["get", "ipsectunnel", TUNNEL, "-o", "json"])
        .unwrap();
    for (what, text) in [
        ("agent log", agent.log()),
        ("operator log", operator.log_text()),
        ("tunnel", status),
    ] {
        assert!(!text.contains("PRIVATE KEY"), "a key header in the {what}");
        let flat: String = text.split_whitespace().collect();
        assert!(
            !flat.contains(&body[..body.len().min(40)]),
            "key material in the {what}"
        );
    }
}
