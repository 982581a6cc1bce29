//! The `/metrics` and `/healthz` HTTP endpoint: one request per connection, each scrape answered
//! by the driver over a channel, so the IKE loop is never touched by a slow client.
//!
//! `/healthz` is the liveness check: it asks the driver loop itself (the same round trip as a
//! scrape) and fails when the loop does not answer within [`HEALTH_TIMEOUT`], so a wedged IKE
//! driver gets its pod restarted even while other tasks (the heartbeat Lease) still run.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        answer(stream, scrape, health_timeout),
                    )
                    .await;
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

async fn answer(
    mut stream: TcpStream,
    scrape: mpsc::Sender<MetricsRequest>,
    health_timeout: Duration,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
        if buf.len() > 8192 {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or_default());
    let (code, ctype, body) = match (method, path) {
        (Some("GET" | "HEAD"), Some("/metrics")) => match ask(&scrape).await {
            Some(text) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
            None => ("503 Service Unavailable", "text/plain", "stopping\n".into()),
        },
        (Some("GET" | "HEAD"), Some("/healthz")) => {
            match tokio::time::timeout(health_timeout, ask(&scrape)).await {
                Ok(Some(_)) => ("200 OK", "text/plain", "ok\n".into()),
                Ok(None) => ("503 Service Unavailable", "text/plain", "stopping\n".into()),
                Err(_) => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!(
                        "the IKE driver loop did not answer within {} s\n",
                        health_timeout.as_secs_f64()
                    ),
                ),
            }
        }
        (Some(_), Some(_)) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
        _ => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let body = if method == Some("HEAD") {
        String::new()
    } else {
        body
    };
    let resp = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
