//! What the endpoint saw and decided, in words a network engineer reads in a log: the proposals
//! received and configured when none matched, the identity a peer named and the ones we
//! expected, the selectors, why a datagram was dropped. The endpoint emits them as
//! [`crate::Event::Diagnostic`]; acting on one changes nothing, and the driver only logs them.
//!
//! Failures are always emitted (they are rare and explain a failed negotiation, as charon's
//! "received proposals: ..., configured proposals: ..." line does). The success path and drops
//! only with [`crate::EndpointConfig::diagnostics`]: a flood must not cost an allocation each.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::codec::{DhId, EncrId, EsnId, IntegId, PrfId};
use crate::codec::{IdType, Identification, Proposal, TransformType, TsRange};
use crate::crypto::alg::{Encr, Esn, Integ, KeGroup, Prf};
use crate::event::PeerId;
use crate::proposal::Keyword as _;

/// Which kind of SA a proposal list is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaKind {
    /// An IKE SA (IKE_SA_INIT, or its rekey).
    Ike,
    /// A CHILD SA (IKE_AUTH or CREATE_CHILD_SA).
    Child,
}

impl SaKind {
    fn name(self) -> &'static str {
        match self {
            Self::Ike => "IKE",
            Self::Child => "ESP",
        }
    }
}

/// One diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    /// We answered NO_PROPOSAL_CHOSEN: none of the peer's proposals matches ours.
    NoProposalMatch {
        /// The tunnel (the one chosen by address when the peer is not yet known by name).
        peer: PeerId,
        /// Where the request came from.
        remote: SocketAddr,
        /// IKE or CHILD SA.
        kind: SaKind,
        /// The peer's proposals, strongSwan notation (unknown transforms as `type/id`).
        received: Vec<String>,
        /// Ours.
        configured: Vec<String>,
    },
    /// The peer answered NO_PROPOSAL_CHOSEN to what we offered.
    ProposalsRefused {
        /// The tunnel.
        peer: PeerId,
        /// IKE or CHILD SA.
        kind: SaKind,
        /// What we offered.
        offered: Vec<String>,
    },
    /// The peer named an identity none of the tunnels for its address expects.
    IdentityMismatch {
        /// The tunnel the exchange stays with.
        peer: PeerId,
        /// Where the peer is.
        remote: SocketAddr,
        /// The identity it named (IDi, or IDr in a response).
        received: String,
        /// The identities the candidate tunnels expect.
        expected: Vec<String>,
    },
    /// The peer's traffic selectors and ours have nothing in common (TS_UNACCEPTABLE).
    TsMismatch {
        /// The tunnel.
        peer: PeerId,
        /// The peer's TSi (its side) and TSr (ours).
        received: (Vec<String>, Vec<String>),
        /// Ours: remote subnets, local subnets.
        configured: (Vec<String>, Vec<String>),
    },
    /// The responder took this tunnel for the initiator (with `diagnostics`).
    TunnelChosen {
        /// The tunnel.
        peer: PeerId,
        /// Where the peer is.
        remote: SocketAddr,
        /// The identity it named.
        identity: String,
        /// How many tunnels fitted its address.
        candidates: usize,
    },
    /// A CHILD SA's selectors after narrowing (with `diagnostics`), and what the peer's
    /// request offered.
    TsNarrowed {
        /// The tunnel.
        peer: PeerId,
        /// Our side.
        local: Vec<String>,
        /// The peer's side.
        remote: Vec<String>,
        /// The request's selectors for our side (its TSr).
        offered_local: Vec<String>,
        /// The request's selectors for its side (its TSi).
        offered_remote: Vec<String>,
    },
    /// A datagram was dropped (with `diagnostics`).
    Dropped {
        /// Where it came from.
        remote: SocketAddr,
        /// Why.
        why: &'static str,
    },
}

impl Diagnostic {
    /// Whether this is a failure worth the default log level (the others are debug detail).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Self::NoProposalMatch { .. }
                | Self::ProposalsRefused { .. }
                | Self::IdentityMismatch { .. }
                | Self::TsMismatch { .. }
        )
    }

    /// The tunnel it is about, if any.
    pub fn peer(&self) -> Option<PeerId> {
        match self {
            Self::NoProposalMatch { peer, .. }
            | Self::ProposalsRefused { peer, .. }
            | Self::IdentityMismatch { peer, .. }
            | Self::TsMismatch { peer, .. }
            | Self::TunnelChosen { peer, .. }
            | Self::TsNarrowed { peer, .. } => Some(*peer),
            Self::Dropped { .. } => None,
        }
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".to_owned()
    } else {
        v.join(", ")
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoProposalMatch {
                remote,
                kind,
                received,
                configured,
                ..
            } => write!(
                f,
                "no {} proposal matches: received from {remote}: {}; configured: {}",
                kind.name(),
                list(received),
                list(configured)
            ),
            Self::ProposalsRefused { kind, offered, .. } => write!(
                f,
                "the peer chose none of our {} proposals (NO_PROPOSAL_CHOSEN); offered: {}",
                kind.name(),
                list(offered)
            ),
            Self::IdentityMismatch {
                remote,
                received,
                expected,
                ..
            } => write!(
                f,
                "{remote} identifies as {received}; expected {}",
                if expected.is_empty() {
                    "(no tunnel)".to_owned()
                } else {
                    expected.join(" or ")
                }
            ),
            Self::TsMismatch {
                received,
                configured,
                ..
            } => write!(
                f,
                "traffic selectors do not meet: the peer proposed its side {} and ours {}; we have its side {} and ours {}",
                list(&received.0),
                list(&received.1),
                list(&configured.0),
                list(&configured.1)
            ),
            Self::TunnelChosen {
                remote,
                identity,
                candidates,
                ..
            } => write!(
                f,
                "tunnel chosen for {remote} identifying as {identity} ({candidates} tunnel(s) fit its address)"
            ),
            Self::TsNarrowed {
                local,
                remote,
                offered_local,
                offered_remote,
                ..
            } => {
                write!(
                    f,
                    "CHILD SA selectors: ours {} === theirs {}",
                    list(local),
                    list(remote)
                )?;
                if offered_local != local || offered_remote != remote {
                    write!(
                        f,
                        ", narrowed from ours {} === theirs {}",
                        list(offered_local),
                        list(offered_remote)
                    )?;
                }
                Ok(())
            }
            Self::Dropped { remote, why } => write!(f, "dropped a datagram from {remote}: {why}"),
        }
    }
}

