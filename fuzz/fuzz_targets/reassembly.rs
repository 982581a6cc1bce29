//! RFC 7383 fragment reassembly (`strait_ike::fuzzing::Reassembly`, the SA's own), fed what
//! only authenticated fragments could carry:
//!
//! - arbitrary fragments (number, total, message ID, direction, exchange, size, budget): never
//!   a panic, and a completed message never exceeds the limits or the budget it was given;
//! - one honest message cut into fragments, delivered in a fuzzer-chosen order with
//!   duplicates: it completes exactly once, to exactly its octets and the first fragment's
//!   payload type.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_ike::codec::{ExchangeType, Fragment, PayloadType};
use strait_ike::fuzzing::{MAX_FRAGMENTS, MAX_MESSAGE_LEN, Outcome, Reassembly};

const EXCHANGES: [ExchangeType; 3] = [
    ExchangeType::IKE_AUTH,
    ExchangeType::CREATE_CHILD_SA,
    ExchangeType::INFORMATIONAL,
];

fn arbitrary(data: &[u8]) {
    let mut r = Reassembly::default();
    // 8 octets per fragment: flags, message ID, number, total, size, budget
    for op in data.chunks_exact(8) {
        let response = op[0] & 1 == 1;
        let exchange = EXCHANGES[usize::from(op[0] >> 1) % EXCHANGES.len()];
        let message_id = u32::from(op[1] % 4);
        let fragment = Fragment {
            number: u16::from(op[2] % 70),
            total: u16::from(op[3] % 70),
        };
        let size = usize::from(u16::from_be_bytes([op[4], op[5]])) % 4096;
        let budget = usize::from(u16::from_be_bytes([op[6], op[7]])).saturating_mul(2);
        let plain = vec![op[4]; size];
        if let Outcome::Complete(_, whole) = r.add(
            response,
            message_id,
            exchange,
            fragment,
            PayloadType(op[5]),
            &plain,
            budget,
        ) {
            assert!(whole.len() <= MAX_MESSAGE_LEN.min(budget), "{} octets", whole.len());
            assert!(fragment.total <= MAX_FRAGMENTS);
        }
    }
}

fn honest(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let total = 1 + u16::from(head % 16);
    // the message: what follows the order bytes, at least one octet per fragment
    let order_len = usize::from(total) * 2;
    let (order, body) = rest.split_at(order_len.min(rest.len()));
    if body.len() < usize::from(total) {
        return;
    }
    let step = body.len().div_ceil(usize::from(total));
    let parts: Vec<&[u8]> = body.chunks(step).collect();
    let total = parts.len() as u16;
    let mut r = Reassembly::default();
    let mut completed = Vec::new();
    // the fuzzer's order (each byte names a fragment: repeats are duplicates), then all of them
    let sequence = order
        .iter()
        .map(|b| usize::from(*b) % parts.len())
        .chain(0..parts.len());
    for i in sequence {
        let first = if i == 0 { PayloadType::IDI } else { PayloadType::NONE };
        let fragment = Fragment {
            number: i as u16 + 1,
            total,
        };
        match r.add(false, 1, ExchangeType::IKE_AUTH, fragment, first, parts[i], MAX_MESSAGE_LEN) {
            Outcome::Complete(t, whole) => completed.push((t, whole)),
            Outcome::Pending => {}
            // every fragment here is within the limits
            Outcome::Refused if body.len() > MAX_MESSAGE_LEN => return,
            Outcome::Refused => panic!("honest fragment {i} of {total} refused"),
        }
        if !completed.is_empty() {
            break;
        }
    }
    if body.len() > MAX_MESSAGE_LEN {
        assert!(completed.is_empty());
        return;
    }
    assert_eq!(completed.len(), 1, "the message did not complete once");
    assert_eq!(completed[0].0, PayloadType::IDI);
    assert_eq!(completed[0].1, body);
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, rest)) => honest(rest),
        Some((_, rest)) => arbitrary(rest),
        None => {}
    }
});
