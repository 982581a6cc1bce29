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

use operator_support::{NS, node, operator_as, ready, tunnel_field, wait_for, workspace};
use strait_e2e::cluster::{self, LOCAL_ID, REMOTE_ID};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns::{self, Topology};
use strait_e2e::product::{Daemon, service_account_kubeconfig};
use strait_e2e::strongswan::{Charon, CharonConfig, Endpoint, KeyType, TestPki};
use strait_e2e::tunnel::{Auth, TunnelYaml};

const TUNNEL: &str = "chart-dc2";
const PSK: &str = "strait-chart-rbac-psk-71c0aa";

/// The tunnel, authenticated by `auth` (`spec.auth` as one flow mapping).
fn tunnel_yaml(auth: &str) -> String {
    TunnelYaml {
        auth: Auth::Yaml(auth.into()),
        ..cluster::tunnel(TUNNEL, "dc2-psk").dpd("2s", "6s")
    }
    .render()
}

fn manifests() -> String {
    format!(
        "{}---\n{}",
        cluster::psk_secret("dc2-psk", PSK),
        tunnel_yaml("{psk: {secretRef: {name: dc2-psk, key: psk}}}")
    )
}

/// The chart installed, node gw1 labelled, namespaces gw1 and remote with charon (`charon_cfg`)
/// on remote, the operator and the agent on gw1 running with the chart's ServiceAccounts, and
/// the agent's heartbeat Lease written.
struct Installed {
    agent_kubeconfig: std::path::PathBuf,
    agent: Daemon,
    operator: Daemon,
    charon: Charon,
    topo: Topology,
    cp: ControlPlane,
}

fn install(charon_cfg: &CharonConfig) -> Installed {
    install_with(charon_cfg, &[])
}

/// The agent's arguments in these tests, then `extra`.
fn agent_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--dataplane", "none", "--metrics-addr", "off"];
    args.extend_from_slice(extra);
    args
}

/// [`install`], the agent started with `extra` arguments too.
fn install_with(charon_cfg: &CharonConfig, extra: &[&str]) -> Installed {
    strait_e2e::cmd::require_root().expect("root");
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
    strait_e2e::product::wait_crd(&cp, 60).unwrap();
    let op_kubeconfig = service_account_kubeconfig(&cp, NS, "strait-operator").unwrap();
    let agent_kubeconfig = service_account_kubeconfig(&cp, NS, "strait-agent").unwrap();
    node(&cp, "gw1", &[("strait.dev/gateway", "true")]);

    let topo = cluster::topology(&["gw1"]).expect("namespaces");
    let charon = Charon::start(topo.ns("remote").unwrap(), charon_cfg).expect("charon");
    let operator = operator_as(&cp, "chart-op", &op_kubeconfig, &[]);
    let agent = Daemon::cluster_agent_as(
        &cp,
        topo.ns("gw1").unwrap(),
        "gw1",
        &agent_args(extra),
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
        agent_kubeconfig,
        agent,
        operator,
        charon,
        topo,
        cp,
    }
}

