//! Encrypted (SK, §3.14) and Encrypted Fragment (SKF, RFC 7383) payloads as they travel:
//! opaque IV, ciphertext and ICV. Decryption belongs to the crypto provider; see
//! [`crate::codec::protect`] for the byte ranges it works on.

use crate::codec::enums::PayloadType;
use crate::codec::error::{DecodeError, EncodeError};
use crate::codec::reader::Reader;
use crate::codec::writer::Writer;

/// SK payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    /// Type of the first payload inside (the SK payload's Next Payload field).
    pub first_payload: PayloadType,
    /// IV, ciphertext (with padding and pad length inside) and ICV, concatenated.
    pub data: Vec<u8>,
}

/// SKF payload: one fragment of an SK payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedFragment {
    /// Type of the first inner payload in fragment 1; NONE in the others.
    pub first_payload: PayloadType,
    /// This fragment's number, from 1.
    pub fragment_number: u16,
    /// How many fragments the message was cut into.
    pub total_fragments: u16,
    /// IV, ciphertext and ICV of this fragment.
    pub data: Vec<u8>,
}

impl Encrypted {
    pub(crate) fn read(first_payload: PayloadType, r: &mut Reader<'_>) -> Self {
        Self {
            first_payload,
            data: r.rest().to_vec(),
        }
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_bytes(&self.data);
        Ok(())
    }
}

impl EncryptedFragment {
    /// Checks RFC 7383 §2.5: numbers start at 1 and never exceed the total.
    pub(crate) fn numbers_valid(number: u16, total: u16) -> bool {
        number >= 1 && number <= total
    }

    pub(crate) fn read(
        first_payload: PayloadType,
        r: &mut Reader<'_>,
    ) -> Result<Self, DecodeError> {
        let fragment_number = r.u16()?;
        let total_fragments = r.u16()?;
        if !Self::numbers_valid(fragment_number, total_fragments) {
            return Err(DecodeError::InvalidField {
                what: "fragment number",
            });
        }
        Ok(Self {
            first_payload,
            fragment_number,
            total_fragments,
            data: r.rest().to_vec(),
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        if !Self::numbers_valid(self.fragment_number, self.total_fragments) {
            return Err(EncodeError::InvalidField {
                what: "fragment number",
            });
        }
        w.put_u16(self.fragment_number);
        w.put_u16(self.total_fragments);
        w.put_bytes(&self.data);
        Ok(())
    }
}
