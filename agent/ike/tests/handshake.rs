//! IKE_SA_INIT + IKE_AUTH between two endpoints on a simulated clock and network.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::time::Duration;

use strait_ike::codec::{ExchangeType, Header};
use strait_ike::crypto::alg::{Encr, KeGroup};
use strait_ike::crypto::keys::SecretBytes;
use strait_ike::proposal::{parse_esp_list, parse_ike_list};
use strait_ike::{AuthConfig, EndpointConfig, Event, Reason};
use util::{A_IP, B_IP, Fate, Pair, Side, addr, config_a, mirror, net};

fn exchange_of(t: &strait_ike::Transmit) -> (ExchangeType, bool) {
    let ike = if t.non_esp_marker {
        &t.payload[4..]
    } else {
        &t.payload[..]
    };
    let h = Header::peek(ike).unwrap().header;
    (h.exchange_type, h.flags.is_response())
}

#[test]
fn handshake_installs_matching_child_sas() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate();
    p.run_for(Duration::from_secs(1));
    assert_eq!(Pair::ups(&p.ev_a), 1);
    assert_eq!(Pair::ups(&p.ev_b), 1);
    let (x, y) = p.assert_children_match();
    assert_eq!(x.encr, Encr::AesGcm16_256);
    assert_eq!(x.integ, None);
    assert_eq!(x.keys.encr_in.len(), 36, "AES-256 key plus 4-byte salt");
    assert!(x.encapsulation.is_none() && y.encapsulation.is_none());
    assert_eq!(x.local_ts, vec![net("10.1.0.0/16")]);
    assert_eq!(x.remote_ts, vec![net("10.2.0.0/16")]);
    assert!(x.lifetimes.soft <= Duration::from_secs(3600));
    assert!(x.lifetimes.soft > Duration::from_secs(3240));
    assert_eq!(x.lifetimes.hard, Duration::from_secs(3960));
    assert!(x.replaces.is_none());
    // Exactly four datagrams: INIT request/response, AUTH request/response.
    let kinds: Vec<_> = p.log.iter().map(|s| (s.from, exchange_of(&s.t))).collect();
    assert_eq!(
        kinds,
        vec![
            (Side::A, (ExchangeType::IKE_SA_INIT, false)),
            (Side::B, (ExchangeType::IKE_SA_INIT, true)),
            (Side::A, (ExchangeType::IKE_AUTH, false)),
            (Side::B, (ExchangeType::IKE_AUTH, true)),
        ]
    );
    assert!(
        p.log
            .iter()
            .all(|s| s.t.local.port() == 500 && !s.t.non_esp_marker)
    );
    // Keys never show up in Debug output.
    let dbg = format!("{:?}", x);
    assert!(dbg.contains("redacted"));
    let key_hex: String = x.keys.encr_in.as_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!dbg.contains(&key_hex));
    match &p.ev_a[0].1 {
        Event::IkeSaUp {
            initiator,
            nat,
            proposal,
            ..
        } => {
            assert!(*initiator);
            assert!(!nat.encapsulate());
            assert_eq!(proposal.ke, KeGroup::Curve25519);
        }
        other => panic!("{other:?}"),
    }
    // Idle, nothing else happens (no DPD configured).
    p.run_for(Duration::from_secs(600));
    assert_eq!(p.log.len(), 4);
    assert!(Pair::downs(&p.ev_a).is_empty() && Pair::downs(&p.ev_b).is_empty());
}

#[test]
fn cbc_sha2_and_ipv6_work_too() {
    let mut a = config_a();
    a.local_addr = "[2001:db8::1]:500".parse().unwrap();
    a.remote_addr = "[2001:db8::2]:500".parse().unwrap();
    a.local_id = strait_ike::Identity::ip(a.local_addr.ip());
    a.remote_id = strait_ike::Identity::UserFqdn("gw@b.example.com".into());
    a.ike_proposals = parse_ike_list(&["aes128-sha384-ecp256"]).unwrap();
    a.esp_proposals = parse_esp_list(&["aes256-sha256-esn"]).unwrap();
    a.local_ts = vec![net("2001:db8:1::/48")];
    a.remote_ts = vec![net("2001:db8:2::/48")];
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate();
    p.run_for(Duration::from_secs(1));
    let (x, _) = p.assert_children_match();
    assert_eq!(x.encr, Encr::AesCbc256);
    assert!(x.integ.is_some());
    assert_eq!(x.keys.integ_in.len(), 32);
    assert_eq!(x.esn, strait_ike::crypto::alg::Esn::Yes);
}

