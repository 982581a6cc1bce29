//! Certificate authentication in IKE_AUTH (RFC 7296 §2.15, §3.6–3.8; RFC 7427): the CERT and
//! CERTREQ payloads we send, our Digital Signature AUTH payload, and the checks on the peer's
//! certificate chain, identity and signature.

use crate::codec::{
    AuthMethod, Authentication, CertEncoding, Certificate as CertPayload, CertificateRequest,
    HashAlgorithm, IdType, Identification, Payload,
};
use crate::config::CertificateAuth;
use crate::crypto::sign::{self, Curve, SignatureScheme};
use crate::crypto::x509::{AltName, Certificate, ChainError, validate_chain};
use crate::reason::Reason;

/// Most CERT payloads taken from the peer (its certificate and intermediates).
const MAX_PEER_CERTS: usize = 8;

/// CERTREQ naming our trust anchors by the SHA-1 hash of their public keys (encoding 4).
pub(crate) fn certreq(auth: &CertificateAuth) -> Option<Payload> {
    let authority: Vec<u8> = auth
        .ca
        .iter()
        .filter_map(|c| c.public_key_sha1().ok())
        .flatten()
        .collect();
    (!authority.is_empty()).then_some(Payload::CertificateRequest(CertificateRequest {
        encoding: CertEncoding::X509_SIGNATURE,
        authority,
    }))
}

/// One CERT payload per certificate of our chain, ours first.
pub(crate) fn cert_payloads(auth: &CertificateAuth) -> Vec<Payload> {
    auth.chain
        .iter()
        .map(|c| {
            Payload::Certificate(CertPayload {
                encoding: CertEncoding::X509_SIGNATURE,
                data: c.der().to_vec(),
            })
        })
        .collect()
}

/// The scheme we sign with: our key's preferred scheme whose hash the peer announced in
/// SIGNATURE_HASH_ALGORITHMS (for ECDSA the curve's own hash, for RSA PSS with SHA-256 first).
/// If the peer announced none of them, our preferred scheme all the same: the peer may still
/// verify it, and refusing it is the peer's call.
fn choose_scheme(auth: &CertificateAuth, peer_hashes: &[HashAlgorithm]) -> Option<SignatureScheme> {
    let ours = auth.key.schemes();
    ours.iter()
        .copied()
        .find(|s| peer_hashes.contains(&HashAlgorithm(s.hash_number())))
        .or_else(|| ours.first().copied())
}

/// Our AUTH payload: a Digital Signature (method 14) over the signed octets.
pub(crate) fn our_auth(
    auth: &CertificateAuth,
    peer_hashes: &[HashAlgorithm],
    octets: &[u8],
) -> Result<Authentication, Reason> {
    // None only for a key that can sign with nothing.
    let scheme = choose_scheme(auth, peer_hashes).ok_or(Reason::LocalCrypto)?;
    let sig = auth
        .key
        .sign(scheme, octets)
        .map_err(|_| Reason::LocalCrypto)?;
    Ok(Authentication {
        method: AuthMethod::DIGITAL_SIGNATURE,
        data: sign::encode_auth_data(scheme, &sig),
    })
}

/// Checks the peer: its certificate chain up to one of our trust anchors at `unix_time`, its
/// identity against that certificate, and its AUTH signature over `octets` with the
/// certificate's key. `certs` are the CERT payloads of the message, the peer's own first.
pub(crate) fn verify_peer(
    auth: &CertificateAuth,
    unix_time: Option<i64>,
    id: &Identification,
    certs: &[&CertPayload],
    auth_p: &Authentication,
    octets: &[u8],
) -> Result<(), Reason> {
    let mut x509 = certs
        .iter()
        .filter(|c| c.encoding == CertEncoding::X509_SIGNATURE)
        .take(MAX_PEER_CERTS)
        .map(|c| Certificate::from_der(&c.data));
    let leaf = match x509.next() {
        Some(Ok(c)) => c,
        _ => return Err(Reason::AuthenticationFailed),
    };
    let intermediates: Vec<Certificate> = x509.filter_map(Result::ok).collect();
    let now = unix_time.ok_or(Reason::ClockUnset)?;
    validate_chain(&leaf, &intermediates, &auth.ca, now).map_err(|e| match e {
        ChainError::NotYetValid => Reason::CertificateNotYetValid,
        ChainError::Expired => Reason::CertificateExpired,
        _ => Reason::AuthenticationFailed,
    })?;
    if !id_in_certificate(id, &leaf) {
        return Err(Reason::AuthenticationFailed);
    }
    let key = leaf
        .public_key()
        .map_err(|_| Reason::AuthenticationFailed)?;
    let checked = match auth_p.method {
        AuthMethod::DIGITAL_SIGNATURE => sign::parse_auth_data(&auth_p.data)
            .and_then(|(scheme, sig)| sign::verify(scheme, &key, octets, sig)),
        AuthMethod::ECDSA_SHA256_P256 => {
            sign::verify_ecdsa_fixed(Curve::P256, &key, octets, &auth_p.data)
        }
        AuthMethod::ECDSA_SHA384_P384 => {
            sign::verify_ecdsa_fixed(Curve::P384, &key, octets, &auth_p.data)
        }
        AuthMethod::ECDSA_SHA512_P521 => {
            sign::verify_ecdsa_fixed(Curve::P521, &key, octets, &auth_p.data)
        }
        // RSA_DIGITAL_SIGNATURE (1) is RSA with SHA-1: refused, as are PSK and the rest.
        _ => return Err(Reason::AuthenticationFailed),
    };
    checked.map_err(|_| Reason::AuthenticationFailed)
}

