//! What the SK protection layer needs from the codec (RFC 7296 §3.14, RFC 5282 §5.1,
//! RFC 7383): the byte ranges of a received protected message, a pre-sized buffer to encrypt
//! into in place, padding, and the inner payload chain. Nothing here does cryptography.

use core::ops::Range;

use super::enums::PayloadType;
use super::error::{DecodeError, EncodeError};
use super::header::{HEADER_LEN, Header, WireHeader};
use super::payload::{Payload, read_chain, read_generic, write_chain};
use super::reader::Reader;
use super::writer::Writer;

/// Fragment number and total of an SKF payload (RFC 7383).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// This fragment, from 1.
    pub number: u16,
    /// Number of fragments.
    pub total: u16,
}

/// Sizes of the three parts of an SK payload body, fixed by the negotiated algorithms and the
/// plaintext length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkSizes {
    /// IV length (8 for GCM, the block size for CBC).
    pub iv: usize,
    /// Ciphertext length (padded plaintext; equal to it for AEAD).
    pub ciphertext: usize,
    /// Integrity checksum or AEAD tag length.
    pub icv: usize,
}

/// Where the parts of a protected message are, as offsets into the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkLayout {
    /// The header as found on the wire.
    pub header: WireHeader,
    /// Type of the first inner payload.
    pub first_payload: PayloadType,
    /// Set for an SKF payload.
    pub fragment: Option<Fragment>,
    /// AEAD associated data: from the IKE header up to the end of the SK/SKF payload header
    /// (RFC 5282 §5.1, RFC 7383 §2.5.3).
    pub associated_data: Range<usize>,
    /// The IV.
    pub iv: Range<usize>,
    /// The ciphertext.
    pub ciphertext: Range<usize>,
    /// The ICV (AEAD tag or truncated HMAC), the last bytes of the datagram.
    pub icv: Range<usize>,
}

impl SkLayout {
    /// What a separate integrity algorithm covers (§3.14): everything before the ICV.
    pub fn integrity_covered(&self) -> Range<usize> {
        0..self.icv.start
    }

    /// Finds the SK or SKF payload of a received message, which must be its last payload, and
    /// splits its body given the negotiated IV and ICV lengths. Payloads before it are skipped,
    /// not parsed.
    pub fn locate(datagram: &[u8], iv_len: usize, icv_len: usize) -> Result<Self, DecodeError> {
        let header = Header::peek(datagram)?;
        let mut r = Reader::new(datagram, "IKE message");
        let _header = r.take(HEADER_LEN)?;
        let mut ty = header.next_payload;
        loop {
            if ty == PayloadType::NONE {
                return Err(DecodeError::MissingEncrypted);
            }
            let mut g = read_generic(&mut r)?;
            if ty != PayloadType::SK && ty != PayloadType::SKF {
                ty = g.next;
                continue;
            }
            if !r.is_empty() {
                return Err(DecodeError::MisplacedEncrypted);
            }
            let fragment = if ty == PayloadType::SKF {
                let number = g.body.u16()?;
                let total = g.body.u16()?;
                if !(1..=total).contains(&number) {
                    return Err(DecodeError::InvalidField {
                        what: "fragment number",
                    });
                }
                Some(Fragment { number, total })
            } else {
                None
            };
            let iv_start = g.body.offset();
            let body_len = g.body.remaining();
            // At least one ciphertext byte: the Pad Length is always encrypted.
            let ct_len = body_len
                .checked_sub(iv_len)
                .and_then(|l| l.checked_sub(icv_len))
                .filter(|&l| l >= 1)
                .ok_or(DecodeError::Truncated {
                    what: "encrypted payload",
                })?;
            let ct_start = iv_start.saturating_add(iv_len);
            let icv_start = ct_start.saturating_add(ct_len);
            return Ok(Self {
                header,
                first_payload: g.next,
                fragment,
                associated_data: 0..iv_start,
                iv: iv_start..ct_start,
                ciphertext: ct_start..icv_start,
                icv: icv_start..icv_start.saturating_add(icv_len),
            });
        }
    }
}

/// Builds a protected message with zeroed IV, ciphertext and ICV, every length field already
/// final, so associated data and integrity can be computed and the parts filled in place.
/// `fragment` chooses SKF over SK.
pub fn encode_protected(
    header: &Header,
    first_payload: PayloadType,
    fragment: Option<Fragment>,
    sizes: SkSizes,
) -> Result<(Vec<u8>, SkLayout), EncodeError> {
    let mut w = Writer::new();
    let ty = if fragment.is_some() {
        PayloadType::SKF
    } else {
        PayloadType::SK
    };
    let len_at = header.write(&mut w, ty);
    let start = w.len();
    w.put_u8(first_payload.0);
    w.put_u8(0);
    let mark = w.begin_len16(start, "encrypted payload");
    if let Some(f) = fragment {
        if !(1..=f.total).contains(&f.number) {
            return Err(EncodeError::InvalidField {
                what: "fragment number",
            });
        }
        w.put_u16(f.number);
        w.put_u16(f.total);
    }
    let iv_start = w.len();
    let too_long = EncodeError::TooLong {
        what: "encrypted payload",
    };
    let body = sizes
        .iv
        .checked_add(sizes.ciphertext)
        .and_then(|l| l.checked_add(sizes.icv))
        .ok_or(too_long.clone())?;
    // Check before allocating: the payload length field is 16 bits.
    if body > usize::from(u16::MAX) {
        return Err(too_long);
    }
    w.put_zeros(body);
    w.end_len16(mark)?;
    let total = u32::try_from(w.len()).map_err(|_| too_long.clone())?;
    w.patch(len_at, &total.to_be_bytes()).ok_or(too_long)?;
    let ct_start = iv_start.saturating_add(sizes.iv);
    let icv_start = ct_start.saturating_add(sizes.ciphertext);
    let layout = SkLayout {
        header: WireHeader {
            header: *header,
            next_payload: ty,
            length: total,
        },
        first_payload,
        fragment,
        associated_data: 0..iv_start,
        iv: iv_start..ct_start,
        ciphertext: ct_start..icv_start,
        icv: icv_start..icv_start.saturating_add(sizes.icv),
    };
    Ok((w.into_inner(), layout))
}

