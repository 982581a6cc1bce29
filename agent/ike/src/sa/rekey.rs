//! CREATE_CHILD_SA (RFC 7296 §1.3): rekeying CHILD SAs (§1.3.3, §2.8) and the IKE SA itself
//! (§1.3.2, §2.18), additional CHILD SAs as responder, and the collision rules of §2.8.1,
//! §2.8.2 and §2.25.
//!
//! CHILD SA rekey, make-before-break: both ends install the new SA first
//! (`replaces: Some(old)`); the rekey initiator then sends Delete(ESP, old inbound SPI) and
//! reports the old SA gone when that Delete is answered; the responder reports it gone when
//! the Delete arrives.
//!
//! Collisions: when both ends rekey the same SA, each answers the other as usual and notes the
//! peer's nonces; once its own exchange completes, the exchange holding the lowest of the four
//! nonces created the redundant SA, which its initiator deletes, while the other initiator
//! deletes the old SA (§2.8.1, §2.8.2). A request that finds the SA being deleted, or a CHILD
//! SA request during an IKE rekey (and the reverse), gets TEMPORARY_FAILURE (§2.25) and the
//! requester retries after a random delay.

use core::time::Duration;
use std::time::Instant;

use super::child::{self, ChildState};
use super::established::Established;
use super::ike_auth::Inner;
use super::{Common, Ctx, IkeSa, Keys, RequestKind, Side, State, proposals};
use crate::codec::message::notifies;
use crate::codec::{
    Delete, ExchangeType, KeyExchange as KePayload, Nonce, Notify, NotifyType, Payload, ProtocolId,
    Spi,
};
use crate::crypto::alg::KeGroup;
use crate::crypto::kdf;
use crate::crypto::ke::KeyExchange;
use crate::crypto::sk::SkCipher;
use crate::event::{ChildSaId, Event, IkeSpis};
use crate::proposal::{IkeChoice, select_ike};
use crate::reason::Reason;
use crate::timers;
use crate::window::Window;

/// Shortest wait before retrying a rekey the peer refused for now (TEMPORARY_FAILURE).
const RETRY_MIN: Duration = Duration::from_secs(10);
/// Random extra wait on top of [`RETRY_MIN`], so both ends do not retry in lockstep.
const RETRY_JITTER_MS: u64 = 10_000;
/// Shortest wait before retrying a refused CHILD SA rekey whose hard expiry is near.
const RETRY_FLOOR: Duration = Duration::from_millis(500);

/// Our CHILD SA rekey in flight.
#[derive(Debug)]
pub(crate) struct ChildRekeyOut {
    pub old: ChildSaId,
    pub spi_in: [u8; 4],
    pub ni: Vec<u8>,
    pub ke: Option<KeyExchange>,
    /// The peer rekeyed the same CHILD SA meanwhile and we answered: its (Ni, Nr).
    pub collision: Option<(Vec<u8>, Vec<u8>)>,
}

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

/// RFC 7296 §2.8.1: whether the lowest of the four nonces belongs to the `first` exchange
/// (octet-wise comparison; a nonce that is a prefix of another is the lower, which is Rust's
/// slice order). Ties on the lowest fall back to the higher nonces, so both ends agree.
pub(crate) fn lowest_nonce_in_first(first: (&[u8], &[u8]), second: (&[u8], &[u8])) -> bool {
    lo_hi(first) < lo_hi(second)
}

fn lo_hi<'a>((a, b): (&'a [u8], &'a [u8])) -> (&'a [u8], &'a [u8]) {
    if a <= b { (a, b) } else { (b, a) }
}

/// When the IKE SA of `c` should be rekeyed, counted from now.
pub(crate) fn ike_rekey_time(c: &Common, ctx: &mut Ctx<'_>) -> Instant {
    let random = u64::from_be_bytes(ctx.random());
    ctx.now + timers::rekey_after(&c.cfg.ike_lifetime, random)
}

fn retry_time(ctx: &mut Ctx<'_>) -> Instant {
    let random = u64::from_be_bytes(ctx.random());
    ctx.now + RETRY_MIN + Duration::from_millis(random % RETRY_JITTER_MS)
}