/// Whether the peer's ID payload names the certificate: its subject DN (the same name, RDN by
/// RDN, whatever string types either was written in), or a subjectAltName of the same kind
/// (DNS names and e-mail addresses without regard to case).
fn id_in_certificate(id: &Identification, cert: &Certificate) -> bool {
    if id.id_type == IdType::DER_ASN1_DN {
        return cert
            .subject_der()
            .is_ok_and(|dn| crate::dn::same(&dn, &id.data));
    }
    let Ok(names) = cert.alt_names() else {
        return false;
    };
    names.iter().any(|n| match n {
        AltName::Dns(d) => {
            id.id_type == IdType::FQDN && d.as_bytes().eq_ignore_ascii_case(&id.data)
        }
        AltName::Email(e) => {
            id.id_type == IdType::RFC822_ADDR && e.as_bytes().eq_ignore_ascii_case(&id.data)
        }
        AltName::Ip(a) => {
            (id.id_type == IdType::IPV4_ADDR || id.id_type == IdType::IPV6_ADDR) && *a == id.data
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::crypto::sign::SigningKey;
    use std::sync::Arc;

    const JAN_2030: i64 = 1_893_456_000;

    fn pem(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    fn material(leaf: &str, key: &str) -> CertificateAuth {
        let mut chain = pem(leaf);
        chain.extend(pem("intermediate.pem"));
        CertificateAuth::from_pem(&chain, &pem(key), &pem("ca.pem")).unwrap()
    }

    fn cert_payload(c: &Certificate) -> CertPayload {
        CertPayload {
            encoding: CertEncoding::X509_SIGNATURE,
            data: c.der().to_vec(),
        }
    }

    #[test]
    fn methods_other_than_sha2_signatures_are_refused() {
        let rsa = material("rsa.pem", "rsa.key");
        let ec = material("ecdsa.pem", "ecdsa.key");
        let octets = b"RealMessage | NonceOfPeer | prf(SK_p, IDr)";
        for (m, id) in [
            (&rsa, Identification::fqdn("rsa.example.com")),
            (&ec, Identification::fqdn("ecdsa.example.com")),
        ] {
            let certs: Vec<CertPayload> = m.chain.iter().map(cert_payload).collect();
            let refs: Vec<&CertPayload> = certs.iter().collect();
            let hashes = [HashAlgorithm::SHA2_384, HashAlgorithm::SHA2_256];
            let good = our_auth(m, &hashes, octets).unwrap();
            assert_eq!(good.method, AuthMethod::DIGITAL_SIGNATURE);
            verify_peer(m, Some(JAN_2030), &id, &refs, &good, octets).unwrap();
            // Other octets, another time, no clock, no certificate.
            let e = verify_peer(m, Some(JAN_2030), &id, &refs, &good, b"other");
            assert_eq!(e, Err(Reason::AuthenticationFailed));
            let e = verify_peer(
                m,
                Some(JAN_2030 + 20 * 365 * 86400),
                &id,
                &refs,
                &good,
                octets,
            );
            assert_eq!(e, Err(Reason::CertificateExpired));
            let e = verify_peer(m, None, &id, &refs, &good, octets);
            assert_eq!(e, Err(Reason::ClockUnset));
            let e = verify_peer(m, Some(JAN_2030), &id, &[], &good, octets);
            assert_eq!(e, Err(Reason::AuthenticationFailed));
            // The same signature bytes under RSA-with-SHA-1 (method 1) or as a MIC.
            let (_, sig) = sign::parse_auth_data(&good.data).unwrap();
            for method in [
                AuthMethod::RSA_DIGITAL_SIGNATURE,
                AuthMethod::SHARED_KEY_MIC,
            ] {
                let a = Authentication {
                    method,
                    data: sig.to_vec(),
                };
                let e = verify_peer(m, Some(JAN_2030), &id, &refs, &a, octets);
                assert_eq!(e, Err(Reason::AuthenticationFailed));
            }
        }
        // RFC 7427 with a SHA-1 AlgorithmIdentifier (sha1WithRSAEncryption) is refused.
        let certs: Vec<CertPayload> = rsa.chain.iter().map(cert_payload).collect();
        let refs: Vec<&CertPayload> = certs.iter().collect();
        let sha1_rsa = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05,
            0x00,
        ];
        let mut data = vec![15];
        data.extend_from_slice(&sha1_rsa);
        data.extend_from_slice(&[0; 256]);
        let a = Authentication {
            method: AuthMethod::DIGITAL_SIGNATURE,
            data,
        };
        let id = Identification::fqdn("rsa.example.com");
        assert_eq!(
            verify_peer(&rsa, Some(JAN_2030), &id, &refs, &a, octets),
            Err(Reason::AuthenticationFailed)
        );
    }

    #[test]
    fn rfc4754_ecdsa_auth_is_accepted_for_its_curve_only() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let ec = material("ecdsa.pem", "ecdsa.key");
        let key_pem = pem("ecdsa.key");
        let block = x509_parser::pem::Pem::iter_from_buffer(&key_pem)
            .next()
            .unwrap()
            .unwrap();
        let k =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &block.contents).unwrap();
        let octets = b"octets";
        let sig = k.sign(&SystemRandom::new(), octets).unwrap();
        let certs: Vec<CertPayload> = ec.chain.iter().map(cert_payload).collect();
        let refs: Vec<&CertPayload> = certs.iter().collect();
        let id = Identification::rfc822("admin@example.com");
        let mut a = Authentication {
            method: AuthMethod::ECDSA_SHA256_P256,
            data: sig.as_ref().to_vec(),
        };
        verify_peer(&ec, Some(JAN_2030), &id, &refs, &a, octets).unwrap();
        a.method = AuthMethod::ECDSA_SHA384_P384;
        assert_eq!(
            verify_peer(&ec, Some(JAN_2030), &id, &refs, &a, octets),
            Err(Reason::AuthenticationFailed)
        );
    }

    #[test]
    fn certreq_names_every_anchor_and_schemes_follow_the_peer() {
        let rsa = material("rsa.pem", "rsa.key");
        let Some(Payload::CertificateRequest(r)) = certreq(&rsa) else {
            panic!("no CERTREQ")
        };
        assert_eq!(r.encoding, CertEncoding::X509_SIGNATURE);
        assert_eq!(r.authority, rsa.ca[0].public_key_sha1().unwrap().to_vec());
        assert_eq!(cert_payloads(&rsa).len(), 2);
        assert_eq!(
            choose_scheme(&rsa, &[HashAlgorithm::SHA2_512]),
            Some(SignatureScheme::RsaPssSha512)
        );
        assert_eq!(
            choose_scheme(&rsa, &[HashAlgorithm::SHA2_384, HashAlgorithm::SHA2_256]),
            Some(SignatureScheme::RsaPssSha256)
        );
        assert_eq!(
            choose_scheme(&rsa, &[]),
            Some(SignatureScheme::RsaPssSha256)
        );
        let ec = material("ecdsa.pem", "ecdsa.key");
        assert_eq!(
            choose_scheme(&ec, &[HashAlgorithm::SHA2_256]),
            Some(SignatureScheme::EcdsaSha256)
        );
        // A key that does not match the certificate is refused up front.
        let mut bad = ec.clone();
        bad.key = Arc::new(SigningKey::from_pem(&pem("rsa.key")).unwrap());
        assert!(bad.validate().is_err());
        assert!(!format!("{ec:?}").contains("BEGIN"));
    }

    #[test]
    fn identities_bind_to_subject_or_alt_names() {
        let pem = include_bytes!("../crypto/testdata/gw1.pem");
        let gw = Certificate::from_pem(pem).unwrap().remove(0);
        let dn = Identification::der_dn(&gw.subject_der().unwrap());
        assert!(id_in_certificate(&dn, &gw));
        assert!(id_in_certificate(
            &Identification::fqdn("GW1.example.com"),
            &gw
        ));
        assert!(id_in_certificate(
            &Identification::rfc822("admin@example.com"),
            &gw
        ));
        assert!(id_in_certificate(
            &Identification::ipv4("192.0.2.1".parse().unwrap()),
            &gw
        ));
        assert!(!id_in_certificate(
            &Identification::fqdn("gw2.example.com"),
            &gw
        ));
        assert!(!id_in_certificate(
            &Identification::fqdn("admin@example.com"),
            &gw
        ));
        assert!(!id_in_certificate(
            &Identification::ipv4("192.0.2.2".parse().unwrap()),
            &gw
        ));
        let mut other_dn = gw.subject_der().unwrap();
        if let Some(last) = other_dn.last_mut() {
            *last ^= 1;
        }
        assert!(!id_in_certificate(&Identification::der_dn(&other_dn), &gw));
    }
}
