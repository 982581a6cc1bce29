//! RFC 7383 IKE fragmentation between two endpoints on a simulated clock and network: sending
//! SKF fragments that fit `fragment_size`, reassembly under loss, duplication, reordering and
//! forgery, the receiver's limits, and no fragments for a peer that did not announce support.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::time::Duration;

use strait_ike::codec::{ExchangeType, Header, PayloadType};
use strait_ike::{EndpointConfig, Lifetime, Reason, Transmit};
use util::{Fate, Pair, Side, config_a, mirror};

/// The IKE message inside a transmit (without the non-ESP marker).
fn ike(t: &Transmit) -> &[u8] {
    if t.non_esp_marker {
        &t.payload[4..]
    } else {
        &t.payload[..]
    }
}

/// (exchange, is response, message ID, carries an SKF payload).
fn kind(t: &Transmit) -> (ExchangeType, bool, u32, bool) {
    let w = Header::peek(ike(t)).unwrap();
    (
        w.header.exchange_type,
        w.header.flags.is_response(),
        w.header.message_id,
        w.next_payload == PayloadType::SKF,
    )
}

/// The (fragment number, total) of an SKF message.
fn fragment_of(t: &Transmit) -> (u16, u16) {
    let m = ike(t);
    // IKE header (28), SKF generic header (4), then the two fields.
    (
        u16::from_be_bytes([m[32], m[33]]),
        u16::from_be_bytes([m[34], m[35]]),
    )
}

/// The size of the whole IP datagram carrying a transmit, as `fragment_size` counts it.
fn ip_datagram_len(t: &Transmit) -> usize {
    let ip = if t.remote.is_ipv4() { 20 } else { 40 };
    ip + 8 + t.payload.len()
}

fn small(size: usize) -> EndpointConfig {
    EndpointConfig {
        fragment_size: size,
        ..EndpointConfig::default()
    }
}

fn auth_datagrams(p: &Pair, from: Side, response: bool) -> Vec<Transmit> {
    p.log
        .iter()
        .filter(|s| s.from == from)
        .filter(|s| {
            let (x, r, _, _) = kind(&s.t);
            x == ExchangeType::IKE_AUTH && r == response
        })
        .map(|s| s.t.clone())
        .collect()
}

#[test]
fn ike_auth_is_fragmented_both_ways_within_the_size() {
    let a = config_a();
    let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), small(200), small(200));
    p.initiate();
    p.run_for(Duration::from_secs(1));
    assert_eq!(Pair::ups(&p.ev_a), 1);
    assert_eq!(Pair::ups(&p.ev_b), 1);
    p.assert_children_match();
    // IKE_SA_INIT is never fragmented, even though it is longer than the limit.
    let init: Vec<_> = p
        .log
        .iter()
        .filter(|s| kind(&s.t).0 == ExchangeType::IKE_SA_INIT)
        .collect();
    assert_eq!(init.len(), 2);
    assert!(init.iter().all(|s| !kind(&s.t).3));
    assert!(init.iter().all(|s| ip_datagram_len(&s.t) > 200));
    for (from, response) in [(Side::A, false), (Side::B, true)] {
        let d = auth_datagrams(&p, from, response);
        assert!(d.len() >= 2, "{from:?}: {} datagrams", d.len());
        let total = u16::try_from(d.len()).unwrap();
        for (i, t) in d.iter().enumerate() {
            assert!(kind(t).3, "{from:?} #{i} is not a fragment");
            assert!(
                ip_datagram_len(t) <= 200,
                "{from:?} #{i}: {}",
                ip_datagram_len(t)
            );
            assert_eq!(fragment_of(t), (u16::try_from(i + 1).unwrap(), total));
            // Next Payload: the first inner payload in fragment 1 only (IDi / IDr).
            let want = match (i, response) {
                (0, false) => PayloadType::IDI,
                (0, true) => PayloadType::IDR,
                _ => PayloadType::NONE,
            };
            assert_eq!(PayloadType(ike(t)[28]), want);
        }
    }
    assert_eq!(
        p.a.stats().integrity_failed + p.b.stats().integrity_failed,
        0
    );
}

