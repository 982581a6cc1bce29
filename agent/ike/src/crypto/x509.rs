//! X.509 certificates (the CERT payload, encoding 4: DER X.509 signature): parsing, subject DN
//! and subjectAltName extraction, signature verification by an issuer, and chain validation
//! against trust anchors at a time the caller passes in (no clock here).
//!
//! Backed by `x509-parser`; signatures are verified with aws-lc-rs through [`super::sign`].
//! Not yet: revocation (CRL/OCSP), name constraints, policy and key-usage/EKU checks beyond
//! basicConstraints, RSA-PSS-signed certificates.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    OID_SIG_ECDSA_WITH_SHA512,
};
use x509_parser::time::ASN1Time;

use super::sign::{self, Curve, PublicKey, SignatureScheme};
use super::{Error, Result};

/// A parsed certificate that owns its DER encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
}

impl core::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let subject = self.subject().unwrap_or_default();
        f.debug_struct("Certificate")
            .field("subject", &subject)
            .finish()
    }
}

/// A subjectAltName entry we can match IKE identities against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AltName {
    /// dNSName (an FQDN identity).
    Dns(String),
    /// rfc822Name (a user@fqdn identity).
    Email(String),
    /// iPAddress: 4 or 16 octets.
    Ip(Vec<u8>),
}

