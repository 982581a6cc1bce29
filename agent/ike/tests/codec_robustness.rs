//! Malformed input: truncation, length lies, trailing data, critical unknown payloads, and a
//! deterministic mutation loop. Every case must be an error or a valid message, never a panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod codec_support;

use codec_support::*;
use strait_ike::codec::*;

fn set_len(bytes: &mut [u8]) {
    let len = bytes.len() as u32;
    bytes[24..28].copy_from_slice(&len.to_be_bytes());
}

fn valid_datagrams() -> Vec<Vec<u8>> {
    sample_messages()
        .iter()
        .map(|m| m.encode().unwrap())
        .collect()
}

#[test]
fn every_prefix_is_an_error() {
    for full in valid_datagrams() {
        for n in 0..full.len() {
            let mut cut = full[..n].to_vec();
            assert!(Message::parse(&cut).is_err(), "prefix {n}");
            // Also with the header length made to agree, so the payload parser is reached.
            if n >= HEADER_LEN {
                set_len(&mut cut);
                let ok = Message::parse(&cut).is_ok();
                // A cut exactly after the header with next payload NONE is the only valid one.
                assert!(!ok || (n == HEADER_LEN && full[16] == 0), "prefix {n}");
            }
        }
    }
    let (_, inner) = encode_inner(&auth_request_inner()).unwrap();
    for n in 0..inner.len() {
        assert!(
            parse_inner(PayloadType::IDI, &inner[..n]).is_err(),
            "inner prefix {n}"
        );
    }
}

#[test]
fn length_lies_are_errors() {
    let full = charon_init_request();
    // Header length one too long / too short.
    for delta in [1i64, -1, 1000] {
        let mut b = full.clone();
        let lie = (b.len() as i64 + delta) as u32;
        b[24..28].copy_from_slice(&lie.to_be_bytes());
        assert!(Message::parse(&b).is_err());
    }
    // Each payload length in the chain, off by one either way, or too small for its header.
    let mut at = HEADER_LEN;
    while at < full.len() {
        let len = u16::from_be_bytes([full[at + 2], full[at + 3]]);
        for lie in [len - 1, len + 1, 0, 3, u16::MAX] {
            let mut b = full.clone();
            b[at + 2..at + 4].copy_from_slice(&lie.to_be_bytes());
            assert!(Message::parse(&b).is_err(), "payload at {at} length {lie}");
        }
        at += usize::from(len);
    }
    // Proposal length, transform length, transform count.
    for (offset, value) in [(35, 35u8), (35, 37), (39, 4), (39, 2), (43, 11), (43, 13)] {
        let mut b = full.clone();
        b[offset] = value;
        assert!(Message::parse(&b).is_err(), "offset {offset} value {value}");
    }
}

#[test]
fn trailing_data_is_rejected() {
    let mut b = charon_init_request();
    b.push(0);
    assert!(matches!(
        Message::parse(&b),
        Err(DecodeError::TrailingData { .. })
    ));
    set_len(&mut b);
    assert!(matches!(
        Message::parse(&b),
        Err(DecodeError::TrailingData { .. })
    ));
    // A nonce payload with a byte too many is still a nonce; a TS payload is not.
    let ts = TrafficSelectors {
        selectors: vec![TrafficSelector::Range(
            TsRange::subnet("10.0.0.0".parse().unwrap(), 8).unwrap(),
        )],
    };
    let (first, mut inner) = encode_inner(&[Payload::TsResponder(ts)]).unwrap();
    inner.push(0);
    inner[3] += 1;
    assert!(matches!(
        parse_inner(first, &inner),
        Err(DecodeError::TrailingData { .. })
    ));
}

#[test]
fn unknown_payloads_are_skipped_unless_critical() {
    let unknown = |critical| Payload::Unknown {
        ty: PayloadType(211),
        critical,
        body: vec![7; 3],
    };
    let nonce = Payload::Nonce(Nonce::new(vec![1; 16]).unwrap());
    let m = Message {
        header: header(ExchangeType::INFORMATIONAL, Flags::default(), 2),
        payloads: vec![unknown(false), nonce.clone()],
    };
    assert_eq!(Message::parse(&m.encode().unwrap()).unwrap(), m);

    let m = Message {
        payloads: vec![nonce, unknown(true)],
        ..m
    };
    let err = Message::parse(&m.encode().unwrap()).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnsupportedCriticalPayload(PayloadType(211))
    );
    assert_eq!(err.notify_type(), NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD);
    assert_eq!(err.kind(), "unsupported_critical_payload");
    // The critical bit on a known payload changes nothing.
    let mut b = charon_init_request();
    b[29] = 0x80;
    assert!(Message::parse(&b).is_ok());
}

