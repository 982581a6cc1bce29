//! Certificate authentication (RFC 7296 §2.15 with RFC 7427 signatures) between two endpoints
//! on a simulated clock: RSA and ECDSA both ways, chains through an intermediate, identities by
//! subjectAltName and by DN, and every way a peer's certificate can fail. Certificates come from
//! `tests/data/gen.sh` and are valid at the fixed wall-clock time the tests set.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::time::Duration;

use strait_ike::codec::{ExchangeType, Header, Message, Payload, PayloadType};
use strait_ike::crypto::x509::Certificate;
use strait_ike::{
    AuthConfig, CertificateAuth, ConfigError, EndpointConfig, Identity, PeerConfig, Reason,
    Transmit,
};
use util::{Fate, Pair, Side, config_a, mirror};

/// 2030-01-01T00:00:00Z: inside every "good" certificate's validity.
const JAN_2030: u64 = 1_893_456_000;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Certificate material: `leaf` (+ the intermediate for the ECDSA leaf, which needs it), its
/// key, and `ca` as trust anchor.
fn material(leaf: &str, ca: &str) -> CertificateAuth {
    let mut chain = data(&format!("{leaf}.pem"));
    if leaf == "ecdsa" {
        chain.extend(data("intermediate.pem"));
    }
    CertificateAuth::from_pem(&chain, &data(&format!("{leaf}.key")), &data(ca)).unwrap()
}

fn fqdn(s: &str) -> Identity {
    Identity::Fqdn(s.into())
}

/// A with `a_leaf`, B with `b_leaf`, each trusting `ca.pem`.
fn configs(a_leaf: &str, b_leaf: &str) -> (PeerConfig, PeerConfig) {
    let mut a = config_a();
    a.local_id = fqdn(&format!("{a_leaf}.example.com"));
    a.remote_id = fqdn(&format!("{b_leaf}.example.com"));
    a.auth = AuthConfig::Certificate(material(a_leaf, "ca.pem"));
    let mut b = mirror(&a);
    b.auth = AuthConfig::Certificate(material(b_leaf, "ca.pem"));
    (a, b)
}

fn pair(a: PeerConfig, b: PeerConfig, ea: EndpointConfig, eb: EndpointConfig) -> Pair {
    let mut p = Pair::with_endpoint_config(a, b, ea, eb);
    let t0 = p.t0;
    p.a.set_wall_clock(t0, JAN_2030);
    p.b.set_wall_clock(t0, JAN_2030);
    p
}

fn run(a: PeerConfig, b: PeerConfig) -> Pair {
    let mut p = pair(a, b, EndpointConfig::default(), EndpointConfig::default());
    p.initiate();
    p.run_for(Duration::from_secs(30));
    p
}

fn ike(t: &Transmit) -> &[u8] {
    if t.non_esp_marker {
        &t.payload[4..]
    } else {
        &t.payload[..]
    }
}

fn reasons(ev: &[(std::time::Instant, strait_ike::Event)]) -> Vec<Reason> {
    Pair::downs(ev).into_iter().map(|d| d.1).collect()
}

#[test]
fn rsa_and_ecdsa_authenticate_both_ways() {
    for (a_leaf, b_leaf) in [
        ("rsa", "ecdsa"),
        ("ecdsa", "rsa"),
        ("rsa", "rsa"),
        ("ecdsa", "ecdsa"),
    ] {
        let (a, b) = configs(a_leaf, b_leaf);
        let p = run(a, b);
        assert_eq!(Pair::ups(&p.ev_a), 1, "{a_leaf}/{b_leaf}: {:?}", p.ev_a);
        assert_eq!(Pair::ups(&p.ev_b), 1, "{a_leaf}/{b_leaf}: {:?}", p.ev_b);
        p.assert_children_match();
        assert!(reasons(&p.ev_a).is_empty() && reasons(&p.ev_b).is_empty());
    }
}

#[test]
fn responder_asks_for_certificates_from_our_ca_in_ike_sa_init() {
    let (a, b) = configs("rsa", "ecdsa");
    let p = run(a, b);
    let init_resp = p
        .log
        .iter()
        .find(|s| s.from == Side::B)
        .map(|s| Message::parse(ike(&s.t)).unwrap())
        .unwrap();
    assert_eq!(init_resp.header.exchange_type, ExchangeType::IKE_SA_INIT);
    let req = init_resp
        .payloads
        .iter()
        .find_map(|p| match p {
            Payload::CertificateRequest(r) => Some(r.clone()),
            _ => None,
        })
        .expect("CERTREQ");
    let ca = Certificate::from_pem(&data("ca.pem")).unwrap().remove(0);
    assert_eq!(req.authority, ca.public_key_sha1().unwrap().to_vec());
    // PSK peers send none.
    let a = config_a();
    let p = run(a.clone(), mirror(&a));
    let init_resp = Message::parse(ike(&p.log[1].t)).unwrap();
    assert!(
        !init_resp
            .payloads
            .iter()
            .any(|p| matches!(p, Payload::CertificateRequest(_)))
    );
}

