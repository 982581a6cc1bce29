//! `Endpoint::resume` fed arbitrary saved state. The input is the body of the saved form; the
//! target adds the magic, the version and a correct checksum, so the parser itself is reached
//! (corruption alone is caught by the checksum, which the unit tests cover).
//!
//! Checked: nothing panics; a refused state leaves no IKE SA and no event behind; an accepted
//! one can be saved again and that saved state is accepted by another endpoint with the same
//! number of SAs; the resumed SAs then survive timers and a datagram without panicking.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use strait_ike::codec::TsRange;
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::proposal::{parse_esp_list, parse_ike_list};
use strait_ike::{Endpoint, EndpointConfig, Identity, PeerConfig};

/// The saved form's magic and version (`strait_ike::resume`).
const HEADER: &[u8] = b"STRAITSA\x01";
const WALL_CLOCK: u64 = 1_800_000_000;

fn config() -> PeerConfig {
    let addr = |s: &str| s.parse::<SocketAddr>().expect("address");
    let net = |a: [u8; 4]| TsRange::subnet(a.into(), 16).expect("subnet");
    PeerConfig::psk(
        addr("192.0.2.1:500"),
        Identity::Fqdn("a.example.com".into()),
        addr("198.51.100.2:500"),
        Identity::Fqdn("b.example.com".into()),
        b"correct horse battery staple",
    )
    .with_proposals(
        parse_ike_list(&["aes256gcm16-prfsha384-x25519"]).expect("IKE proposal"),
        parse_esp_list(&["aes256gcm16-x25519"]).expect("ESP proposal"),
    )
    .with_ts(vec![net([10, 1, 0, 0])], vec![net([10, 2, 0, 0])])
}

fn endpoint(now: Instant) -> (Endpoint, strait_ike::PeerId) {
    let mut e = Endpoint::new(
        EndpointConfig::default(),
        Box::new(DeterministicRng::new(1)),
    );
    e.set_wall_clock(now, WALL_CLOCK);
    let peer = e.add_peer(config()).expect("config");
    (e, peer)
}

fn drain(e: &mut Endpoint) {
    while e.poll_event().is_some() {}
    while e.poll_transmit().is_some() {}
}

fuzz_target!(|body: &[u8]| {
    let mut saved = HEADER.to_vec();
    saved.extend_from_slice(body);
    let sum = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &saved);
    saved.extend_from_slice(sum.as_ref());

    let now = Instant::now();
    let (mut e, peer) = endpoint(now);
    let Ok(resumed) = e.resume(now, peer, &saved) else {
        assert_eq!(e.ike_sa_count(), 0, "a refused state left an SA");
        assert!(e.poll_event().is_none(), "a refused state left an event");
        return;
    };
    assert_eq!(e.ike_sa_count(), resumed.ike_sas);
    drain(&mut e);

    // what was accepted saves again, and that is accepted elsewhere
    let again = e.save(now, peer).expect("save");
    let (mut f, fpeer) = endpoint(now);
    let r = f
        .resume(now, fpeer, again.as_bytes())
        .expect("a re-saved state was refused");
    assert_eq!(r.ike_sas, again.ike_sas());

    // and the SAs live on: timers fire, a datagram arrives, nothing panics
    for step in [1u64, 10, 100, 1000] {
        let t = now + Duration::from_secs(step);
        e.handle_timeout(t);
        drain(&mut e);
    }
    let (local, remote) = (
        "192.0.2.1:500".parse().expect("a"),
        "198.51.100.2:500".parse().expect("b"),
    );
    e.handle(now + Duration::from_secs(1001), local, remote, body);
    drain(&mut e);
});
