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
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_e2e::apiforward::PortForward;
use strait_e2e::cluster::{self, AGENT_ARGS};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns;
use strait_e2e::product::{self, Daemon};
use strait_e2e::strongswan::Charon;

const TUNNEL: &str = "dc1-to-dc2";
const PSK: &str = "strait-prometheus-live-psk-3e7f0a";
const AGENT_METRICS: &str = "127.0.0.1:9470";
const PROMETHEUS: &str = "127.0.0.1:9090";
/// Series this setup cannot produce: a PSK tunnel has no certificate, and `--dataplane none`
/// reads no kernel counters. The kernel VM tier's agents export them (`vm_agent.rs`).
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

/// Prometheus in the gateway's namespace, killed on drop.
struct Prometheus {
    child: Child,
    ns: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// `GET /api/v1/query?query=EXPR`: the result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        let body = http_get(&self.ns, &path).unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            v.is_null() || v["status"] == "success",
            "query {expr}: {body}"
        );
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An HTTP/1.0 GET to Prometheus inside `ns`: the body.
fn http_get(ns: &str, path: &str) -> Option<String> {
    let mut s = strait_e2e::transfer::within(ns, || TcpStream::connect(PROMETHEUS))
        .ok()?
        .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool, log: impl Fn() -> String) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(500));
    }
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

/// The metric names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("strait_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    if expr.starts_with("up{") || expr.contains(" up{") {
        out.insert("up".to_owned());
    }
    out
}

#[test]
fn a_live_prometheus_scrapes_every_series_and_fires_tunnel_not_ready_when_the_peer_stops() {
    let _serial = netns::serial();
    strait_e2e::cmd::require_root().expect("root");
    let prometheus_bin = Path::new("/usr/bin/prometheus");
    assert!(
        prometheus_bin.is_file(),
        "prometheus missing: run e2e/setup/packages.sh (Debian's prometheus)"
    );
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
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [alerts.yaml]\n\
             scrape_configs:\n\
             - job_name: strait-operator\n  static_configs: [{{targets: ['127.0.0.1:{op_port}']}}]\n\
             - job_name: strait-agent\n  static_configs: [{{targets: ['{AGENT_METRICS}']}}]\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("prometheus.log");
    let out = std::fs::File::create(&log).unwrap();
    let config = dir.path().join("prometheus.yml");
    let data = dir.path().join("data");
    let child = netns::exec_command(
        &gw,
        &[
            prometheus_bin.as_os_str(),
            std::ffi::OsStr::new(&format!("--config.file={}", config.display())),
            std::ffi::OsStr::new(&format!("--storage.tsdb.path={}", data.display())),
            std::ffi::OsStr::new(&format!("--web.listen-address={PROMETHEUS}")),
        ],
    )
    .stdin(Stdio::null())
    .stdout(out.try_clone().unwrap())
    .stderr(out)
    .spawn()
    .unwrap();
    let prom = Prometheus {
        child,
        ns: gw.clone(),
        log,
    };
    wait(
        "both targets scraped",
        Duration::from_secs(60),
        || {
            prom.query("up == 1").len() == 2
                && !prom
                    .query("strait_tunnel_up{tunnel=\"dc1-to-dc2\"} == 1")
                    .is_empty()
        },
        || prom.log(),
    );
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
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("charts/strait/files/dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            if let Some(n) = names.iter().find(|n| NOT_FED_HERE.contains(&n.as_str())) {
                not_fed.insert(n.clone());
                continue;
            }
            assert!(
                !prom.query(expr).is_empty(),
                "panel {}: no series for {expr}",
                p["title"]
            );
            queries += 1;
        }
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
    wait(
        "StraitTunnelNotReady firing",
        Duration::from_secs(120),
        || {
            !prom
                .query("ALERTS{alertname=\"StraitTunnelNotReady\",alertstate=\"firing\",tunnel=\"dc1-to-dc2\"}")
                .is_empty()
        },
        || format!("{}\n--- agent:\n{}", prom.log(), agent.log()),
    );
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
