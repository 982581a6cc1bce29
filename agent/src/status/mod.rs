//! What the agent reports about its tunnels: the JSON served on the status socket (each
//! tunnel's fields are the CRD's `GatewayStatus`, flattened, so cluster mode can reuse them).
//! The socket's server and client are [`socket`]; the text rendering in the manner of
//! `swanctl --list-sas` is [`render`].
//!
//! Nothing secret is ever part of a status.

mod render;
mod socket;

use serde::{Deserialize, Serialize};
use strait_crds::GatewayStatus;
use tokio::sync::oneshot;

pub use render::render;
pub use socket::{SocketFile, bind, query, serve};

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use strait_crds::{ChildSaStatus, LastError};
    use tokio::sync::mpsc;

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
