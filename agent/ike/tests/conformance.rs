//! RFC 7296 details the protocol review found missing (`ike-protocol-review.md`, M-1a..f), each
//! a case that failed before its fix.
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
use util::{A_IP, B_IP, Fate, Pair, Side, addr, config_a, mirror};

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
