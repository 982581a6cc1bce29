//! IKE SA rekeys (RFC 7296 §1.3.2, §2.18) and their collisions (§2.8.2, §2.25.2).

use core::time::Duration;

use super::{Refusal, lowest_nonce_in_first, retry_time};
use crate::codec::message::notifies;
use crate::codec::{
    Delete, ExchangeType, KeyExchange as KePayload, Nonce, Notify, NotifyType, Payload, Spi,
};
use crate::crypto::alg::KeGroup;
use crate::crypto::kdf;
use crate::crypto::ke::KeyExchange;
use crate::crypto::sk::SkCipher;
use crate::event::{Event, IkeSpis};
use crate::proposal::{IkeChoice, select_ike};
use crate::reason::Reason;
use crate::sa::child::ChildState;
use crate::sa::established::{Established, Next};
use crate::sa::ike_auth::Inner;
use crate::sa::{Common, Ctx, IkeSa, Keys, RequestKind, Side, State, proposals};
use crate::timers;
use crate::window::Window;

/// Our IKE SA rekey in flight.
#[derive(Debug)]
pub(crate) struct IkeRekeyOut {
    /// Our SPI of the new IKE SA (we are its initiator).
    pub spi: Spi,
    pub ni: Vec<u8>,
    pub ke: KeyExchange,
    /// The peer rekeyed this IKE SA meanwhile and we answered.
    pub collision: Option<IkeCollision>,
}

/// The IKE SA we created answering the peer's simultaneous rekey, held until ours completes.
#[derive(Debug)]
pub(crate) struct IkeCollision {
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub sa: Box<IkeSa>,
}

/// SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the old PRF, then the new SA's keys
/// with its own PRF (§2.18); `initiator`: we initiated the rekey (the new SA's initiator).
#[allow(clippy::too_many_arguments)]
fn rekeyed_keys(
    old: &Keys,
    choice: IkeChoice,
    shared: &[u8],
    ni: &[u8],
    nr: &[u8],
    spis: IkeSpis,
    initiator: bool,
) -> Result<Keys, Reason> {
    let seed = kdf::skeyseed_rekey(old.prf(), old.sk.sk_d.as_bytes(), shared, ni, nr);
    let sk = kdf::derive_ike_sa_keys(
        choice.prf,
        seed.as_bytes(),
        ni,
        nr,
        &spis.initiator.0,
        &spis.responder.0,
        choice.encr,
        choice.integ,
    )
    .map_err(|_| Reason::LocalCrypto)?;
    let (out, inbound) = SkCipher::pair(&sk, choice.encr, choice.integ, initiator)
        .map_err(|_| Reason::LocalCrypto)?;
    Ok(Keys {
        choice,
        sk,
        out,
        inbound,
    })
}

/// The new IKE SA (no CHILD SAs yet): same peer and path, message IDs from 0.
fn new_ike_sa(
    old: &Common,
    ctx: &mut Ctx<'_>,
    keys: Keys,
    spis: IkeSpis,
    initiator: bool,
) -> IkeSa {
    let c = Common {
        peer: old.peer,
        cfg: old.cfg.clone(),
        initiator,
        spi_i: spis.initiator,
        spi_r: spis.responder,
        local: old.local,
        remote: old.remote,
        nat: old.nat,
        win: Window::new(0, 0),
        last_heard: ctx.now,
        // a rekey continues the SA: its setup is the original one's
        started: old.started,
        last_sent: ctx.now,
        keepalive: ctx.cfg.nat_keepalive,
        initial_contact: false,
        peer_fragmentation: old.peer_fragmentation,
        frags: Default::default(),
        remote_identity: old.remote_identity.clone(),
    };
    let mut e = Established::new(keys, ctx.now);
    super::start_ike_timers(&mut e, &c, ctx);
    IkeSa {
        common: c,
        state: State::Established(e),
    }
}

/// Moves the CHILD SAs (and the requests about them) of the old SA to `new`, reports the
/// rekey and hands `new` to the endpoint.
fn adopt(old_c: &Common, old_e: &mut Established, ctx: &mut Ctx<'_>, mut new: IkeSa) {
    if let State::Established(ne) = &mut new.state {
        // a rekey keeps the keys' authentication: the reauthentication stays due when it was
        // (strongSwan carries the reauth time over too)
        ne.reauth_at = old_e.reauth_at.or(ne.reauth_at);
        ne.reauth_due = old_e.reauth_due;
        ne.single_pair = old_e.single_pair;
        ne.pairs_tried.append(&mut old_e.pairs_tried);
        ne.children.append(&mut old_e.children);
        ne.queue.extend(old_e.queue.drain(..).filter(|r| {
            matches!(
                r,
                RequestKind::DeleteChild(_)
                    | RequestKind::RekeyChild { .. }
                    | RequestKind::CreateChild { .. }
            )
        }));
        ctx.events.push_back(Event::IkeSaRekeyed {
            peer: old_c.peer,
            old: old_c.spis(),
            new: new.common.spis(),
            proposal: ne.keys.choice,
        });
    }
    ctx.spawned.push(new);
}

