//! Configuration payload (§3.15), minimal: typed attributes with opaque values.

use crate::codec::enums::{CfgAttrType, CfgType};
use crate::codec::error::{DecodeError, EncodeError};
use crate::codec::reader::Reader;
use crate::codec::writer::Writer;

/// The reserved top bit of the attribute type field (ignored on receipt).
const ATTR_RESERVED: u16 = 0x8000;

/// CP payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    /// Request, reply, set or ack.
    pub cfg_type: CfgType,
    /// Attributes in order.
    pub attributes: Vec<CfgAttribute>,
}

/// One configuration attribute; an empty value in a request asks for any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CfgAttribute {
    /// Attribute type (15 bits).
    pub ty: CfgAttrType,
    /// Value bytes.
    pub value: Vec<u8>,
}

impl Configuration {
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let cfg_type = CfgType(r.u8()?);
        let _reserved = r.take(3)?;
        let mut attributes = Vec::new();
        while !r.is_empty() {
            let ty = CfgAttrType(r.u16()? & !ATTR_RESERVED);
            let len = usize::from(r.u16()?);
            let value = r.sub(len, "configuration attribute")?.rest().to_vec();
            attributes.push(CfgAttribute { ty, value });
        }
        Ok(Self {
            cfg_type,
            attributes,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_u8(self.cfg_type.0);
        w.put_bytes(&[0, 0, 0]);
        for a in &self.attributes {
            if a.ty.0 & ATTR_RESERVED != 0 {
                return Err(EncodeError::InvalidField {
                    what: "configuration attribute type",
                });
            }
            w.put_u16(a.ty.0);
            let len = u16::try_from(a.value.len()).map_err(|_| EncodeError::TooLong {
                what: "configuration attribute",
            })?;
            w.put_u16(len);
            w.put_bytes(&a.value);
        }
        Ok(())
    }
}
