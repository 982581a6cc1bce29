//! INITIAL_CONTACT (RFC 7296 §2.4): a peer that lost its state replaces the IKE SAs it had with
//! us, and only those it authenticated as.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::time::Duration;

use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::{Endpoint, EndpointConfig, Identity, Reason};
use util::{Pair, config_a, mirror};

#[test]
fn a_restarted_peer_replaces_its_old_ike_sa() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.b.children(p.b_peer).len(), 1);
    // A loses all state and starts again.
    p.a = Endpoint::new(
        EndpointConfig::default(),
        Box::new(DeterministicRng::new(9)),
    );
    p.a_peer = p.a.add_peer(a).unwrap();
    p.initiate();
    p.run_for(Duration::from_secs(1));
    let downs: Vec<Reason> = Pair::downs(&p.ev_b).into_iter().map(|d| d.1).collect();
    assert_eq!(downs, vec![Reason::Replaced]);
    assert_eq!(Pair::installs(&p.ev_b).len(), 2);
    assert_eq!(Pair::child_deletes(&p.ev_b), 1);
    assert_eq!(p.b.children(p.b_peer).len(), 1);
    p.run_for(Duration::from_secs(30));
    assert_eq!(p.b.ike_sa_count(), 1);
}

#[test]
fn initial_contact_from_another_identity_leaves_the_first_alone() {
    // B accepts any identity on one tunnel; A brings up two tunnels with two identities.
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_id = Identity::Any;
    let mut p = Pair::new(a.clone(), b);
    p.initiate();
    p.run_for(Duration::from_secs(1));
    let mut a2 = a.clone();
    a2.local_id = Identity::Fqdn("a2.example.com".into());
    let second = p.a.add_peer(a2).unwrap();
    // A's second tunnel has no other IKE SA, so its IKE_AUTH carries INITIAL_CONTACT.
    let now = p.now;
    p.a.initiate(now, second);
    p.run_for(Duration::from_secs(1));
    assert_eq!(Pair::ups(&p.ev_b), 2);
    assert!(Pair::downs(&p.ev_b).is_empty(), "{:?}", p.ev_b);
    assert_eq!(p.b.children(p.b_peer).len(), 2);
    assert_eq!(p.b.ike_sa_count(), 2);
}

/// Review I-6: two tunnels between the same identities (the usual way to carry two subnets as
/// separate tunnels). The second one's IKE_AUTH must not carry INITIAL_CONTACT, or the peer
/// (charon does) drops the first tunnel's IKE SA as stale.
#[test]
fn a_second_tunnel_between_the_same_identities_sends_no_initial_contact() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    p.initiate();
    p.run_for(Duration::from_secs(1));
    // another subnet of A's, inside what B's tunnel accepts (B narrows to it)
    let mut a2 = a.clone();
    a2.local_ts = vec![util::net("10.1.5.0/24")];
    let second = p.a.add_peer(a2).unwrap();
    let now = p.now;
    p.a.initiate(now, second);
    p.run_for(Duration::from_secs(1));
    assert_eq!(Pair::ups(&p.ev_b), 2);
    assert!(Pair::downs(&p.ev_b).is_empty(), "{:?}", p.ev_b);
    assert_eq!(p.b.ike_sa_count(), 2);
    assert_eq!(p.a.children(p.a_peer).len(), 1);
    assert_eq!(p.a.children(second).len(), 1);
}

/// INITIAL_CONTACT is judged per identity pair, as charon judges it: a peer that restarted
/// replaces our IKE SAs with it in every tunnel, not only in the one it came in on.
#[test]
fn initial_contact_replaces_the_same_identities_sas_in_other_tunnels_too() {
    let a = config_a();
    let b = mirror(&a);
    let mut p = Pair::new(a.clone(), b.clone());
    p.initiate();
    p.run_for(Duration::from_secs(1));
    // B's second tunnel to A, between the same identities, for another subnet of B's inside
    // what A's tunnel accepts, started by B
    let mut b2 = b.clone();
    b2.local_ts = vec![util::net("10.2.5.0/24")];
    let b2 = p.b.add_peer(b2).unwrap();
    let now = p.now;
    p.b.initiate(now, b2);
    p.run_for(Duration::from_secs(1));
    assert!(Pair::downs(&p.ev_b).is_empty(), "{:?}", p.ev_b);
    assert_eq!(p.b.ike_sa_count(), 2);
    // A loses all state and starts again on its one tunnel.
    p.a = Endpoint::new(
        EndpointConfig::default(),
        Box::new(DeterministicRng::new(9)),
    );
    p.a_peer = p.a.add_peer(a).unwrap();
    p.ev_b.clear();
    p.initiate();
    p.run_for(Duration::from_millis(500));
    let downs = Pair::downs(&p.ev_b);
    assert_eq!(downs.len(), 2, "{downs:?}");
    // The one the new SA replaces, and the other tunnel's, which nothing replaces: reported as
    // deleted by the peer so that a tunnel that starts itself comes up again (the simulator
    // found it stayed down when this said Replaced too).
    let mut reasons: Vec<Reason> = downs.iter().map(|d| d.1).collect();
    reasons.sort_by_key(|r| r.as_str());
    assert_eq!(
        reasons,
        [Reason::DeletedByPeer, Reason::Replaced],
        "{downs:?}"
    );
}

