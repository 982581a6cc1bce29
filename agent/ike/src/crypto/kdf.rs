//! The IKEv2 key schedule: `prf`, `prf+` (RFC 7296 §2.13), SKEYSEED and the seven IKE SA keys
//! (§2.14), CHILD SA keying material (§2.17) and the IKE SA rekey SKEYSEED (§2.18).

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

use super::alg::{Encr, Integ, Prf};
use super::keys::{ChildSaKeys, EspDirectionKeys, IkeSaKeys, SecretBytes};
use super::{Error, Result};

/// `prf(key, data)`.
pub fn prf(prf: Prf, key: &[u8], data: &[u8]) -> SecretBytes {
    prf_with(prf.hmac_alg(), key, &[data])
}

/// `prf+(key, seed)` truncated to `len` octets.
///
/// # Errors
/// [`Error::PrfPlusTooLong`] if `len` needs more than 255 iterations (the counter is one octet).
pub fn prf_plus(prf: Prf, key: &[u8], seed: &[u8], len: usize) -> Result<SecretBytes> {
    prf_plus_with(prf.hmac_alg(), key, seed, len)
}

/// SKEYSEED = prf(Ni | Nr, g^ir) for the initial IKE SA (RFC 7296 §2.14). With HMAC the PRF
/// key is the full nonce concatenation (the "first 64 bits" rule is only for fixed-key PRFs).
pub fn skeyseed(prf: Prf, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> SecretBytes {
    skeyseed_with(prf.hmac_alg(), ni, nr, g_ir)
}

/// SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) for a rekeyed IKE SA (RFC 7296 §2.18).
///
/// `prf` must be the **old** IKE SA's PRF: the rekey exchange belongs to the old SA. The new
/// SA's PRF is then used by [`derive_ike_sa_keys`].
pub fn skeyseed_rekey(
    prf: Prf,
    old_sk_d: &[u8],
    g_ir_new: &[u8],
    ni: &[u8],
    nr: &[u8],
) -> SecretBytes {
    prf_with(prf.hmac_alg(), old_sk_d, &[g_ir_new, ni, nr])
}

/// Derives {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} =
/// prf+(SKEYSEED, Ni | Nr | SPIi | SPIr), sized from the negotiated transforms.
///
/// `integ` must be `None` exactly when `encr` is an AEAD.
///
/// # Errors
/// [`Error::Unsupported`] for an inconsistent cipher/integrity pair.
#[allow(clippy::too_many_arguments)]
pub fn derive_ike_sa_keys(
    prf: Prf,
    skeyseed: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    encr: Encr,
    integ: Option<Integ>,
) -> Result<IkeSaKeys> {
    let integ_len = integ_key_len(encr, integ)?;
    let enc_len = encr.keymat_len();
    let p_len = prf.key_len();
    let total = p_len + 2 * integ_len + 2 * enc_len + 2 * p_len;
    let seed = concat(&[ni, nr, spi_i, spi_r]);
    let km = prf_plus(prf, skeyseed, &seed, total)?;
    let mut parts = Splitter::new(km.as_bytes());
    Ok(IkeSaKeys {
        sk_d: parts.take(p_len)?,
        sk_ai: parts.take(integ_len)?,
        sk_ar: parts.take(integ_len)?,
        sk_ei: parts.take(enc_len)?,
        sk_er: parts.take(enc_len)?,
        sk_pi: parts.take(p_len)?,
        sk_pr: parts.take(p_len)?,
    })
}

/// CHILD SA keying material: KEYMAT = prf+(SK_d, [g^ir (new)] | Ni | Nr) (RFC 7296 §2.17),
/// split as (encr key [+ salt], integ key) for initiator→responder, then the same for
/// responder→initiator.
///
/// `g_ir_new` is the CREATE_CHILD_SA exchange's shared secret when PFS is used; `ni`/`nr` are
/// the nonces of the exchange that creates the SA (IKE_SA_INIT's for the first CHILD SA).
///
/// # Errors
/// [`Error::Unsupported`] for an inconsistent cipher/integrity pair.
pub fn derive_child_sa_keys(
    prf: Prf,
    sk_d: &[u8],
    g_ir_new: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    encr: Encr,
    integ: Option<Integ>,
) -> Result<ChildSaKeys> {
    let integ_len = integ_key_len(encr, integ)?;
    let enc_len = encr.keymat_len();
    let seed = concat(&[g_ir_new.unwrap_or(&[]), ni, nr]);
    let km = prf_plus(prf, sk_d, &seed, 2 * (enc_len + integ_len))?;
    let mut parts = Splitter::new(km.as_bytes());
    let i_to_r = EspDirectionKeys {
        encr: parts.take(enc_len)?,
        integ: parts.take(integ_len)?,
    };
    let r_to_i = EspDirectionKeys {
        encr: parts.take(enc_len)?,
        integ: parts.take(integ_len)?,
    };
    Ok(ChildSaKeys {
        initiator_to_responder: i_to_r,
        responder_to_initiator: r_to_i,
    })
}

fn integ_key_len(encr: Encr, integ: Option<Integ>) -> Result<usize> {
    match (encr.is_aead(), integ) {
        (true, None) => Ok(0),
        (false, Some(i)) => Ok(i.key_len()),
        (true, Some(_)) => Err(Error::Unsupported(
            "integrity transform with an AEAD cipher",
        )),
        (false, None) => Err(Error::Unsupported("non-AEAD cipher without integrity")),
    }
}

fn concat(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(parts.iter().map(|p| p.len()).sum()));
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

/// Takes consecutive slices off key material without panicking.
struct Splitter<'a> {
    rest: &'a [u8],
}

