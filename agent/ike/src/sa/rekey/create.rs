//! New CHILD SAs on an established IKE SA (RFC 7296 §1.3.1): a CREATE_CHILD_SA without
//! N(REKEY_SA), carrying SA, Ni, [KEi] (PFS, as the ESP proposals say), TSi and TSr from the
//! tunnel's configuration. Review R-1: without it an IKE SA whose CHILD SA failed in IKE_AUTH,
//! was deleted by the peer, expired, or was refused by the kernel stayed up with no CHILD SA,
//! kept alive by DPD and IKE rekeys, and never carried traffic again.
//!
//! When to create is the endpoint's call (its `maintain_children` step: a backoff timer for
//! `start` tunnels, an acquire for `onTraffic` ones, never for `respond` ones); this module
//! runs the exchange. The responder's side is [`super::child::respond_child`], shared with
//! rekeys.
//!
//! Simultaneous creation (both ends find the IKE SA without a CHILD SA and each sends a
//! request): as for a CHILD SA rekey collision (§2.8.1, which RFC 7296 defines for rekeys
//! only), the two SAs are told apart by the lowest of the four nonces. An end that answered the
//! peer's request while its own was in flight decides once its own completes: the exchange
//! holding the lowest nonce made the redundant SA, and that end deletes the redundant SA,
//! whichever of the two made it. When both ends saw the collision they delete the same SA
//! (crossing Deletes are fine, §1.4.1); when only one did (the other's request was lost and
//! retransmitted after its own completed), that one still deletes it. Either way one SA is
//! left.

use super::child::{self, Offer, nonce_of};
use super::lowest_nonce_in_first;
use crate::codec::message::notifies;
use crate::codec::{ExchangeType, NotifyType, Payload};
use crate::config::Role;
use crate::crypto::alg::KeGroup;
use crate::event::ChildSaId;
use crate::reason::Reason;
use crate::sa::child::{ChildState, mark_redundant};
use crate::sa::established::{Established, child_delete_event};
use crate::sa::{Common, Ctx, RequestKind};

/// Our new-CHILD-SA request in flight.
#[derive(Debug)]
pub(crate) struct ChildCreateOut {
    pub offer: Offer,
    /// The peer created a CHILD SA meanwhile and we answered: that SA and its (Ni, Nr).
    pub collision: Option<(ChildSaId, Vec<u8>, Vec<u8>)>,
}

impl Established {
    /// Whether a CHILD SA in use (not replaced, not being deleted) exists.
    pub fn has_child(&self) -> bool {
        self.children
            .iter()
            .any(|ch| ch.state == ChildState::Installed)
    }

    /// Whether a new CHILD SA of ours is queued or in flight.
    pub fn creating(&self) -> bool {
        self.child_create.is_some()
            || self
                .queue
                .iter()
                .any(|r| matches!(r, RequestKind::CreateChild { .. }))
    }

    /// Queues a new CHILD SA request unless one is queued or in flight or a CHILD SA is in
    /// use. Returns whether it did. The caller flushes the queue.
    pub fn queue_create(&mut self) -> bool {
        if self.creating() || self.has_child() {
            return false;
        }
        self.queue
            .push_back(RequestKind::CreateChild { group: None });
        true
    }
}

/// Sends our new CHILD SA request: SA, Ni, [KEi], TSi, TSr. Does nothing when a CHILD SA is in
/// use by now (the peer created one meanwhile).
pub(crate) fn start_create(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    group: Option<KeGroup>,
) -> Result<(), Reason> {
    if e.has_child() {
        return Ok(());
    }
    let (offer, payloads) = child::offer(c, ctx, group, None)?;
    c.send_request(
        ctx,
        &e.keys,
        ExchangeType::CREATE_CHILD_SA,
        &payloads,
        RequestKind::CreateChild { group },
    )?;
    e.child_create = Some(ChildCreateOut {
        offer,
        collision: None,
    });
    Ok(())
}

