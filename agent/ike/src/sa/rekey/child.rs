//! CHILD SA rekeys (RFC 7296 §1.3.3, §2.8), new CHILD SAs as responder, and CHILD SA rekey
//! collisions (§2.8.1).

use core::time::Duration;

use super::{Refusal, lowest_nonce_in_first, retry_time};
use crate::codec::message::notifies;
use crate::codec::{
    ExchangeType, KeyExchange as KePayload, Nonce, Notify, NotifyType, Payload, ProtocolId, TsRange,
};
use crate::crypto::alg::KeGroup;
use crate::crypto::ke::KeyExchange;
use crate::event::ChildSaId;
use crate::reason::Reason;
use crate::sa::child::{self, ChildState};
use crate::sa::established::{self, Established, Next};
use crate::sa::ike_auth::Inner;
use crate::sa::{Common, Ctx, RequestKind};

/// Shortest wait before retrying a refused rekey (CHILD or IKE SA) whose hard expiry is near.
pub(super) const RETRY_FLOOR: Duration = Duration::from_millis(500);

/// What we offered in a CHILD SA request of ours, a rekey or a new one ([`super::create`]):
/// kept until the answer comes.
#[derive(Debug)]
pub(crate) struct Offer {
    pub spi_in: [u8; 4],
    pub ni: Vec<u8>,
    pub ke: Option<KeyExchange>,
}

/// Our CHILD SA rekey in flight.
#[derive(Debug)]
pub(crate) struct ChildRekeyOut {
    pub old: ChildSaId,
    pub offer: Offer,
    /// The peer rekeyed the same CHILD SA meanwhile and we answered: its (Ni, Nr).
    pub collision: Option<(Vec<u8>, Vec<u8>)>,
}

/// The kernel's soft expiry for the CHILD SA with `spi` (either direction): rekey it now.
pub(crate) fn soft_expire(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    spi: [u8; 4],
) -> Next {
    let Some(ch) = e
        .children
        .iter_mut()
        .find(|ch| ch.spi_in == spi || ch.spi_out == spi)
    else {
        return Next::Stay;
    };
    if ch.state != ChildState::Installed || ch.rekey_at.is_none() {
        return Next::Stay;
    }
    ch.rekey_at = None;
    e.queue.push_back(RequestKind::RekeyChild {
        old: ch.id,
        group: None,
    });
    established::flush(e, c, ctx)
}

fn pfs_group(c: &Common) -> Option<KeGroup> {
    c.cfg
        .esp_proposals
        .iter()
        .find_map(|p| p.ke.first().copied())
}

