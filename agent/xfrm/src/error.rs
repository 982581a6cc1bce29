//! Errors, split by who has to act: the kernel build, the permissions, the caller's input, or
//! nobody (transient). Messages say what to do; none of them ever carries key bytes (keys never
//! reach an error path: the kernel's answer is capped to the header, see `netlink.rs`).

use std::fmt;
use std::io;

/// What the running kernel lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unsupported {
    /// No `NETLINK_XFRM` (CONFIG_XFRM_USER): the socket cannot even be opened.
    XfrmUser,
    /// XFRM works but there is no ESP transform (CONFIG_INET_ESP / CONFIG_INET6_ESP).
    Esp,
    /// ESP works but this algorithm has no implementation in the kernel's crypto API.
    Algorithm(String),
    /// Called outside a tokio runtime (not the kernel's fault, but nothing can work).
    NoRuntime,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsupported::XfrmUser => f.write_str(
                "the kernel has no XFRM netlink interface (CONFIG_XFRM_USER): \
                 load xfrm_user or use --dataplane none",
            ),
            Unsupported::Esp => f.write_str(
                "the kernel has no ESP support (CONFIG_INET_ESP): \
                 load esp4 (and esp6 for IPv6) or use --dataplane none",
            ),
            Unsupported::Algorithm(name) => write!(
                f,
                "the kernel has no implementation of the ESP algorithm {name}: load its crypto \
                 modules (e.g. gcm, cbc, aes, sha256/sha512, authenc), choose another ESP \
                 proposal, or use --dataplane none"
            ),
            Unsupported::NoRuntime => {
                f.write_str("strait-xfrm must be used from inside a tokio runtime")
            }
        }
    }
}

/// Who has to act on an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The kernel lacks a feature: change the node, or run without a data plane.
    Kernel,
    /// The process lacks CAP_NET_ADMIN in its network namespace.
    Permission,
    /// The request was wrong (ours or the caller's): retrying the same thing will not help.
    Input,
    /// Another owner or a concurrent change is in the way (exists, missing, not ours).
    Conflict,
    /// Memory pressure, a full socket buffer, an interrupted dump: retry later, with backoff.
    Transient,
    /// Unexpected kernel answer or socket failure.
    Other,
}

/// An error from strait-xfrm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel (or environment) lacks a feature.
    #[error("{0}")]
    Unsupported(Unsupported),
    /// EPERM/EACCES from the kernel.
    #[error(
        "{op}: permission denied: the agent needs CAP_NET_ADMIN in its network namespace \
         (run privileged or add the capability)"
    )]
    PermissionDenied {
        /// The operation that failed.
        op: &'static str,
    },
    /// A value was refused before anything was sent.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// The field or object.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The kernel refused the request as malformed (EINVAL and friends).
    #[error("{op}: the kernel rejected the request ({errno_name}){}", detail_suffix(.detail))]
    Rejected {
        /// The operation that failed.
        op: &'static str,
        /// Kernel errno.
        errno: i32,
        /// Symbolic errno.
        errno_name: String,
        /// The kernel's extended-ack message, when it sent one.
        detail: Option<String>,
    },
    /// ENOENT/ESRCH: no such SA or policy.
    #[error("{op}: no such object")]
    NotFound {
        /// The operation that failed.
        op: &'static str,
    },
    /// EEXIST: an SA or policy with the same key is already installed.
    #[error("{op}: an object with the same key already exists")]
    AlreadyExists {
        /// The operation that failed.
        op: &'static str,
    },
    /// We refuse to touch an object that carries no Strait ownership tag.
    #[error("{op}: refusing to touch an object owned by someone else (reqid {reqid:#x})")]
    NotOurs {
        /// The operation refused.
        op: &'static str,
        /// The foreign object's reqid.
        reqid: u32,
    },
    /// Retry later (ENOBUFS, ENOMEM, EAGAIN, EBUSY, EINTR, an interrupted dump, lost events).
    #[error("{op}: transient failure ({reason}); retry later")]
    Transient {
        /// The operation that failed.
        op: &'static str,
        /// What happened.
        reason: String,
    },
    /// Any other errno from the kernel.
    #[error("{op}: kernel error {errno_name}{}", detail_suffix(.detail))]
    Kernel {
        /// The operation that failed.
        op: &'static str,
        /// Kernel errno.
        errno: i32,
        /// Symbolic errno.
        errno_name: String,
        /// The kernel's extended-ack message, when it sent one.
        detail: Option<String>,
    },
    /// A socket call failed (the netlink socket, or a socket option).
    #[error("{op}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel's answer could not be decoded (a bug here or a kernel ABI we do not know).
    #[error("{op}: malformed kernel reply: {reason}")]
    Protocol {
        /// The operation that failed.
        op: &'static str,
        /// What was wrong.
        reason: String,
    },
}

fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(d) => format!(": {d}"),
        None => String::new(),
    }
}

impl Error {
    /// Who has to act.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Unsupported(_) => Fault::Kernel,
            Error::PermissionDenied { .. } => Fault::Permission,
            Error::InvalidInput { .. } | Error::Rejected { .. } => Fault::Input,
            Error::NotFound { .. } | Error::AlreadyExists { .. } | Error::NotOurs { .. } => {
                Fault::Conflict
            }
            Error::Transient { .. } => Fault::Transient,
            Error::Kernel { .. } | Error::Io { .. } | Error::Protocol { .. } => Fault::Other,
        }
    }

    /// A fixed, low-cardinality name for metric labels (never `Debug` output).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unsupported(Unsupported::XfrmUser) => "unsupported_xfrm_user",
            Error::Unsupported(Unsupported::Esp) => "unsupported_esp",
            Error::Unsupported(Unsupported::Algorithm(_)) => "unsupported_algorithm",
            Error::Unsupported(Unsupported::NoRuntime) => "no_runtime",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::InvalidInput { .. } => "invalid_input",
            Error::Rejected { .. } => "rejected",
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::NotOurs { .. } => "not_ours",
            Error::Transient { .. } => "transient",
            Error::Kernel { .. } => "kernel",
            Error::Io { .. } => "io",
            Error::Protocol { .. } => "protocol",
        }
    }

    /// Whether retrying later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        self.fault() == Fault::Transient
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn protocol(op: &'static str, reason: impl Into<String>) -> Self {
        Error::Protocol {
            op,
            reason: reason.into(),
        }
    }

    /// Maps a kernel errno (positive) for `op`. `alg` names the algorithm the request carried,
    /// so ENOSYS ("no such algorithm") can say which one.
    pub(crate) fn from_errno(
        op: &'static str,
        errno: i32,
        detail: Option<String>,
        alg: Option<&str>,
    ) -> Self {
        match errno {
            libc::EPROTONOSUPPORT => Error::Unsupported(Unsupported::Esp),
            libc::ENOSYS => Error::Unsupported(Unsupported::Algorithm(
                alg.unwrap_or("(unknown)").to_owned(),
            )),
            libc::EPERM | libc::EACCES => Error::PermissionDenied { op },
            libc::EEXIST => Error::AlreadyExists { op },
            libc::ENOENT | libc::ESRCH => Error::NotFound { op },
            libc::ENOBUFS | libc::ENOMEM | libc::EAGAIN | libc::EBUSY | libc::EINTR => {
                Error::Transient {
                    op,
                    reason: errno_name(errno),
                }
            }
            libc::EINVAL | libc::EOPNOTSUPP | libc::EAFNOSUPPORT | libc::ERANGE => {
                Error::Rejected {
                    op,
                    errno,
                    errno_name: errno_name(errno),
                    detail,
                }
            }
            _ => Error::Kernel {
                op,
                errno,
                errno_name: errno_name(errno),
                detail,
            },
        }
    }

    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) => {
                Error::Unsupported(Unsupported::XfrmUser)
            }
            Some(libc::EPERM) | Some(libc::EACCES) => Error::PermissionDenied { op },
            Some(libc::ENOBUFS) => Error::Transient {
                op,
                reason: "the netlink receive queue overflowed (ENOBUFS)".into(),
            },
            _ => Error::Io { op, source },
        }
    }
}

/// "EINVAL (Invalid argument)".
pub(crate) fn errno_name(errno: i32) -> String {
    let sym = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOBUFS => "ENOBUFS",
        _ => "",
    };
    let text = io::Error::from_raw_os_error(errno).to_string();
    if sym.is_empty() {
        text
    } else {
        format!("{sym}: {text}")
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_splits_by_fault() {
        let e = Error::from_errno("add SA", libc::EPROTONOSUPPORT, None, None);
        assert_eq!(e.fault(), Fault::Kernel);
        assert!(e.to_string().contains("CONFIG_INET_ESP"), "{e}");
        assert!(e.to_string().contains("--dataplane none"), "{e}");
        let e = Error::from_errno("add SA", libc::ENOSYS, None, Some("rfc4106(gcm(aes))"));
        assert_eq!(e.kind(), "unsupported_algorithm");
        assert!(e.to_string().contains("rfc4106(gcm(aes))"), "{e}");
        assert_eq!(
            Error::from_errno("x", libc::EPERM, None, None).fault(),
            Fault::Permission
        );
        assert_eq!(
            Error::from_errno("x", libc::ENOBUFS, None, None).fault(),
            Fault::Transient
        );
        let e = Error::from_errno("x", libc::EINVAL, Some("Invalid mode".into()), None);
        assert_eq!(e.fault(), Fault::Input);
        assert!(e.to_string().ends_with("Invalid mode"), "{e}");
    }
}