impl Certificate {
    /// Parses one DER certificate; trailing data is refused.
    ///
    /// # Errors
    /// [`Error::Certificate`] if it does not parse.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        match x509_parser::parse_x509_certificate(der) {
            Ok((&[], _)) => Ok(Self { der: der.to_vec() }),
            Ok(_) => Err(Error::Certificate("trailing data after certificate")),
            Err(_) => Err(Error::Certificate("malformed certificate")),
        }
    }

    /// Parses every `CERTIFICATE` block of PEM text (a `tls.crt` or `ca.crt`), in order.
    ///
    /// # Errors
    /// [`Error::Certificate`] if a block does not parse or there is none.
    pub fn from_pem(pem: &[u8]) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let block = block.map_err(|_| Error::Certificate("malformed PEM"))?;
            if block.label == "CERTIFICATE" {
                out.push(Self::from_der(&block.contents)?);
            }
        }
        if out.is_empty() {
            return Err(Error::Certificate("no certificate in PEM"));
        }
        Ok(out)
    }

    /// The DER encoding (what goes into a CERT payload).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    fn parsed(&self) -> Result<X509Certificate<'_>> {
        x509_parser::parse_x509_certificate(&self.der)
            .map(|(_, c)| c)
            .map_err(|_| Error::Certificate("malformed certificate"))
    }

    /// The subject DN in strongSwan's notation, e.g. `C=CH, O=Example, CN=gw1`.
    ///
    /// # Errors
    /// [`Error::Certificate`] if the name cannot be rendered.
    pub fn subject(&self) -> Result<String> {
        let c = self.parsed()?;
        c.subject()
            .to_string_with_registry(x509_parser::objects::oid_registry())
            .map_err(|_| Error::Certificate("unprintable subject"))
    }

    /// The DER of the subject Name (for ID_DER_ASN1_DN identities and issuer matching).
    ///
    /// # Errors
    /// [`Error::Certificate`] if the certificate does not parse.
    pub fn subject_der(&self) -> Result<Vec<u8>> {
        Ok(self.parsed()?.subject().as_raw().to_vec())
    }

    /// subjectAltName entries of the kinds IKE identities use.
    ///
    /// # Errors
    /// [`Error::Certificate`] if the extension is malformed.
    pub fn alt_names(&self) -> Result<Vec<AltName>> {
        let c = self.parsed()?;
        let ext = c
            .subject_alternative_name()
            .map_err(|_| Error::Certificate("malformed subjectAltName"))?;
        let mut out = Vec::new();
        if let Some(ext) = ext {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(s) => out.push(AltName::Dns((*s).to_owned())),
                    GeneralName::RFC822Name(s) => out.push(AltName::Email((*s).to_owned())),
                    GeneralName::IPAddress(b) => out.push(AltName::Ip(b.to_vec())),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// The subject public key, for verifying the peer's AUTH signature.
    ///
    /// # Errors
    /// [`Error::Certificate`] for a key type other than RSA or ECDSA P-256/384/521.
    pub fn public_key(&self) -> Result<PublicKey> {
        let c = self.parsed()?;
        let spki = c.public_key();
        let data = spki.subject_public_key.data.to_vec();
        let alg = &spki.algorithm;
        if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
            return Ok(PublicKey::Rsa(data));
        }
        if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = alg
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or(Error::Certificate("EC key without a named curve"))?;
            let curve = if curve == OID_EC_P256 {
                Curve::P256
            } else if curve == OID_NIST_EC_P384 {
                Curve::P384
            } else if curve == OID_NIST_EC_P521 {
                Curve::P521
            } else {
                return Err(Error::Certificate("unsupported EC curve"));
            };
            return Ok(PublicKey::Ec { curve, point: data });
        }
        Err(Error::Certificate("unsupported public key type"))
    }

    /// The SHA-1 hash of the SubjectPublicKeyInfo, as a CERTREQ payload names a trusted CA
    /// (RFC 7296 §3.7). SHA-1 is fixed by that format; nothing is signed with it.
    ///
    /// # Errors
    /// [`Error::Certificate`] if the certificate does not parse.
    pub fn public_key_sha1(&self) -> Result<[u8; 20]> {
        let c = self.parsed()?;
        let d = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            c.public_key().raw,
        );
        d.as_ref().try_into().map_err(|_| Error::Internal)
    }

    /// notAfter, in Unix seconds: when the certificate expires.
    ///
    /// # Errors
    /// [`Error::Certificate`] if the certificate does not parse.
    pub fn not_after(&self) -> Result<i64> {
        Ok(self.parsed()?.validity().not_after.timestamp())
    }

    /// Whether `unix_time` (seconds) lies within notBefore..=notAfter.
    ///
    /// # Errors
    /// [`Error::Certificate`] if the time is out of the representable range.
    pub fn is_valid_at(&self, unix_time: i64) -> Result<bool> {
        let t = ASN1Time::from_timestamp(unix_time)
            .map_err(|_| Error::Certificate("time out of range"))?;
        Ok(self.parsed()?.validity().is_valid_at(t))
    }

    fn is_ca(&self) -> Result<bool> {
        let c = self.parsed()?;
        let bc = c
            .basic_constraints()
            .map_err(|_| Error::Certificate("malformed basicConstraints"))?;
        Ok(bc.is_some_and(|b| b.value.ca))
    }

    /// Verifies that `issuer` signed this certificate (names chain and the signature checks).
    ///
    /// # Errors
    /// [`Error::Certificate`] if the issuer name does not match or the algorithm is
    /// unsupported; [`Error::BadSignature`] if the signature does not verify.
    pub fn verify_signed_by(&self, issuer: &Certificate) -> Result<()> {
        let c = self.parsed()?;
        let i = issuer.parsed()?;
        if c.issuer().as_raw() != i.subject().as_raw() {
            return Err(Error::Certificate("issuer name does not match"));
        }
        let oid = &c.signature_algorithm.algorithm;
        let scheme = if *oid == OID_PKCS1_SHA256WITHRSA {
            SignatureScheme::RsaPkcs1Sha256
        } else if *oid == OID_PKCS1_SHA384WITHRSA {
            SignatureScheme::RsaPkcs1Sha384
        } else if *oid == OID_PKCS1_SHA512WITHRSA {
            SignatureScheme::RsaPkcs1Sha512
        } else if *oid == OID_SIG_ECDSA_WITH_SHA256 {
            SignatureScheme::EcdsaSha256
        } else if *oid == OID_SIG_ECDSA_WITH_SHA384 {
            SignatureScheme::EcdsaSha384
        } else if *oid == OID_SIG_ECDSA_WITH_SHA512 {
            SignatureScheme::EcdsaSha512
        } else {
            return Err(Error::Certificate(
                "unsupported certificate signature algorithm",
            ));
        };
        let tbs: &[u8] = c.tbs_certificate.as_ref();
        sign::verify(scheme, &issuer.public_key()?, tbs, &c.signature_value.data)
    }
}