/// Review I-6: a responder with several tunnels for one peer address picks the tunnel by the
/// identity the peer names in IKE_AUTH, not the first one for the address.
#[test]
fn the_responder_picks_the_tunnel_by_the_initiator_s_identity() {
    let a = config_a();
    let mut p = Pair::new(a.clone(), mirror(&a));
    // A second tunnel from A's address with another identity, and other subnets.
    let mut a2 = a.clone();
    a2.local_id = Identity::Fqdn("a2.example.com".into());
    a2.local_ts = vec![util::net("10.3.0.0/16")];
    let b2 = p.b.add_peer(mirror(&a2)).unwrap();
    let second = p.a.add_peer(a2).unwrap();
    // the second first: the first tunnel for the address is B's other one
    let now = p.now;
    p.a.initiate(now, second);
    p.run_for(Duration::from_secs(1));
    assert!(Pair::downs(&p.ev_b).is_empty(), "{:?}", p.ev_b);
    assert_eq!(p.b.children(b2).len(), 1);
    assert!(p.b.children(p.b_peer).is_empty());
    p.initiate();
    p.run_for(Duration::from_secs(1));
    assert!(Pair::downs(&p.ev_b).is_empty(), "{:?}", p.ev_b);
    assert_eq!(p.b.children(p.b_peer).len(), 1);
    assert_eq!(p.b.children(b2).len(), 1);
    assert_eq!(p.a.children(second).len(), 1);
    // and an identity no tunnel has is still refused
    let mut stranger = config_a();
    stranger.local_id = Identity::Fqdn("stranger.example.com".into());
    let s = p.a.add_peer(stranger).unwrap();
    let now = p.now;
    p.a.initiate(now, s);
    p.run_for(Duration::from_secs(1));
    let downs: Vec<Reason> = Pair::downs(&p.ev_b).into_iter().map(|d| d.1).collect();
    assert_eq!(downs, vec![Reason::AuthenticationFailed]);
    assert_eq!(p.b.children(p.b_peer).len(), 1);
    assert_eq!(p.b.children(b2).len(), 1);
}

/// Both ends start the tunnel at the same moment: each initiates, each answers the other, and
/// neither IKE_AUTH may carry INITIAL_CONTACT (each end already has the other's SA being set
/// up). The two IKE SAs are duplicates; the same one goes at both ends, so one IKE SA with one
/// CHILD SA is left, the same on both ends (the simulator found both kept for ever).
#[test]
fn both_ends_initiating_at_once_keep_one_ike_sa() {
    let a = config_a();
    let mut b = mirror(&a);
    b.role = strait_ike::Role::Start;
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate(now, p.a_peer);
    p.b.initiate(now, p.b_peer);
    // the end whose SA survives drops the other and tells the peer, which keeps the deleted
    // one closing for a while, to answer a lost Delete's retransmissions
    p.run_for(Duration::from_secs(30));
    assert_eq!((Pair::ups(&p.ev_a), Pair::ups(&p.ev_b)), (2, 2));
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
    let (ca, cb) = (p.a.children(p.a_peer), p.b.children(p.b_peer));
    assert_eq!((ca.len(), cb.len()), (1, 1));
    // the same survivor: A's inbound SA is B's outbound one
    let installed = |ev: &[(std::time::Instant, strait_ike::Event)]| {
        Pair::installs(ev)
            .into_iter()
            .map(|i| (i.spi_in, i.spi_out))
            .collect::<Vec<_>>()
    };
    let deleted = |ev: &[(std::time::Instant, strait_ike::Event)]| {
        ev.iter()
            .filter_map(|(_, e)| match e {
                strait_ike::Event::ChildSaDelete { spi_in, .. } => Some(*spi_in),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let live_a: Vec<_> = installed(&p.ev_a)
        .into_iter()
        .filter(|(i, _)| !deleted(&p.ev_a).contains(i))
        .collect();
    let live_b: Vec<_> = installed(&p.ev_b)
        .into_iter()
        .filter(|(i, _)| !deleted(&p.ev_b).contains(i))
        .collect();
    assert_eq!(live_a.len(), 1, "{live_a:?}");
    assert_eq!(live_b, vec![(live_a[0].1, live_a[0].0)]);
    // the dropped SA is reported gone once on each end
    let downs: Vec<Reason> = Pair::downs(&p.ev_a)
        .into_iter()
        .chain(Pair::downs(&p.ev_b))
        .map(|d| d.1)
        .collect();
    assert_eq!(downs.len(), 2, "{downs:?}");
}
