//! What the agent reports about its tunnels: the JSON served on the status socket (each
//! tunnel's fields are the CRD's `GatewayStatus`, flattened, so cluster mode can reuse them),
//! the socket server and client, and a text rendering in the manner of `swanctl --list-sas`.
//!
//! Nothing secret is ever part of a status.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strait_crds::GatewayStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// The default status socket.
pub const DEFAULT_SOCKET: &str = "/run/strait/agent.sock";

/// The whole agent.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// This node's name (the `GatewayStatus` list-map key).
    pub node: String,
    /// `kernel` or `none`.
    pub dataplane: String,
    /// Every configured tunnel, by name.
    pub tunnels: Vec<TunnelStatus>,
}

/// One tunnel.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStatus {
    /// The `IPsecTunnel`'s name.
    pub name: String,
    /// `start`, `respond` or `onTraffic` (as configured).
    pub initiation: String,
    /// Our identity.
    pub local_id: String,
    /// The peer's identity.
    pub remote_id: String,
    /// IKE SA and at least one CHILD SA up.
    pub ready: bool,
    /// Whether we initiated the current IKE SA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<bool>,
    /// Remarks on how the spec was interpreted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The CRD's per-gateway status.
    #[serde(flatten)]
    pub gateway: GatewayStatus,
}

/// What the status server asks the driver for.
pub type StatusRequest = oneshot::Sender<AgentStatus>;

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

fn ago(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    t.as_ref().map_or_else(String::new, |t| {
        let secs = k8s_openapi::jiff::Timestamp::now()
            .duration_since(t.0)
            .as_secs()
            .max(0);
        format!("{secs}s ago ({})", t.0)
    })
}

/// A text rendering close to `swanctl --list-sas`.
pub fn render(s: &AgentStatus) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "node {}, dataplane {}", s.node, s.dataplane);
    for t in &s.tunnels {
        let g = &t.gateway;
        let _ = writeln!(
            o,
            "{}: {}, IKEv2, {}{}",
            t.name,
            g.ike_state
                .map_or("Down", strait_crds::IkeState::as_str)
                .to_uppercase(),
            g.ike_spis.as_deref().unwrap_or("no IKE SA"),
            match t.initiator {
                Some(true) => " (initiator)",
                Some(false) => " (responder)",
                None => "",
            }
        );
        let _ = writeln!(
            o,
            "  local  '{}' @ {}",
            t.local_id,
            g.local_endpoint.as_deref().unwrap_or("-")
        );
        let _ = writeln!(
            o,
            "  remote '{}' @ {}",
            t.remote_id,
            g.remote_endpoint.as_deref().unwrap_or("-")
        );
        if let Some(p) = &g.ike_proposal {
            let _ = writeln!(o, "  {p}");
        }
        if let Some(nat) = g.nat_detected {
            let _ = writeln!(o, "  NAT detected: {}", if nat { "yes" } else { "no" });
        }
        if g.established_at.is_some() {
            let _ = writeln!(o, "  established {}", ago(&g.established_at));
        }
        for c in &g.child_sas {
            let _ = writeln!(
                o,
                "  {}: INSTALLED, {}{}, ESP:{}",
                t.name,
                c.mode.as_deref().unwrap_or("TUNNEL").to_uppercase(),
                if c.encapsulated == Some(true) {
                    "-in-UDP"
                } else {
                    ""
                },
                c.proposal.as_deref().unwrap_or("-")
            );
            let _ = writeln!(
                o,
                "    installed {}, in {}, out {}",
                ago(&c.established_at),
                c.spi_in,
                c.spi_out
            );
            let _ = writeln!(o, "    local  {}", c.local_ts.join(" "));
            let _ = writeln!(o, "    remote {}", c.remote_ts.join(" "));
        }
        if let Some(e) = &g.last_error {
            let _ = writeln!(o, "  last error: {}: {}", e.reason, e.message);
        }
        for n in &t.notes {
            let _ = writeln!(o, "  note: {n}");
        }
    }
    o
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use strait_crds::{ChildSaStatus, LastError};

    fn sample() -> AgentStatus {
        AgentStatus {
            node: "n1".into(),
            dataplane: "none".into(),
            tunnels: vec![TunnelStatus {
                name: "t".into(),
                initiation: "start".into(),
                local_id: "a.example".into(),
                remote_id: "b.example".into(),
                ready: true,
                initiator: Some(true),
                notes: vec![],
                gateway: GatewayStatus {
                    node: "n1".into(),
                    ike_state: Some(strait_crds::IkeState::Established),
                    ike_proposal: Some("aes256gcm16-prfsha256-x25519".into()),
                    child_sas: vec![ChildSaStatus {
                        spi_in: "c0000001".into(),
                        spi_out: "c0000002".into(),
                        ..Default::default()
                    }],
                    last_error: Some(LastError {
                        reason: "PeerUnreachable".into(),
                        message: "m".into(),
                        time: None,
                    }),
                    ..Default::default()
                },
            }],
        }
    }

    #[test]
    fn json_is_flat_gateway_status() {
        let s = sample();
        let v = serde_json::to_value(&s).unwrap();
        let t = &v["tunnels"][0];
        assert_eq!(t["ikeState"], "Established");
        assert_eq!(t["childSas"][0]["spiIn"], "c0000001");
        assert_eq!(t["lastError"]["reason"], "PeerUnreachable");
        let back: AgentStatus = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, s);
        // and the gateway part reads as the CRD type on its own
        let g: GatewayStatus = serde_json::from_value(t.clone()).unwrap();
        assert_eq!(g.ike_state, Some(strait_crds::IkeState::Established));
    }

    #[test]
    fn text_names_the_essentials() {
        let txt = render(&sample());
        assert!(txt.contains("t: ESTABLISHED"), "{txt}");
        assert!(txt.contains("in c0000001, out c0000002"), "{txt}");
        assert!(txt.contains("last error: PeerUnreachable"), "{txt}");
    }

    #[tokio::test]
    async fn socket_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.sock");
        let l = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel::<StatusRequest>(4);
        tokio::spawn(serve(l, tx));
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let _ = r.send(sample());
            }
        });
        let got = query(&path).await.unwrap();
        assert_eq!(got, sample());
    }
}
