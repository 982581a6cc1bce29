//! Which routes a gateway needs for its tunnels, computed without I/O: one route per remote
//! subnet in Strait's own routing table, with a source address from the local subnets that the
//! node owns (so the node's own traffic is sent from inside the tunnel's selectors and matches
//! its policies, as strongSwan's table-220 routes do), and an MTU that fits through ESP.
//!
//! `routing.rs` resolves each route's next hop (the way to the peer) and applies them.

use std::net::IpAddr;

use strait_ike::codec::TsRange;
use strait_ike::crypto::alg::{Encr, Integ};
use strait_xfrm::{EspPath, Family, Integrity, Mode, Prefix, Transform};

use super::objects::kernel_prefix;

/// Strait's routing table (0x5A00: the reqid range's prefix; strongSwan uses 220).
pub const ROUTE_TABLE: u32 = 0x5A00;
/// The priority of the rule that sends every lookup through [`ROUTE_TABLE`] first (before the
/// main table at 32766; strongSwan's rule is at 220).
pub const RULE_PRIORITY: u32 = 0x5A00;
/// The routing protocol our routes carry (`ip route ... proto 90`): how a sweep tells them
/// from anyone else's.
pub const ROUTE_PROTOCOL: u8 = 0x5A;

/// A route the kernel should hold in [`ROUTE_TABLE`] for one remote subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WantedRoute {
    /// The remote subnet.
    pub dst: Prefix,
    /// Towards this peer (the next hop is the kernel's way to it).
    pub peer: IpAddr,
    /// The preferred source: a node address inside the local subnets, if it has one.
    pub src: Option<IpAddr>,
    /// The route MTU, when known.
    pub mtu: Option<u32>,
}

/// The kernel transform of a negotiated ESP algorithm pair, for MTU arithmetic.
pub fn transform_of(encr: Encr, integ: Option<Integ>) -> Option<Transform> {
    let bits = match encr {
        Encr::AesGcm16_128 | Encr::AesCbc128 => 128,
        Encr::AesGcm16_256 | Encr::AesCbc256 => 256,
        _ => return None,
    };
    if encr.is_aead() {
        return Some(Transform::AesGcm16 { key_bits: bits });
    }
    let integrity = match integ? {
        Integ::HmacSha256_128 => Integrity::HmacSha256,
        Integ::HmacSha384_192 => Integrity::HmacSha384,
        Integ::HmacSha512_256 => Integrity::HmacSha512,
        _ => return None,
    };
    Some(Transform::AesCbc {
        key_bits: bits,
        integrity,
    })
}

/// The route MTU for traffic of family `inner` through a tunnel whose outer packets leave on a
/// link of `link_mtu`: `spec.mtu` when set, else the largest inner packet that fits through ESP
/// with the negotiated transform (`EspPath`), else none (the kernel's own PMTU handling).
pub fn route_mtu(
    spec_mtu: Option<u32>,
    transform: Option<Transform>,
    outer: Family,
    inner: Family,
    nat_t: bool,
    link_mtu: u32,
) -> Option<u32> {
    if let Some(m) = spec_mtu {
        return Some(m);
    }
    let path = EspPath {
        transform: transform?,
        mode: Mode::Tunnel,
        outer,
        inner,
        nat_t,
    };
    path.max_inner_mtu(link_mtu)
}

/// The first of the node's addresses inside one of `local` of `family`: the source of the
/// node's own traffic to the remote subnet, so that it matches the tunnel's policies.
pub fn source_for(family: Family, local: &[TsRange], node: &[IpAddr]) -> Option<IpAddr> {
    let nets: Vec<Prefix> = local
        .iter()
        .filter_map(kernel_prefix)
        .filter(|p| p.family() == family)
        .collect();
    node.iter()
        .copied()
        .filter(|a| Family::of(a) == family && usable_source(a))
        .find(|a| nets.iter().any(|n| contains(n, a)))
}

/// A loopback or unspecified address is never a usable source toward another site.
fn usable_source(a: &IpAddr) -> bool {
    !a.is_loopback() && !a.is_unspecified()
}