/// How long a replaced IKE SA waits for the peer's Delete (its whole retransmission budget).
fn linger(ctx: &Ctx<'_>) -> Duration {
    let cfg = &ctx.cfg.retransmit;
    (0..=timers::retransmit_tries(cfg))
        .map(|k| timers::retransmit_wait(cfg, k))
        .sum()
}

/// Turns an IKE SA into one waiting (until the linger time) for the peer's Delete.
pub(crate) fn await_delete(sa: &mut IkeSa, ctx: &Ctx<'_>) {
    let keys = match core::mem::replace(&mut sa.state, State::Gone) {
        State::Established(e) => Some(e.keys),
        State::Closing { keys, .. } => keys,
        _ => None,
    };
    sa.state = State::Closing {
        keys,
        until: ctx.now + linger(ctx),
    };
}

/// Sends Delete(IKE) on `sa` and lets it close when answered.
pub(crate) fn delete_ike(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let State::Established(e) = core::mem::replace(&mut sa.state, State::Gone) else {
        return;
    };
    sa.common.win.abandon();
    // The SA goes either way: a Delete we cannot build leaves the peer to delete it when its
    // own lifetime or DPD says so.
    let _ = sa.common.send_request(
        ctx,
        &e.keys,
        ExchangeType::INFORMATIONAL,
        &[Payload::Delete(Delete::ike())],
        RequestKind::DeleteIke,
    );
    sa.state = State::Closing {
        keys: Some(e.keys),
        until: ctx.now,
    };
}

/// Sends our IKE SA rekey request: SA (IKE, our new SPI), Ni, KEi.
pub(crate) fn start_ike(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    group: Option<KeGroup>,
) -> Result<(), Reason> {
    let g = group
        .or_else(|| {
            c.cfg
                .ike_proposals
                .iter()
                .find_map(|p| p.ke.first().copied())
        })
        // PeerConfig::validate wants a key exchange group in every IKE proposal.
        .ok_or(Reason::InternalError)?;
    let ke = KeyExchange::generate(g, &mut *ctx.rng).map_err(|_| Reason::LocalCrypto)?;
    let spi = ctx.ike_spi(Side::Initiator);
    let ni = ctx.nonce();
    let mut payloads = vec![Payload::Sa(proposals::ike_offer(
        &c.cfg.ike_proposals,
        &spi.0,
    ))];
    payloads.extend(Nonce::new(ni.clone()).map(Payload::Nonce));
    payloads.push(Payload::KeyExchange(KePayload {
        group: g.id(),
        data: ke.public_value().to_vec(),
    }));
    c.send_request(
        ctx,
        &e.keys,
        ExchangeType::CREATE_CHILD_SA,
        &payloads,
        RequestKind::RekeyIke { group },
    )?;
    e.ike_rekey = Some(IkeRekeyOut {
        spi,
        ni,
        ke,
        collision: None,
    });
    Ok(())
}

/// The peer's IKE SA rekey request.
pub(super) fn on_ike_request(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    id: u32,
    payloads: &[Payload],
) -> Next {
    let busy = e.child_rekey.is_some()
        || e.child_create.is_some()
        || e.children.iter().any(|ch| ch.state == ChildState::Deleting)
        || e.ike_rekey.as_ref().is_some_and(|p| p.collision.is_some());
    let answer = if busy {
        // §2.25.1: we are rekeying, creating or closing a CHILD SA of this IKE SA.
        Err(Refusal::Notify(NotifyType::TEMPORARY_FAILURE))
    } else {
        answer_ike_rekey(e, c, ctx, payloads)
    };
    let (answer, new) = match answer {
        Ok((answer, new)) => (answer, Some(new)),
        Err(r) => (vec![Payload::Notify(r.notify())], None),
    };
    let sent = c.send_response(ctx, &e.keys, ExchangeType::CREATE_CHILD_SA, id, &answer);
    let Some((new, ni, nr)) = new else {
        return Next::Stay;
    };
    if sent.is_err() {
        // The peer never hears of the new SA: dropped, as if we had refused.
        return Next::Stay;
    }
    match &mut e.ike_rekey {
        Some(p) => {
            // §2.8.2: both rekey at once; decided when our own exchange completes.
            p.collision = Some(IkeCollision {
                ni,
                nr,
                sa: Box::new(new),
            });
            Next::Stay
        }
        None => {
            adopt(c, e, ctx, new);
            // The rekey initiator deletes this one.
            Next::AwaitDelete
        }
    }
}

