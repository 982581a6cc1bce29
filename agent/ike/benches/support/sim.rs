//! One IKE_SA_INIT + IKE_AUTH between two in-memory [`Endpoint`]s, shared by the handshake
//! benchmark and the `handshake_once` example (which callgrind counts).
//!
//! Deliberately smaller than `tests/util`: no loss, NAT or timers, so what is measured is the
//! protocol and crypto work and not the simulator. Both RNGs are seeded, so every run takes
//! the same path through the code.

use std::net::SocketAddr;
use std::time::Instant;

use strait_ike::codec::TsRange;
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::proposal::{parse_esp_list, parse_ike_list};
use strait_ike::{Endpoint, EndpointConfig, Event, Identity, PeerConfig, PeerId};

/// The IKE proposal with X25519 (what Strait proposes by default).
pub const IKE_X25519: &str = "aes256gcm16-prfsha384-x25519";
/// The same with the 2048-bit MODP group, for peers without ECC.
pub const IKE_MODP2048: &str = "aes256gcm16-prfsha384-modp2048";

/// Both ends of the tunnel, ready for [`Pair::handshake`].
#[derive(Debug)]
pub struct Pair {
    a: Endpoint,
    b: Endpoint,
    a_peer: PeerId,
}

fn subnet(addr: [u8; 4], prefix: u8) -> Result<TsRange, String> {
    TsRange::subnet(addr.into(), prefix).ok_or_else(|| "bad subnet".to_string())
}

impl Pair {
    /// Initiator A and responder B with a PSK and one IKE proposal (`ike`, e.g. [`IKE_X25519`]).
    pub fn new(ike: &str) -> Result<Self, String> {
        let a_addr = SocketAddr::from(([192, 0, 2, 1], 500));
        let b_addr = SocketAddr::from(([198, 51, 100, 2], 500));
        let a_cfg = PeerConfig::psk(
            a_addr,
            Identity::Fqdn("a.example.com".into()),
            b_addr,
            Identity::Fqdn("b.example.com".into()),
            b"correct horse battery staple",
        )
        .with_proposals(
            parse_ike_list(&[ike]).map_err(|e| e.to_string())?,
            parse_esp_list(&["aes256gcm16"]).map_err(|e| e.to_string())?,
        )
        .with_ts(
            vec![subnet([10, 1, 0, 0], 16)?],
            vec![subnet([10, 2, 0, 0], 16)?],
        );
        let b_cfg = a_cfg.mirrored();
        let mut a = Endpoint::new(
            EndpointConfig::default(),
            Box::new(DeterministicRng::new(1)),
        );
        let mut b = Endpoint::new(
            EndpointConfig::default(),
            Box::new(DeterministicRng::new(2)),
        );
        let a_peer = a.add_peer(a_cfg).map_err(|e| e.to_string())?;
        b.add_peer(b_cfg).map_err(|e| e.to_string())?;
        Ok(Self { a, b, a_peer })
    }

    /// Runs the handshake at one instant until both sides have installed the CHILD SA;
    /// returns the number of datagrams exchanged (4 when all goes well).
    // Kept out of line so callgrind can report its inclusive cost apart from the setup.
    #[inline(never)]
    pub fn handshake(&mut self, now: Instant) -> Result<usize, String> {
        self.a.initiate(now, self.a_peer);
        let (mut sent, mut installed) = (0, [false; 2]);
        // Each round moves every queued datagram across; a handshake needs two.
        for _ in 0..8 {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                self.b.handle(now, t.remote, t.local, &t.payload);
                (moved, sent) = (true, sent + 1);
            }
            while let Some(t) = self.b.poll_transmit() {
                self.a.handle(now, t.remote, t.local, &t.payload);
                (moved, sent) = (true, sent + 1);
            }
            for (ep, done) in [&mut self.a, &mut self.b].into_iter().zip(&mut installed) {
                while let Some(e) = ep.poll_event() {
                    match e {
                        Event::ChildSaInstall(_) => *done = true,
                        Event::IkeSaDown { reason, .. } => {
                            return Err(format!("IKE SA went down: {reason:?}"));
                        }
                        _ => {}
                    }
                }
            }
            if installed == [true; 2] {
                return Ok(sent);
            }
            if !moved {
                break;
            }
        }
        Err(format!("no CHILD SA after {sent} datagrams"))
    }
}
