//! Negotiable algorithms: typed, each mapped to and from its IANA transform ID (RFC 7296 §3.3.2)
//! and knowing the sizes the key schedule and the SK payload need.
//!
//! Only algorithms we are willing to use are representable; anything else stays a raw
//! [`crate::codec::enums`] value that the proposal selection simply never picks.

use aws_lc_rs::hmac;

use crate::codec::enums::{DhId, EncrId, EsnId, IntegId, PrfId};

/// An encryption transform (type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encr {
    /// AES-GCM with a 16-octet ICV, 128-bit key (RFC 5282 / RFC 4106). AEAD.
    AesGcm16_128,
    /// AES-GCM with a 16-octet ICV, 256-bit key. AEAD.
    AesGcm16_256,
    /// AES-CBC, 128-bit key (RFC 3602). Needs an integrity transform.
    AesCbc128,
    /// AES-CBC, 256-bit key.
    AesCbc256,
}

impl Encr {
    /// Every supported value, strongest first.
    pub const ALL: [Encr; 4] = [
        Encr::AesGcm16_256,
        Encr::AesGcm16_128,
        Encr::AesCbc256,
        Encr::AesCbc128,
    ];

    /// The IANA transform ID.
    pub fn id(self) -> EncrId {
        match self {
            Encr::AesGcm16_128 | Encr::AesGcm16_256 => EncrId::AES_GCM_16,
            Encr::AesCbc128 | Encr::AesCbc256 => EncrId::AES_CBC,
        }
    }

    /// The Key Length attribute value in bits (always sent: these are variable-length ciphers).
    pub fn key_length_attr(self) -> u16 {
        match self {
            Encr::AesGcm16_128 | Encr::AesCbc128 => 128,
            Encr::AesGcm16_256 | Encr::AesCbc256 => 256,
        }
    }

    /// Maps a transform ID and its Key Length attribute back; `None` for anything unsupported
    /// (including a missing key length, which RFC 5282/3602 make mandatory for these IDs).
    pub fn from_id(id: EncrId, key_length_bits: Option<u16>) -> Option<Encr> {
        match (id, key_length_bits) {
            (EncrId::AES_GCM_16, Some(128)) => Some(Encr::AesGcm16_128),
            (EncrId::AES_GCM_16, Some(256)) => Some(Encr::AesGcm16_256),
            (EncrId::AES_CBC, Some(128)) => Some(Encr::AesCbc128),
            (EncrId::AES_CBC, Some(256)) => Some(Encr::AesCbc256),
            _ => None,
        }
    }

    /// Whether this is an AEAD (no separate integrity transform, no SK_a keys).
    pub fn is_aead(self) -> bool {
        matches!(self, Encr::AesGcm16_128 | Encr::AesGcm16_256)
    }

    /// The cipher key length in octets, without any salt.
    pub fn key_len(self) -> usize {
        usize::from(self.key_length_attr() / 8)
    }

    /// The implicit salt length (RFC 5282 §7.1: 4 octets for GCM, taken from the key material).
    pub fn salt_len(self) -> usize {
        if self.is_aead() { 4 } else { 0 }
    }

    /// Octets of key material this transform takes from `prf+` (key plus salt).
    pub fn keymat_len(self) -> usize {
        self.key_len() + self.salt_len()
    }

    /// The explicit IV length carried in every SK payload / ESP packet.
    pub fn iv_len(self) -> usize {
        if self.is_aead() { 8 } else { 16 }
    }

    /// The AEAD tag length (0 for non-AEAD ciphers: the integrity transform supplies the ICV).
    pub fn icv_len(self) -> usize {
        if self.is_aead() { 16 } else { 0 }
    }

    /// Plaintext alignment for padding: the cipher block for CBC, 1 for GCM (a stream mode).
    pub fn block_len(self) -> usize {
        if self.is_aead() { 1 } else { 16 }
    }
}

/// A pseudo-random function (type 2). Only HMAC-SHA2 (RFC 4868).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Prf {
    /// PRF_HMAC_SHA2_256.
    HmacSha256,
    /// PRF_HMAC_SHA2_384.
    HmacSha384,
    /// PRF_HMAC_SHA2_512.
    HmacSha512,
}

