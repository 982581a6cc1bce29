//! The route role on the real control plane: the operator, two gateway agents (`--dataplane
//! none`: the host kernel has no ESP) and charon as in `cluster_tunnel.rs`, plus a third node
//! running `strait-agent route`. Its steering table must point the remote subnet at the active
//! gateway's overlay address, follow a failover within 1 s of the operator writing the new
//! `activeGateway`, put it all back after a restart, keep it through a rolling update (its pod
//! deleted while its DaemonSet stays), and leave nothing behind on any other stop or when the
//! tunnel is deleted. Packets through the overlay: `agent/tests/steering_host.rs`.
//!
//! ```text
//!  gw1 192.0.2.1/30 ---- remote (charon)     node3 10.1.0.3/24 ---- gw1 10.1.0.1/24
//!  gw2 192.0.2.5/30 ----/                    (the Nodes' InternalIPs: 10.1.0.1, .2, .3)
//! ```
//!
//! Needs root, `e2e/setup/controlplane.sh`, `e2e/setup/packages.sh` and built binaries. Run:
//! `cargo test -p strait-e2e --test route_role -- --test-threads=1 --nocapture`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use strait_e2e::cluster::{self, AGENT_ARGS, REMOTE_ADDR, REMOTE_NET};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns;
use strait_e2e::product::{self, Daemon, NAMESPACE};
use strait_e2e::strongswan::Charon;

const TUNNEL: &str = "dc1-to-dc2";
const PSK: &str = "strait-route-role-test-psk-7c21aa";
const TABLE: &str = "23041";

fn internal_ip(cp: &ControlPlane, node: &str, ip: &str) {
    cp.kubectl([
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}}]}}}}"#),
    ])
    .unwrap();
}

/// node3's steering table (an empty table does not exist for `ip`: "").
fn table(ns: &str) -> String {
    netns::exec_unchecked(ns, &["ip", "route", "show", "table", TABLE])
        .map(|o| o.stdout)
        .unwrap_or_default()
}

fn device(ns: &str) -> bool {
    netns::exec_unchecked(ns, &["ip", "link", "show", "strait-vx"])
        .is_ok_and(|o| o.status.success())
}

fn wait_table(ns: &str, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool, log: &Daemon) {
    let start = Instant::now();
    loop {
        let t = table(ns);
        if ok(&t) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}; table {TABLE}:\n{t}\nroute role log:\n{}",
            log.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The route role's DaemonSet (the chart's name; no controller runs it here) and a pod of it:
/// API objects only, the pod held by a finalizer so a deletion leaves it Terminating, as a
/// kubelet does while the pod stops.
const ROUTE_DS: &str = "strait-route";
const POD: &str = "strait-route-node3-test";

fn route_daemonset_and_pod() -> String {
    let labels = "{app.kubernetes.io/name: strait-route}";
    let container = "{name: route, image: localhost/strait-agent:test}";
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {ROUTE_DS}, namespace: {NAMESPACE}}}\n---\n\
         apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: {ROUTE_DS}, namespace: {NAMESPACE}}}\n\
         spec:\n  selector: {{matchLabels: {labels}}}\n  template:\n    metadata: {{labels: {labels}}}\n\
         \x20   spec: {{containers: [{container}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: {POD}, namespace: {NAMESPACE}, \
         finalizers: [strait.dev/test-hold]}}\nspec: {{serviceAccountName: {ROUTE_DS}, \
         automountServiceAccountToken: false, \
         containers: [{container}]}}\n"
    )
}