/// `kubectl wait` Ready, then charon's IKE SA with a CHILD SA, the agent's field manager, and
/// neither log refused anything by RBAC.
fn assert_ready(cp: &ControlPlane, agent: &Daemon, operator: &Daemon, charon: &Charon) {
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
        operator.log(),
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
    for (who, log) in [("agent", agent.log()), ("operator", operator.log())] {
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
        ..
    } = install(&cluster::charon_config(TUNNEL, PSK));
    cp.kubectl_stdin(["apply", "-f", "-"], &manifests())
        .unwrap();
    assert_ready(&cp, &agent, &operator, &charon);
    for (who, log) in [("agent", agent.log()), ("operator", operator.log())] {
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
    let charon = Charon::start(
        topo.ns("remote").unwrap(),
        &cluster::charon_config(TUNNEL, PSK),
    )
    .expect("charon");
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
    delete_tunnel(&cp, &agent, &charon);
}

/// Creates or replaces the `kubernetes.io/tls` Secret `dc1-tls` with `cert`, as cert-manager
/// writes it.
fn apply_tls_secret(cp: &ControlPlane, cert: &strait_e2e::strongswan::CertFiles) {
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let secret = cp
        .kubectl([
            "create",
            "secret",
            "tls",
            "dc1-tls",
            "-n",
            NS,
            &format!("--cert={}", path(&cert.cert)),
            &format!("--key={}", path(&cert.key)),
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .unwrap();
    cp.kubectl_stdin(["apply", "-f", "-"], &secret).unwrap();
}

/// `kubectl delete` of the tunnel, waiting for the finalizer, and charon's IKE SA deleted by
/// the agent.
fn delete_tunnel(cp: &ControlPlane, agent: &Daemon, charon: &Charon) {
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
    let mut conn = cluster::charon_conn(TUNNEL);
    conn.local = Endpoint::pubkey(REMOTE_ID, Some("own.crt"));
    conn.remote = Endpoint::pubkey(LOCAL_ID, None);
    let mut cfg = CharonConfig::default();
    cfg.connections.push(conn);
    cfg.add_cert_auth(&pki, &theirs, "own");

    let Installed {
        cp,
        topo: _topo,
        charon,
        operator,
        agent,
        ..
    } = install(&cfg);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    apply_tls_secret(&cp, &ours);
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
        ("operator log", operator.log()),
        ("tunnel", status),
    ] {
        assert!(!text.contains("PRIVATE KEY"), "a key header in the {what}");
        let flat: String = text.split_whitespace().collect();
        assert!(
            !flat.contains(&body[..body.len().min(40)]),
            "key material in the {what}"
        );
    }

    // cert-manager renews the certificate with a new key (here a P-384 one, so that charon's
    // log tells which key signed): the tunnel reauthenticates make-before-break, Ready all along
    let sas = charon.list_sas().unwrap();
    let old_id = sas.ike(TUNNEL).unwrap().unique_id;
    let renewed = pki
        .issue("dc1-renewed", LOCAL_ID, KeyType::Ecdsa(384))
        .expect("the renewed cert");
    apply_tls_secret(&cp, &renewed);
    let renewed_at = Instant::now();
    let mut ready_throughout = true;
    let new_id = wait_for(Duration::from_secs(30), "a new IKE SA at charon", || {
        ready_throughout &= ready(&cp, TUNNEL).starts_with("True/");
        let sas = charon.list_sas().ok()?;
        let ike = sas.ike(TUNNEL)?;
        (sas.ike_sas.len() == 1 && ike.unique_id != old_id && !ike.children.is_empty())
            .then_some(ike.unique_id)
    });
    assert!(ready_throughout, "Ready went False during the renewal");
    assert!(
        charon.log().contains("ECDSA_WITH_SHA384_DER successful"),
        "the new IKE SA was not signed with the renewed key:\n{}",
        charon.log()
    );
    assert!(
        agent.log().contains("credentials changed"),
        "{}",
        agent.log()
    );
    println!(
        "certificate renewed: IKE SA #{old_id} replaced by #{new_id} {:.1} s after the Secret \
         changed, Ready throughout",
        renewed_at.elapsed().as_secs_f64()
    );
}

/// The agent's pod in the restart test: an API object only (no kubelet runs it), held by a
/// finalizer so that a deletion leaves it Terminating, as a kubelet does while the pod stops.
const POD: &str = "strait-agent-gw1-test";

/// charon's IKE SA of the tunnel, by unique id (a new negotiation gives a new one).
fn ike_id(charon: &Charon) -> u32 {
    let sas = charon.list_sas().unwrap();
    let ike = sas
        .ike(TUNNEL)
        .unwrap_or_else(|| panic!("charon has no IKE SA:\n{}", sas.raw));
    assert_eq!(ike.state, "ESTABLISHED", "{}", sas.raw);
    ike.unique_id
}

/// The heartbeat Lease of gw1: (holder, leaseDurationSeconds).
fn lease(cp: &ControlPlane) -> (String, String) {
    let out = cp
        .kubectl([
            "get",
            "lease",
            "-n",
            NS,
            "strait-agent-gw1",
            "-o",
            "jsonpath={.spec.holderIdentity} {.spec.leaseDurationSeconds}",
        ])
        .unwrap_or_default();
    let (h, d) = out.split_once(' ').unwrap_or(("", ""));
    (h.to_owned(), d.to_owned())
}

/// The saved-state files in `dir`.
fn saved_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ike"))
                .collect()
        })
        .unwrap_or_default()
}

