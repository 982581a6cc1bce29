//! What a node should hold to reach each tunnel's active gateway, computed without I/O from the
//! tunnels (remote subnets, `status.activeGateway`) and the Nodes (their internal addresses).
//!
//! - On the active gateway itself nothing is steered: its own agent routes the subnets into the
//!   tunnel (table [`crate::dataplane::routes::ROUTE_TABLE`]).
//! - Elsewhere each remote subnet gets a route in [`STEER_TABLE`] towards the gateway: over the
//!   VXLAN overlay (works across routed underlays) or directly via the gateway's node address
//!   (nodes on one segment).
//! - A subnet whose tunnel has no active gateway, or whose gateway has no usable address, gets
//!   an `unreachable` route: its traffic is refused here instead of leaving by the default route
//!   in clear.
//! - Traffic from a steered tunnel's local subnets to its remote subnets is exempt from the
//!   node's masquerade ([`Plan::exempt`]): a CNI that masquerades pod traffic leaving the pod
//!   network would otherwise give it the overlay device's address, outside the tunnel's
//!   policies on the gateway.
//!
//! The overlay needs no exchange of addresses between nodes: each node's overlay addresses and
//! MAC are derived from its internal IPv4 address, the way Submariner derives its VXLAN
//! addresses, so every node can compute the gateway's without asking it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use strait_xfrm::{Family, Prefix};

/// Strait's steering table (after the gateway's 0x5A00, so on a node that is becoming the
/// gateway the tunnel's own routes win).
pub const STEER_TABLE: u32 = 0x5A01;
/// The priority of the rule that sends lookups through [`STEER_TABLE`] (after the gateway's
/// rule, before `main` at 32766).
pub const STEER_RULE_PRIORITY: u32 = 0x5A01;
/// The overlay device's name.
pub const DEVICE: &str = "strait-vx";
/// Bytes a VXLAN header over IPv4 adds (outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The IPv6 overlay prefix; the node's IPv4 address fills the last 32 bits.
pub const OVERLAY6: Ipv6Addr = Ipv6Addr::new(0xfd5a, 0x5a00, 0, 0, 0, 0, 0, 0);
/// [`OVERLAY6`]'s length.
pub const OVERLAY6_LEN: u8 = 96;

/// How non-gateway nodes reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A VXLAN overlay to the gateway's internal address (any underlay that routes between
    /// nodes).
    Vxlan(Overlay),
    /// A route via the gateway's internal address (the nodes share a segment).
    Direct,
}

/// The VXLAN overlay's settings, the same on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlay {
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The UDP port (4789 is often taken by the CNI's own VXLAN).
    pub port: u16,
    /// The IPv4 overlay prefix; a node's overlay address is this prefix with the host bits of
    /// its internal address.
    pub cidr: Prefix,
}

impl Default for Overlay {
    fn default() -> Self {
        Self {
            vni: 0x5A00,
            port: 4803,
            // class E, as Submariner uses: never a real destination
            cidr: Prefix::new(IpAddr::V4(Ipv4Addr::new(240, 0, 0, 0)), 8)
                .unwrap_or_else(|_| Prefix::any(Family::V4)),
        }
    }
}

/// A node's addresses and MAC on the overlay, derived from its internal IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OverlayAddrs {
    /// The node's internal (underlay) address: the VXLAN tunnel endpoint.
    pub node: Ipv4Addr,
    /// Its IPv4 overlay address.
    pub v4: Ipv4Addr,
    /// Its IPv6 overlay address.
    pub v6: Ipv6Addr,
    /// The overlay device's MAC: locally administered, unicast, ending in the node address.
    pub mac: [u8; 6],
}

impl Overlay {
    /// The overlay addresses of the node whose internal address is `node`.
    pub fn addrs_of(&self, node: Ipv4Addr) -> OverlayAddrs {
        let len = u32::from(self.cidr.len().min(32));
        let host_mask = u32::MAX.checked_shr(len).unwrap_or(0);
        let net = match self.cidr.addr() {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(_) => 0,
        };
        let n = u32::from(node);
        let o = node.octets();
        OverlayAddrs {
            node,
            v4: Ipv4Addr::from((net & !host_mask) | (n & host_mask)),
            v6: Ipv6Addr::from(u128::from(OVERLAY6) | u128::from(n)),
            mac: [0x0a, 0x5a, o[0], o[1], o[2], o[3]],
        }
    }
}

/// One tunnel as the steering role sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelView {
    /// `namespace/name`, for messages and to order tunnels.
    pub key: String,
    /// `spec.local.subnets`, as written.
    pub local_subnets: Vec<String>,
    /// `spec.remote.subnets`, as written.
    pub remote_subnets: Vec<String>,
    /// `status.activeGateway`.
    pub gateway: Option<String>,
}

/// Where one remote subnet goes from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Through the overlay to this gateway.
    Overlay(OverlayAddrs),
    /// Via this gateway address on a shared segment.
    Direct(Ipv4Addr),
    /// Refused here (no gateway, or it cannot be reached).
    Unreachable,
}

