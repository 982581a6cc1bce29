//! The contract between the operator and the agents, beyond the spec: who writes which part of
//! the status (field managers), what an agent's `status.gateways[]` entry says (its IKE state,
//! the one definition of "up", the reasons an agent reports) and the server-side apply bodies
//! that write it. The heartbeat Lease is the other half ([`crate::heartbeat`]).
//!
//! An agent never writes a tombstone: when it has removed a tunnel's kernel objects it applies
//! [`clear_body`], which drops its entry; the operator releases the finalizer once no entry is
//! left (or after its deletion timeout).

use serde_json::{Value, json};

use crate::{API_VERSION, GatewayStatus, IkeState, LastError};

/// The field manager of the operator: conditions, `activeGateway`, `observedGeneration`, and
/// the agent DaemonSet.
pub const OPERATOR_FIELD_MANAGER: &str = "strait-operator";

/// The agent DaemonSet in the operator's namespace. An agent stopped while it exists (and is
/// not being deleted) is being restarted or upgraded: with saved state it leaves its tunnels
/// and heartbeat in place for the agent that follows.
pub const AGENT_DAEMONSET: &str = "strait-agent";

/// The route role's DaemonSet in the chart's namespace (the chart makes it, not the operator).
/// A route pod stopped while it exists (and is not being deleted) leaves its routes for the
/// pod that follows, so no packet takes the default route in clear during a rolling update.
pub const ROUTE_DAEMONSET: &str = "strait-route";

/// The field manager of the agent on `node`: its own `status.gateways[]` entry and its
/// heartbeat Lease, so no two writers ever conflict.
pub fn agent_field_manager(node: &str) -> String {
    format!("strait-agent/{node}")
}

impl GatewayStatus {
    /// IKE SA established with at least one CHILD SA: what the operator reports as Ready, and
    /// what the agent writes at once rather than after its rate limit.
    pub fn is_up(&self) -> bool {
        self.ike_established() && !self.child_sas.is_empty()
    }

    /// Whether the IKE SA is established (with or without CHILD SAs).
    pub fn ike_established(&self) -> bool {
        self.ike_state == Some(IkeState::Established)
    }
}

/// Why an agent cannot run a tunnel, when the cause is on the agent's side rather than in the
/// IKE exchange (those reasons are strait-ike's `Reason`). Written as `lastError.reason`; the
/// wire keeps that field a string so an older operator still reads a newer agent's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusReason {
    /// The spec cannot become an IKE configuration.
    InvalidConfig,
    /// A proposal string was refused.
    InvalidProposal,
    /// The certificate, key or CA is missing or unusable.
    InvalidCertificate,
    /// A Secret or key the spec names cannot be read.
    SecretUnavailable,
    /// The remote address does not resolve, or there is no route to it.
    AddressUnresolved,
    /// The IKE sockets cannot be bound or prepared.
    SocketError,
    /// The node's kernel lacks what the tunnel needs (ESP, an algorithm, XFRM).
    KernelUnsupported,
    /// The agent lacks a privilege it needs (CAP_NET_ADMIN for XFRM).
    PermissionDenied,
    /// The kernel refused a change for another reason.
    DataplaneError,
}

impl StatusReason {
    /// The CamelCase reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidConfig => "InvalidConfig",
            Self::InvalidProposal => "InvalidProposal",
            Self::InvalidCertificate => "InvalidCertificate",
            Self::SecretUnavailable => "SecretUnavailable",
            Self::AddressUnresolved => "AddressUnresolved",
            Self::SocketError => "SocketError",
            Self::KernelUnsupported => "KernelUnsupported",
            Self::PermissionDenied => "PermissionDenied",
            Self::DataplaneError => "DataplaneError",
        }
    }
}

impl core::fmt::Display for StatusReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LastError {
    /// An error with `reason` (CamelCase) and a message for a person, stamped now.
    pub fn now(reason: &str, message: String) -> Self {
        Self {
            reason: reason.to_owned(),
            message,
            time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            )),
        }
    }
}

/// The apply body that makes `entry` the agent's only field in the tunnel's status.
pub fn gateway_entry_body(tunnel: &str, entry: &GatewayStatus) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "IPsecTunnel",
        "metadata": {"name": tunnel},
        "status": {"gateways": [entry]},
    })
}

/// The apply body that owns nothing: server-side apply then removes the entry this manager owned.
pub fn clear_body(tunnel: &str) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "IPsecTunnel",
        "metadata": {"name": tunnel},
        "status": {},
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::ChildSaStatus;

    fn entry(state: IkeState, children: usize) -> GatewayStatus {
        GatewayStatus {
            node: "gw1".into(),
            ike_state: Some(state),
            child_sas: vec![ChildSaStatus::default(); children],
            ..GatewayStatus::default()
        }
    }

    #[test]
    fn up_means_established_with_a_child_sa() {
        assert!(entry(IkeState::Established, 1).is_up());
        assert!(!entry(IkeState::Established, 0).is_up());
        assert!(entry(IkeState::Established, 0).ike_established());
        assert!(!entry(IkeState::Connecting, 1).is_up());
        assert!(!entry(IkeState::Down, 1).is_up());
        assert!(!GatewayStatus::default().is_up());
    }

    #[test]
    fn ike_state_is_written_in_camel_case() {
        let v = serde_json::to_value(entry(IkeState::Connecting, 0)).unwrap_or_default();
        assert_eq!(v["ikeState"], "Connecting");
        let back: GatewayStatus =
            serde_json::from_value(json!({"node": "n", "ikeState": "Established"}))
                .unwrap_or_default();
        assert_eq!(back.ike_state, Some(IkeState::Established));
        assert!(
            serde_json::from_value::<GatewayStatus>(json!({"node": "n", "ikeState": "Deleted"}))
                .is_err()
        );
    }

    #[test]
    fn bodies_hold_only_the_agents_fields() {
        let b = gateway_entry_body("dc2", &entry(IkeState::Established, 0));
        assert_eq!(b["apiVersion"], "strait.dev/v1alpha1");
        assert_eq!(b["status"]["gateways"][0]["node"], "gw1");
        assert!(b["status"].get("conditions").is_none());
        assert!(b["status"].get("activeGateway").is_none());
        assert_eq!(clear_body("dc2")["status"], json!({}));
        assert_eq!(agent_field_manager("gw1"), "strait-agent/gw1");
    }

    #[test]
    fn reasons_are_camel_case() {
        for r in [
            StatusReason::InvalidConfig,
            StatusReason::PermissionDenied,
            StatusReason::KernelUnsupported,
        ] {
            let s = r.as_str();
            assert!(s.chars().next().is_some_and(|c| c.is_ascii_uppercase()));
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()));
        }
    }
}
