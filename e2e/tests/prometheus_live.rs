//! A real Prometheus (Debian's package) against the real components: the operator on the
//! host, a gateway agent in its namespace (`--dataplane none`: the host kernel has no ESP) and
//! charon as the remote site, as `cluster_tunnel.rs` runs them. Prometheus scrapes both every
//! second with the chart's alerts loaded, their `for` shortened to seconds (the only change to
//! `charts/strait/files/alerts.yaml`; `promtool test rules` judges the real durations). Every
//! series an alert reads and every dashboard query returns series, except those this setup
//! cannot feed (named in the output: a PSK tunnel has no certificate, `--dataplane none` no
//! kernel counters); with the tunnel Ready no alert fires; charon stopped, StraitTunnelNotReady
//! fires with the Ready condition's reason.
//!
//! Needs root, `e2e/setup/controlplane.sh`, `e2e/setup/packages.sh` and built binaries. Run:
//! `cargo test -p strait-e2e --test prometheus_live -- --test-threads=1 --nocapture`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_e2e::apiforward::PortForward;
use strait_e2e::cluster::{self, AGENT_ARGS};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns;
use strait_e2e::product::{self, Daemon};
use strait_e2e::prometheus::{Prometheus, dashboard_queries, metric_names};
use strait_e2e::strongswan::Charon;