#[test]
fn later_exchanges_fragment_too_and_ipv6_counts_its_larger_header() {
    let mut a = config_a();
    a.child_lifetime = Lifetime::from_rekey(Duration::from_secs(60));
    a.local_addr = "[2001:db8::1]:500".parse().unwrap();
    a.remote_addr = "[2001:db8::2]:500".parse().unwrap();
    let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), small(260), small(260));
    p.initiate();
    p.run_for(Duration::from_secs(70));
    assert_eq!(Pair::ups(&p.ev_a), 1);
    assert_eq!(Pair::installs(&p.ev_a).len(), 2, "the CHILD SA was rekeyed");
    assert_eq!(Pair::installs(&p.ev_b).len(), 2);
    let rekey: Vec<_> = p
        .log
        .iter()
        .filter(|s| kind(&s.t).0 == ExchangeType::CREATE_CHILD_SA)
        .collect();
    assert!(
        rekey.iter().any(|s| kind(&s.t).3),
        "CREATE_CHILD_SA fragmented"
    );
    for s in &p.log {
        if kind(&s.t).0 != ExchangeType::IKE_SA_INIT {
            assert!(ip_datagram_len(&s.t) <= 260, "{:?}", kind(&s.t));
        }
    }
}

#[test]
fn behind_nat_the_marker_is_counted() {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_addr = "0.0.0.0:500".parse().unwrap();
    let mut p = Pair::with_endpoint_config(a, b, small(200), small(200));
    p.nat_a = Some("203.0.113.7".parse().unwrap());
    p.initiate();
    p.run_for(Duration::from_secs(1));
    p.assert_children_match();
    let d = auth_datagrams(&p, Side::A, false);
    assert!(d.len() >= 2);
    for t in d.iter().chain(auth_datagrams(&p, Side::B, true).iter()) {
        assert!(t.non_esp_marker);
        // 20 (IP) + 8 (UDP) + 4 (marker) + IKE message.
        assert!(ip_datagram_len(t) <= 200, "{}", ip_datagram_len(t));
    }
}

#[test]
fn no_fragments_unless_both_announce_support() {
    for (fa, fb) in [(true, false), (false, true)] {
        let a = config_a();
        let ea = EndpointConfig {
            fragmentation: fa,
            ..small(200)
        };
        let eb = EndpointConfig {
            fragmentation: fb,
            ..small(200)
        };
        let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), ea, eb);
        p.initiate();
        p.run_for(Duration::from_secs(1));
        p.assert_children_match();
        // Only the side that wants it announces it.
        let announced: Vec<bool> = p
            .log
            .iter()
            .filter(|s| kind(&s.t).0 == ExchangeType::IKE_SA_INIT)
            .map(|s| {
                let m = strait_ike::codec::Message::parse(ike(&s.t)).unwrap();
                m.notify(strait_ike::codec::NotifyType::IKEV2_FRAGMENTATION_SUPPORTED)
                    .is_some()
            })
            .collect();
        assert_eq!(announced, vec![fa, fb]);
        for (from, response) in [(Side::A, false), (Side::B, true)] {
            let d = auth_datagrams(&p, from, response);
            assert_eq!(d.len(), 1, "{fa} {fb} {from:?}");
            assert!(!kind(&d[0]).3);
            assert!(ip_datagram_len(&d[0]) > 200);
        }
    }
}

#[test]
fn a_lost_fragment_is_recovered_by_resending_every_fragment() {
    // Lose the second fragment of the IKE_AUTH request, then of the response.
    for (side, response) in [(Side::A, false), (Side::B, true)] {
        let a = config_a();
        let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), small(200), small(200));
        let mut dropped = false;
        p.filter = Box::new(move |from, t, _| {
            let (x, r, _, frag) = kind(t);
            if !dropped
                && from == side
                && x == ExchangeType::IKE_AUTH
                && r == response
                && frag
                && fragment_of(t).0 == 2
            {
                dropped = true;
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        p.initiate();
        p.run_for(Duration::from_secs(30));
        assert_eq!(Pair::ups(&p.ev_a), 1, "{side:?}");
        assert_eq!(Pair::ups(&p.ev_b), 1, "{side:?}");
        p.assert_children_match();
        let up_at = p
            .ev_a
            .iter()
            .find(|(_, e)| matches!(e, strait_ike::Event::IkeSaUp { .. }))
            .unwrap()
            .0;
        assert_eq!(up_at - p.t0, Duration::from_secs(4), "one retransmission");
        // The request was sent twice, every fragment each time, byte for byte.
        let req = auth_datagrams(&p, Side::A, false);
        let n = fragment_of(&req[0]).1 as usize;
        assert_eq!(req.len(), 2 * n);
        assert_eq!(
            req[..n].iter().map(|t| &t.payload).collect::<Vec<_>>(),
            req[n..].iter().map(|t| &t.payload).collect::<Vec<_>>()
        );
        let resp = auth_datagrams(&p, Side::B, true);
        let m = fragment_of(&resp[0]).1 as usize;
        if response {
            // Fragment 1 of the retransmitted request made B resend its whole cached answer;
            // the request's other fragments did not.
            assert_eq!(resp.len(), 2 * m);
            assert_eq!(p.b.stats().retransmits_answered, 1);
        } else {
            assert_eq!(resp.len(), m);
        }
    }
}

#[test]
fn duplicated_and_reordered_fragments_change_nothing() {
    let a = config_a();
    let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), small(200), small(200));
    p.filter = Box::new(|_, _, _| Fate::Duplicate);
    p.initiate();
    p.run_for(Duration::from_secs(30));
    assert_eq!(Pair::ups(&p.ev_a), 1);
    assert_eq!(Pair::ups(&p.ev_b), 1);
    p.assert_children_match();

    for phase in 0..3 {
        let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), small(200), small(200));
        // Every other fragment goes to the back of the queue: fragments arrive out of order.
        p.filter = Box::new(move |_, t, n| {
            if kind(t).3 && (n + phase) % 2 == 0 {
                Fate::Delay
            } else if kind(t).3 && phase == 2 {
                Fate::Duplicate
            } else {
                Fate::Deliver
            }
        });
        p.initiate();
        p.run_for(Duration::from_secs(1));
        assert_eq!(Pair::ups(&p.ev_a), 1, "phase {phase}");
        assert_eq!(Pair::ups(&p.ev_b), 1, "phase {phase}");
        p.assert_children_match();
    }
}

