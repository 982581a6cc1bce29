//! SK payload protection of whole messages: builds an encrypted message from inner payloads and
//! opens a received one, over the codec's layout helpers and [`SkCipher`].

use zeroize::Zeroizing;

use crate::codec::{
    DecodeError, Header, Payload, SkLayout, SkSizes, encode_inner, encode_protected, pad,
    parse_inner, strip_padding,
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

/// Encrypts `payloads` into one message with `header`.
pub(crate) fn seal(
    header: &Header,
    payloads: &[Payload],
    cipher: &SkCipher,
    rng: &mut dyn Rng,
) -> Result<Vec<u8>, ProtectError> {
    let (first, plain) = encode_inner(payloads).map_err(|_| ProtectError::Encode)?;
    let mut padded = Zeroizing::new(plain);
    pad(&mut padded, cipher.block_len());
    let sizes = SkSizes {
        iv: cipher.iv_len(),
        ciphertext: padded.len(),
        icv: cipher.icv_len(),
    };
    let (mut msg, layout) =
        encode_protected(header, first, None, sizes).map_err(|_| ProtectError::Encode)?;
    msg.get_mut(layout.ciphertext.clone())
        .ok_or(ProtectError::Encode)?
        .copy_from_slice(&padded);
    cipher
        .seal_in_place(&mut msg, layout.iv.start, rng)
        .map_err(|_| ProtectError::Encode)?;
    Ok(msg)
}

/// Verifies and decrypts a received SK message; returns its inner payloads.
pub(crate) fn open(datagram: &[u8], cipher: &SkCipher) -> Result<Vec<Payload>, ProtectError> {
    let layout = SkLayout::locate(datagram, cipher.iv_len(), cipher.icv_len())
        .map_err(ProtectError::Layout)?;
    if layout.fragment.is_some() {
        return Err(ProtectError::Layout(DecodeError::InvalidField {
            what: "unexpected fragment",
        }));
    }
    let mut buf = Zeroizing::new(datagram.to_vec());
    let range = cipher
        .open_in_place(&mut buf, layout.iv.start)
        .map_err(|_| ProtectError::Integrity)?;
    let padded = buf.get(range).ok_or(ProtectError::Integrity)?;
    let plain = strip_padding(padded).map_err(|_| ProtectError::Integrity)?;
    parse_inner(layout.first_payload, plain).map_err(ProtectError::Syntax)
}
