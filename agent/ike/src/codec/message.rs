//! A whole IKE message: header plus payload chain, parsed from and encoded to one datagram.

use super::enums::{NotifyType, PayloadType};
use super::error::{DecodeError, EncodeError};
use super::header::{HEADER_LEN, Header};
use super::payload::{Encrypted, EncryptedFragment, Notify, Payload, read_chain, write_chain};
use super::reader::Reader;
use super::writer::Writer;

/// A typed IKEv2 message. Encrypted content stays in an [`Payload::Encrypted`] (or
/// [`Payload::EncryptedFragment`]) payload until the protection layer opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header (first payload type and length are derived from `payloads`).
    pub header: Header,
    /// Payloads in wire order; an SK/SKF payload can only be last.
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Parses one IKE message that must fill `datagram` exactly (after any non-ESP marker has
    /// been removed, see [`crate::codec::natt`]).
    pub fn parse(datagram: &[u8]) -> Result<Self, DecodeError> {
        let wire = Header::peek(datagram)?;
        let mut r = Reader::new(datagram, "IKE message");
        let _header = r.take(HEADER_LEN)?;
        let payloads = read_chain(wire.next_payload, &mut r, true)?;
        Ok(Self {
            header: wire.header,
            payloads,
        })
    }

    /// Serialises the message with every length and Next Payload field computed.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::new();
        let first = self
            .payloads
            .first()
            .map_or(PayloadType::NONE, Payload::payload_type);
        let len_at = self.header.write(&mut w, first);
        write_chain(&self.payloads, &mut w, true)?;
        let len = u32::try_from(w.len()).map_err(|_| EncodeError::TooLong {
            what: "IKE message",
        })?;
        w.patch(len_at, &len.to_be_bytes())
            .ok_or(EncodeError::TooLong {
                what: "IKE message",
            })?;
        Ok(w.into_inner())
    }

    /// The SK payload, if the message carries one.
    pub fn encrypted(&self) -> Option<&Encrypted> {
        self.payloads.iter().find_map(|p| match p {
            Payload::Encrypted(e) => Some(e),
            _ => None,
        })
    }

    /// The SKF payload, if the message is a fragment.
    pub fn encrypted_fragment(&self) -> Option<&EncryptedFragment> {
        self.payloads.iter().find_map(|p| match p {
            Payload::EncryptedFragment(e) => Some(e),
            _ => None,
        })
    }

    /// All Notify payloads, in order.
    pub fn notifies(&self) -> impl Iterator<Item = &Notify> {
        notifies(&self.payloads)
    }

    /// The first Notify of type `ty`.
    pub fn notify(&self, ty: NotifyType) -> Option<&Notify> {
        self.notifies().find(|n| n.ty == ty)
    }
}

/// Notify payloads of a payload list (also useful on decrypted inner payloads).
pub fn notifies(payloads: &[Payload]) -> impl Iterator<Item = &Notify> {
    payloads.iter().filter_map(|p| match p {
        Payload::Notify(n) => Some(n),
        _ => None,
    })
}