/// Queues the rekeys whose time has come.
pub(crate) fn schedule(e: &mut Established, now: Instant) {
    for ch in &mut e.children {
        if ch.state == ChildState::Installed && ch.rekey_at.is_some_and(|t| now >= t) {
            ch.rekey_at = None;
            e.queue.push_back(RequestKind::RekeyChild {
                old: ch.id,
                group: None,
            });
        }
    }
    if e.ike_rekey_at.is_some_and(|t| now >= t) {
        e.ike_rekey_at = None;
        e.queue.push_back(RequestKind::RekeyIke { group: None });
    }
}

/// The kernel's soft expiry for the CHILD SA with `spi` (either direction): rekey it now.
pub(crate) fn soft_expire(sa: &mut IkeSa, ctx: &mut Ctx<'_>, spi: [u8; 4]) {
    let State::Established(e) = &mut sa.state else {
        return;
    };
    let Some(ch) = e
        .children
        .iter_mut()
        .find(|ch| ch.spi_in == spi || ch.spi_out == spi)
    else {
        return;
    };
    if ch.state != ChildState::Installed || ch.rekey_at.is_none() {
        return;
    }
    ch.rekey_at = None;
    e.queue.push_back(RequestKind::RekeyChild {
        old: ch.id,
        group: None,
    });
    super::established::flush_or_fail(sa, ctx);
}

fn pfs_group(c: &Common) -> Option<KeGroup> {
    c.cfg
        .esp_proposals
        .iter()
        .find_map(|p| p.ke.first().copied())
}

/// Sends our CHILD SA rekey request: N(REKEY_SA), SA, Ni, [KEi], TSi, TSr. Does nothing when
/// the CHILD SA is gone or no longer in use.
pub(crate) fn start_child(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    old: ChildSaId,
    group: Option<KeGroup>,
) -> Result<(), Reason> {
    let Some(ch) = e
        .children
        .iter()
        .find(|ch| ch.id == old && ch.state == ChildState::Installed)
    else {
        return Ok(());
    };
    let old_spi = ch.spi_in;
    let ke = match group.or_else(|| pfs_group(c)) {
        Some(g) => Some(KeyExchange::generate(g, &mut *ctx.rng).map_err(|_| Reason::LocalCrypto)?),
        None => None,
    };
    let spi_in = ctx.esp_spi();
    let ni = ctx.nonce();
    let [sa_p, tsi, tsr] = child::request_payloads(c, spi_in, ke.is_some());
    let mut payloads = vec![
        Payload::Notify(Notify::for_child(
            NotifyType::REKEY_SA,
            ProtocolId::ESP,
            old_spi,
            Vec::new(),
        )),
        sa_p,
    ];
    payloads.extend(Nonce::new(ni.clone()).map(Payload::Nonce));
    if let Some(k) = &ke {
        payloads.push(Payload::KeyExchange(KePayload {
            group: k.group().id(),
            data: k.public_value().to_vec(),
        }));
    }
    payloads.push(tsi);
    payloads.push(tsr);
    c.send_request(
        ctx,
        &e.keys,
        ExchangeType::CREATE_CHILD_SA,
        &payloads,
        RequestKind::RekeyChild { old, group },
    )?;
    e.child_rekey = Some(ChildRekeyOut {
        old,
        spi_in,
        ni,
        ke,
        collision: None,
    });
    Ok(())
}

fn child_failed(c: &Common, ctx: &mut Ctx<'_>, reason: Reason) {
    ctx.events.push_back(Event::ChildSaFailed {
        peer: c.peer,
        reason,
    });
}

/// Retries the rekey of `old` later, if it is still ours to rekey, after the usual random
/// delay. A `transient` refusal (TEMPORARY_FAILURE: an exchange in flight, done in a round
/// trip) is retried no later than halfway to the SA's hard expiry, when the kernel drops the
/// SA and its traffic with it; a lasting one (a proposal mismatch) is not hurried.
fn retry_child_later(e: &mut Established, ctx: &mut Ctx<'_>, old: ChildSaId, transient: bool) {
    let at = retry_time(ctx);
    let now = ctx.now;
    if let Some(ch) = e
        .children
        .iter_mut()
        .find(|ch| ch.id == old && ch.state == ChildState::Installed)
    {
        ch.rekey_at = Some(if transient {
            let halfway = now + ch.hard_at.saturating_duration_since(now) / 2;
            at.min(halfway).max(now + RETRY_FLOOR)
        } else {
            at
        });
    }
}