#[test]
fn distinguished_names_and_other_alt_names_identify_too() {
    let rsa = Certificate::from_pem(&data("rsa.pem")).unwrap().remove(0);
    let (mut a, _) = configs("rsa", "ecdsa");
    a.local_id = Identity::DerDn(rsa.subject_der().unwrap());
    a.remote_id = Identity::UserFqdn("admin@example.com".into());
    let mut b = mirror(&a);
    b.auth = AuthConfig::Certificate(material("ecdsa", "ca.pem"));
    let p = run(a.clone(), b.clone());
    assert_eq!(Pair::ups(&p.ev_a), 1, "{:?}", p.ev_a);
    assert_eq!(Pair::ups(&p.ev_b), 1, "{:?}", p.ev_b);

    // B accepts any identity the certificate proves: its IP SAN here.
    a.remote_id = Identity::Any;
    b.local_id = Identity::Ipv4("192.0.2.1".parse().unwrap());
    b.remote_id = Identity::Any;
    let p = run(a, b);
    assert_eq!(Pair::ups(&p.ev_a), 1, "{:?}", p.ev_a);
}

#[test]
fn an_untrusted_issuer_fails_authentication() {
    // B trusts another CA.
    let (a, mut b) = configs("rsa", "ecdsa");
    b.auth = AuthConfig::Certificate(material("ecdsa", "other-ca.pem"));
    let p = run(a, b);
    assert_eq!(reasons(&p.ev_b), vec![Reason::AuthenticationFailed]);
    assert_eq!(reasons(&p.ev_a), vec![Reason::AuthenticationFailed]);
    assert_eq!(Pair::ups(&p.ev_a) + Pair::ups(&p.ev_b), 0);

    // A's certificate comes from another CA that B does not trust.
    let (mut a, b) = configs("rsa", "ecdsa");
    a.local_id = fqdn("stranger.example.com");
    a.auth = AuthConfig::Certificate(material("stranger", "ca.pem"));
    let mut b = b;
    b.remote_id = fqdn("stranger.example.com");
    let p = run(a, b);
    assert_eq!(reasons(&p.ev_b), vec![Reason::AuthenticationFailed]);
    assert_eq!(reasons(&p.ev_a), vec![Reason::AuthenticationFailed]);
}

#[test]
fn expired_and_not_yet_valid_certificates_are_named_as_such() {
    for (leaf, reason) in [
        ("expired", Reason::CertificateExpired),
        ("future", Reason::CertificateNotYetValid),
    ] {
        // The initiator's certificate: the responder says why, the initiator hears
        // AUTHENTICATION_FAILED.
        let (mut a, mut b) = configs("rsa", "ecdsa");
        a.local_id = fqdn(&format!("{leaf}.example.com"));
        a.auth = AuthConfig::Certificate(material(leaf, "ca.pem"));
        b.remote_id = a.local_id.clone();
        let p = run(a, b);
        assert_eq!(reasons(&p.ev_b), vec![reason], "{leaf}");
        assert_eq!(
            reasons(&p.ev_a),
            vec![Reason::AuthenticationFailed],
            "{leaf}"
        );
        assert_eq!(
            reason.as_str(),
            ["Certificate", &leaf_reason(leaf)].concat()
        );

        // The responder's certificate: the initiator says why and tells the responder.
        let (mut a, mut b) = configs("rsa", "ecdsa");
        b.local_id = fqdn(&format!("{leaf}.example.com"));
        b.auth = AuthConfig::Certificate(material(leaf, "ca.pem"));
        a.remote_id = b.local_id.clone();
        let p = run(a, b);
        assert_eq!(reasons(&p.ev_a), vec![reason], "{leaf}");
        assert_eq!(
            reasons(&p.ev_b),
            vec![Reason::AuthenticationFailed],
            "{leaf}"
        );
    }
}

fn leaf_reason(leaf: &str) -> String {
    if leaf == "expired" {
        "Expired".into()
    } else {
        "NotYetValid".into()
    }
}

#[test]
fn an_identity_the_certificate_does_not_prove_fails() {
    // A claims B's name with its own (valid, trusted) certificate.
    let (mut a, mut b) = configs("rsa", "ecdsa");
    a.local_id = fqdn("ecdsa.example.com");
    b.remote_id = Identity::Any;
    let p = run(a, b);
    assert_eq!(reasons(&p.ev_b), vec![Reason::AuthenticationFailed]);
    assert_eq!(reasons(&p.ev_a), vec![Reason::AuthenticationFailed]);

    // B proves a name, but not the one A wants.
    let (mut a, b) = configs("rsa", "ecdsa");
    a.remote_id = fqdn("other.example.com");
    let p = run(a, b);
    assert_eq!(reasons(&p.ev_b), vec![Reason::AuthenticationFailed]);
    assert_eq!(reasons(&p.ev_a), vec![Reason::AuthenticationFailed]);
}

