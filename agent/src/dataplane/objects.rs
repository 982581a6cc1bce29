//! The pure translation from what IKE negotiated to the XFRM objects that carry it: SAs with
//! their keys and lifetimes, policies per selector pair with strongSwan's priorities, a tunnel's
//! fail-closed (block or trap) policies, and when a rekeyed outbound SA may go in. No I/O here,
//! so every rule has a unit test.
//!
//! Reqids: every object carries a reqid of Strait's range (`strait_xfrm::ownership`), numbered
//! `tunnel << 8 | slot`. The tunnel's block or trap policies use slot 0; its CHILD SAs take one
//! slot per set of traffic selectors (a rekey keeps its slot; the first set gets slot 0, the
//! trap policies' reqid, so the kernel replaces an acquire's larval SA with it), so two CHILD
//! SAs with different selectors never take each other's SAs (review I-2).

use std::net::IpAddr;

use strait_crds::contract::StatusReason;
use strait_ike::codec::{AddrRange, TsRange};
use strait_ike::crypto::alg::{Encr, Esn, Integ};
use strait_ike::proposal::EspProposal;
use strait_ike::{ChildSaId, ChildSaInstall, PeerConfig, Role};
use strait_xfrm::{
    Direction, Integrity, Key, Lifetimes, Limits, Mode, NatT, Policy, PortMatch, Prefix, Reqid, Sa,
    SaCrypto, Selector, Template, Transform,
};

use crate::error::TunnelError;
use crate::notation::{esp_name, ts_string};

/// The largest tunnel index the reqid numbering has room for.
pub const MAX_TUNNEL: u32 = 0xFFFE;
/// The slot of a tunnel's fail-closed policies (and of its first CHILD SA selector set).
pub const TUNNEL_SLOT: u8 = 0;

/// How often an inbound NAT-T SA of ours reports the same changed mapping again (seconds): a
/// report the endpoint already followed costs nothing, and one lost is repeated this soon.
pub const MAPPING_MAXAGE_SECS: u32 = 10;

/// The reqid (and ownership tag) of `slot` of tunnel `tunnel`.
pub fn reqid(tunnel: u32, slot: u8) -> Result<Reqid, TunnelError> {
    if tunnel > MAX_TUNNEL {
        return Err(TunnelError::new(
            StatusReason::InvalidConfig,
            format!("tunnel index {tunnel} is beyond {MAX_TUNNEL}"),
        ));
    }
    Reqid::ours(tunnel << 8 | u32::from(slot)).map_err(|e| TunnelError::kernel("reqid", &e))
}

/// The tunnel index a reqid of ours belongs to.
pub fn tunnel_of(reqid: Reqid) -> Option<u32> {
    reqid.index().map(|n| n >> 8)
}

/// Which of strongSwan's priority classes a policy is in: a CHILD SA's policies win over the
/// tunnel's fallback (trap or block) for the same selector (`POLICY_PRIORITY_DEFAULT` against
/// `POLICY_PRIORITY_ROUTED` in charon's kernel-netlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A CHILD SA's policies.
    Child,
    /// The tunnel's block or trap policies, while no CHILD SA covers the selector.
    Fallback,
}

/// The kernel priority of a policy (lower wins), computed from how specific its selector is,
/// as strongSwan does: longer prefixes, a protocol and port masks each make a policy win over
/// a broader one, whichever was installed first (review R-5).
pub(crate) fn priority(sel: &Selector, class: Class) -> u32 {
    const BASE: u32 = 200_000;
    let ports = |p: Option<PortMatch>| p.map_or(0, |p| p.mask_bits());
    let mut prio = 2 * BASE;
    prio -= (u32::from(sel.src.len()) + u32::from(sel.dst.len())) * 512;
    prio -= if sel.proto.is_some() { 256 } else { 0 };
    prio -= (ports(sel.src_port) + ports(sel.dst_port)) * 4;
    if class == Class::Child {
        prio -= 1;
    }
    prio
}

fn integrity(i: Integ) -> Option<Integrity> {
    match i {
        Integ::HmacSha256_128 => Some(Integrity::HmacSha256),
        Integ::HmacSha384_192 => Some(Integrity::HmacSha384),
        Integ::HmacSha512_256 => Some(Integrity::HmacSha512),
        _ => None,
    }
}

