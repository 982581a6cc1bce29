//! Peer addressing: fallback addresses tried in order, accepted as responder, changed in place
//! (DNS resolved again), and the peer's IKE port.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use strait_ike::codec::{ExchangeType, Header};
use strait_ike::{EndpointConfig, Event, Reason};
use util::{A_IP, B_IP, Fate, Pair, Side, addr, config_a, mirror};

/// Addresses where nothing answers.
const DEAD: &str = "203.0.113.9";
const DEAD2: &str = "203.0.113.10";

/// Where each attempt of A (an IKE_SA_INIT request with a new SPI) went, in order.
fn init_targets(p: &Pair) -> Vec<SocketAddr> {
    let mut spis = Vec::new();
    let mut out = Vec::new();
    for s in p.log.iter().filter(|s| s.from == Side::A) {
        let Ok(w) = Header::peek(unmarked(&s.t.payload)) else {
            continue;
        };
        if w.header.exchange_type == ExchangeType::IKE_SA_INIT
            && !spis.contains(&w.header.initiator_spi)
        {
            spis.push(w.header.initiator_spi);
            out.push(s.t.remote);
        }
    }
    out
}

fn unmarked(d: &[u8]) -> &[u8] {
    d.strip_prefix(&[0u8; 4][..]).unwrap_or(d)
}

/// The peer address of each IKE SA A saw come up.
fn up_at(p: &Pair) -> Vec<SocketAddr> {
    p.ev_a
        .iter()
        .filter_map(|(_, e)| match e {
            Event::IkeSaUp { remote_addr, .. } => Some(*remote_addr),
            _ => None,
        })
        .collect()
}

/// A pair where A knows B as `DEAD` first and B's real address second, and datagrams to an
/// address in `dead` vanish.
fn with_dead_first(dead: &'static [&'static str]) -> Pair {
    let mut a = config_a();
    let b = mirror(&a);
    a.remote_addr = addr(DEAD, 500);
    a.fallback_addrs = dead[1..]
        .iter()
        .map(|ip| addr(ip, 500))
        .chain([addr(B_IP, 500)])
        .collect();
    let mut p = Pair::new(a, b);
    p.filter = Box::new(move |from, t, _| {
        if from == Side::A && dead.contains(&t.remote.ip().to_string().as_str()) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p
}

#[test]
fn an_unanswered_address_gives_way_to_the_next_which_is_kept() {
    let mut p = with_dead_first(&[DEAD]);
    p.initiate();
    // the whole retransmission schedule (4 s × 1.8^k, five times, then one more wait)
    p.run_for(Duration::from_secs(200));
    assert_eq!(
        Pair::downs(&p.ev_a).iter().map(|d| d.1).collect::<Vec<_>>(),
        [Reason::PeerUnreachable]
    );
    assert!(up_at(&p).is_empty());
    // the driver's retry: the next attempt goes to the fallback, which answers
    p.initiate();
    p.run_for(Duration::from_secs(2));
    assert_eq!(init_targets(&p), [addr(DEAD, 500), addr(B_IP, 500)]);
    assert_eq!(up_at(&p), [addr(B_IP, 500)]);
    assert_eq!(p.a.children(p.a_peer).len(), 1);
    // a later attempt (here a second IKE SA beside the first) stays with what worked
    p.initiate();
    p.run_for(Duration::from_secs(2));
    assert_eq!(
        init_targets(&p),
        [addr(DEAD, 500), addr(B_IP, 500), addr(B_IP, 500)]
    );
}

#[test]
fn attempts_go_round_every_address_in_order() {
    let mut p = with_dead_first(&[DEAD, DEAD2]);
    for _ in 0..4 {
        p.initiate();
        p.run_for(Duration::from_secs(200));
    }
    assert_eq!(
        init_targets(&p),
        [
            addr(DEAD, 500),
            addr(DEAD2, 500),
            addr(B_IP, 500),
            addr(B_IP, 500)
        ],
        "the third attempt comes up, the fourth keeps its address"
    );
    let unreachable = Pair::downs(&p.ev_a)
        .iter()
        .filter(|d| d.1 == Reason::PeerUnreachable)
        .count();
    assert_eq!(unreachable, 2);
}

#[test]
fn a_refusing_address_is_left_at_once_for_the_next() {
    // B refuses on its first address (as a gateway with no tunnel for us answers
    // NO_PROPOSAL_CHOSEN); A must not wait for its retransmissions to run out there.
    let mut a = config_a();
    let b = mirror(&a);
    let other_b = "198.51.100.3";
    a.remote_addr = addr(other_b, 500);
    a.fallback_addrs = vec![addr(B_IP, 500)];
    let mut p = Pair::new(a, b);
    // B has no tunnel for its second address: it answers there with NO_PROPOSAL_CHOSEN
    let mut local = mirror(&config_a());
    local.local_addr = addr(other_b, 500);
    local.esp_proposals = strait_ike::proposal::parse_esp_list(&["aes128gcm16"]).unwrap();
    local.ike_proposals =
        strait_ike::proposal::parse_ike_list(&["aes128-sha256-modp3072"]).unwrap();
    p.b.add_peer(local).unwrap();
    p.initiate();
    p.run_for(Duration::from_secs(10));
    assert_eq!(
        Pair::downs(&p.ev_a).iter().map(|d| d.1).collect::<Vec<_>>(),
        [Reason::NoProposalChosen]
    );
    p.initiate();
    p.run_for(Duration::from_secs(2));
    assert_eq!(up_at(&p), [addr(B_IP, 500)]);
}

#[test]
fn the_peer_is_accepted_from_any_of_its_addresses() {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_addr = addr("192.0.2.77", 500);
    b.fallback_addrs = vec![addr("192.0.2.78", 500), addr(A_IP, 500)];
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.b.children(p.b_peer).len(), 1);
    // without A's address among them, B has no tunnel for A
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_addr = addr("192.0.2.77", 500);
    b.fallback_addrs = vec![addr("192.0.2.78", 500)];
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(10));
    assert!(p.b.children(p.b_peer).is_empty());
    assert!(up_at(&p).is_empty());
}

