//! Replayed messages of an established IKE SA, sent from another address (an attacker on the
//! path captured them): they pass the integrity check, yet must not move the SA's peer address
//! (RFC 7296 §2.23: only a new authenticated message may). Found by the e2e hardening test,
//! where a replayed DPD request sent the agent's next own request to the attacker's port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use strait_ike::codec::{ExchangeType, Header};
use strait_ike::{EspSpi, Event};
use util::*;

const ATTACKER: &str = "203.0.113.66:7777";

fn header(t: &strait_ike::Transmit) -> Header {
    let raw = if t.non_esp_marker {
        &t.payload[4..]
    } else {
        &t.payload[..]
    };
    Header::peek(raw).unwrap().header
}

/// A behind a NAT (so IKE is on 4500 and floating is allowed), established; returns the pair
/// and where B sees A.
fn established() -> (Pair, SocketAddr) {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_addr = "0.0.0.0:500".parse().unwrap();
    let mut p = Pair::new(a, b);
    p.nat_a = Some("203.0.113.7".parse().unwrap());
    p.initiate();
    p.run_for(Duration::from_secs(1));
    p.assert_children_match();
    let a_public: SocketAddr = "203.0.113.7:5500".parse().unwrap();
    (p, a_public)
}

/// B starts a CHILD rekey; returns where its request goes.
fn b_request_goes_to(p: &mut Pair) -> SocketAddr {
    let spi = Pair::installs(&p.ev_b).last().unwrap().spi_in;
    p.b.expire_child(p.now, p.b_peer, spi, false);
    let t =
        p.b.poll_transmit()
            .expect("B sends a CREATE_CHILD_SA request");
    let h = header(&t);
    assert_eq!(h.exchange_type, ExchangeType::CREATE_CHILD_SA);
    assert!(!h.flags.is_response());
    t.remote
}

#[test]
fn a_replayed_request_does_not_move_the_peer_address() {
    let (mut p, a_public) = established();
    // A's IKE_AUTH request, already answered: B re-sends its cached answer to whoever asks,
    // but keeps talking to A where A is
    let auth = p
        .log
        .iter()
        .find(|s| s.from == Side::A && header(&s.t).exchange_type == ExchangeType::IKE_AUTH)
        .unwrap()
        .t
        .clone();
    p.b.handle(
        p.now,
        addr(B_IP, 4500),
        ATTACKER.parse().unwrap(),
        &auth.payload,
    );
    let answer = p.b.poll_transmit().expect("the cached response");
    assert_eq!(answer.remote, ATTACKER.parse().unwrap());
    assert!(header(&answer).flags.is_response());
    assert_eq!(b_request_goes_to(&mut p), a_public);
}

#[test]
fn a_replayed_response_does_not_move_the_peer_address() {
    let (mut p, a_public) = established();
    // one exchange started by B, answered by A
    let spi: EspSpi = Pair::installs(&p.ev_b)[0].spi_in;
    p.b.expire_child(p.now, p.b_peer, spi, false);
    p.run_for(Duration::from_secs(1));
    let response = p
        .log
        .iter()
        .rev()
        .find(|s| s.from == Side::A && header(&s.t).flags.is_response())
        .unwrap()
        .t
        .clone();
    while p.b.poll_event().is_some() {}
    p.b.handle(
        p.now,
        addr(B_IP, 4500),
        ATTACKER.parse().unwrap(),
        &response.payload,
    );
    assert!(
        p.b.poll_transmit().is_none(),
        "a stale response is not answered"
    );
    assert!(
        !std::iter::from_fn(|| p.b.poll_event()).any(|e| matches!(e, Event::IkeSaDown { .. })),
        "nothing went down"
    );
    // B's next request still goes to A
    let installs = Pair::installs(&p.ev_b);
    let newest = installs.last().unwrap().spi_in;
    p.b.expire_child(p.now, p.b_peer, newest, false);
    let t = p.b.poll_transmit().expect("B rekeys again");
    assert_eq!(t.remote, a_public);
}

#[test]
fn a_new_request_from_a_new_address_still_moves_it() {
    // the NAT mapping of A changed: A's next new request comes from another port, and B
    // follows it (§2.23)
    let (mut p, _) = established();
    p.nat_a = Some("203.0.113.8".parse().unwrap());
    let spi = Pair::installs(&p.ev_a)[0].spi_in;
    p.a.expire_child(p.now, p.a_peer, spi, false);
    p.run_for(Duration::from_secs(1));
    assert_eq!(
        b_request_goes_to(&mut p),
        "203.0.113.8:5500".parse::<SocketAddr>().unwrap()
    );
}
