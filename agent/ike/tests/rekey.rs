//! CREATE_CHILD_SA: CHILD SA and IKE SA rekeys (RFC 7296 §1.3.2, §1.3.3, §2.8, §2.18), their
//! collisions (§2.8.1, §2.8.2, §2.25), on the simulated clock.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::time::{Duration, Instant};

use strait_ike::codec::ExchangeType;
use strait_ike::{ChildSaInstall, EndpointConfig, Event, IkeSpis, Lifetime, PeerConfig};
use util::{Fate, Pair, Side, config_a, lifetime, mirror};

fn up(a: &PeerConfig, b: &PeerConfig, seeds: (u64, u64)) -> Pair {
    let mut p = Pair::with_seeds(
        a.clone(),
        b.clone(),
        EndpointConfig::default(),
        EndpointConfig::default(),
        seeds,
    );
    p.initiate();
    p.run_for(Duration::from_secs(1));
    p.assert_children_match();
    p
}

fn position(ev: &[(Instant, Event)], f: impl Fn(&Event) -> bool) -> Option<usize> {
    ev.iter().position(|(_, e)| f(e))
}

fn deleted(ev: &[(Instant, Event)]) -> Vec<strait_ike::ChildSaId> {
    ev.iter()
        .filter_map(|(_, e)| match e {
            Event::ChildSaDelete { child, .. } => Some(*child),
            _ => None,
        })
        .collect()
}

fn rekeyed(ev: &[(Instant, Event)]) -> Vec<(IkeSpis, IkeSpis)> {
    ev.iter()
        .filter_map(|(_, e)| match e {
            Event::IkeSaRekeyed { old, new, .. } => Some((*old, *new)),
            _ => None,
        })
        .collect()
}

/// The installs on one side still alive (installed, never deleted).
fn alive(ev: &[(Instant, Event)]) -> Vec<ChildSaInstall> {
    let gone = deleted(ev);
    Pair::installs(ev)
        .into_iter()
        .filter(|i| !gone.contains(&i.child))
        .collect()
}

/// Both sides hold exactly one CHILD SA, the same one seen from each end; and nothing failed.
fn assert_one_matching_child(p: &Pair) -> (ChildSaInstall, ChildSaInstall) {
    let (la, lb) = (alive(&p.ev_a), alive(&p.ev_b));
    assert_eq!(la.len(), 1, "A alive: {la:?}");
    assert_eq!(lb.len(), 1, "B alive: {lb:?}");
    let (x, y) = (la[0].clone(), lb[0].clone());
    assert_eq!((x.spi_in, x.spi_out), (y.spi_out, y.spi_in));
    // exactly one end started the exchange that made it (the driver defers the rekey
    // responder's outbound SA on this)
    assert_ne!(x.initiator, y.initiator);
    assert_eq!(x.keys.encr_out.as_bytes(), y.keys.encr_in.as_bytes());
    assert_eq!(x.keys.encr_in.as_bytes(), y.keys.encr_out.as_bytes());
    assert_ne!(x.keys.encr_in.as_bytes(), x.keys.encr_out.as_bytes());
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
    assert!(Pair::child_failures(&p.ev_a).is_empty());
    assert!(Pair::child_failures(&p.ev_b).is_empty());
    (x, y)
}

/// Make-before-break on one side: the new SA is installed (replacing the old) before the old
/// one is reported deleted.
fn assert_make_before_break(ev: &[(Instant, Event)], old: &ChildSaInstall, new: &ChildSaInstall) {
    assert_eq!(new.replaces, Some(old.child));
    let i = position(
        ev,
        |e| matches!(e, Event::ChildSaInstall(i) if i.child == new.child),
    );
    let d = position(
        ev,
        |e| matches!(e, Event::ChildSaDelete { child, .. } if *child == old.child),
    );
    assert!(i.unwrap() < d.unwrap());
}