#[test]
fn new_addresses_apply_to_the_next_attempt_and_keep_the_place_in_the_list() {
    let mut p = with_dead_first(&[DEAD]);
    p.initiate();
    p.run_for(Duration::from_secs(200));
    // A name resolves again: B's address now comes first, the dead one after it. The next
    // attempt would have gone to B, and still does.
    let peer = p.a_peer;
    p.a.set_remote_addrs(peer, addr(B_IP, 500), vec![addr(DEAD, 500)])
        .unwrap();
    p.initiate();
    p.run_for(Duration::from_secs(2));
    assert_eq!(up_at(&p), [addr(B_IP, 500)]);
    // and B now answers only when asked on the address it was moved to
    let peer = p.b_peer;
    p.b.set_remote_addrs(peer, addr("192.0.2.99", 500), vec![])
        .unwrap();
    let peer = p.a_peer;
    let other = p.a.add_peer(config_a());
    assert!(other.is_ok());
    let now = p.now;
    p.a.initiate(now, other.unwrap());
    p.run_for(Duration::from_secs(10));
    assert_eq!(p.b.ike_sa_count(), 1, "B took no second IKE SA from A");
    // an address of the other family is refused, the tunnel left as it was
    assert!(
        p.a.set_remote_addrs(peer, addr("2001:db8::1", 500), vec![])
            .is_err()
    );
}

#[test]
fn a_peer_on_the_nat_t_port_is_reached_from_ours_with_the_marker() {
    let mut a = config_a();
    a.remote_addr = addr(B_IP, 4500);
    let b = mirror(&config_a());
    let mut p = Pair::new(a, b);
    p.initiate();
    p.run_for(Duration::from_secs(2));
    let first = p.log.iter().find(|s| s.from == Side::A).unwrap();
    assert_eq!((first.t.local.port(), first.t.remote.port()), (4500, 4500));
    assert_eq!(&first.t.payload[..4], &[0, 0, 0, 0], "non-ESP marker");
    assert_eq!(up_at(&p), [addr(B_IP, 4500)]);
    assert_eq!(p.b.children(p.b_peer).len(), 1);
}

#[test]
fn another_peer_port_is_kept_when_a_nat_is_found() {
    // strongSwan's remote_port: only the port 500 floats to 4500
    let mut a = config_a();
    a.remote_addr = addr(B_IP, 5500);
    let mut b = mirror(&a);
    b.local_addr = addr(B_IP, 5500);
    b.remote_addr = addr("0.0.0.0", 0);
    let eb = EndpointConfig {
        ike_port: 5500,
        ..EndpointConfig::default()
    };
    let mut p = Pair::with_endpoint_config(a, b, EndpointConfig::default(), eb);
    p.nat_a = Some("203.0.113.200".parse().unwrap());
    p.initiate();
    p.run_for(Duration::from_secs(2));
    let ports: Vec<u16> = p
        .log
        .iter()
        .filter(|s| s.from == Side::A)
        .map(|s| s.t.remote.port())
        .collect();
    assert!(ports.len() >= 2, "{ports:?}");
    assert!(ports.iter().all(|&port| port == 5500), "{ports:?}");
    assert_eq!(p.a.children(p.a_peer).len(), 1);
}
