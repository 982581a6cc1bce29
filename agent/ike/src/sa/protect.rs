//! SK payload protection of whole messages: builds an encrypted message from inner payloads and
//! opens a received one, over the codec's layout helpers and [`SkCipher`]. Also cuts a message
//! into RFC 7383 SKF fragments, each sealed on its own, and opens a received fragment.

use zeroize::Zeroizing;

use crate::codec::{
    DecodeError, Fragment, GENERIC_HEADER_LEN, HEADER_LEN, Header, Payload, PayloadType, SkLayout,
    SkSizes, encode_inner, encode_protected, pad, parse_inner, strip_padding,
};
use crate::crypto::rng::Rng;
use crate::crypto::sk::SkCipher;

/// Why a protected message could not be built or opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProtectError {
    /// Building failed (our fault).
    Encode,
    /// The message is not protected, or its SK payload does not fit the cipher.
    Layout(DecodeError),
    /// The ICV/tag did not verify (or padding was bad): drop silently (RFC 7296 §2.21).
    Integrity,
    /// Decrypted fine, but the inner payloads do not parse: answer INVALID_SYNTAX or
    /// UNSUPPORTED_CRITICAL_PAYLOAD.
    Syntax(DecodeError),
}

/// Octets an SKF payload adds before its IV: Fragment Number and Total Fragments.
const SKF_FIELDS_LEN: usize = 4;

/// Encrypts `payloads` with `header` into the datagrams to send: one SK message, or, when
/// `max_len` is given and that message would be longer, RFC 7383 fragments of at most `max_len`
/// octets each (IKE header included). The inner payload chain's plaintext is cut into
/// consecutive pieces, each padded and sealed with its own IV and ICV; fragment 1 names the
/// first inner payload and the others NONE (§2.5). If `max_len` leaves no room for a single
/// plaintext octet per fragment, the message goes out whole.
pub(crate) fn seal_datagrams(
    header: &Header,
    payloads: &[Payload],
    cipher: &SkCipher,
    rng: &mut dyn Rng,
    max_len: Option<usize>,
) -> Result<Vec<Vec<u8>>, ProtectError> {
    let (first, plain) = encode_inner(payloads).map_err(|_| ProtectError::Encode)?;
    let plain = Zeroizing::new(plain);
    let whole_len = HEADER_LEN + GENERIC_HEADER_LEN + cipher.sealed_len(plain.len());
    let chunk = max_len
        .filter(|&max| whole_len > max)
        .and_then(|max| max.checked_sub(HEADER_LEN + GENERIC_HEADER_LEN + SKF_FIELDS_LEN))
        .and_then(|budget| cipher.max_plaintext_len(budget))
        .filter(|&c| c > 0);
    let Some(chunk) = chunk else {
        return Ok(vec![seal_part(header, first, None, &plain, cipher, rng)?]);
    };
    let total = u16::try_from(plain.len().div_ceil(chunk)).map_err(|_| ProtectError::Encode)?;
    let mut out = Vec::with_capacity(usize::from(total));
    for (number, piece) in (1..=total).zip(plain.chunks(chunk)) {
        let next = if number == 1 {
            first
        } else {
            PayloadType::NONE
        };
        let fragment = Fragment { number, total };
        out.push(seal_part(header, next, Some(fragment), piece, cipher, rng)?);
    }
    Ok(out)
}

/// Pads and seals one SK payload (or one SKF fragment) holding `plain`.
fn seal_part(
    header: &Header,
    first: PayloadType,
    fragment: Option<Fragment>,
    plain: &[u8],
    cipher: &SkCipher,
    rng: &mut dyn Rng,
) -> Result<Vec<u8>, ProtectError> {
    let mut padded = Zeroizing::new(plain.to_vec());
    pad(&mut padded, cipher.block_len());
    let sizes = SkSizes {
        iv: cipher.iv_len(),
        ciphertext: padded.len(),
        icv: cipher.icv_len(),
    };
    let (mut msg, layout) =
        encode_protected(header, first, fragment, sizes).map_err(|_| ProtectError::Encode)?;
    msg.get_mut(layout.ciphertext.clone())
        .ok_or(ProtectError::Encode)?
        .copy_from_slice(&padded);
    cipher
        .seal_in_place(&mut msg, layout.iv.start, rng)
        .map_err(|_| ProtectError::Encode)?;
    Ok(msg)
}

/// A received message after its integrity check.
#[derive(Debug)]
pub(crate) enum Opened {
    /// An SK message: its inner payloads.
    Whole(Vec<Payload>),
    /// One authenticated SKF fragment, decrypted and unpadded.
    Fragment {
        /// Its number and the total.
        fragment: Fragment,
        /// The SKF payload's Next Payload field (meaningful in fragment 1 only).
        first_payload: PayloadType,
        /// This fragment's piece of the inner payload chain.
        plain: Zeroizing<Vec<u8>>,
    },
}