/// With `--state-dir`, SIGTERM while the agent's own pod is being deleted and the agent
/// DaemonSet stays (a rolling update, `kubectl delete pod`) is a restart: no DELETE to the peer,
/// the Lease renewed once for `--restart-grace-seconds`, and the next agent process resumes the
/// same IKE SA. SIGTERM without a pod deletion (a node shutting down) deletes the SAs and
/// releases the Lease, as without saved state. Both read with the chart's RBAC.
#[test]
fn a_deleted_agent_pod_is_a_restart_that_resumes_and_other_stops_delete() {
    let _serial = netns::serial();
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("ike");
    let dir_arg = dir.to_str().unwrap().to_owned();
    let extra = [
        "--state-dir",
        &dir_arg,
        "--pod",
        POD,
        "--lease-duration-seconds",
        "5",
        "--renew-interval",
        "1",
        "--restart-grace-seconds",
        "45",
    ];
    let Installed {
        cp,
        topo,
        charon,
        operator,
        mut agent,
        agent_kubeconfig,
    } = install_with(&cluster::charon_config(TUNNEL, PSK), &extra);
    let start_agent = || {
        Daemon::cluster_agent_as(
            &cp,
            topo.ns("gw1").unwrap(),
            "gw1",
            &agent_args(&extra),
            &agent_kubeconfig,
        )
        .expect("agent gw1")
    };
    cp.kubectl_stdin(["apply", "-f", "-"], &manifests())
        .unwrap();
    assert_ready(&cp, &agent, &operator, &charon);
    // the operator made the agent DaemonSet (what tells a restart from a stop for good)
    wait_for(Duration::from_secs(30), "the agent DaemonSet", || {
        cp.kubectl(["get", "ds", "strait-agent", "-n", NS, "-o", "name"])
            .ok()
    });
    let pod = format!(
        "{{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {{\"name\": \"{POD}\", \
         \"namespace\": \"{NS}\", \"finalizers\": [\"strait.dev/test-hold\"]}}, \"spec\": \
         {{\"serviceAccountName\": \"strait-agent\", \"automountServiceAccountToken\": false, \
         \"containers\": [{{\"name\": \"agent\", \"image\": \"localhost/strait-agent:test\"}}]}}}}"
    );
    cp.kubectl_stdin(["apply", "-f", "-"], &pod).unwrap();

    // 1. SIGTERM, the pod not being deleted (a node shutting down): a stop for good
    let first = ike_id(&charon);
    assert!(!saved_files(&dir).is_empty(), "nothing saved in {dir:?}");
    agent.terminate(Duration::from_secs(15)).unwrap();
    wait_for(Duration::from_secs(10), "charon's IKE SA deleted", || {
        charon.list_sas().ok().filter(|s| s.ike_sas.is_empty())
    });
    assert_eq!(
        lease(&cp).0,
        "",
        "the Lease was not released: {:?}",
        lease(&cp)
    );
    assert!(
        saved_files(&dir).is_empty(),
        "saved state left: {:?}",
        saved_files(&dir)
    );
    let log = agent.log();
    assert!(log.contains("no replacement follows"), "{log}");

    // 2. a new agent negotiates anew: there was nothing to resume
    let mut agent = start_agent();
    assert_ready(&cp, &agent, &operator, &charon);
    let second = ike_id(&charon);
    assert_ne!(first, second, "the same IKE SA after a stop for good");

    // 3. the pod deleted (Terminating) while the DaemonSet stays: a restart
    cp.kubectl(["delete", "pod", POD, "-n", NS, "--wait=false"])
        .unwrap();
    wait_for(Duration::from_secs(10), "the pod Terminating", || {
        cp.kubectl([
            "get",
            "pod",
            POD,
            "-n",
            NS,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .ok()
        .filter(|t| !t.is_empty())
    });
    agent.terminate(Duration::from_secs(15)).unwrap();
    let stopped = Instant::now();
    assert!(
        agent.log().contains("stopping for a restart"),
        "{}",
        agent.log()
    );
    assert_eq!(
        lease(&cp),
        ("gw1".to_owned(), "45".to_owned()),
        "the Lease was not extended for the restart"
    );
    assert_eq!(saved_files(&dir), vec![format!("{TUNNEL}.ike")]);
    // the peer heard nothing: its IKE SA stays, and the tunnel stays Ready past the normal
    // lease (5 s), which the grace covers
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        ike_id(&charon),
        second,
        "charon's IKE SA changed while no agent ran"
    );
    assert!(
        ready(&cp, TUNNEL).starts_with("True/"),
        "not Ready {:.1} s into the restart: {}",
        stopped.elapsed().as_secs_f64(),
        ready(&cp, TUNNEL)
    );

    // 4. the replacement resumes the same IKE SA
    let mut agent = start_agent();
    wait_for(
        Duration::from_secs(30),
        "the saved IKE state resumed",
        || {
            agent
                .log()
                .contains("resumed saved IKE state")
                .then_some(())
        },
    );
    assert_ready(&cp, &agent, &operator, &charon);
    assert_eq!(ike_id(&charon), second, "renegotiated instead of resumed");
    wait_for(
        Duration::from_secs(10),
        "the Lease renewed as usual",
        || (lease(&cp) == ("gw1".to_owned(), "5".to_owned())).then_some(()),
    );
    println!(
        "restart: the same IKE SA (#{second}) resumed {:.1} s after the stop, Ready throughout",
        stopped.elapsed().as_secs_f64()
    );
    // the resumed IKE SA carries the tunnel's deletion to charon
    cp.kubectl([
        "patch",
        "pod",
        POD,
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .unwrap();
    delete_tunnel(&cp, &agent, &charon);
    agent.terminate(Duration::from_secs(15)).unwrap();
}
