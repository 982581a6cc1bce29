//! Exactly one in-memory handshake (PSK, one CHILD SA) with seeded RNGs, for counting
//! instructions under callgrind: unlike a time, the count does not move with machine load.
//! `agent/ike/benches/callgrind.sh` builds and runs it.
//!
//! Usage: `handshake_once [x25519|modp2048]` (default x25519).

#[path = "../benches/support/sim.rs"]
mod sim;

use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let group = std::env::args().nth(1);
    let ike = match group.as_deref() {
        None | Some("x25519") => sim::IKE_X25519,
        Some("modp2048") => sim::IKE_MODP2048,
        Some(other) => {
            eprintln!("unknown group {other:?}: use x25519 or modp2048");
            return ExitCode::FAILURE;
        }
    };
    match sim::Pair::new(ike).and_then(|mut p| p.handshake(Instant::now())) {
        Ok(sent) => {
            println!("handshake complete ({ike}): {sent} datagrams");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("handshake failed: {e}");
            ExitCode::FAILURE
        }
    }
}
