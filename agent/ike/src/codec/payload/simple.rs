//! Payloads that are a small fixed head and opaque data: KE, ID, CERT, CERTREQ, AUTH, Nonce.

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::codec::enums::{AuthMethod, CertEncoding, DhId, IdType};
use crate::codec::error::{DecodeError, EncodeError};
use crate::codec::reader::Reader;
use crate::codec::writer::Writer;

/// Key Exchange payload (§3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExchange {
    /// The group of the public value.
    pub group: DhId,
    /// The public value (or KEM ciphertext/public key).
    pub data: Vec<u8>,
}

impl KeyExchange {
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let group = DhId(r.u16()?);
        let _reserved = r.u16()?;
        Ok(Self {
            group,
            data: r.rest().to_vec(),
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_u16(self.group.0);
        w.put_u16(0);
        w.put_bytes(&self.data);
        Ok(())
    }
}

/// Identification payload (§3.5), the body of IDi and IDr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identification {
    /// How `data` is to be read.
    pub id_type: IdType,
    /// The identity.
    pub data: Vec<u8>,
}

impl Identification {
    /// An FQDN identity (no terminator, RFC 7296 §3.5).
    pub fn fqdn(name: &str) -> Self {
        Self::new(IdType::FQDN, name.as_bytes())
    }

    /// An `user@fqdn` identity.
    pub fn rfc822(addr: &str) -> Self {
        Self::new(IdType::RFC822_ADDR, addr.as_bytes())
    }

    /// An IPv4 address identity.
    pub fn ipv4(addr: Ipv4Addr) -> Self {
        Self::new(IdType::IPV4_ADDR, &addr.octets())
    }

    /// An IPv6 address identity.
    pub fn ipv6(addr: Ipv6Addr) -> Self {
        Self::new(IdType::IPV6_ADDR, &addr.octets())
    }

    /// A DER-encoded X.500 distinguished name.
    pub fn der_dn(der: &[u8]) -> Self {
        Self::new(IdType::DER_ASN1_DN, der)
    }

    fn new(id_type: IdType, data: &[u8]) -> Self {
        Self {
            id_type,
            data: data.to_vec(),
        }
    }

    /// The payload body after the generic header: what RFC 7296 §2.15 calls RestOfInitIDPayload
    /// (RestOfRespIDPayload), hashed into the AUTH octets.
    pub fn auth_octets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len().saturating_add(4));
        out.extend_from_slice(&[self.id_type.0, 0, 0, 0]);
        out.extend_from_slice(&self.data);
        out
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let id_type = IdType(r.u8()?);
        let _reserved = r.take(3)?;
        Ok(Self {
            id_type,
            data: r.rest().to_vec(),
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_bytes(&self.auth_octets());
        Ok(())
    }
}

/// Certificate payload (§3.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Encoding of `data`.
    pub encoding: CertEncoding,
    /// The certificate (DER for X509_SIGNATURE).
    pub data: Vec<u8>,
}

impl Certificate {
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            encoding: CertEncoding(r.u8()?),
            data: r.rest().to_vec(),
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_u8(self.encoding.0);
        w.put_bytes(&self.data);
        Ok(())
    }
}

/// Certificate Request payload (§3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    /// Encoding requested.
    pub encoding: CertEncoding,
    /// For X509_SIGNATURE: concatenated SHA-1 hashes of trusted CAs' public keys.
    pub authority: Vec<u8>,
}

impl CertificateRequest {
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            encoding: CertEncoding(r.u8()?),
            authority: r.rest().to_vec(),
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_u8(self.encoding.0);
        w.put_bytes(&self.authority);
        Ok(())
    }
}

/// Authentication payload (§3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    /// How `data` was computed.
    pub method: AuthMethod,
    /// The MIC or signature (for DIGITAL_SIGNATURE, prefixed by the RFC 7427 AlgorithmIdentifier).
    pub data: Vec<u8>,
}

impl Authentication {
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let method = AuthMethod(r.u8()?);
        let _reserved = r.take(3)?;
        Ok(Self {
            method,
            data: r.rest().to_vec(),
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_u8(self.method.0);
        w.put_bytes(&[0, 0, 0]);
        w.put_bytes(&self.data);
        Ok(())
    }
}

/// Nonce payload (§3.9). The length bound is enforced both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonce(Vec<u8>);

impl Nonce {
    /// Shortest nonce allowed.
    pub const MIN_LEN: usize = 16;
    /// Longest nonce allowed.
    pub const MAX_LEN: usize = 256;

    /// A nonce; `None` unless 16..=256 bytes long.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (Self::MIN_LEN..=Self::MAX_LEN)
            .contains(&bytes.len())
            .then_some(Self(bytes))
    }

    /// The nonce bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let bytes = r.rest();
        Self::new(bytes.to_vec()).ok_or(DecodeError::BadNonceLength(bytes.len()))
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_bytes(&self.0);
        Ok(())
    }
}
