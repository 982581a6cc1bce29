//! strait-xfrm's reading of what the kernel sends (`strait_xfrm::fuzzing::parse`): the event
//! socket's decoder and a dump answer's reader, with its SA and policy conversion. Whatever the
//! bytes, an error or nothing, never a panic (netlink-packet-xfrm's parsers slice without
//! checking; strait-xfrm's length guards are what stands between them and a short message).
//!
//! Half the inputs are wrapped in a netlink header of an XFRM type, so the fuzzer spends its
//! time in the message bodies rather than finding headers.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// XFRM_MSG_NEWSA, DELSA, NEWPOLICY, DELPOLICY, ACQUIRE, EXPIRE, UPDPOLICY, UPDSA, POLEXPIRE,
/// MAPPING, and netlink's ERROR and DONE.
const TYPES: [u16; 12] = [16, 17, 19, 20, 23, 24, 25, 26, 27, 38, 2, 3];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = strait_xfrm::fuzzing::parse(body, 1);
        return;
    }
    // one or two messages of a chosen type, lengths right, sequence 7
    let mut dgram = Vec::new();
    let (first, second) = body.split_at(body.len() / 2);
    for (i, part) in [first, second].into_iter().enumerate() {
        if i == 1 && mode & 2 == 0 {
            break;
        }
        let ty = TYPES[usize::from(mode >> 2) % TYPES.len()];
        let len = 16 + part.len();
        dgram.extend_from_slice(&(len as u32).to_ne_bytes());
        dgram.extend_from_slice(&ty.to_ne_bytes());
        dgram.extend_from_slice(&u16::from(mode & 0x80 != 0).to_ne_bytes()); // flags
        dgram.extend_from_slice(&7u32.to_ne_bytes());
        dgram.extend_from_slice(&0u32.to_ne_bytes());
        dgram.extend_from_slice(part);
        while dgram.len() % 4 != 0 {
            dgram.push(0);
        }
    }
    let _ = strait_xfrm::fuzzing::parse(&dgram, 7);
});