/// The body of a CHILD SA request of ours (RFC 7296 §1.3.1, §1.3.3): SA, Ni, [KEi], TSi, TSr,
/// with a key exchange in `group`, else in the first PFS group configured, else none. A rekey
/// puts N(REKEY_SA) in front and offers the selectors of the SA it replaces (`ts`); a new
/// CHILD SA sends it as is, with the configured selectors.
pub(super) fn offer(
    c: &Common,
    ctx: &mut Ctx<'_>,
    group: Option<KeGroup>,
    ts: Option<(&[TsRange], &[TsRange])>,
) -> Result<(Offer, Vec<Payload>), Reason> {
    let ke = match group.or_else(|| pfs_group(c)) {
        Some(g) => Some(KeyExchange::generate(g, &mut *ctx.rng).map_err(|_| Reason::LocalCrypto)?),
        None => None,
    };
    let spi_in = ctx.esp_spi(c.local.ip(), c.remote.ip());
    let ni = ctx.nonce();
    let [sa_p, tsi, tsr] = child::request_payloads(c, spi_in, ke.is_some(), ts);
    let mut payloads = vec![sa_p];
    payloads.extend(Nonce::new(ni.clone()).map(Payload::Nonce));
    if let Some(k) = &ke {
        payloads.push(Payload::KeyExchange(KePayload {
            group: k.group().id(),
            data: k.public_value().to_vec(),
        }));
    }
    payloads.push(tsi);
    payloads.push(tsr);
    Ok((Offer { spi_in, ni, ke }, payloads))
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
    // RFC 7296 §2.9.2: the new SA keeps the old one's selectors. Offering the configured ones
    // again would let a responder that narrowed the first time narrow differently now (its
    // configuration changed, or it picks among several), and traffic of the old selectors
    // would lose its SA.
    let (local_ts, remote_ts) = (ch.local_ts.clone(), ch.remote_ts.clone());
    let (offer, body) = offer(c, ctx, group, Some((&local_ts, &remote_ts)))?;
    let mut payloads = vec![Payload::Notify(Notify::for_child(
        NotifyType::REKEY_SA,
        ProtocolId::ESP,
        old_spi,
        Vec::new(),
    ))];
    payloads.extend(body);
    c.send_request(
        ctx,
        &e.keys,
        ExchangeType::CREATE_CHILD_SA,
        &payloads,
        RequestKind::RekeyChild { old, group },
    )?;
    e.child_rekey = Some(ChildRekeyOut {
        old,
        offer,
        collision: None,
    });
    Ok(())
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
pub(crate) fn on_child_response(
    e: &mut Established,
    c: &Common,
    ctx: &mut Ctx<'_>,
    payloads: &[Payload],
) {
    let Some(p) = e.child_rekey.take() else {
        return;
    };
    if let Some(n) = notifies(payloads).find(|n| n.ty.is_error()) {
        if n.ty == NotifyType::INVALID_KE_PAYLOAD {
            let wanted = n.requested_group().and_then(KeGroup::from_id);
            let offered = wanted.filter(|g| c.cfg.esp_proposals.iter().any(|x| x.ke.contains(g)));
            if let Some(g) = offered
                && p.offer.ke.as_ref().is_none_or(|k| k.group() != g)
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
        if n.ty == NotifyType::CHILD_SA_NOT_FOUND {
            // The peer no longer has it (its Delete was lost, or is still on its way): a new
            // CHILD SA takes its place.
            super::create::replace_lost(e, c, ctx, p.old);
            return;
        }
        let transient = n.ty == NotifyType::TEMPORARY_FAILURE;
        if !transient {
            child::failed(c, ctx, Reason::from_notify(n.ty));
        }
        retry_child_later(e, ctx, p.old, transient);
        return;
    }
    match complete(e, c, ctx, &p.offer, Some(p.old), payloads) {
        Ok(mut new) => {
            let lost = p.collision.as_ref().is_some_and(|(ni2, nr2)| {
                lowest_nonce_in_first((&p.offer.ni, nonce_of(payloads)), (ni2, nr2))
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
            child::failed(c, ctx, r);
            // The peer installed what it answered (no error came back): have it removed.
            e.queue
                .push_back(RequestKind::DeleteChild(vec![p.offer.spi_in]));
            if p.collision.is_none() {
                retry_child_later(e, ctx, p.old, false);
            }
        }
    }
}

pub(super) fn nonce_of(payloads: &[Payload]) -> &[u8] {
    Inner::of(payloads).nonce.map_or(&[], |n| n.as_bytes())
}

/// Checks the peer's answer to a CHILD SA request of ours (`offer`) and installs the CHILD SA
/// it creates (replacing `replaces`, for a rekey).
pub(super) fn complete(
    e: &Established,
    c: &Common,
    ctx: &mut Ctx<'_>,
    offer: &Offer,
    replaces: Option<ChildSaId>,
    payloads: &[Payload],
) -> Result<child::Child, Reason> {
    let inner = Inner::of(payloads);
    let (choice, spi_out, tsi, tsr) =
        child::accepted(c, inner.sa, inner.tsi, inner.tsr, offer.ke.is_some())?;
    let nr = inner.nonce.ok_or(Reason::InvalidSyntax)?.as_bytes();
    let shared = match (choice.ke, &offer.ke) {
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
        spi_in: offer.spi_in,
        spi_out,
        nonces: (&offer.ni, nr),
        g_ir: shared.as_ref().map(|s| s.as_bytes()),
        local_ts: tsi,
        remote_ts: tsr,
        replaces,
        exchange_initiator: true,
    };
    child::install(c, ctx, &e.keys, new)
}

pub(super) fn respond_child(
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
    let agreed = child::respond(c, ctx, inner.sa, inner.tsi, inner.tsr, false)?;
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
    let spi_in = ctx.esp_spi(c.local.ip(), c.remote.ip());
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
    let new_id = new.id;
    e.children.push(new);
    if old.is_none() {
        super::create::peer_created(e, new_id, &ni, &nr);
    }
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
