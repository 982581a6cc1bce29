//! The tunnel's conditions, computed from the election and the active agent's report.
//!
//! metav1.Condition semantics: CamelCase reasons, messages for people, `observedGeneration`, and a
//! `lastTransitionTime` that only moves when the condition's status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use strait_crds::{GatewayStatus, IkeState};

use crate::diagnosis::Diagnosis;

/// Condition types the operator owns.
pub const READY: &str = "Ready";
/// The IKE SA on the active gateway is established.
pub const IKE_ESTABLISHED: &str = "IkeEstablished";
/// CHILD SAs are installed in the active gateway's kernel.
pub const CHILD_SAS_INSTALLED: &str = "ChildSasInstalled";
/// Something needs a person's attention.
pub const DEGRADED: &str = "Degraded";

/// What the operator knows about a tunnel when it computes the conditions.
#[derive(Debug, Clone, Copy)]
pub enum Situation<'a> {
    /// `spec.gateway.nodeSelector` is missing or cannot be evaluated.
    BadSelector {
        /// CamelCase reason.
        reason: &'static str,
        /// For a person.
        message: &'a str,
    },
    /// No matching node has a live agent.
    NoGateway {
        /// How many nodes match the selector (alive or not).
        matching_nodes: usize,
        /// Why their agents do not run, when the cluster's objects show it.
        diagnosis: Option<&'a Diagnosis>,
    },
    /// A gateway is elected; `entry` is its agent's report, if any.
    Active {
        /// The elected node.
        node: &'a str,
        /// `status.gateways[]` entry of that node.
        entry: Option<&'a GatewayStatus>,
    },
}

/// One computed condition before times are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// Condition type.
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// For a person.
    pub message: String,
}

fn cond(type_: &'static str, status: bool, reason: &str, message: impl Into<String>) -> Cond {
    Cond {
        type_,
        status,
        reason: reason.to_owned(),
        message: message.into(),
    }
}

/// Whether `s` is a valid metav1.Condition reason (`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`).
pub fn is_valid_reason(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    s.len() <= 1024
        && first.is_ascii_alphabetic()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ',' | ':'))
        && !s.ends_with([',', ':'])
}

