//! One responder tunnel (any address, any identity) serving many initiators at once, on a
//! simulated clock with a lossy network: the shape of a hub or of the IKE rate benchmark.
//!
//! The endpoint keeps indexes (timers, half-open SAs per address, SAs per tunnel) beside its
//! SAs. In debug builds `poll_timeout` and the cookie check assert that they equal a scan of
//! every SA, so every step of these runs checks them; the tests add what must hold at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod util;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::{
    Dpd, Endpoint, EndpointConfig, Event, Identity, Lifetime, PeerConfig, PeerId, Transmit,
};
use util::{config_a, mirror};

fn initiator_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 99, (i / 200) as u8, (i % 200 + 1) as u8))
}

struct Fleet {
    responder: Endpoint,
    initiators: Vec<(Endpoint, PeerId)>,
    now: Instant,
    /// Every `drop_every`-th datagram is lost (0: none).
    drop_every: usize,
    sent: usize,
    responder_events: Vec<Event>,
    initiator_events: Vec<Vec<Event>>,
}

impl Fleet {
    fn new(n: usize, tune: impl Fn(&mut PeerConfig), responder_cfg: EndpointConfig) -> Self {
        let mut any = mirror(&config_a());
        any.remote_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 500);
        any.remote_id = Identity::Any;
        tune(&mut any);
        let mut responder = Endpoint::new(responder_cfg, Box::new(DeterministicRng::new(7)));
        responder.add_peer(any).unwrap();
        let initiators = (0..n)
            .map(|i| {
                let mut cfg = config_a();
                cfg.local_addr = SocketAddr::new(initiator_ip(i), 500);
                cfg.local_id = Identity::ip(initiator_ip(i));
                tune(&mut cfg);
                let mut e = Endpoint::new(
                    EndpointConfig::default(),
                    Box::new(DeterministicRng::new(100 + i as u64)),
                );
                let peer = e.add_peer(cfg).unwrap();
                (e, peer)
            })
            .collect();
        Self {
            responder,
            initiators,
            now: Instant::now(),
            drop_every: 0,
            sent: 0,
            responder_events: Vec::new(),
            initiator_events: vec![Vec::new(); n],
        }
    }

    fn lost(&mut self) -> bool {
        self.sent += 1;
        self.drop_every != 0 && self.sent.is_multiple_of(self.drop_every)
    }

    /// Delivers everything in flight, and what it triggers, at the current time.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut to_responder: VecDeque<Transmit> = VecDeque::new();
            for (i, (e, _)) in self.initiators.iter_mut().enumerate() {
                while let Some(t) = e.poll_transmit() {
                    to_responder.push_back(t);
                }
                while let Some(ev) = e.poll_event() {
                    self.initiator_events[i].push(ev);
                }
            }
            let mut to_initiators = Vec::new();
            while let Some(t) = self.responder.poll_transmit() {
                to_initiators.push(t);
            }
            while let Some(ev) = self.responder.poll_event() {
                self.responder_events.push(ev);
            }
            if to_responder.is_empty() && to_initiators.is_empty() {
                return;
            }
            for t in to_responder {
                if !self.lost() {
                    self.responder
                        .handle(self.now, t.remote, t.local, &t.payload);
                }
            }
            for t in to_initiators {
                if self.lost() {
                    continue;
                }
                if let Some(i) =
                    (0..self.initiators.len()).find(|&i| initiator_ip(i) == t.remote.ip())
                {
                    self.initiators[i]
                        .0
                        .handle(self.now, t.remote, t.local, &t.payload);
                }
            }
        }
        panic!("network never settled");
    }

    fn run_for(&mut self, limit: Duration) {
        let end = self.now + limit;
        loop {
            self.settle();
            let next = self
                .initiators
                .iter()
                .filter_map(|(e, _)| e.poll_timeout())
                .chain(self.responder.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.responder.handle_timeout(self.now);
                    for (e, _) in &mut self.initiators {
                        e.handle_timeout(self.now);
                    }
                }
                _ => {
                    self.now = end;
                    self.settle();
                    return;
                }
            }
        }
    }

    fn initiate_all(&mut self) {
        for (e, peer) in &mut self.initiators {
            e.initiate(self.now, *peer);
        }
    }
}

