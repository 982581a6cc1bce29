//! Security Association payload (§3.3): proposals, transforms, transform attributes.

use crate::codec::enums::{
    DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformAttrType, TransformType,
};
use crate::codec::error::{DecodeError, EncodeError};
use crate::codec::reader::Reader;
use crate::codec::writer::Writer;

/// "Last Substruc" of a proposal that has another after it.
const MORE_PROPOSALS: u8 = 2;
/// "Last Substruc" of a transform that has another after it.
const MORE_TRANSFORMS: u8 = 3;
/// Attribute Format bit: a two-byte value follows the type (TV), not a length (TLV).
const ATTR_TV: u16 = 0x8000;

/// SA payload: the proposals, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sa {
    /// Proposals; numbers start at 1 and count up (checked by the negotiation, not here).
    pub proposals: Vec<Proposal>,
}

/// One proposal (§3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal number.
    pub number: u8,
    /// IKE, AH or ESP.
    pub protocol: ProtocolId,
    /// Empty in IKE_SA_INIT, 4 bytes for ESP/AH, 8 for an IKE SA rekey.
    pub spi: Vec<u8>,
    /// Transforms; several of one type are alternatives.
    pub transforms: Vec<Transform>,
}

/// One transform (§3.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    /// Transform type.
    pub ty: TransformType,
    /// Transform ID, read according to `ty` (see the typed accessors).
    pub id: u16,
    /// Attributes (only Key Length is defined).
    pub attributes: Vec<TransformAttr>,
}

/// One transform attribute (§3.3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformAttr {
    /// Attribute type (15 bits).
    pub ty: TransformAttrType,
    /// The value, in the format it was (or will be) sent in.
    pub value: AttrValue,
}

/// Attribute value: short (TV) or variable length (TLV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    /// Two-byte value, AF bit set.
    Short(u16),
    /// Variable length value, AF bit clear.
    Long(Vec<u8>),
}

impl Transform {
    /// A transform without attributes.
    pub fn new(ty: TransformType, id: u16) -> Self {
        Self {
            ty,
            id,
            attributes: Vec::new(),
        }
    }

    /// An encryption transform, with a Key Length attribute (in bits) where the algorithm
    /// has variable key sizes (AES).
    pub fn encr(id: EncrId, key_bits: Option<u16>) -> Self {
        let mut t = Self::new(TransformType::ENCR, id.0);
        if let Some(bits) = key_bits {
            t.attributes.push(TransformAttr {
                ty: TransformAttrType::KEY_LENGTH,
                value: AttrValue::Short(bits),
            });
        }
        t
    }

    /// A PRF transform.
    pub fn prf(id: PrfId) -> Self {
        Self::new(TransformType::PRF, id.0)
    }

    /// An integrity transform.
    pub fn integ(id: IntegId) -> Self {
        Self::new(TransformType::INTEG, id.0)
    }

    /// A key exchange (DH group) transform.
    pub fn dh(id: DhId) -> Self {
        Self::new(TransformType::DH, id.0)
    }

    /// An ESN transform.
    pub fn esn(id: EsnId) -> Self {
        Self::new(TransformType::ESN, id.0)
    }

    /// The Key Length attribute in bits, if present in short form.
    pub fn key_length(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a.value {
            AttrValue::Short(v) if a.ty == TransformAttrType::KEY_LENGTH => Some(v),
            _ => None,
        })
    }

    fn read(r: &mut Reader<'_>) -> Result<(Self, bool), DecodeError> {
        let more = match r.u8()? {
            0 => false,
            MORE_TRANSFORMS => true,
            _ => {
                return Err(DecodeError::InvalidField {
                    what: "transform last substruc",
                });
            }
        };
        let _reserved = r.u8()?;
        let len = usize::from(r.u16()?);
        let mut body = r.sub(
            len.checked_sub(4).ok_or(DecodeError::BadLength {
                what: "transform",
                declared: len,
                available: r.remaining().saturating_add(4),
            })?,
            "transform",
        )?;
        let ty = TransformType(body.u8()?);
        let _reserved = body.u8()?;
        let id = body.u16()?;
        let mut attributes = Vec::new();
        while !body.is_empty() {
            attributes.push(TransformAttr::read(&mut body)?);
        }
        Ok((Self { ty, id, attributes }, more))
    }

    fn write(&self, w: &mut Writer, more: bool) -> Result<(), EncodeError> {
        let start = w.len();
        w.put_u8(if more { MORE_TRANSFORMS } else { 0 });
        w.put_u8(0);
        let mark = w.begin_len16(start, "transform");
        w.put_u8(self.ty.0);
        w.put_u8(0);
        w.put_u16(self.id);
        for a in &self.attributes {
            a.write(w)?;
        }
        w.end_len16(mark)
    }
}

