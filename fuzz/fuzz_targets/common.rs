//! What the `responder` and `initiator` targets share: one PSK tunnel between two honest
//! endpoints on a simulated clock.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use strait_ike::codec::TsRange;
use strait_ike::crypto::keys::SecretBytes;
use strait_ike::proposal::{parse_esp_list, parse_ike_list};
use strait_ike::{
    AuthConfig, Endpoint, EndpointConfig, Identity, Lifetime, PeerConfig, Role, Transmit,
};

pub const RESPONDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const INITIATOR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const COOKIE_THRESHOLD: usize = 6;
pub const COOKIE_THRESHOLD_PER_IP: usize = 3;

fn subnet(a: [u8; 4], p: u8) -> TsRange {
    TsRange::subnet(IpAddr::from(a), p).expect("subnet")
}

/// The initiator's side of the tunnel, or the responder's (which accepts any address).
pub fn config(initiator: bool) -> PeerConfig {
    let (me, them) = if initiator {
        (INITIATOR, RESPONDER)
    } else {
        (RESPONDER, Ipv4Addr::UNSPECIFIED)
    };
    let (lid, rid) = if initiator {
        ("left.example", "right.example")
    } else {
        ("right.example", "left.example")
    };
    let (lts, rts) = if initiator {
        (subnet([10, 1, 0, 0], 16), subnet([10, 2, 0, 0], 16))
    } else {
        (subnet([10, 2, 0, 0], 16), subnet([10, 1, 0, 0], 16))
    };
    PeerConfig {
        local_addr: SocketAddr::new(me.into(), 500),
        remote_addr: SocketAddr::new(them.into(), 500),
        fallback_addrs: Vec::new(),
        local_id: Identity::Fqdn(lid.into()),
        remote_id: Identity::Fqdn(rid.into()),
        auth: AuthConfig::Psk(SecretBytes::from_slice(b"fuzz-psk")),
        ike_proposals: parse_ike_list(&["aes128gcm16-prfsha256-x25519", "aes128-sha256-ecp256"])
            .expect("IKE proposals"),
        esp_proposals: parse_esp_list(&["aes128gcm16-x25519", "aes128gcm16"])
            .expect("ESP proposals"),
        // a short CHILD lifetime so that time steps reach rekeys; IKE rekeys too
        ike_lifetime: Lifetime::from_rekey(Duration::from_secs(600)),
        reauth_time: None,
        child_lifetime: Lifetime::from_rekey(Duration::from_secs(120)),
        dpd: Some(strait_ike::Dpd {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(90),
        }),
        local_ts: vec![lts],
        remote_ts: vec![rts],
        role: if initiator {
            Role::Start
        } else {
            Role::Respond
        },
        force_encapsulation: false,
        child_per_pair: false,
    }
}

/// `fragment_size`: `None` for the default (1280, so PSK messages travel whole).
pub fn endpoint_config(fragment_size: Option<usize>) -> EndpointConfig {
    let d = EndpointConfig::default();
    EndpointConfig {
        cookie_threshold: COOKIE_THRESHOLD,
        cookie_threshold_per_ip: COOKIE_THRESHOLD_PER_IP,
        fragment_size: fragment_size.unwrap_or(d.fragment_size),
        ..d
    }
}

/// The endpoint under test and its honest peer on one clock: the target's datagrams to the
/// peer's address go straight to it; the peer's wait in a queue for the fuzzer to decide on.
pub struct Honest {
    pub now: Instant,
    pub target: Endpoint,
    pub peer: Endpoint,
    peer_ip: Ipv4Addr,
    /// The peer's datagrams not yet delivered.
    queue: VecDeque<Transmit>,
    /// Every honest datagram seen, for replays.
    history: Vec<Transmit>,
}

impl Honest {
    pub fn new(now: Instant, target: Endpoint, peer: Endpoint, peer_ip: Ipv4Addr) -> Self {
        let mut s = Self {
            now,
            target,
            peer,
            peer_ip,
            queue: VecDeque::new(),
            history: Vec::new(),
        };
        s.pump();
        s
    }

    /// Drains both endpoints (events are drained and ignored). Replies to the fuzzer's own
    /// datagrams from other addresses are dropped.
    pub fn pump(&mut self) {
        for _ in 0..8 {
            let mut sent = 0usize;
            while let Some(t) = self.target.poll_transmit() {
                sent += 1;
                assert!(sent < 256, "the endpoint under test keeps transmitting");
                if t.remote.ip() == IpAddr::V4(self.peer_ip) {
                    self.peer.handle(self.now, t.remote, t.local, &t.payload);
                }
            }
            while self.target.poll_event().is_some() {}
            while self.peer.poll_event().is_some() {}
            let mut queued = false;
            while let Some(t) = self.peer.poll_transmit() {
                queued = true;
                if self.history.len() < 64 {
                    self.history.push(t.clone());
                }
                self.queue.push_back(t);
            }
            if !queued {
                break;
            }
            assert!(self.queue.len() < 1024, "unbounded honest traffic");
        }
    }

    fn deliver(&mut self, t: &Transmit) {
        self.target.handle(self.now, t.remote, t.local, &t.payload);
    }

    /// What the fuzzer does to the honest traffic, by the op codes both targets share (0 and 1
    /// are each target's raw datagrams, the initiator's 7 its starts): deliver the next datagram
    /// (2, 3), deliver it with one octet changed (4: `[pos][xor]`), lose it (5), replay an
    /// older one (6: `[index]`), let time pass for both (any other: `[half seconds]`). Returns
    /// the input left, `None` when it ran out.
    pub fn honest_op<'a>(&mut self, op: u8, rest: &'a [u8]) -> Option<&'a [u8]> {
        match op {
            2 | 3 => {
                if let Some(t) = self.queue.pop_front() {
                    self.deliver(&t);
                }
                Some(rest)
            }
            4 => {
                let [pos, xor, tail @ ..] = rest else {
                    return None;
                };
                if let Some(mut t) = self.queue.pop_front() {
                    if !t.payload.is_empty() {
                        let i = usize::from(*pos) % t.payload.len();
                        t.payload[i] ^= *xor;
                    }
                    self.deliver(&t);
                }
                Some(tail)
            }
            5 => {
                self.queue.pop_front();
                Some(rest)
            }
            6 => {
                let [i, tail @ ..] = rest else {
                    return None;
                };
                if !self.history.is_empty() {
                    let t = self.history[usize::from(*i) % self.history.len()].clone();
                    self.deliver(&t);
                }
                Some(tail)
            }
            _ => {
                let [secs, tail @ ..] = rest else {
                    return None;
                };
                self.now += Duration::from_millis(u64::from(*secs) * 500);
                self.target.handle_timeout(self.now);
                self.peer.handle_timeout(self.now);
                Some(tail)
            }
        }
    }
}