/// Everything the node should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// This node's own overlay addresses (vxlan mode with a known internal address): the
    /// device exists on every node, so a gateway can receive.
    pub device: Option<OverlayAddrs>,
    /// Remote subnet → where it goes.
    pub routes: BTreeMap<Prefix, Target>,
    /// Per steered tunnel (by key): its local and remote subnets, whose traffic the node must
    /// not masquerade.
    pub exempt: BTreeMap<String, (Vec<Prefix>, Vec<Prefix>)>,
    /// What could not be steered as asked, one sentence each (logged, never secret).
    pub problems: Vec<String>,
}

impl Plan {
    /// The gateways the overlay must know (neighbour and forwarding entries).
    pub fn peers(&self) -> Vec<OverlayAddrs> {
        let mut v: Vec<OverlayAddrs> = self
            .routes
            .values()
            .filter_map(|t| match t {
                Target::Overlay(a) => Some(*a),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Computes the plan for node `me`. `addresses` maps node names to their internal IPv4
/// address (nodes without one are absent). Tunnels are taken in key order; a subnet another
/// tunnel already steers keeps the first one's target and is reported.
pub fn plan(
    me: &str,
    mode: Mode,
    tunnels: &[TunnelView],
    addresses: &BTreeMap<String, Ipv4Addr>,
) -> Plan {
    let mut out = Plan::default();
    let mine = addresses.get(me).copied();
    if let Mode::Vxlan(o) = mode {
        match mine {
            Some(a) => out.device = Some(o.addrs_of(a)),
            None => out.problems.push(format!(
                "node {me} has no internal IPv4 address: no VXLAN overlay here, remote subnets \
                 are refused on this node"
            )),
        }
    }
    let mut sorted: Vec<&TunnelView> = tunnels.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut owner: BTreeMap<Prefix, &str> = BTreeMap::new();
    for t in sorted {
        if t.gateway.as_deref() == Some(me) {
            // the gateway's own agent routes these into the tunnel; a subnet steered by
            // another tunnel's entry below still yields to that tunnel
            for s in &t.remote_subnets {
                if let Ok(p) = s.parse::<Prefix>() {
                    owner.entry(p).or_insert(&t.key);
                    out.routes.remove(&p);
                }
            }
            continue;
        }
        let target = target_for(t, me, mode, mine, addresses, &mut out.problems);
        let parsed =
            |v: &[String]| -> Vec<Prefix> { v.iter().filter_map(|s| s.parse().ok()).collect() };
        let (local, remote) = (parsed(&t.local_subnets), parsed(&t.remote_subnets));
        if !local.is_empty() && !remote.is_empty() {
            out.exempt.insert(t.key.clone(), (local, remote));
        }
        for s in &t.remote_subnets {
            let p: Prefix = match s.parse() {
                Ok(p) => p,
                Err(e) => {
                    out.problems
                        .push(format!("{}: remote subnet {s:?} skipped: {e}", t.key));
                    continue;
                }
            };
            if let Some(first) = owner.get(&p) {
                out.problems.push(format!(
                    "{}: remote subnet {p} is already steered for {first}",
                    t.key
                ));
                continue;
            }
            owner.insert(p, &t.key);
            out.routes.insert(p, target);
        }
    }
    out
}

fn target_for(
    t: &TunnelView,
    me: &str,
    mode: Mode,
    mine: Option<Ipv4Addr>,
    addresses: &BTreeMap<String, Ipv4Addr>,
    problems: &mut Vec<String>,
) -> Target {
    let Some(gw) = t.gateway.as_deref() else {
        return Target::Unreachable;
    };
    let Some(addr) = addresses.get(gw).copied() else {
        problems.push(format!(
            "{}: gateway {gw} has no internal IPv4 address; its subnets are refused on {me}",
            t.key
        ));
        return Target::Unreachable;
    };
    match mode {
        Mode::Vxlan(o) if mine.is_some() => Target::Overlay(o.addrs_of(addr)),
        Mode::Vxlan(_) => Target::Unreachable,
        Mode::Direct => Target::Direct(addr),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(key: &str, subnets: &[&str], gw: Option<&str>) -> TunnelView {
        TunnelView {
            key: key.into(),
            local_subnets: vec!["10.244.0.0/16".into(), "fd00:244::/56".into()],
            remote_subnets: subnets.iter().map(|s| (*s).to_owned()).collect(),
            gateway: gw.map(str::to_owned),
        }
    }

    fn nodes() -> BTreeMap<String, Ipv4Addr> {
        [
            ("a", Ipv4Addr::new(192, 0, 2, 1)),
            ("b", Ipv4Addr::new(192, 0, 2, 2)),
            ("c", Ipv4Addr::new(10, 7, 2, 3)),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_owned(), a))
        .collect()
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn overlay_addresses_follow_the_node_address() {
        let o = Overlay::default();
        let a = o.addrs_of(Ipv4Addr::new(192, 0, 2, 17));
        assert_eq!(a.v4, Ipv4Addr::new(240, 0, 2, 17));
        assert_eq!(a.v6, "fd5a:5a00::c000:211".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a.mac, [0x0a, 0x5a, 192, 0, 2, 17]);
        // unicast and locally administered
        assert_eq!(a.mac[0] & 1, 0);
        assert_eq!(a.mac[0] & 2, 2);
        // a /16 overlay keeps 16 host bits
        let o16 = Overlay {
            cidr: p("100.64.0.0/16"),
            ..o
        };
        assert_eq!(
            o16.addrs_of(Ipv4Addr::new(10, 1, 2, 3)).v4,
            Ipv4Addr::new(100, 64, 2, 3)
        );
    }

    #[test]
    fn non_gateway_nodes_steer_to_the_gateway_and_the_gateway_steers_nothing() {
        let o = Overlay::default();
        let tunnels = [t(
            "ns/x",
            &["198.51.100.0/24", "2001:db8:5::/64"],
            Some("a"),
        )];
        let on_b = plan("b", Mode::Vxlan(o), &tunnels, &nodes());
        let gw = o.addrs_of(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(on_b.device, Some(o.addrs_of(Ipv4Addr::new(192, 0, 2, 2))));
        assert_eq!(
            on_b.routes.get(&p("198.51.100.0/24")),
            Some(&Target::Overlay(gw))
        );
        assert_eq!(
            on_b.routes.get(&p("2001:db8:5::/64")),
            Some(&Target::Overlay(gw))
        );
        assert_eq!(on_b.peers(), vec![gw]);
        assert!(on_b.problems.is_empty(), "{:?}", on_b.problems);
        // the tunnel's traffic is exempt from b's masquerade, both families
        assert_eq!(
            on_b.exempt.get("ns/x"),
            Some(&(
                vec![p("10.244.0.0/16"), p("fd00:244::/56")],
                vec![p("198.51.100.0/24"), p("2001:db8:5::/64")]
            ))
        );

        let on_a = plan("a", Mode::Vxlan(o), &tunnels, &nodes());
        assert!(on_a.routes.is_empty());
        assert!(
            on_a.exempt.is_empty(),
            "the gateway's agent exempts its own"
        );
        assert!(on_a.device.is_some(), "the gateway receives on the overlay");

        let direct = plan("b", Mode::Direct, &tunnels, &nodes());
        assert_eq!(
            direct.routes.get(&p("198.51.100.0/24")),
            Some(&Target::Direct(Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(direct.device, None);
    }

    #[test]
    fn failover_moves_the_target_and_no_gateway_refuses_the_traffic() {
        let o = Overlay::default();
        let before = plan(
            "b",
            Mode::Vxlan(o),
            &[t("ns/x", &["198.51.100.0/24"], Some("a"))],
            &nodes(),
        );
        let after = plan(
            "b",
            Mode::Vxlan(o),
            &[t("ns/x", &["198.51.100.0/24"], Some("c"))],
            &nodes(),
        );
        assert_ne!(before.routes, after.routes);
        assert_eq!(after.peers(), vec![o.addrs_of(Ipv4Addr::new(10, 7, 2, 3))]);

        let none = plan(
            "b",
            Mode::Vxlan(o),
            &[t("ns/x", &["198.51.100.0/24"], None)],
            &nodes(),
        );
        assert_eq!(
            none.routes.get(&p("198.51.100.0/24")),
            Some(&Target::Unreachable)
        );
        assert!(none.peers().is_empty());

        // a gateway without an address is refused too, and said
        let ghost = plan(
            "b",
            Mode::Direct,
            &[t("ns/x", &["198.51.100.0/24"], Some("zz"))],
            &nodes(),
        );
        assert_eq!(
            ghost.routes.get(&p("198.51.100.0/24")),
            Some(&Target::Unreachable)
        );
        assert!(ghost.problems[0].contains("zz"), "{:?}", ghost.problems);

        // without an address of its own a node cannot use the overlay: refuse, do not leak
        let lost = plan(
            "nobody",
            Mode::Vxlan(o),
            &[t("ns/x", &["198.51.100.0/24"], Some("a"))],
            &nodes(),
        );
        assert_eq!(lost.device, None);
        assert_eq!(
            lost.routes.get(&p("198.51.100.0/24")),
            Some(&Target::Unreachable)
        );
        assert!(!lost.problems.is_empty());
    }

    #[test]
    fn a_subnet_is_steered_once_and_bad_subnets_are_named() {
        let tunnels = [
            t(
                "ns/b-second",
                &["198.51.100.0/24", "not-a-subnet"],
                Some("c"),
            ),
            t("ns/a-first", &["198.51.100.0/24"], Some("a")),
        ];
        let pl = plan("b", Mode::Direct, &tunnels, &nodes());
        assert_eq!(
            pl.routes.get(&p("198.51.100.0/24")),
            Some(&Target::Direct(Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(pl.problems.len(), 2, "{:?}", pl.problems);
        assert!(pl.problems.iter().any(|m| m.contains("ns/a-first")));
        assert!(pl.problems.iter().any(|m| m.contains("not-a-subnet")));

        // on the node that is the first tunnel's gateway, the second does not steer its
        // subnet away from the tunnel
        let on_a = plan("a", Mode::Direct, &tunnels, &nodes());
        assert!(on_a.routes.is_empty(), "{:?}", on_a.routes);
    }
}
