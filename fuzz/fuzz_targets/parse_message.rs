//! Any datagram must parse to an error or to a message that re-encodes to an equal message;
//! the SK locator, inner-chain parser and port-4500 classifier must never panic either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_ike::codec::{
    Header, Message, PayloadType, SkLayout, classify_udp4500, encode_inner, parse_inner,
    strip_padding,
};

fuzz_target!(|data: &[u8]| {
    let _ = classify_udp4500(data);
    let _ = Header::peek(data);
    let _ = SkLayout::locate(data, 8, 16);
    let _ = SkLayout::locate(data, 16, 12);
    if let Ok(m) = Message::parse(data) {
        let bytes = m.encode().expect("a parsed message encodes");
        assert_eq!(Message::parse(&bytes).expect("re-encoding parses"), m);
    }
    // The first byte picks the first inner payload type; the rest is decrypted content.
    if let Some((first, rest)) = data.split_first() {
        let _ = strip_padding(rest);
        if let Ok(payloads) = parse_inner(PayloadType(*first), rest) {
            let (ty, bytes) = encode_inner(&payloads).expect("parsed payloads encode");
            assert_eq!(
                parse_inner(ty, &bytes).expect("re-encoding parses"),
                payloads
            );
        }
    }
});
