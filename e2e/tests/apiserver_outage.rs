//! The API server goes away while a tunnel is up: the data plane must not notice, and the control
//! plane must come back by itself with nothing lost.
//!
//! Real parts: kube-apiserver + etcd, the operator, one gateway node (a network namespace) running
//! `strait-agent cluster --dataplane none`, and strongSwan charon as the remote site. With the
//! tunnel Ready, kube-apiserver is first frozen (SIGSTOP: connections stay open, nothing answers,
//! like a hung server or a partition) for half the outage, then killed (connections reset, then
//! refused) for the other half, and finally started again on the same etcd, port and certificate.
//! etcd keeps running throughout.
//!
//! Checked: during the outage the operator and agent stay alive, the IKE SA and CHILD SA keep the
//! same SPIs on both sides (charon's `--list-sas`, the agent's local status socket) and DPD
//! exchanges keep going both ways; after it, the tunnel stays Ready (never seen otherwise) with the
//! same observedGeneration, active gateway and status entry (SPIs, establishedAt), and changes made
//! afterwards (a new tunnel, a spec edit) are reconciled.
//!
//! Two lengths, both in the README's test command: 20 s (longer than the heartbeat lease) and
//! 60 s (issue #7's figure); `STRAIT_OUTAGE_SECS` overrides both. Needs root,
//! `e2e/setup/controlplane.sh`, `e2e/setup/packages.sh`. Run:
//! `cargo test -p strait-e2e --test apiserver_outage -- --test-threads=1 --nocapture`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
// AGENT_ARGS: a heartbeat lease far shorter than the outage: the agent cannot renew it while the
// API server is away, so the operator finds it long expired when the server returns.
use strait_e2e::cluster::{self, AGENT_ARGS, ESP, IKE, REMOTE_ADDR};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::product::{self, Daemon, NAMESPACE};
use strait_e2e::strongswan::{Charon, CharonConfig, ChildConfig, Connection, Endpoint, Secret};
use strait_e2e::tunnel::{End, TunnelYaml};

const PSK: &str = "strait-outage-test-psk-7c2f90";
/// How long the tunnel is watched after the API server is back (several lease durations and
/// operator wake-ups).
const SETTLE: Duration = Duration::from_secs(15);

/// Tunnel `n` (1 or 2): its name, identities and subnets.
struct Def {
    name: &'static str,
    n: u8,
}

const FIRST: Def = Def {
    name: "outage-1",
    n: 1,
};
const SECOND: Def = Def {
    name: "outage-2",
    n: 2,
};

impl Def {
    fn local_id(&self) -> String {
        format!("t{}.dc1.strait.example", self.n)
    }
    fn remote_id(&self) -> String {
        format!("t{}.dc2.strait.example", self.n)
    }
    fn local_subnet(&self) -> String {
        format!("198.51.100.{}/28", u32::from(self.n) * 16)
    }
    fn remote_subnet(&self) -> String {
        format!("203.0.113.{}/28", u32::from(self.n) * 16)
    }

    fn yaml(&self, dpd_interval: &str) -> String {
        TunnelYaml::new(
            self.name,
            End::new(self.local_id(), "", self.local_subnet()),
            End::new(self.remote_id(), REMOTE_ADDR, self.remote_subnet()),
        )
        .gateways()
        .psk("outage-psk")
        .proposals(IKE, ESP)
        .dpd(dpd_interval, "20s")
        .render()
    }

    fn charon_conn(&self) -> Connection {
        let mut conn = Connection::new(
            self.name,
            Endpoint::psk(&self.remote_id()),
            Endpoint::psk(&self.local_id()),
        );
        conn.local_addrs = vec![REMOTE_ADDR.into()];
        conn.proposals = vec![IKE.into()];
        // charon probes us (more often than we probe it, so its probes are not suppressed by
        // ours): an agent that stopped answering would lose the SA within the outage (see the
        // retransmission settings below)
        conn.dpd_delay = Some("3s".into());
        let mut child = ChildConfig::new("net", &self.remote_subnet(), &self.local_subnet());
        child.esp_proposals = vec![ESP.into()];
        conn.children.push(child);
        conn
    }
}

