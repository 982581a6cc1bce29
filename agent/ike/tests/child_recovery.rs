//! An IKE SA left without a CHILD SA gets a new one (review R-1): a CREATE_CHILD_SA without
//! REKEY_SA (RFC 7296 §1.3.1), on a backoff timer for `start` tunnels, on an acquire for
//! `onTraffic` ones, never from `respond` ones; on the simulated clock.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use strait_ike::codec::{ExchangeType, Header};
use strait_ike::proposal::parse_esp_list;
use strait_ike::{ChildSaInstall, Dpd, EndpointConfig, Event, PeerConfig, Reason, Role, Transmit};
use util::{Fate, Pair, Side, config_a, lifetime, mirror, net};

fn up(a: &PeerConfig, b: &PeerConfig, seeds: (u64, u64)) -> Pair {
    let mut p = Pair::with_seeds(
        a.clone(),
        b.clone(),
        EndpointConfig::default(),
        EndpointConfig::default(),
        seeds,
    );
    if a.role == Role::OnTraffic {
        p.a.acquire(p.now, p.a_peer);
    } else {
        p.initiate();
    }
    p.run_for(Duration::from_secs(1));
    p
}

fn header(t: &Transmit) -> Header {
    let raw = if t.non_esp_marker {
        &t.payload[4..]
    } else {
        &t.payload[..]
    };
    Header::peek(raw).unwrap().header
}

fn deleted(ev: &[(Instant, Event)]) -> Vec<strait_ike::ChildSaId> {
    ev.iter()
        .filter_map(|(_, e)| match e {
            Event::ChildSaDelete { child, .. } => Some(*child),
            _ => None,
        })
        .collect()
}

fn alive(ev: &[(Instant, Event)]) -> Vec<ChildSaInstall> {
    let gone = deleted(ev);
    Pair::installs(ev)
        .into_iter()
        .filter(|i| !gone.contains(&i.child))
        .collect()
}

/// Both sides hold exactly one CHILD SA, the same one seen from each end, and the IKE SA stayed.
fn assert_one_matching_child(p: &Pair) -> (ChildSaInstall, ChildSaInstall) {
    let (la, lb) = (alive(&p.ev_a), alive(&p.ev_b));
    assert_eq!(la.len(), 1, "A alive: {la:?}");
    assert_eq!(lb.len(), 1, "B alive: {lb:?}");
    let (x, y) = (la[0].clone(), lb[0].clone());
    assert_eq!((x.spi_in, x.spi_out), (y.spi_out, y.spi_in));
    assert_ne!(x.initiator, y.initiator);
    assert_eq!(x.keys.encr_out.as_bytes(), y.keys.encr_in.as_bytes());
    assert_eq!(x.keys.encr_in.as_bytes(), y.keys.encr_out.as_bytes());
    assert_eq!(x.local_ts, y.remote_ts);
    assert_eq!(p.a.children(p.a_peer), vec![x.child]);
    assert_eq!(p.b.children(p.b_peer), vec![y.child]);
    assert!(
        Pair::downs(&p.ev_a).is_empty(),
        "{:?}",
        Pair::downs(&p.ev_a)
    );
    assert!(
        Pair::downs(&p.ev_b).is_empty(),
        "{:?}",
        Pair::downs(&p.ev_b)
    );
    (x, y)
}

/// The distinct CREATE_CHILD_SA requests `from` sent (retransmissions counted once), with the
/// time each was first sent and its length.
fn ccsa_requests(p: &Pair, from: Side) -> Vec<(Instant, usize)> {
    let mut seen = BTreeSet::new();
    p.log
        .iter()
        .filter(|s| s.from == from)
        .filter_map(|s| {
            let h = header(&s.t);
            let new = h.exchange_type == ExchangeType::CREATE_CHILD_SA
                && !h.flags.is_response()
                && seen.insert((h.initiator_spi.0, h.message_id));
            new.then_some((s.at, s.t.payload.len()))
        })
        .collect()
}

fn install_time(ev: &[(Instant, Event)], child: strait_ike::ChildSaId) -> Instant {
    ev.iter()
        .find_map(|(t, e)| match e {
            Event::ChildSaInstall(i) if i.child == child => Some(*t),
            _ => None,
        })
        .unwrap()
}

