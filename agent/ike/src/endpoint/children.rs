//! Keeping a CHILD SA on every tunnel whose IKE SA is up (review R-1). An IKE SA can be left
//! without one: IKE_AUTH's CHILD SA was refused (TS_UNACCEPTABLE, NO_PROPOSAL_CHOSEN,
//! TEMPORARY_FAILURE), the peer deleted the last one, we deleted it at its hard expiry after
//! refused rekeys, or the kernel refused it. Such an IKE SA stays up (RFC 7296 §1.2 keeps it so
//! that the CHILD SA can be retried), so a new CHILD SA is created on it (§1.3.1), by the
//! tunnel's role:
//!
//! - [`Role::Start`]: on a timer, first [`FIRST`] after the last CHILD SA went, doubling up to
//!   [`MAX`], each wait shortened by a random 0-25 % (from the endpoint's RNG) so that both
//!   ends do not retry in step. The backoff starts over once a CHILD SA has been up [`STABLE`].
//! - [`Role::OnTraffic`]: on [`Endpoint::acquire`] (the kernel saw traffic for the tunnel).
//! - [`Role::Respond`]: never; the peer creates it.
//!
//! Only the newest established IKE SA of the tunnel creates one: not an SA that a rekey
//! replaced (it is closing by then), nor the older of two from simultaneous initiation. An IKE
//! SA being rekeyed queues the request behind its rekey, and the rekey moves it to the new SA.
//!
//! The decision is taken in [`Endpoint::maintain_children`], run by [`Endpoint::settle`] for
//! every tunnel one of whose SAs changed; its timer is part of [`Endpoint::poll_timeout`].

use core::time::Duration;
use std::time::Instant;

use super::Endpoint;
use crate::config::Role;
use crate::event::PeerId;
use crate::sa::established::{self, Next};
use crate::sa::{SaId, State};

/// The first wait before re-creating a lost CHILD SA.
pub(crate) const FIRST: Duration = Duration::from_secs(2);
/// The longest wait between attempts.
pub(crate) const MAX: Duration = Duration::from_secs(60);
/// A CHILD SA up this long resets the backoff.
pub(crate) const STABLE: Duration = Duration::from_secs(60);

/// A tunnel's CHILD SA recovery: the backoff and its timer.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    /// Attempts since the backoff last started over.
    attempts: u32,
    /// When the next attempt is due (a [`Role::Start`] tunnel whose IKE SA has no CHILD SA).
    at: Option<Instant>,
    /// Since when a CHILD SA has been up, continuously.
    up_since: Option<Instant>,
}

/// Where a tunnel's CHILD SAs stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Children {
    /// An IKE SA of the tunnel has a CHILD SA in use.
    Up,
    /// A CHILD SA is coming: our request is queued or in flight, or an IKE SA is being set up
    /// (IKE_AUTH brings one).
    Coming,
    /// IKE SAs are up but none has a CHILD SA: the newest one.
    Missing(SaId),
    /// No IKE SA (or only closing ones).
    NoIke,
}

/// The wait before attempt number `attempts` (0 = the first): [`FIRST`] doubled per attempt up
/// to [`MAX`], less a random 0-25 % drawn from `random`.
pub(crate) fn backoff(attempts: u32, random: u64) -> Duration {
    let base = FIRST
        .checked_mul(1u32 << attempts.min(16))
        .map_or(MAX, |d| d.min(MAX));
    let quarter_ms = u64::try_from(base.as_millis() / 4).unwrap_or(0);
    base - Duration::from_millis(random % (quarter_ms + 1))
}

