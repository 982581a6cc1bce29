//! What the endpoint finds IKE SAs by, besides their SPIs: each SA's next timer, the half-open
//! SAs per source address (for the cookie threshold), the SAs of each tunnel, and the key a
//! responder SA was created under. Updated after every change to an SA, so that a datagram or a
//! timer costs O(log n) instead of a scan of every SA: with thousands of SAs those scans were
//! most of the responder's CPU per handshake.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use core::net::{IpAddr, SocketAddr};

use crate::codec::Spi;
use crate::config::EndpointConfig;
use crate::event::PeerId;
use crate::sa::{IkeSa, SaId};

/// A responder SA's IKE_SA_INIT key: (the initiator's address then, its SPI).
pub(super) type InitKey = (SocketAddr, Spi);

#[derive(Debug, Default)]
pub(super) struct SaIndex {
    entries: HashMap<SaId, Entry>,
    timers: BTreeSet<(Instant, SaId)>,
    by_peer: BTreeMap<PeerId, BTreeSet<SaId>>,
    half_open: usize,
    half_open_by_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Entry {
    peer: PeerId,
    deadline: Option<Instant>,
    half_open_ip: Option<IpAddr>,
    init_key: Option<InitKey>,
}

impl SaIndex {
    /// Indexes `sa` as it is now (a new SA, or one that may have changed).
    pub(super) fn update(&mut self, id: SaId, sa: &IkeSa, cfg: &EndpointConfig) {
        let deadline = sa.next_timeout(cfg);
        let half_open_ip = sa.half_open().then(|| sa.common.remote.ip());
        if let Some(e) = self.entries.get(&id)
            && e.deadline == deadline
            && e.half_open_ip == half_open_ip
            && e.peer == sa.common.peer
        {
            return;
        }
        let init_key = self.remove(id);
        if let Some(t) = deadline {
            self.timers.insert((t, id));
        }
        if let Some(ip) = half_open_ip {
            self.half_open += 1;
            *self.half_open_by_ip.entry(ip).or_default() += 1;
        }
        self.by_peer.entry(sa.common.peer).or_default().insert(id);
        self.entries.insert(
            id,
            Entry {
                peer: sa.common.peer,
                deadline,
                half_open_ip,
                init_key,
            },
        );
    }

    /// Records the IKE_SA_INIT key a responder SA (already indexed) was created under.
    pub(super) fn set_init_key(&mut self, id: SaId, key: InitKey) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.init_key = Some(key);
        }
    }

    /// Forgets SA `id`; returns the IKE_SA_INIT key it was created under, if any.
    pub(super) fn remove(&mut self, id: SaId) -> Option<InitKey> {
        let e = self.entries.remove(&id)?;
        if let Some(t) = e.deadline {
            self.timers.remove(&(t, id));
        }
        if let Some(ip) = e.half_open_ip {
            self.half_open = self.half_open.saturating_sub(1);
            if let Some(n) = self.half_open_by_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.half_open_by_ip.remove(&ip);
                }
            }
        }
        if let Some(set) = self.by_peer.get_mut(&e.peer) {
            set.remove(&id);
            if set.is_empty() {
                self.by_peer.remove(&e.peer);
            }
        }
        e.init_key
    }

    /// The earliest timer of any SA.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// The SAs whose timer is due at `now`, in id order (the order every SA used to be visited
    /// in, so that the events of simultaneous timers come out as before).
    pub(super) fn due(&self, now: Instant) -> Vec<SaId> {
        let mut ids: Vec<SaId> = self
            .timers
            .range(..=(now, SaId(u64::MAX)))
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The SAs of tunnel `peer`, in id order.
    pub(super) fn of_peer(&self, peer: PeerId) -> Vec<SaId> {
        self.by_peer
            .get(&peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Half-open responder SAs: in all, and from `ip`.
    pub(super) fn half_open(&self, ip: IpAddr) -> (usize, usize) {
        (
            self.half_open,
            self.half_open_by_ip.get(&ip).copied().unwrap_or(0),
        )
    }
}
