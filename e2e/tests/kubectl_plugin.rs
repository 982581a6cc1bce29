//! `kubectl strait` as a user runs it: the real kubectl finds the `kubectl-strait` plugin on
//! `$PATH` and runs it against a real kube-apiserver, the operator and a gateway agent
//! (`--dataplane none`), with strongSwan charon as the remote site.
//!
//! - `peer-config --for strongswan` is proven by charon itself: charon starts with no
//!   connection, loads exactly the generated `swanctl.conf` (the PSK placeholder replaced by
//!   the output of the command the config prints), initiates, and the tunnel becomes Ready.
//! - `status` and `kubectl get ipsec -o wide` show the SAs, subnets and negotiated proposals.
//! - `diagnose` exits 0 for the Ready tunnel and names the cause for a wrong identity/PSK
//!   (AuthenticationFailed), mismatched proposals (NoProposalChosen), a missing Secret
//!   (SecretUnavailable), no eligible node (NoGatewayAvailable) and, after charon is killed,
//!   the peer down (PeerUnreachable, with the firewall rules between the two addresses).
//! - `gather`'s archive holds the tunnels and Events but not the PSK (searched for in every
//!   file, as text and in base64).
//!
//! Needs root, `e2e/setup/controlplane.sh`, `e2e/setup/packages.sh`. Run:
//! `cargo test -p strait-e2e --test kubectl_plugin -- --nocapture`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use strait_e2e::cluster::{
    self, AGENT_ARGS, LOCAL_ID, LOCAL_NET, REMOTE_ADDR, REMOTE_ID, REMOTE_NET,
};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns;
use strait_e2e::product::{self, Daemon, NAMESPACE};
use strait_e2e::strongswan::{Charon, CharonConfig};
use strait_e2e::tunnel::{End, TunnelYaml};

const PSK: &str = "strait-plugin-test-psk-93c1e7";
/// Base64 of [`PSK`], as the Secret holds it and strongSwan's `0s` form would show it.
const PSK_B64: &str = "c3RyYWl0LXBsdWdpbi10ZXN0LXBzay05M2MxZTc=";
/// The plugin's placeholder on the PSK line (that the filled-in config authenticates proves it
/// is the one the plugin prints).
const PSK_PLACEHOLDER: &str = "PASTE-THE-0s-VALUE-HERE";
/// gw1's address towards the remote site (cluster::builder: the first gateway's /30).
const GW1: &str = "192.0.2.1";