/// `STRAIT_OUTAGE_SECS`, else `default_secs`.
fn outage(default_secs: u64) -> Duration {
    let secs = std::env::var("STRAIT_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(default_secs);
    Duration::from_secs(secs.max(2))
}

fn tunnel(cp: &ControlPlane, name: &str) -> Value {
    cp.kubectl([
        "get",
        "ipsectunnel",
        name,
        "-o",
        "json",
        "--request-timeout=5s",
    ])
    .ok()
    .and_then(|s| serde_json::from_str::<Value>(&s).ok())
    .unwrap_or(Value::Null)
}

fn ready(t: &Value) -> bool {
    t["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .is_some_and(|c| c["status"] == "True")
}

fn wait_for(what: &str, timeout: Duration, logs: &[&Daemon], mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            let logs: String = logs
                .iter()
                .map(|d| format!("--- {}:\n{}\n", d.log_path().display(), d.log()))
                .collect();
            panic!("timed out after {timeout:?} waiting for {what}\n{logs}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The SPIs of one tunnel as both sides should agree on them: the IKE SPI pair and the CHILD SA's
/// two ESP SPIs (lowercase hex, no `0x`, eight digits).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spis {
    ike: BTreeSet<String>,
    esp: BTreeSet<String>,
}

fn norm_spi(s: &str) -> String {
    let s = s
        .trim()
        .trim_end_matches(',')
        .trim_start_matches("0x")
        .to_ascii_lowercase();
    format!("{s:0>8}")
}

/// From our status entry (the CRD's, or the agent socket's, which has the same shape).
fn spis_of_entry(e: &Value) -> Spis {
    let ike = e["ikeSpis"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .map(|s| s.trim_end_matches("_i").trim_end_matches("_r").to_owned())
        .collect();
    let esp = e["childSas"]
        .as_array()
        .map(|c| {
            c.iter()
                .flat_map(|c| [&c["spiIn"], &c["spiOut"]])
                .filter_map(Value::as_str)
                .map(norm_spi)
                .collect()
        })
        .unwrap_or_default();
    Spis { ike, esp }
}

/// From charon's `swanctl --list-sas` for connection `name`: the `…_i …_r` pair on the IKE line and
/// the `in XXXXXXXX` / `out XXXXXXXX` SPIs of its CHILD SAs; with the state of each.
fn spis_of_charon(raw: &str, name: &str) -> Option<(Spis, String, Vec<String>)> {
    let mut lines = raw
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{name}: #")));
    let head = lines.next()?;
    let ike: BTreeSet<String> = head
        .split_whitespace()
        .map(|w| w.trim_end_matches('*').trim_end_matches(','))
        .filter(|w| w.ends_with("_i") || w.ends_with("_r"))
        .map(|w| w.trim_end_matches("_i").trim_end_matches("_r").to_owned())
        .collect();
    let state = head.split(", ").nth(1).unwrap_or_default().to_owned();
    let mut esp = BTreeSet::new();
    let mut child_states = Vec::new();
    for l in lines.take_while(|l| l.starts_with(' ')) {
        let t = l.trim_start();
        if let Some(rest) = t.strip_prefix("in ").or_else(|| t.strip_prefix("out ")) {
            if let Some(spi) = rest.split_whitespace().next() {
                esp.insert(norm_spi(spi));
            }
        } else if t.contains(", reqid ") {
            child_states.push(t.split(", ").nth(2).unwrap_or_default().to_owned());
        }
    }
    Some((Spis { ike, esp }, state, child_states))
}

/// The agent's own view, from its status socket (no API server involved).
fn agent_local_entry(cp: &ControlPlane, node: &str, tunnel: &str) -> Value {
    let bin = product::binary("strait-agent").unwrap();
    let sock = cp.scratch_dir().join(format!("agent-{node}.sock"));
    let out = Command::new(bin)
        .args(["status", "--json", "--status-socket"])
        .arg(&sock)
        .output()
        .expect("strait-agent status");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["tunnels"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == tunnel))
        .cloned()
        .unwrap_or(Value::Null)
}

/// DPD exchanges charon saw: (requests it answered, responses it got to its own requests).
fn charon_informationals(charon: &Charon) -> (usize, usize) {
    let log = charon.log();
    (
        log.matches("parsed INFORMATIONAL request").count(),
        log.matches("parsed INFORMATIONAL response").count(),
    )
}

/// A 20 s outage (longer than the agents' heartbeat lease).
#[test]
fn apiserver_outage_of_20s_leaves_the_tunnel_alone() {
    apiserver_outage_leaves_the_tunnel_alone(outage(20));
}

/// The 60 s outage issue #7 asks for.
#[test]
fn apiserver_outage_of_60s_leaves_the_tunnel_alone() {
    apiserver_outage_leaves_the_tunnel_alone(outage(60));
}

// No `netns::serial`: the two lengths run side by side (e2e/test.sh), each with its own
// API server, etcd, namespaces, charon and free ports, and most of each is waiting.
fn apiserver_outage_leaves_the_tunnel_alone(outage: Duration) {
    strait_e2e::cmd::require_root().expect("root");
    let mut cp = ControlPlane::start().expect("control plane");
    product::install_crd(&cp).unwrap();
    product::gateway_node(&cp, "gw1").unwrap();
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &cluster::psk_secret("outage-psk", PSK),
    )
    .unwrap();
    let topo = cluster::builder(&["gw1"], REMOTE_ADDR)
        .subnet("remote", &format!("{REMOTE_ADDR}/32"))
        .subnet("remote", "203.0.113.17/32")
        .subnet("remote", "203.0.113.33/32")
        .build()
        .expect("namespaces");
    let charon = Charon::start(
        topo.ns("remote").unwrap(),
        &CharonConfig {
            connections: vec![FIRST.charon_conn(), SECOND.charon_conn()],
            secrets: vec![Secret::Ike {
                ids: Vec::new(),
                secret: PSK.into(),
            }],
            // give up on an unanswered DPD within ~15 s (2 + 3 + 4.5 + 6.75), well inside the
            // outage, so a stalled agent would show
            extra_charon: vec![
                "retransmit_tries = 3".into(),
                "retransmit_timeout = 2".into(),
                "retransmit_base = 1.5".into(),
            ],
            ..CharonConfig::default()
        },
    )
    .expect("charon");
    let mut operator = Daemon::operator(&cp, &[]).expect("operator");
    let mut gw1 =
        Daemon::cluster_agent(&cp, topo.ns("gw1").unwrap(), "gw1", AGENT_ARGS).expect("agent");

    // ---- a tunnel Ready ----
    cp.kubectl_stdin(["apply", "-f", "-"], &FIRST.yaml("5s"))
        .unwrap();
    let out = cp.kubectl([
        "wait",
        "--for=condition=Ready",
        &format!("ipsectunnel/{}", FIRST.name),
        "--timeout=90s",
    ]);
    assert!(
        out.is_ok(),
        "not Ready: {out:?}\n{:#}\n{}",
        tunnel(&cp, FIRST.name),
        gw1.log()
    );
    // the agent writes its entry at most once a second: let the last refresh land
    thread::sleep(Duration::from_secs(2));
    let before = tunnel(&cp, FIRST.name);
    let status_before = before["status"].clone();
    let entry_before = status_before["gateways"][0].clone();
    assert_eq!(entry_before["node"], "gw1", "{status_before:#}");
    let spis = spis_of_entry(&entry_before);
    assert_eq!(spis.ike.len(), 2, "{entry_before:#}");
    assert_eq!(spis.esp.len(), 2, "one CHILD SA: {entry_before:#}");
    let sas = charon.list_sas().unwrap();
    let (charon_spis, state, _) = spis_of_charon(&sas.raw, FIRST.name).expect(&sas.raw);
    assert_eq!(state, "ESTABLISHED", "{}", sas.raw);
    assert_eq!(
        charon_spis, spis,
        "charon and our status agree\n{}",
        sas.raw
    );
    let generation = before["metadata"]["generation"].clone();
    assert_eq!(status_before["observedGeneration"], generation);
    println!("Ready; SPIs {spis:?}; outage of {outage:?} starts");

    // ---- the outage: frozen, then gone ----
    let (req0, resp0) = charon_informationals(&charon);
    let started = Instant::now();
    cp.pause_apiserver().unwrap();
    let mut killed = false;
    let mut checks = 0;
    while started.elapsed() < outage {
        if !killed && started.elapsed() >= outage / 2 {
            cp.stop_apiserver().unwrap();
            killed = true;
            println!(
                "{:.0} s: kube-apiserver killed (was frozen)",
                started.elapsed().as_secs_f64()
            );
        }
        assert!(
            operator.running(),
            "the operator exited during the outage:\n{}",
            operator.log()
        );
        assert!(
            gw1.running(),
            "the agent exited during the outage:\n{}",
            gw1.log()
        );
        let sas = charon.list_sas().unwrap();
        let (now, state, children) = spis_of_charon(&sas.raw, FIRST.name)
            .unwrap_or_else(|| panic!("charon lost the IKE SA:\n{}\n{}", sas.raw, gw1.log()));
        assert_eq!(state, "ESTABLISHED", "{}", sas.raw);
        assert_eq!(children, ["INSTALLED"], "{}", sas.raw);
        assert_eq!(now, spis, "charon's SPIs changed\n{}", sas.raw);
        let local = agent_local_entry(&cp, "gw1", FIRST.name);
        assert_eq!(local["ready"], true, "agent's own view: {local:#}");
        assert_eq!(
            spis_of_entry(&local),
            spis,
            "agent's SPIs changed: {local:#}"
        );
        checks += 1;
        thread::sleep(Duration::from_secs(2));
    }
    if !killed {
        cp.stop_apiserver().unwrap();
    }
    let (req1, resp1) = charon_informationals(&charon);
    println!(
        "outage over after {:.0} s ({checks} checks); DPD seen by charon: {} requests from us \
         answered, {} answers to its own",
        started.elapsed().as_secs_f64(),
        req1 - req0,
        resp1 - resp0
    );
    // charon probes after 3 s without traffic: the agent kept answering during the outage
    let expected = usize::try_from(outage.as_secs() / 10).unwrap_or(1).max(1);
    assert!(
        resp1 - resp0 >= expected,
        "too few DPD exchanges during {outage:?}: {} of ours, {} of charon's\n{}",
        req1 - req0,
        resp1 - resp0,
        charon.log()
    );
    let restart = Instant::now();
    cp.start_apiserver().expect("kube-apiserver restart");
    println!(
        "kube-apiserver back in {:.1} s",
        restart.elapsed().as_secs_f64()
    );

    // ---- after: Ready throughout, nothing lost ----
    let back = Instant::now();
    let mut seen = 0;
    while back.elapsed() < SETTLE {
        let t = tunnel(&cp, FIRST.name);
        if !t.is_null() {
            seen += 1;
            let s = &t["status"];
            assert!(
                ready(&t),
                "Ready lost {:.1} s after the API server came back: {s:#}\n--- operator:\n{}\n--- agent:\n{}",
                back.elapsed().as_secs_f64(),
                operator.log(),
                gw1.log()
            );
            assert_eq!(t["metadata"]["generation"], generation);
            assert_eq!(s["observedGeneration"], generation, "{s:#}");
            assert_eq!(s["activeGateway"], "gw1", "{s:#}");
            let e = &s["gateways"][0];
            assert_eq!(spis_of_entry(e), spis, "{s:#}");
            for field in [
                "ikeState",
                "ikeProposal",
                "ikeSpis",
                "localEndpoint",
                "remoteEndpoint",
                "establishedAt",
            ] {
                assert_eq!(e[field], entry_before[field], "{field}: {s:#}");
            }
            assert_eq!(
                e["childSas"][0]["establishedAt"], entry_before["childSas"][0]["establishedAt"],
                "{s:#}"
            );
        }
        assert!(operator.running(), "{}", operator.log());
        assert!(gw1.running(), "{}", gw1.log());
        thread::sleep(Duration::from_millis(500));
    }
    assert!(seen > 10, "the API server answered only {seen} times");
    let sas = charon.list_sas().unwrap();
    let (now, _, _) = spis_of_charon(&sas.raw, FIRST.name).expect(&sas.raw);
    assert_eq!(now, spis, "{}", sas.raw);
    // the agent renews its heartbeat again
    let lease = cp
        .kubectl([
            "get",
            "lease",
            "-n",
            NAMESPACE,
            "strait-agent-gw1",
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
        .unwrap();
    println!("heartbeat renewed at {lease} after the outage");

    // ---- changes after the recovery are reconciled ----
    cp.kubectl_stdin(["apply", "-f", "-"], &SECOND.yaml("5s"))
        .unwrap();
    wait_for(
        "a tunnel created after the outage to be Ready",
        Duration::from_secs(60),
        &[&operator, &gw1],
        || ready(&tunnel(&cp, SECOND.name)),
    );
    cp.kubectl_stdin(["apply", "-f", "-"], &FIRST.yaml("7s"))
        .unwrap();
    wait_for(
        "the spec edit to be observed and the tunnel Ready again",
        Duration::from_secs(60),
        &[&operator, &gw1],
        || {
            let t = tunnel(&cp, FIRST.name);
            t["metadata"]["generation"] != generation
                && t["status"]["observedGeneration"] == t["metadata"]["generation"]
                && ready(&t)
        },
    );
    for (name, d) in [("operator", &mut operator), ("agent", &mut gw1)] {
        let st = d.terminate(Duration::from_secs(15)).unwrap();
        assert!(st.success(), "{name} exit status {st}\n{}", d.log());
        assert!(
            !d.log().contains("panicked"),
            "{name} panicked:\n{}",
            d.log()
        );
    }
}