#[test]
fn child_rekey_on_the_timer_is_make_before_break_with_pfs() {
    // Only A's timer fires (B's lifetime is longer): A initiates the rekey.
    let mut a = config_a();
    a.child_lifetime = lifetime(100);
    let mut b = mirror(&a);
    b.child_lifetime = lifetime(1000);
    let mut p = up(&a, &b, (1, 2));
    let (old_a, old_b) = p.assert_children_match();
    assert_eq!(old_a.lifetimes.soft, Duration::from_secs(100));
    let n0 = p.log.len();
    // Established at 0 s, now 1 s: the rekey is due at 100 s.
    p.run_for(Duration::from_secs(98));
    assert_eq!(p.log.len(), n0, "nothing before the rekey time");
    p.run_for(Duration::from_secs(2));
    let (new_a, new_b) = assert_one_matching_child(&p);
    assert_ne!(new_a.spi_in, old_a.spi_in);
    assert_ne!(new_a.spi_out, old_a.spi_out);
    assert_ne!(new_a.keys.encr_in.as_bytes(), old_a.keys.encr_in.as_bytes());
    assert_make_before_break(&p.ev_a, &old_a, &new_a);
    assert_make_before_break(&p.ev_b, &old_b, &new_b);
    assert_eq!(new_a.local_ts, old_a.local_ts);
    // CREATE_CHILD_SA from A, answered; then A's INFORMATIONAL (the Delete), answered.
    let ex: Vec<_> = p.exchanges()[n0..]
        .iter()
        .map(|x| (x.0, x.1, x.2, x.3))
        .collect();
    assert_eq!(
        ex,
        vec![
            (Side::A, ExchangeType::CREATE_CHILD_SA, false, 2),
            (Side::B, ExchangeType::CREATE_CHILD_SA, true, 2),
            (Side::A, ExchangeType::INFORMATIONAL, false, 3),
            (Side::B, ExchangeType::INFORMATIONAL, true, 3),
        ]
    );
    // The next rekey comes a lifetime later, from the new SA.
    let n1 = p.log.len();
    p.run_for(Duration::from_secs(98));
    assert_eq!(p.log.len(), n1);
    p.run_for(Duration::from_secs(2));
    assert_eq!(Pair::installs(&p.ev_a).len(), 3);
    assert_one_matching_child(&p);
}

#[test]
fn the_ike_responder_can_rekey_and_keys_follow_the_exchange_roles() {
    let mut a = config_a();
    a.child_lifetime = lifetime(1000);
    let mut b = mirror(&a);
    b.child_lifetime = lifetime(100);
    let mut p = up(&a, &b, (1, 2));
    let (old_a, old_b) = p.assert_children_match();
    p.run_for(Duration::from_secs(101));
    let (new_a, new_b) = assert_one_matching_child(&p);
    assert_make_before_break(&p.ev_a, &old_a, &new_a);
    assert_make_before_break(&p.ev_b, &old_b, &new_b);
    let ex = p.exchanges();
    assert!(
        ex.iter()
            .any(|x| x.0 == Side::B && x.1 == ExchangeType::CREATE_CHILD_SA && !x.2 && x.3 == 0)
    );
}

#[test]
fn without_pfs_the_rekey_still_changes_keys() {
    let mut a = config_a();
    a.esp_proposals = strait_ike::proposal::parse_esp_list(&["aes256gcm16"]).unwrap();
    a.child_lifetime = lifetime(100);
    let mut b = mirror(&a);
    b.child_lifetime = lifetime(1000);
    let mut p = up(&a, &b, (1, 2));
    let (old_a, _) = p.assert_children_match();
    p.run_for(Duration::from_secs(101));
    let (new_a, _) = assert_one_matching_child(&p);
    assert_ne!(new_a.keys.encr_in.as_bytes(), old_a.keys.encr_in.as_bytes());
}

#[test]
fn a_pfs_mismatch_fails_the_rekey_and_keeps_the_old_sa() {
    let mut a = config_a();
    a.child_lifetime = lifetime(100);
    let mut b = mirror(&a);
    b.child_lifetime = lifetime(1000);
    // B wants no PFS: A's PFS proposal is refused, A keeps the old SA and retries later.
    b.esp_proposals = strait_ike::proposal::parse_esp_list(&["aes256gcm16"]).unwrap();
    let mut p = up(&a, &b, (1, 2));
    p.run_for(Duration::from_secs(101));
    assert_eq!(
        Pair::child_failures(&p.ev_a),
        vec![strait_ike::Reason::NoProposalChosen]
    );
    assert_eq!(Pair::installs(&p.ev_a).len(), 1);
    assert_eq!(Pair::child_deletes(&p.ev_a), 0);
    assert_eq!(p.a.children(p.a_peer).len(), 1);
    // Retried 10..20 s later (and refused again).
    p.run_for(Duration::from_secs(20));
    assert_eq!(Pair::child_failures(&p.ev_a).len(), 2);
}

