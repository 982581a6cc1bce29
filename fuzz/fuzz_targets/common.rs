//! What the `responder` and `initiator` targets share: one PSK tunnel between two honest
//! endpoints on a simulated clock.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use strait_ike::codec::TsRange;
use strait_ike::crypto::keys::SecretBytes;
use strait_ike::proposal::{parse_esp_list, parse_ike_list};
use strait_ike::{AuthConfig, EndpointConfig, Identity, Lifetime, PeerConfig, Role};

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
        local_id: Identity::Fqdn(lid.into()),
        remote_id: Identity::Fqdn(rid.into()),
        auth: AuthConfig::Psk(SecretBytes::from_slice(b"fuzz-psk")),
        ike_proposals: parse_ike_list(&["aes128gcm16-prfsha256-x25519", "aes128-sha256-ecp256"])
            .expect("IKE proposals"),
        esp_proposals: parse_esp_list(&["aes128gcm16-x25519", "aes128gcm16"])
            .expect("ESP proposals"),
        // a short CHILD lifetime so that time steps reach rekeys; IKE rekeys too
        ike_lifetime: Lifetime::from_rekey(Duration::from_secs(600)),
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
