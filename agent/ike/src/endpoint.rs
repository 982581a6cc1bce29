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
use crate::crypto::alg::Prf;
use crate::crypto::kdf;
use crate::crypto::rng::Rng;
use crate::event::{ChildSaId, EspSpi, Event, PeerId, Transmit};
use crate::reason::Reason;
use crate::sa::established::{self, child_delete_event};
use crate::sa::fragments::Added;
use crate::sa::ike_init::{InitRefused, InitReplied, InitSent};
use crate::sa::protect::{self, Opened, ProtectError};
use crate::sa::{Ctx, IkeSa, RequestKind, SaId, Side, State, informational, init_error_response};
use crate::window::RequestCheck;

mod index;
use index::SaIndex;

/// Counters of input that was dropped or answered without state (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams that did not parse as IKE (or were keepalives/ESP on the NAT-T port).
    pub malformed: u64,
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
}

#[derive(Debug)]
struct CookieSecret {
    version: u8,
    secret: [u8; 32],
}

#[derive(Debug, Default)]
struct Cookies {
    current: Option<CookieSecret>,
    previous: Option<CookieSecret>,
    rotated_at: Option<Instant>,
}

#[derive(Debug)]
struct Peer {
    cfg: Arc<PeerConfig>,
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
}

impl Shared {
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
        }
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
    /// SAs changed since the index was last brought up to date ([`Endpoint::settle`]).
    dirty: Vec<SaId>,
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
            },
            peers: BTreeMap::new(),
            peers_by_remote: HashMap::new(),
            next_peer: 0,
            sas: BTreeMap::new(),
            last_sa: 0,
            by_spi: HashMap::new(),
            by_init: HashMap::new(),
            index: SaIndex::default(),
            dirty: Vec::new(),
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

    /// Adds a tunnel. Nothing is sent until [`Endpoint::initiate`] (or the peer initiates).
    ///
    /// # Errors
    /// The configuration is unusable.
    pub fn add_peer(&mut self, cfg: PeerConfig) -> Result<PeerId, ConfigError> {
        cfg.validate()?;
        self.next_peer = self.next_peer.wrapping_add(1);
        let id = PeerId(self.next_peer);
        self.peers_by_remote
            .entry(remote_key(&cfg))
            .or_default()
            .insert(id);
        self.peers.insert(id, Peer { cfg: Arc::new(cfg) });
        Ok(id)
    }

    /// Starts an IKE SA (with its first CHILD SA) to a configured peer. Unknown peers are
    /// ignored.
    pub fn initiate(&mut self, now: Instant, peer: PeerId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let cfg = Arc::clone(&p.cfg);
        let others = self
            .index
            .of_peer(peer)
            .iter()
            .filter_map(|id| self.sas.get(id))
            .any(|s| s.established().is_some());
        let mut ctx = self.shared.ctx(now, &self.by_spi);
        let spi = ctx.ike_spi(Side::Initiator);
        match InitSent::start(&mut ctx, peer, cfg, spi) {
            Ok(mut sa) => {
                sa.common.initial_contact = !others;
                self.insert_sa(sa);
            }
            Err(reason) => self.shared.events.push_back(Event::IkeSaDown {
                peer,
                spis: crate::event::IkeSpis {
                    initiator: spi,
                    responder: Spi::ZERO,
                },
                reason,
            }),
        }
        self.settle(now);
    }

    /// The kernel saw traffic for an `onTraffic` tunnel: initiate unless an IKE SA for it is
    /// being set up or is up. One that is closing does not count: the kernel asks only once per
    /// flow until its acquire times out (30 s), so ignoring it would stall the tunnel that long.
    pub fn acquire(&mut self, now: Instant, peer: PeerId) {
        let live = self
            .index
            .of_peer(peer)
            .iter()
            .filter_map(|id| self.sas.get(id))
            .any(|s| !s.closing());
        if !live {
            self.initiate(now, peer);
        }
    }

    /// Removes a tunnel: every IKE SA with it is deleted (DELETE sent, CHILD SAs reported
    /// gone at once).
    pub fn remove_peer(&mut self, now: Instant, peer: PeerId) {
        if let Some(p) = self.peers.remove(&peer) {
            let key = remote_key(&p.cfg);
            if let Some(set) = self.peers_by_remote.get_mut(&key) {
                set.remove(&peer);
                if set.is_empty() {
                    self.peers_by_remote.remove(&key);
                }
            }
        }
        for id in self.index.of_peer(peer) {
            self.with_sa(now, id, established::delete_locally);
        }
        self.settle(now);
    }

    /// The kernel reports a CHILD SA's lifetime expiry (by either of its SPIs). A hard expiry
    /// deletes the CHILD SA (with an INFORMATIONAL to the peer); a soft expiry starts its rekey
    /// now (unless one is already queued or running, or the SA was already replaced).
    pub fn expire_child(&mut self, now: Instant, peer: PeerId, spi: EspSpi, hard: bool) {
        let found = self.index.of_peer(peer).into_iter().find(|id| {
            self.sas
                .get(id)
                .and_then(IkeSa::established)
                .is_some_and(|e| {
                    e.children
                        .iter()
                        .any(|ch| ch.spi_in == spi.0 || ch.spi_out == spi.0)
                })
        });
        let Some(id) = found else { return };
        if !hard {
            self.with_sa(now, id, |sa, ctx| {
                crate::sa::rekey::soft_expire(sa, ctx, spi.0);
            });
            self.settle(now);
            return;
        }
        self.with_sa(now, id, |sa, ctx| {
            let State::Established(e) = &mut sa.state else {
                return;
            };
            if let Some(pos) = e
                .children
                .iter()
                .position(|ch| ch.spi_in == spi.0 || ch.spi_out == spi.0)
            {
                let ch = e.children.remove(pos);
                ctx.events.push_back(child_delete_event(&sa.common, &ch));
                e.queue.push_back(RequestKind::DeleteChild(vec![ch.spi_in]));
                // As after every change to the queue: a Delete we cannot send ends the SA, as
                // it does on a timer or a response.
                established::flush_or_fail(sa, ctx);
            }
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
            self.sas.values().filter_map(IkeSa::next_timeout).min(),
            "the timer index is out of date"
        );
        self.index.next_deadline()
    }

    /// Runs every timer due at `now`. Call it when the instant from [`Endpoint::poll_timeout`]
    /// has come (calling it early does no harm); then poll as after any input.
    pub fn handle_timeout(&mut self, now: Instant) {
        for id in self.index.due(now) {
            self.with_sa(now, id, IkeSa::on_timeout);
        }
        self.settle(now);
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
                _ => {
                    self.shared.stats.malformed += 1;
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
                return;
            }
        };
        let h = wire.header;
        if h.exchange_type == ExchangeType::IKE_SA_INIT && !h.flags.is_response() {
            if h.flags.is_initiator() && h.responder_spi.is_zero() && h.message_id == 0 {
                self.on_init_request(now, local, remote, ike);
            } else {
                self.shared.stats.malformed += 1;
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
            return;
        };
        let mut outcome = Outcome::Handled;
        self.with_sa(now, id, |sa, ctx| {
            outcome = on_message(sa, ctx, local, remote, ike, &h);
        });
        match outcome {
            Outcome::Handled => {}
            Outcome::Integrity => self.shared.stats.integrity_failed += 1,
            Outcome::Unexpected => self.shared.stats.unexpected += 1,
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
            let peer = sa.common.peer;
            self.replace_older(now, id, peer);
        }
        // IKE SAs born from a rekey get their own routing entry.
        for born in core::mem::take(&mut self.shared.spawned) {
            self.insert_sa(born);
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

    /// INITIAL_CONTACT: the peer lost its state, so every other IKE SA with it (same tunnel,
    /// same authenticated identity: a tunnel that accepts several peers keeps the others) is
    /// stale. Their CHILD SAs are removed without any message.
    fn replace_older(&mut self, now: Instant, keep: SaId, peer: PeerId) {
        let identity = self
            .sas
            .get(&keep)
            .and_then(|s| s.common.remote_identity.clone());
        for id in self.index.of_peer(peer) {
            let Some(sa) = self.sas.get_mut(&id) else {
                continue;
            };
            if id == keep || sa.common.remote_identity != identity {
                continue;
            }
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
                    reason: Reason::Replaced,
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
        for id in dirty {
            let Some(sa) = self.sas.get(&id) else {
                continue;
            };
            if !sa.finished(now) {
                self.index.update(id, sa);
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
    }

    fn find_responder_config(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<(PeerId, Arc<PeerConfig>)> {
        let fits = |c: &PeerConfig| {
            (c.local_addr.ip().is_unspecified() || c.local_addr.ip() == local.ip())
                && c.local_addr.is_ipv4() == remote.is_ipv4()
        };
        // The first fitting tunnel for exactly this address, else the first for any address.
        let first = |key: Option<IpAddr>| {
            self.peers_by_remote
                .get(&key)
                .into_iter()
                .flatten()
                .find_map(|id| {
                    let p = self.peers.get(id)?;
                    fits(&p.cfg).then(|| (*id, Arc::clone(&p.cfg)))
                })
        };
        first(Some(remote.ip())).or_else(|| first(None))
    }

    fn on_init_request(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, raw: &[u8]) {
        let Ok(msg) = Message::parse(raw) else {
            self.shared.stats.malformed += 1;
            return;
        };
        let key = (remote, msg.header.initiator_spi);
        if let Some(id) = self.by_init.get(&key).copied() {
            // A retransmission (or a retry with a cookie that crossed our answer): resend ours.
            if let Some(sa) = self.sas.get_mut(&id)
                && let State::InitReplied(replied) = &mut sa.state
                && same_request(&replied.init.request, raw, &msg)
                && let Some(cached) = sa.common.win.cached_response()
            {
                // The initiator signs the request it sent last (RFC 7296 §2.15): after a cookie
                // retry that is the one with the COOKIE, whichever of its requests we answered.
                if replied.init.request != raw {
                    replied.init.request = raw.to_vec();
                }
                let cached = cached.to_vec();
                self.dirty.push(id);
                let mut ctx = self.shared.ctx(now, &self.by_spi);
                sa.common.transmit(&mut ctx, &cached);
                ctx.stats.retransmits_answered += 1;
            } else {
                self.shared.stats.unexpected += 1;
            }
            return;
        }
        let Some((peer, cfg)) = self.find_responder_config(local, remote) else {
            self.shared.stats.no_peer_config += 1;
            return;
        };
        if self.cookie_required(remote) && !self.cookie_valid(now, &msg, remote) {
            let cookie = self.make_cookie(now, &msg, remote, true);
            if let Some(cookie) = cookie {
                let answer =
                    init_error_response(&msg.header, Notify::new(NotifyType::COOKIE, cookie));
                self.send_stateless(local, remote, &answer);
                self.shared.stats.cookies_sent += 1;
            }
            return;
        }
        let mut ctx = self.shared.ctx(now, &self.by_spi);
        let spi_r = ctx.ike_spi(Side::Responder);
        match InitReplied::respond(&mut ctx, peer, cfg, &msg, raw, local, remote, spi_r) {
            Ok(sa) => {
                let id = self.insert_sa(sa);
                self.by_init.insert(key, id);
                // Indexed now, so that the key is remembered with it.
                self.settle(now);
                self.index.set_init_key(id, key);
            }
            Err(InitRefused::Answer(m)) => self.send_stateless(local, remote, &m),
            Err(InitRefused::Drop) => self.shared.stats.unexpected += 1,
        }
    }

    fn send_stateless(&mut self, local: SocketAddr, remote: SocketAddr, msg: &Message) {
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

    fn cookie_required(&self, remote: SocketAddr) -> bool {
        let (all, from_ip) = self.index.half_open(remote.ip());
        debug_assert_eq!(
            all,
            self.sas.values().filter(|s| s.half_open()).count(),
            "the half-open count is out of date"
        );
        all >= self.shared.config.cookie_threshold
            || from_ip >= self.shared.config.cookie_threshold_per_ip
    }

    fn rotate_cookie_secret(&mut self, now: Instant) {
        let due = match self.cookies.rotated_at {
            None => true,
            Some(t) => now >= t + self.shared.config.cookie_secret_lifetime,
        };
        if !due {
            return;
        }
        let mut secret = [0u8; 32];
        self.shared.rng.fill(&mut secret);
        let version = self
            .cookies
            .current
            .as_ref()
            .map_or(0, |c| c.version.wrapping_add(1));
        self.cookies.previous = self.cookies.current.take();
        self.cookies.current = Some(CookieSecret { version, secret });
        self.cookies.rotated_at = Some(now);
    }

    /// `Cookie = VersionIDofSecret | prf(secret, Ni | IPi | SPIi)` (RFC 7296 §2.6), with
    /// HMAC-SHA-256 as the PRF.
    fn make_cookie(
        &mut self,
        now: Instant,
        msg: &Message,
        remote: SocketAddr,
        current: bool,
    ) -> Option<Vec<u8>> {
        self.rotate_cookie_secret(now);
        let s = if current {
            self.cookies.current.as_ref()?
        } else {
            self.cookies.previous.as_ref()?
        };
        cookie_for(s, msg, remote)
    }

    fn cookie_valid(&mut self, now: Instant, msg: &Message, remote: SocketAddr) -> bool {
        // RFC 7296 §2.6: the cookie must be the first payload.
        let Some(Payload::Notify(n)) = msg.payloads.first() else {
            return false;
        };
        if n.ty != NotifyType::COOKIE {
            return false;
        }
        self.rotate_cookie_secret(now);
        [
            self.cookies.current.as_ref(),
            self.cookies.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|s| cookie_for(s, msg, remote))
        .any(|c| aws_lc_rs::constant_time::verify_slices_are_equal(&c, &n.data).is_ok())
    }
}

/// Where [`Endpoint::peers_by_remote`] files a tunnel.
fn remote_key(cfg: &PeerConfig) -> Option<IpAddr> {
    let ip = cfg.remote_addr.ip();
    (!ip.is_unspecified()).then_some(ip)
}

fn cookie_for(s: &CookieSecret, msg: &Message, remote: SocketAddr) -> Option<Vec<u8>> {
    let ni = msg.payloads.iter().find_map(|p| match p {
        Payload::Nonce(n) => Some(n.as_bytes()),
        _ => None,
    })?;
    let mut data = ni.to_vec();
    match remote.ip() {
        core::net::IpAddr::V4(a) => data.extend_from_slice(&a.octets()),
        core::net::IpAddr::V6(a) => data.extend_from_slice(&a.octets()),
    }
    data.extend_from_slice(&msg.header.initiator_spi.0);
    let mac = kdf::prf(Prf::HmacSha256, &s.secret, &data);
    let mut out = vec![s.version];
    out.extend_from_slice(mac.as_bytes());
    Some(out)
}

/// What became of a message for an existing SA (for [`Stats`]).
enum Outcome {
    Handled,
    Integrity,
    Unexpected,
    Retransmit,
}

/// Whether `raw` (parsed: `msg`) is the IKE_SA_INIT request we answered (`answered`) again:
/// byte for byte, or the same request with a COOKIE added in front, which an initiator sends when
/// our answer to its first request crossed a cookie challenge (§2.6: all other payloads
/// unchanged).
fn same_request(answered: &[u8], raw: &[u8], msg: &Message) -> bool {
    if answered == raw {
        return true;
    }
    let Ok(before) = Message::parse(answered) else {
        return false;
    };
    let without_cookie = |m: &Message| -> Vec<Payload> {
        m.payloads
            .iter()
            .filter(|p| !matches!(p, Payload::Notify(n) if n.ty == NotifyType::COOKIE))
            .cloned()
            .collect()
    };
    msg.notify(NotifyType::COOKIE).is_some()
        && before.header == msg.header
        && without_cookie(&before) == without_cookie(msg)
}

/// Takes an authenticated fragment (RFC 7383 §2.6): a fragment of the response we wait for or
/// of the peer's next request is stored, and once all are in, the whole inner payload chain is
/// parsed. Fragment 1 of a retransmitted request resends our cached response (§2.6.1); other
/// fragments of it are ignored. `Err` carries what became of a fragment that completed
/// nothing.
fn on_fragment(
    c: &mut crate::sa::Common,
    ctx: &mut Ctx<'_>,
    h: &Header,
    fragment: crate::codec::Fragment,
    first_payload: crate::codec::PayloadType,
    plain: zeroize::Zeroizing<Vec<u8>>,
) -> Result<Result<Vec<Payload>, ProtectError>, Outcome> {
    if !ctx.cfg.fragmentation {
        // We did not announce support: fragments are not ours to take.
        return Err(Outcome::Unexpected);
    }
    let response = h.flags.is_response();
    if response {
        if c.win.outstanding().is_none_or(|o| o.id != h.message_id) {
            return Err(Outcome::Unexpected);
        }
    } else {
        match c.win.check_request(h.message_id) {
            RequestCheck::Drop => return Err(Outcome::Unexpected),
            RequestCheck::Retransmitted if fragment.number == 1 => {
                c.last_heard = ctx.now;
                if let Some(d) = c.win.cached_response() {
                    let d = d.to_vec();
                    c.transmit(ctx, &d);
                }
                return Err(Outcome::Retransmit);
            }
            RequestCheck::Retransmitted => return Err(Outcome::Handled),
            RequestCheck::New => {}
        }
    }
    c.last_heard = ctx.now;
    match c.frags.add(
        response,
        h.message_id,
        h.exchange_type,
        fragment,
        first_payload,
        plain,
    ) {
        Added::Pending => Err(Outcome::Handled),
        Added::Refused => Err(Outcome::Unexpected),
        Added::Complete(first, plain) => {
            Ok(crate::codec::parse_inner(first, &plain).map_err(ProtectError::Syntax))
        }
    }
}

/// Routes a message for an existing SA through its state.
fn on_message(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    raw: &[u8],
    h: &Header,
) -> Outcome {
    let theirs_ok = if sa.common.initiator {
        h.responder_spi == sa.common.spi_r || matches!(sa.state, State::InitSent(_))
    } else {
        h.initiator_spi == sa.common.spi_i
    };
    if !theirs_ok {
        return Outcome::Unexpected;
    }
    if h.exchange_type == ExchangeType::IKE_SA_INIT {
        // Only the initiator waiting for the answer cares.
        if !h.flags.is_response() || sa.common.win.outstanding().is_none_or(|o| o.id != 0) {
            return Outcome::Unexpected;
        }
        let State::InitSent(_) = sa.state else {
            return Outcome::Unexpected;
        };
        let Ok(msg) = Message::parse(raw) else {
            return Outcome::Unexpected;
        };
        if remote.ip() != sa.common.remote.ip() {
            return Outcome::Unexpected;
        }
        let State::InitSent(st) = core::mem::replace(&mut sa.state, State::Gone) else {
            return Outcome::Unexpected;
        };
        sa.state = st.on_response(&mut sa.common, ctx, &msg, raw);
        return Outcome::Handled;
    }
    let keys = match &sa.state {
        State::InitReplied(s) => &s.init.keys,
        State::AuthSent(s) => &s.init.keys,
        State::Established(e) => &e.keys,
        State::Closing { keys: Some(k), .. } => k,
        _ => return Outcome::Unexpected,
    };
    let opened = match protect::open(raw, &keys.inbound) {
        Ok(Opened::Whole(p)) => Ok(p),
        Ok(Opened::Fragment {
            fragment,
            first_payload,
            plain,
        }) => match on_fragment(&mut sa.common, ctx, h, fragment, first_payload, plain) {
            Ok(p) => p,
            Err(outcome) => return outcome,
        },
        Err(e) => Err(e),
    };
    let payloads = match opened {
        Ok(p) => p,
        Err(ProtectError::Syntax(e)) => {
            // Authentic but malformed: a request gets INVALID_SYNTAX (or
            // UNSUPPORTED_CRITICAL_PAYLOAD), a response ends the exchange.
            if !h.flags.is_response()
                && sa.common.win.check_request(h.message_id) == RequestCheck::New
            {
                let mut n = Notify::empty(e.notify_type());
                if let crate::codec::DecodeError::UnsupportedCriticalPayload(t) = e {
                    n.data = vec![t.0];
                }
                sa.common.send_response_or_drop(
                    ctx,
                    keys,
                    h.exchange_type,
                    h.message_id,
                    &[Payload::Notify(n)],
                );
                if matches!(sa.state, State::InitReplied(_)) {
                    sa.common.down(ctx, Reason::InvalidSyntax);
                    sa.close(ctx);
                }
            }
            return Outcome::Handled;
        }
        Err(_) => return Outcome::Integrity,
    };
    sa.common.last_heard = ctx.now;
    // RFC 7296 §2.23: follow the peer to a new address only for a new message. A replayed
    // request or a stale response passes the integrity check too, and must not send our
    // traffic to whoever replayed it.
    let moved = (local, remote) != (sa.common.local, sa.common.remote)
        && (sa.common.nat.encapsulate() || local.port() == ctx.cfg.natt_port);
    if h.flags.is_response() {
        let Some(out) = sa.common.win.take_response(h.message_id) else {
            return Outcome::Unexpected;
        };
        if moved {
            sa.common.local = local;
            sa.common.remote = remote;
        }
        match core::mem::replace(&mut sa.state, State::Gone) {
            State::AuthSent(s)
                if out.kind == RequestKind::Auth && h.exchange_type == ExchangeType::IKE_AUTH =>
            {
                sa.state = s.on_response(&mut sa.common, ctx, &payloads);
            }
            State::Established(e) => {
                sa.state = State::Established(e);
                informational::on_response(sa, ctx, out.kind, &payloads);
            }
            other => sa.state = other,
        }
        established::flush_or_fail(sa, ctx);
        return Outcome::Handled;
    }
    match sa.common.win.check_request(h.message_id) {
        RequestCheck::Drop => return Outcome::Unexpected,
        RequestCheck::Retransmitted => {
            if let Some(d) = sa.common.win.cached_response() {
                let d = d.to_vec();
                // Answered where it came from (the peer may have moved while our answer was
                // lost), but the SA stays where it is.
                let keep = (sa.common.local, sa.common.remote);
                (sa.common.local, sa.common.remote) = (local, remote);
                sa.common.transmit(ctx, &d);
                (sa.common.local, sa.common.remote) = keep;
            }
            return Outcome::Retransmit;
        }
        RequestCheck::New => {}
    }
    if moved {
        sa.common.local = local;
        sa.common.remote = remote;
    }
    match core::mem::replace(&mut sa.state, State::Gone) {
        State::InitReplied(s) if h.exchange_type == ExchangeType::IKE_AUTH => {
            match s.on_auth_request(&mut sa.common, ctx, h.message_id, &payloads) {
                Ok(next) => sa.state = next,
                Err(e) => {
                    let (_, keys) = *e;
                    sa.state = State::Closing {
                        keys,
                        until: ctx.now,
                    };
                    sa.close(ctx);
                }
            }
        }
        State::Established(e) => {
            sa.state = State::Established(e);
            informational::on_request(sa, ctx, h.exchange_type, h.message_id, &payloads);
        }
        State::Closing {
            keys: Some(keys),
            until,
        } => {
            sa.state = crate::sa::rekey::closing_request(
                &mut sa.common,
                ctx,
                keys,
                until,
                h.exchange_type,
                h.message_id,
                &payloads,
            );
        }
        other => sa.state = other,
    }
    Outcome::Handled
}