/// The answer to our CHILD SA rekey.
pub(crate) fn on_child_response(sa: &mut IkeSa, ctx: &mut Ctx<'_>, payloads: &[Payload]) {
    let State::Established(e) = &mut sa.state else {
        return;
    };
    let c = &sa.common;
    let Some(p) = e.child_rekey.take() else {
        return;
    };
    if let Some(n) = notifies(payloads).find(|n| n.ty.is_error()) {
        if n.ty == NotifyType::INVALID_KE_PAYLOAD {
            let wanted = n.requested_group().and_then(KeGroup::from_id);
            let offered = wanted.filter(|g| c.cfg.esp_proposals.iter().any(|x| x.ke.contains(g)));
            if let Some(g) = offered
                && p.ke.as_ref().is_none_or(|k| k.group() != g)
                && p.collision.is_none()
            {
                e.queue.push_front(RequestKind::RekeyChild {
                    old: p.old,
                    group: Some(g),
                });
                return;
            }
        }
        if p.collision.is_some() {
            // The peer's rekey of the same SA succeeded: it stands, the peer deletes the old.
            return;
        }
        let transient = n.ty == NotifyType::TEMPORARY_FAILURE;
        if !transient && n.ty != NotifyType::CHILD_SA_NOT_FOUND {
            child_failed(c, ctx, Reason::from_notify(n.ty));
        }
        retry_child_later(e, ctx, p.old, transient);
        return;
    }
    match complete_child(e, c, ctx, &p, payloads) {
        Ok(mut new) => {
            let lost = p.collision.as_ref().is_some_and(|(ni2, nr2)| {
                lowest_nonce_in_first((&p.ni, nonce_of(payloads)), (ni2, nr2))
            });
            if lost {
                // Ours is the redundant one: we made it, we delete it; the peer deletes the old.
                child::mark_redundant(ctx, new.id);
                new.state = ChildState::Deleting;
                new.rekey_at = None;
                e.queue
                    .push_back(RequestKind::DeleteChild(vec![new.spi_in]));
                e.children.push(new);
            } else {
                e.children.push(new);
                if let Some(old) = e
                    .children
                    .iter_mut()
                    .find(|ch| ch.id == p.old && ch.state != ChildState::Deleting)
                {
                    old.state = ChildState::Deleting;
                    old.rekey_at = None;
                    e.queue
                        .push_back(RequestKind::DeleteChild(vec![old.spi_in]));
                }
            }
        }
        Err(r) => {
            child_failed(c, ctx, r);
            // The peer installed what it answered (no error came back): have it removed.
            e.queue.push_back(RequestKind::DeleteChild(vec![p.spi_in]));
            if p.collision.is_none() {
                retry_child_later(e, ctx, p.old, false);
            }
        }
    }
}

fn nonce_of(payloads: &[Payload]) -> &[u8] {
    Inner::of(payloads).nonce.map_or(&[], |n| n.as_bytes())
}

fn complete_child(
    e: &Established,
    c: &Common,
    ctx: &mut Ctx<'_>,
    p: &ChildRekeyOut,
    payloads: &[Payload],
) -> Result<child::Child, Reason> {
    let inner = Inner::of(payloads);
    let (choice, spi_out, tsi, tsr) =
        child::accepted(c, inner.sa, inner.tsi, inner.tsr, p.ke.is_some())?;
    let nr = inner.nonce.ok_or(Reason::InvalidSyntax)?.as_bytes();
    let shared = match (choice.ke, &p.ke) {
        (None, _) => None,
        (Some(g), Some(ke)) if ke.group() == g => {
            let theirs = inner
                .ke
                .filter(|k| k.group == g.id())
                .ok_or(Reason::InvalidSyntax)?;
            Some(
                ke.compute_shared(&theirs.data)
                    .map_err(|_| Reason::InvalidSyntax)?,
            )
        }
        (Some(_), _) => return Err(Reason::NoProposalChosen),
    };
    let new = child::NewChild {
        choice,
        spi_in: p.spi_in,
        spi_out,
        nonces: (&p.ni, nr),
        g_ir: shared.as_ref().map(|s| s.as_bytes()),
        local_ts: tsi,
        remote_ts: tsr,
        replaces: Some(p.old),
        exchange_initiator: true,
    };
    child::install(c, ctx, &e.keys, new)
}

