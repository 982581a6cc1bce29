//! Test harness (after quinn-proto's tests/util.rs): two endpoints, a simulated clock and a fake
//! network that can drop, duplicate, delay and NAT datagrams.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use strait_ike::codec::{ExchangeType, Header, Spi, TsRange};
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::proposal::{parse_esp_list, parse_ike_list};
use strait_ike::{Endpoint, EndpointConfig, Event, Identity, PeerConfig, PeerId, Transmit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    Drop,
    Duplicate,
    /// Deliver after everything else currently in flight (reordering).
    Delay,
}

/// One datagram as it travelled.
#[derive(Debug, Clone)]
pub struct Sent {
    pub from: Side,
    pub at: Instant,
    pub t: Transmit,
    pub fate: Fate,
}

pub type Filter = Box<dyn FnMut(Side, &Transmit, usize) -> Fate>;

pub struct Pair {
    pub a: Endpoint,
    pub b: Endpoint,
    pub a_peer: PeerId,
    pub b_peer: PeerId,
    pub t0: Instant,
    pub now: Instant,
    pub ev_a: Vec<(Instant, Event)>,
    pub ev_b: Vec<(Instant, Event)>,
    pub log: Vec<Sent>,
    pub filter: Filter,
    /// A sits behind a NAT whose public address is this IP (ports + `nat_offset`).
    pub nat_a: Option<IpAddr>,
    /// What A's NAT adds to its ports (1000); change it to rebind the mapping.
    pub nat_offset: u16,
    sent_count: usize,
}

/// The wall-clock time (Unix seconds) of `t0` in [`Pair::set_wall_clock`].
pub const WALL_CLOCK: u64 = 1_800_000_000;

pub const A_IP: &str = "192.0.2.1";
pub const B_IP: &str = "198.51.100.2";

/// A NAT keepalive (RFC 3948 §2.3), not an IKE message.
pub fn is_keepalive(t: &Transmit) -> bool {
    t.payload == [strait_ike::codec::NAT_KEEPALIVE]
}

