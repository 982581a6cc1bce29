//! The sans-IO endpoint (quinn-proto style): the driver feeds datagrams and time in, and polls
//! datagrams, timeouts and events out. No sockets, no clock, no OS randomness.
//!
//! Datagrams are whole UDP payloads both ways: on the NAT-T port (4500 by default) received
//! ones still carry the non-ESP marker and sent ones have it added
//! ([`Transmit::non_esp_marker`]).
//!
//! Unauthenticated or malformed input never changes an established SA and is never answered
//! except where RFC 7296 §2.21 wants it (INVALID_SYNTAX on an authenticated request; COOKIE,
//! INVALID_KE_PAYLOAD and NO_PROPOSAL_CHOSEN to IKE_SA_INIT). Unknown SPIs are not answered
//! with INVALID_IKE_SPI (a MAY in §2.21.4): they are counted in [`Stats`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use core::net::{IpAddr, SocketAddr};

use crate::codec::{
    ExchangeType, Header, Message, Notify, NotifyType, Payload, Spi, Udp4500, classify_udp4500,
};
use crate::config::{ConfigError, EndpointConfig, PeerConfig};
use crate::crypto::rng::Rng;
use crate::event::{ChildSaId, EspSpi, Event, PeerId, Transmit};
use crate::reason::Reason;
use crate::sa::established::{self, Next, child_delete_event};
use crate::sa::ike_init::InitSent;
use crate::sa::inbound::{self, Outcome};
use crate::sa::{Ctx, IkeSa, RequestKind, SaId, Side, State};

mod children;
mod cookie;
mod index;
mod responder;
mod resume;

use cookie::Cookies;
use index::SaIndex;

/// Counters of input that was dropped or answered without state (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams that did not parse as IKE (or were ESP on the NAT-T port).
    pub malformed: u64,
    /// NAT keepalives received (RFC 3948 §2.3; dropped, as they should be).
    pub keepalives: u64,
    /// Messages for an IKE SA we do not have.
    pub unknown_spi: u64,
    /// Protected messages whose integrity check failed.
    pub integrity_failed: u64,
    /// Messages dropped for their message ID or an unexpected state.
    pub unexpected: u64,
    /// Retransmitted requests answered from the response cache.
    pub retransmits_answered: u64,
    /// Requests of ours sent again because their answer did not come in time (RFC 7296 §2.1).
    pub retransmits_sent: u64,
    /// COOKIE challenges sent.
    pub cookies_sent: u64,
    /// IKE_SA_INIT requests from addresses no peer is configured for.
    pub no_peer_config: u64,
    /// IKE_SA_INIT requests dropped unanswered for too many half-open SAs, from their address
    /// or in all (`block_threshold_per_ip`, `half_open_limit`).
    pub init_blocked: u64,
}

#[derive(Debug)]
struct Peer {
    cfg: Arc<PeerConfig>,
    /// Re-creating its CHILD SA when its IKE SA has none ([`children`]).
    recovery: children::Recovery,
    /// The IKE SA of a make-before-break reauthentication under way
    /// ([`Endpoint::reauthenticate`]): once it has a CHILD SA the tunnel's other IKE SAs go.
    reauth: Option<SaId>,
    /// Which of [`PeerConfig::remote_addrs`] the next attempt to initiate goes to.
    next_addr: usize,
    /// Our IKE SA being set up to the peer by [`Endpoint::initiate`] (or a reauthentication):
    /// if it ends before it is established, the next attempt uses the next address.
    attempt: Option<SaId>,
}

/// What every transition borrows from the endpoint, besides the SA itself and the SPI table:
/// kept apart from the SA table so that [`Shared::ctx`] can lend it out while one SA is borrowed.
struct Shared {
    config: EndpointConfig,
    rng: Box<dyn Rng + Send>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_child: u64,
    stats: Stats,
    /// IKE SAs created by a rekey during the current transition.
    spawned: Vec<IkeSa>,
    /// A monotonic instant and the wall-clock time (Unix seconds) it corresponds to.
    wall_clock: Option<(Instant, u64)>,
    /// The driver's source of inbound ESP SPIs.
    spis: Option<Box<dyn crate::spi::EspSpiSource + Send>>,
}

impl Shared {
    /// Notes a dropped datagram as a diagnostic, when asked for them.
    fn dropped(&mut self, remote: SocketAddr, why: &'static str) {
        if self.config.diagnostics {
            self.events.push_back(Event::Diagnostic(Box::new(
                crate::diagnostic::Diagnostic::Dropped { remote, why },
            )));
        }
    }

    /// The context of a transition at `now`: the one place a [`Ctx`] is built.
    fn ctx<'a>(&'a mut self, now: Instant, by_spi: &'a HashMap<(Spi, Side), SaId>) -> Ctx<'a> {
        let unix_time = self.unix_time(now);
        Ctx {
            now,
            rng: &mut *self.rng,
            cfg: &self.config,
            transmits: &mut self.transmits,
            events: &mut self.events,
            next_child: &mut self.next_child,
            by_spi,
            spawned: &mut self.spawned,
            unix_time,
            stats: &mut self.stats,
            spis: match self.spis.as_mut() {
                Some(s) => Some(&mut **s),
                None => None,
            },
        }
    }

