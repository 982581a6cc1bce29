//! The `/metrics` and `/healthz` HTTP endpoint: one request per connection, each scrape answered
//! by the driver over a channel, so the IKE loop is never touched by a slow client.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::MetricsRequest;

/// The default listen address.
pub const DEFAULT_ADDR: &str = "0.0.0.0:9470";

/// Parses `--metrics-addr`: an address, or `off`.
///
/// # Errors
/// Neither.
pub fn parse_addr(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("--metrics-addr {s:?}: expected HOST:PORT or off"))
}

/// Serves `GET /metrics` (HTTP/1.x, one request per connection) until the driver is gone.
pub async fn serve(listener: TcpListener, scrape: mpsc::Sender<MetricsRequest>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let scrape = scrape.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), answer(stream, scrape)).await;
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

async fn answer(mut stream: TcpStream, scrape: mpsc::Sender<MetricsRequest>) {
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
        (Some("GET" | "HEAD"), Some("/metrics")) => {
            let (tx, rx) = oneshot::channel();
            match scrape.send(tx).await {
                Ok(()) => match rx.await {
                    Ok(text) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
                    Err(_) => ("503 Service Unavailable", "text/plain", "stopping\n".into()),
                },
                Err(_) => ("503 Service Unavailable", "text/plain", "stopping\n".into()),
            }
        }
        (Some(_), Some(_)) => ("404 Not Found", "text/plain", "try /metrics\n".into()),
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

    #[test]
    fn addr() {
        assert_eq!(parse_addr("off"), Ok(None));
        assert!(parse_addr("127.0.0.1:9470").unwrap().is_some());
        assert!(parse_addr("nope").is_err());
    }
}
