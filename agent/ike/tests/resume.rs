//! Saved IKE SAs resumed by a new process (`Endpoint::save` / `Endpoint::resume`): the peer
//! never notices the restart. No IKE_SA_INIT, the same SPIs, and the resumed SAs go on being
//! rekeyed, checked and deleted. Requests in flight at the restart are retransmitted, and
//! retransmitted requests are answered from the saved response. Bad saved state is refused.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strait_ike::codec::ExchangeType;
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::{
    ChildSaId, Dpd, Endpoint, EndpointConfig, EspSpi, Event, IkeSpis, PeerConfig, ResumeError,
    Resumed,
};
use util::{Fate, Pair, Side, WALL_CLOCK, config_a, lifetime, mirror};

/// A tunnel that rekeys its CHILD SA every 40 s and its IKE SA every 100 s and checks
/// liveness after 15 quiet seconds.
fn config() -> PeerConfig {
    let mut a = config_a();
    a.child_lifetime = lifetime(40);
    a.ike_lifetime = lifetime(100);
    a.dpd = Some(Dpd {
        interval: Duration::from_secs(15),
        timeout: Duration::from_secs(30),
    });
    a
}

fn cfg_of(side: Side) -> PeerConfig {
    match side {
        Side::A => config(),
        Side::B => mirror(&config()),
    }
}

fn up() -> Pair {
    up_with(config())
}

fn up_with(a: PeerConfig) -> Pair {
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.set_wall_clock();
    p.initiate();
    p.run_for(Duration::from_secs(2));
    p.assert_children_match();
    p
}

/// The CHILD SAs one side holds by its events: installed or resumed, and not deleted.
fn alive(ev: &[(Instant, Event)]) -> BTreeMap<ChildSaId, (EspSpi, EspSpi)> {
    let mut m = BTreeMap::new();
    for (_, e) in ev {
        match e {
            Event::ChildSaInstall(i) => {
                m.insert(i.child, (i.spi_in, i.spi_out));
            }
            Event::ChildSaResumed(r) => {
                m.insert(r.child, (r.spi_in, r.spi_out));
            }
            Event::ChildSaDelete { child, .. } => {
                m.remove(child);
            }
            _ => {}
        }
    }
    m
}

/// Both sides hold the same CHILD SAs, seen from each end.
fn assert_same_children(p: &Pair) {
    let mut a: Vec<_> = alive(&p.ev_a).into_values().collect();
    let mut b: Vec<_> = alive(&p.ev_b).into_values().map(|(i, o)| (o, i)).collect();
    a.sort();
    b.sort();
    assert!(!a.is_empty(), "no CHILD SA left");
    assert_eq!(a, b, "A and B disagree on their CHILD SAs");
}

fn spis_up(ev: &[(Instant, Event)]) -> Vec<IkeSpis> {
    ev.iter()
        .filter_map(|(_, e)| match e {
            Event::IkeSaUp { spis, .. } => Some(*spis),
            _ => None,
        })
        .collect()
}

fn rekeyed(ev: &[(Instant, Event)]) -> Vec<IkeSpis> {
    ev.iter()
        .filter_map(|(_, e)| match e {
            Event::IkeSaRekeyed { new, .. } => Some(*new),
            _ => None,
        })
        .collect()
}

