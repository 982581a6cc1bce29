//! The local status socket: one JSON document per connection, and the client that
//! `strait-agent status` uses.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::{AgentStatus, StatusRequest};

/// Serves `path`: every connection gets one JSON document (the current status) and is closed.
/// A stale socket file is replaced; the parent directory is created.
///
/// # Errors
/// The socket cannot be bound.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Accepts status connections until the driver goes away.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<StatusRequest>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // e.g. out of file descriptors: do not spin
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let (tx, rx) = oneshot::channel();
        if requests.send(tx).await.is_err() {
            return;
        }
        tokio::spawn(async move {
            let Ok(status) = rx.await else { return };
            let Ok(mut body) = serde_json::to_vec(&status) else {
                return;
            };
            body.push(b'\n');
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Asks a running agent for its status.
///
/// # Errors
/// No agent listens at `path`, or it answered something that is not a status.
pub async fn query(path: &Path) -> anyhow::Result<AgentStatus> {
    let mut s = UnixStream::connect(path).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the agent at {}: {e} (is `strait-agent standalone` running? see --status-socket)",
            path.display()
        )
    })?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow::anyhow!("the agent at {} did not answer", path.display()))??;
    Ok(serde_json::from_slice(&buf)?)
}
