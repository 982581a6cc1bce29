//! The `/metrics` and `/healthz` HTTP endpoint (hyper's HTTP/1 server, one request per
//! connection), each scrape answered by the driver over a channel, so the IKE loop is never
//! touched by a slow client: hyper reads and writes, the loop only renders the text.
//!
//! `/healthz` is the liveness check: it asks the driver loop itself (the same round trip as a
//! scrape) and fails when the loop does not answer within [`HEALTH_TIMEOUT`], so a wedged IKE
//! driver gets its pod restarted even while other tasks (the heartbeat Lease) still run.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::MetricsRequest;

/// How long the driver loop may take to answer a liveness check.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The default listen address: loopback, as a gateway faces the Internet. In a cluster the
/// operator's DaemonSet binds the node's own address instead (`$(HOST_IP):9470`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9470";

/// Parses `--metrics-addr`: `ADDR:PORT` (an IPv6 address bracketed, or bare as the downward
/// API's `status.hostIP` gives it), or `off`.
///
/// # Errors
/// Neither.
pub fn parse_addr(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    let bad = || format!("--metrics-addr {s:?}: expected ADDR:PORT or off");
    if let Ok(a) = s.parse() {
        return Ok(Some(a));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let ip: std::net::IpAddr = host.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(Some(std::net::SocketAddr::new(ip, port)))
}

/// Serves `GET /metrics` and `GET /healthz` (HTTP/1.x, one request per connection) until the
/// driver is gone.
pub async fn serve(listener: TcpListener, scrape: mpsc::Sender<MetricsRequest>) {
    serve_with(listener, scrape, HEALTH_TIMEOUT).await;
}

async fn serve_with(
    listener: TcpListener,
    scrape: mpsc::Sender<MetricsRequest>,
    health_timeout: Duration,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let scrape = scrape.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let scrape = scrape.clone();
                        async move { Ok::<_, Infallible>(respond(&req, &scrape, health_timeout).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    // a client that reads its answer slowly cannot hold a task for ever
                    let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if scrape.is_closed() {
            return;
        }
    }
}

/// Asks the driver for the exposition text.
async fn ask(scrape: &mpsc::Sender<MetricsRequest>) -> Option<String> {
    let (tx, rx) = oneshot::channel();
    scrape.send(tx).await.ok()?;
    rx.await.ok()
}

async fn respond(
    req: &Request<Incoming>,
    scrape: &mpsc::Sender<MetricsRequest>,
    health_timeout: Duration,
) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let (code, ctype, body) = match (get, req.uri().path()) {
        (true, "/metrics") => match ask(scrape).await {
            Some(text) => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            ),
            None => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "stopping\n".into()),
        },
        (true, "/healthz") => match tokio::time::timeout(health_timeout, ask(scrape)).await {
            Ok(Some(_)) => (StatusCode::OK, TEXT, "ok\n".into()),
            Ok(None) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "stopping\n".into()),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!(
                    "the IKE driver loop did not answer within {} s\n",
                    health_timeout.as_secs_f64()
                ),
            ),
        },
        (true, _) => (
            StatusCode::NOT_FOUND,
            TEXT,
            "try /metrics or /healthz\n".into(),
        ),
        (false, _) => (StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET or HEAD\n".into()),
    };
    // hyper leaves the body out of an answer to HEAD itself
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn healthz_fails_when_the_driver_loop_does_not_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // a driver that holds its end of the channel but never answers: a wedged loop
        let (tx, _wedged) = mpsc::channel::<MetricsRequest>(4);
        tokio::spawn(serve_with(listener, tx, Duration::from_millis(200)));
        let r = get(addr, "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("did not answer"), "{r}");
    }

    #[tokio::test]
    async fn healthz_passes_when_the_driver_loop_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<MetricsRequest>(4);
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send("strait_up 1\n".into());
            }
        });
        tokio::spawn(serve_with(listener, tx, Duration::from_secs(5)));
        let r = get(addr, "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with("ok\n"), "{r}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        // not HTTP at all: an answer and a closed connection, nothing else
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x16\x03\x01 garbage\r\n\r\n").await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
    }

    #[test]
    fn addr() {
        assert_eq!(parse_addr("off"), Ok(None));
        assert!(parse_addr("127.0.0.1:9470").unwrap().is_some());
        assert_eq!(
            parse_addr("fd00::7:9470").unwrap(),
            Some("[fd00::7]:9470".parse().unwrap())
        );
        assert_eq!(
            parse_addr("[fd00::7]:9470").unwrap(),
            Some("[fd00::7]:9470".parse().unwrap())
        );
        for bad in ["nope", "10.0.0.1", "10.0.0.1:99999", "$(HOST_IP):9470"] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }
}
