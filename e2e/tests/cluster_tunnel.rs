//! The whole product on the real control plane: kube-apiserver + etcd, the operator as a
//! process, two gateway "nodes" as network namespaces each running `strait-agent cluster
//! --dataplane none` (the host kernel has no ESP), and a strongSwan remote site (charon,
//! kernel-libipsec) in a third namespace. The agents reach the API server at the same
//! `127.0.0.1:PORT` through a port forward into their namespace (`strait_e2e::apiforward`).
//!
//! ```text
//!  gw1 192.0.2.1/30 ---- 192.0.2.2/30 \
//!                                      remote (charon), IKE address 192.0.2.100 on lo
//!  gw2 192.0.2.5/30 ---- 192.0.2.6/30 /
//! ```
//!
//! Needs root, `e2e/setup/controlplane.sh`, `e2e/setup/packages.sh`, and built binaries
//! (`cargo build -p strait-agent -p strait-operator`). Run:
//! `cargo test -p strait-e2e --test cluster_tunnel -- --test-threads=1 --nocapture`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_e2e::cluster::{self, AGENT_ARGS, IKE, REMOTE_ADDR};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns;
use strait_e2e::product::{self, Daemon};
use strait_e2e::strongswan::Charon;
use strait_e2e::tunnel::TunnelYaml;

const TUNNEL: &str = "dc1-to-dc2";
const PSK: &str = "strait-cluster-test-psk-4b9e1d";

fn tunnel_yaml(ike: &str) -> String {
    TunnelYaml {
        ike: vec![ike.into()],
        ..cluster::tunnel(TUNNEL, "dc2-psk")
    }
    .render()
}

fn secret_yaml(psk: &str) -> String {
    cluster::psk_secret("dc2-psk", psk)
}

fn status(cp: &ControlPlane) -> Value {
    cluster::status(cp, TUNNEL)
}

fn ready(s: &Value) -> (String, String) {
    condition(s, "Ready")
}

/// A condition's (status, reason).
fn condition(s: &Value, type_: &str) -> (String, String) {
    s["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .unwrap_or_default()
}

fn entry<'a>(s: &'a Value, node: &str) -> Option<&'a Value> {
    s["gateways"]
        .as_array()
        .and_then(|g| g.iter().find(|e| e["node"] == node))
}