/// Why a chain did not validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A certificate is not yet valid at the given time.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// A certificate has expired at the given time.
    #[error("certificate expired")]
    Expired,
    /// No path to a trust anchor was found.
    #[error("no path to a trusted CA")]
    UntrustedIssuer,
    /// An intermediate or anchor is not a CA.
    #[error("issuer is not a CA")]
    NotACa,
    /// A signature in the chain does not verify.
    #[error("bad certificate signature")]
    BadSignature,
    /// Something in the chain could not be parsed.
    #[error("malformed certificate")]
    Malformed,
}

impl ChainError {
    /// A fixed label (status reasons such as `CertificateNotYetValid` map from this).
    pub fn kind(&self) -> &'static str {
        match self {
            ChainError::NotYetValid => "not_yet_valid",
            ChainError::Expired => "expired",
            ChainError::UntrustedIssuer => "untrusted_issuer",
            ChainError::NotACa => "not_a_ca",
            ChainError::BadSignature => "bad_signature",
            ChainError::Malformed => "malformed",
        }
    }
}

fn check_time(cert: &Certificate, unix_time: i64) -> core::result::Result<(), ChainError> {
    let c = cert.parsed().map_err(|_| ChainError::Malformed)?;
    let t = ASN1Time::from_timestamp(unix_time).map_err(|_| ChainError::Malformed)?;
    let v = c.validity();
    if t < v.not_before {
        Err(ChainError::NotYetValid)
    } else if t > v.not_after {
        Err(ChainError::Expired)
    } else {
        Ok(())
    }
}