#[test]
fn responder_narrows_traffic_selectors() {
    let mut a = config_a();
    a.local_ts = vec![net("10.0.0.0/8")];
    a.remote_ts = vec![net("0.0.0.0/0")];
    let mut b = mirror(&a);
    b.local_ts = vec![net("10.2.0.0/16")];
    b.remote_ts = vec![net("10.1.0.0/16")];
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(1));
    let (x, y) = p.assert_children_match();
    assert_eq!(x.local_ts, vec![net("10.1.0.0/16")]);
    assert_eq!(x.remote_ts, vec![net("10.2.0.0/16")]);
    assert_eq!(y.local_ts, vec![net("10.2.0.0/16")]);
}

#[test]
fn disjoint_selectors_fail_the_child_but_not_the_ike_sa() {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_ts = vec![net("172.16.0.0/12")];
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(1));
    assert_eq!(Pair::ups(&p.ev_a), 1);
    assert_eq!(Pair::ups(&p.ev_b), 1);
    assert!(Pair::installs(&p.ev_a).is_empty() && Pair::installs(&p.ev_b).is_empty());
    assert_eq!(Pair::child_failures(&p.ev_a), vec![Reason::TsUnacceptable]);
    assert_eq!(Pair::child_failures(&p.ev_b), vec![Reason::TsUnacceptable]);
}

#[test]
fn esp_proposal_mismatch_fails_the_child() {
    let a = config_a();
    let mut b = mirror(&a);
    b.esp_proposals = parse_esp_list(&["aes128gcm16"]).unwrap();
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(1));
    assert_eq!(Pair::ups(&p.ev_a), 1);
    assert_eq!(
        Pair::child_failures(&p.ev_a),
        vec![Reason::NoProposalChosen]
    );
    assert_eq!(
        Pair::child_failures(&p.ev_b),
        vec![Reason::NoProposalChosen]
    );
}

#[test]
fn wrong_psk_fails_both_sides() {
    let a = config_a();
    let mut b = mirror(&a);
    b.auth = AuthConfig::Psk(SecretBytes::from_slice(b"wrong"));
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(60));
    let da = Pair::downs(&p.ev_a);
    let db = Pair::downs(&p.ev_b);
    assert_eq!(da.len(), 1);
    assert_eq!(da[0].1, Reason::AuthenticationFailed);
    assert_eq!(db.len(), 1);
    assert_eq!(db[0].1, Reason::AuthenticationFailed);
    assert_eq!(Pair::ups(&p.ev_a) + Pair::ups(&p.ev_b), 0);
    assert!(Pair::installs(&p.ev_a).is_empty() && Pair::installs(&p.ev_b).is_empty());
    // A learned it from B's AUTHENTICATION_FAILED answer, right away.
    assert_eq!(da[0].0, p.t0);
    assert_eq!(p.a.ike_sa_count() + p.b.ike_sa_count(), 0);
}

#[test]
fn wrong_identity_fails_authentication() {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_id = strait_ike::Identity::Fqdn("someone-else.example.com".into());
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(5));
    assert_eq!(Pair::downs(&p.ev_a)[0].1, Reason::AuthenticationFailed);
    assert_eq!(Pair::downs(&p.ev_b)[0].1, Reason::AuthenticationFailed);
}

#[test]
fn ike_proposal_mismatch_is_no_proposal_chosen() {
    let a = config_a();
    let mut b = mirror(&a);
    b.ike_proposals = parse_ike_list(&["aes128-sha256-modp3072"]).unwrap();
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(5));
    let da = Pair::downs(&p.ev_a);
    assert_eq!(da.len(), 1);
    assert_eq!(da[0].1, Reason::NoProposalChosen);
    assert_eq!(Reason::NoProposalChosen.as_str(), "NoProposalChosen");
    // The responder kept no state: its one event is the diagnostic that explains the refusal.
    assert_eq!(p.b.ike_sa_count(), 0);
    assert!(
        matches!(&p.ev_b[..], [(_, Event::Diagnostic(_))]),
        "{:?}",
        p.ev_b
    );
}