/// Serialises the payloads that go inside an SK payload; returns the first payload's type
/// (for the SK header) and the bytes to pad and encrypt.
pub fn encode_inner(payloads: &[Payload]) -> Result<(PayloadType, Vec<u8>), EncodeError> {
    let mut w = Writer::new();
    let first = write_chain(payloads, &mut w, false)?;
    Ok((first, w.into_inner()))
}

/// Parses decrypted, unpadded SK content (see [`strip_padding`]) as a payload chain starting
/// with `first`. SK/SKF payloads inside are rejected.
pub fn parse_inner(first: PayloadType, plaintext: &[u8]) -> Result<Vec<Payload>, DecodeError> {
    let mut r = Reader::new(plaintext, "encrypted content");
    read_chain(first, &mut r, false)
}

/// Appends zero padding and the Pad Length byte so the result is a multiple of `block_size`
/// (1 for AEAD modes, which need no alignment). Block sizes above 256 are treated as 256.
pub fn pad(plaintext: &mut Vec<u8>, block_size: usize) {
    let block = block_size.clamp(1, 256);
    // Room for the Pad Length byte, then round up to the block.
    let unpadded = plaintext.len().saturating_add(1);
    let pad_len = (block - unpadded % block) % block;
    plaintext.resize(plaintext.len().saturating_add(pad_len), 0);
    plaintext.push(u8::try_from(pad_len).unwrap_or(u8::MAX));
}

/// Removes the padding and Pad Length byte from decrypted SK content. The padding's content is
/// not checked (RFC 7296 §3.14 lets it be anything).
pub fn strip_padding(decrypted: &[u8]) -> Result<&[u8], DecodeError> {
    let (pad_len, rest) = decrypted.split_last().ok_or(DecodeError::Truncated {
        what: "encrypted content",
    })?;
    let keep = rest
        .len()
        .checked_sub(usize::from(*pad_len))
        .ok_or(DecodeError::InvalidField { what: "pad length" })?;
    rest.get(..keep)
        .ok_or(DecodeError::InvalidField { what: "pad length" })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::codec::{ExchangeType, Flags, Spi};

    #[test]
    fn pads_to_the_block_and_strips_again() {
        for block in [0, 1, 8, 16, 300] {
            for len in 0..40 {
                let mut p = vec![0xaa; len];
                pad(&mut p, block);
                assert_eq!(p.len() % block.clamp(1, 256), 0, "block {block} len {len}");
                assert_eq!(strip_padding(&p).unwrap(), &vec![0xaa; len][..]);
            }
        }
        assert!(strip_padding(&[]).is_err());
        assert!(strip_padding(&[1]).is_err());
        assert_eq!(strip_padding(&[7, 9, 1]).unwrap(), &[7]);
    }

    #[test]
    fn skeleton_and_locate_agree() {
        let header = Header {
            initiator_spi: Spi([1; 8]),
            responder_spi: Spi([2; 8]),
            exchange_type: ExchangeType::IKE_AUTH,
            flags: Flags::INITIATOR,
            message_id: 1,
        };
        let sizes = SkSizes {
            iv: 8,
            ciphertext: 33,
            icv: 16,
        };
        for fragment in [
            None,
            Some(Fragment {
                number: 2,
                total: 3,
            }),
        ] {
            let (bytes, layout) =
                encode_protected(&header, PayloadType::IDI, fragment, sizes).unwrap();
            let extra = if fragment.is_some() { 4 } else { 0 };
            assert_eq!(layout.associated_data, 0..32 + extra);
            assert_eq!(layout.iv.len(), 8);
            assert_eq!(layout.ciphertext.len(), 33);
            assert_eq!(layout.icv.end, bytes.len());
            assert_eq!(layout.integrity_covered(), 0..bytes.len() - 16);
            assert_eq!(SkLayout::locate(&bytes, 8, 16).unwrap(), layout);
            // Wrong sizes for the negotiated algorithm: no room for ciphertext.
            assert!(SkLayout::locate(&bytes, 8, bytes.len()).is_err());
        }
        assert!(
            encode_protected(
                &header,
                PayloadType::NONE,
                Some(Fragment {
                    number: 0,
                    total: 1
                }),
                sizes
            )
            .is_err()
        );
        let huge = SkSizes {
            iv: 0,
            ciphertext: 70_000,
            icv: 0,
        };
        assert!(encode_protected(&header, PayloadType::NONE, None, huge).is_err());
    }
}
