//! The pure translation from what IKE negotiated to the XFRM objects that carry it: SAs with
//! their keys and lifetimes, policies per selector pair, trap policies, and when a rekeyed
//! outbound SA may go in. No I/O here, so every rule has a unit test.

use std::net::IpAddr;

use strait_crds::contract::StatusReason;
use strait_ike::codec::{AddrRange, TsRange};
use strait_ike::crypto::alg::{Encr, Esn, Integ};
use strait_ike::proposal::EspProposal;
use strait_ike::{ChildSaId, ChildSaInstall, PeerConfig};
use strait_xfrm::{
    Direction, Integrity, Key, Lifetimes, Limits, Mode, NatT, Policy, Prefix, Reqid, Sa, SaCrypto,
    Selector, Template, Transform,
};

use crate::error::TunnelError;
use crate::notation::{esp_name, ts_string};

/// The tunnel's reqid (and ownership tag).
pub fn reqid(tunnel: u32) -> Result<Reqid, TunnelError> {
    Reqid::ours(tunnel).map_err(|e| TunnelError::kernel("reqid", &e))
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

/// The prefix a selector's address range is, if it is one.
pub fn prefix_of(ts: &TsRange) -> Option<(IpAddr, u8)> {
    let (start, end, bits) = match ts.addrs {
        AddrRange::V4 { start, end } => (
            u128::from(u32::from(start)),
            u128::from(u32::from(end)),
            32u32,
        ),
        AddrRange::V6 { start, end } => (u128::from(start), u128::from(end), 128u32),
    };
    let host = start ^ end;
    // host bits must be a run of ones at the bottom, and start must have them clear
    if host & host.wrapping_add(1) != 0 || start & host != 0 {
        return None;
    }
    let len = bits - (128 - host.leading_zeros()).min(bits);
    let addr = match ts.addrs {
        AddrRange::V4 { start, .. } => IpAddr::V4(start),
        AddrRange::V6 { start, .. } => IpAddr::V6(start),
    };
    u8::try_from(len).ok().map(|l| (addr, l))
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

/// The kernel objects for one CHILD SA: inbound SA, outbound SA, policies (out, in, fwd).
pub(crate) fn kernel_objects(
    tunnel: u32,
    sa: &ChildSaInstall,
) -> Result<(Sa, Sa, Vec<Policy>), TunnelError> {
    let reqid = reqid(tunnel)?;
    let (l, r) = (sa.local_addr.ip(), sa.remote_addr.ip());
    let lifetimes = Lifetimes {
        soft: Limits {
            add_seconds: Some(sa.lifetimes.soft.as_secs().max(1)),
            ..Limits::default()
        },
        hard: Limits {
            add_seconds: Some(sa.lifetimes.hard.as_secs().max(2)),
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
        sa_out.nat_t = Some(NatT {
            sport: e.local_port,
            dport: e.remote_port,
        });
    }
    let mut policies = Vec::new();
    for lt in &sa.local_ts {
        for rt in &sa.remote_ts {
            let (lp, rp) = (prefix(lt)?, prefix(rt)?);
            let inn = Selector::between(rp, lp);
            policies.push(out_policy(lp, rp, l, r, reqid));
            for dir in [Direction::In, Direction::Fwd] {
                policies.push(Policy::protect(
                    inn,
                    dir,
                    PRIORITY,
                    Template::esp(r, l, Mode::Tunnel, reqid),
                ));
            }
        }
    }
    Ok((sa_in, sa_out, policies))
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

/// The outbound policy from `lp` to `rp` through the tunnel `l` → `r`: the same object whether
/// a CHILD SA installs it or it waits as a trap.
fn out_policy(lp: Prefix, rp: Prefix, l: IpAddr, r: IpAddr, reqid: Reqid) -> Policy {
    Policy::protect(
        Selector::between(lp, rp),
        Direction::Out,
        PRIORITY,
        Template::esp(l, r, Mode::Tunnel, reqid),
    )
}

/// The trap policies of an `onTraffic` tunnel: one outbound policy per pair of configured
/// traffic selectors.
pub(crate) fn trap_policies(tunnel: u32, cfg: &PeerConfig) -> Result<Vec<Policy>, TunnelError> {
    let reqid = reqid(tunnel)?;
    let (l, r) = (cfg.local_addr.ip(), cfg.remote_addr.ip());
    if l.is_unspecified() || r.is_unspecified() {
        return Err(TunnelError::new(
            StatusReason::InvalidConfig,
            "initiation onTraffic needs both tunnel addresses",
        ));
    }
    let mut policies = Vec::new();
    for lt in &cfg.local_ts {
        for rt in &cfg.remote_ts {
            policies.push(out_policy(prefix(lt)?, prefix(rt)?, l, r, reqid));
        }
    }
    Ok(policies)
}

/// When a CHILD SA's outbound SA goes into the kernel (which sends on the newest one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// With the inbound SA: a CHILD SA of IKE_AUTH (either role), an additional one, or a rekey
    /// we started (the peer installed the new pair before answering).
    Now,
    /// A rekey we answered: when the old SA's Delete arrives (the peer installs the new pair
    /// only on our answer).
    AfterDeleteOf(ChildSaId),
    /// The redundant SA of a rekey collision, deleted at once: never sent on.
    Never,
}

pub(crate) fn outbound_plan(
    replaces: Option<ChildSaId>,
    initiator: bool,
    redundant: bool,
) -> Outbound {
    match (redundant, replaces) {
        (true, _) => Outbound::Never,
        (false, Some(old)) if !initiator => Outbound::AfterDeleteOf(old),
        _ => Outbound::Now,
    }
}

/// Priority of our tunnel policies (strongSwan's default range for subnet policies).
const PRIORITY: u32 = 375_423;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