/// B removes the tunnel's only CHILD SA at its hard expiry (its Delete reaches A at once).
fn peer_expires_the_child(p: &mut Pair) -> Instant {
    let x = alive(&p.ev_b)[0].clone();
    p.b.expire_child(p.now, p.b_peer, x.spi_in, true);
    p.settle();
    assert!(p.a.children(p.a_peer).is_empty() && p.b.children(p.b_peer).is_empty());
    p.now
}

fn with_dpd(mut c: PeerConfig) -> PeerConfig {
    c.dpd = Some(Dpd {
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(150),
    });
    c
}

/// The review's scenario: the peer deletes the last CHILD SA and DPD keeps the IKE SA alive. A
/// (always up) creates a new one within the first backoff; both ends agree on it; a later
/// acquire sends nothing.
#[test]
fn a_child_sa_the_peer_deleted_is_created_again_within_the_backoff() {
    let a = with_dpd(config_a());
    let mut p = up(&a, &mirror(&a), (1, 2));
    let (old_a, _) = assert_one_matching_child(&p);
    let gone = peer_expires_the_child(&mut p);
    p.run_for(Duration::from_secs(2 * 3600));
    let (new_a, new_b) = assert_one_matching_child(&p);
    assert_ne!(new_a.child, old_a.child);
    // The first new one is the one created (not rekeyed) right after the Delete.
    let created = Pair::installs(&p.ev_a)[1].clone();
    assert_eq!(created.replaces, None);
    assert!(created.initiator);
    let after = install_time(&p.ev_a, created.child) - gone;
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_secs(2),
        "{after:?}"
    );
    let b_created = Pair::installs(&p.ev_b)[1].clone();
    assert_eq!(
        (b_created.spi_in, b_created.spi_out),
        (created.spi_out, created.spi_in)
    );
    assert!(!b_created.initiator && b_created.replaces.is_none());
    // Rekeyed since (hourly): the survivor descends from the created one.
    assert!(new_b.replaces.is_some());
    assert!(Pair::child_failures(&p.ev_a).is_empty());
    // With a CHILD SA up, an acquire sends nothing.
    let n = p.log.len();
    p.a.acquire(p.now, p.a_peer);
    p.settle();
    assert_eq!(p.log.len(), n);
}

/// IKE_AUTH's CHILD SA is refused (TS_UNACCEPTABLE: B protects other subnets): the IKE SA stays
/// up, A retries on the backoff schedule, 2 s doubling to 60 s, each wait 0-25 % shorter at
/// random, and every refusal is reported.
#[test]
fn a_refused_ike_auth_child_sa_is_retried_with_a_growing_jittered_backoff() {
    let a = config_a();
    let mut b = mirror(&a);
    b.local_ts = vec![net("10.9.0.0/16")];
    let mut p = up(&a, &b, (1, 2));
    assert_eq!(Pair::ups(&p.ev_a), 1);
    assert_eq!(Pair::child_failures(&p.ev_a), vec![Reason::TsUnacceptable]);
    let auth_done = p.ev_a[0].0;
    p.run_for(Duration::from_secs(600));
    let sent: Vec<Instant> = ccsa_requests(&p, Side::A).iter().map(|x| x.0).collect();
    let mut prev = auth_done;
    let mut jitter = BTreeSet::new();
    for (k, t) in sent.iter().enumerate() {
        let base = Duration::from_secs((2u64 << k.min(5)).min(60));
        let wait = *t - prev;
        assert!(
            wait <= base && wait >= base * 3 / 4,
            "attempt {k}: waited {wait:?}, base {base:?}"
        );
        jitter.insert((base - wait).as_millis());
        prev = *t;
    }
    // 2+4+8+16+32 = 62 s at most, then every 45-60 s: 13 or more attempts in 600 s.
    assert!(sent.len() >= 13, "{} attempts", sent.len());
    assert!(jitter.len() > 3, "the waits are randomised: {jitter:?}");
    // Each refusal was reported; the IKE SA was never given up.
    let failures = Pair::child_failures(&p.ev_a);
    assert_eq!(failures.len(), 1 + sent.len());
    assert!(failures.iter().all(|r| *r == Reason::TsUnacceptable));
    assert!(Pair::downs(&p.ev_a).is_empty());
    assert!(p.a.children(p.a_peer).is_empty());
    // B only answers.
    assert!(ccsa_requests(&p, Side::B).is_empty());
}

