//! The SK/SKF protection layer under fixed keys, through the crate's public API
//! (`SkLayout::locate`, `SkCipher`, `strip_padding`, `parse_inner`):
//!
//! - arbitrary bytes as a protected message (SK or SKF, AES-GCM-256 or AES-CBC-256 with
//!   HMAC-SHA-256): locating, checking, decrypting and parsing never panic, and bytes that
//!   were not sealed under these keys never open;
//! - a message we seal ourselves from fuzzer-chosen plaintext opens to exactly that plaintext,
//!   and the same message with any one octet changed is refused (an integrity failure is an
//!   error, never a different plaintext).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use strait_ike::codec::{
    ExchangeType, Flags, Fragment, Header, PayloadType, SkLayout, SkSizes, Spi, encode_protected,
    pad, parse_inner, strip_padding,
};
use strait_ike::crypto::alg::{Encr, Integ};
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::crypto::sk::SkCipher;

fn ciphers() -> &'static [SkCipher; 2] {
    static C: OnceLock<[SkCipher; 2]> = OnceLock::new();
    C.get_or_init(|| {
        let gcm_key: Vec<u8> = (0..Encr::AesGcm16_256.keymat_len())
            .map(|i| i as u8)
            .collect();
        let cbc_key: Vec<u8> = (0..Encr::AesCbc256.keymat_len())
            .map(|i| 0x40 ^ i as u8)
            .collect();
        let mac_key: Vec<u8> = (0..Integ::HmacSha256_128.key_len())
            .map(|i| 0x80 ^ i as u8)
            .collect();
        [
            SkCipher::new(Encr::AesGcm16_256, None, &gcm_key, &[]).expect("GCM key"),
            SkCipher::new(
                Encr::AesCbc256,
                Some(Integ::HmacSha256_128),
                &cbc_key,
                &mac_key,
            )
            .expect("CBC key"),
        ]
    })
}

/// Locates, opens, unpads and parses; `Some(plaintext)` only if the message opened.
fn open(c: &SkCipher, datagram: &[u8]) -> Option<Vec<u8>> {
    let layout = SkLayout::locate(datagram, c.iv_len(), c.icv_len()).ok()?;
    assert_eq!(layout.icv.end, datagram.len(), "the ICV ends the datagram");
    let mut msg = datagram.to_vec();
    let range = c.open_in_place(&mut msg, layout.associated_data.end).ok()?;
    let padded = msg
        .get(range)
        .expect("open returns a range inside the message");
    let plain = strip_padding(padded).ok()?;
    let _ = parse_inner(layout.first_payload, plain);
    Some(plain.to_vec())
}

/// Seals `plain` as an SK (or SKF) INFORMATIONAL under `c`.
fn seal(c: &SkCipher, plain: &[u8], fragment: Option<Fragment>, seed: u64) -> Option<Vec<u8>> {
    let header = Header {
        initiator_spi: Spi([1, 2, 3, 4, 5, 6, 7, 8]),
        responder_spi: Spi([8, 7, 6, 5, 4, 3, 2, 1]),
        exchange_type: ExchangeType::INFORMATIONAL,
        flags: Flags::INITIATOR,
        message_id: 7,
    };
    let mut padded = plain.to_vec();
    pad(&mut padded, c.block_len());
    let sizes = SkSizes {
        iv: c.iv_len(),
        ciphertext: padded.len(),
        icv: c.icv_len(),
    };
    let (mut msg, layout) = encode_protected(&header, PayloadType::NOTIFY, fragment, sizes).ok()?;
    msg.get_mut(layout.ciphertext.clone())?
        .copy_from_slice(&padded);
    c.seal_in_place(
        &mut msg,
        layout.associated_data.end,
        &mut DeterministicRng::new(seed),
    )
    .expect("sealing a well-formed layout works");
    Some(msg)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let c = &ciphers()[usize::from(mode & 1)];
    if mode & 2 == 0 {
        // Arbitrary bytes: nothing the fuzzer makes opens under keys it does not know.
        assert!(open(c, rest).is_none(), "an unsealed message opened");
        return;
    }
    // [pos hi][pos lo][xor][fragment byte] then the plaintext
    let [p0, p1, xor, frag, plain @ ..] = rest else {
        return;
    };
    let fragment = (frag & 0x80 != 0).then(|| {
        let total = u16::from(frag & 0x7f).max(1);
        Fragment {
            number: (u16::from(*p0) % total) + 1,
            total,
        }
    });
    let Some(msg) = seal(c, plain, fragment, u64::from(mode)) else {
        return; // too long for one payload
    };
    assert_eq!(open(c, &msg).as_deref(), Some(plain), "round trip");
    if *xor != 0 {
        let pos = usize::from(u16::from_be_bytes([*p0, *p1])) % msg.len();
        let mut bad = msg.clone();
        bad[pos] ^= xor;
        assert!(
            open(c, &bad).is_none(),
            "a message changed at octet {pos} still opened"
        );
    }
});
