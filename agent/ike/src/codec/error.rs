//! Why a datagram could not be decoded, or a message could not be encoded.
//!
//! Errors name the structure and the field at fault, never the bytes: a datagram may carry key
//! material (KE, nonces, ciphertext), and errors end up in logs and metrics.

use super::enums::{NotifyType, PayloadType};
use super::header::Header;

/// A received datagram is not a well-formed IKEv2 message (the peer's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the structure `what` needs.
    #[error("truncated {what}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
    },
    /// A length field disagrees with the bytes actually there (too short to hold its own
    /// header, or longer than its container).
    #[error("{what} length {declared} does not fit the {available} bytes available")]
    BadLength {
        /// The structure whose length field lies.
        what: &'static str,
        /// The length the field claims.
        declared: usize,
        /// The bytes that are really there.
        available: usize,
    },
    /// Bytes left over after a structure that must fill its container exactly.
    #[error("{len} bytes of trailing data after {what}")]
    TrailingData {
        /// The structure that should have ended.
        what: &'static str,
        /// How many bytes were left.
        len: usize,
    },
    /// The header's major version is not 2. Carries the header so the endpoint can answer
    /// with INVALID_MAJOR_VERSION (RFC 7296 §2.5).
    #[error("unsupported IKE major version {major}")]
    InvalidMajorVersion {
        /// The major version received.
        major: u8,
        /// The rest of the header, parsed as far as it goes.
        header: Header,
    },
    /// An unknown payload with the critical bit set (RFC 7296 §2.5); answer with
    /// UNSUPPORTED_CRITICAL_PAYLOAD carrying this type.
    #[error("unsupported critical payload {0:?}")]
    UnsupportedCriticalPayload(PayloadType),
    /// A nonce outside 16..=256 bytes (RFC 7296 §3.9).
    #[error("nonce length {0} outside 16..=256")]
    BadNonceLength(usize),
    /// A field holds a value the format forbids.
    #[error("invalid {what}")]
    InvalidField {
        /// The field at fault.
        what: &'static str,
    },
    /// A count field disagrees with the structures that follow.
    #[error("{what}: count says {declared}, found {found}")]
    CountMismatch {
        /// The counted structure.
        what: &'static str,
        /// The count the field claims.
        declared: usize,
        /// The structures really present.
        found: usize,
    },
    /// An SK or SKF payload that is not the last payload, or one inside decrypted plaintext.
    #[error("misplaced encrypted payload")]
    MisplacedEncrypted,
    /// A message that must be protected has no SK or SKF payload.
    #[error("no encrypted payload")]
    MissingEncrypted,
}

impl DecodeError {
    /// The notification to answer with, where one is due (RFC 7296 §2.21: the endpoint decides
    /// whether it may answer at all).
    pub fn notify_type(&self) -> NotifyType {
        match self {
            Self::InvalidMajorVersion { .. } => NotifyType::INVALID_MAJOR_VERSION,
            Self::UnsupportedCriticalPayload(_) => NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
            _ => NotifyType::INVALID_SYNTAX,
        }
    }

    /// A fixed, low-cardinality label for metrics (never `Debug`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::BadLength { .. } => "bad_length",
            Self::TrailingData { .. } => "trailing_data",
            Self::InvalidMajorVersion { .. } => "invalid_major_version",
            Self::UnsupportedCriticalPayload(_) => "unsupported_critical_payload",
            Self::BadNonceLength(_) => "bad_nonce_length",
            Self::InvalidField { .. } => "invalid_field",
            Self::CountMismatch { .. } => "count_mismatch",
            Self::MisplacedEncrypted => "misplaced_encrypted",
            Self::MissingEncrypted => "missing_encrypted",
        }
    }
}

/// A message built by this implementation cannot be put on the wire (our fault: a field too long
/// for its length field, or values that contradict each other).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// `what` is longer than its length field can express.
    #[error("{what} too long for its length field")]
    TooLong {
        /// The structure or field that overflowed.
        what: &'static str,
    },
    /// A field holds a value the format forbids (e.g. a nonce outside 16..=256 bytes, SPIs of
    /// different sizes in one Delete).
    #[error("invalid {what}")]
    InvalidField {
        /// The field at fault.
        what: &'static str,
    },
    /// An SK or SKF payload that is not the last payload of the message.
    #[error("misplaced encrypted payload")]
    MisplacedEncrypted,
}
