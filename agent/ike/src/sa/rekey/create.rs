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
use crate::codec::{ExchangeType, NotifyType, Payload, TsRange};
use crate::config::PeerConfig;
use crate::config::Role;
use crate::crypto::alg::KeGroup;
use crate::event::ChildSaId;
use crate::reason::Reason;
use crate::sa::child::{ChildState, mark_redundant};
use crate::sa::established::{Established, child_delete_event};
use crate::sa::{Common, Ctx, RequestKind};
use crate::ts;

/// Our new-CHILD-SA request in flight.
#[derive(Debug)]
pub(crate) struct ChildCreateOut {
    pub offer: Offer,
    /// The one subnet pair it offers (after SINGLE_PAIR_REQUIRED), or `None`: the tunnel's
    /// selectors.
    pub pair: Option<(TsRange, TsRange)>,
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

    /// Whether a CHILD SA is wanted: none is in use, or (after SINGLE_PAIR_REQUIRED) a subnet
    /// pair has none and was not refused yet on this IKE SA.
    pub fn needs_child(&self, cfg: &PeerConfig) -> bool {
        !self.has_child() || self.next_pair(cfg).is_some()
    }

    /// After SINGLE_PAIR_REQUIRED: the first (local subnet, remote subnet) pair of the
    /// tunnel that no CHILD SA in use covers and that was not tried on its own already.
    pub fn next_pair(&self, cfg: &PeerConfig) -> Option<(TsRange, TsRange)> {
        if !self.single_pair {
            return None;
        }
        let covered = |l: &TsRange, r: &TsRange| {
            self.children.iter().any(|ch| {
                ch.state == ChildState::Installed
                    && ch.local_ts.iter().any(|x| ts::within(l, x))
                    && ch.remote_ts.iter().any(|x| ts::within(r, x))
            })
        };
        cfg.local_ts.iter().find_map(|l| {
            cfg.remote_ts
                .iter()
                .find(|r| {
                    !covered(l, r) && !self.pairs_tried.iter().any(|(tl, tr)| tl == l && tr == *r)
                })
                .map(|r| (*l, *r))
        })
    }

    /// Queues a new CHILD SA request unless one is queued or in flight or none is needed.
    /// Returns whether it did. The caller flushes the queue.
    pub fn queue_create(&mut self, cfg: &PeerConfig) -> bool {
        if self.creating() || !self.needs_child(cfg) {
            return false;
        }
        self.queue
            .push_back(RequestKind::CreateChild { group: None });
        true
    }
}

/// Sends our new CHILD SA request: SA, Ni, [KEi], TSi, TSr (the tunnel's selectors, or after
/// SINGLE_PAIR_REQUIRED the next pair without a CHILD SA). Does nothing when none is needed by
/// now (the peer created one meanwhile).
pub(crate) fn start_create(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    group: Option<KeGroup>,
) -> Result<(), Reason> {
    if !e.needs_child(&c.cfg) {
        return Ok(());
    }
    let pair = e.next_pair(&c.cfg);
    let ts = pair
        .as_ref()
        .map(|(l, r)| (core::slice::from_ref(l), core::slice::from_ref(r)));
    let (offer, payloads) = child::offer(c, ctx, group, ts)?;
    c.send_request(
        ctx,
        &e.keys,
        ExchangeType::CREATE_CHILD_SA,
        &payloads,
        RequestKind::CreateChild { group },
    )?;
    e.child_create = Some(ChildCreateOut {
        offer,
        pair,
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
    if c.cfg.role != Role::Respond && !e.creating() && e.needs_child(&c.cfg) {
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
    if let Some(n) = notifies(payloads).find(|n| n.ty.is_error())
        && n.ty == NotifyType::SINGLE_PAIR_REQUIRED
        && p.pair.is_none()
        && !e.single_pair
    {
        // the peer takes one subnet pair per CHILD SA: offer them one by one
        e.single_pair = true;
        e.queue.push_front(RequestKind::CreateChild { group: None });
        return;
    }
    if let Some(n) = notifies(payloads).find(|n| n.ty.is_error()) {
        if let Some(pair) = p.pair {
            e.pairs_tried.push(pair);
        }
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
        if p.pair.is_some() && c.cfg.role != Role::Respond && e.next_pair(&c.cfg).is_some() {
            e.queue.push_back(RequestKind::CreateChild { group: None });
        }
        // With a collision, the peer's CHILD SA stands.
        return;
    }
    match child::complete(e, c, ctx, &p.offer, None, payloads) {
        Ok(mut new) => {
            let Some((theirs, ni2, nr2)) = p.collision else {
                e.children.push(new);
                if let Some(pair) = p.pair {
                    // narrowed to less than the pair: not offered again on this IKE SA
                    if e.next_pair(&c.cfg).as_ref() == Some(&pair) {
                        e.pairs_tried.push(pair);
                    }
                    if c.cfg.role != Role::Respond && e.next_pair(&c.cfg).is_some() {
                        e.queue.push_back(RequestKind::CreateChild { group: None });
                    }
                }
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