/// Whether `net` holds `a`.
pub fn contains(net: &Prefix, a: &IpAddr) -> bool {
    match Prefix::new(*a, net.len()) {
        Ok(p) => p.addr() == net.addr() && p.family() == net.family(),
        Err(_) => false,
    }
}

/// The routes of one tunnel: one per remote subnet (prefixes only; a range that is no prefix
/// has no route), towards `peer`.
pub fn tunnel_routes(
    remote: &[TsRange],
    local: &[TsRange],
    node: &[IpAddr],
    peer: IpAddr,
    mtu: impl Fn(Family) -> Option<u32>,
) -> Vec<WantedRoute> {
    let mut out: Vec<WantedRoute> = Vec::new();
    for r in remote {
        let Some(dst) = kernel_prefix(r) else {
            continue;
        };
        if out.iter().any(|w| w.dst == dst) {
            continue;
        }
        let family = dst.family();
        out.push(WantedRoute {
            dst,
            peer,
            src: source_for(family, local, node),
            mtu: mtu(family),
        });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ts(s: &str) -> TsRange {
        let (a, l) = s.split_once('/').unwrap();
        TsRange::subnet(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_source_is_a_node_address_inside_the_local_subnets() {
        let local = [ts("10.244.0.0/16"), ts("fd00:1::/64")];
        let node = [
            ip("127.0.0.1"),
            ip("192.0.2.1"),
            ip("10.244.3.1"),
            ip("fd00:1::7"),
        ];
        assert_eq!(
            source_for(Family::V4, &local, &node),
            Some(ip("10.244.3.1"))
        );
        assert_eq!(source_for(Family::V6, &local, &node), Some(ip("fd00:1::7")));
        // the node owns nothing inside: no source (forwarded traffic still matches)
        assert_eq!(source_for(Family::V4, &[ts("10.9.0.0/16")], &node), None);
        // loopback never
        assert_eq!(source_for(Family::V4, &[ts("127.0.0.0/8")], &node), None);
    }

    #[test]
    fn mtu_from_spec_or_from_the_transform() {
        let gcm = transform_of(Encr::AesGcm16_256, None);
        assert_eq!(gcm, Some(Transform::AesGcm16 { key_bits: 256 }));
        // spec.mtu wins
        assert_eq!(
            route_mtu(Some(1400), gcm, Family::V4, Family::V4, false, 1500),
            Some(1400)
        );
        // AES-GCM-16 in tunnel mode over IPv4, 1500: 20 outer + 8 ESP + 8 IV + 16 ICV leave
        // 1448 (a multiple of GCM's 4-byte padding unit), less the 2-byte trailer -> 1446
        assert_eq!(
            route_mtu(None, gcm, Family::V4, Family::V4, false, 1500),
            Some(1446)
        );
        // ESP in UDP takes 8 more
        assert_eq!(
            route_mtu(None, gcm, Family::V4, Family::V4, true, 1500),
            Some(1438)
        );
        let cbc = transform_of(Encr::AesCbc256, Some(Integ::HmacSha256_128));
        assert!(route_mtu(None, cbc, Family::V4, Family::V4, false, 1500).unwrap() < 1446);
        // not negotiated yet and no spec.mtu: leave it to the kernel
        assert_eq!(
            route_mtu(None, None, Family::V4, Family::V4, false, 1500),
            None
        );
    }

    #[test]
    fn one_route_per_remote_subnet() {
        let routes = tunnel_routes(
            &[
                ts("203.0.113.0/24"),
                ts("fd00:2::/64"),
                ts("203.0.113.0/24"),
            ],
            &[ts("198.51.100.0/24")],
            &[ip("198.51.100.1")],
            ip("192.0.2.2"),
            |f| (f == Family::V4).then_some(1438),
        );
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].dst.to_string(), "203.0.113.0/24");
        assert_eq!(routes[0].src, Some(ip("198.51.100.1")));
        assert_eq!(routes[0].mtu, Some(1438));
        assert_eq!(routes[1].dst.to_string(), "fd00:2::/64");
        assert_eq!(routes[1].src, None);
        assert_eq!(routes[1].mtu, None);
    }
}
