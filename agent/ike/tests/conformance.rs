//! RFC 7296 details the protocol review found missing (`ike-protocol-review.md`, M-1a..f), each
//! a case that failed before its fix (M-1e's checked by removing the check).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::time::{Duration, Instant};

use strait_ike::codec::{
    ExchangeType, HashAlgorithm, Header, Message, NotifyType, Payload, PayloadType,
};
use strait_ike::crypto::keys::SecretBytes;
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::probe::Probe;
use strait_ike::{AuthConfig, Endpoint, EndpointConfig, Reason, Transmit};
use util::{A_IP, B_IP, Fate, Pair, Side, WALL_CLOCK, addr, config_a, mirror};

/// B's endpoint as a responder for A, and an IKE_SA_INIT request from A (the probe's: the
/// tunnel's own proposals).
fn responder_and_request() -> (Endpoint, Vec<u8>) {
    let a = config_a();
    let mut b = Endpoint::new(
        EndpointConfig::default(),
        Box::new(DeterministicRng::new(2)),
    );
    b.add_peer(mirror(&a)).unwrap();
    let (_, request) = Probe::request(
        &a.ike_proposals,
        addr(A_IP, 500),
        addr(B_IP, 500),
        &mut DeterministicRng::new(1),
    )
    .unwrap();
    (b, request)
}

fn answer(b: &mut Endpoint, request: &[u8]) -> Option<Transmit> {
    b.handle(Instant::now(), addr(B_IP, 500), addr(A_IP, 500), request);
    b.poll_transmit()
}

#[test]
fn m1b_a_zero_initiator_spi_is_not_answered() {
    let (mut control, request) = responder_and_request();
    assert!(
        answer(&mut control, &request).is_some(),
        "control: answered"
    );
    let (mut b, mut request) = responder_and_request();
    request[..8].fill(0);
    assert!(answer(&mut b, &request).is_none());
    assert_eq!(b.ike_sa_count(), 0);
}

#[test]
fn m1c_an_unknown_critical_payload_is_answered_unsupported_critical_payload() {
    let (mut b, request) = responder_and_request();
    let mut msg = Message::parse(&request).unwrap();
    msg.payloads.push(Payload::Unknown {
        ty: PayloadType(200),
        critical: true,
        body: vec![1, 2, 3, 4],
    });
    let out = answer(&mut b, &msg.encode().unwrap()).expect("an answer");
    let reply = Message::parse(&out.payload).unwrap();
    assert!(reply.header.flags.is_response());
    assert_eq!(reply.header.exchange_type, ExchangeType::IKE_SA_INIT);
    let n = reply
        .notify(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
        .expect("UNSUPPORTED_CRITICAL_PAYLOAD");
    assert_eq!(n.data, [200]);
    assert_eq!(b.ike_sa_count(), 0);
}

#[test]
fn m1d_identity_is_not_advertised_without_eddsa() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate();
    p.run_for(Duration::from_secs(1));
    let first = &p.log[0].t.payload;
    let hashes = Message::parse(first)
        .unwrap()
        .notify(NotifyType::SIGNATURE_HASH_ALGORITHMS)
        .and_then(|n| n.hash_algorithms())
        .unwrap();
    assert!(!hashes.contains(&HashAlgorithm::IDENTITY), "{hashes:?}");
    assert!(hashes.contains(&HashAlgorithm::SHA2_256));
}

#[test]
fn m1a_a_forged_refusal_does_not_end_the_attempt_when_the_real_answer_follows() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate();
    let request = p.a.poll_transmit().unwrap();
    let h = Header::peek(&request.payload).unwrap().header;
    // an on-path attacker answers first with NO_PROPOSAL_CHOSEN under our SPI
    let forged = Message {
        header: Header {
            flags: strait_ike::codec::Flags::RESPONSE,
            ..h
        },
        payloads: vec![Payload::Notify(strait_ike::codec::Notify::empty(
            NotifyType::NO_PROPOSAL_CHOSEN,
        ))],
    };
    p.a.handle(
        p.now,
        addr(A_IP, 500),
        addr(B_IP, 500),
        &forged.encode().unwrap(),
    );
    // then the real request reaches B and its answer comes back
    p.b.handle(p.now, addr(B_IP, 500), addr(A_IP, 500), &request.payload);
    p.run_for(Duration::from_secs(2));
    assert!(Pair::downs(&p.ev_a).is_empty(), "{:?}", p.ev_a);
    assert_eq!(Pair::ups(&p.ev_a), 1);
}

