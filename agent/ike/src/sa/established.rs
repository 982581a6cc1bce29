//! An established IKE SA: its CHILD SAs, the queue of requests waiting for the window, and
//! dead peer detection.

use std::collections::VecDeque;
use std::time::Instant;

use super::child::{Child, ChildState};
use super::rekey::{self, ChildCreateOut, ChildRekeyOut, IkeRekeyOut};
use super::{Common, Ctx, IkeSa, Keys, RequestKind, State};
use crate::codec::{Delete, ExchangeType, Payload, ProtocolId, TsRange};
use crate::config::EndpointConfig;
use crate::event::{EspSpi, Event};
use crate::reason::Reason;

/// The established state.
#[derive(Debug)]
pub(crate) struct Established {
    pub keys: Keys,
    /// When it was established (for a resumed SA: when it was loaded).
    pub since: Instant,
    pub children: Vec<Child>,
    /// Requests waiting for the window (one outstanding at a time).
    pub queue: VecDeque<RequestKind>,
    /// The peer sent INITIAL_CONTACT: the endpoint drops older IKE SAs with it.
    pub initial_contact: bool,
    /// Our CHILD SA rekey in flight.
    pub child_rekey: Option<ChildRekeyOut>,
    /// Our new (non-rekey) CHILD SA request in flight.
    pub child_create: Option<ChildCreateOut>,
    /// Our IKE SA rekey in flight.
    pub ike_rekey: Option<IkeRekeyOut>,
    /// When to rekey the IKE SA; `None` while a rekey is queued or running.
    pub ike_rekey_at: Option<Instant>,
    /// The IKE SA's hard lifetime: not rekeyed by then, it is deleted (`None`: resumed from
    /// a saved state that did not record it).
    pub ike_expires_at: Option<Instant>,
    /// When the tunnel reauthenticates from this IKE SA (`PeerConfig::reauth_time`).
    pub reauth_at: Option<Instant>,
    /// An SA we answered IKE_AUTH for: until then our answer may still be on its way (or
    /// lost), so it is not yet taken as one the peer holds, for `Endpoint::drop_duplicate`;
    /// anything heard on it since settles it sooner ([`Established::settled`]).
    pub settle_at: Option<Instant>,
    /// That time has come: the endpoint starts the new IKE SA ([`crate::Endpoint`]'s
    /// `with_sa`), as it acts on `initial_contact`.
    pub reauth_due: bool,
    /// The peer answered SINGLE_PAIR_REQUIRED (RFC 7296 §3.10.1): our CHILD SAs are created
    /// one per (local subnet, remote subnet) pair ([`super::rekey::create`]).
    pub single_pair: bool,
    /// Pairs offered on their own that the peer refused or narrowed to less: not offered again
    /// on this IKE SA.
    pub pairs_tried: Vec<(TsRange, TsRange)>,
}

impl Established {
    pub fn new(keys: Keys, since: Instant) -> Self {
        Self {
            keys,
            since,
            children: Vec::new(),
            queue: VecDeque::new(),
            initial_contact: false,
            child_rekey: None,
            child_create: None,
            ike_rekey: None,
            ike_rekey_at: None,
            ike_expires_at: None,
            reauth_at: None,
            settle_at: None,
            reauth_due: false,
            single_pair: false,
            pairs_tried: Vec::new(),
        }
    }

    /// [`Event::IkeSaUp`] for this SA.
    pub fn up_event(&self, c: &Common, resumed: bool) -> Event {
        Event::IkeSaUp {
            peer: c.peer,
            proposal: self.keys.choice,
            spis: c.spis(),
            nat: c.nat,
            initiator: c.initiator,
            local_addr: c.local,
            remote_addr: c.remote,
            resumed,
        }
    }

