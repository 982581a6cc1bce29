//! Payloads (RFC 7296 §3.2–3.16): the generic payload header, the typed payload enum and the
//! payload chain, both in a message and in decrypted SK plaintext.

mod cp;
mod notify;
mod sa;
mod simple;
mod sk;
mod ts;

pub use cp::{CfgAttribute, Configuration};
pub use notify::{Delete, Notify};
pub use sa::{AttrValue, Proposal, Sa, Transform, TransformAttr};
pub use simple::{
    Authentication, Certificate, CertificateRequest, Identification, KeyExchange, Nonce,
};
pub use sk::{Encrypted, EncryptedFragment};
pub use ts::{AddrRange, TrafficSelector, TrafficSelectors, TsRange};

use super::enums::PayloadType;
use super::error::{DecodeError, EncodeError};
use super::reader::Reader;
use super::writer::Writer;

/// Size of the generic payload header.
pub const GENERIC_HEADER_LEN: usize = 4;

/// The critical bit of the generic payload header.
const CRITICAL: u8 = 0x80;

/// One typed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// SA (§3.3).
    Sa(Sa),
    /// KE (§3.4).
    KeyExchange(KeyExchange),
    /// IDi (§3.5).
    IdInitiator(Identification),
    /// IDr (§3.5).
    IdResponder(Identification),
    /// CERT (§3.6).
    Certificate(Certificate),
    /// CERTREQ (§3.7).
    CertificateRequest(CertificateRequest),
    /// AUTH (§3.8).
    Auth(Authentication),
    /// Ni or Nr (§3.9).
    Nonce(Nonce),
    /// N (§3.10).
    Notify(Notify),
    /// D (§3.11).
    Delete(Delete),
    /// V (§3.12): opaque.
    VendorId(Vec<u8>),
    /// TSi (§3.13).
    TsInitiator(TrafficSelectors),
    /// TSr (§3.13).
    TsResponder(TrafficSelectors),
    /// SK (§3.14): still encrypted. Always the last payload.
    Encrypted(Encrypted),
    /// SKF (RFC 7383): one encrypted fragment. Always the last payload.
    EncryptedFragment(EncryptedFragment),
    /// CP (§3.15).
    Configuration(Configuration),
    /// EAP (§3.16): opaque, this implementation does not do EAP.
    Eap(Vec<u8>),
    /// A payload of a type this implementation does not know (only non-critical ones parse).
    /// `ty` must not be a known type, or the message will not round-trip.
    Unknown {
        /// The payload type.
        ty: PayloadType,
        /// The critical bit as sent.
        critical: bool,
        /// The payload body after the generic header.
        body: Vec<u8>,
    },
}

impl Payload {
    /// The type this payload has on the wire.
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Self::Sa(_) => PayloadType::SA,
            Self::KeyExchange(_) => PayloadType::KE,
            Self::IdInitiator(_) => PayloadType::IDI,
            Self::IdResponder(_) => PayloadType::IDR,
            Self::Certificate(_) => PayloadType::CERT,
            Self::CertificateRequest(_) => PayloadType::CERTREQ,
            Self::Auth(_) => PayloadType::AUTH,
            Self::Nonce(_) => PayloadType::NONCE,
            Self::Notify(_) => PayloadType::NOTIFY,
            Self::Delete(_) => PayloadType::DELETE,
            Self::VendorId(_) => PayloadType::VENDOR_ID,
            Self::TsInitiator(_) => PayloadType::TSI,
            Self::TsResponder(_) => PayloadType::TSR,
            Self::Encrypted(_) => PayloadType::SK,
            Self::EncryptedFragment(_) => PayloadType::SKF,
            Self::Configuration(_) => PayloadType::CP,
            Self::Eap(_) => PayloadType::EAP,
            Self::Unknown { ty, .. } => *ty,
        }
    }

    /// The payload after an SK/SKF payload is the first one inside it, not a following one.
    fn inner_first(&self) -> Option<PayloadType> {
        match self {
            Self::Encrypted(e) => Some(e.first_payload),
            Self::EncryptedFragment(f) => Some(f.first_payload),
            _ => None,
        }
    }

    fn critical(&self) -> bool {
        matches!(self, Self::Unknown { critical: true, .. })
    }

    /// Parses the body of a payload of type `ty`; `Ok(None)` for an unknown type.
    fn read_body(ty: PayloadType, r: &mut Reader<'_>) -> Result<Option<Self>, DecodeError> {
        let p = match ty {
            PayloadType::SA => Self::Sa(Sa::read(r)?),
            PayloadType::KE => Self::KeyExchange(KeyExchange::read(r)?),
            PayloadType::IDI => Self::IdInitiator(Identification::read(r)?),
            PayloadType::IDR => Self::IdResponder(Identification::read(r)?),
            PayloadType::CERT => Self::Certificate(Certificate::read(r)?),
            PayloadType::CERTREQ => Self::CertificateRequest(CertificateRequest::read(r)?),
            PayloadType::AUTH => Self::Auth(Authentication::read(r)?),
            PayloadType::NONCE => Self::Nonce(Nonce::read(r)?),
            PayloadType::NOTIFY => Self::Notify(Notify::read(r)?),
            PayloadType::DELETE => Self::Delete(Delete::read(r)?),
            PayloadType::VENDOR_ID => Self::VendorId(r.rest().to_vec()),
            PayloadType::TSI => Self::TsInitiator(TrafficSelectors::read(r)?),
            PayloadType::TSR => Self::TsResponder(TrafficSelectors::read(r)?),
            PayloadType::CP => Self::Configuration(Configuration::read(r)?),
            PayloadType::EAP => Self::Eap(r.rest().to_vec()),
            _ => return Ok(None),
        };
        r.finish()?;
        Ok(Some(p))
    }

    fn write_body(&self, w: &mut Writer) -> Result<(), EncodeError> {
        match self {
            Self::Sa(p) => p.write(w),
            Self::KeyExchange(p) => p.write(w),
            Self::IdInitiator(p) | Self::IdResponder(p) => p.write(w),
            Self::Certificate(p) => p.write(w),
            Self::CertificateRequest(p) => p.write(w),
            Self::Auth(p) => p.write(w),
            Self::Nonce(p) => p.write(w),
            Self::Notify(p) => p.write(w),
            Self::Delete(p) => p.write(w),
            Self::TsInitiator(p) | Self::TsResponder(p) => p.write(w),
            Self::Encrypted(p) => p.write(w),
            Self::EncryptedFragment(p) => p.write(w),
            Self::Configuration(p) => p.write(w),
            Self::VendorId(b) | Self::Eap(b) | Self::Unknown { body: b, .. } => {
                w.put_bytes(b);
                Ok(())
            }
        }
    }
}