/// Flips one octet of a datagram (as the network carries it) at `from_end` octets before its
/// end: inside the ICV for small values.
fn corrupt(t: &Transmit, from_end: usize) -> Vec<u8> {
    let mut d = t.payload.clone();
    let n = d.len() - from_end;
    d[n] ^= 0x40;
    d
}

#[test]
fn forged_fragments_are_dropped_without_poisoning_reassembly() {
    let a = config_a();
    let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), small(150), small(200));
    // Hold back A's first IKE_AUTH request so the test can feed B by hand.
    p.filter = Box::new(|from, t, _| {
        if from == Side::A && kind(t).0 == ExchangeType::IKE_AUTH {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.initiate();
    p.settle();
    let real = auth_datagrams(&p, Side::A, false);
    let n = real.len();
    assert!(n >= 3);
    let feed = |p: &mut Pair, d: &[u8]| {
        let t = &real[0];
        p.b.handle(p.now, t.remote, t.local, d);
    };
    // A forged fragment 1 (bad ICV), and a forged last fragment whose header claims one more
    // fragment than the real message (it would restart reassembly if it were believed).
    feed(&mut p, &corrupt(&real[0], 1));
    let mut bigger = real[n - 1].payload.clone();
    let total = u16::try_from(n + 1).unwrap().to_be_bytes();
    bigger[34..36].copy_from_slice(&total);
    feed(&mut p, &bigger);
    // The real fragments, each followed by a forged copy of the next one.
    for (i, t) in real.iter().enumerate() {
        feed(&mut p, &t.payload);
        if let Some(next) = real.get(i + 1) {
            feed(&mut p, &corrupt(next, 3));
        }
    }
    assert_eq!(p.b.stats().integrity_failed, 2 + (n as u64 - 1));
    p.filter = Box::new(|_, _, _| Fate::Deliver);
    p.settle();
    assert_eq!(Pair::ups(&p.ev_b), 1);
    assert_eq!(Pair::ups(&p.ev_a), 1);
    p.assert_children_match();
    // Done before A's first retransmission.
    assert_eq!(p.now, p.t0);
}

#[test]
fn too_many_fragments_are_refused() {
    // A sender whose fragments carry a few octets each needs more than the 64 fragments a
    // receiver takes: the exchange cannot complete.
    let a = config_a();
    let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), small(91), small(1280));
    p.initiate();
    p.run_for(Duration::from_secs(300));
    let first = auth_datagrams(&p, Side::A, false);
    assert!(
        fragment_of(&first[0]).1 > 64,
        "{:?}",
        fragment_of(&first[0])
    );
    assert_eq!(Pair::ups(&p.ev_b), 0);
    assert_eq!(
        Pair::downs(&p.ev_a).iter().map(|d| d.1).collect::<Vec<_>>(),
        vec![Reason::PeerUnreachable]
    );
    assert!(auth_datagrams(&p, Side::B, true).is_empty());
    assert!(p.b.stats().unexpected > 0);
}