/// Messages are capped well below the API's 32 KiB limit; they are for people, not logs.
fn cap(message: &str) -> String {
    const MAX: usize = 1024;
    if message.len() <= MAX {
        return message.to_owned();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", message.get(..end).unwrap_or_default())
}

/// The four conditions for `situation`, in a fixed order.
pub fn compute(situation: Situation<'_>) -> Vec<Cond> {
    match situation {
        Situation::BadSelector { reason, message } => all_down(reason, message, true),
        Situation::NoGateway {
            matching_nodes,
            diagnosis,
        } => {
            if matching_nodes == 0 {
                return all_down(
                    "NoGatewayAvailable",
                    "no node matches spec.gateway.nodeSelector",
                    true,
                );
            }
            let message = format!(
                "{matching_nodes} node(s) match spec.gateway.nodeSelector but none has a live \
                 strait agent (heartbeat Lease expired or missing)"
            );
            match diagnosis {
                Some(d) => all_down(
                    d.problem.as_str(),
                    &cap(&format!("{message}: {}", d.message)),
                    true,
                ),
                None => all_down("NoGatewayAvailable", &message, true),
            }
        }
        Situation::Active { node, entry: None } => all_down(
            "WaitingForAgent",
            &format!("gateway {node} is elected; waiting for its agent to report"),
            false,
        ),
        Situation::Active {
            node,
            entry: Some(e),
        } => from_entry(node, e),
    }
}

fn all_down(reason: &str, message: &str, degraded: bool) -> Vec<Cond> {
    vec![
        cond(READY, false, reason, message),
        cond(IKE_ESTABLISHED, false, reason, message),
        cond(CHILD_SAS_INSTALLED, false, reason, message),
        if degraded {
            cond(DEGRADED, true, reason, message)
        } else {
            cond(DEGRADED, false, reason, message)
        },
    ]
}

fn from_entry(node: &str, e: &GatewayStatus) -> Vec<Cond> {
    let state = e.ike_state.map_or("Unknown", IkeState::as_str);
    let ike_up = e.ike_established();
    let children = e.child_sas.len();
    if e.is_up() {
        let msg = format!("IKE SA and {children} CHILD SA(s) established on gateway {node}");
        // up, with an error beside it: a reauthentication (new credentials) the peer refused
        // while the established SAs carry on
        let degraded = match &e.last_error {
            Some(err) => cond(
                DEGRADED,
                true,
                agent_reason(err),
                cap(&format!("gateway {node}: {}", err.message)),
            ),
            None => cond(DEGRADED, false, "AsExpected", msg.clone()),
        };
        return vec![
            cond(READY, true, "TunnelEstablished", msg),
            cond(
                IKE_ESTABLISHED,
                true,
                "IkeSaEstablished",
                format!("IKE SA {state} on gateway {node}"),
            ),
            cond(
                CHILD_SAS_INSTALLED,
                true,
                "ChildSasInstalled",
                format!("{children} CHILD SA(s) installed on gateway {node}"),
            ),
            degraded,
        ];
    }
    if let Some(err) = &e.last_error {
        let msg = cap(&format!("gateway {node}: {}", err.message));
        let mut out = all_down(agent_reason(err), &msg, true);
        if ike_up && let Some(c) = out.iter_mut().find(|c| c.type_ == IKE_ESTABLISHED) {
            *c = cond(
                IKE_ESTABLISHED,
                true,
                "IkeSaEstablished",
                format!("IKE SA {state} on gateway {node}"),
            );
        }
        return out;
    }
    if ike_up {
        let msg = format!("IKE SA {state} on gateway {node}; no CHILD SA installed yet");
        return vec![
            cond(READY, false, "ChildSasPending", msg.clone()),
            cond(
                IKE_ESTABLISHED,
                true,
                "IkeSaEstablished",
                format!("IKE SA {state} on gateway {node}"),
            ),
            cond(CHILD_SAS_INSTALLED, false, "ChildSasPending", msg.clone()),
            cond(DEGRADED, false, "ChildSasPending", msg),
        ];
    }
    let reason = match e.ike_state {
        Some(IkeState::Connecting) => "Connecting",
        Some(IkeState::Down) => "IkeSaDown",
        // Established returned above; None: an entry that names no state
        Some(IkeState::Established) | None => "IkeStateUnknown",
    };
    let msg = cap(&format!("IKE SA is {state} on gateway {node}"));
    all_down(reason, &msg, false)
}

/// Attaches times and the generation: a condition whose status did not change keeps its previous
/// `lastTransitionTime`.
pub fn to_api(
    computed: Vec<Cond>,
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    computed
        .into_iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map_or(Time(now), |p| p.last_transition_time.clone());
            Condition {
                type_: c.type_.to_owned(),
                status: status.to_owned(),
                reason: c.reason,
                message: c.message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// The status (`True`/`False`/`Unknown`) of the `Ready` condition in `conditions`.
pub fn ready_status(conditions: &[Condition]) -> &str {
    conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map_or("Unknown", |c| c.status.as_str())
}

/// The Ready condition's reason (empty without one).
pub fn ready_reason(conditions: &[Condition]) -> &str {
    conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map_or("", |c| c.reason.as_str())
}

/// The agent's reason as a condition reason; one that is not valid becomes `AgentError`.
fn agent_reason(err: &strait_crds::LastError) -> &str {
    if is_valid_reason(&err.reason) {
        err.reason.as_str()
    } else {
        "AgentError"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_crds::{ChildSaStatus, LastError};

    fn ready(c: &[Cond]) -> (&str, bool) {
        let r = c.iter().find(|c| c.type_ == READY).unwrap();
        (r.reason.as_str(), r.status)
    }

    #[test]
    fn no_gateway_and_waiting() {
        let c = compute(Situation::NoGateway {
            matching_nodes: 2,
            diagnosis: None,
        });
        assert_eq!(ready(&c), ("NoGatewayAvailable", false));
        assert!(c[0].message.contains("2 node(s)"));
        let c = compute(Situation::Active {
            node: "gw",
            entry: None,
        });
        assert_eq!(ready(&c), ("WaitingForAgent", false));
        assert!(!c[3].status, "waiting is not degraded");
    }

    #[test]
    fn a_diagnosis_becomes_the_reason_and_explains_the_message() {
        let d = Diagnosis {
            problem: crate::diagnosis::Problem::AgentPodsForbidden,
            message: "namespace strait-system enforces baseline".into(),
        };
        let c = compute(Situation::NoGateway {
            matching_nodes: 1,
            diagnosis: Some(&d),
        });
        assert_eq!(ready(&c), ("AgentPodsForbidden", false));
        assert!(c.iter().all(|c| c.reason == "AgentPodsForbidden"));
        assert!(c[0].message.contains("1 node(s) match"), "{}", c[0].message);
        assert!(
            c[0].message.ends_with("enforces baseline"),
            "{}",
            c[0].message
        );
        assert!(c[3].status, "degraded");
        // no node matches: nothing to diagnose
        let c = compute(Situation::NoGateway {
            matching_nodes: 0,
            diagnosis: Some(&d),
        });
        assert_eq!(ready(&c), ("NoGatewayAvailable", false));
    }

    #[test]
    fn errors_are_propagated_and_bad_reasons_replaced() {
        let mut e = GatewayStatus {
            node: "gw".into(),
            ike_state: Some(IkeState::Connecting),
            last_error: Some(LastError {
                reason: "AuthenticationFailed".into(),
                message: "peer sent AUTHENTICATION_FAILED".into(),
                time: None,
            }),
            ..GatewayStatus::default()
        };
        let c = compute(Situation::Active {
            node: "gw",
            entry: Some(&e),
        });
        assert_eq!(ready(&c), ("AuthenticationFailed", false));
        assert!(c[3].status);
        e.last_error.as_mut().unwrap().reason = "not a reason!".into();
        let c = compute(Situation::Active {
            node: "gw",
            entry: Some(&e),
        });
        assert_eq!(ready(&c), ("AgentError", false));
    }

    #[test]
    fn established_with_children_is_ready() {
        let e = GatewayStatus {
            node: "gw".into(),
            ike_state: Some(IkeState::Established),
            child_sas: vec![ChildSaStatus::default()],
            ..GatewayStatus::default()
        };
        let c = compute(Situation::Active {
            node: "gw",
            entry: Some(&e),
        });
        assert_eq!(ready(&c), ("TunnelEstablished", true));
        assert!(c.iter().all(|c| c.status != (c.type_ == DEGRADED)));
    }

    #[test]
    fn up_with_an_error_beside_it_is_ready_and_degraded() {
        // the agent's new IKE SA (new credentials) was refused; the established one carries on
        let e = GatewayStatus {
            node: "gw".into(),
            ike_state: Some(IkeState::Established),
            child_sas: vec![ChildSaStatus::default()],
            last_error: Some(LastError {
                reason: "AuthenticationFailed".into(),
                message: "a new IKE SA (reauthentication) failed".into(),
                time: None,
            }),
            ..GatewayStatus::default()
        };
        let c = compute(Situation::Active {
            node: "gw",
            entry: Some(&e),
        });
        assert_eq!(ready(&c), ("TunnelEstablished", true));
        let d = c.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert!(d.status);
        assert_eq!(d.reason, "AuthenticationFailed");
        assert!(
            d.message.contains("gateway gw: a new IKE SA"),
            "{}",
            d.message
        );
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let first = to_api(
            compute(Situation::NoGateway {
                matching_nodes: 0,
                diagnosis: None,
            }),
            &[],
            Some(1),
            t0,
        );
        let again = to_api(
            compute(Situation::Active {
                node: "gw",
                entry: None,
            }),
            &first,
            Some(2),
            t1,
        );
        let r = again.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(r.last_transition_time.0, t0, "Ready stayed False");
        assert_eq!(r.observed_generation, Some(2));
        let d = again.iter().find(|c| c.type_ == DEGRADED).unwrap();
        assert_eq!(d.last_transition_time.0, t1, "Degraded went True -> False");
    }

    #[test]
    fn reasons() {
        assert!(is_valid_reason("NoProposalChosen"));
        assert!(!is_valid_reason(""));
        assert!(!is_valid_reason("1Bad"));
        assert!(!is_valid_reason("Bad:"));
        assert!(!is_valid_reason("with space"));
    }
}
