//! An initiator `Endpoint` whose every answer the fuzzer controls. An honest responder (same
//! PSK) answers it, fragmenting its messages to a small size half the time (RFC 7383), and the
//! fuzzer decides what happens to each of the responder's datagrams (deliver, drop, replay an
//! older one, change one octet) and adds raw datagrams of its own from the responder's
//! address, on ports 500 and 4500; time passes at its word, and it can make the initiator
//! start again or see traffic (acquire). So the initiator's states (IKE_SA_INIT sent,
//! IKE_AUTH sent, established, rekeying, closing) and its fragment reassembly meet what no
//! honest peer sends.
//!
//! Checked: nothing panics; memory stays bounded: the initiator holds at most a few IKE SAs
//! (one per start the fuzzer asked for, each retired by its timers) and transmits per step are
//! bounded.

#![no_main]

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::{Endpoint, PeerId, Transmit};

#[path = "common.rs"]
mod common;
use common::{INITIATOR, RESPONDER, config, endpoint_config};

const MAX_STEPS: usize = 64;
/// Starts the fuzzer may ask for: each is an IKE SA the initiator may hold a while.
const MAX_STARTS: usize = 4;

struct Sim {
    now: Instant,
    initiator: Endpoint,
    peer: PeerId,
    responder: Endpoint,
    /// The honest responder's datagrams not yet delivered.
    to_initiator: VecDeque<Transmit>,
    /// Every honest datagram seen, for replays.
    history: Vec<Transmit>,
    starts: usize,
}

impl Sim {
    fn new(seed: u8) -> Self {
        let now = Instant::now();
        // odd seeds: the responder fragments everything it protects
        let small = (seed & 1 == 1).then_some(300);
        let mut initiator = Endpoint::new(
            endpoint_config(None),
            Box::new(DeterministicRng::new(u64::from(seed))),
        );
        let mut responder = Endpoint::new(
            endpoint_config(small),
            Box::new(DeterministicRng::new(u64::from(seed) ^ 0xa5a5)),
        );
        initiator.set_wall_clock(now, 1_900_000_000);
        responder.set_wall_clock(now, 1_900_000_000);
        responder.add_peer(config(false)).expect("responder config");
        let peer = initiator.add_peer(config(true)).expect("initiator config");
        initiator.initiate(now, peer);
        let mut s = Self {
            now,
            initiator,
            peer,
            responder,
            to_initiator: VecDeque::new(),
            history: Vec::new(),
            starts: 1,
        };
        s.pump();
        s
    }

    /// Drains both endpoints: the initiator's transmits go to the responder, the responder's
    /// are queued for the fuzzer to decide on. Events are drained and ignored.
    fn pump(&mut self) {
        for _ in 0..8 {
            let mut sent = 0usize;
            while let Some(t) = self.initiator.poll_transmit() {
                sent += 1;
                assert!(sent < 256, "the initiator keeps transmitting");
                if t.remote.ip() == IpAddr::V4(RESPONDER) {
                    self.responder
                        .handle(self.now, t.remote, t.local, &t.payload);
                }
            }
            while self.initiator.poll_event().is_some() {}
            while self.responder.poll_event().is_some() {}
            let mut queued = false;
            while let Some(t) = self.responder.poll_transmit() {
                queued = true;
                if self.history.len() < 64 {
                    self.history.push(t.clone());
                }
                self.to_initiator.push_back(t);
            }
            if !queued {
                break;
            }
            assert!(self.to_initiator.len() < 1024, "unbounded honest traffic");
        }
    }

    fn deliver(&mut self, t: &Transmit) {
        self.initiator
            .handle(self.now, t.remote, t.local, &t.payload);
    }

    fn check(&self) {
        let sas = self.initiator.ike_sa_count();
        // each start, the one it is rekeying to, the old one until its Delete
        assert!(
            sas <= 3 * self.starts + 2,
            "{sas} IKE SAs held after {} starts",
            self.starts
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut rest)) = data.split_first() else {
        return;
    };
    let mut sim = Sim::new(seed);
    for _ in 0..MAX_STEPS {
        let Some((&op, tail)) = rest.split_first() else {
            break;
        };
        rest = tail;
        match op % 9 {
            // a raw datagram from the responder's address: [port][len] bytes
            0 | 1 => {
                let [sel, len, tail @ ..] = rest else { break };
                let n = usize::from(*len).min(tail.len());
                let (dgram, tail) = tail.split_at(n);
                rest = tail;
                let natt = sel & 1 != 0;
                let port = if natt { 4500 } else { 500 };
                let local = SocketAddr::new(INITIATOR.into(), port);
                let remote = SocketAddr::new(RESPONDER.into(), port);
                sim.initiator.handle(sim.now, local, remote, dgram);
            }
            // the next honest datagram, as sent
            2 | 3 => {
                if let Some(t) = sim.to_initiator.pop_front() {
                    sim.deliver(&t);
                }
            }
            // the next honest datagram with one octet changed: [pos][xor]
            4 => {
                let [pos, xor, tail @ ..] = rest else { break };
                rest = tail;
                if let Some(mut t) = sim.to_initiator.pop_front() {
                    if !t.payload.is_empty() {
                        let i = usize::from(*pos) % t.payload.len();
                        t.payload[i] ^= *xor;
                    }
                    sim.deliver(&t);
                }
            }
            // lose the next honest datagram
            5 => {
                sim.to_initiator.pop_front();
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
            // start again, or traffic for the tunnel
            7 => {
                let [what, tail @ ..] = rest else { break };
                rest = tail;
                if what & 1 == 0 && sim.starts < MAX_STARTS {
                    sim.starts += 1;
                    sim.initiator.initiate(sim.now, sim.peer);
                } else {
                    sim.initiator.acquire(sim.now, sim.peer);
                }
            }
            // time passes: [seconds]; both endpoints' timers run
            _ => {
                let [secs, tail @ ..] = rest else { break };
                rest = tail;
                sim.now += Duration::from_millis(u64::from(*secs) * 500);
                sim.initiator.handle_timeout(sim.now);
                sim.responder.handle_timeout(sim.now);
            }
        }
        sim.pump();
        sim.check();
    }
});