/// Verifies and decrypts a received SK message or SKF fragment.
pub(crate) fn open(datagram: &[u8], cipher: &SkCipher) -> Result<Opened, ProtectError> {
    let layout = SkLayout::locate(datagram, cipher.iv_len(), cipher.icv_len())
        .map_err(ProtectError::Layout)?;
    let mut buf = Zeroizing::new(datagram.to_vec());
    let range = cipher
        .open_in_place(&mut buf, layout.iv.start)
        .map_err(|_| ProtectError::Integrity)?;
    let padded = buf.get(range).ok_or(ProtectError::Integrity)?;
    let plain = strip_padding(padded).map_err(|_| ProtectError::Integrity)?;
    match layout.fragment {
        None => parse_inner(layout.first_payload, plain)
            .map(Opened::Whole)
            .map_err(ProtectError::Syntax),
        Some(fragment) => Ok(Opened::Fragment {
            fragment,
            first_payload: layout.first_payload,
            plain: Zeroizing::new(plain.to_vec()),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::codec::{ExchangeType, Flags, Identification, Notify, NotifyType, Spi};
    use crate::crypto::alg::{Encr, Integ};
    use crate::crypto::rng::DeterministicRng;

    fn header() -> Header {
        Header {
            initiator_spi: Spi([1; 8]),
            responder_spi: Spi([2; 8]),
            exchange_type: ExchangeType::IKE_AUTH,
            flags: Flags::INITIATOR,
            message_id: 1,
        }
    }

    fn payloads() -> Vec<Payload> {
        vec![
            Payload::IdInitiator(Identification::fqdn("a.example.com")),
            Payload::Notify(Notify::new(NotifyType::COOKIE, vec![0x5a; 700])),
            Payload::Notify(Notify::empty(NotifyType::INITIAL_CONTACT)),
        ]
    }

    fn ciphers() -> Vec<SkCipher> {
        vec![
            SkCipher::new(Encr::AesGcm16_256, None, &[7; 36], &[]).unwrap(),
            SkCipher::new(
                Encr::AesCbc128,
                Some(Integ::HmacSha256_128),
                &[7; 16],
                &[8; 32],
            )
            .unwrap(),
        ]
    }

    #[test]
    fn fragments_fit_and_reassemble() {
        let mut rng = DeterministicRng::new(5);
        for c in ciphers() {
            let whole = seal_datagrams(&header(), &payloads(), &c, &mut rng, None).unwrap();
            assert_eq!(whole.len(), 1);
            let Opened::Whole(p) = open(&whole[0], &c).unwrap() else {
                panic!("not whole")
            };
            assert_eq!(p, payloads());
            // A limit the message fits in changes nothing.
            let fits =
                seal_datagrams(&header(), &payloads(), &c, &mut rng, Some(whole[0].len())).unwrap();
            assert_eq!(fits.len(), 1);
            assert!(matches!(open(&fits[0], &c).unwrap(), Opened::Whole(_)));
            for max in [100, 200, 333, whole[0].len() - 1] {
                let frags =
                    seal_datagrams(&header(), &payloads(), &c, &mut rng, Some(max)).unwrap();
                assert!(frags.len() >= 2, "max {max}");
                let total = u16::try_from(frags.len()).unwrap();
                let mut plain = Vec::new();
                for (i, d) in frags.iter().enumerate() {
                    assert!(d.len() <= max, "max {max}: {} octets", d.len());
                    let Opened::Fragment {
                        fragment,
                        first_payload,
                        plain: piece,
                    } = open(d, &c).unwrap()
                    else {
                        panic!("not a fragment")
                    };
                    let number = u16::try_from(i + 1).unwrap();
                    assert_eq!(fragment, Fragment { number, total });
                    let want = if i == 0 {
                        PayloadType::IDI
                    } else {
                        PayloadType::NONE
                    };
                    assert_eq!(first_payload, want);
                    plain.extend_from_slice(&piece);
                    // Every fragment has its own ICV: a flipped bit is caught.
                    let mut bad = d.clone();
                    let n = bad.len() - 1;
                    bad[n] ^= 1;
                    assert_eq!(open(&bad, &c).unwrap_err(), ProtectError::Integrity);
                    // The fragment header is authenticated too.
                    let mut bad = d.clone();
                    bad[HEADER_LEN + GENERIC_HEADER_LEN + 1] ^= 1;
                    assert!(open(&bad, &c).is_err());
                }
                assert_eq!(parse_inner(PayloadType::IDI, &plain).unwrap(), payloads());
            }
            // No room for even one octet per fragment: sent whole.
            let tiny = seal_datagrams(&header(), &payloads(), &c, &mut rng, Some(40)).unwrap();
            assert_eq!(tiny.len(), 1);
        }
    }
}