impl Prf {
    /// Every supported value.
    pub const ALL: [Prf; 3] = [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512];

    /// The IANA transform ID.
    pub fn id(self) -> PrfId {
        match self {
            Prf::HmacSha256 => PrfId::HMAC_SHA2_256,
            Prf::HmacSha384 => PrfId::HMAC_SHA2_384,
            Prf::HmacSha512 => PrfId::HMAC_SHA2_512,
        }
    }

    /// Maps a transform ID back; `None` if unsupported.
    pub fn from_id(id: PrfId) -> Option<Prf> {
        Self::ALL.into_iter().find(|p| p.id() == id)
    }

    /// Output length in octets.
    pub fn output_len(self) -> usize {
        match self {
            Prf::HmacSha256 => 32,
            Prf::HmacSha384 => 48,
            Prf::HmacSha512 => 64,
        }
    }

    /// The preferred key length: SK_d, SK_pi and SK_pr have this size (RFC 7296 §2.14; for
    /// HMAC-SHA2 it equals the output length, RFC 4868 §2.1.2).
    pub fn key_len(self) -> usize {
        self.output_len()
    }

    pub(crate) fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            Prf::HmacSha256 => hmac::HMAC_SHA256,
            Prf::HmacSha384 => hmac::HMAC_SHA384,
            Prf::HmacSha512 => hmac::HMAC_SHA512,
        }
    }
}

/// An integrity transform (type 3): HMAC-SHA2 truncated to half its output (RFC 4868).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Integ {
    /// AUTH_HMAC_SHA2_256_128.
    HmacSha256_128,
    /// AUTH_HMAC_SHA2_384_192.
    HmacSha384_192,
    /// AUTH_HMAC_SHA2_512_256.
    HmacSha512_256,
}

impl Integ {
    /// Every supported value.
    pub const ALL: [Integ; 3] = [
        Integ::HmacSha256_128,
        Integ::HmacSha384_192,
        Integ::HmacSha512_256,
    ];

    /// The IANA transform ID.
    pub fn id(self) -> IntegId {
        match self {
            Integ::HmacSha256_128 => IntegId::HMAC_SHA2_256_128,
            Integ::HmacSha384_192 => IntegId::HMAC_SHA2_384_192,
            Integ::HmacSha512_256 => IntegId::HMAC_SHA2_512_256,
        }
    }

    /// Maps a transform ID back; `None` if unsupported.
    pub fn from_id(id: IntegId) -> Option<Integ> {
        Self::ALL.into_iter().find(|i| i.id() == id)
    }

    /// Key length in octets (the full hash output, RFC 4868 §2.1.1).
    pub fn key_len(self) -> usize {
        match self {
            Integ::HmacSha256_128 => 32,
            Integ::HmacSha384_192 => 48,
            Integ::HmacSha512_256 => 64,
        }
    }

    /// The truncated ICV length in octets.
    pub fn icv_len(self) -> usize {
        self.key_len() / 2
    }

    /// The PRF with the same hash: what strongSwan implies when a proposal names only `sha256`.
    pub fn matching_prf(self) -> Prf {
        match self {
            Integ::HmacSha256_128 => Prf::HmacSha256,
            Integ::HmacSha384_192 => Prf::HmacSha384,
            Integ::HmacSha512_256 => Prf::HmacSha512,
        }
    }

    pub(crate) fn hmac_alg(self) -> hmac::Algorithm {
        self.matching_prf().hmac_alg()
    }
}

/// A key exchange method (type 4, "Diffie-Hellman group").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeGroup {
    /// 2048-bit MODP group 14 (RFC 3526).
    Modp2048,
    /// 3072-bit MODP group 15.
    Modp3072,
    /// 4096-bit MODP group 16.
    Modp4096,
    /// NIST P-256, group 19 (RFC 5903).
    Ecp256,
    /// NIST P-384, group 20.
    Ecp384,
    /// NIST P-521, group 21.
    Ecp521,
    /// Curve25519, group 31 (RFC 8031).
    Curve25519,
}

