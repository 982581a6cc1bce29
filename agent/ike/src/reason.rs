//! Why an IKE or CHILD SA went down or could not be set up: a closed set whose
//! [`Reason::as_str`] is the CamelCase status reason the operator reports, and whose
//! [`Reason::fault`] says who has to act.
//!
//! Not `#[non_exhaustive]`: the set is shared within the workspace only, and a new variant
//! should break the build of every `match` that has to say something about it.

/// Why an SA failed or was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No common proposal (either side said NO_PROPOSAL_CHOSEN or sent something we never
    /// offered).
    NoProposalChosen,
    /// The peer's AUTH or identity did not check out, or the peer rejected ours.
    AuthenticationFailed,
    /// Retransmissions exhausted or DPD timed out.
    PeerUnreachable,
    /// Traffic selectors could not be agreed.
    TsUnacceptable,
    /// The peer sent a malformed message, or told us ours was.
    InvalidSyntax,
    /// The peer deleted the SA.
    DeletedByPeer,
    /// We deleted the SA (configuration removed).
    DeletedLocally,
    /// The responder's half-open SA timed out before IKE_AUTH completed.
    HalfOpenTimeout,
    /// The SA was replaced by a rekeyed one, or by a new one after INITIAL_CONTACT.
    Replaced,
    /// The peer's certificate is not yet valid.
    CertificateNotYetValid,
    /// The peer's certificate has expired.
    CertificateExpired,
    /// The peer answered with an error notification we do not map to anything finer.
    PeerError,
    /// The IKE SA reached its hard lifetime without a rekey that succeeded (the peer kept
    /// refusing it), and was deleted; strongSwan's `over_time` expiry.
    LifetimeExpired,
    /// No wall-clock time was set ([`crate::Endpoint::set_wall_clock`]), so the peer's
    /// certificate could not be checked: a bug in the driver.
    ClockUnset,
    /// Our own cryptography failed: key generation, key derivation or signing.
    LocalCrypto,
    /// One of our own messages could not be built (encoded or sealed), e.g. an identity or a
    /// message too long for its length field.
    Encode,
    /// A rule this crate relies on did not hold (e.g. a validated configuration without a key
    /// exchange group): a bug in this crate.
    InternalError,
}

/// Who has to act on a [`Reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The peer, or how it is configured relative to us: proposals, credentials, selectors,
    /// certificates, malformed messages, error notifications.
    Peer,
    /// The path to the peer: no answer, or a handshake never completed.
    Network,
    /// This host: its driver, its crypto library, or this crate.
    Local,
    /// Nothing went wrong: the SA was deleted or replaced as part of its normal life.
    Lifecycle,
}

impl Fault {
    /// A fixed lower-case label (for metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Network => "network",
            Self::Local => "local",
            Self::Lifecycle => "lifecycle",
        }
    }
}

impl Reason {
    /// The CamelCase status reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoProposalChosen => "NoProposalChosen",
            Self::AuthenticationFailed => "AuthenticationFailed",
            Self::PeerUnreachable => "PeerUnreachable",
            Self::TsUnacceptable => "TsUnacceptable",
            Self::InvalidSyntax => "InvalidSyntax",
            Self::DeletedByPeer => "DeletedByPeer",
            Self::DeletedLocally => "DeletedLocally",
            Self::HalfOpenTimeout => "HalfOpenTimeout",
            Self::Replaced => "Replaced",
            Self::CertificateNotYetValid => "CertificateNotYetValid",
            Self::CertificateExpired => "CertificateExpired",
            Self::PeerError => "PeerError",
            Self::LifetimeExpired => "LifetimeExpired",
            Self::ClockUnset => "ClockUnset",
            Self::LocalCrypto => "LocalCrypto",
            Self::Encode => "Encode",
            Self::InternalError => "InternalError",
        }
    }

    /// Who has to act.
    pub fn fault(self) -> Fault {
        match self {
            Self::NoProposalChosen
            | Self::AuthenticationFailed
            | Self::TsUnacceptable
            | Self::InvalidSyntax
            | Self::CertificateNotYetValid
            | Self::CertificateExpired
            | Self::PeerError
            | Self::LifetimeExpired => Fault::Peer,
            Self::PeerUnreachable | Self::HalfOpenTimeout => Fault::Network,
            Self::DeletedByPeer | Self::DeletedLocally | Self::Replaced => Fault::Lifecycle,
            Self::ClockUnset | Self::LocalCrypto | Self::Encode | Self::InternalError => {
                Fault::Local
            }
        }
    }

    /// The reason an error notification from the peer stands for.
    pub(crate) fn from_notify(ty: crate::codec::NotifyType) -> Self {
        use crate::codec::NotifyType as N;
        match ty {
            N::NO_PROPOSAL_CHOSEN | N::INVALID_KE_PAYLOAD => Self::NoProposalChosen,
            N::AUTHENTICATION_FAILED => Self::AuthenticationFailed,
            N::TS_UNACCEPTABLE | N::SINGLE_PAIR_REQUIRED => Self::TsUnacceptable,
            N::INVALID_SYNTAX | N::UNSUPPORTED_CRITICAL_PAYLOAD => Self::InvalidSyntax,
            _ => Self::PeerError,
        }
    }
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::{Fault, Reason};

    #[test]
    fn local_causes_are_local_faults() {
        for r in [
            Reason::ClockUnset,
            Reason::LocalCrypto,
            Reason::Encode,
            Reason::InternalError,
        ] {
            assert_eq!(r.fault(), Fault::Local, "{r}");
        }
        assert_eq!(Reason::PeerUnreachable.fault(), Fault::Network);
        assert_eq!(Reason::Replaced.fault(), Fault::Lifecycle);
        assert_eq!(Reason::AuthenticationFailed.fault(), Fault::Peer);
        assert_eq!(Reason::ClockUnset.as_str(), "ClockUnset");
        assert_eq!(Fault::Local.as_str(), "local");
    }
}