fn count(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

/// 40 initiators through 10 % loss for 20 simulated minutes, each CHILD SA rekeyed every
/// 2 minutes and each IKE SA every 7, DPD on: every tunnel stays up, and the responder ends
/// with exactly one IKE SA per initiator (every replaced one removed, with its routing).
#[test]
fn forty_initiators_rekeying_through_loss_leave_one_sa_each() {
    const N: usize = 40;
    let mut fleet = Fleet::new(
        N,
        |c| {
            c.child_lifetime = Lifetime::from_rekey(Duration::from_secs(120));
            c.ike_lifetime = Lifetime::from_rekey(Duration::from_secs(420));
            c.dpd = Some(Dpd {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(60),
            });
        },
        EndpointConfig::default(),
    );
    fleet.drop_every = 10;
    fleet.initiate_all();
    fleet.run_for(Duration::from_secs(20 * 60));
    // Then three quiet minutes (no loss): an old IKE SA whose DELETE was lost lingers until its
    // retransmission is answered, so the counts are taken once every exchange has finished.
    fleet.drop_every = 0;
    fleet.run_for(Duration::from_secs(3 * 60));

    let downs = count(&fleet.responder_events, |e| {
        matches!(e, Event::IkeSaDown { .. })
    });
    let ups = count(&fleet.responder_events, |e| {
        matches!(e, Event::IkeSaUp { .. })
    });
    let installs = count(&fleet.responder_events, |e| {
        matches!(e, Event::ChildSaInstall(_))
    });
    assert!(ups >= N, "{ups} IKE SAs came up at the responder");
    // 20 min / 2 min: about ten CHILD SAs per tunnel over the run.
    assert!(installs >= N * 8, "only {installs} CHILD SAs installed");
    assert_eq!(
        fleet.responder.ike_sa_count(),
        N,
        "responder holds one IKE SA per initiator ({ups} up, {downs} down)"
    );
    for (i, (e, peer)) in fleet.initiators.iter().enumerate() {
        assert_eq!(e.ike_sa_count(), 1, "initiator {i}");
        assert_eq!(e.children(*peer).len(), 1, "initiator {i} CHILD SAs");
        let down = fleet.initiator_events[i]
            .iter()
            .find(|e| matches!(e, Event::IkeSaDown { .. }));
        assert!(down.is_none(), "initiator {i}: {down:?}");
    }
    assert!(fleet.responder.poll_timeout().is_some());
}

/// Half-open SAs from many addresses: the cookie threshold counts them as they come and as they
/// expire, and an initiator SPI whose half-open SA is gone starts a new SA instead of being
/// taken for a retransmission.
#[test]
fn half_open_counts_follow_creation_and_expiry() {
    const N: usize = 12;
    let mut fleet = Fleet::new(
        N,
        |_| {},
        EndpointConfig {
            cookie_threshold: 8,
            cookie_threshold_per_ip: 100,
            ..EndpointConfig::default()
        },
    );
    // Every initiator's IKE_SA_INIT reaches the responder; nothing comes back.
    fleet.initiate_all();
    let mut first = Vec::new();
    for (e, _) in &mut fleet.initiators {
        let t = e.poll_transmit().unwrap();
        fleet
            .responder
            .handle(fleet.now, t.remote, t.local, &t.payload);
        first.push(t);
    }
    let held = fleet.responder.ike_sa_count();
    assert_eq!(held, 8, "half-open SAs up to the threshold");
    assert_eq!(fleet.responder.stats().cookies_sent, (N - 8) as u64);
    while fleet.responder.poll_transmit().is_some() {}

    // They expire together on the responder's own timer, and the count goes with them.
    let expiry = fleet.responder.poll_timeout().unwrap();
    fleet.responder.handle_timeout(expiry);
    assert_eq!(fleet.responder.ike_sa_count(), 0);
    assert_eq!(fleet.responder.poll_timeout(), None);

    // The first initiator's request again: a new half-open SA and an answer, no cookie.
    let cookies = fleet.responder.stats().cookies_sent;
    let answered = fleet.responder.stats().retransmits_answered;
    let t = &first[0];
    fleet
        .responder
        .handle(expiry, t.remote, t.local, &t.payload);
    assert_eq!(fleet.responder.ike_sa_count(), 1);
    assert_eq!(fleet.responder.stats().cookies_sent, cookies);
    assert_eq!(fleet.responder.stats().retransmits_answered, answered);
    assert!(fleet.responder.poll_transmit().is_some());
}

/// An IKE_SA_INIT request goes to the first tunnel for exactly its source address whose local
/// address fits, else to the first tunnel for any address; once neither exists it is counted
/// as having no configuration.
#[test]
fn requests_find_the_tunnel_for_their_address_before_the_wildcard() {
    let mut fleet = Fleet::new(3, |_| {}, EndpointConfig::default());
    let any = PeerId(1);
    let specific = |i: usize, local: &str| {
        let mut c = mirror(&config_a());
        c.remote_addr = SocketAddr::new(initiator_ip(i), 500);
        c.remote_id = Identity::ip(initiator_ip(i));
        c.local_addr = SocketAddr::new(local.parse().unwrap(), 500);
        c
    };
    let for_0 = fleet.responder.add_peer(specific(0, util::B_IP)).unwrap();
    // For initiator 1's address, but on a local address the requests do not arrive at.
    let elsewhere = fleet
        .responder
        .add_peer(specific(1, "203.0.113.1"))
        .unwrap();
    fleet.initiate_all();
    fleet.run_for(Duration::from_secs(5));

    let mut by_initiator: Vec<(IpAddr, PeerId)> = fleet
        .responder_events
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaUp {
                peer, remote_addr, ..
            } => Some((remote_addr.ip(), *peer)),
            _ => None,
        })
        .collect();
    by_initiator.sort();
    assert_eq!(
        by_initiator,
        vec![
            (initiator_ip(0), for_0),
            (initiator_ip(1), any),
            (initiator_ip(2), any),
        ]
    );

    for peer in [any, for_0, elsewhere] {
        fleet.responder.remove_peer(fleet.now, peer);
    }
    fleet.run_for(Duration::from_secs(5));
    let (e, peer) = &mut fleet.initiators[2];
    e.initiate(fleet.now, *peer);
    let t = e.poll_transmit().unwrap();
    let before = fleet.responder.stats().no_peer_config;
    fleet
        .responder
        .handle(fleet.now, t.remote, t.local, &t.payload);
    assert_eq!(fleet.responder.stats().no_peer_config, before + 1);
    assert_eq!(fleet.responder.ike_sa_count(), 0);
}