impl Endpoint {
    /// Where tunnel `peer`'s CHILD SAs stand.
    pub(super) fn tunnel_children(&self, peer: PeerId) -> Children {
        let mut newest = None;
        let mut coming = false;
        for id in self.index.of_peer(peer) {
            let Some(sa) = self.sas.get(&id) else {
                continue;
            };
            match &sa.state {
                State::Established(e) => {
                    if !e.needs_child(&sa.common.cfg) {
                        return Children::Up;
                    }
                    coming |= e.creating();
                    newest = Some(id);
                }
                State::InitSent(_) | State::AuthSent(_) | State::InitReplied(_) => coming = true,
                State::Closing { .. } | State::Gone => {}
            }
        }
        match newest {
            _ if coming => Children::Coming,
            Some(id) => Children::Missing(id),
            None => Children::NoIke,
        }
    }

    /// Brings tunnel `peer`'s recovery timer up to date after one of its SAs changed.
    pub(super) fn maintain_children(&mut self, now: Instant, peer: PeerId) {
        let state = self.tunnel_children(peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let r = &mut p.recovery;
        let at = match state {
            Children::Up => {
                r.up_since.get_or_insert(now);
                None
            }
            Children::Coming => None,
            Children::NoIke => {
                r.up_since = None;
                None
            }
            Children::Missing(_) => {
                if r.up_since
                    .take()
                    .is_some_and(|t| now.saturating_duration_since(t) >= STABLE)
                {
                    r.attempts = 0;
                }
                match p.cfg.role {
                    Role::Start => match r.at {
                        Some(t) => Some(t),
                        None => {
                            let mut b = [0u8; 8];
                            self.shared.rng.fill(&mut b);
                            let random = u64::from_be_bytes(b);
                            Some(now + backoff(r.attempts, random))
                        }
                    },
                    Role::OnTraffic | Role::Respond => None,
                }
            }
        };
        self.set_recovery_at(peer, at);
    }

    fn set_recovery_at(&mut self, peer: PeerId, at: Option<Instant>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.recovery.at == at {
            return;
        }
        if let Some(old) = p.recovery.at.take() {
            self.recovery_timers.remove(&(old, peer));
        }
        if let Some(t) = at {
            self.recovery_timers.insert((t, peer));
        }
        p.recovery.at = at;
    }

    /// Forgets tunnel `peer`'s recovery timer (the tunnel is removed).
    pub(super) fn forget_recovery(&mut self, peer: PeerId) {
        self.recovery_timers.retain(|(_, p)| *p != peer);
    }

    /// The earliest recovery timer.
    pub(super) fn next_recovery(&self) -> Option<Instant> {
        self.recovery_timers.first().map(|(t, _)| *t)
    }

    /// Runs the recovery timers due at `now`.
    pub(super) fn recover_due(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .recovery_timers
            .range(..=(now, PeerId(u64::MAX)))
            .map(|(_, p)| *p)
            .collect();
        for peer in due {
            self.set_recovery_at(peer, None);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.recovery.attempts = p.recovery.attempts.saturating_add(1);
            }
            if let Children::Missing(id) = self.tunnel_children(peer) {
                self.create_child(now, id);
            }
        }
    }

    /// Queues a new CHILD SA request on SA `id` and sends it if the window is free. The caller
    /// settles.
    pub(super) fn create_child(&mut self, now: Instant, id: SaId) {
        self.with_sa(now, id, |sa, ctx| {
            sa.with_established(ctx, |e, c, ctx| {
                if e.queue_create(&c.cfg) {
                    established::flush(e, c, ctx)
                } else {
                    Next::Stay
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{Duration, FIRST, MAX, backoff};

    #[test]
    fn backoff_doubles_to_the_cap_and_jitters_down_by_at_most_a_quarter() {
        for (attempts, base) in [(0, 2), (1, 4), (2, 8), (4, 32), (5, 60), (6, 60), (40, 60)] {
            let base = Duration::from_secs(base);
            for r in [0, 1, 7_777, u64::MAX] {
                let w = backoff(attempts, r);
                assert!(w <= base && w >= base * 3 / 4, "{attempts} {r}: {w:?}");
            }
        }
        assert_eq!(backoff(0, 0), FIRST);
        assert_eq!(backoff(u32::MAX, 0), MAX);
        assert_eq!(backoff(0, 500), FIRST - Duration::from_millis(500));
    }
}
