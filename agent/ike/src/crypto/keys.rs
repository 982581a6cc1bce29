//! Key material containers: zeroized on drop, never printed.

use zeroize::Zeroizing;

/// Secret bytes: zeroized when dropped; `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes` (which will be zeroized on drop).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new zeroizing buffer.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// The secret octets. Do not log them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in octets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this holds no octets.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl core::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// The seven IKE SA keys (RFC 7296 §2.14), in `prf+` output order.
///
/// For an AEAD cipher `sk_ai`/`sk_ar` are empty and `sk_ei`/`sk_er` include the 4-octet salt
/// at their end (RFC 5282 §7.1).
#[derive(Debug, Clone)]
pub struct IkeSaKeys {
    /// Derives CHILD SA keys and the next SKEYSEED.
    pub sk_d: SecretBytes,
    /// Integrity key, initiator → responder.
    pub sk_ai: SecretBytes,
    /// Integrity key, responder → initiator.
    pub sk_ar: SecretBytes,
    /// Encryption key (plus salt for AEAD), initiator → responder.
    pub sk_ei: SecretBytes,
    /// Encryption key (plus salt for AEAD), responder → initiator.
    pub sk_er: SecretBytes,
    /// Initiator's key for the AUTH payload computation.
    pub sk_pi: SecretBytes,
    /// Responder's key for the AUTH payload computation.
    pub sk_pr: SecretBytes,
}

/// Keys for one direction of an ESP SA, as the kernel (XFRM) wants them.
#[derive(Debug, Clone)]
pub struct EspDirectionKeys {
    /// Cipher key; for AES-GCM this includes the trailing 4-octet salt, which is how XFRM's
    /// `rfc4106(gcm(aes))` expects it (key || salt).
    pub encr: SecretBytes,
    /// Integrity key; empty for AEAD.
    pub integ: SecretBytes,
}

/// CHILD SA keying material split per direction (RFC 7296 §2.17): the initiator→responder SA's
/// keys are taken first, then the responder→initiator SA's.
#[derive(Debug, Clone)]
pub struct ChildSaKeys {
    /// Protects traffic from the IKE initiator to the responder.
    pub initiator_to_responder: EspDirectionKeys,
    /// Protects traffic from the IKE responder to the initiator.
    pub responder_to_initiator: EspDirectionKeys,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_bytes() {
        let s = SecretBytes::from_slice(&[0xAB; 4]);
        let d = format!("{s:?}");
        assert!(!d.contains("ab") && !d.contains("AB") && !d.contains("171"));
        assert!(d.contains("4 bytes"));
    }
}