/// Validates `leaf` up to one of `anchors`, possibly through `intermediates` (as received in
/// CERT payloads, any order), at `unix_time`. Each issuer must be a CA (basicConstraints) and
/// every certificate on the path, anchors included, must be valid at that time.
///
/// # Errors
/// The first [`ChainError`] met on the best path found.
pub fn validate_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Certificate],
    unix_time: i64,
) -> core::result::Result<(), ChainError> {
    check_time(leaf, unix_time)?;
    let mut current = leaf.clone();
    // Bounded walk: a path never needs more steps than there are certificates.
    for _ in 0..=intermediates.len() {
        let mut last_err = ChainError::UntrustedIssuer;
        for anchor in anchors {
            match current.verify_signed_by(anchor) {
                Ok(()) => {
                    if !anchor.is_ca().map_err(|_| ChainError::Malformed)? {
                        return Err(ChainError::NotACa);
                    }
                    return check_time(anchor, unix_time);
                }
                Err(Error::BadSignature) => last_err = ChainError::BadSignature,
                Err(_) => {}
            }
        }
        let next = intermediates
            .iter()
            .find(|i| *i != &current && current.verify_signed_by(i).is_ok());
        match next {
            Some(i) => {
                if !i.is_ca().map_err(|_| ChainError::Malformed)? {
                    return Err(ChainError::NotACa);
                }
                check_time(i, unix_time)?;
                current = i.clone();
            }
            None => return Err(last_err),
        }
    }
    Err(ChainError::UntrustedIssuer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sign::SigningKey;

    // Generated once with openssl for these tests: an ECDSA P-256 CA, an RSA-2048 gateway
    // certificate it signed (SAN DNS/IP/email), and an unrelated P-384 CA. Valid from
    // 2026-11-26 21:02:05 UTC for a century.
    const CA: &[u8] = include_bytes!("testdata/ca.pem");
    const GW1: &[u8] = include_bytes!("testdata/gw1.pem");
    const GW1_KEY: &[u8] = include_bytes!("testdata/gw1.key");
    const OTHER_CA: &[u8] = include_bytes!("testdata/other-ca.pem");
    const JAN_2027: i64 = 1_798_761_600;
    const JAN_2020: i64 = 1_577_836_800;
    const YEAR_2200: i64 = 7_258_118_400;

    fn one(pem: &[u8]) -> Certificate {
        Certificate::from_pem(pem).unwrap().remove(0)
    }

    #[test]
    fn parses_names_and_keys() {
        let gw = one(GW1);
        assert_eq!(gw.subject().unwrap(), "C=CH, O=Example, CN=gw1");
        assert_eq!(
            gw.alt_names().unwrap(),
            vec![
                AltName::Dns("gw1.example.com".into()),
                AltName::Ip(vec![192, 0, 2, 1]),
                AltName::Email("admin@example.com".into()),
            ]
        );
        assert!(matches!(gw.public_key().unwrap(), PublicKey::Rsa(_)));
        let ca = one(CA);
        assert!(matches!(
            ca.public_key().unwrap(),
            PublicKey::Ec {
                curve: Curve::P256,
                ..
            }
        ));
        assert!(ca.is_ca().unwrap() && !gw.is_ca().unwrap());
        assert_eq!(Certificate::from_der(gw.der()).unwrap(), gw);
        assert!(Certificate::from_der(&gw.der()[1..]).is_err());
        let mut trailing = gw.der().to_vec();
        trailing.push(0);
        assert!(Certificate::from_der(&trailing).is_err());
        assert!(Certificate::from_pem(b"no pem here").is_err());
        // The private key matches the certificate and signs AUTH data it verifies.
        let key = SigningKey::from_pem(GW1_KEY).unwrap();
        assert_eq!(key.public_key(), gw.public_key().unwrap());
        let sig = key.sign(SignatureScheme::RsaPssSha256, b"octets").unwrap();
        sign::verify(
            SignatureScheme::RsaPssSha256,
            &gw.public_key().unwrap(),
            b"octets",
            &sig,
        )
        .unwrap();
    }

    #[test]
    fn certreq_hash_is_sha1_of_the_spki() {
        let ca = one(CA);
        let spki = ca.parsed().unwrap().public_key().raw.to_vec();
        // An EC SubjectPublicKeyInfo is a SEQUENCE.
        assert_eq!(spki[0], 0x30);
        let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &spki);
        assert_eq!(&ca.public_key_sha1().unwrap()[..], want.as_ref());
        assert_ne!(ca.public_key_sha1(), one(OTHER_CA).public_key_sha1());
    }

    #[test]
    fn verify_and_validate_chain() {
        let (ca, gw, other) = (one(CA), one(GW1), one(OTHER_CA));
        gw.verify_signed_by(&ca).unwrap();
        assert!(gw.verify_signed_by(&other).is_err());
        assert!(gw.is_valid_at(JAN_2027).unwrap());
        assert!(!gw.is_valid_at(JAN_2020).unwrap());
        // notAfter is the last second it is valid
        let end = gw.not_after().unwrap();
        assert!(gw.is_valid_at(end).unwrap() && !gw.is_valid_at(end + 1).unwrap());

        validate_chain(&gw, &[], &[other.clone(), ca.clone()], JAN_2027).unwrap();
        // The CA handed over as an "intermediate" and trusted via itself also works.
        validate_chain(
            &gw,
            core::slice::from_ref(&ca),
            core::slice::from_ref(&ca),
            JAN_2027,
        )
        .unwrap();
        assert_eq!(
            validate_chain(&gw, &[], core::slice::from_ref(&ca), JAN_2020),
            Err(ChainError::NotYetValid)
        );
        assert_eq!(
            validate_chain(&gw, &[], core::slice::from_ref(&ca), YEAR_2200),
            Err(ChainError::Expired)
        );
        assert_eq!(
            validate_chain(&gw, &[], &[other], JAN_2027),
            Err(ChainError::UntrustedIssuer)
        );
        assert_eq!(
            validate_chain(&gw, &[], &[], JAN_2027),
            Err(ChainError::UntrustedIssuer)
        );
        // A leaf used as a trust anchor for itself is not a CA.
        assert!(validate_chain(&gw, &[], core::slice::from_ref(&gw), JAN_2027).is_err());

        // A flipped bit in the signature breaks it.
        let mut der = gw.der().to_vec();
        let n = der.len() - 10;
        der[n] ^= 1;
        let bad = Certificate::from_der(&der).unwrap();
        assert_eq!(bad.verify_signed_by(&ca), Err(Error::BadSignature));
        assert_eq!(
            validate_chain(&bad, &[], &[ca], JAN_2027),
            Err(ChainError::BadSignature)
        );
    }
}
