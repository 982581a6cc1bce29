//! Why an IKE or CHILD SA went down or could not be set up: a closed set whose
//! [`Reason::as_str`] is the CamelCase status reason the operator reports.

/// Why an SA failed or was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// Something failed on our side (crypto failure, unsupported configuration).
    InternalError,
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
            Self::InternalError => "InternalError",
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