fn key_bits(e: Encr) -> Option<u16> {
    match e {
        Encr::AesGcm16_128 | Encr::AesCbc128 => Some(128),
        Encr::AesGcm16_256 | Encr::AesCbc256 => Some(256),
        _ => None,
    }
}

fn unsupported(what: String) -> TunnelError {
    TunnelError::new(
        StatusReason::KernelUnsupported,
        format!("{what} has no kernel transform in this agent"),
    )
}

/// The kernel transforms an ESP proposal list may end up using.
pub fn transforms(esp: &[EspProposal]) -> Vec<Transform> {
    let mut out = Vec::new();
    for p in esp {
        for e in &p.encr {
            let Some(bits) = key_bits(*e) else { continue };
            let ts: Vec<Transform> = if e.is_aead() {
                vec![Transform::AesGcm16 { key_bits: bits }]
            } else {
                p.integ
                    .iter()
                    .filter_map(|i| integrity(*i))
                    .map(|integrity| Transform::AesCbc {
                        key_bits: bits,
                        integrity,
                    })
                    .collect()
            };
            for t in ts {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }
    out
}

/// [`prefix_of`] as the kernel's prefix type, for routes and nftables sets.
pub fn kernel_prefix(ts: &TsRange) -> Option<Prefix> {
    prefix_of(ts).and_then(|(a, l)| Prefix::new(a, l).ok())
}

/// The prefix a selector's address range is, if it is one.
pub fn prefix_of(ts: &TsRange) -> Option<(IpAddr, u8)> {
    ts.prefix()
}

fn crypto(
    encr: Encr,
    integ: Option<Integ>,
    ekey: &[u8],
    ikey: &[u8],
) -> Result<SaCrypto, TunnelError> {
    let r = match integ {
        None => SaCrypto::aes_gcm16(Key::from_slice(ekey)),
        Some(i) => {
            let integ = integrity(i).ok_or_else(|| unsupported(esp_name(encr, Some(i))))?;
            SaCrypto::aes_cbc(Key::from_slice(ekey), integ, Key::from_slice(ikey))
        }
    };
    r.map_err(|e| TunnelError::kernel("CHILD SA keys", &e))
}

/// The kernel objects for one CHILD SA in `slot` of `tunnel`: inbound SA, outbound SA,
/// policies (out, in, fwd per selector pair of one family).
pub(crate) fn kernel_objects(
    tunnel: u32,
    slot: u8,
    sa: &ChildSaInstall,
) -> Result<(Sa, Sa, Vec<Policy>), TunnelError> {
    let reqid = reqid(tunnel, slot)?;
    let (l, r) = (sa.local_addr.ip(), sa.remote_addr.ip());
    // The kernel counts bytes and packets per SA and sends a soft expire (the agent rekeys)
    // and a hard one (it has deleted the SA), as it does for time.
    let lt = &sa.lifetimes;
    let lifetimes = Lifetimes {
        soft: Limits {
            add_seconds: Some(lt.soft.as_secs().max(1)),
            bytes: lt.bytes.map(|(soft, _)| soft),
            packets: lt.packets.map(|(soft, _)| soft),
            ..Limits::default()
        },
        hard: Limits {
            add_seconds: Some(lt.hard.as_secs().max(2)),
            bytes: lt.bytes.map(|(_, hard)| hard),
            packets: lt.packets.map(|(_, hard)| hard),
            ..Limits::default()
        },
    };
    let k = &sa.keys;
    let mut sa_in = Sa::new(
        r,
        l,
        u32::from_be_bytes(sa.spi_in.0),
        reqid,
        Mode::Tunnel,
        crypto(
            sa.encr,
            sa.integ,
            k.encr_in.as_bytes(),
            k.integ_in.as_bytes(),
        )?,
    );
    let mut sa_out = Sa::new(
        l,
        r,
        u32::from_be_bytes(sa.spi_out.0),
        reqid,
        Mode::Tunnel,
        crypto(
            sa.encr,
            sa.integ,
            k.encr_out.as_bytes(),
            k.integ_out.as_bytes(),
        )?,
    );
    for (s, replay) in [(&mut sa_in, 32), (&mut sa_out, 0)] {
        s.lifetimes = lifetimes;
        s.esn = sa.esn == Esn::Yes;
        s.replay_window = if s.esn { replay.max(32) } else { replay };
    }
    if let Some(e) = sa.encapsulation {
        sa_in.nat_t = Some(NatT {
            sport: e.remote_port,
            dport: e.local_port,
        });
        // the peer's NAT may rebind: hear of it (review R-2), but not of every packet
        sa_in.mapping_maxage = Some(MAPPING_MAXAGE_SECS);
        sa_out.nat_t = Some(NatT {
            sport: e.local_port,
            dport: e.remote_port,
        });
    }
    let policies = child_policies(reqid, (l, r), &sa.local_ts, &sa.remote_ts)?;
    Ok((sa_in, sa_out, policies))
}

/// A CHILD SA's policies (out, in, fwd per selector pair of one family) under `reqid`,
/// between the outer addresses `(local, remote)`.
pub(crate) fn child_policies(
    reqid: Reqid,
    (l, r): (IpAddr, IpAddr),
    local_ts: &[TsRange],
    remote_ts: &[TsRange],
) -> Result<Vec<Policy>, TunnelError> {
    let out = Template::esp(l, r, Mode::Tunnel, reqid);
    let inn = Template::esp(r, l, Mode::Tunnel, reqid);
    let policies = pair_policies(local_ts, remote_ts, Class::Child, |dir, sel, prio| {
        let t = if dir == Direction::Out { out } else { inn };
        Policy::protect(sel, dir, prio, t)
    })?;
    if policies.is_empty() {
        return Err(TunnelError::new(
            StatusReason::KernelUnsupported,
            format!(
                "no pair of traffic selectors of one address family in {} === {}",
                ts_list(local_ts),
                ts_list(remote_ts)
            ),
        ));
    }
    Ok(policies)
}

/// The slot of a reqid of ours (its low octet).
pub fn slot_of(reqid: Reqid) -> Option<u8> {
    reqid.index().map(|n| (n & 0xff) as u8)
}

fn ts_list(v: &[TsRange]) -> String {
    v.iter().map(ts_string).collect::<Vec<_>>().join(",")
}

/// Out, in and fwd policies for every pair of local and remote selectors that can describe
/// one packet (same family, compatible protocols), built by `make(dir, selector, priority)`.
fn pair_policies(
    local_ts: &[TsRange],
    remote_ts: &[TsRange],
    class: Class,
    make: impl Fn(Direction, Selector, u32) -> Policy,
) -> Result<Vec<Policy>, TunnelError> {
    let mut policies = Vec::new();
    for lt in local_ts {
        for rt in remote_ts {
            let (Some(out), Some(inn)) = (selector(lt, rt)?, selector(rt, lt)?) else {
                continue;
            };
            policies.push(make(Direction::Out, out, priority(&out, class)));
            for dir in [Direction::In, Direction::Fwd] {
                policies.push(make(dir, inn, priority(&inn, class)));
            }
        }
    }
    Ok(policies)
}

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// The kernel selector for packets from `src` to `dst` with the negotiated protocol and ports,
/// or `None` when no packet can match both selectors (different address families, different
/// protocols): strongSwan installs no policy for such a pair either (review I-1, I-3).
pub(crate) fn selector(src: &TsRange, dst: &TsRange) -> Result<Option<Selector>, TunnelError> {
    let same_family = matches!(
        (src.addrs, dst.addrs),
        (AddrRange::V4 { .. }, AddrRange::V4 { .. }) | (AddrRange::V6 { .. }, AddrRange::V6 { .. })
    );
    if !same_family {
        return Ok(None);
    }
    let proto = match (src.ip_protocol, dst.ip_protocol) {
        (0, 0) => None,
        (a, 0) | (0, a) => Some(a),
        (a, b) if a == b => Some(a),
        _ => return Ok(None),
    };
    let mut sel = Selector::between(prefix(src)?, prefix(dst)?);
    sel.proto = proto;
    // a selector without a protocol of its own cannot restrict ports
    let ports_of = |ts: &TsRange| {
        if ts.ip_protocol == 0 {
            None
        } else {
            PortMatch::range(ts.start_port, ts.end_port)
        }
    };
    match proto {
        None => {}
        Some(ICMP | ICMPV6) => {
            // RFC 4301 §4.4.1.3: the ICMP type in a port's high byte, the code in its low
            // byte; the kernel matches the type as the source port and the code as the
            // destination port. The restricted side says which.
            let restricted = [src, dst].into_iter().find(|t| {
                t.ip_protocol != 0
                    && t.start_port <= t.end_port
                    && (t.start_port, t.end_port) != (0, u16::MAX)
            });
            if let Some(t) = restricted {
                let (t0, t1) = (t.start_port >> 8, t.end_port >> 8);
                sel.src_port = PortMatch::range(t0, t1);
                if t0 == t1 {
                    sel.dst_port = PortMatch::range(t.start_port & 0xFF, t.end_port & 0xFF);
                }
            }
        }
        Some(_) => {
            sel.src_port = ports_of(src);
            sel.dst_port = ports_of(dst);
        }
    }
    Ok(Some(sel))
}

fn prefix(ts: &TsRange) -> Result<Prefix, TunnelError> {
    let (a, len) = prefix_of(ts).ok_or_else(|| {
        TunnelError::new(
            StatusReason::KernelUnsupported,
            format!(
                "traffic selector {} is not a prefix; XFRM policies need one",
                ts_string(ts)
            ),
        )
    })?;
    Prefix::new(a, len).map_err(|e| TunnelError::kernel("traffic selector", &e))
}

/// A tunnel's fail-closed policies, from its configured selectors: while no CHILD SA covers a
/// selector pair, its packets are dropped (`block`), or, for an `onTraffic` tunnel, held for an
/// SA the kernel asks for with an acquire ("trap" policies, as strongSwan's
/// `start_action = trap`). Out, in and fwd, so that cleartext is neither sent nor accepted.
pub(crate) fn fallback_policies(tunnel: u32, cfg: &PeerConfig) -> Result<Vec<Policy>, TunnelError> {
    let reqid = reqid(tunnel, TUNNEL_SLOT)?;
    let trap = cfg.role == Role::OnTraffic;
    let (l, r) = (cfg.local_addr.ip(), cfg.remote_addr.ip());
    if trap && (l.is_unspecified() || r.is_unspecified()) {
        return Err(TunnelError::new(
            StatusReason::InvalidConfig,
            "initiation onTraffic needs both tunnel addresses",
        ));
    }
    pair_policies(
        &cfg.local_ts,
        &cfg.remote_ts,
        Class::Fallback,
        |dir, sel, prio| {
            if !trap {
                return Policy::block(sel, dir, prio, reqid);
            }
            let (src, dst): (IpAddr, IpAddr) = if dir == Direction::Out {
                (l, r)
            } else {
                (r, l)
            };
            Policy::protect(sel, dir, prio, Template::esp(src, dst, Mode::Tunnel, reqid))
        },
    )
}

/// When a CHILD SA's outbound SA goes into the kernel (which sends on the newest one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// With the inbound SA: a CHILD SA of IKE_AUTH (either role), an additional one, or a rekey
    /// we started (the peer installed the new pair before answering).
    Now,
    /// A rekey we answered: when the old SA's Delete arrives (the peer installs the new pair
    /// only on our answer).
    AfterDeleteOf(ChildSaId),
    /// The redundant SA of a rekey collision, deleted at once: never sent on.
    Never,
}

/// When the outbound SA of a CHILD SA goes in, from [`ChildSaInstall`]'s `replaces`,
/// `initiator` and `redundant` (the kernel data plane follows it, and so does the driver
/// simulation's kernel).
pub fn outbound_plan(replaces: Option<ChildSaId>, initiator: bool, redundant: bool) -> Outbound {
    match (redundant, replaces) {
        (true, _) => Outbound::Never,
        (false, Some(old)) if !initiator => Outbound::AfterDeleteOf(old),
        _ => Outbound::Now,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::time::Duration;
    use strait_ike::crypto::keys::SecretBytes;
    use strait_ike::{ChildKeys, ChildLifetimes, EspSpi, PeerId};
    use strait_xfrm::Action;

    fn ts(s: &str) -> TsRange {
        let (a, l) = s.split_once('/').unwrap();
        TsRange::subnet(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

    fn child(local: Vec<TsRange>, remote: Vec<TsRange>) -> ChildSaInstall {
        ChildSaInstall {
            peer: PeerId(0),
            child: ChildSaId(1),
            spi_in: EspSpi([0, 0, 1, 1]),
            spi_out: EspSpi([0, 0, 1, 2]),
            encr: Encr::AesGcm16_256,
            integ: None,
            esn: Esn::No,
            keys: ChildKeys {
                encr_in: SecretBytes::from_slice(&[7; 36]),
                integ_in: SecretBytes::from_slice(&[]),
                encr_out: SecretBytes::from_slice(&[8; 36]),
                integ_out: SecretBytes::from_slice(&[]),
            },
            mode: strait_ike::Mode::Tunnel,
            local_addr: "192.0.2.1:500".parse().unwrap(),
            remote_addr: "192.0.2.2:500".parse().unwrap(),
            local_ts: local,
            remote_ts: remote,
            encapsulation: None,
            lifetimes: ChildLifetimes {
                soft: Duration::from_secs(10),
                hard: Duration::from_secs(20),
                bytes: None,
                packets: None,
            },
            replaces: None,
            initiator: true,
            redundant: false,
        }
    }

    fn peer(initiation: &str, local: &str, remote: &str) -> PeerConfig {
        let yaml = format!(
            "local: {{id: a.example, address: 192.0.2.1, subnets: [{local}]}}
remote: {{id: b.example, address: 192.0.2.2, subnets: [{remote}]}}
auth: {{psk: {{secretRef: {{name: s, key: psk}}}}}}
initiation: {initiation}"
        );
        let spec: strait_crds::IPsecTunnelSpec = serde_yaml::from_str(&yaml).unwrap();
        let inputs = crate::spec::peer::Inputs {
            local_ip: "192.0.2.1".parse().unwrap(),
            remote_ip: "192.0.2.2".parse().unwrap(),
            fallback_ips: Vec::new(),
            ike_port: 500,
            remote_port: 500,
            psk: Some(SecretBytes::from_slice(b"secret")),
            on_traffic_supported: true,
        };
        crate::spec::peer::build(&spec, inputs).unwrap().config
    }

    #[test]
    fn reqids_carry_tunnel_and_slot() {
        let r = reqid(3, 7).unwrap();
        assert!(r.is_ours());
        assert_eq!(tunnel_of(r), Some(3));
        assert_eq!(
            tunnel_of(reqid(MAX_TUNNEL, u8::MAX).unwrap()),
            Some(MAX_TUNNEL)
        );
        assert!(reqid(MAX_TUNNEL + 1, 0).is_err());
        assert_ne!(reqid(3, 1).unwrap(), reqid(3, 2).unwrap());
        assert_eq!(tunnel_of(Reqid::from_raw(7)), None, "not ours");
    }

    #[test]
    fn priorities_as_strongswan_computes_them() {
        let sel = |s: &str, d: &str| Selector::between(s.parse().unwrap(), d.parse().unwrap());
        // /24 <-> /24: charon's 375423 for a CHILD SA's policy, one more for its trap
        let subnets = sel("198.51.100.0/24", "203.0.113.0/24");
        assert_eq!(priority(&subnets, Class::Child), 375_423);
        assert_eq!(priority(&subnets, Class::Fallback), 375_424);
        // the more specific selector wins (lower value), whichever came first
        let hub = sel("10.0.0.0/8", "0.0.0.0/0");
        let site = sel("10.0.0.0/8", "10.1.0.0/16");
        assert!(priority(&site, Class::Child) < priority(&hub, Class::Child));
        // a narrowed CHILD SA beats its tunnel's broader block
        assert!(priority(&site, Class::Child) < priority(&hub, Class::Fallback));
        // protocol and ports count too
        let mut tcp = site;
        tcp.proto = Some(6);
        assert_eq!(
            priority(&tcp, Class::Child),
            priority(&site, Class::Child) - 256
        );
        tcp.dst_port = Some(PortMatch::exact(443));
        assert_eq!(
            priority(&tcp, Class::Child),
            priority(&site, Class::Child) - 256 - 16 * 4
        );
    }

    #[test]
    fn dual_stack_selectors_pair_by_family() {
        let sa = child(
            vec![ts("10.0.0.0/24"), ts("fd00:1::/64")],
            vec![ts("10.1.0.0/24"), ts("fd00:2::/64")],
        );
        let (sa_in, sa_out, policies) = kernel_objects(1, 1, &sa).unwrap();
        // 2 same-family pairs x (out, in, fwd); no v4 <-> v6 policy
        assert_eq!(policies.len(), 6);
        for p in &policies {
            assert!(p.selector.family().is_ok(), "{}", p.selector);
        }
        let outs: Vec<String> = policies
            .iter()
            .filter(|p| p.dir == Direction::Out)
            .map(|p| p.selector.to_string())
            .collect();
        assert_eq!(
            outs,
            ["10.0.0.0/24 -> 10.1.0.0/24", "fd00:1::/64 -> fd00:2::/64"]
        );
        // tunnel-mode SAs without a selector (the kernel then sets none: AF_UNSPEC)
        assert_eq!(sa_in.selector, None);
        assert_eq!(sa_out.selector, None);
        assert_eq!(sa_in.mode, Mode::Tunnel);
        // only cross-family pairs: nothing to install is an error, not an empty policy set
        let cross = child(vec![ts("10.0.0.0/24")], vec![ts("fd00:2::/64")]);
        let e = kernel_objects(1, 1, &cross).unwrap_err();
        assert!(e.message.contains("one address family"), "{}", e.message);
    }

    #[test]
    fn protocol_and_ports_stay_in_the_policies() {
        let mut gre_l = ts("192.0.2.10/32");
        gre_l.ip_protocol = 47;
        let gre_r = ts("192.0.2.20/32");
        let sa = child(vec![gre_l], vec![gre_r]);
        let (_, _, policies) = kernel_objects(1, 2, &sa).unwrap();
        assert!(policies.iter().all(|p| p.selector.proto == Some(47)));
        // templates carry the CHILD SA's slot
        assert!(
            policies
                .iter()
                .all(|p| p.templates[0].reqid == reqid(1, 2).unwrap())
        );
        // TCP to port 443 from any local port; the inbound half has it as the source port
        let mut l = ts("10.0.0.0/24");
        l.ip_protocol = 6;
        let mut r = ts("10.1.0.0/24");
        r.ip_protocol = 6;
        (r.start_port, r.end_port) = (443, 443);
        let out = selector(&l, &r).unwrap().unwrap();
        assert_eq!(out.proto, Some(6));
        assert_eq!(out.src_port, None);
        assert_eq!(out.dst_port, Some(PortMatch::exact(443)));
        let inn = selector(&r, &l).unwrap().unwrap();
        assert_eq!(inn.src_port, Some(PortMatch::exact(443)));
        assert_eq!(inn.dst_port, None);
        // different protocols on the two sides match no packet
        let mut udp = ts("10.1.0.0/24");
        udp.ip_protocol = 17;
        assert_eq!(selector(&l, &udp).unwrap(), None);
        // ICMP echo request (type 8, code 0): type as source port, code as destination port
        let mut icmp = ts("10.1.0.0/24");
        icmp.ip_protocol = 1;
        (icmp.start_port, icmp.end_port) = (8 << 8, 8 << 8);
        let s = selector(&ts("10.0.0.0/24"), &icmp).unwrap().unwrap();
        assert_eq!(s.proto, Some(1));
        assert_eq!(s.src_port, Some(PortMatch::exact(8)));
        assert_eq!(s.dst_port, Some(PortMatch::exact(0)));
    }

    #[test]
    fn a_range_that_is_no_prefix_is_refused() {
        let mut odd = ts("10.0.0.0/24");
        odd.addrs = AddrRange::V4 {
            start: "10.0.0.1".parse().unwrap(),
            end: "10.0.0.5".parse().unwrap(),
        };
        let e = kernel_objects(1, 1, &child(vec![odd], vec![ts("10.1.0.0/24")])).unwrap_err();
        assert!(e.message.contains("not a prefix"), "{}", e.message);
    }

    #[test]
    fn fallback_policies_block_or_trap_every_direction() {
        let cfg = peer(
            "start",
            "198.51.100.0/24, 2001:db8:1::/64",
            "203.0.113.0/24",
        );
        let block = fallback_policies(4, &cfg).unwrap();
        // only the v4 pair: out, in, fwd
        assert_eq!(block.len(), 3);
        assert!(block.iter().all(|p| p.action == Action::Block));
        assert!(
            block
                .iter()
                .all(|p| p.templates[0].reqid == reqid(4, TUNNEL_SLOT).unwrap())
        );
        assert_eq!(block[0].priority, 375_424);
        let trap =
            fallback_policies(4, &peer("onTraffic", "198.51.100.0/24", "203.0.113.0/24")).unwrap();
        assert_eq!(trap.len(), 3);
        assert!(trap.iter().all(|p| p.action == Action::Allow));
        let out = &trap[0];
        assert_eq!(out.dir, Direction::Out);
        assert_eq!(out.templates[0].src.to_string(), "192.0.2.1");
        assert_eq!(out.templates[0].dst.to_string(), "192.0.2.2");
        assert_eq!(trap[1].templates[0].src.to_string(), "192.0.2.2");
        // a CHILD SA for the same selectors replaces each of them (same policy id)
        let sa = child(vec![ts("198.51.100.0/24")], vec![ts("203.0.113.0/24")]);
        let (_, _, installed) = kernel_objects(4, 1, &sa).unwrap();
        let ids = |v: &[Policy]| v.iter().map(Policy::id).collect::<Vec<_>>();
        assert_eq!(ids(&installed), ids(&block));
    }

    #[test]
    fn prefixes_and_ranges() {
        let ts = TsRange::subnet("198.51.100.0".parse().unwrap(), 24).unwrap();
        assert_eq!(ts_string(&ts), "198.51.100.0/24");
        let host = TsRange::subnet("192.0.2.1".parse().unwrap(), 32).unwrap();
        assert_eq!(ts_string(&host), "192.0.2.1/32");
        let all = TsRange::subnet("0.0.0.0".parse().unwrap(), 0).unwrap();
        assert_eq!(ts_string(&all), "0.0.0.0/0");
        let odd = TsRange {
            addrs: AddrRange::V4 {
                start: "10.0.0.1".parse().unwrap(),
                end: "10.0.0.5".parse().unwrap(),
            },
            ..all
        };
        assert_eq!(prefix_of(&odd), None);
        assert_eq!(ts_string(&odd), "10.0.0.1-10.0.0.5");
    }

    #[test]
    fn outbound_sa_timing_by_role() {
        let old = ChildSaId(7);
        // IKE_AUTH's CHILD SA: at once, as initiator and as responder
        assert_eq!(outbound_plan(None, true, false), Outbound::Now);
        assert_eq!(outbound_plan(None, false, false), Outbound::Now);
        // a rekey we started: at once; one we answered: when the old one's Delete arrives
        assert_eq!(outbound_plan(Some(old), true, false), Outbound::Now);
        assert_eq!(
            outbound_plan(Some(old), false, false),
            Outbound::AfterDeleteOf(old)
        );
        // the redundant SA of a collision: never
        assert_eq!(outbound_plan(Some(old), true, true), Outbound::Never);
    }

    #[test]
    fn transforms_of_proposals() {
        let esp =
            strait_ike::proposal::parse_esp_list(&["aes256gcm16-x25519", "aes256-sha256"]).unwrap();
        assert_eq!(
            transforms(&esp),
            vec![
                Transform::AesGcm16 { key_bits: 256 },
                Transform::AesCbc {
                    key_bits: 256,
                    integrity: Integrity::HmacSha256
                }
            ]
        );
    }
}