#[test]
fn without_a_wall_clock_certificates_cannot_be_checked() {
    let (a, b) = configs("rsa", "ecdsa");
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(30));
    assert_eq!(reasons(&p.ev_b), vec![Reason::ClockUnset]);
    assert_eq!(Pair::ups(&p.ev_a), 0);
}

#[test]
fn unusable_material_is_refused_when_the_peer_is_added() {
    assert_eq!(
        CertificateAuth::from_pem(&data("rsa.pem"), &data("ecdsa.key"), &data("ca.pem")).err(),
        Some(ConfigError::InvalidCertificate)
    );
    assert!(CertificateAuth::from_pem(&data("rsa.pem"), &data("rsa.key"), b"").is_err());
    let (mut a, _) = configs("rsa", "ecdsa");
    let AuthConfig::Certificate(m) = &mut a.auth else {
        panic!()
    };
    m.ca.clear();
    let mut ep = strait_ike::Endpoint::new(
        EndpointConfig::default(),
        Box::new(strait_ike::crypto::rng::DeterministicRng::new(1)),
    );
    assert_eq!(ep.add_peer(a).err(), Some(ConfigError::InvalidCertificate));
    // The key never shows in Debug output.
    let (a, _) = configs("rsa", "ecdsa");
    let dbg = format!("{a:?}");
    assert!(dbg.contains("rsa.example.com") && !dbg.contains("PRIVATE"));
}

/// (exchange, response, SKF) of a datagram.
fn kind(t: &Transmit) -> (ExchangeType, bool, bool) {
    let w = Header::peek(ike(t)).unwrap();
    (
        w.header.exchange_type,
        w.header.flags.is_response(),
        w.next_payload == PayloadType::SKF,
    )
}

#[test]
fn certificates_travel_in_fragments_at_realistic_sizes() {
    for size in [576, 1280] {
        let (a, b) = configs("rsa", "ecdsa");
        let e = EndpointConfig {
            fragment_size: size,
            ..EndpointConfig::default()
        };
        let mut p = pair(a, b, e.clone(), e);
        // Lose one fragment of each IKE_AUTH message on its first trip.
        let mut lost = [false; 2];
        p.filter = Box::new(move |_, t, _| {
            let (x, r, f) = kind(t);
            if x == ExchangeType::IKE_AUTH && f && !lost[usize::from(r)] {
                lost[usize::from(r)] = true;
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        p.initiate();
        p.run_for(Duration::from_secs(30));
        assert_eq!(Pair::ups(&p.ev_a), 1, "{size}: {:?}", p.ev_a);
        assert_eq!(Pair::ups(&p.ev_b), 1, "{size}: {:?}", p.ev_b);
        p.assert_children_match();
        let mut fragmented = 0;
        for (from, response) in [(Side::A, false), (Side::B, true)] {
            let auth: Vec<&Transmit> = p
                .log
                .iter()
                .filter(|s| s.from == from && kind(&s.t).0 == ExchangeType::IKE_AUTH)
                .filter(|s| kind(&s.t).1 == response)
                .map(|s| &s.t)
                .collect();
            assert!(auth.iter().all(|t| 20 + 8 + t.payload.len() <= size));
            if auth.iter().all(|t| kind(t).2) {
                fragmented += 1;
            }
        }
        // At 576 both messages need fragments; at 1280 the one with two certificates does.
        assert_eq!(fragmented, if size == 576 { 2 } else { 1 }, "{size}");
    }
}

#[test]
fn the_initiators_authentication_failed_notice_is_retransmitted() {
    for drop_all in [false, true] {
        let (mut a, mut b) = configs("rsa", "ecdsa");
        b.local_id = fqdn("expired.example.com");
        b.auth = AuthConfig::Certificate(material("expired", "ca.pem"));
        a.remote_id = b.local_id.clone();
        let mut p = pair(a, b, EndpointConfig::default(), EndpointConfig::default());
        let mut dropped = false;
        p.filter = Box::new(move |from, t, _| {
            if from == Side::A && kind(t).0 == ExchangeType::INFORMATIONAL && (drop_all || !dropped)
            {
                dropped = true;
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        p.initiate();
        p.run_for(Duration::from_secs(300));
        assert_eq!(reasons(&p.ev_a), vec![Reason::CertificateExpired]);
        let notices = p
            .log
            .iter()
            .filter(|s| s.from == Side::A && kind(&s.t).0 == ExchangeType::INFORMATIONAL)
            .count();
        if drop_all {
            // Sent and retransmitted on the usual schedule, then given up without a second
            // event.
            assert_eq!(notices, 6);
            // B never heard: it still holds the SA it established (DPD would find out).
            assert!(reasons(&p.ev_b).is_empty());
            assert_eq!(Pair::ups(&p.ev_b), 1);
        } else {
            assert_eq!(notices, 2);
            assert_eq!(reasons(&p.ev_b), vec![Reason::AuthenticationFailed]);
        }
        assert_eq!(p.a.ike_sa_count(), 0);
    }
}