    /// The next time this state needs [`on_timeout`]: a liveness check due or an outstanding
    /// one timing out, a rekey, or a NAT keepalive.
    pub fn next_timeout(&self, c: &Common, cfg: &EndpointConfig) -> Option<Instant> {
        if !self.queue.is_empty() && !c.win.busy() {
            return Some(c.last_heard);
        }
        let rekey = self
            .children
            .iter()
            .filter(|ch| ch.state == ChildState::Installed)
            .filter_map(|ch| ch.rekey_at)
            .chain(self.ike_rekey_at)
            .chain(self.ike_expires_at)
            .chain(self.reauth_at)
            .chain(self.settle_at)
            .min();
        let dpd = c.cfg.dpd.and_then(|dpd| match c.win.outstanding() {
            Some(o) if o.kind == RequestKind::Dpd => Some(o.first_sent + dpd.timeout),
            Some(_) => None,
            None => Some(c.last_heard + dpd.interval),
        });
        [rekey, dpd, c.keepalive_at(cfg)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the peer surely holds this SA: we initiated it (the peer answered), or we
    /// answered and [`Established::settle_at`] has passed, or the peer spoke on it since.
    pub fn settled(&self, c: &Common) -> bool {
        self.settle_at.is_none() || c.last_heard > self.since
    }

    /// Emits [`Event::ChildSaDelete`] for every CHILD SA and forgets them.
    pub fn delete_all_children(&mut self, c: &Common, ctx: &mut Ctx<'_>) {
        for ch in self.children.drain(..) {
            ctx.events.push_back(child_delete_event(c, &ch));
        }
    }

    /// Sends the next queued request if the window is free.
    pub fn flush(&mut self, c: &mut Common, ctx: &mut Ctx<'_>) -> Result<(), Reason> {
        while !c.win.busy() {
            let Some(req) = self.queue.pop_front() else {
                return Ok(());
            };
            let payloads = match &req {
                RequestKind::Dpd | RequestKind::Notify => Vec::new(),
                RequestKind::DeleteIke => vec![Payload::Delete(Delete::ike())],
                RequestKind::DeleteChild(spis) => {
                    vec![Payload::Delete(Delete::child(ProtocolId::ESP, spis))]
                }
                RequestKind::RekeyChild { old, group } => {
                    rekey::start_child(self, c, ctx, *old, *group)?;
                    continue;
                }
                RequestKind::CreateChild { group } => {
                    rekey::start_create(self, c, ctx, *group)?;
                    continue;
                }
                RequestKind::RekeyIke { group } => {
                    rekey::start_ike(self, c, ctx, *group)?;
                    continue;
                }
                RequestKind::Init | RequestKind::Auth => continue,
            };
            c.send_request(ctx, &self.keys, ExchangeType::INFORMATIONAL, &payloads, req)?;
        }
        Ok(())
    }
}

pub(crate) fn child_delete_event(c: &Common, ch: &Child) -> Event {
    Event::ChildSaDelete {
        peer: c.peer,
        child: ch.id,
        spi_in: EspSpi(ch.spi_in),
        spi_out: EspSpi(ch.spi_out),
    }
}

/// What an established SA becomes once a handler of its state has run: the handlers work on
/// `&mut Established` and the shared part, and [`IkeSa::with_established`] makes the move.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Stays established.
    Stay,
    /// Closes, keeping its keys to answer retransmissions for a while ([`IkeSa::close`]).
    Close,
    /// Replaced by a rekey the peer started: waits for the peer's Delete.
    AwaitDelete,
    /// Replaced by a rekey we started: sends Delete(IKE) and closes once it is answered.
    DeleteIke,
    /// Dropped at once (everything was reported).
    Gone,
}

impl IkeSa {
    /// Runs `f` on the established state (nothing if the SA is in another state) and makes
    /// the move it asks for.
    pub fn with_established(
        &mut self,
        ctx: &mut Ctx<'_>,
        f: impl FnOnce(&mut Established, &mut Common, &mut Ctx<'_>) -> Next,
    ) {
        let State::Established(e) = &mut self.state else {
            return;
        };
        match f(e, &mut self.common, ctx) {
            Next::Stay => {}
            Next::Close => self.close(ctx),
            Next::AwaitDelete => rekey::await_delete(self, ctx),
            Next::DeleteIke => rekey::delete_ike(self, ctx),
            Next::Gone => self.state = State::Gone,
        }
    }
}

/// Timers of an established SA: DPD timeout and scheduling, queued requests.
pub(crate) fn on_timeout(e: &mut Established, c: &mut Common, ctx: &mut Ctx<'_>) -> Next {
    if let Some(dpd) = c.cfg.dpd {
        let timed_out = c
            .win
            .outstanding()
            .is_some_and(|o| o.kind == RequestKind::Dpd && ctx.now >= o.first_sent + dpd.timeout);
        if timed_out {
            c.win.abandon();
            e.delete_all_children(c, ctx);
            c.down(ctx, Reason::PeerUnreachable);
            return Next::Gone;
        }
        if !c.win.busy() && e.queue.is_empty() && ctx.now >= c.last_heard + dpd.interval {
            e.queue.push_back(RequestKind::Dpd);
        }
    }
    if e.ike_expires_at.is_some_and(|t| ctx.now >= t) {
        // No rekey made it in time (the peer kept refusing): strongSwan deletes the IKE SA
        // at its hard lifetime too; the tunnel's role decides what comes next.
        e.delete_all_children(c, ctx);
        c.down(ctx, Reason::LifetimeExpired);
        return Next::DeleteIke;
    }
    if e.reauth_at.is_some_and(|t| ctx.now >= t) {
        e.reauth_at = None;
        e.reauth_due = true;
    }
    if e.settle_at.is_some_and(|t| ctx.now >= t) {
        // the endpoint settles the tunnel after every timer: a duplicate waiting on this goes
        e.settle_at = None;
    }
    rekey::schedule(e, ctx.now);
    let next = flush(e, c, ctx);
    // After the queue: a request just sent refreshes the mapping as well as a keepalive would.
    if next == Next::Stay && c.keepalive_at(ctx.cfg).is_some_and(|at| ctx.now >= at) {
        c.send_keepalive(ctx);
    }
    next
}

/// Sends what the queue holds. A request of ours that cannot be built ends the SA: it would
/// otherwise sit at the head of the queue, and nothing behind it (DPD, rekeys, deletes) would
/// ever go out.
pub(crate) fn flush(e: &mut Established, c: &mut Common, ctx: &mut Ctx<'_>) -> Next {
    match e.flush(c, ctx) {
        Ok(()) => Next::Stay,
        Err(reason) => {
            e.delete_all_children(c, ctx);
            c.down(ctx, reason);
            Next::Gone
        }
    }
}

/// Deletes the IKE SA on our initiative (configuration removed): CHILD SAs are reported gone
/// at once, then a Delete(IKE) is sent and retransmitted until answered or given up.
pub(crate) fn delete_locally(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    match core::mem::replace(&mut sa.state, State::Gone) {
        State::Established(mut e) => {
            e.delete_all_children(&sa.common, ctx);
            sa.common.down(ctx, Reason::DeletedLocally);
            // Whatever was outstanding is moot; the Delete takes the window.
            sa.common.win.abandon();
            let payloads = [Payload::Delete(Delete::ike())];
            // The SA goes either way: a Delete we cannot build leaves the peer to find out by
            // its own DPD or rekey, and nothing is left here to retransmit.
            let _ = sa.common.send_request(
                ctx,
                &e.keys,
                ExchangeType::INFORMATIONAL,
                &payloads,
                RequestKind::DeleteIke,
            );
            sa.state = State::Closing {
                keys: Some(e.keys),
                until: ctx.now,
            };
        }
        State::InitSent(_) | State::AuthSent(_) => {
            sa.common.win.abandon();
            sa.common.down(ctx, Reason::DeletedLocally);
            sa.state = State::Gone;
        }
        other => {
            sa.state = other;
            sa.close(ctx);
            sa.common.win.abandon();
        }
    }
}