/// The backoff grows while CHILD SAs keep going away, and starts over once one stayed up 60 s.
#[test]
fn the_backoff_grows_and_is_reset_by_a_child_sa_that_stayed_up() {
    let a = config_a();
    let mut p = up(&a, &mirror(&a), (1, 2));
    let wait_for_new = |p: &mut Pair| {
        let gone = peer_expires_the_child(p);
        p.run_for(Duration::from_secs(10));
        let (x, _) = assert_one_matching_child(p);
        assert_eq!(x.replaces, None);
        install_time(&p.ev_a, x.child) - gone
    };
    let w1 = wait_for_new(&mut p);
    assert!(w1 <= Duration::from_secs(2), "{w1:?}");
    // Gone again after 10 s: the next wait is 3-4 s.
    let w2 = wait_for_new(&mut p);
    assert!(
        w2 > Duration::from_secs(2) && w2 <= Duration::from_secs(4),
        "{w2:?}"
    );
    let w3 = wait_for_new(&mut p);
    assert!(
        w3 > Duration::from_secs(4) && w3 <= Duration::from_secs(8),
        "{w3:?}"
    );
    // Up for a minute: back to 1.5-2 s.
    p.run_for(Duration::from_secs(60));
    let w4 = wait_for_new(&mut p);
    assert!(w4 <= Duration::from_secs(2), "{w4:?}");
}

/// The kernel refused IKE_AUTH's CHILD SA on A (review R-4): it is deleted at the peer, and a
/// new one comes after the backoff.
#[test]
fn a_child_sa_the_kernel_refused_is_deleted_and_created_again() {
    let a = config_a();
    let mut p = up(&a, &mirror(&a), (1, 2));
    let (x, _) = assert_one_matching_child(&p);
    p.a.child_install_failed(p.now, p.a_peer, x.child);
    p.run_for(Duration::from_secs(5));
    let (y, _) = assert_one_matching_child(&p);
    assert_ne!(y.child, x.child);
    assert_eq!(y.replaces, None);
    assert_eq!(ccsa_requests(&p, Side::A).len(), 1);
}

/// `onTraffic`: nothing is created without traffic; an acquire on the CHILD-less IKE SA sends
/// one CREATE_CHILD_SA (not a new handshake); one with a CHILD SA up sends nothing.
#[test]
fn an_acquire_on_an_ike_sa_without_child_sa_creates_one() {
    let mut a = with_dpd(config_a());
    a.role = Role::OnTraffic;
    let mut p = up(&a, &mirror(&a), (1, 2));
    assert_one_matching_child(&p);
    peer_expires_the_child(&mut p);
    p.run_for(Duration::from_secs(600));
    assert!(
        ccsa_requests(&p, Side::A).is_empty(),
        "no traffic, no CHILD SA"
    );
    assert!(p.a.children(p.a_peer).is_empty());
    assert_eq!(p.a.ike_sa_count(), 1);
    p.a.acquire(p.now, p.a_peer);
    p.a.acquire(p.now, p.a_peer);
    p.settle();
    assert_eq!(
        ccsa_requests(&p, Side::A).len(),
        1,
        "one request for two acquires"
    );
    let inits = p
        .exchanges()
        .iter()
        .filter(|x| x.1 == ExchangeType::IKE_SA_INIT)
        .count();
    assert_eq!(inits, 2, "no new handshake");
    let (x, _) = assert_one_matching_child(&p);
    assert_eq!(x.replaces, None);
    let n = p.log.len();
    p.a.acquire(p.now, p.a_peer);
    p.settle();
    assert_eq!(p.log.len(), n);
}

/// A `respond` tunnel never creates a CHILD SA, and an `onTraffic` one only on an acquire.
#[test]
fn a_respond_tunnel_never_creates_a_child_sa() {
    let mut a = with_dpd(config_a());
    a.role = Role::OnTraffic;
    let b = with_dpd(mirror(&a));
    assert_eq!(b.role, Role::Respond);
    let mut p = up(&a, &b, (1, 2));
    let x = alive(&p.ev_a)[0].clone();
    // This time A's kernel expires it: B is the one left CHILD-less by a Delete.
    p.a.expire_child(p.now, p.a_peer, x.spi_in, true);
    p.run_for(Duration::from_secs(3600));
    assert!(p.b.children(p.b_peer).is_empty());
    assert!(ccsa_requests(&p, Side::B).is_empty());
    assert!(ccsa_requests(&p, Side::A).is_empty());
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
    assert!(Pair::downs(&p.ev_b).is_empty());
}