/// We answered the peer's new CHILD SA request (`id`, with nonces `ni`, `nr`): one of ours that
/// is queued is not needed any more; one in flight collides with it.
pub(super) fn peer_created(e: &mut Established, id: ChildSaId, ni: &[u8], nr: &[u8]) {
    e.queue
        .retain(|r| !matches!(r, RequestKind::CreateChild { .. }));
    if let Some(p) = &mut e.child_create
        && p.collision.is_none()
    {
        p.collision = Some((id, ni.to_vec(), nr.to_vec()));
    }
}

/// The peer answered CHILD_SA_NOT_FOUND to our rekey of `old`: it is gone there, so it goes
/// here too (no Delete: the peer has nothing to delete), and a new CHILD SA is created in its
/// place at once if none is left, unless the tunnel only answers.
pub(crate) fn replace_lost(e: &mut Established, c: &Common, ctx: &mut Ctx<'_>, old: ChildSaId) {
    if let Some(pos) = e.children.iter().position(|ch| ch.id == old) {
        let ch = e.children.remove(pos);
        ctx.events.push_back(child_delete_event(c, &ch));
    }
    if c.cfg.role != Role::Respond && !e.creating() && !e.has_child() {
        e.queue.push_front(RequestKind::CreateChild { group: None });
    }
}

/// The answer to our new CHILD SA request. A refusal is reported ([`crate::Event::ChildSaFailed`],
/// except TEMPORARY_FAILURE) and left to the endpoint's retry schedule.
pub(crate) fn on_create_response(
    e: &mut Established,
    c: &Common,
    ctx: &mut Ctx<'_>,
    payloads: &[Payload],
) {
    let Some(p) = e.child_create.take() else {
        return;
    };
    if let Some(n) = notifies(payloads).find(|n| n.ty.is_error()) {
        if n.ty == NotifyType::INVALID_KE_PAYLOAD && p.collision.is_none() {
            let wanted = n.requested_group().and_then(KeGroup::from_id);
            let offered = wanted.filter(|g| c.cfg.esp_proposals.iter().any(|x| x.ke.contains(g)));
            if let Some(g) = offered
                && p.offer.ke.as_ref().is_none_or(|k| k.group() != g)
            {
                e.queue
                    .push_front(RequestKind::CreateChild { group: Some(g) });
                return;
            }
        }
        if p.collision.is_none() && n.ty != NotifyType::TEMPORARY_FAILURE {
            crate::sa::child::failed(c, ctx, Reason::from_notify(n.ty));
        }
        // With a collision, the peer's CHILD SA stands.
        return;
    }
    match child::complete(e, c, ctx, &p.offer, None, payloads) {
        Ok(mut new) => {
            let Some((theirs, ni2, nr2)) = p.collision else {
                e.children.push(new);
                return;
            };
            let ours_redundant =
                lowest_nonce_in_first((&p.offer.ni, nonce_of(payloads)), (&ni2, &nr2));
            if ours_redundant {
                mark_redundant(ctx, new.id);
                new.state = ChildState::Deleting;
                new.rekey_at = None;
                e.queue
                    .push_back(RequestKind::DeleteChild(vec![new.spi_in]));
                e.children.push(new);
            } else {
                e.children.push(new);
                if let Some(ch) = e
                    .children
                    .iter_mut()
                    .find(|ch| ch.id == theirs && ch.state == ChildState::Installed)
                {
                    ch.state = ChildState::Deleting;
                    ch.rekey_at = None;
                    e.queue.push_back(RequestKind::DeleteChild(vec![ch.spi_in]));
                }
            }
        }
        Err(r) => {
            crate::sa::child::failed(c, ctx, r);
            // The peer installed what it answered (no error came back): have it removed.
            e.queue
                .push_back(RequestKind::DeleteChild(vec![p.offer.spi_in]));
        }
    }
}
