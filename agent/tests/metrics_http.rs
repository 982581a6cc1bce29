//! `/metrics` of a real driver: two drivers (`none` data plane) establish over loopback, then
//! the initiator's metrics are fetched over HTTP, checked by name and value, and given to
//! `promtool check metrics` (Debian `prometheus`, installed by `e2e/setup/packages.sh`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use strait_agent::dataplane::NoDataplane;
use strait_agent::driver::{Command, Driver, Settings, Stop};
use strait_agent::metrics;
use strait_agent::spec::TunnelDef;
use strait_agent::spec::peer::{self, Inputs};
use strait_agent::status::AgentStatus;
use strait_crds::IPsecTunnelSpec;
use strait_ike::EndpointConfig;
use strait_ike::crypto::keys::SecretBytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

const PROMTOOL: &str = "/usr/bin/promtool";

fn def(
    name: &str,
    ids: (&str, &str),
    nets: (&str, &str),
    ports: (u16, u16),
    init: &str,
) -> TunnelDef {
    let yaml = format!(
        "local: {{id: {}, address: 127.0.0.1, subnets: [{}]}}
remote: {{id: {}, address: 127.0.0.1, subnets: [{}]}}
auth: {{psk: {{secretRef: {{name: p, key: psk}}}}}}
initiation: {init}
",
        ids.0, nets.0, ids.1, nets.1
    );
    let spec: IPsecTunnelSpec = serde_yaml::from_str(&yaml).unwrap();
    let psk = b"metrics-loopback-psk";
    let built = peer::build(
        &spec,
        Inputs {
            local_ip: "127.0.0.1".parse().unwrap(),
            remote_ip: "127.0.0.1".parse().unwrap(),
            fallback_ips: Vec::new(),
            ike_port: ports.0,
            remote_port: ports.1,
            psk: Some(SecretBytes::from_slice(psk)),
            on_traffic_supported: false,
        },
    )
    .unwrap();
    TunnelDef {
        name: name.into(),
        spec,
        secret_digest: psk.to_vec(),
        peer: Ok(built.config),
        notes: built.notes,
    }
}

struct Handle {
    cmd: mpsc::Sender<Command>,
    status: mpsc::Sender<oneshot::Sender<AgentStatus>>,
}

fn driver(
    ike_port: u16,
    defs: Vec<TunnelDef>,
    scrapes: Option<mpsc::Receiver<metrics::MetricsRequest>>,
) -> (Handle, impl std::future::Future<Output = ()>) {
    let settings = Settings {
        node: format!("node-{ike_port}"),
        endpoint: EndpointConfig {
            ike_port,
            natt_port: ike_port + 1,
            ..EndpointConfig::default()
        },
        state_dir: None,
    };
    let (cmd, cmd_rx) = mpsc::channel(4);
    let (status, status_rx) = mpsc::channel(4);
    let mut d = Driver::new(settings, NoDataplane::default());
    if let Some(s) = scrapes {
        d = d.with_metrics(s);
    }
    (Handle { cmd, status }, d.run(defs, cmd_rx, status_rx))
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_are_served_and_promtool_accepts_them() {
    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: run e2e/setup/packages.sh"
    );
    let (pa, pb) = (25_700u16, 25_800u16);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (scrape_tx, scrape_rx) = mpsc::channel(4);
    tokio::spawn(metrics::serve(listener, scrape_tx));
    let a_def = def(
        "ab",
        ("a.example", "b.example"),
        ("10.1.0.0/16", "10.2.0.0/16"),
        (pa, pb),
        "start",
    );
    let b_def = def(
        "ab",
        ("b.example", "a.example"),
        ("10.2.0.0/16", "10.1.0.0/16"),
        (pb, pa),
        "respond",
    );
    let (a, a_run) = driver(pa, vec![a_def], Some(scrape_rx));
    let (b, b_run) = driver(pb, vec![b_def], None);
    let test = async {
        for _ in 0..200 {
            let (tx, rx) = oneshot::channel();
            a.status.send(tx).await.unwrap();
            if rx.await.unwrap().tunnels.first().is_some_and(|t| t.ready) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Two datagrams the endpoint drops: bytes that are no IKE header, and a header for
        // an IKE SA that does not exist.
        let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut unknown = vec![7u8; 16];
        unknown.extend_from_slice(&[0, 0x20, 37, 0x08, 0, 0, 0, 0, 0, 0, 0, 28]);
        for d in [&b"not ike"[..], &unknown[..]] {
            junk.send_to(d, ("127.0.0.1", pa)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let resp = get(addr, "/metrics").await;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        assert_eq!(
            value(body, "strait_ike_sas{state=\"established\"}"),
            Some(1.0),
            "{body}"
        );
        assert_eq!(value(body, "strait_child_sas"), Some(1.0), "{body}");
        assert_eq!(
            value(
                body,
                "strait_handshakes_total{reason=\"none\",result=\"success\",tunnel=\"ab\"}"
            ),
            Some(1.0),
            "{body}"
        );
        assert_eq!(
            value(body, "strait_handshake_duration_seconds_count"),
            Some(1.0),
            "{body}"
        );
        for name in [
            "strait_rekeys_total{kind=\"ike\",tunnel=\"ab\"}",
            "strait_rekeys_total{kind=\"child\",tunnel=\"ab\"}",
            "strait_dpd_failures_total",
            "strait_retransmissions_total",
        ] {
            assert_eq!(value(body, name), Some(0.0), "{name}: {body}");
        }
        for (reason, want) in [
            ("malformed", 1.0),
            ("unknown_spi", 1.0),
            ("no_peer_config", 0.0),
        ] {
            let series = format!("strait_ike_datagrams_dropped_total{{reason=\"{reason}\"}}");
            assert_eq!(value(body, &series), Some(want), "{series}: {body}");
        }
        assert_eq!(
            value(body, "strait_ike_cookies_sent_total"),
            Some(0.0),
            "{body}"
        );
        assert!(!body.contains("metrics-loopback-psk"));
        // promtool: the exposition parses and passes its lint
        let mut p = Process::new(PROMTOOL)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let other = get(addr, "/").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        // liveness: the real driver loop answers
        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        for h in [&a, &b] {
            let (tx, rx) = oneshot::channel();
            h.cmd
                .send(Command::Shutdown(Stop::Restart, tx))
                .await
                .unwrap();
            let _ = rx.await;
        }
    };
    let ((), (), ()) = tokio::join!(test, a_run, b_run);
}
