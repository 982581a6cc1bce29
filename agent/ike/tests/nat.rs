//! NAT keepalives (RFC 3948 §2.3, review R-3) and following a changed NAT mapping (RFC 7296
//! §2.23, review R-2), on a simulated clock with A behind a NAPT.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use strait_ike::{ChildSaInstall, Dpd, EndpointConfig, Transmit};
use util::{Fate, Pair, Side, config_a, is_keepalive, mirror};

const PUBLIC: &str = "203.0.113.7";

/// A behind a NAT (public address [`PUBLIC`], ports + 1000), B accepting it from anywhere.
fn natted(ea: EndpointConfig, dpd_a: Option<Dpd>) -> Pair {
    let mut a = config_a();
    a.dpd = dpd_a;
    let mut b = mirror(&config_a());
    b.remote_addr = "0.0.0.0:500".parse().unwrap();
    let mut p = Pair::with_endpoint_config(a, b, ea, EndpointConfig::default());
    p.nat_a = Some(PUBLIC.parse().unwrap());
    p.initiate();
    p.run_for(Duration::from_secs(1));
    p.assert_children_match();
    p
}

fn keepalives(p: &Pair, from: Side) -> Vec<Transmit> {
    p.log
        .iter()
        .filter(|s| s.from == from && is_keepalive(&s.t))
        .map(|s| s.t.clone())
        .collect()
}

fn dpd(interval: u64) -> Option<Dpd> {
    Some(Dpd {
        interval: Duration::from_secs(interval),
        timeout: Duration::from_secs(60),
    })
}

#[test]
fn behind_a_nat_we_send_keepalives_while_nothing_else_goes_out() {
    let mut p = natted(EndpointConfig::default(), None);
    p.run_for(Duration::from_secs(64));
    let sent = keepalives(&p, Side::A);
    // 20, 40 and 60 s after A's last IKE_AUTH datagram, from the NAT-T port to the peer's
    assert_eq!(sent.len(), 3, "{sent:?}");
    for t in &sent {
        assert_eq!((t.local.port(), t.remote.port()), (4500, 4500));
        assert!(!t.non_esp_marker);
    }
    let at: Vec<u64> = p
        .log
        .iter()
        .filter(|s| s.from == Side::A && is_keepalive(&s.t))
        .map(|s| (s.at - p.t0).as_secs())
        .collect();
    assert_eq!(at, [20, 40, 60]);
    // the peer, not behind a NAT, sends none; it drops ours as keepalives, not as garbage
    assert!(keepalives(&p, Side::B).is_empty());
    let stats = p.b.stats();
    assert_eq!((stats.keepalives, stats.malformed), (3, 0));
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
}

#[test]
fn no_keepalives_without_a_nat_or_when_turned_off() {
    let mut plain = Pair::new(config_a(), mirror(&config_a()));
    plain.initiate();
    plain.run_for(Duration::from_secs(65));
    assert!(keepalives(&plain, Side::A).is_empty());
    assert!(keepalives(&plain, Side::B).is_empty());

    let off = EndpointConfig {
        nat_keepalive: None,
        ..EndpointConfig::default()
    };
    let mut p = natted(off, None);
    p.run_for(Duration::from_secs(65));
    assert!(keepalives(&p, Side::A).is_empty());
}

#[test]
fn other_datagrams_to_the_peer_put_the_keepalive_off() {
    // A's liveness checks every 15 s already refresh the mapping
    let mut p = natted(EndpointConfig::default(), dpd(15));
    p.run_for(Duration::from_secs(65));
    assert!(keepalives(&p, Side::A).is_empty());
    let dpds = p.log.iter().filter(|s| s.from == Side::A).count();
    assert!(dpds >= 4, "A sent {dpds} datagrams in 65 s");
}

/// B's installs after the first one.
fn later_installs(p: &Pair) -> Vec<ChildSaInstall> {
    Pair::installs(&p.ev_b).into_iter().skip(1).collect()
}

