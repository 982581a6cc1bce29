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

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::{Endpoint, PeerId};

#[path = "common.rs"]
mod common;
use common::{Honest, INITIATOR, RESPONDER, config, endpoint_config};

const MAX_STEPS: usize = 64;
/// Starts the fuzzer may ask for: each is an IKE SA the initiator may hold a while.
const MAX_STARTS: usize = 4;

fn new(seed: u8) -> (Honest, PeerId) {
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
    (Honest::new(now, initiator, responder, RESPONDER), peer)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut rest)) = data.split_first() else {
        return;
    };
    let (mut sim, peer) = new(seed);
    let mut starts = 1;
    for _ in 0..MAX_STEPS {
        let Some((&op, tail)) = rest.split_first() else {
            break;
        };
        rest = tail;
        let left = match op % 9 {
            // a raw datagram from the responder's address: [port][len] bytes
            0 | 1 => {
                let [sel, len, tail @ ..] = rest else { break };
                let n = usize::from(*len).min(tail.len());
                let (dgram, tail) = tail.split_at(n);
                let port = if sel & 1 != 0 { 4500 } else { 500 };
                let local = SocketAddr::new(INITIATOR.into(), port);
                let remote = SocketAddr::new(RESPONDER.into(), port);
                sim.target.handle(sim.now, local, remote, dgram);
                Some(tail)
            }
            // start again, or traffic for the tunnel
            7 => {
                let [what, tail @ ..] = rest else { break };
                if what & 1 == 0 && starts < MAX_STARTS {
                    starts += 1;
                    sim.target.initiate(sim.now, peer);
                } else {
                    sim.target.acquire(sim.now, peer);
                }
                Some(tail)
            }
            // the honest responder's next datagram, as sent, changed or lost; a replay; time
            code => sim.honest_op(code, rest),
        };
        let Some(left) = left else { break };
        rest = left;
        sim.pump();
        // each start, the one it is rekeying to, the old one until its Delete
        let sas = sim.target.ike_sa_count();
        assert!(
            sas <= 3 * starts + 2,
            "{sas} IKE SAs held after {starts} starts"
        );
    }
});