#[test]
fn m1f_a_lost_authentication_failed_is_answered_again_from_the_closing_sa() {
    let a = config_a();
    let mut b = mirror(&a);
    b.auth = AuthConfig::Psk(SecretBytes::from_slice(b"not the key A has"));
    let mut p = Pair::new(a, b);
    // B's IKE_AUTH answer (AUTHENTICATION_FAILED) is lost twice: A learns it only from its
    // second retransmission, 11.2 s after the first send
    let mut lost = 0;
    p.filter = Box::new(move |from, t, _| {
        let h = Header::peek(&t.payload).unwrap().header;
        if from == Side::B && h.exchange_type == ExchangeType::IKE_AUTH && lost < 2 {
            lost += 1;
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.initiate();
    p.run_for(Duration::from_secs(20));
    let downs: Vec<Reason> = Pair::downs(&p.ev_a).into_iter().map(|d| d.1).collect();
    assert_eq!(downs, [Reason::AuthenticationFailed]);
}

/// The exchange, message ID and direction of a transmit.
fn kind(t: &Transmit) -> (ExchangeType, u32, bool) {
    let h = Header::peek(&t.payload).unwrap().header;
    (h.exchange_type, h.message_id, h.flags.is_response())
}

/// M-1e: an authentic response whose exchange type is not the request's is no answer to it.
/// Forging one needs the SA's keys, so A is cloned from its own saved state: the clone asks B
/// something else (an INFORMATIONAL deleting the CHILD SA) under the message ID of A's
/// CREATE_CHILD_SA, and B's authentic INFORMATIONAL answer is given to A. A must leave its
/// request outstanding and retransmit it; taking the answer as its own left the rekey hanging
/// with nothing retransmitted.
#[test]
fn m1e_an_answer_in_another_exchange_is_left_and_the_request_retransmitted() {
    let a_cfg = config_a();
    let mut p = Pair::new(a_cfg.clone(), mirror(&a_cfg));
    p.set_wall_clock();
    p.initiate();
    p.run_for(Duration::from_secs(2));
    p.assert_children_match();
    let spi = Pair::installs(&p.ev_a)[0].spi_in;
    let mut clone = Endpoint::new(
        EndpointConfig::default(),
        Box::new(DeterministicRng::new(9)),
    );
    clone.set_wall_clock(p.t0, WALL_CLOCK);
    let clone_peer = clone.add_peer(a_cfg).unwrap();
    let saved = p.a.save(p.now, p.a_peer).unwrap();
    clone.resume(p.now, clone_peer, saved.as_bytes()).unwrap();
    while clone.poll_event().is_some() {}

    let now = p.now;
    p.a.expire_child(now, p.a_peer, spi, false);
    let rekey = p.a.poll_transmit().expect("A's CREATE_CHILD_SA");
    let (x, id, response) = kind(&rekey);
    assert_eq!((x, response), (ExchangeType::CREATE_CHILD_SA, false));
    clone.expire_child(now, clone_peer, spi, true);
    let delete = std::iter::from_fn(|| clone.poll_transmit())
        .find(|t| kind(t) == (ExchangeType::INFORMATIONAL, id, false))
        .expect("the clone's INFORMATIONAL under the same message ID");
    p.b.handle(now, delete.remote, delete.local, &delete.payload);
    let answer = std::iter::from_fn(|| p.b.poll_transmit())
        .find(|t| kind(t) == (ExchangeType::INFORMATIONAL, id, true))
        .expect("B's INFORMATIONAL answer");

    let unexpected = p.a.stats().unexpected;
    p.a.handle(now, answer.remote, answer.local, &answer.payload);
    assert_eq!(p.a.stats().unexpected, unexpected + 1, "{:?}", p.a.stats());
    assert!(p.a.poll_transmit().is_none(), "A answered B's answer");
    // A's retransmission timer still runs for the request
    let at = p.a.poll_timeout().expect("A's retransmission timer");
    assert!(
        at > now && at <= now + Duration::from_secs(5),
        "{:?}",
        at - now
    );
    p.a.handle_timeout(at);
    let again = std::iter::from_fn(|| p.a.poll_transmit())
        .find(|t| kind(t) == (ExchangeType::CREATE_CHILD_SA, id, false));
    assert_eq!(
        again.map(|t| t.payload),
        Some(rekey.payload),
        "A did not retransmit its CREATE_CHILD_SA"
    );
}