    /// The wall-clock time at `now`, in Unix milliseconds (saved state is timed by it).
    fn unix_millis(&self, now: Instant) -> Option<u64> {
        let (at, base) = self.wall_clock?;
        let base = u128::from(base).checked_mul(1000)?;
        let t = if now >= at {
            base.checked_add((now - at).as_millis())?
        } else {
            base.checked_sub((at - now).as_millis())?
        };
        u64::try_from(t).ok()
    }

    /// The wall-clock time at `now`, in Unix seconds.
    fn unix_time(&self, now: Instant) -> Option<i64> {
        let (at, base) = self.wall_clock?;
        let base = i64::try_from(base).ok()?;
        let since = i64::try_from(now.saturating_duration_since(at).as_secs()).ok()?;
        let before = i64::try_from(at.saturating_duration_since(now).as_secs()).ok()?;
        base.checked_add(since)?.checked_sub(before)
    }
}

/// An IKEv2 endpoint: every configured tunnel and every IKE SA.
///
/// # Driving it
///
/// After every input — [`Endpoint::handle`], [`Endpoint::handle_timeout`] and every other
/// `&mut self` method — the driver:
///
/// 1. drains [`Endpoint::poll_event`] and applies each event (CHILD SAs to the kernel, status);
/// 2. then drains [`Endpoint::poll_transmit`] and sends each datagram;
/// 3. then asks [`Endpoint::poll_timeout`] when to call [`Endpoint::handle_timeout`] next.
///
/// Events before datagrams: the kernel must hold a new CHILD SA before the peer hears of it.
/// As a responder, our answer makes the peer send on the new SA at once, so our inbound SA must
/// already be installed (RFC 7296 §2.8); as a rekey initiator, the Delete of the old SA must not
/// leave before the new one is in (make before break).
pub struct Endpoint {
    shared: Shared,
    peers: BTreeMap<PeerId, Peer>,
    /// Tunnels by their remote address (`None`: any address), for IKE_SA_INIT requests.
    peers_by_remote: HashMap<Option<IpAddr>, BTreeSet<PeerId>>,
    next_peer: u64,
    sas: BTreeMap<SaId, IkeSa>,
    /// The last [`SaId`] handed out ([`Endpoint::insert_sa`]).
    last_sa: u64,
    /// (our SPI, our side) → SA.
    by_spi: HashMap<(Spi, Side), SaId>,
    /// Responder: (peer address, initiator SPI) → SA, for IKE_SA_INIT retransmissions.
    by_init: HashMap<(SocketAddr, Spi), SaId>,
    /// Timers, half-open counts and SAs per tunnel.
    index: SaIndex,
    /// Tunnels' CHILD SA recovery timers ([`children`]).
    recovery_timers: BTreeSet<(Instant, PeerId)>,
    /// SAs changed since the index was last brought up to date ([`Endpoint::settle`]).
    dirty: Vec<SaId>,
    /// Tunnels whose SAs changed since [`Endpoint::take_changed`] was last called.
    changed: BTreeSet<PeerId>,
    cookies: Cookies,
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("peers", &self.peers.len())
            .field("ike_sas", &self.sas.len())
            .field("stats", &self.shared.stats)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A new endpoint drawing all randomness from `rng`.
    pub fn new(config: EndpointConfig, rng: Box<dyn Rng + Send>) -> Self {
        Self {
            shared: Shared {
                config,
                rng,
                transmits: VecDeque::new(),
                events: VecDeque::new(),
                next_child: 0,
                stats: Stats::default(),
                spawned: Vec::new(),
                wall_clock: None,
                spis: None,
            },
            peers: BTreeMap::new(),
            peers_by_remote: HashMap::new(),
            next_peer: 0,
            sas: BTreeMap::new(),
            last_sa: 0,
            by_spi: HashMap::new(),
            by_init: HashMap::new(),
            index: SaIndex::default(),
            recovery_timers: BTreeSet::new(),
            dirty: Vec::new(),
            changed: BTreeSet::new(),
            cookies: Cookies::default(),
        }
    }

    /// Tells the endpoint what wall-clock time (Unix seconds, UTC) the monotonic instant `at`
    /// is; later times are derived from the `now` of each call. Certificate validity is checked
    /// against it. Call it once at start and again whenever the system clock is corrected.
    /// Without it, a peer's certificate cannot be checked and certificate authentication
    /// fails with [`Reason::ClockUnset`].
    pub fn set_wall_clock(&mut self, at: Instant, unix_time: u64) {
        self.shared.wall_clock = Some((at, unix_time));
    }

    /// Lets `source` pick every inbound ESP SPI from now on (the kernel's allocation, so they
    /// are unique on the node; review R-4). Without it they are random.
    pub fn set_spi_source(&mut self, source: Box<dyn crate::spi::EspSpiSource + Send>) {
        self.shared.spis = Some(source);
    }

    /// Adds a tunnel. Nothing is sent until [`Endpoint::initiate`] (or the peer initiates).
    ///
    /// # Errors
    /// The configuration is unusable.
    pub fn add_peer(&mut self, cfg: PeerConfig) -> Result<PeerId, ConfigError> {
        cfg.validate()?;
        self.next_peer = self.next_peer.wrapping_add(1);
        let id = PeerId(self.next_peer);
        for key in remote_keys(&cfg) {
            self.peers_by_remote.entry(key).or_default().insert(id);
        }
        self.peers.insert(
            id,
            Peer {
                cfg: Arc::new(cfg),
                recovery: children::Recovery::default(),
                reauth: None,
                next_addr: 0,
                attempt: None,
            },
        );
        Ok(id)
    }