#[test]
fn loss_of_each_message_is_recovered_by_retransmission() {
    for lost in 1..=4 {
        let a = config_a();
        let mut p = Pair::new(a.clone(), mirror(&a));
        p.filter = Box::new(move |_, _, n| if n == lost { Fate::Drop } else { Fate::Deliver });
        p.initiate();
        p.run_for(Duration::from_secs(30));
        assert_eq!(Pair::ups(&p.ev_a), 1, "lost #{lost}");
        assert_eq!(Pair::ups(&p.ev_b), 1, "lost #{lost}");
        p.assert_children_match();
        // Recovery needed exactly one retransmission, 4 s after the lost request was sent.
        let up_at = p
            .ev_a
            .iter()
            .find(|(_, e)| matches!(e, Event::IkeSaUp { .. }))
            .unwrap()
            .0;
        assert_eq!(up_at - p.t0, Duration::from_secs(4), "lost #{lost}");
    }
}

#[test]
fn duplicated_and_reordered_datagrams_change_nothing() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.filter = Box::new(|_, _, _| Fate::Duplicate);
    p.initiate();
    p.run_for(Duration::from_secs(30));
    p.assert_children_match();
    assert_eq!(Pair::ups(&p.ev_a), 1);
    assert_eq!(Pair::ups(&p.ev_b), 1);
    // The duplicated requests were answered from the cache, byte for byte.
    // One duplicated IKE_SA_INIT request and one duplicated IKE_AUTH request.
    assert_eq!(p.b.stats().retransmits_answered, 2, "{:?}", p.b.stats());
    let responses: Vec<&Vec<u8>> = p
        .log
        .iter()
        .filter(|s| s.from == Side::B && exchange_of(&s.t) == (ExchangeType::IKE_AUTH, true))
        .map(|s| &s.t.payload)
        .collect();
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0], responses[1]);

    let mut p = Pair::new(a.clone(), mirror(&a));
    p.filter = Box::new(|_, _, n| {
        if n % 2 == 1 {
            Fate::Delay
        } else {
            Fate::Deliver
        }
    });
    p.initiate();
    p.run_for(Duration::from_secs(30));
    p.assert_children_match();
}

#[test]
fn retransmitted_auth_request_gets_the_cached_response() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    // Drop B's IKE_AUTH response once: A retransmits, B answers from its cache.
    p.filter = Box::new(|_, _, n| if n == 4 { Fate::Drop } else { Fate::Deliver });
    p.initiate();
    p.run_for(Duration::from_secs(30));
    p.assert_children_match();
    let auth_responses: Vec<&Vec<u8>> = p
        .log
        .iter()
        .filter(|s| s.from == Side::B && exchange_of(&s.t) == (ExchangeType::IKE_AUTH, true))
        .map(|s| &s.t.payload)
        .collect();
    assert_eq!(auth_responses.len(), 2);
    assert_eq!(auth_responses[0], auth_responses[1]);
    assert_eq!(
        p.b.stats().retransmits_answered,
        1,
        "the retransmitted IKE_AUTH request"
    );
    assert_eq!(Pair::installs(&p.ev_b).len(), 1);
}

#[test]
fn the_sender_counts_its_retransmissions() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    // Drop B's IKE_AUTH response once: A sends its IKE_AUTH request a second time.
    p.filter = Box::new(|_, _, n| if n == 4 { Fate::Drop } else { Fate::Deliver });
    p.initiate();
    p.run_for(Duration::from_secs(30));
    p.assert_children_match();
    assert_eq!(p.a.stats().retransmits_sent, 1);
    assert_eq!(
        p.b.stats().retransmits_sent,
        0,
        "B resends nothing of its own"
    );
    assert_eq!(p.b.stats().retransmits_answered, 1);
}

