//! Typed proposals ([`crate::proposal`]) on the wire: the SA payloads we offer and answer with,
//! and reading the peer's. (Apart from `proposal.rs`, which knows nothing of the wire format:
//! configuration strings and selection only.)

use crate::codec::{
    DhId, EncrId, EsnId, IntegId, PrfId, Proposal, ProtocolId, Sa, Transform, TransformAttrType,
    TransformType,
};
use crate::crypto::alg::{Encr, Esn, Integ, KeGroup, Prf};
use crate::proposal::{EspChoice, EspProposal, IkeChoice, IkeProposal};

fn encr_transforms(encr: &[Encr]) -> impl Iterator<Item = Transform> + '_ {
    encr.iter()
        .map(|e| Transform::encr(e.id(), Some(e.key_length_attr())))
}

/// Our IKE SA payload: proposals numbered from 1, with `spi` (empty in IKE_SA_INIT, the new
/// 8-byte SPI when rekeying).
pub fn ike_offer(ours: &[IkeProposal], spi: &[u8]) -> Sa {
    let proposals = ours
        .iter()
        .zip(1u8..)
        .map(|(p, number)| {
            let mut transforms: Vec<Transform> = encr_transforms(&p.encr).collect();
            transforms.extend(p.prf.iter().map(|x| Transform::prf(x.id())));
            transforms.extend(p.integ.iter().map(|x| Transform::integ(x.id())));
            transforms.extend(p.ke.iter().map(|x| Transform::dh(x.id())));
            Proposal {
                number,
                protocol: ProtocolId::IKE,
                spi: spi.to_vec(),
                transforms,
            }
        })
        .collect();
    Sa { proposals }
}

/// Our ESP SA payload with inbound SPI `spi`. `with_ke` adds the PFS groups (CREATE_CHILD_SA);
/// IKE_AUTH leaves them out, as strongSwan does.
pub fn esp_offer(ours: &[EspProposal], spi: [u8; 4], with_ke: bool) -> Sa {
    let proposals = ours
        .iter()
        .zip(1u8..)
        .map(|(p, number)| {
            let mut transforms: Vec<Transform> = encr_transforms(&p.encr).collect();
            transforms.extend(p.integ.iter().map(|x| Transform::integ(x.id())));
            if with_ke {
                transforms.extend(p.ke.iter().map(|x| Transform::dh(x.id())));
            }
            if p.esn.is_empty() {
                transforms.push(Transform::esn(EsnId::NO_ESN));
            } else {
                transforms.extend(p.esn.iter().map(|x| Transform::esn(x.id())));
            }
            Proposal {
                number,
                protocol: ProtocolId::ESP,
                spi: spi.to_vec(),
                transforms,
            }
        })
        .collect();
    Sa { proposals }
}

/// The transforms of `ty` we could use. RFC 7296 §3.3.6: a transform with an attribute we do not
/// understand is unacceptable (Key Length is the only one defined); others of its type still count.
fn usable(p: &Proposal, ty: TransformType) -> impl Iterator<Item = &Transform> {
    p.transforms_of(ty).filter(|t| {
        t.attributes
            .iter()
            .all(|a| a.ty == TransformAttrType::KEY_LENGTH)
    })
}

/// RFC 7296 §3.3.6: a proposal with a transform type we do not understand is unacceptable,
/// however its other transforms read. That includes RFC 9370's additional key exchanges
/// (ADDKE1..7), which we do not implement: answering as if they were absent would drop a
/// transform the peer may require.
fn has_type_beyond(p: &Proposal, understood: &[TransformType]) -> bool {
    p.transforms.iter().any(|t| !understood.contains(&t.ty))
}

fn encr_of(p: &Proposal) -> Vec<Encr> {
    usable(p, TransformType::ENCR)
        .filter_map(|t| Encr::from_id(EncrId(t.id), t.key_length()))
        .collect()
}