impl TransformAttr {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let raw = r.u16()?;
        let ty = TransformAttrType(raw & !ATTR_TV);
        let value = if raw & ATTR_TV != 0 {
            AttrValue::Short(r.u16()?)
        } else {
            let len = usize::from(r.u16()?);
            AttrValue::Long(r.sub(len, "transform attribute")?.rest().to_vec())
        };
        Ok(Self { ty, value })
    }

    fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        if self.ty.0 & ATTR_TV != 0 {
            return Err(EncodeError::InvalidField {
                what: "transform attribute type",
            });
        }
        match &self.value {
            AttrValue::Short(v) => {
                w.put_u16(self.ty.0 | ATTR_TV);
                w.put_u16(*v);
            }
            AttrValue::Long(b) => {
                w.put_u16(self.ty.0);
                let len = u16::try_from(b.len()).map_err(|_| EncodeError::TooLong {
                    what: "transform attribute",
                })?;
                w.put_u16(len);
                w.put_bytes(b);
            }
        }
        Ok(())
    }
}

impl Proposal {
    /// Transforms of one type, in order.
    pub fn transforms_of(&self, ty: TransformType) -> impl Iterator<Item = &Transform> {
        self.transforms.iter().filter(move |t| t.ty == ty)
    }

    fn read(r: &mut Reader<'_>) -> Result<(Self, bool), DecodeError> {
        let more = match r.u8()? {
            0 => false,
            MORE_PROPOSALS => true,
            _ => {
                return Err(DecodeError::InvalidField {
                    what: "proposal last substruc",
                });
            }
        };
        let _reserved = r.u8()?;
        let len = usize::from(r.u16()?);
        let mut body = r.sub(
            len.checked_sub(4).ok_or(DecodeError::BadLength {
                what: "proposal",
                declared: len,
                available: r.remaining().saturating_add(4),
            })?,
            "proposal",
        )?;
        let number = body.u8()?;
        let protocol = ProtocolId(body.u8()?);
        let spi_size = usize::from(body.u8()?);
        let count = usize::from(body.u8()?);
        let spi = body.take(spi_size)?.to_vec();
        let mut transforms = Vec::with_capacity(count);
        let mut more_transforms = count > 0;
        while more_transforms {
            if body.is_empty() {
                return Err(DecodeError::CountMismatch {
                    what: "transforms",
                    declared: count,
                    found: transforms.len(),
                });
            }
            let (t, m) = Transform::read(&mut body)?;
            transforms.push(t);
            more_transforms = m;
        }
        // The count and the Last Substruc chain must agree, and fill the proposal exactly.
        if transforms.len() != count {
            return Err(DecodeError::CountMismatch {
                what: "transforms",
                declared: count,
                found: transforms.len(),
            });
        }
        body.finish()?;
        Ok((
            Self {
                number,
                protocol,
                spi,
                transforms,
            },
            more,
        ))
    }

    fn write(&self, w: &mut Writer, more: bool) -> Result<(), EncodeError> {
        let start = w.len();
        w.put_u8(if more { MORE_PROPOSALS } else { 0 });
        w.put_u8(0);
        let mark = w.begin_len16(start, "proposal");
        w.put_u8(self.number);
        w.put_u8(self.protocol.0);
        let spi_size = u8::try_from(self.spi.len()).map_err(|_| EncodeError::TooLong {
            what: "proposal SPI",
        })?;
        w.put_u8(spi_size);
        let count = u8::try_from(self.transforms.len()).map_err(|_| EncodeError::TooLong {
            what: "transform count",
        })?;
        w.put_u8(count);
        w.put_bytes(&self.spi);
        let mut iter = self.transforms.iter().peekable();
        while let Some(t) = iter.next() {
            t.write(w, iter.peek().is_some())?;
        }
        w.end_len16(mark)
    }
}

impl Sa {
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut proposals = Vec::new();
        let mut more = !r.is_empty();
        while more {
            let (p, m) = Proposal::read(r)?;
            proposals.push(p);
            more = m;
        }
        Ok(Self { proposals })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        let mut iter = self.proposals.iter().peekable();
        while let Some(p) = iter.next() {
            p.write(w, iter.peek().is_some())?;
        }
        Ok(())
    }
}