#[test]
fn every_resend_to_an_unreachable_peer_is_counted() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.filter = Box::new(|_, _, _| Fate::Drop);
    p.initiate();
    p.run_for(Duration::from_secs(400));
    assert_eq!(p.log.len(), 6, "the first IKE_SA_INIT and five resends");
    assert_eq!(p.a.stats().retransmits_sent, 5);
}

#[test]
fn unreachable_peer_gives_up_after_the_backoff_schedule() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.filter = Box::new(|from, _, _| {
        if from == Side::A {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.initiate();
    p.run_for(Duration::from_secs(400));
    let sends: Vec<f64> = p.log.iter().map(|s| (s.at - p.t0).as_secs_f64()).collect();
    let want = [0.0, 4.0, 11.2, 24.16, 47.488, 89.4784];
    assert_eq!(sends.len(), want.len(), "{sends:?}");
    for (s, w) in sends.iter().zip(want) {
        assert!((s - w).abs() < 1e-6, "{sends:?}");
    }
    let d = Pair::downs(&p.ev_a);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].1, Reason::PeerUnreachable);
    assert!(((d[0].0 - p.t0).as_secs_f64() - 165.06112).abs() < 1e-6);
    assert_eq!(p.a.ike_sa_count(), 0);
    assert_eq!(p.a.poll_timeout(), None);
}

#[test]
fn configurable_retransmission_for_tests() {
    let a = config_a();
    let fast = EndpointConfig {
        retransmit: strait_ike::RetransmitConfig {
            timeout: Duration::from_millis(500),
            base: 2.0,
            tries: 2,
        },
        ..EndpointConfig::default()
    };
    let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), fast, EndpointConfig::default());
    p.filter = Box::new(|_, _, _| Fate::Drop);
    p.initiate();
    p.run_for(Duration::from_secs(10));
    let d = Pair::downs(&p.ev_a);
    assert_eq!(d[0].1, Reason::PeerUnreachable);
    assert_eq!(d[0].0 - p.t0, Duration::from_millis(500 + 1000 + 2000));
    assert_eq!(p.log.len(), 3);
}

#[test]
fn half_open_sa_expires_on_the_responder() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    // Only IKE_SA_INIT gets through.
    p.filter = Box::new(|_, t, _| {
        if exchange_of(t).0 == ExchangeType::IKE_SA_INIT {
            Fate::Deliver
        } else {
            Fate::Drop
        }
    });
    p.initiate();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.b.ike_sa_count(), 1);
    p.run_for(Duration::from_secs(28));
    assert_eq!(p.b.ike_sa_count(), 1);
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.b.ike_sa_count(), 0);
    assert!(p.ev_b.is_empty(), "nothing was reported up, nothing down");
}

