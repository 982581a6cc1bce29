//! `Endpoint::acquire`: the kernel saw traffic for an `onTraffic` tunnel (a trap policy without
//! an SA). It starts an IKE SA unless one is being set up or is up.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::time::Duration;

use strait_ike::Role;
use strait_ike::codec::ExchangeType;
use util::{Pair, Side, config_a, mirror};

fn init_requests(p: &Pair) -> usize {
    p.exchanges()
        .iter()
        .filter(|x| x.0 == Side::A && x.1 == ExchangeType::IKE_SA_INIT && !x.2)
        .count()
}

#[test]
fn traffic_starts_the_tunnel_once_and_again_after_the_peer_deleted_it() {
    let mut a = config_a();
    a.role = Role::OnTraffic;
    let b = mirror(&a);
    let mut p = Pair::new(a, b.clone());
    // Nothing happens without traffic.
    p.run_for(Duration::from_secs(5));
    assert_eq!(init_requests(&p), 0);

    // Two acquires in a row (two packets of the flow): one handshake.
    p.a.acquire(p.now, p.a_peer);
    p.a.acquire(p.now, p.a_peer);
    p.run_for(Duration::from_secs(1));
    assert_eq!(init_requests(&p), 1);
    assert_eq!(Pair::ups(&p.ev_a), 1);
    p.a.acquire(p.now, p.a_peer);
    p.run_for(Duration::from_secs(1));
    assert_eq!(
        init_requests(&p),
        1,
        "an established tunnel is not started again"
    );

    // The peer deletes the IKE SA (its tunnel is removed and added back). Our SA lingers in
    // closing for retransmissions; traffic right away must still start a new one.
    p.b.remove_peer(p.now, p.b_peer);
    p.settle();
    p.b_peer = p.b.add_peer(b).unwrap();
    assert_eq!(Pair::downs(&p.ev_a).len(), 1);
    assert_eq!(p.a.ike_sa_count(), 1, "the deleted SA lingers");
    p.a.acquire(p.now, p.a_peer);
    p.run_for(Duration::from_secs(1));
    assert_eq!(init_requests(&p), 2);
    assert_eq!(Pair::ups(&p.ev_a), 2);
    assert_eq!(p.a.children(p.a_peer).len(), 1);
}