#[test]
fn field_rules_are_enforced() {
    let base = charon_init_request();
    // A 15-byte Ni (after header, SA and KE) as the last payload.
    let ni = HEADER_LEN + 40 + 40;
    let mut short = base[..ni + 4].to_vec();
    short[ni] = 0;
    short[ni + 3] = 4 + 15;
    short.extend_from_slice(&[0xab; 15]);
    set_len(&mut short);
    assert_eq!(
        Message::parse(&short).unwrap_err(),
        DecodeError::BadNonceLength(15)
    );
    // "Last substruc" values other than 0/2 (proposal) or 0/3 (transform).
    for (offset, value) in [(32, 3u8), (40, 2), (52, 0)] {
        let mut b = base.clone();
        b[offset] = value;
        assert!(Message::parse(&b).is_err(), "offset {offset}");
    }
    // SK not last.
    let m = &sample_messages()[2];
    let mut b = m.encode().unwrap();
    b.extend_from_slice(&[0, 0, 0, 4]);
    set_len(&mut b);
    assert_eq!(
        Message::parse(&b).unwrap_err(),
        DecodeError::MisplacedEncrypted
    );
    // SKF fragment 0, and fragment beyond the total.
    for (number, total) in [(0u16, 1u16), (3, 2)] {
        let mut b = m.encode().unwrap();
        b[32..34].copy_from_slice(&number.to_be_bytes());
        b[34..36].copy_from_slice(&total.to_be_bytes());
        assert!(Message::parse(&b).is_err());
        assert!(SkLayout::locate(&b, 8, 16).is_err());
    }
    assert_eq!(
        SkLayout::locate(&base, 8, 16).unwrap_err(),
        DecodeError::MissingEncrypted
    );
}

fn mutate(rng: &mut XorShift, b: &mut Vec<u8>) {
    for _ in 0..=rng.below(3) {
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, rng.next() as u8);
            }
            3 if !b.is_empty() => {
                let i = rng.below(b.len());
                b.remove(i);
            }
            4 => {
                let n = rng.below(b.len() + 1);
                b.truncate(n);
            }
            // Interesting values where length fields tend to be.
            _ if b.len() >= 2 => {
                let i = rng.below(b.len() - 1);
                let v: u16 = [0, 1, 3, 4, 8, 0xff, 0x7fff, 0xffff][rng.below(8)];
                b[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            _ => {}
        }
    }
}

#[test]
fn mutated_messages_never_panic() {
    let seeds = valid_datagrams();
    let (_, inner) = encode_inner(&auth_request_inner()).unwrap();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut parsed = 0;
    for i in 0..100_000 {
        let mut b = seeds[i % seeds.len()].clone();
        mutate(&mut rng, &mut b);
        // Fix the header length half the time so mutations reach the payloads.
        if i % 2 == 0 && b.len() >= HEADER_LEN {
            set_len(&mut b);
        }
        if let Ok(m) = Message::parse(&b) {
            parsed += 1;
            // Whatever parses re-encodes, and re-parses to the same message.
            let again = m.encode().expect("a parsed message encodes");
            assert_eq!(Message::parse(&again).unwrap(), m);
        }
        let _ = SkLayout::locate(&b, rng.below(20), rng.below(20));
        let _ = Header::peek(&b);
        let _ = classify_udp4500(&b);

        let mut p = inner.clone();
        mutate(&mut rng, &mut p);
        if let Ok(payloads) = parse_inner(PayloadType(rng.next() as u8 | 32), &p) {
            let (first, bytes) = encode_inner(&payloads).unwrap();
            assert_eq!(parse_inner(first, &bytes).unwrap(), payloads);
        }
        let _ = strip_padding(&p);
    }
    // The loop must exercise the success path too, or it proves little.
    assert!(parsed > 1_000, "only {parsed} mutants parsed");
}