fn wait_for_log(d: &Daemon, what: &str) {
    let start = Instant::now();
    while !d.log().contains(what) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {what:?} in:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_route_role_steers_to_the_active_gateway_and_follows_failover() {
    let _serial = netns::serial();
    strait_e2e::cmd::require_root().expect("root");
    let cp = ControlPlane::start().expect("control plane");
    product::install_crd(&cp).unwrap();
    for node in ["gw1", "gw2"] {
        product::gateway_node(&cp, node).unwrap();
    }
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: node3}\n",
    )
    .unwrap();
    for (n, ip) in [
        ("gw1", "10.1.0.1"),
        ("gw2", "10.1.0.2"),
        ("node3", "10.1.0.3"),
    ] {
        internal_ip(&cp, n, ip);
    }
    let topo = cluster::builder(&["gw1", "gw2"], REMOTE_ADDR)
        .subnet("remote", &format!("{REMOTE_ADDR}/32"))
        .subnet("remote", "203.0.113.1/32")
        .node("node3")
        .link("node3", "10.1.0.3/24", "gw1", "10.1.0.1/24")
        .build()
        .expect("namespaces");
    let node3 = topo.ns("node3").unwrap().to_owned();
    let _charon = Charon::start(
        topo.ns("remote").unwrap(),
        &cluster::charon_config(TUNNEL, PSK),
    )
    .expect("charon");
    // gw1 is killed below and never clears its entry: do not wait a minute for it on delete
    let _operator = Daemon::operator(&cp, &["--deletion-timeout", "5s"]).expect("operator");
    let mut gw1 = Daemon::cluster_agent(&cp, topo.ns("gw1").unwrap(), "gw1", AGENT_ARGS).unwrap();
    let gw2 = Daemon::cluster_agent(&cp, topo.ns("gw2").unwrap(), "gw2", AGENT_ARGS).unwrap();
    let mut role = Daemon::route_agent(&cp, &node3, "node3", &[]).unwrap();
    cluster::wait_heartbeats(&cp, &["gw1", "gw2"], Duration::from_secs(60), || {
        format!("{}\n{}", gw1.log(), gw2.log())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    cp.kubectl_stdin(["apply", "-f", "-"], &cluster::psk_secret("dc2-psk", PSK))
        .unwrap();
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &cluster::tunnel(TUNNEL, "dc2-psk").render(),
    )
    .unwrap();
    cp.kubectl([
        "wait",
        "--for=condition=Ready",
        &format!("ipsectunnel/{TUNNEL}"),
        "--timeout=90s",
    ])
    .unwrap_or_else(|e| panic!("Ready: {e:#}\n{}", gw1.log()));
    assert_eq!(cluster::status(&cp, TUNNEL)["activeGateway"], "gw1");

    let via_gw1 = format!("{REMOTE_NET} via 240.1.0.1 dev strait-vx");
    wait_table(
        &node3,
        "steered to gw1",
        Duration::from_secs(10),
        |t| t.contains(&via_gw1),
        &role,
    );
    assert!(device(&node3));

    // ---- failover: the time from the operator's write to node3's route ----
    let mut watch = cp
        .kubectl_command([
            "get",
            "ipsectunnel",
            TUNNEL,
            "--watch",
            "-o",
            "jsonpath={.status.activeGateway}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen_gw2: Arc<Mutex<Option<Instant>>> = Arc::default();
    let out = watch.stdout.take().unwrap();
    let seen = Arc::clone(&seen_gw2);
    thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            if line.is_ok_and(|l| l.trim() == "gw2") {
                seen.lock().unwrap().get_or_insert_with(Instant::now);
            }
        }
    });
    thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    gw1.kill();
    let via_gw2 = format!("{REMOTE_NET} via 240.1.0.2 dev strait-vx");
    wait_table(
        &node3,
        "steered to gw2",
        Duration::from_secs(90),
        |t| t.contains(&via_gw2),
        &role,
    );
    let routed = Instant::now();
    // the watch may print a moment after the route changed: give it that moment
    let status_at = (0..50)
        .find_map(|_| {
            let s = *seen_gw2.lock().unwrap();
            if s.is_none() {
                thread::sleep(Duration::from_millis(20));
            }
            s
        })
        .expect("kubectl's watch never saw activeGateway gw2");
    let _ = watch.kill();
    let _ = watch.wait();
    let lag = routed.saturating_duration_since(status_at);
    println!(
        "gw1 killed -> activeGateway gw2 after {:.2} s; node3's route followed {} ms after the status change",
        status_at.duration_since(killed).as_secs_f64(),
        lag.as_millis()
    );
    assert!(lag < Duration::from_secs(1), "route followed after {lag:?}");

    // ---- SIGTERM: everything removed; a new process puts it back ----
    role.terminate(Duration::from_secs(10)).unwrap();
    assert!(table(&node3).trim().is_empty(), "{}", table(&node3));
    assert!(!device(&node3), "strait-vx left after SIGTERM");
    let rules = netns::exec(&node3, &["ip", "rule"]).unwrap();
    assert!(!rules.stdout.contains(TABLE), "{}", rules.stdout);
    let as_pod = ["--pod", POD, "--namespace", NAMESPACE];
    let mut role = Daemon::route_agent(&cp, &node3, "node3", &as_pod).unwrap();
    wait_table(
        &node3,
        "steered again after a restart",
        Duration::from_secs(10),
        |t| t.contains(&via_gw2),
        &role,
    );

    // ---- a rolling update: its pod deleted while the DaemonSet stays. Nothing is removed,
    // so node3's pods never take the default route in clear; the next process adopts it ----
    cp.kubectl_stdin(["apply", "-f", "-"], &route_daemonset_and_pod())
        .unwrap();
    cp.kubectl(["delete", "pod", POD, "-n", NAMESPACE, "--wait=false"])
        .unwrap();
    let before = table(&node3);
    role.terminate(Duration::from_secs(10)).unwrap();
    assert!(
        role.log().contains("stopping for a restart"),
        "{}",
        role.log()
    );
    assert_eq!(table(&node3), before, "steering changed by a restart");
    assert!(device(&node3), "strait-vx removed by a restart");
    let mut role = Daemon::route_agent(&cp, &node3, "node3", &as_pod).unwrap();
    wait_for_log(&role, "steering updated");
    assert_eq!(
        table(&node3),
        before,
        "the replacement changed the steering"
    );
    println!("route role restarted for a rolling update: steering kept and adopted");

    // ---- the DaemonSet deleted (helm uninstall): a stop for good, everything removed ----
    cp.kubectl(["delete", "ds", ROUTE_DS, "-n", NAMESPACE])
        .unwrap();
    role.terminate(Duration::from_secs(10)).unwrap();
    assert!(
        role.log().contains("no replacement follows"),
        "{}",
        role.log()
    );
    assert!(table(&node3).trim().is_empty(), "{}", table(&node3));
    assert!(!device(&node3), "strait-vx left after the DaemonSet went");
    cp.kubectl([
        "patch",
        "pod",
        POD,
        "-n",
        NAMESPACE,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .unwrap();
    let role = Daemon::route_agent(&cp, &node3, "node3", &[]).unwrap();
    wait_table(
        &node3,
        "steered again",
        Duration::from_secs(10),
        |t| t.contains(&via_gw2),
        &role,
    );

    // ---- the tunnel deleted: its route goes ----
    cp.kubectl(["delete", "ipsectunnel", TUNNEL, "--timeout=60s"])
        .unwrap();
    wait_table(
        &node3,
        "route removed with the tunnel",
        Duration::from_secs(10),
        |t| t.trim().is_empty(),
        &role,
    );
    println!("{}", role.log());
}
