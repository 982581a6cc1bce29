//! The agent's error for anything that keeps a tunnel from running on this node: the reason its
//! status reports, a message for a person, and, for kernel failures, who has to act.

use strait_crds::contract::StatusReason;
use strait_xfrm::Fault;

/// Why the agent cannot set up or run (part of) a tunnel. Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TunnelError {
    /// The status reason.
    pub reason: StatusReason,
    /// What happened, for a person.
    pub message: String,
    /// For kernel failures: strait-xfrm's judgement of who has to act.
    pub fault: Option<Fault>,
}

impl TunnelError {
    /// An error that is not the kernel's.
    pub fn new(reason: StatusReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            fault: None,
        }
    }

    /// A kernel failure while doing `context`: the reason follows who has to act, so a missing
    /// CAP_NET_ADMIN says so instead of a generic data-plane error.
    pub fn kernel(context: &str, e: &strait_xfrm::Error) -> Self {
        let fault = e.fault();
        let reason = match fault {
            Fault::Kernel => StatusReason::KernelUnsupported,
            Fault::Permission => StatusReason::PermissionDenied,
            _ => StatusReason::DataplaneError,
        };
        Self {
            reason,
            message: format!("{context}: {e}"),
            fault: Some(fault),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_name_who_acts() {
        let perm = strait_xfrm::Error::PermissionDenied { op: "add SA" };
        let e = TunnelError::kernel("installing the inbound SA", &perm);
        assert_eq!(e.reason, StatusReason::PermissionDenied);
        assert_eq!(e.fault, Some(Fault::Permission));
        assert!(
            e.message
                .starts_with("installing the inbound SA: add SA: permission denied")
        );
        let esp = strait_xfrm::Error::Unsupported(strait_xfrm::Unsupported::Esp);
        assert_eq!(
            TunnelError::kernel("preflight", &esp).reason,
            StatusReason::KernelUnsupported
        );
        let gone = strait_xfrm::Error::NotFound { op: "delete SA" };
        assert_eq!(
            TunnelError::kernel("x", &gone).reason,
            StatusReason::DataplaneError
        );
        assert_eq!(TunnelError::new(StatusReason::SocketError, "m").fault, None);
    }
}
