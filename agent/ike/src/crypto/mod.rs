//! The crypto provider: every primitive IKEv2 needs, backed by aws-lc-rs (and `crypto-bigint`
//! for the MODP groups).
//!
//! Sans-IO: nothing here draws OS randomness or reads a clock. Randomness comes in through
//! [`rng::Rng`]; time (certificate validity) is a parameter. The exceptions, where aws-lc-rs
//! draws from its own internal RNG because its API offers no way to pass one in, are documented
//! where they happen (RSA-PSS salts and ECDSA nonces in [`sign`], ML-KEM if added).
//!
//! What the IKE state machine calls:
//! - [`alg`]: the negotiated transform types and their sizes, mapped to and from IANA IDs.
//! - [`ke::KeyExchange`]: our half of a (EC)DH exchange; `public_value()`, `compute_shared()`.
//! - [`kdf`]: SKEYSEED, the seven IKE SA keys, rekey SKEYSEED, CHILD SA keying material.
//! - [`auth`]: the AUTH payload octets and the PSK form, with constant-time verification.
//! - [`sk::SkCipher`]: protection of the Encrypted (SK) payload.
//! - [`sign`] / [`x509`]: RFC 7427 signatures and certificates.

pub mod alg;
pub mod auth;
pub mod kdf;
pub mod ke;
pub mod keys;
pub mod rng;
pub mod sign;
pub mod sk;
pub mod x509;

/// A crypto failure. Carries no key material, and names its cause in [`Error::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The algorithm (or combination) is not implemented or not allowed here.
    #[error("unsupported algorithm: {0}")]
    Unsupported(&'static str),
    /// A key or other input had the wrong length for the algorithm.
    #[error("wrong length for {0}")]
    InvalidLength(&'static str),
    /// The peer's key exchange public value failed validation (RFC 6989 / RFC 8031 checks).
    #[error("invalid peer key exchange value: {0}")]
    InvalidPeerPublicValue(&'static str),
    /// `prf+` was asked for more than 255 blocks of output (RFC 7296 §2.13).
    #[error("prf+ output too long")]
    PrfPlusTooLong,
    /// Integrity check (ICV or AEAD tag) failed: the message was modified or the key is wrong.
    #[error("integrity check failed")]
    IntegrityCheckFailed,
    /// The decrypted padding was inconsistent.
    #[error("invalid padding")]
    InvalidPadding,
    /// A signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// A private key could not be loaded.
    #[error("private key rejected: {0}")]
    KeyRejected(&'static str),
    /// A certificate could not be parsed or validated.
    #[error("certificate: {0}")]
    Certificate(&'static str),
    /// The underlying library failed in a way that should not happen.
    #[error("internal crypto failure")]
    Internal,
}

impl Error {
    /// A fixed, low-cardinality label for metrics and logs (never `Debug` output).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unsupported(_) => "unsupported",
            Error::InvalidLength(_) => "invalid_length",
            Error::InvalidPeerPublicValue(_) => "invalid_peer_public_value",
            Error::PrfPlusTooLong => "prf_plus_too_long",
            Error::IntegrityCheckFailed => "integrity_check_failed",
            Error::InvalidPadding => "invalid_padding",
            Error::BadSignature => "bad_signature",
            Error::KeyRejected(_) => "key_rejected",
            Error::Certificate(_) => "certificate",
            Error::Internal => "internal",
        }
    }
}

/// Result alias for this module.
pub type Result<T> = core::result::Result<T, Error>;

#[cfg(test)]
pub(crate) mod test_util {
    /// Decodes hex (whitespace ignored); panics on bad input, which is fine in tests.
    #[allow(clippy::unwrap_used, clippy::indexing_slicing)]
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
