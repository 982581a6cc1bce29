//! Open wire enums (rustls `msgs/enums.rs` style): a newtype over the wire integer with named
//! constants, so an unknown value parses, round-trips and can be answered, never panics.

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident($repr:ty) { $($(#[$vmeta:meta])* $variant:ident = $value:expr),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $repr);

        impl $name {
            $($(#[$vmeta])* pub const $variant: Self = Self($value);)*

            /// The IANA name, or `None` for a value this implementation does not know.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$variant => Some(stringify!($variant)),)*
                    _ => None,
                }
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self { Self(v) }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> Self { v.0 }
        }
    };
}
pub(crate) use wire_enum;

wire_enum! {
    /// Transform type (RFC 7296 §3.3.2).
    TransformType(u8) {
        ENCR = 1,
        PRF = 2,
        INTEG = 3,
        /// Renamed "Key Exchange Method" by RFC 9370.
        DH = 4,
        ESN = 5,
        /// RFC 9370 additional key exchanges 1..7.
        ADDKE1 = 6,
        ADDKE2 = 7,
        ADDKE3 = 8,
        ADDKE4 = 9,
        ADDKE5 = 10,
        ADDKE6 = 11,
        ADDKE7 = 12,
    }
}

wire_enum! {
    /// Transform type 1 IDs (IANA "Transform Type 1 - Encryption Algorithm Transform IDs").
    EncrId(u16) {
        DES_IV64 = 1,
        DES = 2,
        TRIPLE_DES = 3,
        NULL = 11,
        AES_CBC = 12,
        AES_CTR = 13,
        AES_CCM_8 = 14,
        AES_CCM_12 = 15,
        AES_CCM_16 = 16,
        AES_GCM_8 = 18,
        AES_GCM_12 = 19,
        AES_GCM_16 = 20,
        NULL_AUTH_AES_GMAC = 21,
        CHACHA20_POLY1305 = 28,
    }
}

wire_enum! {
    /// Transform type 2 IDs (pseudo-random functions).
    PrfId(u16) {
        HMAC_MD5 = 1,
        HMAC_SHA1 = 2,
        AES128_XCBC = 4,
        HMAC_SHA2_256 = 5,
        HMAC_SHA2_384 = 6,
        HMAC_SHA2_512 = 7,
        AES128_CMAC = 8,
    }
}

wire_enum! {
    /// Transform type 3 IDs (integrity algorithms).
    IntegId(u16) {
        NONE = 0,
        HMAC_MD5_96 = 1,
        HMAC_SHA1_96 = 2,
        AES_XCBC_96 = 5,
        HMAC_SHA2_256_128 = 12,
        HMAC_SHA2_384_192 = 13,
        HMAC_SHA2_512_256 = 14,
    }
}

wire_enum! {
    /// Transform type 4 IDs (Diffie-Hellman groups / key exchange methods).
    DhId(u16) {
        NONE = 0,
        MODP768 = 1,
        MODP1024 = 2,
        MODP1536 = 5,
        MODP2048 = 14,
        MODP3072 = 15,
        MODP4096 = 16,
        MODP6144 = 17,
        MODP8192 = 18,
        ECP256 = 19,
        ECP384 = 20,
        ECP521 = 21,
        CURVE25519 = 31,
        CURVE448 = 32,
        /// RFC 9370 / draft-ietf-ipsecme-ikev2-mlkem.
        ML_KEM_512 = 35,
        ML_KEM_768 = 36,
        ML_KEM_1024 = 37,
    }
}

wire_enum! {
    /// Transform type 5 IDs (extended sequence numbers).
    EsnId(u16) {
        NO_ESN = 0,
        ESN = 1,
    }
}

wire_enum! {
    /// Transform attribute types (RFC 7296 §3.3.5); only Key Length is defined.
    TransformAttrType(u16) {
        KEY_LENGTH = 14,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_values_round_trip_and_print() {
        let d = DhId::from(4242);
        assert_eq!(u16::from(d), 4242);
        assert_eq!(d.name(), None);
        assert_eq!(format!("{d:?}"), "DhId(4242)");
        assert_eq!(format!("{:?}", DhId::CURVE25519), "CURVE25519");
    }
}