#[test]
fn soft_expiry_rekeys_now_and_lost_messages_are_retransmitted() {
    let a = config_a();
    let mut p = up(&a, &mirror(&a), (1, 2));
    let (old_a, old_b) = p.assert_children_match();
    // Lose the CREATE_CHILD_SA request once and the Delete's answer once.
    let n0 = p.log.len();
    p.filter = Box::new(move |_, _, n| {
        if n == n0 + 1 || n == n0 + 5 {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.b.expire_child(p.now, p.b_peer, old_b.spi_out, false);
    // A second soft expiry while the rekey runs changes nothing.
    p.b.expire_child(p.now, p.b_peer, old_b.spi_in, false);
    p.run_for(Duration::from_secs(30));
    let (new_a, new_b) = assert_one_matching_child(&p);
    assert_make_before_break(&p.ev_a, &old_a, &new_a);
    assert_make_before_break(&p.ev_b, &old_b, &new_b);
    assert_eq!(Pair::installs(&p.ev_b).len(), 2);
    // B's old SA was reported gone only when its Delete was answered (after the retransmit).
    let d = position(
        &p.ev_b,
        |e| matches!(e, Event::ChildSaDelete { child, .. } if *child == old_b.child),
    )
    .unwrap();
    assert!(p.ev_b[d].0 >= p.t0 + Duration::from_secs(1 + 4));
}

#[test]
fn a_child_sa_the_peer_expired_is_deleted_then_created_anew() {
    // B removes the CHILD SA at its hard expiry and its Delete is lost at first; A learns of it
    // from the retransmission. A's IKE SA is then left without a CHILD SA, and A (an always-up
    // tunnel) creates a new one within the first backoff (2 s) rather than staying CHILD-less
    // forever (review R-1; this test used to assert that nothing was left on either side).
    let mut a = config_a();
    a.child_lifetime = lifetime(100);
    let mut b = mirror(&a);
    b.child_lifetime = lifetime(1000);
    let mut p = up(&a, &b, (1, 2));
    let (old_a, old_b) = p.assert_children_match();
    p.filter = Box::new(|from, _, _| {
        if from == Side::B {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.b.expire_child(p.now, p.b_peer, old_b.spi_in, true);
    p.run_for(Duration::from_secs(1));
    p.filter = Box::new(|_, _, _| Fate::Deliver);
    assert_eq!(Pair::child_deletes(&p.ev_b), 1);
    p.run_for(Duration::from_secs(100));
    // B's Delete got through on retransmission, then A created a new CHILD SA.
    assert_eq!(Pair::child_deletes(&p.ev_a), 1);
    let deleted_at = p
        .ev_a
        .iter()
        .find_map(|(t, e)| matches!(e, Event::ChildSaDelete { .. }).then_some(*t))
        .unwrap();
    let (new_a, new_b) = assert_one_matching_child(&p);
    assert_ne!(new_a.child, old_a.child);
    assert_eq!((new_a.replaces, new_b.replaces), (None, None));
    assert!(new_a.initiator && !new_b.initiator);
    let created_at = p
        .ev_a
        .iter()
        .find_map(|(t, e)| match e {
            Event::ChildSaInstall(i) if i.child == new_a.child => Some(*t),
            _ => None,
        })
        .unwrap();
    assert!(created_at - deleted_at <= Duration::from_secs(2));
}

/// Both ends rekey the same CHILD SA at the same instant, with the network reordering as
/// `filter` says: whatever the interleaving, one new SA survives on both ends, the old and the
/// redundant one are deleted, and each end deletes exactly one SA.
fn collide(seeds: (u64, u64), filter: util::Filter) -> Pair {
    let mut a = config_a();
    a.child_lifetime = lifetime(100);
    let b = mirror(&a);
    let mut p = up(&a, &b, seeds);
    let n0 = p.log.len();
    p.filter = filter;
    p.run_for(Duration::from_secs(98));
    assert_eq!(p.log.len(), n0);
    // Rekeys at 100 s, collision settled well before the next ones at 200 s.
    p.run_for(Duration::from_secs(60));
    assert_one_matching_child(&p);
    // Every CHILD SA ever installed on a side is either the survivor or deleted.
    for ev in [&p.ev_a, &p.ev_b] {
        assert_eq!(Pair::installs(ev).len() - deleted(ev).len(), 1);
    }
    p
}

fn requests(p: &Pair, from: Side, ty: ExchangeType) -> usize {
    let mut ids: Vec<u32> = p
        .exchanges()
        .iter()
        .filter(|x| x.0 == from && x.1 == ty && !x.2)
        .map(|x| x.3)
        .collect();
    ids.dedup();
    ids.len()
}

#[test]
fn simultaneous_child_rekeys_keep_exactly_one_new_sa() {
    let mut winners = Vec::new();
    for seeds in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)] {
        let p = collide(seeds, Box::new(|_, _, _| Fate::Deliver));
        // Both completed their own exchange: three installs on each side, two deletes.
        assert_eq!(Pair::installs(&p.ev_a).len(), 3);
        assert_eq!(Pair::installs(&p.ev_b).len(), 3);
        // Each side deleted exactly one SA: the winner the old one, the loser its own.
        assert_eq!(requests(&p, Side::A, ExchangeType::INFORMATIONAL), 1);
        assert_eq!(requests(&p, Side::B, ExchangeType::INFORMATIONAL), 1);
        // Whose exchange survived: on A, the install answering B comes first.
        let ia = Pair::installs(&p.ev_a);
        let survivor = alive(&p.ev_a)[0].child;
        winners.push(if survivor == ia[2].child {
            Side::A
        } else {
            Side::B
        });
        assert!(ia[1..].iter().all(|i| i.replaces == Some(ia[0].child)));
        // The loser's own new SA is marked redundant (inbound only, never sent on); nothing else.
        for (ev, side) in [(&p.ev_a, Side::A), (&p.ev_b, Side::B)] {
            let marked: Vec<_> = Pair::installs(ev)
                .into_iter()
                .filter(|i| i.redundant)
                .collect();
            if winners.last() == Some(&side) {
                assert!(marked.is_empty(), "the winner marks nothing: {marked:?}");
            } else {
                assert_eq!(marked.len(), 1, "{marked:?}");
                assert!(marked[0].initiator && marked[0].replaces.is_some());
                assert!(alive(ev).iter().all(|i| i.child != marked[0].child));
            }
        }
    }
    // The nonces decided differently for different seeds: both outcomes were exercised.
    assert!(
        winners.contains(&Side::A) && winners.contains(&Side::B),
        "{winners:?}"
    );
}

#[test]
fn simultaneous_child_rekeys_under_every_reordering() {
    // Which datagram (counted from the collision) is held back until everything else settled.
    for held in 1..=8usize {
        for seeds in [(1, 2), (3, 4), (5, 6)] {
            let mut base = None;
            let filter: util::Filter = Box::new(move |_, _, n| {
                let b = *base.get_or_insert(n);
                if n - b + 1 == held {
                    Fate::Delay
                } else {
                    Fate::Deliver
                }
            });
            collide(seeds, filter);
        }
    }
    // And with one datagram lost instead (then retransmitted).
    for lost in 1..=8usize {
        let mut base = None;
        let filter: util::Filter = Box::new(move |_, _, n| {
            let b = *base.get_or_insert(n);
            if n - b + 1 == lost {
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        collide((1, 2), filter);
    }
}

#[test]
fn ike_rekey_moves_children_and_a_child_rekey_follows_on_the_new_sa() {
    let mut a = config_a();
    a.ike_lifetime = lifetime(200);
    let mut b = mirror(&a);
    b.ike_lifetime = lifetime(2000);
    let mut p = up(&a, &b, (1, 2));
    let (old_a, old_b) = p.assert_children_match();
    let n0 = p.log.len();
    p.run_for(Duration::from_secs(199));
    let (ra, rb) = (rekeyed(&p.ev_a), rekeyed(&p.ev_b));
    assert_eq!(ra.len(), 1);
    assert_eq!(ra, rb);
    let (old, new) = ra[0];
    assert_ne!(old.initiator, new.initiator);
    assert_ne!(old.responder, new.responder);
    // CHILD SAs moved over untouched: no install, no delete.
    assert_eq!(Pair::installs(&p.ev_a).len(), 1);
    assert_eq!(
        Pair::child_deletes(&p.ev_a) + Pair::child_deletes(&p.ev_b),
        0
    );
    assert!(Pair::downs(&p.ev_a).is_empty() && Pair::downs(&p.ev_b).is_empty());
    // The rekey, then the Delete of the old SA, both on the old SA.
    let ex = p.exchanges()[n0..].to_vec();
    assert_eq!(ex.len(), 4);
    assert!(ex.iter().all(|x| x.4 == old.initiator));
    assert_eq!(
        (ex[0].1, ex[2].1),
        (ExchangeType::CREATE_CHILD_SA, ExchangeType::INFORMATIONAL)
    );
    // The new SA rekeys 200 s after it was made; look before that.
    p.run_for(Duration::from_secs(100));
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));

    // A CHILD rekey now runs over the new SA, with message IDs from 0.
    let n1 = p.log.len();
    p.a.expire_child(p.now, p.a_peer, old_a.spi_in, false);
    p.run_for(Duration::from_secs(1));
    let (new_a, new_b) = assert_one_matching_child(&p);
    assert_make_before_break(&p.ev_a, &old_a, &new_a);
    assert_make_before_break(&p.ev_b, &old_b, &new_b);
    let ex = p.exchanges()[n1..].to_vec();
    assert_eq!(ex[0].1, ExchangeType::CREATE_CHILD_SA);
    assert_eq!((ex[0].3, ex[0].4), (0, new.initiator));
    assert_eq!((ex[2].3, ex[2].4), (1, new.initiator));

    // DPD-less INFORMATIONAL traffic and deletion work on the new SA.
    p.b.remove_peer(p.now, p.b_peer);
    // (A answers the Delete and lingers, closing, for the peer's retransmissions)
    p.run_for(Duration::from_secs(30));
    assert_eq!(Pair::downs(&p.ev_a)[0].1, strait_ike::Reason::DeletedByPeer);
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (0, 0));
}

#[test]
fn the_ike_responder_can_rekey_the_ike_sa() {
    let mut a = config_a();
    a.ike_lifetime = lifetime(2000);
    let mut b = mirror(&a);
    b.ike_lifetime = lifetime(200);
    let mut p = up(&a, &b, (1, 2));
    p.run_for(Duration::from_secs(300));
    let ra = rekeyed(&p.ev_a);
    assert_eq!(ra.len(), 1);
    assert_eq!(ra, rekeyed(&p.ev_b));
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
    // The new SA is B's: B's SPI is now the initiator SPI; a rekey of it from A works too.
    let (x, _) = p.assert_children_match();
    p.a.expire_child(p.now, p.a_peer, x.spi_in, false);
    p.run_for(Duration::from_secs(1));
    assert_one_matching_child(&p);
}

/// Both ends rekey the IKE SA at the same instant.
fn collide_ike(seeds: (u64, u64), filter: util::Filter) -> Pair {
    let mut a = config_a();
    a.ike_lifetime = lifetime(200);
    let b = mirror(&a);
    let mut p = up(&a, &b, seeds);
    p.filter = filter;
    // Rekeys at 200 s; the survivor's own rekey would come at 400 s.
    p.run_for(Duration::from_secs(390));
    p.filter = Box::new(|_, _, _| Fate::Deliver);
    let (ra, rb) = (rekeyed(&p.ev_a), rekeyed(&p.ev_b));
    assert_eq!(ra.len(), 1, "A: {ra:?}");
    assert_eq!(ra, rb);
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
    assert_one_matching_child(&p);
    assert_eq!(Pair::installs(&p.ev_a).len(), 1);
    // The survivor carries a CHILD rekey.
    let (x, _) = p.assert_children_match();
    p.a.expire_child(p.now, p.a_peer, x.spi_in, false);
    p.run_for(Duration::from_secs(1));
    assert_one_matching_child(&p);
    assert_eq!(Pair::installs(&p.ev_a).len(), 2);
    p
}

#[test]
fn simultaneous_ike_rekeys_keep_exactly_one_new_ike_sa() {
    let mut survivors = Vec::new();
    for seeds in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)] {
        let p = collide_ike(seeds, Box::new(|_, _, _| Fate::Deliver));
        let (old, new) = rekeyed(&p.ev_a)[0];
        assert_ne!(new, old);
        // The loser deleted the redundant SA it made (an SA neither old nor new), the winner
        // the old one.
        let ex = p.exchanges();
        let deleters = |spi| -> Vec<Side> {
            let mut v: Vec<Side> = ex
                .iter()
                .filter(|x| x.1 == ExchangeType::INFORMATIONAL && !x.2 && x.4 == spi)
                .map(|x| x.0)
                .collect();
            v.dedup();
            v
        };
        let redundant: Vec<_> = ex
            .iter()
            .filter(|x| x.1 == ExchangeType::INFORMATIONAL && !x.2)
            .filter(|x| x.4 != old.initiator && x.4 != new.initiator)
            .collect();
        assert_eq!(redundant.len(), 1, "{redundant:?}");
        let loser = redundant[0].0;
        let winner = if loser == Side::A { Side::B } else { Side::A };
        assert_eq!(deleters(old.initiator), vec![winner]);
        survivors.push(winner == Side::A);
    }
    assert!(
        survivors.contains(&true) && survivors.contains(&false),
        "{survivors:?}"
    );
}

#[test]
fn simultaneous_ike_rekeys_under_reordering_and_loss() {
    for k in 1..=8usize {
        for fate in [Fate::Delay, Fate::Drop] {
            let mut base = None;
            let filter: util::Filter = Box::new(move |_, _, n| {
                let b = *base.get_or_insert(n);
                if n - b + 1 == k { fate } else { Fate::Deliver }
            });
            collide_ike((1, 2), filter);
        }
    }
}

#[test]
fn a_child_rekey_colliding_with_an_ike_rekey_gets_temporary_failure_and_retries() {
    let mut a = config_a();
    a.child_lifetime = lifetime(100);
    a.ike_lifetime = lifetime(10_000);
    let mut b = mirror(&a);
    b.child_lifetime = lifetime(1000);
    b.ike_lifetime = lifetime(100);
    let mut p = up(&a, &b, (1, 2));
    let (old_a, old_b) = p.assert_children_match();
    p.run_for(Duration::from_secs(99));
    p.run_for(Duration::from_secs(60));
    // Both were refused once (TEMPORARY_FAILURE, no failure event) and succeeded on retry.
    assert_eq!(rekeyed(&p.ev_a).len(), 1);
    assert_eq!(rekeyed(&p.ev_a), rekeyed(&p.ev_b));
    let (new_a, new_b) = assert_one_matching_child(&p);
    assert_make_before_break(&p.ev_a, &old_a, &new_a);
    assert_make_before_break(&p.ev_b, &old_b, &new_b);
    assert_eq!(requests(&p, Side::A, ExchangeType::CREATE_CHILD_SA), 2);
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
}

/// The same refusal when the CHILD SA's hard expiry is only 4 s after its rekey time: the retry
/// must not wait the usual 10-20 s, or the kernel would drop the SA (and its traffic) first.
#[test]
fn a_refused_child_rekey_is_retried_before_the_hard_expiry() {
    let mut a = config_a();
    a.child_lifetime = Lifetime {
        rekey_time: Duration::from_secs(100),
        rand_time: Duration::ZERO,
        life_time: Duration::from_secs(104),
        bytes: None,
        packets: None,
    };
    a.ike_lifetime = lifetime(10_000);
    let mut b = mirror(&a);
    b.child_lifetime = lifetime(1000);
    b.ike_lifetime = lifetime(100);
    let mut p = up(&a, &b, (1, 2));
    let installed = p.now - Duration::from_secs(1);
    let (old_a, _) = p.assert_children_match();
    p.run_for(Duration::from_secs(120));
    assert_eq!(rekeyed(&p.ev_a).len(), 1, "the IKE rekey happened");
    assert_eq!(requests(&p, Side::A, ExchangeType::CREATE_CHILD_SA), 2);
    let (new_a, _) = assert_one_matching_child(&p);
    assert_make_before_break(&p.ev_a, &old_a, &new_a);
    let at = p
        .ev_a
        .iter()
        .find_map(|(t, e)| match e {
            Event::ChildSaInstall(i) if i.replaces.is_some() => Some(*t),
            _ => None,
        })
        .unwrap();
    let after = at - installed;
    assert!(
        after < Duration::from_secs(104),
        "the new CHILD SA came {after:?} after the old one, past its hard expiry (104 s)"
    );
}

#[test]
fn a_child_rekey_retries_with_the_pfs_group_the_responder_asks_for() {
    let mut a = config_a();
    a.esp_proposals = strait_ike::proposal::parse_esp_list(&["aes256gcm16-ecp256-x25519"]).unwrap();
    a.child_lifetime = lifetime(100);
    let mut b = mirror(&a);
    b.esp_proposals = strait_ike::proposal::parse_esp_list(&["aes256gcm16-x25519"]).unwrap();
    b.child_lifetime = lifetime(1000);
    let mut p = up(&a, &b, (1, 2));
    let (old_a, old_b) = p.assert_children_match();
    let n0 = p.log.len();
    p.run_for(Duration::from_secs(100));
    let (new_a, new_b) = assert_one_matching_child(&p);
    assert_make_before_break(&p.ev_a, &old_a, &new_a);
    assert_make_before_break(&p.ev_b, &old_b, &new_b);
    // INVALID_KE_PAYLOAD round trip, then the rekey and the Delete.
    assert_eq!(p.log.len() - n0, 6);
    assert_eq!(requests(&p, Side::A, ExchangeType::CREATE_CHILD_SA), 2);
}

/// RFC 7296 §2.9.2: a rekeyed CHILD SA keeps the old one's traffic selectors. B narrowed A's
/// offer (10.2.0.0/16) to 10.2.1.0/24; A's rekey offers the narrowed selectors it has, not its
/// configured ones again (a responder that picks among several, or whose configuration
/// changed, could otherwise agree to other selectors than the SA it replaces). B's diagnostics
/// show what each request offered.
#[test]
fn a_rekey_offers_the_selectors_of_the_sa_it_replaces() {
    let mut a = config_a();
    a.child_lifetime = lifetime(30);
    let mut b = mirror(&a);
    // only A rekeys
    b.child_lifetime = lifetime(3600);
    b.local_ts = vec![util::net("10.2.1.0/24")];
    let eb = EndpointConfig {
        diagnostics: true,
        ..EndpointConfig::default()
    };
    let mut p = Pair::with_endpoint_config(a, b, EndpointConfig::default(), eb);
    p.initiate();
    p.run_for(Duration::from_secs(70));
    let installs = Pair::installs(&p.ev_a);
    assert!(installs.len() >= 3, "fewer than two rekeys: {installs:?}");
    assert!(
        installs
            .iter()
            .all(|i| i.remote_ts == vec![util::net("10.2.1.0/24")]),
        "{installs:?}"
    );
    let offers: Vec<String> = p
        .ev_b
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Diagnostic(d)
                if matches!(**d, strait_ike::diagnostic::Diagnostic::TsNarrowed { .. }) =>
            {
                Some(d.to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(offers.len(), installs.len(), "{offers:?}");
    // IKE_AUTH offered the configured /16 and was narrowed; every rekey offered the /24
    assert!(
        offers[0].contains("narrowed from ours 10.2.0.0/16"),
        "{offers:?}"
    );
    for o in &offers[1..] {
        assert!(
            !o.contains("narrowed"),
            "a rekey offered other selectors: {o}"
        );
    }
}