    /// Gives a tunnel new peer addresses (its DNS names resolved again): `remote` first, then
    /// `fallbacks`, as [`PeerConfig::remote_addrs`]. IKE SAs up or being set up keep theirs;
    /// the next attempt to initiate uses the new ones, from the address it would have used if
    /// that is still among them, else from the first. Unknown tunnels are ignored.
    ///
    /// # Errors
    /// An address is unusable for the tunnel (another family, unspecified for an initiator);
    /// the tunnel is left as it was.
    pub fn set_remote_addrs(
        &mut self,
        peer: PeerId,
        remote: SocketAddr,
        fallbacks: Vec<SocketAddr>,
    ) -> Result<(), ConfigError> {
        let Some(p) = self.peers.get_mut(&peer) else {
            return Ok(());
        };
        let mut cfg = PeerConfig::clone(&p.cfg);
        cfg.remote_addr = remote;
        cfg.fallback_addrs = fallbacks;
        cfg.validate()?;
        let current = p.cfg.remote_addrs().nth(p.next_addr);
        p.next_addr = current
            .and_then(|a| cfg.remote_addrs().position(|b| b == a))
            .unwrap_or(0);
        let old = remote_keys(&p.cfg);
        let new = remote_keys(&cfg);
        p.cfg = Arc::new(cfg);
        self.unfile(peer, &old);
        for key in new {
            self.peers_by_remote.entry(key).or_default().insert(peer);
        }
        Ok(())
    }

    /// Takes `peer` out of [`Endpoint::peers_by_remote`] under `keys`.
    fn unfile(&mut self, peer: PeerId, keys: &[Option<IpAddr>]) {
        for key in keys {
            if let Some(set) = self.peers_by_remote.get_mut(key) {
                set.remove(&peer);
                if set.is_empty() {
                    self.peers_by_remote.remove(key);
                }
            }
        }
    }

    /// Gives a tunnel a new configuration (typically new credentials: a changed PSK, a renewed
    /// certificate) without tearing it down. Its IKE SAs keep theirs; every new negotiation
    /// uses the new one. A tunnel that initiates ([`Role::Start`], or [`Role::OnTraffic`] with an
    /// IKE SA up) reauthenticates at once, make-before-break as strongSwan's
    /// `make_before_break` does: a new IKE SA with its CHILD SA is negotiated beside the old
    /// ones (without INITIAL_CONTACT, so the peer keeps them meanwhile), and once the new
    /// CHILD SA is installed the older IKE SAs are deleted (DELETE sent). If the new IKE SA
    /// fails, the old ones stay, and a later call tries again. A tunnel that only responds
    /// keeps its SAs; the peer's next authentication meets the new configuration.
    ///
    /// Returns whether a reauthentication was started.
    ///
    /// # Errors
    /// The configuration is unusable, or changes the remote address or the role (remove the
    /// tunnel and add it again for that); the tunnel is left as it was.
    pub fn reauthenticate(
        &mut self,
        now: Instant,
        peer: PeerId,
        cfg: PeerConfig,
    ) -> Result<bool, ConfigError> {
        cfg.validate()?;
        let Some(p) = self.peers.get_mut(&peer) else {
            return Ok(false);
        };
        if remote_keys(&cfg) != remote_keys(&p.cfg) || cfg.role != p.cfg.role {
            return Err(ConfigError::NotInPlace);
        }
        let role = cfg.role;
        p.cfg = Arc::new(cfg);
        let up = matches!(self.tunnel_children(peer), children::Children::Up);
        let initiates = role == crate::Role::Start || (role == crate::Role::OnTraffic && up);
        if !initiates {
            return Ok(false);
        }
        let new = self.start_ike_sa(now, peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.reauth = new;
        }
        Ok(new.is_some())
    }

