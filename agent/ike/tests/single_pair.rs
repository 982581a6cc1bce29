//! A peer that takes one subnet pair per CHILD SA and says so with SINGLE_PAIR_REQUIRED (RFC
//! 7296 §3.10.1): the tunnel's CHILD SAs are then created one per (local subnet, remote
//! subnet) pair, rekeyed as such, and a lost one is created again.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use strait_ike::codec::TsRange;
use strait_ike::{EndpointConfig, Event};
use util::{Pair, config_a, lifetime, mirror, net};

/// A with one local and two remote subnets; B answers SINGLE_PAIR_REQUIRED to more than one
/// range a side.
fn pair_of_pairs(child_secs: u64) -> Pair {
    let mut a = config_a();
    a.remote_ts = vec![net("10.2.1.0/24"), net("10.2.3.0/24")];
    a.child_lifetime = lifetime(child_secs);
    let mut b = mirror(&a);
    b.child_lifetime = lifetime(3600);
    let eb = EndpointConfig {
        single_pair_only: true,
        ..EndpointConfig::default()
    };
    let mut p = Pair::with_endpoint_config(a, b, EndpointConfig::default(), eb);
    p.initiate();
    p
}

/// The remote selectors of the CHILD SAs A holds in use (installed, not replaced or deleted).
fn live_remote(p: &Pair) -> BTreeSet<String> {
    let live: BTreeSet<_> = p.a.children(p.a_peer).into_iter().collect();
    let mut gone = BTreeSet::new();
    for (_, e) in &p.ev_a {
        if let Event::ChildSaDelete { child, .. } = e {
            gone.insert(*child);
        }
    }
    Pair::installs(&p.ev_a)
        .into_iter()
        .filter(|i| live.contains(&i.child) && !gone.contains(&i.child))
        .map(|i| ts(&i.remote_ts))
        .collect()
}

fn ts(v: &[TsRange]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn both() -> BTreeSet<String> {
    [ts(&[net("10.2.1.0/24")]), ts(&[net("10.2.3.0/24")])]
        .into_iter()
        .collect()
}

fn failures(ev: &[(Instant, Event)]) -> usize {
    Pair::child_failures(ev).len()
}

#[test]
fn single_pair_required_brings_one_child_sa_per_subnet_pair() {
    let mut p = pair_of_pairs(3600);
    p.run_for(Duration::from_secs(2));
    assert_eq!(live_remote(&p), both());
    assert_eq!(p.b.children(p.b_peer).len(), 2);
    // the refusal of IKE_AUTH's CHILD SA is how the peer tells us, not a failure
    assert_eq!(failures(&p.ev_a), 0, "{:?}", Pair::child_failures(&p.ev_a));
    assert_eq!(Pair::ups(&p.ev_a), 1);
}

#[test]
fn pair_child_sas_rekey_as_pairs() {
    let mut p = pair_of_pairs(20);
    p.run_for(Duration::from_secs(65));
    let installs = Pair::installs(&p.ev_a);
    assert!(
        installs.len() >= 6,
        "two pairs, at least two rekeys each: {installs:?}"
    );
    assert!(
        installs.iter().all(|i| i.remote_ts.len() == 1),
        "a rekey offered more than one pair"
    );
    assert_eq!(live_remote(&p).len(), 2, "{:?}", live_remote(&p));
    assert_eq!(failures(&p.ev_a), 0, "{:?}", Pair::child_failures(&p.ev_a));
}

#[test]
fn a_lost_pair_child_sa_is_created_again() {
    let mut p = pair_of_pairs(3600);
    p.run_for(Duration::from_secs(2));
    // B's kernel drops one of them at its hard limit: B deletes it at A
    let lost = Pair::installs(&p.ev_b)
        .into_iter()
        .find(|i| i.local_ts == vec![net("10.2.3.0/24")])
        .unwrap();
    let (now, peer) = (p.now, p.b_peer);
    p.b.expire_child(now, peer, lost.spi_in, true);
    p.run_for(Duration::from_millis(100));
    assert_eq!(live_remote(&p).len(), 1);
    // A's recovery (2 s, less up to a quarter) creates that pair again, and only that one
    p.run_for(Duration::from_secs(5));
    assert_eq!(live_remote(&p), both());
    assert_eq!(Pair::installs(&p.ev_a).len(), 3);
}

#[test]
fn per_pair_from_the_start_with_a_peer_that_takes_both() {
    // `childSas: perSubnetPair`: no refusal needed; IKE_AUTH carries the first pair
    let mut a = config_a();
    a.remote_ts = vec![net("10.2.1.0/24"), net("10.2.3.0/24")];
    a.child_per_pair = true;
    let b = mirror(&a);
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(2));
    assert_eq!(live_remote(&p), both());
    assert_eq!(Pair::installs(&p.ev_a).len(), 2);
    assert_eq!(p.b.children(p.b_peer).len(), 2);
    assert_eq!(failures(&p.ev_a), 0);
}

#[test]
fn a_pair_the_peer_lacks_is_refused_once() {
    // B has only one of A's two remote subnets: that pair comes up, the other is refused once
    // (TS_UNACCEPTABLE) and not offered again, whatever the recovery timer does
    let mut a = config_a();
    a.remote_ts = vec![net("10.2.1.0/24"), net("10.2.3.0/24")];
    a.child_per_pair = true;
    let mut b = mirror(&a);
    b.local_ts = vec![net("10.2.1.0/24")];
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(120));
    assert_eq!(
        live_remote(&p),
        [ts(&[net("10.2.1.0/24")])].into_iter().collect()
    );
    assert_eq!(
        Pair::child_failures(&p.ev_a),
        [strait_ike::Reason::TsUnacceptable]
    );
}