#[test]
fn the_peer_s_new_nat_mapping_is_followed_by_its_children() {
    let mut p = natted(EndpointConfig::default(), dpd(10));
    let first = Pair::installs(&p.ev_b)[0].clone();
    assert_eq!(first.encapsulation.unwrap().remote_port, 5500);
    // The NAT forgets A's mapping and gives it a new port: A's next liveness check comes from
    // there, and the old mapping leads nowhere any more.
    p.nat_offset = 2000;
    p.run_for(Duration::from_secs(12));
    let new: SocketAddr = format!("{PUBLIC}:6500").parse().unwrap();
    let moved = later_installs(&p);
    assert_eq!(moved.len(), 1, "B's installs since: {moved:?}");
    let ch = &moved[0];
    assert_eq!(ch.replaces, Some(first.child));
    assert_eq!(ch.remote_addr, new);
    assert_eq!(ch.encapsulation.unwrap().remote_port, 6500);
    assert!(Pair::downs(&p.ev_a).is_empty() && Pair::downs(&p.ev_b).is_empty());
    // the old pair went on both sides, and B's IKE traffic reaches A at the new mapping
    assert_eq!(Pair::child_deletes(&p.ev_a), 1);
    assert_eq!(Pair::child_deletes(&p.ev_b), 1);
    let last_b = p.log.iter().rev().find(|s| s.from == Side::B).unwrap();
    assert_eq!(last_b.t.remote, new);
}

#[test]
fn an_esp_packet_from_a_new_mapping_moves_the_sa_without_any_ike_message() {
    // no DPD: nothing but the kernel's XFRM_MSG_MAPPING tells B
    let mut p = natted(EndpointConfig::default(), None);
    let first = Pair::installs(&p.ev_b)[0].clone();
    p.nat_offset = 2000;
    let new: SocketAddr = format!("{PUBLIC}:6500").parse().unwrap();
    let (now, peer) = (p.now, p.b_peer);
    p.b.esp_mapping(now, peer, first.spi_in, new);
    p.run_for(Duration::from_secs(1));
    let moved = later_installs(&p);
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].remote_addr, new);
    assert_eq!(moved[0].encapsulation.unwrap().remote_port, 6500);
    // A report of the mapping it already follows changes nothing more.
    let (now, spi) = (p.now, moved[0].spi_in);
    p.b.esp_mapping(now, peer, spi, new);
    p.run_for(Duration::from_secs(1));
    assert_eq!(later_installs(&p).len(), 1);
    // an SPI of nobody's is ignored
    p.b.esp_mapping(p.now, peer, strait_ike::EspSpi([9; 4]), new);
    p.run_for(Duration::from_secs(1));
    assert_eq!(later_installs(&p).len(), 1);
}

#[test]
fn behind_a_nat_the_initiator_does_not_follow_its_peer() {
    // B's liveness check is held back and handed to A as if from another address.
    let mut b = mirror(&config_a());
    b.remote_addr = "0.0.0.0:500".parse().unwrap();
    b.dpd = dpd(10);
    let mut p = Pair::new(config_a(), b);
    p.nat_a = Some(PUBLIC.parse().unwrap());
    p.initiate();
    p.run_for(Duration::from_secs(1));
    let held: Rc<RefCell<Vec<Transmit>>> = Rc::default();
    let h = Rc::clone(&held);
    p.filter = Box::new(move |from, t, _| {
        if from == Side::B && !is_keepalive(t) && h.borrow().is_empty() {
            h.borrow_mut().push(t.clone());
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    p.run_for(Duration::from_secs(10));
    let request = held.borrow()[0].clone();
    let elsewhere: SocketAddr = "198.51.100.99:4500".parse().unwrap();
    let local: SocketAddr = format!("{}:4500", util::A_IP).parse().unwrap();
    let n0 = p.log.len();
    let now = p.now;
    p.a.handle(now, local, elsewhere, &request.payload);
    p.settle();
    // The request is authentic and new, so A answers it, but where B is, not where it came from.
    let answers: Vec<_> = p.log[n0..].iter().filter(|s| s.from == Side::A).collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].t.remote, request.local);
    assert!(
        Pair::installs(&p.ev_a).len() == 1,
        "A rekeyed: {:?}",
        p.ev_a
    );
    // nor does an ESP mapping report move it
    let spi = Pair::installs(&p.ev_a)[0].spi_in;
    let (now, peer) = (p.now, p.a_peer);
    p.a.esp_mapping(now, peer, spi, elsewhere);
    p.run_for(Duration::from_secs(1));
    assert_eq!(Pair::installs(&p.ev_a).len(), 1);
}
