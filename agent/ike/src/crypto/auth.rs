//! The AUTH payload computation (RFC 7296 §2.15).
//!
//! The signed octets are `RealMessage | NonceOfPeer | prf(SK_p, RestOfIDPayload)`, where
//! RealMessage is our first message (IKE_SA_INIT request or response) exactly as sent, and
//! RestOfIDPayload is the ID payload body after its generic header (ID Type, three reserved
//! octets, identification data). SK_p is SK_pi for the initiator's AUTH and SK_pr for the
//! responder's.

use aws_lc_rs::constant_time;

use super::alg::Prf;
use super::kdf;
use super::keys::SecretBytes;

/// The pad string for shared-key authentication (RFC 7296 §2.15), without a NUL terminator.
pub const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// Builds the octets that are signed (or MACed) for an AUTH payload.
pub fn signed_octets(
    prf: Prf,
    real_message: &[u8],
    nonce_of_peer: &[u8],
    sk_p: &[u8],
    rest_of_id_payload: &[u8],
) -> Vec<u8> {
    let maced_id = kdf::prf(prf, sk_p, rest_of_id_payload);
    let mut out = Vec::with_capacity(real_message.len() + nonce_of_peer.len() + maced_id.len());
    out.extend_from_slice(real_message);
    out.extend_from_slice(nonce_of_peer);
    out.extend_from_slice(maced_id.as_bytes());
    out
}

/// The AUTH data for shared-key authentication:
/// `prf(prf(Shared Secret, "Key Pad for IKEv2"), <signed octets>)`.
pub fn psk_auth(prf: Prf, shared_secret: &[u8], signed_octets: &[u8]) -> SecretBytes {
    let key = kdf::prf(prf, shared_secret, KEY_PAD);
    kdf::prf(prf, key.as_bytes(), signed_octets)
}

/// Verifies a peer's shared-key AUTH data in constant time.
pub fn verify_psk_auth(
    prf: Prf,
    shared_secret: &[u8],
    signed_octets: &[u8],
    received: &[u8],
) -> bool {
    let expected = psk_auth(prf, shared_secret, signed_octets);
    constant_time::verify_slices_are_equal(expected.as_bytes(), received).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::hmac;

    #[test]
    fn psk_matches_hand_composed_hmac_and_verifies() {
        let so = signed_octets(Prf::HmacSha256, b"MSG", b"NONCE", b"skp", b"\x02\0\0\0gw1");
        let mac_id = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, b"skp"), b"\x02\0\0\0gw1");
        assert_eq!(&so[..8], b"MSGNONCE");
        assert_eq!(&so[8..], mac_id.as_ref());

        let k = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"secret"),
            b"Key Pad for IKEv2",
        );
        let want = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()), &so);
        let auth = psk_auth(Prf::HmacSha256, b"secret", &so);
        assert_eq!(auth.as_bytes(), want.as_ref());
        assert!(verify_psk_auth(
            Prf::HmacSha256,
            b"secret",
            &so,
            want.as_ref()
        ));
        assert!(!verify_psk_auth(
            Prf::HmacSha256,
            b"Secret",
            &so,
            want.as_ref()
        ));
        let mut bad = want.as_ref().to_vec();
        bad[31] ^= 1;
        assert!(!verify_psk_auth(Prf::HmacSha256, b"secret", &so, &bad));
        assert!(!verify_psk_auth(
            Prf::HmacSha256,
            b"secret",
            &so,
            &bad[..16]
        ));
    }
}