/// A generic payload header and the reader over its body.
pub(crate) struct Generic<'a> {
    pub(crate) next: PayloadType,
    pub(crate) critical: bool,
    pub(crate) body: Reader<'a>,
}

/// Reads one generic payload header (§3.2) and bounds its body.
pub(crate) fn read_generic<'a>(r: &mut Reader<'a>) -> Result<Generic<'a>, DecodeError> {
    let mut head = r.sub(GENERIC_HEADER_LEN, "generic payload header")?;
    let next = PayloadType(head.u8()?);
    // The seven RESERVED bits must be ignored on receipt.
    let critical = head.u8()? & CRITICAL != 0;
    let len = usize::from(head.u16()?);
    let body_len = len
        .checked_sub(GENERIC_HEADER_LEN)
        .ok_or(DecodeError::BadLength {
            what: "payload",
            declared: len,
            available: r.remaining().saturating_add(GENERIC_HEADER_LEN),
        })?;
    let body = r.sub(body_len, "payload")?;
    Ok(Generic {
        next,
        critical,
        body,
    })
}

/// Parses a payload chain starting with type `first` that must fill `r` exactly. `outer` says
/// whether SK/SKF may appear (in a message, as the last payload) or not (in decrypted
/// plaintext).
pub(crate) fn read_chain(
    first: PayloadType,
    r: &mut Reader<'_>,
    outer: bool,
) -> Result<Vec<Payload>, DecodeError> {
    let mut payloads = Vec::new();
    let mut ty = first;
    while ty != PayloadType::NONE {
        let Generic {
            next,
            critical,
            mut body,
        } = read_generic(r)?;
        if ty == PayloadType::SK || ty == PayloadType::SKF {
            // The SK "next payload" names its first inner payload; nothing may follow it.
            if !outer || !r.is_empty() {
                return Err(DecodeError::MisplacedEncrypted);
            }
            payloads.push(if ty == PayloadType::SK {
                Payload::Encrypted(Encrypted::read(next, &mut body))
            } else {
                Payload::EncryptedFragment(EncryptedFragment::read(next, &mut body)?)
            });
            return Ok(payloads);
        }
        match Payload::read_body(ty, &mut body)? {
            Some(p) => payloads.push(p),
            None if critical => return Err(DecodeError::UnsupportedCriticalPayload(ty)),
            None => payloads.push(Payload::Unknown {
                ty,
                critical,
                body: body.rest().to_vec(),
            }),
        }
        ty = next;
    }
    r.finish()?;
    Ok(payloads)
}

/// Writes a payload chain; returns the type of the first payload (for the header or the SK
/// payload that carries the chain). `outer` as for [`read_chain`].
pub(crate) fn write_chain(
    payloads: &[Payload],
    w: &mut Writer,
    outer: bool,
) -> Result<PayloadType, EncodeError> {
    let mut iter = payloads.iter().peekable();
    while let Some(p) = iter.next() {
        let next = match p.inner_first() {
            Some(inner) if outer && iter.peek().is_none() => inner,
            Some(_) => return Err(EncodeError::MisplacedEncrypted),
            None => iter.peek().map_or(PayloadType::NONE, |n| n.payload_type()),
        };
        let start = w.len();
        w.put_u8(next.0);
        w.put_u8(if p.critical() { CRITICAL } else { 0 });
        let mark = w.begin_len16(start, "payload");
        p.write_body(w)?;
        w.end_len16(mark)?;
    }
    Ok(payloads
        .first()
        .map_or(PayloadType::NONE, Payload::payload_type))
}