const TUNNEL: &str = "dc1-to-dc2";
const PSK: &str = "strait-prometheus-live-psk-3e7f0a";
const AGENT_METRICS: &str = "127.0.0.1:9470";
/// Series this setup cannot produce: a PSK tunnel has no certificate, and `--dataplane none`
/// reads no kernel counters. The kernel VM tier scrapes them with Prometheus too
/// (`vm_agent.rs`, `g_certificates_carry_traffic`).
const NOT_FED_HERE: [&str; 5] = [
    "strait_certificate_expiry_timestamp_seconds",
    "strait_kernel_xfrm_errors_total",
    "strait_child_sa_bytes_total",
    "strait_child_sa_replay_drops_total",
    "strait_child_sa_integrity_failures_total",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's alerts with every `for:` at `for_`.
fn alerts_with_for(for_: &str) -> String {
    let text =
        std::fs::read_to_string(workspace().join("charts/strait/files/alerts.yaml")).unwrap();
    text.lines()
        .map(|l| match l.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: {for_}"),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_live_prometheus_scrapes_every_series_and_fires_tunnel_not_ready_when_the_peer_stops() {
    let _serial = netns::serial();
    strait_e2e::cmd::require_root().expect("root");
    let cp = ControlPlane::start().expect("control plane");
    product::install_crd(&cp).unwrap();
    product::gateway_node(&cp, "gw1").unwrap();
    let topo = cluster::topology(&["gw1"]).expect("namespaces");
    let gw = topo.ns("gw1").unwrap().to_owned();
    let mut charon = Charon::start(
        topo.ns("remote").unwrap(),
        &cluster::charon_config(TUNNEL, PSK),
    )
    .expect("charon");
    let operator = Daemon::operator_replica(&cp, "a", cp.kubeconfig_path(), &[]).unwrap();
    let mut args: Vec<&str> = AGENT_ARGS.to_vec();
    args.extend(["--metrics-addr", AGENT_METRICS]);
    let agent = Daemon::cluster_agent(&cp, &gw, "gw1", &args).unwrap();
    cluster::wait_heartbeats(&cp, &["gw1"], Duration::from_secs(60), || agent.log())
        .unwrap_or_else(|e| panic!("{e:#}"));
    cp.kubectl_stdin(["apply", "-f", "-"], &cluster::psk_secret("dc2-psk", PSK))
        .unwrap();
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &cluster::tunnel(TUNNEL, "dc2-psk").dpd("2s", "6s").render(),
    )
    .unwrap();
    cp.kubectl([
        "wait",
        "--for=condition=Ready",
        &format!("ipsectunnel/{TUNNEL}"),
        "--timeout=90s",
    ])
    .unwrap_or_else(|e| panic!("Ready: {e:#}\n{}", agent.log()));

    // Prometheus in gw1's namespace: the agent's loopback is there, and the operator's
    // metrics port is forwarded in at the same 127.0.0.1:PORT
    let op_port = operator.metrics_port().expect("operator metrics port");
    let _forward = PortForward::start(&gw, ([127, 0, 0, 1], op_port).into()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alerts.yaml"), alerts_with_for("3s")).unwrap();
    let prom = Prometheus::start(
        &gw,
        dir.path(),
        &format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [alerts.yaml]\n\
             scrape_configs:\n\
             - job_name: strait-operator\n  static_configs: [{{targets: ['127.0.0.1:{op_port}']}}]\n\
             - job_name: strait-agent\n  static_configs: [{{targets: ['{AGENT_METRICS}']}}]\n"
        ),
    )
    .unwrap();
    prom.wait("both targets scraped", Duration::from_secs(60), |p| {
        p.query("up == 1").len() == 2
            && !p
                .query("strait_tunnel_up{tunnel=\"dc1-to-dc2\"} == 1")
                .is_empty()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // a few evaluations, so rate() and increase() have two samples
    thread::sleep(Duration::from_secs(5));

    // every series an alert reads, and every dashboard query, returns series
    let rules: Value = serde_yaml::from_str(&alerts_with_for("3s")).unwrap();
    let mut checked = 0;
    let mut not_fed = BTreeSet::new();
    for r in rules["groups"][0]["rules"].as_array().unwrap() {
        let expr = r["expr"].as_str().unwrap();
        for name in metric_names(expr) {
            if NOT_FED_HERE.contains(&name.as_str()) {
                not_fed.insert(name);
                continue;
            }
            let got = prom.query(&format!("count({{__name__=\"{name}\"}})"));
            assert!(!got.is_empty(), "alert {}: no series {name}", r["alert"]);
            checked += 1;
        }
    }
    let mut queries = 0;
    for (title, expr) in dashboard_queries().unwrap() {
        let names = metric_names(&expr);
        if let Some(n) = names.iter().find(|n| NOT_FED_HERE.contains(&n.as_str())) {
            not_fed.insert(n.clone());
            continue;
        }
        assert!(
            !prom.query(&expr).is_empty(),
            "panel {title}: no series for {expr}"
        );
        queries += 1;
    }
    let firing = prom.query("ALERTS{alertstate=\"firing\"}");
    assert!(firing.is_empty(), "alerts firing while Ready: {firing:?}");
    println!(
        "prometheus: {checked} alert series and {queries} panel queries answered; not fed by \
         this setup (PSK, --dataplane none): {not_fed:?}; nothing firing while Ready"
    );

    // the peer stops: DPD (2 s / 6 s) takes the tunnel down, the operator writes Ready=False,
    // and after its (shortened) `for` StraitTunnelNotReady fires with the reason
    let stopped = Instant::now();
    charon.stop().unwrap();
    prom.wait("StraitTunnelNotReady firing", Duration::from_secs(120), |p| {
        !p.query("ALERTS{alertname=\"StraitTunnelNotReady\",alertstate=\"firing\",tunnel=\"dc1-to-dc2\"}")
            .is_empty()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n--- agent:\n{}", agent.log()));
    let alert = prom.query("ALERTS{alertname=\"StraitTunnelNotReady\",alertstate=\"firing\"}");
    let reason = alert[0]["metric"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ready = cluster::status(&cp, TUNNEL);
    let cond = ready["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(cond["status"], "False", "{ready:#}");
    // the alert carries the reason it fired with (the condition may have moved on since)
    assert!(
        !reason.is_empty() && reason.chars().all(|c| c.is_ascii_alphanumeric()),
        "{alert:?}"
    );
    println!(
        "charon stopped: StraitTunnelNotReady firing after {:.1} s, reason {reason} (Ready now \
         {})",
        stopped.elapsed().as_secs_f64(),
        cond["reason"]
    );
}
