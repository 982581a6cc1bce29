//! Notify (§3.10) and Delete (§3.11) payloads.

use crate::codec::enums::{DhId, HashAlgorithm, NotifyType, ProtocolId};
use crate::codec::error::{DecodeError, EncodeError};
use crate::codec::reader::Reader;
use crate::codec::writer::Writer;

/// Notify payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// The SA kind the SPI belongs to; zero when there is no SPI.
    pub protocol: ProtocolId,
    /// SPI of the SA concerned, usually empty.
    pub spi: Vec<u8>,
    /// Notify message type.
    pub ty: NotifyType,
    /// Type-specific data.
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify about no particular SA.
    pub fn new(ty: NotifyType, data: Vec<u8>) -> Self {
        Self {
            protocol: ProtocolId::NONE,
            spi: Vec::new(),
            ty,
            data,
        }
    }

    /// A notify with no data (most status types and most errors).
    pub fn empty(ty: NotifyType) -> Self {
        Self::new(ty, Vec::new())
    }

    /// A notify about the CHILD SA with `spi` (REKEY_SA, CHILD_SA_NOT_FOUND, INVALID_SELECTORS).
    pub fn for_child(ty: NotifyType, protocol: ProtocolId, spi: [u8; 4], data: Vec<u8>) -> Self {
        Self {
            protocol,
            spi: spi.to_vec(),
            ty,
            data,
        }
    }

    /// INVALID_KE_PAYLOAD naming the group the responder wants (§1.3).
    pub fn invalid_ke(group: DhId) -> Self {
        Self::new(
            NotifyType::INVALID_KE_PAYLOAD,
            group.0.to_be_bytes().to_vec(),
        )
    }

    /// The group named by an INVALID_KE_PAYLOAD notify.
    pub fn requested_group(&self) -> Option<DhId> {
        if self.ty != NotifyType::INVALID_KE_PAYLOAD {
            return None;
        }
        let bytes: [u8; 2] = self.data.as_slice().try_into().ok()?;
        Some(DhId(u16::from_be_bytes(bytes)))
    }

    /// SIGNATURE_HASH_ALGORITHMS listing `algs` (RFC 7427 §4).
    pub fn signature_hash_algorithms(algs: &[HashAlgorithm]) -> Self {
        let data = algs.iter().flat_map(|a| a.0.to_be_bytes()).collect();
        Self::new(NotifyType::SIGNATURE_HASH_ALGORITHMS, data)
    }

    /// The algorithms in a SIGNATURE_HASH_ALGORITHMS notify; `None` for another type or an odd
    /// data length.
    pub fn hash_algorithms(&self) -> Option<Vec<HashAlgorithm>> {
        if self.ty != NotifyType::SIGNATURE_HASH_ALGORITHMS {
            return None;
        }
        let (pairs, rest) = self.data.as_chunks::<2>();
        rest.is_empty().then(|| {
            pairs
                .iter()
                .map(|p| HashAlgorithm(u16::from_be_bytes(*p)))
                .collect()
        })
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let protocol = ProtocolId(r.u8()?);
        let spi_size = usize::from(r.u8()?);
        let ty = NotifyType(r.u16()?);
        let spi = r.take(spi_size)?.to_vec();
        Ok(Self {
            protocol,
            spi,
            ty,
            data: r.rest().to_vec(),
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_u8(self.protocol.0);
        let spi_size = u8::try_from(self.spi.len())
            .map_err(|_| EncodeError::TooLong { what: "notify SPI" })?;
        w.put_u8(spi_size);
        w.put_u16(self.ty.0);
        w.put_bytes(&self.spi);
        w.put_bytes(&self.data);
        Ok(())
    }
}

/// Delete payload: SPIs of one size, of one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// IKE, AH or ESP.
    pub protocol: ProtocolId,
    /// Size of each SPI: 0 for IKE (the SA the message travels in), 4 for AH/ESP.
    pub spi_size: u8,
    /// The SPIs, each `spi_size` long (checked on encode).
    pub spis: Vec<Vec<u8>>,
}

impl Delete {
    /// Deletes the IKE SA this message is protected by.
    pub fn ike() -> Self {
        Self {
            protocol: ProtocolId::IKE,
            spi_size: 0,
            spis: Vec::new(),
        }
    }

    /// Deletes CHILD SAs by the SPIs the sender receives on (its inbound SPIs).
    pub fn child(protocol: ProtocolId, spis: &[[u8; 4]]) -> Self {
        Self {
            protocol,
            spi_size: 4,
            spis: spis.iter().map(|s| s.to_vec()).collect(),
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let protocol = ProtocolId(r.u8()?);
        let spi_size = r.u8()?;
        let count = usize::from(r.u16()?);
        let size = usize::from(spi_size);
        // A zero size with a non-zero count would be an unbounded loop of empty SPIs.
        if size == 0 && count != 0 {
            return Err(DecodeError::CountMismatch {
                what: "delete SPIs",
                declared: count,
                found: 0,
            });
        }
        let expected = size.saturating_mul(count);
        if r.remaining() != expected {
            return Err(DecodeError::BadLength {
                what: "delete SPIs",
                declared: expected,
                available: r.remaining(),
            });
        }
        let mut spis = Vec::with_capacity(count);
        for _ in 0..count {
            spis.push(r.take(size)?.to_vec());
        }
        Ok(Self {
            protocol,
            spi_size,
            spis,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        let bad = EncodeError::InvalidField {
            what: "delete SPI size",
        };
        if (self.spi_size == 0 && !self.spis.is_empty())
            || self
                .spis
                .iter()
                .any(|s| s.len() != usize::from(self.spi_size))
        {
            return Err(bad);
        }
        w.put_u8(self.protocol.0);
        w.put_u8(self.spi_size);
        let count = u16::try_from(self.spis.len()).map_err(|_| EncodeError::TooLong {
            what: "delete SPI count",
        })?;
        w.put_u16(count);
        for s in &self.spis {
            w.put_bytes(s);
        }
        Ok(())
    }
}