impl KeGroup {
    /// Every supported value.
    pub const ALL: [KeGroup; 7] = [
        KeGroup::Curve25519,
        KeGroup::Ecp256,
        KeGroup::Ecp384,
        KeGroup::Ecp521,
        KeGroup::Modp2048,
        KeGroup::Modp3072,
        KeGroup::Modp4096,
    ];

    /// The IANA transform ID (the KE payload's "Diffie-Hellman Group Num").
    pub fn id(self) -> DhId {
        match self {
            KeGroup::Modp2048 => DhId::MODP2048,
            KeGroup::Modp3072 => DhId::MODP3072,
            KeGroup::Modp4096 => DhId::MODP4096,
            KeGroup::Ecp256 => DhId::ECP256,
            KeGroup::Ecp384 => DhId::ECP384,
            KeGroup::Ecp521 => DhId::ECP521,
            KeGroup::Curve25519 => DhId::CURVE25519,
        }
    }

    /// Maps a transform ID back; `None` if unsupported.
    pub fn from_id(id: DhId) -> Option<KeGroup> {
        Self::ALL.into_iter().find(|g| g.id() == id)
    }

    /// Length of the KE payload's key exchange data for this group.
    pub fn public_value_len(self) -> usize {
        match self {
            KeGroup::Modp2048 => 256,
            KeGroup::Modp3072 => 384,
            KeGroup::Modp4096 => 512,
            // RFC 5903 §7: x || y, each the field size, without the SEC1 0x04 prefix.
            KeGroup::Ecp256 => 64,
            KeGroup::Ecp384 => 96,
            KeGroup::Ecp521 => 132,
            KeGroup::Curve25519 => 32,
        }
    }

    /// Length of the shared secret g^ir.
    pub fn shared_secret_len(self) -> usize {
        match self {
            KeGroup::Modp2048 | KeGroup::Modp3072 | KeGroup::Modp4096 => self.public_value_len(),
            // RFC 5903 §7: only the x coordinate.
            KeGroup::Ecp256 | KeGroup::Ecp384 | KeGroup::Ecp521 => self.public_value_len() / 2,
            KeGroup::Curve25519 => 32,
        }
    }
}

/// Extended sequence numbers (type 5), for ESP only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Esn {
    /// 32-bit sequence numbers.
    No,
    /// 64-bit extended sequence numbers.
    Yes,
}

impl Esn {
    /// The IANA transform ID.
    pub fn id(self) -> EsnId {
        match self {
            Esn::No => EsnId::NO_ESN,
            Esn::Yes => EsnId::ESN,
        }
    }

    /// Maps a transform ID back.
    pub fn from_id(id: EsnId) -> Option<Esn> {
        match id {
            EsnId::NO_ESN => Some(Esn::No),
            EsnId::ESN => Some(Esn::Yes),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for e in Encr::ALL {
            assert_eq!(Encr::from_id(e.id(), Some(e.key_length_attr())), Some(e));
        }
        assert_eq!(Encr::from_id(EncrId::AES_GCM_16, None), None);
        assert_eq!(Encr::from_id(EncrId::TRIPLE_DES, None), None);
        for p in Prf::ALL {
            assert_eq!(Prf::from_id(p.id()), Some(p));
        }
        assert_eq!(Prf::from_id(PrfId::HMAC_SHA1), None);
        for i in Integ::ALL {
            assert_eq!(Integ::from_id(i.id()), Some(i));
        }
        assert_eq!(Integ::from_id(IntegId::HMAC_SHA1_96), None);
        for g in KeGroup::ALL {
            assert_eq!(KeGroup::from_id(g.id()), Some(g));
        }
        assert_eq!(KeGroup::from_id(DhId::MODP1024), None);
        assert_eq!(Esn::from_id(Esn::Yes.id()), Some(Esn::Yes));
    }

    #[test]
    fn sizes() {
        assert_eq!(Encr::AesGcm16_256.keymat_len(), 36);
        assert_eq!(Encr::AesCbc128.keymat_len(), 16);
        assert_eq!(Integ::HmacSha384_192.icv_len(), 24);
        assert_eq!(KeGroup::Ecp521.public_value_len(), 132);
    }
}