/// Polls the tunnel's status until `pred` holds; panics with the status and logs otherwise.
fn wait_status(
    cp: &ControlPlane,
    what: &str,
    timeout: Duration,
    agents: &[&Daemon],
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let s = status(cp);
        if pred(&s) {
            return s;
        }
        if start.elapsed() > timeout {
            let logs: String = agents
                .iter()
                .map(|a| format!("--- {}:\n{}\n", a.log_path().display(), a.log()))
                .collect();
            panic!("timed out after {timeout:?} waiting for {what}; status: {s:#}\n{logs}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// charon's proposal (`AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519`) in strongSwan's
/// proposal-string notation, for comparison with the status entry.
fn charon_to_ours(p: &str) -> String {
    p.split('/')
        .filter_map(|t| {
            Some(match t.trim() {
                "AES_GCM_16-128" | "AES_GCM_16_128" => "aes128gcm16",
                "AES_GCM_16-256" | "AES_GCM_16_256" => "aes256gcm16",
                "PRF_HMAC_SHA2_256" => "prfsha256",
                "PRF_HMAC_SHA2_384" => "prfsha384",
                "CURVE_25519" => "x25519",
                "ECP_256" => "ecp256",
                "ECP_384" => "ecp384",
                // the ESP line has no key exchange unless PFS was negotiated on a rekey
                "ESP:AES_GCM_16-256" | "ESP:AES_GCM_16_256" => "aes256gcm16",
                "" => return None,
                other => other,
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[test]
fn cluster_mode_end_to_end() {
    let _serial = netns::serial();
    strait_e2e::cmd::require_root().expect("root");
    let cp = ControlPlane::start().expect("control plane");
    product::install_crd(&cp).unwrap();
    for node in ["gw1", "gw2"] {
        product::gateway_node(&cp, node).unwrap();
    }
    let topo = cluster::topology(&["gw1", "gw2"]).expect("building the namespaces");
    let charon = Charon::start(
        topo.ns("remote").unwrap(),
        &cluster::charon_config(TUNNEL, PSK),
    )
    .expect("charon");
    let operator = Daemon::operator(&cp, &[]).expect("operator");
    let mut gw1 =
        Daemon::cluster_agent(&cp, topo.ns("gw1").unwrap(), "gw1", AGENT_ARGS).expect("agent gw1");
    let mut gw2 =
        Daemon::cluster_agent(&cp, topo.ns("gw2").unwrap(), "gw2", AGENT_ARGS).expect("agent gw2");
    // both heartbeats present before the tunnel exists, so the election has two candidates
    cluster::wait_heartbeats(&cp, &["gw1", "gw2"], Duration::from_secs(60), || {
        format!("{}\n{}", gw1.log(), gw2.log())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // ---- apply → Ready ----
    cp.kubectl_stdin(["apply", "-f", "-"], &secret_yaml(PSK))
        .unwrap();
    let applied = Instant::now();
    cp.kubectl_stdin(["apply", "-f", "-"], &tunnel_yaml(IKE))
        .unwrap();
    let out = cp.kubectl([
        "wait",
        "--for=condition=Ready",
        &format!("ipsectunnel/{TUNNEL}"),
        "--timeout=90s",
    ]);
    assert!(
        out.is_ok(),
        "kubectl wait Ready: {out:?}\nstatus: {:#}\n{}\n{}",
        status(&cp),
        gw1.log(),
        gw2.log()
    );
    let apply_to_ready = applied.elapsed();
    println!("apply -> Ready: {:.2} s", apply_to_ready.as_secs_f64());
    let s = status(&cp);
    assert_eq!(s["activeGateway"], "gw1", "first candidate by name: {s:#}");
    let e = entry(&s, "gw1").expect("gw1's entry");
    assert!(
        entry(&s, "gw2").is_none(),
        "the standby writes no entry: {s:#}"
    );
    let sas = charon.list_sas().unwrap();
    let ike = sas
        .ike(TUNNEL)
        .unwrap_or_else(|| panic!("charon has no IKE SA:\n{}", sas.raw));
    assert_eq!(ike.state, "ESTABLISHED", "{}", sas.raw);
    assert_eq!(
        e["ikeProposal"].as_str().unwrap(),
        charon_to_ours(ike.proposal.as_deref().unwrap_or_default()),
        "IKE algorithms: ours vs charon's\n{}",
        sas.raw
    );
    let child = ike.children.first().expect("charon's CHILD SA");
    assert_eq!(
        e["childSas"][0]["proposal"].as_str().unwrap(),
        charon_to_ours(child.proposal.as_deref().unwrap_or_default()),
        "ESP algorithms: ours vs charon's\n{}",
        sas.raw
    );
    assert!(
        ike.remote
            .as_deref()
            .unwrap_or_default()
            .contains("192.0.2.1"),
        "{}",
        sas.raw
    );
    // ownership: the entry belongs to the agent's field manager only
    let managers = cp
        .kubectl([
            "get",
            "ipsectunnel",
            TUNNEL,
            "--show-managed-fields",
            "-o",
            "jsonpath={range .metadata.managedFields[*]}{.manager}{\" \"}{.subresource}{\"\\n\"}{end}",
        ])
        .unwrap();
    assert!(managers.contains("strait-agent/gw1 status"), "{managers}");
    println!(
        "{}",
        cp.kubectl(["get", "ipsectunnels", "-o", "wide"]).unwrap()
    );

    // ---- a wrong PSK: the reauthentication fails, the established SA carries on (Ready,
    // Degraded AuthenticationFailed); fixed → reauthenticated, Degraded False ----
    let spis_before = entry(&status(&cp), "gw1").unwrap()["ikeSpis"].clone();
    cp.kubectl_stdin(["apply", "-f", "-"], &secret_yaml("not-the-right-key"))
        .unwrap();
    let t = Instant::now();
    let s = wait_status(
        &cp,
        "Degraded AuthenticationFailed, Ready still True",
        Duration::from_secs(60),
        &[&gw1],
        |s| {
            condition(s, "Degraded") == ("True".into(), "AuthenticationFailed".into())
                && ready(s).0 == "True"
        },
    );
    println!(
        "wrong PSK -> Degraded AuthenticationFailed, still Ready: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(entry(&s, "gw1").unwrap()["ikeSpis"], spis_before, "{s:#}");
    let msg = entry(&s, "gw1").unwrap()["lastError"]["message"].to_string();
    assert!(
        !msg.contains("not-the-right-key") && !msg.contains(PSK),
        "{msg}"
    );
    cp.kubectl_stdin(["apply", "-f", "-"], &secret_yaml(PSK))
        .unwrap();
    let t = Instant::now();
    wait_status(
        &cp,
        "reauthenticated after the Secret was fixed",
        Duration::from_secs(60),
        &[&gw1],
        |s| {
            ready(s).0 == "True"
                && condition(s, "Degraded").0 == "False"
                && entry(s, "gw1").is_some_and(|e| e["ikeSpis"] != spis_before)
        },
    );
    println!(
        "Secret fixed -> reauthenticated, Degraded False: {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // ---- proposal mismatch → NoProposalChosen; restored → Ready ----
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &tunnel_yaml("aes128gcm16-prfsha256-ecp256"),
    )
    .unwrap();
    let t = Instant::now();
    wait_status(
        &cp,
        "Ready=False NoProposalChosen",
        Duration::from_secs(60),
        &[&gw1],
        |s| ready(s) == ("False".into(), "NoProposalChosen".into()),
    );
    println!(
        "proposal mismatch -> NoProposalChosen: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    cp.kubectl_stdin(["apply", "-f", "-"], &tunnel_yaml(IKE))
        .unwrap();
    wait_status(
        &cp,
        "Ready again with matching proposals",
        Duration::from_secs(60),
        &[&gw1],
        |s| ready(s).0 == "True",
    );

    // ---- the active agent dies → the standby takes over ----
    let killed = Instant::now();
    gw1.kill();
    let s = wait_status(
        &cp,
        "failover to gw2 and Ready",
        Duration::from_secs(90),
        &[&gw2],
        |s| s["activeGateway"] == "gw2" && ready(s).0 == "True",
    );
    let failover = killed.elapsed();
    println!(
        "active agent SIGKILLed -> Ready on gw2: {:.2} s (heartbeat lease 6 s)",
        failover.as_secs_f64()
    );
    assert!(entry(&s, "gw2").is_some(), "{s:#}");
    let sas = charon.list_sas().unwrap();
    assert!(
        sas.ike_sas.iter().any(|sa| sa.state == "ESTABLISHED"
            && sa
                .remote
                .as_deref()
                .unwrap_or_default()
                .contains("192.0.2.5")),
        "charon has no IKE SA with gw2:\n{}",
        sas.raw
    );
    let first_gw1_log = gw1.log();
    // gw1 comes back as a standby: it removes the stale entry of the SA it no longer has
    let mut gw1 =
        Daemon::cluster_agent(&cp, topo.ns("gw1").unwrap(), "gw1", AGENT_ARGS).expect("agent gw1");
    wait_status(
        &cp,
        "gw1's stale entry cleared",
        Duration::from_secs(30),
        &[&gw1],
        |s| entry(s, "gw1").is_none(),
    );
    assert_eq!(status(&cp)["activeGateway"], "gw2", "no move back to gw1");

    // ---- gw2 stops matching the selector → back to gw1; gw2 sends DELETE, clears its entry ----
    let t = Instant::now();
    cp.kubectl([
        "label",
        "node",
        "gw2",
        "strait.dev/gateway=false",
        "--overwrite",
    ])
    .unwrap();
    let s = wait_status(
        &cp,
        "moved to gw1 and Ready, gw2's entry gone",
        Duration::from_secs(60),
        &[&gw1, &gw2],
        |s| s["activeGateway"] == "gw1" && ready(s).0 == "True" && entry(s, "gw2").is_none(),
    );
    println!(
        "gw2 relabelled -> Ready on gw1: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert!(entry(&s, "gw1").is_some(), "{s:#}");
    wait_charon(
        &charon,
        "gw2's IKE SA deleted (DELETE from the agent that lost the role)",
        |sas| {
            !sas.ike_sas.iter().any(|sa| {
                sa.remote
                    .as_deref()
                    .unwrap_or_default()
                    .contains("192.0.2.5")
            })
        },
    );
    assert!(
        gw2.log().contains("no longer active here (or deleted)"),
        "{}",
        gw2.log()
    );

    // ---- secret hygiene: neither key reached a log, an event or the status ----
    let places = [
        ("operator log", operator.log()),
        ("first gw1 agent log", first_gw1_log),
        ("gw1 agent log", gw1.log()),
        ("gw2 agent log", gw2.log()),
        (
            "events",
            cp.kubectl(["get", "events", "-A", "-o", "json"]).unwrap(),
        ),
        (
            "IPsecTunnel objects",
            cp.kubectl(["get", "ipsectunnels", "-A", "-o", "json"])
                .unwrap(),
        ),
    ];
    assert_no_secret(&places, &[PSK, "not-the-right-key"]);

    // ---- deletion: DELETE to charon, entry cleared, finalizer released ----
    let t = Instant::now();
    let out = cp.kubectl([
        "delete",
        "ipsectunnel",
        TUNNEL,
        "--wait=true",
        "--timeout=30s",
    ]);
    assert!(out.is_ok(), "delete: {out:?}\n{}", gw1.log());
    println!(
        "delete -> finalizer released: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    wait_charon(
        &charon,
        "no IKE SA left at charon after the deletion",
        |sas| sas.ike_sas.is_empty(),
    );
    // a clean stop exits 0
    for (name, agent) in [("gw1", &mut gw1), ("gw2", &mut gw2)] {
        let st = agent.terminate(Duration::from_secs(10)).unwrap();
        assert!(st.success(), "{name} exit status {st}\n{}", agent.log());
    }
    println!(
        "summary: apply->Ready {:.2} s, failover {:.2} s",
        apply_to_ready.as_secs_f64(),
        failover.as_secs_f64()
    );
}

/// Fails if any secret occurs in any place, naming the place but not the secret.
fn assert_no_secret(places: &[(&str, String)], secrets: &[&str]) {
    for (place, text) in places {
        // each place must hold something, or the search proves nothing
        assert!(!text.trim().is_empty(), "{place} is empty");
        for (i, secret) in secrets.iter().enumerate() {
            assert!(!text.contains(secret), "secret #{i} found in the {place}");
        }
    }
    println!(
        "secret hygiene: {} secrets searched in {} places ({} bytes), not found",
        secrets.len(),
        places.len(),
        places.iter().map(|(_, t)| t.len()).sum::<usize>()
    );
}

fn wait_charon(
    charon: &Charon,
    what: &str,
    pred: impl Fn(&strait_e2e::strongswan::ListSas) -> bool,
) {
    let start = Instant::now();
    loop {
        let sas = charon.list_sas().unwrap();
        if pred(&sas) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "charon: {what}: not after 10 s:\n{}",
            sas.raw
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Reasons that come from the agent before any IKE: the Secret missing (then created: the agent
/// reacts to the new Secret), and a kernel without ESP under `--dataplane kernel`.
#[test]
fn secret_unavailable_then_kernel_unsupported() {
    let _serial = netns::serial();
    strait_e2e::cmd::require_root().expect("root");
    let cp = ControlPlane::start().expect("control plane");
    product::install_crd(&cp).unwrap();
    product::gateway_node(&cp, "gw1").unwrap();
    let topo = cluster::builder(&["gw1"], REMOTE_ADDR)
        .build()
        .expect("namespaces");
    let _operator = Daemon::operator(&cp, &[]).expect("operator");
    let gw1 = Daemon::cluster_agent(
        &cp,
        topo.ns("gw1").unwrap(),
        "gw1",
        &["--dataplane", "kernel", "--metrics-addr", "off"],
    )
    .expect("agent gw1");
    cp.kubectl_stdin(["apply", "-f", "-"], &tunnel_yaml(IKE))
        .unwrap();
    let s = wait_status(
        &cp,
        "Ready=False SecretUnavailable",
        Duration::from_secs(60),
        &[&gw1],
        |s| ready(s) == ("False".into(), "SecretUnavailable".into()),
    );
    let msg = entry(&s, "gw1").unwrap()["lastError"]["message"].to_string();
    assert!(
        msg.contains("dc2-psk"),
        "the message names the Secret: {msg}"
    );
    cp.kubectl_stdin(["apply", "-f", "-"], &secret_yaml(PSK))
        .unwrap();
    let s = wait_status(
        &cp,
        "Ready=False KernelUnsupported once the Secret exists",
        Duration::from_secs(60),
        &[&gw1],
        |s| ready(s) == ("False".into(), "KernelUnsupported".into()),
    );
    let msg = entry(&s, "gw1").unwrap()["lastError"]["message"].to_string();
    println!("KernelUnsupported: {msg}");
    assert!(!msg.contains(PSK), "{msg}");
    assert!(!gw1.log().contains(PSK), "the PSK must never be logged");
}
