//! Prometheus metrics (`strait_operator_*`) and the small HTTP server for `/metrics`, `/healthz`
//! and `/readyz`. Label values come from fixed sets only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// Reconcile outcomes (`result` label).
pub const RESULTS: [&str; 3] = ["success", "error", "waiting"];
/// Ready condition statuses (`ready` label).
pub const READY_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

/// The operator's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `strait_operator_reconciles_total{result}`
    pub reconciles: IntCounterVec,
    /// `strait_operator_reconcile_errors_total{kind}`
    pub reconcile_errors: IntCounterVec,
    /// `strait_operator_reconcile_duration_seconds`
    pub reconcile_duration: HistogramVec,
    /// `strait_operator_tunnels{ready}`
    pub tunnels: IntGaugeVec,
    /// `strait_operator_gateway_failovers_total`
    pub failovers: IntCounterVec,
    /// `strait_operator_leader`: 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// `strait_tunnel_ready{tunnel,reason}`: 1 while the tunnel is Ready, else 0, with the
    /// Ready condition's reason; one series per tunnel.
    pub tunnel_ready: IntGaugeVec,
    ready: Arc<AtomicBool>,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "strait_operator_reconciles_total",
                "IPsecTunnel reconciles by result.",
            ),
            &["result"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "strait_operator_reconcile_errors_total",
                "Failed reconciles by error kind.",
            ),
            &["kind"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "strait_operator_reconcile_duration_seconds",
                "Time spent in one IPsecTunnel reconcile.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &[],
        )?;
        let tunnels = IntGaugeVec::new(
            Opts::new(
                "strait_operator_tunnels",
                "IPsecTunnels by the status of their Ready condition.",
            ),
            &["ready"],
        )?;
        let failovers = IntCounterVec::new(
            Opts::new(
                "strait_operator_gateway_failovers_total",
                "Active gateway changes away from a failed node.",
            ),
            &[],
        )?;
        let leader = IntGauge::new(
            "strait_operator_leader",
            "1 while this replica is the leader.",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(tunnels.clone()))?;
        registry.register(Box::new(failovers.clone()))?;
        let tunnel_ready = IntGaugeVec::new(
            Opts::new(
                "strait_tunnel_ready",
                "1 while the tunnel is Ready, else 0; `reason` is its Ready condition's reason.",
            ),
            &["tunnel", "reason"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "strait_operator_build_info",
                "Always 1; `version` is the operator's.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(tunnel_ready.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Fixed label sets: export every series from the start, at zero.
        for r in RESULTS {
            reconciles.with_label_values(&[r]);
        }
        for s in READY_STATUSES {
            tunnels.with_label_values(&[s]);
        }
        failovers.with_label_values(&[] as &[&str]);
        Ok(Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            tunnels,
            failovers,
            leader,
            tunnel_ready,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Sets `strait_tunnel_ready` to `tunnels` (name → Ready status and reason): one series
    /// per tunnel, the one of an earlier reason or of a tunnel gone removed.
    pub fn set_tunnel_ready<'a>(&self, tunnels: impl Iterator<Item = (&'a str, &'a str, &'a str)>) {
        let want: BTreeMap<(String, String), i64> = tunnels
            .map(|(t, status, reason)| {
                (
                    (t.to_owned(), reason.to_owned()),
                    i64::from(status == "True"),
                )
            })
            .collect();
        let families = prometheus::core::Collector::collect(&self.tunnel_ready);
        for m in families.iter().flat_map(|f| f.get_metric().iter()) {
            let label = |n: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == n)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let (t, r) = (label("tunnel"), label("reason"));
            if !want.contains_key(&(t.clone(), r.clone())) {
                let _ = self.tunnel_ready.remove_label_values(&[&t, &r]);
            }
        }
        for ((t, r), v) in want {
            self.tunnel_ready.with_label_values(&[&t, &r]).set(v);
        }
    }

    /// Marks the process ready (`/readyz` answers `ok`).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Serves `/metrics` (and, when `health` is true, `/healthz` and `/readyz`) on `addr` forever,
/// with hyper's HTTP/1 server, one request per connection.
pub async fn serve(addr: SocketAddr, metrics: Metrics, health: bool) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, health, "serving HTTP");
    loop {
        let (stream, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let r = respond(req.method(), req.uri().path(), &metrics, health);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(Duration::from_secs(30), conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "HTTP request failed"),
                Err(_) => tracing::debug!("HTTP connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// The answer to `method path`.
fn respond(method: &Method, path: &str, metrics: &Metrics, health: bool) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (code, ctype, body) = match (method, path) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        (&Method::GET, "/healthz") if health => (StatusCode::OK, TEXT, "ok\n".to_owned()),
        (&Method::GET, "/readyz") if health => {
            if metrics.ready.load(Ordering::Relaxed) {
                (StatusCode::OK, TEXT, "ok\n".to_owned())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "not ready\n".to_owned(),
                )
            }
        }
        (&Method::GET, _) => (StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".to_owned(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_method_and_path() {
        let m = Metrics::new().unwrap();
        let code =
            |method: Method, path: &str, health: bool| respond(&method, path, &m, health).status();
        assert_eq!(code(Method::GET, "/metrics", false), StatusCode::OK);
        assert_eq!(code(Method::GET, "/healthz", true), StatusCode::OK);
        assert_eq!(code(Method::GET, "/healthz", false), StatusCode::NOT_FOUND);
        m.ready.store(false, Ordering::Relaxed);
        assert_eq!(
            code(Method::GET, "/readyz", true),
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.ready.store(true, Ordering::Relaxed);
        assert_eq!(code(Method::GET, "/readyz", true), StatusCode::OK);
        assert_eq!(
            code(Method::POST, "/metrics", true),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn renders_fixed_series() {
        let m = Metrics::new().unwrap();
        m.reconciles.with_label_values(&["success"]).inc();
        let text = m.render();
        assert!(
            text.contains("strait_operator_reconciles_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("strait_operator_tunnels{ready=\"Unknown\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("strait_operator_build_info{version=\""),
            "{text}"
        );
    }

    #[test]
    fn one_ready_series_per_tunnel_with_its_reason() {
        let m = Metrics::new().unwrap();
        m.set_tunnel_ready(
            [
                ("a", "True", "TunnelEstablished"),
                ("b", "False", "AuthenticationFailed"),
            ]
            .into_iter(),
        );
        let text = m.render();
        assert!(
            text.contains("strait_tunnel_ready{reason=\"TunnelEstablished\",tunnel=\"a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("strait_tunnel_ready{reason=\"AuthenticationFailed\",tunnel=\"b\"} 0"),
            "{text}"
        );
        // b's reason changes, a goes: one series for b, none for a
        m.set_tunnel_ready([("b", "False", "PeerUnreachable")].into_iter());
        let text = m.render();
        assert_eq!(text.matches("strait_tunnel_ready{").count(), 1, "{text}");
        assert!(
            text.contains("strait_tunnel_ready{reason=\"PeerUnreachable\",tunnel=\"b\"} 0"),
            "{text}"
        );
    }
}
