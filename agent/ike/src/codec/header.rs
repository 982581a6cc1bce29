//! The IKE header (RFC 7296 §3.1): SPIs, version, exchange type, flags, message ID, length.

use super::enums::{ExchangeType, PayloadType};
use super::error::DecodeError;
use super::reader::Reader;
use super::writer::Writer;

/// Size of the fixed IKE header.
pub const HEADER_LEN: usize = 28;

/// The only major version this implementation speaks.
pub const MAJOR_VERSION: u8 = 2;

/// An IKE SA SPI (8 bytes). All zeros is the responder SPI of an IKE_SA_INIT request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Spi(pub [u8; 8]);

impl Spi {
    /// The zero SPI.
    pub const ZERO: Self = Self([0; 8]);

    /// Whether this is the zero SPI.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }
}

impl core::fmt::Debug for Spi {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // SPIs are public identifiers, shown in hex as strongSwan logs them.
        write!(f, "{:016x}", u64::from_be_bytes(self.0))
    }
}

/// Header flags. Undefined bits are kept as received (they must be ignored, not rejected), so
/// a parsed header round-trips.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// Set by the original initiator of the IKE SA.
    pub const INITIATOR: Self = Self(0x08);
    /// Set by a sender that could speak a higher major version (never by us).
    pub const VERSION: Self = Self(0x10);
    /// Set in responses.
    pub const RESPONSE: Self = Self(0x20);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The original initiator of the IKE SA sent this.
    pub fn is_initiator(self) -> bool {
        self.contains(Self::INITIATOR)
    }

    /// This is a response.
    pub fn is_response(self) -> bool {
        self.contains(Self::RESPONSE)
    }
}

impl core::ops::BitOr for Flags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl core::fmt::Debug for Flags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Flags({:#04x}", self.0)?;
        if self.is_initiator() {
            f.write_str(" I")?;
        }
        if self.contains(Self::VERSION) {
            f.write_str(" V")?;
        }
        if self.is_response() {
            f.write_str(" R")?;
        }
        f.write_str(")")
    }
}

/// The IKE header minus the fields the codec derives: the first payload type and the length
/// come from the payloads, the version is always 2.0 on send (the minor version of received
/// messages is ignored, RFC 7296 §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// SPI chosen by the original initiator.
    pub initiator_spi: Spi,
    /// SPI chosen by the responder; zero in the IKE_SA_INIT request.
    pub responder_spi: Spi,
    /// Exchange type.
    pub exchange_type: ExchangeType,
    /// I, V and R flags.
    pub flags: Flags,
    /// Message ID.
    pub message_id: u32,
}

/// A header together with the fields derived on encode, as found on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireHeader {
    /// The typed header.
    pub header: Header,
    /// Type of the first payload.
    pub next_payload: PayloadType,
    /// Total message length, header included.
    pub length: u32,
}

impl Header {
    /// Parses the header at the start of `datagram` and checks the version and that the length
    /// field matches the datagram exactly. Enough for the driver to route a message to its IKE
    /// SA without parsing (or decrypting) the payloads.
    pub fn peek(datagram: &[u8]) -> Result<WireHeader, DecodeError> {
        let mut r = Reader::new(datagram, "IKE header");
        let wire = Self::read(&mut r)?;
        let declared = usize::try_from(wire.length).unwrap_or(usize::MAX);
        if declared < HEADER_LEN || declared > datagram.len() {
            return Err(DecodeError::BadLength {
                what: "IKE message",
                declared,
                available: datagram.len(),
            });
        }
        if declared < datagram.len() {
            return Err(DecodeError::TrailingData {
                what: "IKE message",
                len: datagram.len().saturating_sub(declared),
            });
        }
        Ok(wire)
    }

    /// Reads the 28 header bytes; the length is returned, not checked.
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<WireHeader, DecodeError> {
        let initiator_spi = Spi(r.array()?);
        let responder_spi = Spi(r.array()?);
        let next_payload = PayloadType(r.u8()?);
        let version = r.u8()?;
        let exchange_type = ExchangeType(r.u8()?);
        let flags = Flags(r.u8()?);
        let message_id = r.u32()?;
        let length = r.u32()?;
        let header = Header {
            initiator_spi,
            responder_spi,
            exchange_type,
            flags,
            message_id,
        };
        let major = version >> 4;
        if major != MAJOR_VERSION {
            return Err(DecodeError::InvalidMajorVersion { major, header });
        }
        Ok(WireHeader {
            header,
            next_payload,
            length,
        })
    }

    /// Writes the header with a zero length; returns where the length field is, for patching.
    pub(crate) fn write(&self, w: &mut Writer, next_payload: PayloadType) -> usize {
        w.put_bytes(&self.initiator_spi.0);
        w.put_bytes(&self.responder_spi.0);
        w.put_u8(next_payload.0);
        w.put_u8(MAJOR_VERSION << 4);
        w.put_u8(self.exchange_type.0);
        w.put_u8(self.flags.0);
        w.put_u32(self.message_id);
        let at = w.len();
        w.put_u32(0);
        at
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn bytes(version: u8, length: u32) -> Vec<u8> {
        let mut b = vec![
            1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 33, version, 34, 0x08,
        ];
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&length.to_be_bytes());
        b
    }

    #[test]
    fn peeks_a_header() {
        let w = Header::peek(&bytes(0x20, 28)).unwrap();
        assert_eq!(w.next_payload, PayloadType::SA);
        assert_eq!(w.header.exchange_type, ExchangeType::IKE_SA_INIT);
        assert!(w.header.flags.is_initiator() && !w.header.flags.is_response());
        assert!(w.header.responder_spi.is_zero());
        assert_eq!(w.header.message_id, 7);
        assert_eq!(format!("{:?}", w.header.initiator_spi), "0102030405060708");
        // Minor version is ignored.
        assert!(Header::peek(&bytes(0x2f, 28)).is_ok());
    }

    #[test]
    fn wrong_major_version_keeps_the_header_for_the_answer() {
        for v in [0x10, 0x30, 0xf0] {
            match Header::peek(&bytes(v, 28)) {
                Err(e @ DecodeError::InvalidMajorVersion { major, header }) => {
                    assert_eq!(major, v >> 4);
                    assert_eq!(header.message_id, 7);
                    assert_eq!(
                        e.notify_type(),
                        crate::codec::NotifyType::INVALID_MAJOR_VERSION
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn length_must_match_the_datagram() {
        assert!(matches!(
            Header::peek(&bytes(0x20, 29)),
            Err(DecodeError::BadLength {
                declared: 29,
                available: 28,
                ..
            })
        ));
        assert!(matches!(
            Header::peek(&bytes(0x20, 27)),
            Err(DecodeError::BadLength { declared: 27, .. })
        ));
        let mut long = bytes(0x20, 28);
        long.push(0);
        assert!(matches!(
            Header::peek(&long),
            Err(DecodeError::TrailingData { len: 1, .. })
        ));
        assert!(matches!(
            Header::peek(&bytes(0x20, u32::MAX)),
            Err(DecodeError::BadLength { .. })
        ));
        for n in 0..28 {
            assert!(Header::peek(&bytes(0x20, 28)[..n]).is_err());
        }
    }
}