/// The peer answers CHILD_SA_NOT_FOUND to our rekey (it removed the SA; its Delete is late): the
/// SA goes here too and a new one is created at once.
#[test]
fn child_sa_not_found_to_a_rekey_creates_a_new_child_sa() {
    let a = config_a();
    let mut p = up(&a, &mirror(&a), (1, 2));
    let (old_a, old_b) = assert_one_matching_child(&p);
    // B's INFORMATIONAL requests (its Delete) are lost for now.
    p.filter = Box::new(|from, t, _| {
        let h = header(t);
        if from == Side::B
            && h.exchange_type == ExchangeType::INFORMATIONAL
            && !h.flags.is_response()
        {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.b.expire_child(p.now, p.b_peer, old_b.spi_in, true);
    p.settle();
    let start = p.now;
    p.a.expire_child(p.now, p.a_peer, old_a.spi_in, false);
    p.settle();
    // A's rekey (answered CHILD_SA_NOT_FOUND) and its new CHILD SA, at once.
    assert_eq!(ccsa_requests(&p, Side::A).len(), 2);
    assert!(ccsa_requests(&p, Side::A).iter().all(|x| x.0 == start));
    p.filter = Box::new(|_, _, _| Fate::Deliver);
    p.run_for(Duration::from_secs(60));
    let (new_a, _) = assert_one_matching_child(&p);
    assert_eq!(new_a.replaces, None);
    assert_eq!(install_time(&p.ev_a, new_a.child), start);
    assert_eq!(deleted(&p.ev_a), vec![old_a.child]);
    assert!(Pair::child_failures(&p.ev_a).is_empty());
}

/// Both ends are always up and find the IKE SA without a CHILD SA at the same moment; their
/// requests cross (the first request and the first answer are lost, so each end answers the
/// other's request while its own is in flight), or only one end sees the other's (one request
/// lost). Either way one CHILD SA is left, the same on both ends.
#[test]
fn simultaneous_creation_converges_to_one_child_sa() {
    for seeds in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)] {
        for lose_answer in [false, true] {
            let mut a = config_a();
            a.role = Role::Start;
            let mut b = mirror(&a);
            b.role = Role::Start;
            let mut p = up(&a, &b, seeds);
            assert_one_matching_child(&p);
            let (mut req, mut resp) = (0, 0);
            p.filter = Box::new(move |_, t, _| {
                let h = header(t);
                if h.exchange_type != ExchangeType::CREATE_CHILD_SA {
                    return Fate::Deliver;
                }
                let n = if h.flags.is_response() {
                    resp += 1;
                    resp * usize::from(lose_answer)
                } else {
                    req += 1;
                    req
                };
                if n == 1 { Fate::Drop } else { Fate::Deliver }
            });
            peer_expires_the_child(&mut p);
            p.run_for(Duration::from_secs(60));
            let (x, _) = assert_one_matching_child(&p);
            assert_eq!(x.replaces, None);
            assert!(ccsa_requests(&p, Side::A).len() == 1 && ccsa_requests(&p, Side::B).len() == 1);
            for ev in [&p.ev_a, &p.ev_b] {
                // IKE_AUTH's, and the two created: one of those deleted.
                assert_eq!(Pair::installs(ev).len(), 3, "{seeds:?} {lose_answer}");
                assert_eq!(deleted(ev).len(), 2);
            }
            assert!(Pair::child_failures(&p.ev_a).is_empty());
            assert!(Pair::child_failures(&p.ev_b).is_empty());
        }
    }
}

/// With PFS configured the request carries a KE payload (40 octets for X25519) and the responder,
/// which wants PFS too, accepts it; without, none.
/// A responder asking for another group (INVALID_KE_PAYLOAD) gets a second request in it.
#[test]
fn the_created_child_sa_uses_pfs_as_configured() {
    let length = |esp_a: &str, esp_b: &str| {
        let mut a = config_a();
        a.esp_proposals = parse_esp_list(&[esp_a]).unwrap();
        let mut b = mirror(&a);
        b.esp_proposals = parse_esp_list(&[esp_b]).unwrap();
        let mut p = up(&a, &b, (1, 2));
        let (old, _) = assert_one_matching_child(&p);
        peer_expires_the_child(&mut p);
        p.run_for(Duration::from_secs(10));
        let (new, _) = assert_one_matching_child(&p);
        assert_ne!(new.keys.encr_in.as_bytes(), old.keys.encr_in.as_bytes());
        ccsa_requests(&p, Side::A)
            .iter()
            .map(|x| x.1)
            .collect::<Vec<_>>()
    };
    let pfs = length("aes256gcm16-x25519", "aes256gcm16-x25519");
    let plain = length("aes256gcm16", "aes256gcm16");
    assert_eq!((pfs.len(), plain.len()), (1, 1));
    // The KE payload (8 + 32 octets) and the KE transform in the offer (8).
    assert!(pfs[0] >= plain[0] + 40, "{pfs:?} {plain:?}");
    // A offers ECP-256 first; B wants X25519: refused once (INVALID_KE_PAYLOAD, not reported
    // as a failure), then created with an X25519 KE payload, 32 octets shorter than ECP-256's.
    let retried = length("aes256gcm16-ecp256-x25519", "aes256gcm16-x25519");
    assert_eq!(retried.len(), 2);
    assert!(retried[0] >= retried[1] + 32, "{retried:?}");
}

/// A PFS mismatch refuses the create (reported); the IKE SA stays and retries on the backoff.
#[test]
fn a_pfs_mismatch_refuses_the_create_and_it_is_retried() {
    let a = config_a();
    let mut b = mirror(&a);
    b.esp_proposals = parse_esp_list(&["aes256gcm16"]).unwrap();
    let mut p = up(&a, &b, (1, 2));
    assert_one_matching_child(&p);
    peer_expires_the_child(&mut p);
    p.run_for(Duration::from_secs(10));
    assert_eq!(
        Pair::child_failures(&p.ev_a),
        vec![Reason::NoProposalChosen, Reason::NoProposalChosen]
    );
    assert_eq!(ccsa_requests(&p, Side::A).len(), 2);
    assert!(Pair::downs(&p.ev_a).is_empty());
}

/// The create request, then its answer, are lost: retransmitted, answered from the cache, one
/// CHILD SA on each side. Meanwhile a peer's IKE rekey is refused with TEMPORARY_FAILURE (our
/// create is in flight) and retried, before the IKE SA's hard lifetime.
#[test]
fn a_lost_create_is_retransmitted_and_a_peer_ike_rekey_waits_for_it() {
    let a = config_a();
    let mut b = mirror(&a);
    b.ike_lifetime = lifetime(100);
    let mut p = up(&a, &b, (1, 2));
    p.run_for(Duration::from_secs(95));
    let mut req = 0;
    p.filter = Box::new(move |from, t, _| {
        let h = header(t);
        if h.exchange_type != ExchangeType::CREATE_CHILD_SA || from != Side::A {
            return Fate::Deliver;
        }
        // A's create request is lost twice (sent about 98 s, again 4 s later); A's answers
        // (the TEMPORARY_FAILURE to B's IKE rekey at 100 s) go through.
        if h.flags.is_response() {
            return Fate::Deliver;
        }
        req += 1;
        if req <= 2 { Fate::Drop } else { Fate::Deliver }
    });
    peer_expires_the_child(&mut p);
    p.run_for(Duration::from_secs(60));
    let (x, y) = assert_one_matching_child(&p);
    assert_eq!((x.replaces, y.replaces), (None, None));
    assert_eq!(
        ccsa_requests(&p, Side::A).len(),
        1,
        "one create, retransmitted"
    );
    let sends = p
        .log
        .iter()
        .filter(|s| {
            s.from == Side::A && header(&s.t).exchange_type == ExchangeType::CREATE_CHILD_SA
        })
        .filter(|s| !header(&s.t).flags.is_response())
        .count();
    assert_eq!(sends, 3);
    // B's IKE rekey: refused once, then done on its retry; the CHILD SA moved to the new IKE SA.
    let rekeys = |ev: &[(Instant, Event)]| {
        ev.iter()
            .filter(|(_, e)| matches!(e, Event::IkeSaRekeyed { .. }))
            .count()
    };
    assert_eq!((rekeys(&p.ev_a), rekeys(&p.ev_b)), (1, 1));
    // refused while the create is retransmitted; retried ever sooner as the IKE SA's hard
    // lifetime (110 s) nears, and done before it
    let b_requests = ccsa_requests(&p, Side::B).len();
    assert!((2..=6).contains(&b_requests), "{b_requests}");
    assert!(Pair::downs(&p.ev_a).is_empty() && Pair::downs(&p.ev_b).is_empty());
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
}