pub fn net(s: &str) -> TsRange {
    let (a, p) = s.split_once('/').unwrap();
    TsRange::subnet(a.parse().unwrap(), p.parse().unwrap()).unwrap()
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A lifetime that rekeys after `secs` without jitter, hard limit 10 % later.
pub fn lifetime(secs: u64) -> strait_ike::Lifetime {
    strait_ike::Lifetime {
        rekey_time: Duration::from_secs(secs),
        rand_time: Duration::ZERO,
        life_time: Duration::from_secs(secs + secs / 10),
        bytes: None,
        packets: None,
    }
}

/// A's side of the tunnel (initiator by default); B's is [`mirror`].
pub fn config_a() -> PeerConfig {
    PeerConfig::psk(
        addr(A_IP, 500),
        Identity::Fqdn("a.example.com".into()),
        addr(B_IP, 500),
        Identity::Fqdn("b.example.com".into()),
        b"correct horse battery staple",
    )
    .with_proposals(
        parse_ike_list(&["aes256gcm16-prfsha384-x25519"]).unwrap(),
        parse_esp_list(&["aes256gcm16-x25519"]).unwrap(),
    )
    .with_ts(vec![net("10.1.0.0/16")], vec![net("10.2.0.0/16")])
}

/// The same tunnel seen from B.
pub fn mirror(a: &PeerConfig) -> PeerConfig {
    a.mirrored()
}

impl Pair {
    pub fn new(a_cfg: PeerConfig, b_cfg: PeerConfig) -> Self {
        Self::with_endpoint_config(
            a_cfg,
            b_cfg,
            EndpointConfig::default(),
            EndpointConfig::default(),
        )
    }

    pub fn with_endpoint_config(
        a_cfg: PeerConfig,
        b_cfg: PeerConfig,
        ea: EndpointConfig,
        eb: EndpointConfig,
    ) -> Self {
        Self::with_seeds(a_cfg, b_cfg, ea, eb, (1, 2))
    }

    /// Like [`Pair::with_endpoint_config`] with the two endpoints' RNG seeds.
    pub fn with_seeds(
        a_cfg: PeerConfig,
        b_cfg: PeerConfig,
        ea: EndpointConfig,
        eb: EndpointConfig,
        seeds: (u64, u64),
    ) -> Self {
        let mut a = Endpoint::new(ea, Box::new(DeterministicRng::new(seeds.0)));
        let mut b = Endpoint::new(eb, Box::new(DeterministicRng::new(seeds.1)));
        let a_peer = a.add_peer(a_cfg).unwrap();
        let b_peer = b.add_peer(b_cfg).unwrap();
        let t0 = Instant::now();
        Self {
            a,
            b,
            a_peer,
            b_peer,
            t0,
            now: t0,
            ev_a: Vec::new(),
            ev_b: Vec::new(),
            log: Vec::new(),
            filter: Box::new(|_, _, _| Fate::Deliver),
            nat_a: None,
            nat_offset: 1000,
            sent_count: 0,
        }
    }

    /// Gives both endpoints the same wall clock (saved state is timed by it).
    pub fn set_wall_clock(&mut self) {
        self.a.set_wall_clock(self.t0, WALL_CLOCK);
        self.b.set_wall_clock(self.t0, WALL_CLOCK);
    }

    /// Restarts `side` as a new process: what it saves now is all that survives; for `down`
    /// nothing answers at its address (datagrams to it are lost); then a new endpoint with the
    /// same tunnel and a fresh RNG (`seed`) resumes the saved state. Its earlier events are
    /// dropped: they belonged to the old process.
    pub fn restart(
        &mut self,
        side: Side,
        cfg: PeerConfig,
        seed: u64,
        down: Duration,
    ) -> Result<strait_ike::Resumed, strait_ike::ResumeError> {
        let (ep, peer) = match side {
            Side::A => (&self.a, self.a_peer),
            Side::B => (&self.b, self.b_peer),
        };
        let saved = ep.save(self.now, peer).unwrap();
        self.restart_from(side, cfg, seed, down, saved.as_bytes())
    }

    /// [`Pair::restart`] with these saved bytes instead of what `side` holds (a state an
    /// older version wrote, for instance).
    pub fn restart_from(
        &mut self,
        side: Side,
        cfg: PeerConfig,
        seed: u64,
        down: Duration,
        saved: &[u8],
    ) -> Result<strait_ike::Resumed, strait_ike::ResumeError> {
        let config = EndpointConfig::default();
        let ep = match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        };
        *ep = Endpoint::new(config.clone(), Box::new(DeterministicRng::new(seed)));
        match side {
            Side::A => self.ev_a.clear(),
            Side::B => self.ev_b.clear(),
        }
        if !down.is_zero() {
            self.run_for(down);
        }
        let mut ep = Endpoint::new(config, Box::new(DeterministicRng::new(seed)));
        ep.set_wall_clock(self.t0, WALL_CLOCK);
        let peer = ep.add_peer(cfg).unwrap();
        let r = ep.resume(self.now, peer, saved);
        match side {
            Side::A => {
                self.a = ep;
                self.a_peer = peer;
            }
            Side::B => {
                self.b = ep;
                self.b_peer = peer;
            }
        }
        self.collect();
        r
    }

    pub fn secs(&self) -> f64 {
        (self.now - self.t0).as_secs_f64()
    }

    pub fn initiate(&mut self) {
        self.a.initiate(self.now, self.a_peer);
    }

    fn collect(&mut self) {
        while let Some(e) = self.a.poll_event() {
            self.ev_a.push((self.now, e));
        }
        while let Some(e) = self.b.poll_event() {
            self.ev_b.push((self.now, e));
        }
    }

    /// Delivers everything in flight (and what it triggers) at the current time.
    pub fn settle(&mut self) {
        let mut delayed: VecDeque<(Side, Transmit)> = VecDeque::new();
        for _ in 0..10_000 {
            let mut batch: Vec<(Side, Transmit)> = Vec::new();
            while let Some(t) = self.a.poll_transmit() {
                batch.push((Side::A, t));
            }
            while let Some(t) = self.b.poll_transmit() {
                batch.push((Side::B, t));
            }
            self.collect();
            if batch.is_empty() {
                match delayed.pop_front() {
                    Some((from, t)) => self.deliver(from, &t),
                    None => return,
                }
                continue;
            }
            for (from, t) in batch {
                self.sent_count += 1;
                let fate = (self.filter)(from, &t, self.sent_count);
                self.log.push(Sent {
                    from,
                    at: self.now,
                    t: t.clone(),
                    fate,
                });
                match fate {
                    Fate::Deliver => self.deliver(from, &t),
                    Fate::Drop => {}
                    Fate::Duplicate => {
                        self.deliver(from, &t);
                        self.deliver(from, &t);
                    }
                    Fate::Delay => delayed.push_back((from, t)),
                }
            }
        }
        panic!("network never settled");
    }

    fn deliver(&mut self, from: Side, t: &Transmit) {
        let now = self.now;
        match from {
            Side::A => {
                let mut src = t.local;
                if let Some(public) = self.nat_a {
                    src = SocketAddr::new(public, t.local.port() + self.nat_offset);
                }
                self.b.handle(now, t.remote, src, &t.payload);
            }
            Side::B => {
                let mut dst = t.remote;
                if let Some(public) = self.nat_a {
                    if dst.ip() != public {
                        return;
                    }
                    // only the current mapping leads in: an old one is gone from the NAT
                    let Some(port) = dst.port().checked_sub(self.nat_offset) else {
                        return;
                    };
                    if port != 500 && port != 4500 {
                        return;
                    }
                    dst = SocketAddr::new(A_IP.parse().unwrap(), port);
                }
                self.a.handle(now, dst, t.local, &t.payload);
            }
        }
        self.collect();
    }

    /// Runs the simulation (settling the network, then jumping to the next timer) until
    /// `limit` simulated time has passed.
    pub fn run_for(&mut self, limit: Duration) {
        let end = self.now + limit;
        for _ in 0..100_000 {
            self.settle();
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                }
                _ => {
                    self.now = end;
                    self.settle();
                    return;
                }
            }
        }
        panic!("timers never let time advance");
    }

    /// (sender, exchange type, is response, message ID, initiator SPI) of every datagram sent.
    pub fn exchanges(&self) -> Vec<(Side, ExchangeType, bool, u32, Spi)> {
        self.log
            .iter()
            .filter(|s| !is_keepalive(&s.t))
            .map(|s| {
                let raw = if s.t.non_esp_marker {
                    &s.t.payload[4..]
                } else {
                    &s.t.payload[..]
                };
                let h = Header::peek(raw).unwrap().header;
                (
                    s.from,
                    h.exchange_type,
                    h.flags.is_response(),
                    h.message_id,
                    h.initiator_spi,
                )
            })
            .collect()
    }

    /// The exchange type of one logged datagram, if it is an IKE message.
    pub fn exchanges_of(&self, s: &Sent) -> Option<ExchangeType> {
        let raw = if s.t.non_esp_marker {
            s.t.payload.get(4..)?
        } else {
            &s.t.payload[..]
        };
        Header::peek(raw).ok().map(|h| h.header.exchange_type)
    }

    pub fn installs(ev: &[(Instant, Event)]) -> Vec<strait_ike::ChildSaInstall> {
        ev.iter()
            .filter_map(|(_, e)| match e {
                Event::ChildSaInstall(i) => Some((**i).clone()),
                _ => None,
            })
            .collect()
    }

    pub fn downs(ev: &[(Instant, Event)]) -> Vec<(Instant, strait_ike::Reason)> {
        ev.iter()
            .filter_map(|(t, e)| match e {
                Event::IkeSaDown { reason, .. } => Some((*t, *reason)),
                _ => None,
            })
            .collect()
    }

    pub fn ups(ev: &[(Instant, Event)]) -> usize {
        ev.iter()
            .filter(|(_, e)| matches!(e, Event::IkeSaUp { .. }))
            .count()
    }

    pub fn child_failures(ev: &[(Instant, Event)]) -> Vec<strait_ike::Reason> {
        ev.iter()
            .filter_map(|(_, e)| match e {
                Event::ChildSaFailed { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    pub fn child_deletes(ev: &[(Instant, Event)]) -> usize {
        ev.iter()
            .filter(|(_, e)| matches!(e, Event::ChildSaDelete { .. }))
            .count()
    }

    /// Asserts one CHILD SA on each side and that they mirror each other.
    pub fn assert_children_match(
        &self,
    ) -> (strait_ike::ChildSaInstall, strait_ike::ChildSaInstall) {
        let ia = Self::installs(&self.ev_a);
        let ib = Self::installs(&self.ev_b);
        assert_eq!(ia.len(), 1, "A installs: {ia:?}");
        assert_eq!(ib.len(), 1, "B installs: {ib:?}");
        let (x, y) = (ia[0].clone(), ib[0].clone());
        assert_eq!(x.spi_in, y.spi_out);
        assert_eq!(x.spi_out, y.spi_in);
        assert_ne!(x.spi_in, x.spi_out);
        assert_eq!(x.keys.encr_in.as_bytes(), y.keys.encr_out.as_bytes());
        assert_eq!(x.keys.encr_out.as_bytes(), y.keys.encr_in.as_bytes());
        assert_eq!(x.keys.integ_in.as_bytes(), y.keys.integ_out.as_bytes());
        assert_ne!(x.keys.encr_in.as_bytes(), x.keys.encr_out.as_bytes());
        assert_eq!((x.encr, x.integ, x.esn), (y.encr, y.integ, y.esn));
        assert_eq!(x.local_ts, y.remote_ts);
        assert_eq!(x.remote_ts, y.local_ts);
        (x, y)
    }
}