#[test]
fn nat_is_detected_and_ike_floats_to_4500() {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_addr = "0.0.0.0:500".parse().unwrap(); // B accepts A from any address
    let mut p = Pair::new(a, b);
    p.nat_a = Some("203.0.113.7".parse().unwrap());
    p.initiate();
    p.run_for(Duration::from_secs(1));
    let (x, y) = p.assert_children_match();
    let ex = x.encapsulation.unwrap();
    assert_eq!((ex.local_port, ex.remote_port), (4500, 4500));
    let ey = y.encapsulation.unwrap();
    assert_eq!((ey.local_port, ey.remote_port), (4500, 5500));
    assert_eq!(y.remote_addr, "203.0.113.7:5500".parse().unwrap());
    for (ev, local_nat, remote_nat) in [(&p.ev_a, true, false), (&p.ev_b, false, true)] {
        let nat = ev
            .iter()
            .find_map(|(_, e)| match e {
                Event::IkeSaUp { nat, .. } => Some(*nat),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            (nat.local_behind_nat, nat.remote_behind_nat),
            (local_nat, remote_nat)
        );
    }
    // IKE_AUTH went over 4500 with the non-ESP marker.
    let auth: Vec<_> = p.log.iter().skip(2).collect();
    assert!(
        auth.iter()
            .all(|s| s.t.non_esp_marker && s.t.payload[..4] == [0; 4])
    );
    assert!(auth.iter().all(|s| s.t.local.port() == 4500));
}

#[test]
fn forced_encapsulation_floats_without_nat() {
    let mut a = config_a();
    a.force_encapsulation = true;
    let mut p = Pair::new(a.clone(), mirror(&config_a()));
    p.initiate();
    p.run_for(Duration::from_secs(1));
    let (x, y) = p.assert_children_match();
    assert!(x.encapsulation.is_some() && y.encapsulation.is_some());
    let nat_b = p
        .ev_b
        .iter()
        .find_map(|(_, e)| match e {
            Event::IkeSaUp { nat, .. } => Some(*nat),
            _ => None,
        })
        .unwrap();
    assert!(nat_b.remote_behind_nat, "A faked its NAT-D hash");
}

#[test]
fn garbage_never_panics_and_is_never_answered() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate();
    p.run_for(Duration::from_secs(1));
    let auth_req = p.log[2].t.payload.clone();
    let init_req = p.log[0].t.payload.clone();
    let (b_local, a_remote) = (p.log[0].t.remote, p.log[0].t.local);
    let before = p.log.len();
    let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0; 3], vec![0xff], vec![0; 28]];
    for i in 0..auth_req.len() {
        let mut m = auth_req.clone();
        m[i] ^= 0x40;
        inputs.push(m);
        inputs.push(auth_req[..i].to_vec());
    }
    for i in 0..init_req.len() {
        let mut m = init_req.clone();
        m[i] ^= 0x01;
        inputs.push(m);
    }
    for m in &inputs {
        p.b.handle(p.now, b_local, a_remote, m);
        p.b.handle(p.now, "198.51.100.2:4500".parse().unwrap(), a_remote, m);
    }
    // The only answers allowed: re-sent cached IKE_AUTH responses for the exact replay
    // (none here: every input differs) and IKE_SA_INIT answers to flipped INIT requests that
    // still parse (new half-open SAs or stateless errors), never anything to the AUTH garbage.
    let mut answers = 0;
    while let Some(t) = p.b.poll_transmit() {
        assert_eq!(exchange_of(&t).0, ExchangeType::IKE_SA_INIT);
        answers += 1;
    }
    assert!(answers <= init_req.len());
    assert_eq!(p.log.len(), before);
    let st = p.b.stats();
    assert!(st.integrity_failed > 0 && st.malformed > 0, "{st:?}");
    // The established SA is untouched.
    assert!(Pair::downs(&p.ev_b).is_empty());
    while p.b.poll_event().is_some() {}
}

/// strongSwan with MOBIKE (its default) moves IKE to port 4500 after IKE_SA_INIT even when there
/// is no NAT between the peers, and then sends plain ESP: ESP is UDP-encapsulated only when a NAT
/// was detected (RFC 7296 §2.23, RFC 3948). A responder that encapsulated because IKE_AUTH came
/// on 4500 sent ESP-in-UDP to a peer expecting plain ESP, and nothing got through (issue #5).
#[test]
fn responder_does_not_encapsulate_when_ike_floats_without_nat() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate();
    let init = p.a.poll_transmit().unwrap();
    p.b.handle(p.now, init.remote, init.local, &init.payload);
    let resp = p.b.poll_transmit().unwrap();
    p.a.handle(p.now, resp.remote, resp.local, &resp.payload);
    let auth = p.a.poll_transmit().unwrap();
    assert!(!auth.non_esp_marker, "no NAT: our initiator stays on 500");
    // what a floating initiator sends: the same message, 4500 to 4500, behind the non-ESP marker
    let mut floated = vec![0u8; 4];
    floated.extend_from_slice(&auth.payload);
    p.b.handle(p.now, addr(B_IP, 4500), addr(A_IP, 4500), &floated);
    let answer = p.b.poll_transmit().unwrap();
    assert_eq!((answer.local.port(), answer.remote.port()), (4500, 4500));
    assert!(answer.non_esp_marker);
    let mut installs = Vec::new();
    while let Some(e) = p.b.poll_event() {
        if let Event::ChildSaInstall(sa) = e {
            installs.push(sa);
        }
    }
    assert_eq!(installs.len(), 1, "{installs:?}");
    assert_eq!(installs[0].encapsulation, None, "no NAT: plain ESP");
    assert!(!installs[0].initiator && installs[0].replaces.is_none());
}