/// A CREATE_CHILD_SA request on an established IKE SA: a CHILD SA rekey, a new CHILD SA, or an
/// IKE SA rekey.
pub(crate) fn on_request(sa: &mut IkeSa, ctx: &mut Ctx<'_>, id: u32, payloads: &[Payload]) {
    let inner = Inner::of(payloads);
    let rekey = notifies(payloads).find(|n| n.ty == NotifyType::REKEY_SA);
    let ike = rekey.is_none()
        && inner.tsi.is_none()
        && inner
            .sa
            .and_then(|s| s.proposals.first())
            .is_some_and(|p| p.protocol == ProtocolId::IKE);
    if ike {
        on_ike_request(sa, ctx, id, payloads);
        return;
    }
    let State::Established(e) = &mut sa.state else {
        return;
    };
    let answer = match respond_child(e, &sa.common, ctx, rekey, &inner) {
        Ok(a) => a,
        Err(ty) => vec![Payload::Notify(match ty {
            Refusal::Notify(t) => Notify::empty(t),
            Refusal::InvalidKe(g) => Notify::invalid_ke(g.id()),
        })],
    };
    sa.common
        .send_response_or_drop(ctx, &e.keys, ExchangeType::CREATE_CHILD_SA, id, &answer);
}

/// Why a CREATE_CHILD_SA request is refused.
enum Refusal {
    Notify(NotifyType),
    InvalidKe(KeGroup),
}

impl From<NotifyType> for Refusal {
    fn from(t: NotifyType) -> Self {
        Self::Notify(t)
    }
}

fn respond_child(
    e: &mut Established,
    c: &Common,
    ctx: &mut Ctx<'_>,
    rekey: Option<&Notify>,
    inner: &Inner<'_>,
) -> Result<Vec<Payload>, Refusal> {
    if e.ike_rekey.is_some() {
        // §2.25.2: no CHILD SA work while we rekey the IKE SA.
        return Err(NotifyType::TEMPORARY_FAILURE.into());
    }
    let old = match rekey {
        Some(n) => {
            let spi: [u8; 4] = n
                .spi
                .as_slice()
                .try_into()
                .map_err(|_| NotifyType::INVALID_SYNTAX)?;
            let ch = e
                .children
                .iter()
                .find(|ch| ch.spi_out == spi)
                .ok_or(NotifyType::CHILD_SA_NOT_FOUND)?;
            if ch.state != ChildState::Installed {
                // §2.25.1: being deleted (or already replaced).
                return Err(NotifyType::TEMPORARY_FAILURE.into());
            }
            Some(ch.id)
        }
        None => None,
    };
    let agreed = child::respond(c, inner.sa, inner.tsi, inner.tsr, false)?;
    let ni = inner
        .nonce
        .ok_or(NotifyType::INVALID_SYNTAX)?
        .as_bytes()
        .to_vec();
    let (ke, shared) = match agreed.choice.ke {
        None => (None, None),
        Some(g) => {
            let theirs = inner
                .ke
                .filter(|k| k.group == g.id())
                .ok_or(Refusal::InvalidKe(g))?;
            let ke = KeyExchange::generate(g, &mut *ctx.rng)
                .map_err(|_| NotifyType::NO_PROPOSAL_CHOSEN)?;
            let shared = ke
                .compute_shared(&theirs.data)
                .map_err(|_| NotifyType::INVALID_SYNTAX)?;
            (Some(ke), Some(shared))
        }
    };
    let nr = ctx.nonce();
    let spi_in = ctx.esp_spi();
    let new = child::NewChild {
        choice: agreed.choice,
        spi_in,
        spi_out: agreed.spi_out,
        nonces: (&ni, &nr),
        g_ir: shared.as_ref().map(|s| s.as_bytes()),
        local_ts: agreed.tsr.clone(),
        remote_ts: agreed.tsi.clone(),
        replaces: old,
        exchange_initiator: false,
    };
    let new = child::install(c, ctx, &e.keys, new).map_err(|_| NotifyType::NO_PROPOSAL_CHOSEN)?;
    e.children.push(new);
    if let Some(old) = old {
        if let Some(ch) = e.children.iter_mut().find(|ch| ch.id == old) {
            ch.state = ChildState::Rekeyed;
            ch.rekey_at = None;
        }
        // Our own rekey of it: not needed if still queued; a collision if in flight.
        e.queue
            .retain(|r| !matches!(r, RequestKind::RekeyChild { old: o, .. } if *o == old));
        if let Some(p) = &mut e.child_rekey
            && p.old == old
        {
            p.collision = Some((ni, nr.clone()));
        }
    }
    let [sa_p, tsi, tsr] = child::answer_payloads(&agreed, spi_in);
    let mut out = vec![sa_p];
    out.extend(Nonce::new(nr).map(Payload::Nonce));
    if let Some(k) = ke {
        out.push(Payload::KeyExchange(KePayload {
            group: k.group().id(),
            data: k.public_value().to_vec(),
        }));
    }
    out.push(tsi);
    out.push(tsr);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// IKE SA rekey

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
        initial_contact: false,
        peer_fragmentation: old.peer_fragmentation,
        frags: Default::default(),
        remote_identity: old.remote_identity.clone(),
    };
    let mut e = Established::new(keys);
    e.ike_rekey_at = Some(ike_rekey_time(&c, ctx));
    IkeSa {
        common: c,
        state: State::Established(e),
    }
}