impl<'a> Splitter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Result<SecretBytes> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or(Error::Internal)?;
        self.rest = tail;
        Ok(SecretBytes::from_slice(head))
    }
}

// The HMAC-generic core, also used by the tests with SHA-1, for which the published NIST
// CAVS IKEv2 vectors give every intermediate value (SHA-1 is never negotiable: see `Prf`).

pub(crate) fn prf_with(alg: hmac::Algorithm, key: &[u8], data: &[&[u8]]) -> SecretBytes {
    let key = hmac::Key::new(alg, key);
    let mut ctx = hmac::Context::with_key(&key);
    for d in data {
        ctx.update(d);
    }
    SecretBytes::from_slice(ctx.sign().as_ref())
}

pub(crate) fn skeyseed_with(
    alg: hmac::Algorithm,
    ni: &[u8],
    nr: &[u8],
    g_ir: &[u8],
) -> SecretBytes {
    let key = concat(&[ni, nr]);
    prf_with(alg, &key, &[g_ir])
}

pub(crate) fn prf_plus_with(
    alg: hmac::Algorithm,
    key: &[u8],
    seed: &[u8],
    len: usize,
) -> Result<SecretBytes> {
    let key = hmac::Key::new(alg, key);
    let out_len = alg.digest_algorithm().output_len();
    if len.div_ceil(out_len) > 255 {
        return Err(Error::PrfPlusTooLong);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len + out_len));
    let mut prev: Option<hmac::Tag> = None;
    let mut counter: u8 = 1;
    while out.len() < len {
        // T(n) = prf(K, T(n-1) | S | n), with T(0) empty.
        let mut ctx = hmac::Context::with_key(&key);
        if let Some(t) = &prev {
            ctx.update(t.as_ref());
        }
        ctx.update(seed);
        ctx.update(&[counter]);
        let t = ctx.sign();
        out.extend_from_slice(t.as_ref());
        prev = Some(t);
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    Ok(SecretBytes::new(core::mem::take(&mut *out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::hex;

    // NIST CAVP SP 800-135 IKEv2 KDF sample values, as carried in NSS's
    // gtests/common/testvectors/ike-sha256-vectors.h and ike-sha384-vectors.h (cases 6, 7, 8:
    // SKEYSEED, SKEYSEED(rekey) and the 132-octet DKM of one CAVS test case).
    struct Cavs {
        alg: hmac::Algorithm,
        ni: &'static str,
        nr: &'static str,
        spi_i: &'static str,
        spi_r: &'static str,
        g_ir: &'static str,
        g_ir_new: &'static str,
        skeyseed: &'static str,
        dkm: &'static str,
        skeyseed_rekey: &'static str,
    }

    const SHA256: Cavs = Cavs {
        alg: hmac::HMAC_SHA256,
        ni: "3f302be1abcb28e1",
        nr: "8c332ee006064c9b",
        spi_i: "40dac39e1e1a8640",
        spi_r: "8619a1cf9a6e4c07",
        g_ir: "0f4d257d7a58fc4545c7d7a88119eee5d5c9690c5b4c989171d3abbfd99d1d29",
        g_ir_new: "25f3b12d6f282739256e39bf54eda53b60ffcf379bb7bcc90c27b4c4c578616c",
        skeyseed: "5f00d1bd2c58ec224b1e6b71fa0f19a1faa7a193952c444411b47c1a9d8ba6fe",
        dkm: "0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ece98aca531
              188d16041b3bb936d2dbb3b4993a6e768a809160de45d0283f273a6cdf6854379e31be72b
              8d3d1fa990cf9c5b015ca9f918a7df6253c958114a09d4e1c19bdcd4db14b29d98db1a74a
              d405c588662c14a04d0d36aa4ab55e90f8986d12d4aad",
        skeyseed_rekey: "2d63f6debc92048b4fef3889c4c99ca67d6496e0fac14a2bca9a2d6566ff2398",
    };

    const SHA384: Cavs = Cavs {
        alg: hmac::HMAC_SHA384,
        ni: "fd1b572a8e735591",
        nr: "6013b0ef88dacd3d",
        spi_i: "2116ad07ce61f749",
        spi_r: "24880e55f11a65b7",
        g_ir: "d3288cd87565101e88fe3bad918f31939d8dd26ff1071f8b2d7f447524e58d7c",
        g_ir_new: "3358f620539473aee8d07e779764c4c6a9aabddc79a28e136b3bac021dbde44a",
        skeyseed: "69fe7a1ac94adaeb711295f5fe004b1a8d6a0b65d05692758ce8ad2f7a45f59d7d0b596f5
                   1f7dfcf3330061888f6a94f",
        dkm: "4f904c2025c90c817ea5ff9b662a6fdb445a73b57cdf09eacd379b95e1f03cacb04cd6dee
              da4f952191dd9bc1f7a9502471a648d74dc06d38112de48a42501f6b1a3ad55c2099cd9a6
              48e5f17e5bf3e34bf9b5953decb768a34f875fe2b78dca0c2fcca81ec1a412006dfaed38f
              a06882e61f4c148105fb8e231fdb33c4d484c001721d4",
        skeyseed_rekey: "e0548c1682e13bce454026b3b1bdf42985b24e4e7408095a7c529de38c3d1fcb04c9fe686
                         8042a34c9614c6c99e3fcea",
    };

    fn run_cavs(v: &Cavs) {
        let (ni, nr) = (hex(v.ni), hex(v.nr));
        let seed = skeyseed_with(v.alg, &ni, &nr, &hex(v.g_ir));
        assert_eq!(seed.as_bytes(), hex(v.skeyseed).as_slice());
        let dkm_seed = [ni.clone(), nr.clone(), hex(v.spi_i), hex(v.spi_r)].concat();
        let dkm = prf_plus_with(v.alg, seed.as_bytes(), &dkm_seed, 132).unwrap();
        assert_eq!(dkm.as_bytes(), hex(v.dkm).as_slice());
        // Shorter outputs are prefixes (NSS cases 9 and 10 check 32/48 and 15 octets).
        let short = prf_plus_with(v.alg, seed.as_bytes(), &dkm_seed, 15).unwrap();
        assert_eq!(short.as_bytes(), &hex(v.dkm)[..15]);
        // SK_d is the first prf-output-length octets of DKM.
        let sk_d = &dkm.as_bytes()[..v.alg.digest_algorithm().output_len()];
        let rekey = prf_with(v.alg, sk_d, &[&hex(v.g_ir_new), &ni, &nr]);
        assert_eq!(rekey.as_bytes(), hex(v.skeyseed_rekey).as_slice());
    }

    #[test]
    fn nist_cavs_ikev2_kdf_hmac_sha256() {
        run_cavs(&SHA256);
    }

    #[test]
    fn nist_cavs_ikev2_kdf_hmac_sha384() {
        run_cavs(&SHA384);
    }

    /// Full CAVS chain with the CHILD SA outputs, HMAC-SHA1: the first case of the NIST
    /// SP 800-135 IKEv2 response file, as reproduced in libreswan's CAVS test driver comment.
    #[test]
    fn nist_cavs_ikev2_kdf_hmac_sha1_full_chain() {
        let alg = hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY;
        let g_ir = hex("4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52");
        let g_ir_new = hex("863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330");
        let ni = hex("32b50d5f4a3763f3");
        let nr = hex("9206a04b26564cb1");
        let spi_i = hex("34c9e7c188868785");
        let spi_r = hex("3ff77d760d2b2199");
        let seed = skeyseed_with(alg, &ni, &nr, &g_ir);
        assert_eq!(
            seed.as_bytes(),
            hex("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7")
        );
        let s = [ni.clone(), nr.clone(), spi_i, spi_r].concat();
        let dkm = prf_plus_with(alg, seed.as_bytes(), &s, 132).unwrap();
        assert_eq!(
            dkm.as_bytes(),
            hex(
                "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a06
                 2768b76606f9fa5e992204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b7
                 02c979fa280870d2ed41efa9c549fd11198af1670b143d384bd275c5f594cf266b05ebadca855e
                 4249520a441a81157435a7a56cc4"
            )
        );
        let sk_d = &dkm.as_bytes()[..20];
        let nn = [ni.clone(), nr.clone()].concat();
        let child = prf_plus_with(alg, sk_d, &nn, 132).unwrap();
        assert_eq!(
            child.as_bytes(),
            hex(
                "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdabd
                 9560b2d5e092d1f24e2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb
                 35cf5580b1e521a8fe20754a2d883ba0c2cf285f524aea6545b33106bc03e614296d319d41d4b5
                 0b3f510b1c0a22f3e664994d234cb4"
            )
        );
        let pfs = [g_ir_new.clone(), nn].concat();
        let child_dh = prf_plus_with(alg, sk_d, &pfs, 132).unwrap();
        assert_eq!(
            child_dh.as_bytes(),
            hex(
                "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c66232
                 eab4b3ab14c400a5197dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4
                 a5080d7d4b5666023a8bbb5ffb7857240f9a05884d1b7d2f933708450b7b3288f1fc863ab49fa9
                 01227cffc06e27899c7054d56fd74c"
            )
        );
        let rekey = prf_with(alg, sk_d, &[&g_ir_new, &ni, &nr]);
        assert_eq!(
            rekey.as_bytes(),
            hex("63e81194946ebd05df7df5ebf5d8750056bf1f1d")
        );
    }

    #[test]
    fn public_api_matches_cavs_and_splits_in_order() {
        let v = &SHA256;
        let (ni, nr) = (hex(v.ni), hex(v.nr));
        let seed = skeyseed(Prf::HmacSha256, &ni, &nr, &hex(v.g_ir));
        assert_eq!(seed.as_bytes(), hex(v.skeyseed).as_slice());
        let spi_i: [u8; 8] = hex(v.spi_i).try_into().unwrap();
        let spi_r: [u8; 8] = hex(v.spi_r).try_into().unwrap();
        // AES-CBC-128 + HMAC-SHA256-128: 32 + 2*32 + 2*16 + 2*32 = 192 octets of DKM.
        let keys = derive_ike_sa_keys(
            Prf::HmacSha256,
            seed.as_bytes(),
            &ni,
            &nr,
            &spi_i,
            &spi_r,
            Encr::AesCbc128,
            Some(Integ::HmacSha256_128),
        )
        .unwrap();
        let dkm = hex(v.dkm);
        assert_eq!(keys.sk_d.as_bytes(), &dkm[..32]);
        assert_eq!(keys.sk_ai.as_bytes(), &dkm[32..64]);
        assert_eq!(keys.sk_ar.as_bytes(), &dkm[64..96]);
        assert_eq!(keys.sk_ei.as_bytes(), &dkm[96..112]);
        assert_eq!(keys.sk_er.as_bytes(), &dkm[112..128]);
        assert_eq!(keys.sk_pi.as_bytes().len(), 32);
        assert_eq!(keys.sk_pi.as_bytes()[..4], dkm[128..132]);
        let rekey = skeyseed_rekey(
            Prf::HmacSha256,
            keys.sk_d.as_bytes(),
            &hex(v.g_ir_new),
            &ni,
            &nr,
        );
        assert_eq!(rekey.as_bytes(), hex(v.skeyseed_rekey).as_slice());

        // AEAD: no SK_a, SK_e carries the salt.
        let aead = derive_ike_sa_keys(
            Prf::HmacSha256,
            seed.as_bytes(),
            &ni,
            &nr,
            &spi_i,
            &spi_r,
            Encr::AesGcm16_256,
            None,
        )
        .unwrap();
        assert!(aead.sk_ai.is_empty() && aead.sk_ar.is_empty());
        assert_eq!(aead.sk_ei.as_bytes(), &dkm[32..68]);
        assert_eq!(aead.sk_er.as_bytes(), &dkm[68..104]);
        assert!(
            derive_ike_sa_keys(
                Prf::HmacSha256,
                b"k",
                b"n",
                b"n",
                &[0; 8],
                &[0; 8],
                Encr::AesGcm16_256,
                Some(Integ::HmacSha256_128)
            )
            .is_err()
        );
    }

    #[test]
    fn child_sa_keys_split_initiator_first() {
        let sk_d = [7u8; 32];
        let k = derive_child_sa_keys(
            Prf::HmacSha256,
            &sk_d,
            Some(b"gir"),
            b"ni",
            b"nr",
            Encr::AesCbc256,
            Some(Integ::HmacSha256_128),
        )
        .unwrap();
        let km = prf_plus(Prf::HmacSha256, &sk_d, b"girninr", 2 * (32 + 32)).unwrap();
        let km = km.as_bytes();
        assert_eq!(k.initiator_to_responder.encr.as_bytes(), &km[..32]);
        assert_eq!(k.initiator_to_responder.integ.as_bytes(), &km[32..64]);
        assert_eq!(k.responder_to_initiator.encr.as_bytes(), &km[64..96]);
        assert_eq!(k.responder_to_initiator.integ.as_bytes(), &km[96..128]);
        let g = derive_child_sa_keys(
            Prf::HmacSha256,
            &sk_d,
            None,
            b"ni",
            b"nr",
            Encr::AesGcm16_128,
            None,
        )
        .unwrap();
        assert_eq!(g.initiator_to_responder.encr.len(), 20);
        assert!(g.initiator_to_responder.integ.is_empty());
    }

    #[test]
    fn prf_plus_limit() {
        assert!(prf_plus(Prf::HmacSha256, b"k", b"s", 255 * 32).is_ok());
        assert_eq!(
            prf_plus(Prf::HmacSha256, b"k", b"s", 255 * 32 + 1).unwrap_err(),
            Error::PrfPlusTooLong
        );
    }
}