    /// Completes or abandons tunnel `peer`'s reauthentication after one of its SAs changed;
    /// whether older SAs were deleted.
    fn maintain_reauth(&mut self, now: Instant, peer: PeerId) -> bool {
        let Some(new) = self.peers.get(&peer).and_then(|p| p.reauth) else {
            return false;
        };
        let done = match self.sas.get(&new).map(|sa| (&sa.state, &sa.common.cfg)) {
            // every subnet pair too, when the peer takes one per CHILD SA
            Some((State::Established(e), cfg)) => e.has_child() && !e.needs_child(cfg),
            Some((State::InitSent(_) | State::AuthSent(_), _)) => false,
            // failed, or gone: the old SAs carry on
            _ => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.reauth = None;
                }
                return false;
            }
        };
        if !done {
            return false;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.reauth = None;
        }
        // The SAs set up before ours began. One the peer began since is its own new SA (both
        // ends reauthenticating at once, after both were given new credentials): deleting it
        // here while the peer deletes ours left neither (the driver simulation found that); the
        // two new ones are a race that `drop_duplicate` settles the same way at both ends.
        let started = self.sas.get(&new).map(|sa| sa.common.started);
        let older: Vec<SaId> = self
            .index
            .of_peer(peer)
            .into_iter()
            .filter(|id| *id != new)
            .filter(|id| {
                self.sas.get(id).is_some_and(|sa| {
                    sa.established().is_some() && started.is_none_or(|s| sa.common.started < s)
                })
            })
            .collect();
        let any = !older.is_empty();
        for id in older {
            self.with_sa(now, id, established::delete_locally);
        }
        any
    }

    /// Both ends initiated at once (two `start` tunnels, or two acquires), or a retry raced a
    /// slow handshake: the tunnel ends up with two IKE SAs, each with a CHILD SA for the same
    /// selectors, and would keep both, rekeying each, for ever (the simulator found both). The
    /// one with the lower initiator SPI (then responder SPI) goes, as soon as an end holds both
    /// with their CHILD SAs: the end that initiated the survivor deletes the other (the peer,
    /// holding the same two, waits for that Delete, or for any word on the survivor, since its
    /// IKE_AUTH answer may not have arrived yet); when both are one end's, that end does.
    /// Nothing is dropped while we reauthenticate (our two SAs are then on purpose) or an IKE
    /// SA rekey is under way. An older SA without a CHILD SA beside one with goes too. Returns
    /// whether one was deleted.
    fn drop_duplicate(&mut self, now: Instant, peer: PeerId) -> bool {
        if self.peers.get(&peer).is_none_or(|p| p.reauth.is_some()) {
            return false;
        }
        let mut up: Vec<UpSa<'_>> = Vec::new();
        // Established SAs without a CHILD SA, none coming from us.
        let mut bare = Vec::new();
        for id in self.index.of_peer(peer) {
            let Some(sa) = self.sas.get(&id) else {
                continue;
            };
            if let State::Established(e) = &sa.state {
                if e.ike_rekey.is_some() {
                    return false;
                }
                let installed = e
                    .children
                    .iter()
                    .find(|ch| ch.state == crate::sa::child::ChildState::Installed);
                match installed {
                    Some(ch) => up.push(UpSa {
                        spis: (sa.common.spi_i.0, sa.common.spi_r.0),
                        id,
                        setup: (sa.common.started, e.since),
                        settled: e.settled(&sa.common),
                        ours: sa.common.initiator,
                        identity: sa.common.remote_identity.as_ref(),
                        ts: (&ch.local_ts, &ch.remote_ts),
                    }),
                    None if !e.creating() => bare.push((id, sa.common.remote_identity.as_ref())),
                    None => {}
                }
            }
        }
        up.sort_unstable_by_key(|u| u.spis);
        // An SA left without a CHILD SA beside a newer one that has one is of no use: one
        // the peer gave up on while we were gone, say (the simulator found such an SA resumed
        // after a restart and kept until its rekey time).
        let stale = bare
            .iter()
            .find(|(id, who)| up.iter().any(|u| u.id > *id && u.identity == *who))
            .map(|(id, _)| *id);
        let pair = up
            .iter()
            .find_map(|u| up.iter().find(|o| u.duplicates(o)).map(|o| (u, o)));
        // Not while either is one we answered and the peer may not have our answer yet: a
        // Delete overtaking the answer is dropped by a peer still waiting for it, which then
        // sends on an SA we deleted, or is left with none (the driver simulation found both).
        // The SA's settle timer brings us back here.
        if pair.is_some_and(|(u, o)| !u.settled || !o.settled) {
            return false;
        }
        let Some(loser) = pair.map(|(u, _)| u.id).or(stale) else {
            return false;
        };
        self.with_sa(now, loser, established::delete_locally);
        true
    }

    /// Starts an IKE SA (with its first CHILD SA) to a configured peer. Unknown peers are
    /// ignored.
    pub fn initiate(&mut self, now: Instant, peer: PeerId) {
        self.start_ike_sa(now, peer);
    }

    /// [`Endpoint::initiate`]: the new SA, unless the peer is unknown or it could not start.
    fn start_ike_sa(&mut self, now: Instant, peer: PeerId) -> Option<SaId> {
        let p = self.peers.get(&peer)?;
        let cfg = Arc::clone(&p.cfg);
        let remote = cfg
            .remote_addrs()
            .nth(p.next_addr)
            .unwrap_or(cfg.remote_addr);
        // RFC 7296 §2.4: INITIAL_CONTACT says this is the only IKE SA between the two
        // identities, and charon drops every other one with them, whatever the tunnel. So it
        // is sent only when no IKE SA of this tunnel, nor one of another tunnel between the
        // same identities, is up or being set up (review I-6: two tunnels to one peer took
        // turns killing each other; the simulator found the same with an SA still being set
        // up). [`Endpoint::settle`] withdraws it if such an SA appears before IKE_AUTH goes.
        let others = self.sas.values().any(|s| shares_contact(s, peer, &cfg));
        let mut ctx = self.shared.ctx(now, &self.by_spi);
        let spi = ctx.ike_spi(Side::Initiator);
        let id = match InitSent::start(&mut ctx, peer, cfg, remote, spi) {
            Ok(mut sa) => {
                sa.common.initial_contact = !others;
                let id = self.insert_sa(sa);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.attempt = Some(id);
                }
                Some(id)
            }
            Err(reason) => {
                self.shared.events.push_back(Event::IkeSaDown {
                    peer,
                    spis: crate::event::IkeSpis {
                        initiator: spi,
                        responder: Spi::ZERO,
                    },
                    reason,
                });
                None
            }
        };
        self.settle(now);
        id
    }

    /// The kernel saw traffic for an `onTraffic` tunnel. With no IKE SA, one is initiated; on
    /// an established IKE SA without a CHILD SA, a CHILD SA is created (CREATE_CHILD_SA, RFC
    /// 7296 §1.3.1, as charon does); with a CHILD SA in use, or one or an IKE SA on its way,
    /// nothing happens. An IKE SA that is closing does not count: the kernel asks only once per
    /// flow until its acquire times out (30 s), so ignoring it would stall the tunnel that long.
    ///
    /// The tunnel's CHILD SA covers all its traffic selectors, so the acquire's selectors are
    /// not needed to tell which CHILD SA is missing.
    pub fn acquire(&mut self, now: Instant, peer: PeerId) {
        match self.tunnel_children(peer) {
            children::Children::NoIke => self.initiate(now, peer),
            children::Children::Missing(id) => {
                self.create_child(now, id);
                self.settle(now);
            }
            children::Children::Up | children::Children::Coming => {}
        }
    }

    /// Removes a tunnel: every IKE SA with it is deleted (DELETE sent, CHILD SAs reported
    /// gone at once).
    pub fn remove_peer(&mut self, now: Instant, peer: PeerId) {
        if let Some(p) = self.peers.remove(&peer) {
            self.unfile(peer, &remote_keys(&p.cfg));
        }
        for id in self.index.of_peer(peer) {
            self.with_sa(now, id, established::delete_locally);
        }
        self.forget_recovery(peer);
        self.settle(now);
    }

    /// The kernel reports a CHILD SA's lifetime expiry (by either of its SPIs). A hard expiry
    /// deletes the CHILD SA (with an INFORMATIONAL to the peer); a soft expiry starts its rekey
    /// now (unless one is already queued or running, or the SA was already replaced).
    pub fn expire_child(&mut self, now: Instant, peer: PeerId, spi: EspSpi, hard: bool) {
        let Some(id) = self.sa_with_child(peer, spi) else {
            return;
        };
        if !hard {
            self.with_sa(now, id, |sa, ctx| {
                sa.with_established(ctx, |e, c, ctx| {
                    crate::sa::rekey::soft_expire(e, c, ctx, spi.0)
                });
            });
            self.settle(now);
            return;
        }
        self.delete_child_where(now, id, |ch| ch.spi_in == spi.0 || ch.spi_out == spi.0);
    }

    /// The kernel took an authentic ESP-in-UDP packet of one of `peer`'s CHILD SAs (`spi`,
    /// either direction) from `remote`, not from where the SA sends (XFRM_MSG_MAPPING): the
    /// peer's NAT mapping changed. The IKE SA follows it as it would an IKE message from there,
    /// and its CHILD SAs are rekeyed to the new address (review R-2, see `sa::mapping`). Moves
    /// we do not follow (we are the NATed initiator) and unknown SPIs are ignored.
    pub fn esp_mapping(&mut self, now: Instant, peer: PeerId, spi: EspSpi, remote: SocketAddr) {
        let Some(id) = self.sa_with_child(peer, spi) else {
            return;
        };
        self.with_sa(now, id, |sa, ctx| {
            let local = sa.common.local;
            if sa.common.nat.encapsulate()
                && crate::sa::mapping::may_follow(&sa.common, ctx.cfg, local, remote)
                && crate::sa::mapping::follow(&mut sa.common, local, remote)
            {
                crate::sa::mapping::rekey_children(sa, ctx);
            }
        });
        self.settle(now);
    }

    /// The driver could not install a CHILD SA it was given ([`Event::ChildSaInstall`]), e.g.
    /// the kernel refused it: the CHILD SA is deleted (INFORMATIONAL Delete to the peer, and
    /// [`Event::ChildSaDelete`]), so the peer does not keep sending into an SA that is not
    /// there. Unknown ids are ignored.
    pub fn child_install_failed(&mut self, now: Instant, peer: PeerId, child: ChildSaId) {
        let found = self.index.of_peer(peer).into_iter().find(|id| {
            self.sas
                .get(id)
                .and_then(IkeSa::established)
                .is_some_and(|e| e.children.iter().any(|ch| ch.id == child))
        });
        if let Some(id) = found {
            self.delete_child_where(now, id, |ch| ch.id == child);
        }
    }

    /// The established IKE SA of `peer` that holds the CHILD SA with `spi` (either direction).
    fn sa_with_child(&self, peer: PeerId, spi: EspSpi) -> Option<SaId> {
        self.index.of_peer(peer).into_iter().find(|id| {
            self.sas
                .get(id)
                .and_then(IkeSa::established)
                .is_some_and(|e| {
                    e.children
                        .iter()
                        .any(|ch| ch.spi_in == spi.0 || ch.spi_out == spi.0)
                })
        })
    }

    fn delete_child_where(
        &mut self,
        now: Instant,
        id: SaId,
        pred: impl Fn(&crate::sa::child::Child) -> bool,
    ) {
        self.with_sa(now, id, |sa, ctx| {
            sa.with_established(ctx, |e, c, ctx| {
                let Some(pos) = e.children.iter().position(&pred) else {
                    return Next::Stay;
                };
                let ch = e.children.remove(pos);
                ctx.events.push_back(child_delete_event(c, &ch));
                e.queue.push_back(RequestKind::DeleteChild(vec![ch.spi_in]));
                // As after every change to the queue: a Delete we cannot send ends the SA, as
                // it does on a timer or a response.
                established::flush(e, c, ctx)
            });
        });
        self.settle(now);
    }

    /// The next datagram to send. Call it until it returns `None` after every input, but only
    /// once [`Endpoint::poll_event`] is drained (see [`Endpoint`]).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.shared.transmits.pop_front()
    }

    /// The next event for the driver. Call it until it returns `None` after every input, and
    /// act on each event before sending any datagram from [`Endpoint::poll_transmit`].
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.shared.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] should next be called (`None`: no timer is running).
    /// Ask again after every input: any of them can move it.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        debug_assert_eq!(
            self.index.next_deadline(),
            self.sas
                .values()
                .filter_map(|sa| sa.next_timeout(&self.shared.config))
                .min(),
            "the timer index is out of date"
        );
        match (self.index.next_deadline(), self.next_recovery()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs every timer due at `now`. Call it when the instant from [`Endpoint::poll_timeout`]
    /// has come (calling it early does no harm); then poll as after any input.
    pub fn handle_timeout(&mut self, now: Instant) {
        for id in self.index.due(now) {
            self.with_sa(now, id, IkeSa::on_timeout);
        }
        self.settle(now);
        self.recover_due(now);
        self.settle(now);
    }

    /// The tunnels whose IKE SAs changed since the last call (a message, a timer, a rekey):
    /// what a driver that keeps saved state ([`Endpoint::save`]) saves again. Save before
    /// sending the datagrams of the same input: a peer must never see a request of ours that
    /// a restarted process would not know it sent.
    pub fn take_changed(&mut self) -> BTreeSet<PeerId> {
        core::mem::take(&mut self.changed)
    }

    /// Counters of dropped and statelessly answered input.
    pub fn stats(&self) -> Stats {
        self.shared.stats
    }

    /// The CHILD SAs currently installed for `peer` (ids).
    pub fn children(&self, peer: PeerId) -> Vec<ChildSaId> {
        self.index
            .of_peer(peer)
            .iter()
            .filter_map(|id| self.sas.get(id))
            .filter_map(IkeSa::established)
            .flat_map(|e| e.children.iter().map(|c| c.id))
            .collect()
    }

    /// Number of IKE SAs held (any state), for tests and metrics.
    pub fn ike_sa_count(&self) -> usize {
        self.sas.len()
    }

    /// Handles one received UDP payload: `local` is the address it arrived on (its port tells
    /// the NAT-T port's non-ESP marker apart), `remote` where it came from.
    pub fn handle(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) {
        let ike = if local.port() == self.shared.config.natt_port {
            match classify_udp4500(datagram) {
                Udp4500::Ike(b) => b,
                Udp4500::Keepalive => {
                    self.shared.stats.keepalives += 1;
                    return;
                }
                _ => {
                    self.shared.stats.malformed += 1;
                    self.shared
                        .dropped(remote, "not IKE on the NAT-T port (no non-ESP marker)");
                    return;
                }
            }
        } else {
            datagram
        };
        let wire = match Header::peek(ike) {
            Ok(w) => w,
            Err(crate::codec::DecodeError::InvalidMajorVersion { major, header }) => {
                self.shared.stats.malformed += 1;
                self.shared.dropped(remote, "another IKE major version");
                // RFC 7296 §2.5: a request with a higher major version is answered, unprotected,
                // with INVALID_MAJOR_VERSION in a header carrying our version (2.0). As charon
                // does, only an IKE_SA_INIT request (nothing else can come from a peer that
                // does not speak our version).
                if major > 2
                    && !header.flags.is_response()
                    && header.exchange_type == ExchangeType::IKE_SA_INIT
                {
                    let mut flags = crate::codec::Flags::RESPONSE;
                    if !header.flags.is_initiator() {
                        flags = flags | crate::codec::Flags::INITIATOR;
                    }
                    let answer = Message {
                        header: Header { flags, ..header },
                        payloads: vec![Payload::Notify(Notify::empty(
                            NotifyType::INVALID_MAJOR_VERSION,
                        ))],
                    };
                    self.send_stateless(local, remote, &answer);
                }
                return;
            }
            Err(_) => {
                self.shared.stats.malformed += 1;
                self.shared.dropped(remote, "not an IKE header");
                return;
            }
        };
        let h = wire.header;
        if h.exchange_type == ExchangeType::IKE_SA_INIT && !h.flags.is_response() {
            // §3.1: SPIi MUST NOT be zero (review M-1b).
            if h.flags.is_initiator()
                && !h.initiator_spi.is_zero()
                && h.responder_spi.is_zero()
                && h.message_id == 0
            {
                self.on_init_request(now, local, remote, ike);
            } else {
                self.shared.stats.malformed += 1;
                self.shared.dropped(
                    remote,
                    "IKE_SA_INIT request with a zero SPIi, a responder SPI or a message ID",
                );
            }
            self.settle(now);
            return;
        }
        // Flags say who sent it: from the original initiator, so we are the responder.
        let we_initiator = !h.flags.is_initiator();
        let our_spi = if we_initiator {
            h.initiator_spi
        } else {
            h.responder_spi
        };
        let Some(&id) = self.by_spi.get(&(our_spi, Side::of(we_initiator))) else {
            self.shared.stats.unknown_spi += 1;
            self.shared.dropped(remote, "no IKE SA with this SPI");
            return;
        };
        let mut outcome = Outcome::Handled;
        self.with_sa(now, id, |sa, ctx| {
            outcome = inbound::on_message(sa, ctx, local, remote, ike, &h);
        });
        match outcome {
            Outcome::Handled => {}
            Outcome::Integrity => {
                self.shared.stats.integrity_failed += 1;
                self.shared
                    .dropped(remote, "integrity check failed (wrong keys or corrupted)");
            }
            Outcome::Unexpected => {
                self.shared.stats.unexpected += 1;
                self.shared.dropped(
                    remote,
                    "unexpected here (message ID outside the window, or state)",
                );
            }
            Outcome::Retransmit => self.shared.stats.retransmits_answered += 1,
        }
        self.settle(now);
    }

    fn with_sa(&mut self, now: Instant, id: SaId, f: impl FnOnce(&mut IkeSa, &mut Ctx<'_>)) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        self.dirty.push(id);
        let mut ctx = self.shared.ctx(now, &self.by_spi);
        f(sa, &mut ctx);
        if let State::Established(e) = &mut sa.state
            && e.initial_contact
        {
            e.initial_contact = false;
            self.replace_older(now, id);
        }
        let reauth = match self
            .sas
            .get_mut(&id)
            .map(|sa| (sa.common.peer, &mut sa.state))
        {
            Some((peer, State::Established(e))) if e.reauth_due => {
                e.reauth_due = false;
                Some(peer)
            }
            _ => None,
        };
        // IKE SAs born from a rekey get their own routing entry.
        for born in core::mem::take(&mut self.shared.spawned) {
            self.insert_sa(born);
        }
        if let Some(peer) = reauth {
            self.reauthenticate_now(now, peer);
        }
    }

    /// `reauth_time` came for an IKE SA of `peer`: a new IKE SA, make-before-break, as
    /// [`Endpoint::reauthenticate`] with the configuration it has, unless one is under way.
    fn reauthenticate_now(&mut self, now: Instant, peer: PeerId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        if p.reauth.is_some() {
            return;
        }
        let new = self.start_ike_sa(now, peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.reauth = new;
        }
    }

    /// Takes a new SA in under the next [`SaId`] (the one place ids are allocated).
    fn insert_sa(&mut self, sa: IkeSa) -> SaId {
        self.last_sa = self.last_sa.wrapping_add(1);
        let id = SaId(self.last_sa);
        self.by_spi.insert(sa.common.routing_key(), id);
        self.sas.insert(id, sa);
        self.dirty.push(id);
        id
    }

    /// INITIAL_CONTACT: the peer lost its state, so every other IKE SA between the same two
    /// identities is stale, in this tunnel or another (RFC 7296 §2.4, as charon judges it; a
    /// tunnel that accepts several peers keeps the others' SAs). Their CHILD SAs are removed
    /// without any message.
    fn replace_older(&mut self, now: Instant, keep: SaId) {
        let Some((Some(identity), local, kept_peer)) = self.sas.get(&keep).map(|s| {
            (
                s.common.remote_identity.clone(),
                Arc::clone(&s.common.cfg),
                s.common.peer,
            )
        }) else {
            return;
        };
        let stale: Vec<SaId> = self
            .sas
            .iter()
            .filter(|(id, s)| {
                **id != keep
                    && s.common.remote_identity.as_ref() == Some(&identity)
                    && s.common.cfg.local_id == local.local_id
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let Some(sa) = self.sas.get_mut(&id) else {
                continue;
            };
            let peer = sa.common.peer;
            // In another tunnel nothing replaces it: the tunnel must come up again on its own
            // (a tunnel that starts itself re-initiates on DeletedByPeer, not on Replaced).
            let reason = if peer == kept_peer {
                Reason::Replaced
            } else {
                Reason::DeletedByPeer
            };
            if let State::Established(e) = &mut sa.state {
                self.dirty.push(id);
                for ch in e.children.drain(..) {
                    self.shared
                        .events
                        .push_back(child_delete_event(&sa.common, &ch));
                }
                self.shared.events.push_back(Event::IkeSaDown {
                    peer,
                    spis: sa.common.spis(),
                    reason,
                });
                sa.common.win.abandon();
                sa.state = State::Closing {
                    keys: None,
                    until: now,
                };
            }
        }
    }

    /// Removes the changed SAs that are finished and re-indexes the others. Every public
    /// method that can change an SA ends with it.
    fn settle(&mut self, now: Instant) {
        let mut dirty = core::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let tunnels: BTreeSet<PeerId> = dirty
            .iter()
            .filter_map(|id| self.sas.get(id).map(|sa| sa.common.peer))
            .collect();
        let mut failed = Vec::new();
        for id in dirty {
            let Some(sa) = self.sas.get(&id) else {
                continue;
            };
            if let Some(p) = self.peers.get_mut(&sa.common.peer)
                && p.attempt == Some(id)
            {
                if matches!(sa.state, State::Established(_)) {
                    p.attempt = None;
                } else if sa.finished(now) || matches!(sa.state, State::Closing { .. }) {
                    p.attempt = None;
                    failed.push(sa.common.peer);
                }
            }
            if !sa.finished(now) {
                self.index.update(id, sa, &self.shared.config);
                continue;
            }
            self.by_spi.remove(&sa.common.routing_key());
            self.sas.remove(&id);
            // Keyed by the address IKE_SA_INIT came from: the SA may have floated since.
            if let Some(key) = self.index.remove(id)
                && self.by_init.get(&key) == Some(&id)
            {
                self.by_init.remove(&key);
            }
        }
        for peer in failed {
            // the address did not work (unless another IKE SA made the attempt moot): the
            // next attempt tries the next one
            let up = self.index.of_peer(peer).into_iter().any(|id| {
                self.sas
                    .get(&id)
                    .is_some_and(|s| matches!(s.state, State::Established(_)))
            });
            if let Some(p) = self.peers.get_mut(&peer)
                && !up
            {
                p.next_addr = (p.next_addr + 1) % (1 + p.cfg.fallback_addrs.len());
            }
        }
        self.withdraw_initial_contact();
        let mut replaced = false;
        for peer in &tunnels {
            replaced |= self.maintain_reauth(now, *peer);
            replaced |= self.drop_duplicate(now, *peer);
            self.maintain_children(now, *peer);
        }
        self.changed.extend(tunnels);
        if replaced {
            // the older SAs' deletions changed them: settle those too (once: the
            // reauthentication is over)
            self.settle(now);
        }
    }

    /// An IKE SA of ours that has not yet sent IKE_AUTH drops its INITIAL_CONTACT once another
    /// SA with the same identities exists: the peer would otherwise take that one for stale.
    fn withdraw_initial_contact(&mut self) {
        let pending: Vec<SaId> = self
            .sas
            .iter()
            .filter(|(_, s)| s.common.initial_contact && matches!(s.state, State::InitSent(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in pending {
            let Some(sa) = self.sas.get(&id) else {
                continue;
            };
            let (peer, cfg) = (sa.common.peer, Arc::clone(&sa.common.cfg));
            let others = self
                .sas
                .iter()
                .any(|(other, s)| *other != id && shares_contact(s, peer, &cfg));
            if others && let Some(sa) = self.sas.get_mut(&id) {
                sa.common.initial_contact = false;
            }
        }
    }

    fn send_stateless(&mut self, local: SocketAddr, remote: SocketAddr, msg: &Message) {
        // Not sent if it cannot be encoded: no state depends on it, and the initiator retries.
        let Ok(bytes) = msg.encode() else { return };
        let natt = local.port() == self.shared.config.natt_port;
        self.shared.transmits.push_back(Transmit {
            local,
            remote,
            payload: if natt {
                crate::codec::with_non_esp_marker(&bytes)
            } else {
                bytes
            },
            non_esp_marker: natt,
        });
    }
}

/// An established IKE SA with a CHILD SA, as [`Endpoint::drop_duplicate`] compares them.
struct UpSa<'a> {
    spis: ([u8; 8], [u8; 8]),
    id: SaId,
    /// When its setup began and when it was established.
    setup: (Instant, Instant),
    /// The peer surely holds it ([`crate::sa::established::Established::settled`]).
    settled: bool,
    /// We initiated it.
    ours: bool,
    identity: Option<&'a crate::codec::Identification>,
    /// Its first CHILD SA's selectors, ours and the peer's.
    ts: (&'a [crate::codec::TsRange], &'a [crate::codec::TsRange]),
}

impl UpSa<'_> {
    /// Duplicates: two SAs authenticating the same identity and carrying the same selectors (a
    /// tunnel that accepts several identities, or whose selectors several narrower tunnels of
    /// the peer fit in, keeps each), at least one of them ours, set up at the same time (each
    /// began before the other was established: a race). Two of the peer's are left to the
    /// peer, and so is one it began beside an SA already up, ours or its own: it is
    /// reauthenticating and deletes the old SA itself (the driver simulation found a responder
    /// dropping the new SA of its peer's reauthentication because the old one came from an IKE
    /// rekey it had started, and the tunnel lost both).
    fn duplicates(&self, other: &Self) -> bool {
        self.id != other.id
            && (self.ours || other.ours)
            && self.identity == other.identity
            && self.ts == other.ts
            && self.setup.0 <= other.setup.1
            && other.setup.0 <= self.setup.1
    }
}

/// Whether `s` is an IKE SA (up or being set up) of tunnel `peer`, or of another tunnel between
/// the identities of `cfg`: then a new SA of `peer` must not claim INITIAL_CONTACT. With `%any`
/// as the remote identity any SA from our identity counts: leaving the notify out is always
/// safe.
fn shares_contact(s: &IkeSa, peer: PeerId, cfg: &PeerConfig) -> bool {
    if matches!(s.state, State::Closing { .. } | State::Gone) {
        return false;
    }
    if s.common.peer == peer {
        return true;
    }
    s.common.cfg.local_id == cfg.local_id
        && match &s.common.remote_identity {
            Some(r) => cfg.remote_id.matches(r),
            None => s.common.cfg.remote_id == cfg.remote_id,
        }
}

/// Where [`Endpoint::peers_by_remote`] files a tunnel: under each of its addresses, or `None`
/// for any.
fn remote_keys(cfg: &PeerConfig) -> Vec<Option<IpAddr>> {
    if cfg.remote_addr.ip().is_unspecified() {
        return vec![None];
    }
    let mut keys: Vec<Option<IpAddr>> = cfg.remote_addrs().map(|a| Some(a.ip())).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}