/// Moves the CHILD SAs (and the requests about them) of the old SA to `new`, reports the
/// rekey and hands `new` to the endpoint.
fn adopt(old_c: &Common, old_e: &mut Established, ctx: &mut Ctx<'_>, mut new: IkeSa) {
    if let State::Established(ne) = &mut new.state {
        ne.children.append(&mut old_e.children);
        ne.queue.extend(old_e.queue.drain(..).filter(|r| {
            matches!(
                r,
                RequestKind::DeleteChild(_) | RequestKind::RekeyChild { .. }
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
fn await_delete(sa: &mut IkeSa, ctx: &Ctx<'_>) {
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
fn delete_ike(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
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
fn on_ike_request(sa: &mut IkeSa, ctx: &mut Ctx<'_>, id: u32, payloads: &[Payload]) {
    let State::Established(e) = &mut sa.state else {
        return;
    };
    let busy = e.child_rekey.is_some()
        || e.children.iter().any(|ch| ch.state == ChildState::Deleting)
        || e.ike_rekey.as_ref().is_some_and(|p| p.collision.is_some());
    let answer = if busy {
        // §2.25.1: we are rekeying or closing a CHILD SA of this IKE SA.
        Err(Refusal::Notify(NotifyType::TEMPORARY_FAILURE))
    } else {
        answer_ike_rekey(e, &sa.common, ctx, payloads)
    };
    let (answer, new) = match answer {
        Ok((answer, new)) => (answer, Some(new)),
        Err(r) => (
            vec![Payload::Notify(match r {
                Refusal::Notify(t) => Notify::empty(t),
                Refusal::InvalidKe(g) => Notify::invalid_ke(g.id()),
            })],
            None,
        ),
    };
    let sent = sa
        .common
        .send_response(ctx, &e.keys, ExchangeType::CREATE_CHILD_SA, id, &answer);
    let Some((new, ni, nr)) = new else { return };
    if sent.is_err() {
        return;
    }
    match &mut e.ike_rekey {
        Some(p) => {
            // §2.8.2: both rekey at once; decided when our own exchange completes.
            p.collision = Some(IkeCollision {
                ni,
                nr,
                sa: Box::new(new),
            });
        }
        None => {
            adopt(&sa.common, e, ctx, new);
            // The rekey initiator deletes this one.
            await_delete(sa, ctx);
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
    let (idx, choice) =
        select_ike(&c.cfg.ike_proposals, &theirs, peer_ke).ok_or(NotifyType::NO_PROPOSAL_CHOSEN)?;
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
pub(crate) fn on_ike_response(sa: &mut IkeSa, ctx: &mut Ctx<'_>, payloads: &[Payload]) {
    let State::Established(e) = &mut sa.state else {
        return;
    };
    let Some(p) = e.ike_rekey.take() else {
        return;
    };
    let result = match notifies(payloads).find(|n| n.ty.is_error()) {
        Some(n) => Err(n.clone()),
        None => complete_ike(e, &sa.common, ctx, &p, payloads)
            .map_err(|_| Notify::empty(NotifyType::NO_PROPOSAL_CHOSEN)),
    };
    match (result, p.collision) {
        (Ok((ours, nr)), Some(col)) => {
            if lowest_nonce_in_first((&p.ni, &nr), (&col.ni, &col.nr)) {
                // We lost (§2.8.2): the peer's new SA survives and the peer deletes the old
                // one; we delete ours.
                adopt(&sa.common, e, ctx, *col.sa);
                let mut ours = ours;
                delete_ike(&mut ours, ctx);
                ctx.spawned.push(ours);
                await_delete(sa, ctx);
            } else {
                // We won: ours survives; the peer deletes the one it made; we delete the old.
                adopt(&sa.common, e, ctx, ours);
                let mut theirs = *col.sa;
                await_delete(&mut theirs, ctx);
                ctx.spawned.push(theirs);
                delete_ike(sa, ctx);
            }
        }
        (Ok((ours, _)), None) => {
            adopt(&sa.common, e, ctx, ours);
            delete_ike(sa, ctx);
        }
        (Err(_), Some(col)) => {
            // Ours failed but the peer's succeeded: that one stands; the peer deletes the old.
            adopt(&sa.common, e, ctx, *col.sa);
            await_delete(sa, ctx);
        }
        (Err(n), None) => {
            let wanted = n.requested_group().and_then(KeGroup::from_id);
            let offered = wanted.filter(|g| c_offers(&sa.common, *g));
            match offered {
                Some(g) if g != p.ke.group() => {
                    e.queue.push_front(RequestKind::RekeyIke { group: Some(g) });
                }
                _ => e.ike_rekey_at = Some(retry_time(ctx)),
            }
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
/// (a collision it resolved before us), the SA we made then carries on. Returns whether it
/// handled the request.
pub(crate) fn adopt_on_delete(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    exchange: ExchangeType,
    id: u32,
) -> bool {
    let State::Established(e) = &mut sa.state else {
        return false;
    };
    let Some(col) = e.ike_rekey.as_mut().and_then(|p| p.collision.take()) else {
        return false;
    };
    e.ike_rekey = None;
    sa.common
        .send_response_or_drop(ctx, &e.keys, exchange, id, &[]);
    sa.common.win.abandon();
    adopt(&sa.common, e, ctx, *col.sa);
    sa.close(ctx);
    true
}

/// A new request to an IKE SA that is going away (typically one replaced by a rekey that
/// waits for the peer's Delete): an INFORMATIONAL is acknowledged, and its Delete(IKE) ends
/// the wait; anything else gets TEMPORARY_FAILURE (§2.25).
pub(crate) fn closing_request(
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    keys: Keys,
    until: Instant,
    exchange: ExchangeType,
    id: u32,
    payloads: &[Payload],
) -> State {
    let delete_ike = payloads
        .iter()
        .any(|p| matches!(p, Payload::Delete(d) if d.protocol == ProtocolId::IKE));
    let answer = if exchange == ExchangeType::INFORMATIONAL {
        Vec::new()
    } else {
        vec![Payload::Notify(Notify::empty(
            NotifyType::TEMPORARY_FAILURE,
        ))]
    };
    c.send_response_or_drop(ctx, &keys, exchange, id, &answer);
    State::Closing {
        keys: Some(keys),
        until: if delete_ike {
            until.min(ctx.now)
        } else {
            until
        },
    }
}

#[cfg(test)]
mod tests {
    use super::lowest_nonce_in_first;

    #[test]
    fn lowest_of_four_nonces() {
        // The lowest is in the first exchange, whichever of its two it is.
        assert!(lowest_nonce_in_first((&[1, 9], &[5]), (&[2], &[3])));
        assert!(lowest_nonce_in_first((&[5], &[1, 9]), (&[2], &[3])));
        assert!(!lowest_nonce_in_first((&[5], &[4]), (&[3], &[9])));
        assert!(!lowest_nonce_in_first((&[5], &[4]), (&[9], &[3])));
        // Octet by octet, not as integers: a prefix is lower, a longer nonce is not higher.
        assert!(lowest_nonce_in_first((&[7, 0], &[9]), (&[7, 0, 0], &[9])));
        assert!(lowest_nonce_in_first((&[1, 255, 255], &[9]), (&[2], &[9])));
        // Both ends, each seeing its own exchange first, agree.
        type Pair<'a> = (&'a [u8], &'a [u8]);
        let a: Pair<'_> = (&[3, 3], &[8]);
        let b: Pair<'_> = (&[3, 4], &[0, 1]);
        assert_ne!(lowest_nonce_in_first(a, b), lowest_nonce_in_first(b, a));
        // An equal lowest falls back to the other nonce.
        assert!(lowest_nonce_in_first((&[1], &[2]), (&[1], &[3])));
        assert!(!lowest_nonce_in_first((&[1], &[3]), (&[1], &[2])));
    }
}
