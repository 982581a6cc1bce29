//! Review S-1: what one source can make a responder hold before it authenticates. A cookie
//! only proves that the source receives (RFC 7296 §2.6), so a real host answering cookies
//! could create half-open IKE SAs at line rate, each a key exchange and 30 s of state, and fill
//! each with fragments. `block_threshold_per_ip` (strongSwan's `block_threshold`) caps the
//! first, `preauth_fragment_bytes` the second.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod util;

use std::time::Duration;

use strait_ike::codec::{ExchangeType, Header, PayloadType};
use strait_ike::{EndpointConfig, Identity, PeerId};
use util::{Fate, Pair, Side, config_a, mirror};

/// A with `n` tunnels to B from one address (IKE_AUTH requests dropped, so every IKE SA stays
/// half-open at B), and B accepting any identity from that address.
fn many_from_one_address(n: usize, eb: EndpointConfig) -> (Pair, Vec<PeerId>) {
    let a = config_a();
    let mut b = mirror(&a);
    b.remote_id = Identity::Any;
    let mut p = Pair::with_endpoint_config(a.clone(), b, EndpointConfig::default(), eb);
    p.filter = Box::new(|from, t, _| {
        let ike = if t.non_esp_marker {
            &t.payload[4..]
        } else {
            &t.payload[..]
        };
        match Header::peek(ike) {
            Ok(w) if from == Side::A && w.header.exchange_type == ExchangeType::IKE_AUTH => {
                Fate::Drop
            }
            _ => Fate::Deliver,
        }
    });
    let mut peers = vec![p.a_peer];
    for i in 1..n {
        let mut more = a.clone();
        more.local_id = Identity::Fqdn(format!("a{i}.example.com"));
        peers.push(p.a.add_peer(more).unwrap());
    }
    (p, peers)
}

#[test]
fn one_address_holds_at_most_block_threshold_half_open_sas() {
    let (mut p, peers) = many_from_one_address(8, EndpointConfig::default());
    for peer in &peers {
        let now = p.now;
        p.a.initiate(now, *peer);
        p.run_for(Duration::from_millis(50));
    }
    p.run_for(Duration::from_secs(2));
    // three without a cookie, two more with one (cookie_threshold_per_ip 3), then nothing
    assert_eq!(p.b.ike_sa_count(), 5, "B's half-open SAs from one address");
    let s = p.b.stats();
    assert!(s.init_blocked >= 3, "{s:?}");
    assert!(s.cookies_sent >= 2, "{s:?}");
    // once they time out (30 s half-open timeout), the address is welcome again
    p.run_for(Duration::from_secs(40));
    assert_eq!(
        p.b.ike_sa_count(),
        0,
        "B's half-open SAs after their timeout"
    );
    let blocked = p.b.stats().init_blocked;
    let now = p.now;
    p.a.initiate(now, peers[0]);
    p.run_for(Duration::from_millis(50));
    assert_eq!(p.b.ike_sa_count(), 1);
    assert_eq!(p.b.stats().init_blocked, blocked);
}

#[test]
fn a_global_half_open_limit_drops_what_is_over_it() {
    let eb = EndpointConfig {
        half_open_limit: Some(2),
        ..EndpointConfig::default()
    };
    let (mut p, peers) = many_from_one_address(4, eb);
    for peer in &peers {
        let now = p.now;
        p.a.initiate(now, *peer);
        p.run_for(Duration::from_millis(50));
    }
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.b.ike_sa_count(), 2);
    assert!(p.b.stats().init_blocked >= 2);
}

/// Whether a transmit is an SKF fragment of IKE_AUTH.
fn is_auth_fragment(t: &strait_ike::Transmit) -> bool {
    let ike = if t.non_esp_marker {
        &t.payload[4..]
    } else {
        &t.payload[..]
    };
    Header::peek(ike).is_ok_and(|w| {
        w.header.exchange_type == ExchangeType::IKE_AUTH && w.next_payload == PayloadType::SKF
    })
}

#[test]
fn pre_authentication_fragments_are_bounded() {
    // A fragments its IKE_AUTH (PSK, ~300 octets) into 200-octet datagrams. B collects at
    // most 100 octets of it before authentication: the message never completes there.
    let small = EndpointConfig {
        fragment_size: 200,
        ..EndpointConfig::default()
    };
    let tight = EndpointConfig {
        preauth_fragment_bytes: 100,
        ..EndpointConfig::default()
    };
    let a = config_a();
    let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), small.clone(), tight);
    p.initiate();
    p.run_for(Duration::from_secs(3));
    assert!(
        p.log
            .iter()
            .any(|s| s.from == Side::A && is_auth_fragment(&s.t)),
        "IKE_AUTH was not fragmented"
    );
    assert_eq!(
        Pair::ups(&p.ev_b),
        0,
        "B completed a message over its budget"
    );
    assert!(p.b.stats().unexpected > 0, "{:?}", p.b.stats());
    // the default budget (16 KiB) takes it
    let mut p = Pair::with_endpoint_config(a.clone(), mirror(&a), small, EndpointConfig::default());
    p.initiate();
    p.run_for(Duration::from_secs(3));
    assert_eq!(Pair::ups(&p.ev_b), 1);
}