fn integ_of(p: &Proposal) -> Vec<Integ> {
    usable(p, TransformType::INTEG)
        .filter_map(|t| Integ::from_id(IntegId(t.id)))
        .collect()
}

fn ke_of(p: &Proposal) -> Vec<KeGroup> {
    usable(p, TransformType::DH)
        .filter_map(|t| KeGroup::from_id(DhId(t.id)))
        .collect()
}

fn has_unknown_of(p: &Proposal, ty: TransformType, known: usize) -> bool {
    // A type listed only with values we do not support must not match "absent".
    p.transforms_of(ty)
        .filter(|t| !(ty == TransformType::INTEG && t.id == IntegId::NONE.0))
        .filter(|t| !(ty == TransformType::DH && t.id == DhId::NONE.0))
        .count()
        > 0
        && known == 0
}

/// The peer's IKE proposal in typed form (unsupported transforms dropped), or `None` when it is
/// not an IKE proposal or lists a transform type only with values we cannot use.
pub fn ike_from_wire(p: &Proposal) -> Option<IkeProposal> {
    use TransformType as T;
    if p.protocol != ProtocolId::IKE || has_type_beyond(p, &[T::ENCR, T::PRF, T::INTEG, T::DH]) {
        return None;
    }
    let out = IkeProposal {
        encr: encr_of(p),
        prf: usable(p, TransformType::PRF)
            .filter_map(|t| Prf::from_id(PrfId(t.id)))
            .collect(),
        integ: integ_of(p),
        ke: ke_of(p),
    };
    if has_unknown_of(p, TransformType::INTEG, out.integ.len()) {
        return None;
    }
    Some(out)
}

/// The peer's ESP proposal in typed form, with its SPI.
pub fn esp_from_wire(p: &Proposal) -> Option<(EspProposal, [u8; 4])> {
    use TransformType as T;
    if p.protocol != ProtocolId::ESP || has_type_beyond(p, &[T::ENCR, T::INTEG, T::DH, T::ESN]) {
        return None;
    }
    let spi: [u8; 4] = p.spi.as_slice().try_into().ok()?;
    let out = EspProposal {
        encr: encr_of(p),
        integ: integ_of(p),
        ke: ke_of(p),
        esn: usable(p, TransformType::ESN)
            .filter_map(|t| Esn::from_id(EsnId(t.id)))
            .collect(),
    };
    if has_unknown_of(p, TransformType::INTEG, out.integ.len())
        || has_unknown_of(p, TransformType::DH, out.ke.len())
    {
        return None;
    }
    Some((out, spi))
}

/// The responder's answer: the chosen IKE transforms under the initiator's proposal number.
pub fn ike_answer(number: u8, c: &IkeChoice, spi: &[u8]) -> Sa {
    let mut transforms = vec![
        Transform::encr(c.encr.id(), Some(c.encr.key_length_attr())),
        Transform::prf(c.prf.id()),
    ];
    if let Some(i) = c.integ {
        transforms.push(Transform::integ(i.id()));
    }
    transforms.push(Transform::dh(c.ke.id()));
    Sa {
        proposals: vec![Proposal {
            number,
            protocol: ProtocolId::IKE,
            spi: spi.to_vec(),
            transforms,
        }],
    }
}

/// The responder's answer for a CHILD SA with its inbound SPI.
pub fn esp_answer(number: u8, c: &EspChoice, spi: [u8; 4]) -> Sa {
    let mut transforms = vec![Transform::encr(c.encr.id(), Some(c.encr.key_length_attr()))];
    if let Some(i) = c.integ {
        transforms.push(Transform::integ(i.id()));
    }
    if let Some(g) = c.ke {
        transforms.push(Transform::dh(g.id()));
    }
    transforms.push(Transform::esn(c.esn.id()));
    Sa {
        proposals: vec![Proposal {
            number,
            protocol: ProtocolId::ESP,
            spi: spi.to_vec(),
            transforms,
        }],
    }
}

fn exactly_one<T: Copy>(v: &[T]) -> Option<T> {
    match v {
        [x] => Some(*x),
        _ => None,
    }
}