type IkeAnswer = (Vec<Payload>, (IkeSa, Vec<u8>, Vec<u8>));

fn answer_ike_rekey(
    e: &Established,
    c: &Common,
    ctx: &mut Ctx<'_>,
    payloads: &[Payload],
) -> Result<IkeAnswer, Refusal> {
    let inner = Inner::of(payloads);
    let (Some(sa_p), Some(nonce), Some(ke_p)) = (inner.sa, inner.nonce, inner.ke) else {
        return Err(NotifyType::INVALID_SYNTAX.into());
    };
    let theirs: Vec<_> = sa_p
        .proposals
        .iter()
        .map(|p| {
            proposals::ike_from_wire(p)
                .filter(|_| p.spi.len() == 8)
                .unwrap_or_else(|| crate::proposal::IkeProposal {
                    encr: Vec::new(),
                    prf: Vec::new(),
                    integ: Vec::new(),
                    ke: Vec::new(),
                })
        })
        .collect();
    let peer_ke = KeGroup::from_id(ke_p.group);
    let Some((idx, choice)) = select_ike(&c.cfg.ike_proposals, &theirs, peer_ke) else {
        ctx.diagnose(crate::diagnostic::Diagnostic::NoProposalMatch {
            peer: c.peer,
            remote: c.remote,
            kind: crate::diagnostic::SaKind::Ike,
            received: sa_p
                .proposals
                .iter()
                .map(crate::diagnostic::wire_proposal)
                .collect(),
            configured: c
                .cfg
                .ike_proposals
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
        return Err(NotifyType::NO_PROPOSAL_CHOSEN.into());
    };
    if Some(choice.ke) != peer_ke {
        return Err(Refusal::InvalidKe(choice.ke));
    }
    let prop = sa_p
        .proposals
        .get(idx)
        .ok_or(NotifyType::NO_PROPOSAL_CHOSEN)?;
    let spi_i: [u8; 8] = prop
        .spi
        .as_slice()
        .try_into()
        .map_err(|_| NotifyType::INVALID_SYNTAX)?;
    let ke = KeyExchange::generate(choice.ke, &mut *ctx.rng)
        .map_err(|_| NotifyType::NO_PROPOSAL_CHOSEN)?;
    let shared = ke
        .compute_shared(&ke_p.data)
        .map_err(|_| NotifyType::INVALID_SYNTAX)?;
    let nr = ctx.nonce();
    let ni = nonce.as_bytes().to_vec();
    let spis = IkeSpis {
        initiator: Spi(spi_i),
        responder: ctx.ike_spi(Side::Responder),
    };
    let keys = rekeyed_keys(&e.keys, choice, shared.as_bytes(), &ni, &nr, spis, false)
        .map_err(|_| NotifyType::NO_PROPOSAL_CHOSEN)?;
    let new = new_ike_sa(c, ctx, keys, spis, false);
    let mut out = vec![Payload::Sa(proposals::ike_answer(
        prop.number,
        &choice,
        &spis.responder.0,
    ))];
    out.extend(Nonce::new(nr.clone()).map(Payload::Nonce));
    out.push(Payload::KeyExchange(KePayload {
        group: choice.ke.id(),
        data: ke.public_value().to_vec(),
    }));
    Ok((out, (new, ni, nr)))
}

/// The answer to our IKE SA rekey.
pub(crate) fn on_ike_response(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    payloads: &[Payload],
) -> Next {
    let Some(p) = e.ike_rekey.take() else {
        return Next::Stay;
    };
    let result = match notifies(payloads).find(|n| n.ty.is_error()) {
        Some(n) => Err(n.clone()),
        None => complete_ike(e, c, ctx, &p, payloads)
            .map_err(|_| Notify::empty(NotifyType::NO_PROPOSAL_CHOSEN)),
    };
    match (result, p.collision) {
        (Ok((ours, nr)), Some(col)) => {
            if lowest_nonce_in_first((&p.ni, &nr), (&col.ni, &col.nr)) {
                // We lost (§2.8.2): the peer's new SA survives and the peer deletes the old
                // one; we delete ours.
                adopt(c, e, ctx, *col.sa);
                let mut ours = ours;
                delete_ike(&mut ours, ctx);
                ctx.spawned.push(ours);
                Next::AwaitDelete
            } else {
                // We won: ours survives; the peer deletes the one it made; we delete the old.
                adopt(c, e, ctx, ours);
                let mut theirs = *col.sa;
                await_delete(&mut theirs, ctx);
                ctx.spawned.push(theirs);
                Next::DeleteIke
            }
        }
        (Ok((ours, _)), None) => {
            adopt(c, e, ctx, ours);
            Next::DeleteIke
        }
        (Err(_), Some(col)) => {
            // Ours failed but the peer's succeeded: that one stands; the peer deletes the old.
            adopt(c, e, ctx, *col.sa);
            Next::AwaitDelete
        }
        (Err(n), None) => {
            let wanted = n.requested_group().and_then(KeGroup::from_id);
            let offered = wanted.filter(|g| c_offers(c, *g));
            match offered {
                Some(g) if g != p.ke.group() => {
                    e.queue.push_front(RequestKind::RekeyIke { group: Some(g) });
                }
                _ => {
                    // Retried before the hard lifetime would end the SA (a CHILD SA rekey in
                    // flight at the peer answers TEMPORARY_FAILURE, and its usual retry delay
                    // may outlast a short margin): at a random point between a quarter and half
                    // of the way there, so the two ends' retries do not meet again and again.
                    let at = retry_time(ctx);
                    let now = ctx.now;
                    let random = u64::from_be_bytes(ctx.random());
                    e.ike_rekey_at = Some(match e.ike_expires_at {
                        Some(hard) => {
                            let quarter = hard.saturating_duration_since(now) / 4;
                            let ms = u64::try_from(quarter.as_millis())
                                .unwrap_or(u64::MAX)
                                .max(1);
                            let soon = now + quarter + Duration::from_millis(random % ms);
                            at.min(soon).max(now + super::child::RETRY_FLOOR)
                        }
                        None => at,
                    });
                }
            }
            Next::Stay
        }
    }
}

fn c_offers(c: &Common, g: KeGroup) -> bool {
    c.cfg.ike_proposals.iter().any(|p| p.ke.contains(&g))
}

fn complete_ike(
    e: &Established,
    c: &Common,
    ctx: &mut Ctx<'_>,
    p: &IkeRekeyOut,
    payloads: &[Payload],
) -> Result<(IkeSa, Vec<u8>), Reason> {
    let inner = Inner::of(payloads);
    let (Some(sa_p), Some(nonce), Some(ke_p)) = (inner.sa, inner.nonce, inner.ke) else {
        return Err(Reason::InvalidSyntax);
    };
    let (choice, spi_r) =
        proposals::ike_accepted(sa_p, &c.cfg.ike_proposals).ok_or(Reason::NoProposalChosen)?;
    let spi_r: [u8; 8] = spi_r
        .as_slice()
        .try_into()
        .map_err(|_| Reason::InvalidSyntax)?;
    if choice.ke != p.ke.group() || ke_p.group != choice.ke.id() || spi_r == [0; 8] {
        return Err(Reason::NoProposalChosen);
    }
    let shared =
        p.ke.compute_shared(&ke_p.data)
            .map_err(|_| Reason::InvalidSyntax)?;
    let nr = nonce.as_bytes().to_vec();
    let spis = IkeSpis {
        initiator: p.spi,
        responder: Spi(spi_r),
    };
    let keys = rekeyed_keys(&e.keys, choice, shared.as_bytes(), &p.ni, &nr, spis, true)?;
    Ok((new_ike_sa(c, ctx, keys, spis, true), nr))
}

/// §2.25.2: the peer deletes the IKE SA we are rekeying. If we already answered its own rekey
/// (a collision it resolved before us), the SA we made then carries on. `None`: not such a
/// case, the request is not handled.
pub(crate) fn adopt_on_delete(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    exchange: ExchangeType,
    id: u32,
) -> Option<Next> {
    let col = e.ike_rekey.as_mut().and_then(|p| p.collision.take())?;
    e.ike_rekey = None;
    c.send_response_or_drop(ctx, &e.keys, exchange, id, &[]);
    c.win.abandon();
    adopt(c, e, ctx, *col.sa);
    Some(Next::Close)
}