/// A proposal as received, in strongSwan's notation; transforms we do not know are written as
/// `type/id` (for example `encr/1234`), so a log shows exactly what the peer sent.
pub fn wire_proposal(p: &Proposal) -> String {
    let mut parts = Vec::new();
    for t in &p.transforms {
        let known = match t.ty {
            TransformType::ENCR => Encr::from_id(EncrId(t.id), t.key_length()).map(|e| e.keyword()),
            TransformType::PRF => Prf::from_id(PrfId(t.id)).map(|e| e.keyword()),
            TransformType::INTEG if t.id == 0 => Some("none"),
            TransformType::INTEG => Integ::from_id(IntegId(t.id)).map(|e| e.keyword()),
            TransformType::DH if t.id == 0 => Some("none"),
            TransformType::DH => KeGroup::from_id(DhId(t.id)).map(|e| e.keyword()),
            TransformType::ESN => Esn::from_id(EsnId(t.id)).map(|e| e.keyword()),
            _ => None,
        };
        parts.push(known.map_or_else(
            || {
                let ty =
                    t.ty.name()
                        .map_or_else(|| t.ty.0.to_string(), str::to_lowercase);
                format!("{ty}/{}", t.id)
            },
            str::to_owned,
        ));
    }
    parts.join("-")
}

/// An ID payload as text: addresses and names as written, a DN as RFC 4514 text.
pub fn identification(id: &Identification) -> String {
    let d = id.data.as_slice();
    match id.id_type {
        IdType::IPV4_ADDR => <[u8; 4]>::try_from(d)
            .map(|a| IpAddr::from(Ipv4Addr::from(a)).to_string())
            .unwrap_or_else(|_| "(bad IPv4 identity)".to_owned()),
        IdType::IPV6_ADDR => <[u8; 16]>::try_from(d)
            .map(|a| IpAddr::from(Ipv6Addr::from(a)).to_string())
            .unwrap_or_else(|_| "(bad IPv6 identity)".to_owned()),
        IdType::FQDN => String::from_utf8_lossy(d).into_owned(),
        IdType::RFC822_ADDR => String::from_utf8_lossy(d).into_owned(),
        IdType::DER_ASN1_DN => crate::dn::text_of(d).map_or_else(
            || format!("DN ({} bytes, not parsable)", d.len()),
            |t| format!("\"{t}\""),
        ),
        other => format!("{other:?} ({} bytes)", d.len()),
    }
}

/// A configured identity as text (a DN as RFC 4514 text).
pub fn identity(id: &crate::config::Identity) -> String {
    match id {
        crate::config::Identity::DerDn(d) => crate::dn::text_of(d)
            .map_or_else(|| format!("DN ({} bytes)", d.len()), |t| format!("\"{t}\"")),
        other => format!("{other:?}"),
    }
}

/// Selectors as text.
pub fn selectors(ts: &[TsRange]) -> Vec<String> {
    ts.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::codec::ProtocolId;
    use crate::codec::Transform;

    #[test]
    fn wire_proposals_name_known_and_unknown_transforms() {
        let p = Proposal {
            number: 1,
            protocol: ProtocolId::IKE,
            spi: Vec::new(),
            transforms: vec![
                Transform::encr(EncrId(20), Some(256)),
                Transform::encr(EncrId(1234), None),
                Transform::prf(PrfId(5)),
                Transform::dh(DhId(31)),
                Transform::new(TransformType(6), 35),
                Transform::new(TransformType(200), 1),
            ],
        };
        assert_eq!(
            wire_proposal(&p),
            "aes256gcm16-encr/1234-prfsha256-x25519-addke1/35-200/1"
        );
    }

    #[test]
    fn identities_read_as_people_write_them() {
        assert_eq!(
            identification(&Identification::fqdn("gw.example")),
            "gw.example"
        );
        assert_eq!(
            identification(&Identification::ipv4("192.0.2.1".parse().unwrap())),
            "192.0.2.1"
        );
        let d = Diagnostic::IdentityMismatch {
            peer: PeerId(1),
            remote: "192.0.2.1:500".parse().unwrap(),
            received: "gw.example".into(),
            expected: vec!["a.example".into(), "b.example".into()],
        };
        assert!(d.is_failure());
        assert_eq!(
            d.to_string(),
            "192.0.2.1:500 identifies as gw.example; expected a.example or b.example"
        );
    }
}