/// Requests of this type after log entry `from` (retransmissions not counted).
fn count(p: &Pair, from: usize, t: ExchangeType) -> usize {
    let mut seen: Vec<_> = p.exchanges()[from..]
        .iter()
        .filter(|(_, x, response, ..)| *x == t && !response)
        .map(|(side, _, _, id, spi)| (*side == Side::A, *id, spi.0))
        .collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

fn other(side: Side) -> Side {
    match side {
        Side::A => Side::B,
        Side::B => Side::A,
    }
}

fn events(p: &Pair, side: Side) -> &[(Instant, Event)] {
    match side {
        Side::A => &p.ev_a,
        Side::B => &p.ev_b,
    }
}

/// Restarts `side` after the tunnel is up, then lets it live through CHILD and IKE rekeys
/// and liveness checks, and finally has the peer delete the tunnel.
fn restart_and_live_on(side: Side) {
    let mut p = up();
    let before = spis_up(&p.ev_a);
    let children = alive(events(&p, side));
    let installed = Pair::installs(events(&p, side))[0].clone();
    let from = p.log.len();

    let r = p.restart(side, cfg_of(side), 99, Duration::from_secs(3));
    assert_eq!(
        r,
        Ok(Resumed {
            ike_sas: 1,
            child_sas: 1
        })
    );
    // the same IKE SA and CHILD SA, under the new process's ids
    assert_eq!(spis_up(events(&p, side)), before);
    let resumed: Vec<_> = alive(events(&p, side)).into_values().collect();
    assert_eq!(resumed, children.into_values().collect::<Vec<_>>());
    // with what the driver needs to take over the kernel's SAs and report them
    let r = events(&p, side)
        .iter()
        .find_map(|(_, e)| match e {
            Event::ChildSaResumed(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (&r.local_ts, &r.remote_ts, r.encr, r.integ, r.in_use),
        (
            &installed.local_ts,
            &installed.remote_ts,
            installed.encr,
            installed.integ,
            true
        )
    );
    assert_eq!(
        (r.local_addr, r.remote_addr),
        (installed.local_addr, installed.remote_addr)
    );
    // made at 0 s with a 40 s rekey time, resumed at 5 s
    assert!(
        r.lifetimes.soft <= Duration::from_secs(35) && r.lifetimes.soft >= Duration::from_secs(34),
        "{:?}",
        r.lifetimes
    );

    p.run_for(Duration::from_secs(250));
    assert_eq!(
        count(&p, from, ExchangeType::IKE_SA_INIT),
        0,
        "renegotiated"
    );
    assert!(
        Pair::downs(events(&p, other(side))).is_empty(),
        "the peer lost its SA"
    );
    assert!(
        Pair::downs(events(&p, side)).is_empty(),
        "the resumed SA went down"
    );
    // the resumed SAs were rekeyed (CHILD: 40 s, IKE: 100 s), and both ends agree
    assert!(count(&p, from, ExchangeType::CREATE_CHILD_SA) >= 6);
    assert_eq!(rekeyed(&p.ev_a).len(), 2);
    assert_eq!(rekeyed(&p.ev_a), rekeyed(&p.ev_b));
    assert_same_children(&p);
    // liveness checks went both ways (15 s of quiet between rekeys)
    assert!(count(&p, from, ExchangeType::INFORMATIONAL) >= 4);

    // the peer deletes the tunnel: every resumed or later CHILD SA goes
    let now = p.now;
    match other(side) {
        Side::A => p.a.remove_peer(now, p.a_peer),
        Side::B => p.b.remove_peer(now, p.b_peer),
    }
    p.run_for(Duration::from_secs(5));
    assert!(alive(events(&p, side)).is_empty(), "CHILD SAs left behind");
    assert_eq!(Pair::downs(events(&p, side)).len(), 1);
}

#[test]
fn the_tunnels_to_save_again_are_named() {
    let mut p = up();
    assert!(p.a.take_changed().contains(&p.a_peer));
    assert!(p.a.take_changed().is_empty());
    // nothing happens for a while: nothing to save
    p.run_for(Duration::from_secs(10));
    assert!(p.a.take_changed().is_empty());
    // a liveness check (15 s quiet) changes the window
    p.run_for(Duration::from_secs(10));
    assert!(p.a.take_changed().contains(&p.a_peer));
}

#[test]
fn a_restarted_initiator_resumes_without_negotiating() {
    restart_and_live_on(Side::A);
}

#[test]
fn a_restarted_responder_resumes_without_negotiating() {
    restart_and_live_on(Side::B);
}

/// What `side` sent last.
fn last_from(p: &Pair, side: Side) -> Vec<u8> {
    p.log
        .iter()
        .rev()
        .find(|s| s.from == side)
        .unwrap()
        .t
        .payload
        .clone()
}

/// Soft-expires the CHILD SA on A so that A starts a rekey now, with B's answers lost.
fn rekey_with_answers_lost(p: &mut Pair) {
    p.filter = Box::new(|from, _, _| {
        if from == Side::B {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let (spi, _) = *alive(&p.ev_a).values().next().unwrap();
    let now = p.now;
    p.a.expire_child(now, p.a_peer, spi, false);
    p.settle();
}

#[test]
fn our_request_in_flight_is_sent_again_by_the_new_process() {
    let mut p = up();
    rekey_with_answers_lost(&mut p);
    let request = last_from(&p, Side::A);
    let from = p.log.len();
    p.filter = Box::new(|_, _, _| Fate::Deliver);
    p.restart(Side::A, config(), 5, Duration::ZERO).unwrap();
    p.run_for(Duration::from_secs(10));
    // the same request, byte for byte (same message ID, same nonce and KE), then answered
    let resent = &p.log[from];
    assert_eq!(resent.from, Side::A);
    assert_eq!(resent.t.payload, request);
    assert!(p.b.stats().retransmits_answered >= 1);
    assert_eq!(
        Pair::installs(&p.ev_a).len(),
        1,
        "the rekey did not complete"
    );
    assert_same_children(&p);
    assert_eq!(count(&p, from, ExchangeType::IKE_SA_INIT), 0);
}

#[test]
fn the_saved_response_answers_a_retransmission_after_the_restart() {
    let mut p = up();
    rekey_with_answers_lost(&mut p);
    let lost = last_from(&p, Side::B);
    p.filter = Box::new(|_, _, _| Fate::Deliver);
    p.restart(Side::B, mirror(&config()), 5, Duration::ZERO)
        .unwrap();
    let from = p.log.len();
    p.run_for(Duration::from_secs(10));
    let answer = p.log[from..].iter().find(|s| s.from == Side::B).unwrap();
    assert_eq!(answer.t.payload, lost, "not the saved response");
    assert_eq!(p.b.stats().retransmits_answered, 1);
    assert_same_children(&p);
}

/// Both ends rekey the IKE SA at 100 s, and every answer of B's is lost: A has its rekey
/// in flight, B has its own in flight and holds the SA it made answering A's (a collision,
/// RFC 7296 §2.8.2). Then `side` restarts, and the rekey completes as if nothing happened.
fn ike_rekey_in_flight(side: Side) {
    let mut p = up();
    p.run_for(Duration::from_secs(97));
    let from = p.log.len();
    p.filter = Box::new(|from, _, _| {
        if from == Side::B {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.run_for(Duration::from_secs(4));
    assert_eq!(count(&p, from, ExchangeType::CREATE_CHILD_SA), 2);
    assert!(rekeyed(&p.ev_a).is_empty() && rekeyed(&p.ev_b).is_empty());
    p.filter = Box::new(|_, _, _| Fate::Deliver);
    let r = p.restart(side, cfg_of(side), 11, Duration::from_secs(1));
    assert_eq!(r.unwrap().ike_sas, 1);
    p.run_for(Duration::from_secs(20));
    let new = rekeyed(&p.ev_a);
    assert_eq!(new.len(), 1, "the IKE SA rekey did not complete");
    assert_eq!(rekeyed(&p.ev_b), new);
    assert_eq!(count(&p, from, ExchangeType::IKE_SA_INIT), 0);
    assert!(Pair::downs(&p.ev_a).is_empty() && Pair::downs(&p.ev_b).is_empty());
    assert_same_children(&p);
    // and the rekeyed SA works: a CHILD rekey and a liveness check later
    let from = p.log.len();
    p.run_for(Duration::from_secs(45));
    assert!(count(&p, from, ExchangeType::CREATE_CHILD_SA) >= 1);
    assert!(Pair::downs(&p.ev_a).is_empty() && Pair::downs(&p.ev_b).is_empty());
    assert_same_children(&p);
}

#[test]
fn an_ike_rekey_in_flight_completes_after_the_restart() {
    ike_rekey_in_flight(Side::A);
}

#[test]
fn an_ike_rekey_collision_in_flight_completes_after_the_restart() {
    ike_rekey_in_flight(Side::B);
}

#[test]
fn the_time_a_process_was_gone_counts_against_its_timers() {
    // only A rekeys: B's CHILD SA lifetime is long
    let a = config();
    let mut b = mirror(&a);
    b.child_lifetime = lifetime(1000);
    b.ike_lifetime = lifetime(1000);
    b.dpd = None;
    let mut p = Pair::new(a, b);
    p.set_wall_clock();
    p.initiate();
    p.run_for(Duration::from_secs(2));
    let created = Pair::installs(&p.ev_a)[0].lifetimes;
    assert_eq!(created.soft, Duration::from_secs(40));
    let born = p.t0;
    // gone for 30 of the CHILD SA's 40 s
    p.restart(Side::A, config(), 8, Duration::from_secs(30))
        .unwrap();
    let from = p.log.len();
    p.run_for(Duration::from_secs(30));
    let first = p.log[from..]
        .iter()
        .find(|s| s.from == Side::A && p.exchanges_of(s) == Some(ExchangeType::CREATE_CHILD_SA))
        .expect("no CHILD SA rekey");
    let at = first.at - born;
    assert!(
        at >= Duration::from_secs(39) && at <= Duration::from_secs(41),
        "rekeyed at {at:?}, not 40 s after the CHILD SA was made"
    );
}

#[test]
fn a_resumed_sa_the_peer_deleted_meanwhile_goes_down_and_the_tunnel_comes_back() {
    // an IKE SA that lives long enough to outlast B's retransmissions (300 s), so that what
    // ends it is the peer, not its own hard lifetime
    let long = || PeerConfig {
        ike_lifetime: lifetime(1000),
        ..config()
    };
    let mut p = up_with(long());
    // A saves, then B drops the tunnel while A is gone (its DELETE is lost: nobody answers)
    let saved = p.a.save(p.now, p.a_peer).unwrap();
    let now = p.now;
    p.b.remove_peer(now, p.b_peer);
    p.a = Endpoint::new(
        EndpointConfig::default(),
        Box::new(DeterministicRng::new(77)),
    );
    p.ev_a.clear();
    // B retransmits its DELETE until it gives up
    p.run_for(Duration::from_secs(300));
    assert_eq!(p.b.ike_sa_count(), 0);
    // B has the tunnel again (responding), A resumes the stale SA
    p.b_peer = p.b.add_peer(mirror(&long())).unwrap();
    let mut a = Endpoint::new(
        EndpointConfig::default(),
        Box::new(DeterministicRng::new(78)),
    );
    a.set_wall_clock(p.t0, WALL_CLOCK);
    p.a_peer = a.add_peer(long()).unwrap();
    a.resume(p.now, p.a_peer, saved.as_bytes()).unwrap();
    p.a = a;
    // A's liveness check gets no answer (B does not know the SA): the SA goes down as
    // unreachable, its CHILD SA with it
    p.run_for(Duration::from_secs(60));
    let downs = Pair::downs(&p.ev_a);
    assert_eq!(downs.len(), 1, "{downs:?}");
    assert_eq!(downs[0].1, strait_ike::Reason::PeerUnreachable);
    assert!(alive(&p.ev_a).is_empty());
    // the driver initiates again (as its retry does): a fresh IKE SA, both sides agree
    let from = p.log.len();
    p.initiate();
    p.run_for(Duration::from_secs(2));
    assert_eq!(count(&p, from, ExchangeType::IKE_SA_INIT), 1);
    assert_same_children(&p);
}

#[test]
fn restarting_at_every_timer_changes_nothing_the_peer_sees() {
    let mut p = up();
    let from = p.log.len();
    let mut restarts = 0u64;
    let end = p.now + Duration::from_secs(230);
    while p.now < end {
        let next = [p.a.poll_timeout(), p.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        let step = next
            .saturating_duration_since(p.now)
            .max(Duration::from_millis(1));
        // alternate the side restarted; each time a new process with a fresh RNG
        let side = if restarts.is_multiple_of(2) {
            Side::A
        } else {
            Side::B
        };
        p.restart(side, cfg_of(side), 1000 + restarts, Duration::ZERO)
            .unwrap();
        // the new process's events replace the old one's, so look before each restart
        assert!(Pair::downs(&p.ev_a).is_empty() && Pair::downs(&p.ev_b).is_empty());
        restarts += 1;
        p.run_for(step);
    }
    assert!(restarts > 15, "only {restarts} restarts");
    assert_eq!(count(&p, from, ExchangeType::IKE_SA_INIT), 0);
    assert!(Pair::downs(&p.ev_a).is_empty() && Pair::downs(&p.ev_b).is_empty());
    assert!(count(&p, from, ExchangeType::CREATE_CHILD_SA) >= 6);
    let (a, b) = (
        p.a.save(p.now, p.a_peer).unwrap(),
        p.b.save(p.now, p.b_peer).unwrap(),
    );
    assert_eq!((a.ike_sas(), b.ike_sas()), (1, 1));
    // still working: a CHILD rekey now completes on both sides
    let from = p.log.len();
    p.run_for(Duration::from_secs(45));
    assert!(count(&p, from, ExchangeType::CREATE_CHILD_SA) >= 1);
    assert!(Pair::downs(&p.ev_a).is_empty() && Pair::downs(&p.ev_b).is_empty());
}

/// A resumed endpoint for the tunnel of `config()`, and its peer id.
fn fresh() -> (Endpoint, strait_ike::PeerId, Instant) {
    let mut e = Endpoint::new(
        EndpointConfig::default(),
        Box::new(DeterministicRng::new(3)),
    );
    let now = Instant::now();
    e.set_wall_clock(now, WALL_CLOCK + 10);
    let peer = e.add_peer(config()).unwrap();
    (e, peer, now)
}

fn sha256(b: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

#[test]
fn bad_saved_state_is_refused_and_never_panics() {
    let mut p = up();
    // a rich state: a CHILD rekey in flight, with a KE private value and a cached response
    rekey_with_answers_lost(&mut p);
    let saved = p.a.save(p.now, p.a_peer).unwrap();
    let good = saved.as_bytes().to_vec();
    assert!(format!("{saved:?}").contains("ike_sas: 1"));
    let (mut e, peer, now) = fresh();
    assert!(e.resume(now, peer, &good).is_ok());

    // truncated anywhere: refused
    for n in 0..good.len() {
        let (mut e, peer, now) = fresh();
        assert!(e.resume(now, peer, &good[..n]).is_err(), "truncated to {n}");
        assert_eq!(e.ike_sa_count(), 0);
    }
    // any octet changed: the checksum catches it
    for n in 0..good.len() {
        let mut bad = good.clone();
        bad[n] ^= 0x55;
        let (mut e, peer, now) = fresh();
        let err = e.resume(now, peer, &bad).unwrap_err();
        assert!(
            matches!(
                err,
                ResumeError::Checksum | ResumeError::NotSavedState | ResumeError::Version(_)
            ),
            "octet {n}: {err:?}"
        );
    }
    // changed and the checksum fixed up (a bug, not corruption): parsed, never a panic, and
    // an error leaves nothing behind. (Keys, nonces and datagrams are opaque, so many such
    // changes parse: the SA then fails its integrity checks on the wire.)
    let body = good.len() - 32;
    let mut refused = 0;
    for n in 9..body {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good[..body].to_vec();
            bad[n] ^= flip;
            let sum = sha256(&bad);
            bad.extend_from_slice(&sum);
            let (mut e, peer, now) = fresh();
            if e.resume(now, peer, &bad).is_err() {
                refused += 1;
                assert_eq!(e.ike_sa_count(), 0);
                assert!(e.poll_event().is_none());
            }
        }
    }
    assert!(refused > 0);

    // the named refusals
    let (mut e, peer, now) = fresh();
    assert_eq!(
        e.resume(now, peer, b"not saved state at all"),
        Err(ResumeError::NotSavedState)
    );
    let mut v3 = good.clone();
    v3[8] = 3;
    assert_eq!(e.resume(now, peer, &v3), Err(ResumeError::Version(3)));
    assert_eq!(
        e.resume(now, strait_ike::PeerId(42), &good),
        Err(ResumeError::UnknownPeer)
    );
    assert!(e.resume(now, peer, &good).is_ok());
    assert_eq!(e.resume(now, peer, &good), Err(ResumeError::SpiInUse));
    let mut no_clock = Endpoint::new(
        EndpointConfig::default(),
        Box::new(DeterministicRng::new(3)),
    );
    let peer = no_clock.add_peer(config()).unwrap();
    assert_eq!(
        no_clock.resume(now, peer, &good),
        Err(ResumeError::ClockUnset)
    );
    assert_eq!(
        no_clock.save(now, peer).unwrap_err(),
        ResumeError::ClockUnset
    );
    // the messages name no key material (they are static texts)
    assert_eq!(
        ResumeError::Checksum.to_string(),
        "saved IKE state is corrupted (checksum mismatch)"
    );
}

/// A state saved by the agent before the format recorded the IKE SA's hard lifetime (format
/// version 1, `tests/data/saved-v1.bin`, written by this file's `up()` and `save` at commit
/// 76f33d9): an upgraded agent resumes it without negotiating, and the next IKE rekey gives
/// the new SA its hard lifetime.
#[test]
fn a_state_saved_by_the_previous_format_is_resumed() {
    let v1 = include_bytes!("data/saved-v1.bin");
    assert_eq!(&v1[..9], b"STRAITSA\x01");
    let mut p = up();
    let from = p.log.len();
    let r = p.restart_from(Side::A, config(), 99, Duration::from_secs(3), v1);
    assert_eq!(
        r,
        Ok(Resumed {
            ike_sas: 1,
            child_sas: 1
        })
    );
    p.run_for(Duration::from_secs(250));
    assert_eq!(
        count(&p, from, ExchangeType::IKE_SA_INIT),
        0,
        "renegotiated"
    );
    assert!(Pair::downs(&p.ev_a).is_empty() && Pair::downs(&p.ev_b).is_empty());
    assert_eq!(rekeyed(&p.ev_a).len(), 2);
    assert_same_children(&p);
    // and what it saves now is the current format
    assert_eq!(p.a.save(p.now, p.a_peer).unwrap().as_bytes()[8], 2);
}
