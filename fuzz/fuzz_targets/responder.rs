//! A responder `Endpoint` (PSK peer, any remote address) fed arbitrary datagrams on ports 500 and
//! 4500 from a handful of addresses, on a simulated clock, with its transmits, timeouts and
//! events polled after every step. Beside the fuzzer's raw datagrams an honest initiator
//! (same PSK) runs a real exchange with it, and the fuzzer decides what happens to each of
//! the honest messages (deliver, drop, replay an older one, or change one octet), so the
//! states after IKE_SA_INIT are reached too.
//!
//! Checked: nothing panics; memory stays bounded: the responder never holds more IKE SAs than
//! its cookie threshold allows half-open (the fuzzer cannot answer a COOKIE) plus the honest
//! initiator's one; transmits per step are bounded.

#![no_main]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::{Endpoint, Transmit};

#[path = "common.rs"]
mod common;
use common::{COOKIE_THRESHOLD, INITIATOR, RESPONDER, config};

/// Where the fuzzer's own datagrams come from (the honest initiator's address among them).
const SOURCES: [Ipv4Addr; 4] = [
    INITIATOR,
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(203, 0, 113, 9),
    Ipv4Addr::new(10, 0, 0, 1),
];
const MAX_STEPS: usize = 64;

fn endpoint_config() -> strait_ike::EndpointConfig {
    common::endpoint_config(None)
}

struct Sim {
    now: Instant,
    responder: Endpoint,
    initiator: Endpoint,
    /// The honest initiator's datagrams not yet delivered.
    to_responder: VecDeque<Transmit>,
    /// Every honest datagram seen, for replays.
    history: Vec<Transmit>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let now = Instant::now();
        let mut responder = Endpoint::new(endpoint_config(), Box::new(DeterministicRng::new(seed)));
        let mut initiator = Endpoint::new(
            endpoint_config(),
            Box::new(DeterministicRng::new(seed ^ 0x5a5a)),
        );
        // time steps reach every timer; certificates are not used, the wall clock is harmless
        responder.set_wall_clock(now, 1_900_000_000);
        responder.add_peer(config(false)).expect("responder config");
        let peer = initiator.add_peer(config(true)).expect("initiator config");
        initiator.initiate(now, peer);
        let mut s = Self {
            now,
            responder,
            initiator,
            to_responder: VecDeque::new(),
            history: Vec::new(),
        };
        s.pump();
        s
    }

    /// Drains both endpoints: the initiator's transmits are queued for the fuzzer to decide on,
    /// the responder's go to the initiator (replies to fuzzer datagrams from other addresses
    /// are dropped by it). Events are drained and ignored.
    fn pump(&mut self) {
        for _ in 0..8 {
            let mut sent = 0usize;
            while let Some(t) = self.responder.poll_transmit() {
                sent += 1;
                assert!(sent < 256, "the responder keeps transmitting");
                if t.remote.ip() == IpAddr::V4(INITIATOR) {
                    self.initiator
                        .handle(self.now, t.remote, t.local, &t.payload);
                }
            }
            while self.responder.poll_event().is_some() {}
            while self.initiator.poll_event().is_some() {}
            let mut queued = false;
            while let Some(t) = self.initiator.poll_transmit() {
                queued = true;
                if self.history.len() < 64 {
                    self.history.push(t.clone());
                }
                self.to_responder.push_back(t);
            }
            if !queued {
                break;
            }
            assert!(self.to_responder.len() < 1024, "unbounded honest traffic");
        }
    }

    fn deliver(&mut self, t: &Transmit) {
        self.responder
            .handle(self.now, t.remote, t.local, &t.payload);
    }

    fn check(&self) {
        let sas = self.responder.ike_sa_count();
        // The fuzzer cannot answer a COOKIE, so its IKE_SA_INITs stop making state at the
        // threshold. Beyond that only the honest initiator, which does answer COOKIEs: its IKE
        // SA, the one it is rekeying to, the old one until its Delete, and one replay of its
        // (possibly cookie-bearing) IKE_SA_INIT after the first left the half-open table.
        assert!(
            sas <= COOKIE_THRESHOLD + 4,
            "{sas} IKE SAs held (cookie threshold {COOKIE_THRESHOLD})"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut rest)) = data.split_first() else {
        return;
    };
    let mut sim = Sim::new(u64::from(seed));
    for _ in 0..MAX_STEPS {
        let Some((&op, tail)) = rest.split_first() else {
            break;
        };
        rest = tail;
        match op % 8 {
            // a raw datagram: [source/port][len] bytes
            0 | 1 => {
                let [sel, len, tail @ ..] = rest else { break };
                let n = usize::from(*len).min(tail.len());
                let (dgram, tail) = tail.split_at(n);
                rest = tail;
                let src = SOURCES[usize::from(*sel & 3)];
                let natt = sel & 4 != 0;
                let sport = if sel & 8 != 0 {
                    500
                } else {
                    40000 + u16::from(*sel)
                };
                let local = SocketAddr::new(RESPONDER.into(), if natt { 4500 } else { 500 });
                let remote = SocketAddr::new(src.into(), if natt { 4500 } else { sport });
                sim.responder.handle(sim.now, local, remote, dgram);
            }
            // the next honest datagram, as sent
            2 | 3 => {
                if let Some(t) = sim.to_responder.pop_front() {
                    sim.deliver(&t);
                }
            }
            // the next honest datagram with one octet changed: [pos][xor]
            4 => {
                let [pos, xor, tail @ ..] = rest else { break };
                rest = tail;
                if let Some(mut t) = sim.to_responder.pop_front() {
                    if !t.payload.is_empty() {
                        let i = usize::from(*pos) % t.payload.len();
                        t.payload[i] ^= *xor;
                    }
                    sim.deliver(&t);
                }
            }
            // lose the next honest datagram
            5 => {
                sim.to_responder.pop_front();
            }
            // replay an older honest datagram: [index]
            6 => {
                let [i, tail @ ..] = rest else { break };
                rest = tail;
                if !sim.history.is_empty() {
                    let t = sim.history[usize::from(*i) % sim.history.len()].clone();
                    sim.deliver(&t);
                }
            }
            // time passes: [seconds]; both endpoints' timers run
            _ => {
                let [secs, tail @ ..] = rest else { break };
                rest = tail;
                sim.now += Duration::from_millis(u64::from(*secs) * 500);
                sim.responder.handle_timeout(sim.now);
                sim.initiator.handle_timeout(sim.now);
            }
        }
        sim.pump();
        sim.check();
    }
});
