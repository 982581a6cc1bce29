//! Saving a tunnel's IKE SAs and resuming them in another process (the format is in
//! [`crate::resume`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Endpoint;
use crate::event::{ChildLifetimes, ChildSaResumed, EspSpi, Event, PeerId};
use crate::resume::record::{self, Loader};
use crate::resume::wire::{Clock, In, Out};
use crate::resume::{self as saved, ResumeError, Resumed, SavedState};
use crate::sa::child::{self, ChildState};
use crate::sa::{IkeSa, State};

impl Endpoint {
    /// Saves the established IKE SAs of `peer`, with their CHILD SAs, message IDs, timers
    /// and any exchange of ours in flight, for [`Endpoint::resume`] in a later process.
    ///
    /// Call it after every input that changed the tunnel (it is cheap: a few hundred octets
    /// per SA) and store the result where only this agent can read it: it holds the IKE SA's
    /// keys. An SA still being set up or already closing is left out (a new process sets it
    /// up again); so is one in the middle of answering a simultaneous IKE SA rekey of the peer's
    /// while its own rekey of it is in flight, which lasts one round trip.
    ///
    /// # Errors
    /// [`ResumeError::UnknownPeer`], or [`ResumeError::ClockUnset`] without a wall clock.
    pub fn save(&self, now: Instant, peer: PeerId) -> Result<SavedState, ResumeError> {
        if !self.peers.contains_key(&peer) {
            return Err(ResumeError::UnknownPeer);
        }
        let unix_ms = self
            .shared
            .unix_millis(now)
            .ok_or(ResumeError::ClockUnset)?;
        let clock = Clock::saving(now);
        let mut body = Out::default();
        let mut count = 0usize;
        for id in self.index.of_peer(peer) {
            let Some(sa) = self.sas.get(&id) else {
                continue;
            };
            let mut one = Out::default();
            if record::put_sa(&mut one, &clock, sa, 0).is_ok() {
                body.raw(&one.0);
                count += 1;
            }
        }
        let mut out = Out::default();
        out.raw(saved::MAGIC);
        out.u8(saved::VERSION);
        out.u64(unix_ms);
        out.len(count);
        out.raw(&body.0);
        let sum = saved::checksum(&out.0);
        out.raw(&sum);
        Ok(SavedState {
            bytes: out.0,
            ike_sas: count,
        })
    }

    /// Takes back the IKE SAs an earlier process saved for `peer` ([`Endpoint::save`]). They
    /// go on where they were: the same SPIs and message IDs, a request of ours in flight is
    /// retransmitted when its timer fires, timers count the time the process was gone. Each
    /// is reported as [`Event::IkeSaUp`] with `resumed` and each CHILD SA as [`Event::ChildSaResumed`]:
    /// the driver keeps the kernel SAs it finds with those SPIs instead of installing them.
    ///
    /// All or nothing: on an error no SA was taken.
    ///
    /// # Errors
    /// A file that is not saved state, of another version, corrupted or malformed; an unknown
    /// peer; no wall clock; or an SPI of ours already in use here.
    pub fn resume(
        &mut self,
        now: Instant,
        peer: PeerId,
        bytes: &[u8],
    ) -> Result<Resumed, ResumeError> {
        let cfg = self
            .peers
            .get(&peer)
            .map(|p| Arc::clone(&p.cfg))
            .ok_or(ResumeError::UnknownPeer)?;
        let unix_now = self
            .shared
            .unix_millis(now)
            .ok_or(ResumeError::ClockUnset)?;
        let (version, body) = saved::open(bytes)?;
        let mut i = In::new(body);
        let saved_at = i.u64("time of saving")?;
        // A wall clock that went back counts as no time passed.
        let clock = Clock::loading(now, unix_now.saturating_sub(saved_at));
        let mut loader = Loader {
            clock,
            peer,
            cfg,
            next_child: &mut self.shared.next_child,
            children: Default::default(),
            version,
        };
        let sas = i.list(64, "IKE SAs", |i| record::get_sa(i, &mut loader, 0))?;
        if !i.is_empty() {
            return Err(ResumeError::Malformed("trailing data"));
        }
        let children: Vec<Event> = sas
            .iter()
            .flat_map(|sa| resumed_children(now, sa))
            .collect();
        let mut keys: Vec<_> = sas.iter().flat_map(routing_keys).collect();
        let n = keys.len();
        keys.sort_unstable_by_key(|(spi, side)| (spi.0, *side as u8));
        keys.dedup();
        if keys.len() != n || keys.iter().any(|k| self.by_spi.contains_key(k)) {
            return Err(ResumeError::SpiInUse);
        }
        let resumed = Resumed {
            ike_sas: sas.len(),
            child_sas: children.len(),
        };
        for sa in sas {
            if let State::Established(e) = &sa.state {
                self.shared.events.push_back(e.up_event(&sa.common, true));
            }
            self.insert_sa(sa);
        }
        self.shared.events.extend(children);
        self.settle(now);
        Ok(resumed)
    }
}

/// [`Event::ChildSaResumed`] for each CHILD SA of `sa` and of the SA it holds from a rekey
/// collision.
fn resumed_children(now: Instant, sa: &IkeSa) -> Vec<Event> {
    let State::Established(e) = &sa.state else {
        return Vec::new();
    };
    let c = &sa.common;
    let mut out: Vec<Event> = e
        .children
        .iter()
        .map(|ch| {
            Event::ChildSaResumed(Box::new(ChildSaResumed {
                peer: c.peer,
                child: ch.id,
                spi_in: EspSpi(ch.spi_in),
                spi_out: EspSpi(ch.spi_out),
                encr: ch.choice.encr,
                integ: ch.choice.integ,
                esn: ch.choice.esn,
                local_ts: ch.local_ts.clone(),
                remote_ts: ch.remote_ts.clone(),
                encapsulation: child::encapsulation(c),
                local_addr: c.local,
                remote_addr: c.remote,
                lifetimes: ChildLifetimes {
                    soft: ch
                        .rekey_at
                        .map_or(Duration::ZERO, |t| t.saturating_duration_since(now)),
                    hard: ch.hard_at.saturating_duration_since(now),
                    // the kernel SA being adopted keeps the volume limits it was installed with
                    bytes: None,
                    packets: None,
                },
                in_use: ch.state == ChildState::Installed,
            }))
        })
        .collect();
    if let Some(col) = e.ike_rekey.as_ref().and_then(|r| r.collision.as_ref()) {
        out.extend(resumed_children(now, &col.sa));
    }
    out
}

/// The routing keys an SA and the SA it holds from a rekey collision will take.
fn routing_keys(sa: &IkeSa) -> Vec<(crate::codec::Spi, crate::sa::Side)> {
    let mut keys = vec![sa.common.routing_key()];
    if let State::Established(e) = &sa.state
        && let Some(c) = e.ike_rekey.as_ref().and_then(|r| r.collision.as_ref())
    {
        keys.push(c.sa.common.routing_key());
    }
    keys
}