/// `kubectl strait ARGS` through the real kubectl, the plugin found on `$PATH`.
fn strait(cp: &ControlPlane, args: &[&str]) -> Output {
    let plugin = product::binary("kubectl-strait").unwrap();
    cp.kubectl_plugin_command(plugin.parent().unwrap(), ["strait"].iter().chain(args))
        .output()
        .expect("running kubectl strait")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ready_reason(cp: &ControlPlane, name: &str) -> String {
    let s = cluster::status(cp, name);
    s["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| {
            format!(
                "{}/{}",
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_default()
}

fn wait_reason(cp: &ControlPlane, name: &str, want: &str, timeout: Duration, logs: &[&Daemon]) {
    let start = Instant::now();
    loop {
        let got = ready_reason(cp, name);
        if got == want {
            eprintln!(
                "{name}: {want} after {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return;
        }
        if start.elapsed() > timeout {
            let logs: String = logs
                .iter()
                .map(|d| format!("--- {}:\n{}\n", d.log_path().display(), d.log()))
                .collect();
            panic!(
                "{name}: wanted {want} within {timeout:?}, have {got:?}; status {:#}\n{logs}",
                cluster::status(cp, name)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `diagnose`, checks its exit status and that it names `cause`.
fn diagnose(cp: &ControlPlane, tunnel: &str, cause: Option<&str>, more: &[&str]) -> String {
    let o = strait(cp, &["diagnose", tunnel]);
    let out = text(&o);
    eprintln!("---- kubectl strait diagnose {tunnel}\n{out}");
    match cause {
        None => {
            assert!(o.status.success(), "diagnose {tunnel} failed:\n{out}");
            assert!(out.contains("No problem found"), "{out}");
        }
        Some(c) => {
            assert_eq!(
                o.status.code(),
                Some(1),
                "diagnose {tunnel} should exit 1:\n{out}"
            );
            assert!(
                out.contains(&format!("\nCause: {c}: ")),
                "diagnose {tunnel} should name {c}:\n{out}"
            );
            assert!(out.contains("\nNext:  "), "{out}");
        }
    }
    for m in more {
        assert!(
            out.contains(m),
            "diagnose {tunnel}: missing {m:?} in:\n{out}"
        );
    }
    assert!(
        !out.contains(PSK) && !out.contains(PSK_B64),
        "the PSK leaked:\n{out}"
    );
    out
}

fn tunnel(name: &str, local_id: &str) -> TunnelYaml {
    TunnelYaml::new(
        name,
        End::new(local_id, "", LOCAL_NET),
        End::new(REMOTE_ID, REMOTE_ADDR, REMOTE_NET),
    )
    .gateways()
    .psk("plugin-psk")
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn kubectl_strait_status_diagnose_peer_config_and_gather() {
    let _serial = netns::serial();
    strait_e2e::cmd::require_root().expect("root");
    let cp = ControlPlane::start().expect("control plane");
    product::install_crd(&cp).unwrap();
    product::gateway_node(&cp, "gw1").unwrap();
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &cluster::psk_secret("plugin-psk", PSK),
    )
    .unwrap();
    let topo = cluster::topology(&["gw1"]).expect("namespaces");
    // the remote site before it has any configuration of ours
    let charon =
        Charon::start(topo.ns("remote").unwrap(), &CharonConfig::default()).expect("charon");
    let operator = Daemon::operator(&cp, &[]).expect("operator");
    let gw1 =
        Daemon::cluster_agent(&cp, topo.ns("gw1").unwrap(), "gw1", AGENT_ARGS).expect("agent");
    let logs = [&operator, &gw1];

    // ---- peer-config, proven by charon: the cluster responds, the remote site initiates ----
    let mut main = tunnel("plugin-main", LOCAL_ID)
        .initiation("respond")
        .dpd("2s", "6s");
    main.local.address = Some(GW1.into());
    cp.kubectl_stdin(["apply", "-f", "-"], &main.render())
        .unwrap();
    wait_reason(
        &cp,
        "plugin-main",
        "False/IkeSaDown",
        Duration::from_secs(30),
        &logs,
    );
    let o = strait(&cp, &["peer-config", "plugin-main", "--for", "strongswan"]);
    assert!(o.status.success(), "{}", text(&o));
    let conf = String::from_utf8(o.stdout).unwrap();
    eprintln!("---- kubectl strait peer-config plugin-main\n{conf}");
    assert!(
        !conf.contains(PSK) && !conf.contains(PSK_B64),
        "the PSK leaked:\n{conf}"
    );
    for want in [
        format!("remote_addrs = {GW1}\n"),
        format!("local_addrs = {REMOTE_ADDR}\n"),
        "start_action = start\n".to_owned(),
    ] {
        assert!(conf.contains(&want), "missing {want:?}");
    }
    // the command the config prints for the key, run as a user would (kubectl on PATH)
    let cmd = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("#   kubectl get secret"))
        .map(|rest| format!("kubectl get secret{rest}"))
        .expect("the config says how to get the key");
    let plugin = product::binary("kubectl-strait").unwrap();
    let key = Command::new("bash")
        .args(["-c", &cmd])
        .envs(cp.plugin_env(plugin.parent().unwrap()))
        .output()
        .unwrap();
    assert!(key.status.success(), "{cmd}: {}", text(&key));
    let key = String::from_utf8(key.stdout).unwrap();
    assert_eq!(key.trim(), PSK_B64, "{cmd}");
    let filled = conf.replace(PSK_PLACEHOLDER, &format!("0s{}", key.trim()));
    std::fs::write(charon.swanctl_dir().join("swanctl.conf"), filled).unwrap();
    let loaded = charon.load_all().unwrap();
    assert!(
        loaded.status.success(),
        "swanctl --load-all: {}{}",
        loaded.stdout,
        loaded.stderr
    );
    wait_reason(
        &cp,
        "plugin-main",
        "True/TunnelEstablished",
        Duration::from_secs(30),
        &logs,
    );

    // ---- status and -o wide ----
    let o = strait(&cp, &["status"]);
    let out = text(&o);
    eprintln!("---- kubectl strait status\n{out}");
    assert!(o.status.success());
    for want in [
        "plugin-main: Ready (TunnelEstablished), remote 192.0.2.100, active gateway gw1\n",
        "  gw1 (active): IKE Established, ",
        "    CHILD ESP SPIs ",
        &format!("      local  {LOCAL_NET}\n"),
        &format!("      remote {REMOTE_NET}\n"),
    ] {
        assert!(out.contains(want), "status: missing {want:?}");
    }
    let wide = cp
        .kubectl(["get", "ipsec", "plugin-main", "-o", "wide"])
        .unwrap();
    eprintln!("---- kubectl get ipsec -o wide\n{wide}");
    for want in [
        "LOCAL SUBNETS",
        "REMOTE SUBNETS",
        "NAT",
        "IKE",
        "ESP",
        LOCAL_NET,
        REMOTE_NET,
        "aes256gcm16-prfsha384-x25519",
    ] {
        assert!(wide.contains(want), "-o wide: missing {want:?}");
    }
    let nat = cluster::status(&cp, "plugin-main")["gateways"][0]["natDetected"].clone();
    assert!(
        wide.contains(&format!("   {nat}   ")),
        "-o wide: NAT column is not {nat}"
    );
    diagnose(
        &cp,
        "plugin-main",
        None,
        &[
            "[ok  ] Secret strait-system/plugin-psk key \"psk\": present (29 bytes)",
            "MTU: inner packets up to",
        ],
    );

    // ---- four broken tunnels, each diagnosed ----
    // an identity charon has no connection for: charon answers AUTHENTICATION_FAILED
    let wrong_id = tunnel("plugin-wrong-id", "other.dc1.strait.example");
    // proposals charon's connection (the agent's defaults, from peer-config) does not have
    let mut no_prop = tunnel("plugin-no-proposal", LOCAL_ID);
    no_prop.ike = vec!["aes128-sha512-ecp521".into()];
    let mut no_secret = tunnel("plugin-no-secret", LOCAL_ID);
    no_secret.auth = strait_e2e::tunnel::Auth::Psk("plugin-missing".into());
    let mut no_node = tunnel("plugin-no-node", LOCAL_ID);
    no_node.gateway_label = Some("strait.dev/nowhere".into());
    for t in [&wrong_id, &no_prop, &no_secret, &no_node] {
        cp.kubectl_stdin(["apply", "-f", "-"], &t.render()).unwrap();
    }
    wait_reason(
        &cp,
        "plugin-wrong-id",
        "False/AuthenticationFailed",
        Duration::from_secs(40),
        &logs,
    );
    wait_reason(
        &cp,
        "plugin-no-proposal",
        "False/NoProposalChosen",
        Duration::from_secs(40),
        &logs,
    );
    wait_reason(
        &cp,
        "plugin-no-secret",
        "False/SecretUnavailable",
        Duration::from_secs(40),
        &logs,
    );
    wait_reason(
        &cp,
        "plugin-no-node",
        "False/NoGatewayAvailable",
        Duration::from_secs(40),
        &logs,
    );
    diagnose(
        &cp,
        "plugin-wrong-id",
        Some("AuthenticationFailed"),
        &[
            "same pre-shared key",
            "we are other.dc1.strait.example (FQDN)",
        ],
    );
    diagnose(
        &cp,
        "plugin-no-proposal",
        Some("NoProposalChosen"),
        &["we offer IKE [aes128-sha512-ecp521]"],
    );
    diagnose(
        &cp,
        "plugin-no-secret",
        Some("SecretUnavailable"),
        &["[FAIL] Secret strait-system/plugin-missing key \"psk\": no such Secret"],
    );
    diagnose(
        &cp,
        "plugin-no-node",
        Some("NoGatewayAvailable"),
        &[
            "no node matches spec.gateway.nodeSelector",
            "strait.dev/nowhere",
            "kubectl label node",
        ],
    );
    let o = strait(&cp, &["diagnose", "no-such-tunnel"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no-such-tunnel"), "{}", text(&o));

    // ---- gather: everything but the secret ----
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("support.tar.gz");
    let o = strait(&cp, &["gather", "-o", archive.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let x = Command::new("tar")
        .args([
            "-xzf",
            archive.to_str().unwrap(),
            "-C",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(x.status.success(), "tar: {}", text(&x));
    let all = files(&dir.path().join("support"));
    let names: Vec<String> = all
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    eprintln!("gather: {names:?}");
    for want in [
        "support/tunnels.yaml",
        "support/status.txt",
        "support/nodes.yaml",
        "support/tunnel-events.yaml",
        &format!("support/{NAMESPACE}/leases.yaml"),
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let tunnels = std::fs::read_to_string(dir.path().join("support/tunnels.yaml")).unwrap();
    assert!(tunnels.contains("plugin-main") && tunnels.contains("TunnelEstablished"));
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        let s = String::from_utf8_lossy(&bytes);
        assert!(
            !s.contains(PSK) && !s.contains(PSK_B64),
            "{} holds the PSK",
            f.display()
        );
    }

    // ---- the peer goes down ----
    // SIGKILL: a stopped charon would send DELETE (DeletedByPeer); a dead one says nothing
    let pid = charon.pid().expect("charon runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(charon);
    wait_reason(
        &cp,
        "plugin-main",
        "False/PeerUnreachable",
        Duration::from_secs(30),
        &logs,
    );
    diagnose(
        &cp,
        "plugin-main",
        Some("PeerUnreachable"),
        &[&format!(
            "UDP 500, UDP 4500 and IP protocol 50 (ESP) from {GW1} to {REMOTE_ADDR}"
        )],
    );
}
