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

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use strait_ike::Endpoint;
use strait_ike::crypto::rng::DeterministicRng;

#[path = "common.rs"]
mod common;
use common::{COOKIE_THRESHOLD, Honest, INITIATOR, RESPONDER, config};

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

fn new(seed: u64) -> Honest {
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
    Honest::new(now, responder, initiator, INITIATOR)
}

fn check(sim: &Honest) {
    let sas = sim.target.ike_sa_count();
    // The fuzzer cannot answer a COOKIE, so its IKE_SA_INITs stop making state at the
    // threshold. Beyond that only the honest initiator, which does answer COOKIEs: its IKE
    // SA, the one it is rekeying to, the old one until its Delete, and one replay of its
    // (possibly cookie-bearing) IKE_SA_INIT after the first left the half-open table.
    assert!(
        sas <= COOKIE_THRESHOLD + 4,
        "{sas} IKE SAs held (cookie threshold {COOKIE_THRESHOLD})"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut rest)) = data.split_first() else {
        return;
    };
    let mut sim = new(u64::from(seed));
    for _ in 0..MAX_STEPS {
        let Some((&op, tail)) = rest.split_first() else {
            break;
        };
        rest = tail;
        let left = match op % 8 {
            // a raw datagram: [source/port][len] bytes
            0 | 1 => {
                let [sel, len, tail @ ..] = rest else { break };
                let n = usize::from(*len).min(tail.len());
                let (dgram, tail) = tail.split_at(n);
                let src = SOURCES[usize::from(*sel & 3)];
                let natt = sel & 4 != 0;
                let sport = if sel & 8 != 0 {
                    500
                } else {
                    40000 + u16::from(*sel)
                };
                let local = SocketAddr::new(RESPONDER.into(), if natt { 4500 } else { 500 });
                let remote = SocketAddr::new(src.into(), if natt { 4500 } else { sport });
                sim.target.handle(sim.now, local, remote, dgram);
                Some(tail)
            }
            // the honest initiator's next datagram, as sent, changed or lost; a replay; time
            code => sim.honest_op(code, rest),
        };
        let Some(left) = left else { break };
        rest = left;
        sim.pump();
        check(&sim);
    }
});