/// Reads the responder's IKE answer: one proposal, one transform of each type, all of which we
/// offered together in one of `ours`. Returns the choice and the proposal's SPI.
pub fn ike_accepted(sa: &Sa, ours: &[IkeProposal]) -> Option<(IkeChoice, Vec<u8>)> {
    let [p] = sa.proposals.as_slice() else {
        return None;
    };
    let t = ike_from_wire(p)?;
    if p.transforms.len() != t.encr.len() + t.prf.len() + t.integ.len() + t.ke.len() {
        return None;
    }
    let c = IkeChoice {
        encr: exactly_one(&t.encr)?,
        prf: exactly_one(&t.prf)?,
        integ: match t.integ.as_slice() {
            [] => None,
            [i] => Some(*i),
            _ => return None,
        },
        ke: exactly_one(&t.ke)?,
    };
    if c.encr.is_aead() != c.integ.is_none() {
        return None;
    }
    let offered = ours.iter().any(|o| {
        o.encr.contains(&c.encr)
            && o.prf.contains(&c.prf)
            && o.ke.contains(&c.ke)
            && c.integ.is_none_or(|i| o.integ.contains(&i))
    });
    offered.then(|| (c, p.spi.clone()))
}

/// Reads the responder's ESP answer likewise; `with_ke` says whether a PFS group was offered.
pub fn esp_accepted(sa: &Sa, ours: &[EspProposal], with_ke: bool) -> Option<(EspChoice, [u8; 4])> {
    let [p] = sa.proposals.as_slice() else {
        return None;
    };
    let (t, spi) = esp_from_wire(p)?;
    if p.transforms.len() != t.encr.len() + t.integ.len() + t.ke.len() + t.esn.len() {
        return None;
    }
    let c = EspChoice {
        encr: exactly_one(&t.encr)?,
        integ: match t.integ.as_slice() {
            [] => None,
            [i] => Some(*i),
            _ => return None,
        },
        ke: match t.ke.as_slice() {
            [] => None,
            [g] if with_ke => Some(*g),
            _ => return None,
        },
        esn: match t.esn.as_slice() {
            [] => Esn::No,
            [e] => *e,
            _ => return None,
        },
    };
    if c.encr.is_aead() != c.integ.is_none() {
        return None;
    }
    let offered = ours.iter().any(|o| {
        o.encr.contains(&c.encr)
            && c.integ.is_none_or(|i| o.integ.contains(&i))
            && (if with_ke {
                match c.ke {
                    Some(g) => o.ke.contains(&g),
                    None => o.ke.is_empty(),
                }
            } else {
                true
            })
            && (o.esn.contains(&c.esn) || (o.esn.is_empty() && c.esn == Esn::No))
    });
    offered.then_some((c, spi))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proposal::{select_esp, select_ike};

    /// RFC 7296 §3.3.6 and review finding I-5: an RFC 9370 ADDKE (here ML-KEM-768, type 6 id 36)
    /// makes the proposal unacceptable, so the responder picks another or says
    /// NO_PROPOSAL_CHOSEN instead of answering without a transform the peer may require.
    #[test]
    fn a_transform_type_we_do_not_understand_makes_the_proposal_unacceptable() {
        let ours: Vec<IkeProposal> = vec!["aes256gcm16-prfsha384-x25519".parse().unwrap()];
        let mut sa = ike_offer(&ours, &[]);
        assert!(ike_from_wire(&sa.proposals[0]).is_some());
        sa.proposals[0]
            .transforms
            .push(Transform::new(TransformType::ADDKE1, 36));
        assert!(ike_from_wire(&sa.proposals[0]).is_none());
        // so is a type nobody has defined yet, in ESP too
        let esp: Vec<EspProposal> = vec!["aes256gcm16".parse().unwrap()];
        let mut offer = esp_offer(&esp, [1, 2, 3, 4], true);
        assert!(esp_from_wire(&offer.proposals[0]).is_some());
        offer.proposals[0]
            .transforms
            .push(Transform::new(TransformType(200), 1));
        assert!(esp_from_wire(&offer.proposals[0]).is_none());
        // a type of IKE's that has no place in ESP's proposals (PRF) is not understood there
        let mut offer = esp_offer(&esp, [1, 2, 3, 4], false);
        offer.proposals[0]
            .transforms
            .push(Transform::prf(Prf::HmacSha256.id()));
        assert!(esp_from_wire(&offer.proposals[0]).is_none());
    }

    /// A transform with an attribute we do not understand is unacceptable; the other
    /// transforms of its type still count.
    #[test]
    fn a_transform_with_an_unknown_attribute_is_skipped() {
        use crate::codec::{AttrValue, TransformAttr};
        let ours: Vec<IkeProposal> =
            vec!["aes256gcm16-aes128gcm16-prfsha384-x25519".parse().unwrap()];
        let mut sa = ike_offer(&ours, &[]);
        let first = sa.proposals[0]
            .transforms
            .iter_mut()
            .find(|t| t.ty == TransformType::ENCR)
            .unwrap();
        first.attributes.push(TransformAttr {
            ty: TransformAttrType(99),
            value: AttrValue::Short(1),
        });
        let read = ike_from_wire(&sa.proposals[0]).unwrap();
        assert_eq!(read.encr, ours[0].encr[1..].to_vec());
    }

    #[test]
    fn offer_select_answer_accept_round_trip() {
        let ours: Vec<IkeProposal> = vec![
            "aes256gcm16-prfsha384-x25519".parse().unwrap(),
            "aes256-sha256-modp3072".parse().unwrap(),
        ];
        let sa = ike_offer(&ours, &[]);
        assert_eq!(sa.proposals.len(), 2);
        assert_eq!(sa.proposals[1].number, 2);
        let theirs: Vec<IkeProposal> = sa.proposals.iter().filter_map(ike_from_wire).collect();
        assert_eq!(theirs, ours);
        let (idx, c) = select_ike(&ours[1..], &theirs, None).unwrap();
        assert_eq!(idx, 1);
        let ans = ike_answer(2, &c, &[]);
        assert_eq!(ike_accepted(&ans, &ours).unwrap().0, c);
        // Something we never offered is refused.
        let other: Vec<IkeProposal> = vec!["aes128gcm16-prfsha256-ecp256".parse().unwrap()];
        let (_, c2) = select_ike(&other, &other, None).unwrap();
        assert!(ike_accepted(&ike_answer(1, &c2, &[]), &ours).is_none());
        // Two proposals in an answer are refused.
        assert!(ike_accepted(&sa, &ours).is_none());

        let esp: Vec<EspProposal> = vec!["aes256gcm16-x25519".parse().unwrap()];
        let offer = esp_offer(&esp, [1, 2, 3, 4], false);
        assert!(
            offer.proposals[0]
                .transforms_of(TransformType::DH)
                .next()
                .is_none()
        );
        let theirs: Vec<EspProposal> = offer
            .proposals
            .iter()
            .filter_map(|p| esp_from_wire(p).map(|x| x.0))
            .collect();
        let (_, c) = select_esp(&esp, &theirs, true).unwrap();
        let (got, spi) = esp_accepted(&esp_answer(1, &c, [5, 6, 7, 8]), &esp, false).unwrap();
        assert_eq!((got, spi), (c, [5, 6, 7, 8]));
        let pfs = esp_offer(&esp, [1, 2, 3, 4], true);
        let theirs: Vec<EspProposal> = pfs
            .proposals
            .iter()
            .filter_map(|p| esp_from_wire(p).map(|x| x.0))
            .collect();
        let (_, c) = select_esp(&esp, &theirs, false).unwrap();
        assert_eq!(c.ke, Some(KeGroup::Curve25519));
        assert!(esp_accepted(&esp_answer(1, &c, [5, 6, 7, 8]), &esp, true).is_some());
    }
}
