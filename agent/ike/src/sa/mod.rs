//! IKE SA state machines. Each protocol state is its own type and a transition consumes it
//! (rustls style); [`IkeSa`] holds what every state shares (SPIs, addresses, message-ID window)
//! and the current [`State`].
//!
//! - initiator: [`ike_init::InitSent`] → [`ike_auth::AuthSent`] → [`established::Established`]
//! - responder: [`ike_init::InitReplied`] → [`established::Established`]
//! - both: [`State::Closing`] (answering retransmissions of our last response, or waiting for
//!   the peer's answer to our DELETE) until the SA is dropped.

pub(crate) mod cert_auth;
pub(crate) mod child;
pub(crate) mod closing;
pub(crate) mod established;
pub(crate) mod fragments;
pub(crate) mod ike_auth;
pub(crate) mod ike_init;
pub(crate) mod inbound;
pub(crate) mod informational;
pub(crate) mod mapping;
pub(crate) mod proposals;
pub(crate) mod protect;
pub(crate) mod rekey;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use core::net::SocketAddr;

use crate::codec::{
    ExchangeType, Flags, Header, Message, Notify, Payload, Spi, with_non_esp_marker,
};
use crate::config::{EndpointConfig, PeerConfig};
use crate::crypto::alg::{KeGroup, Prf};
use crate::crypto::keys::IkeSaKeys;
use crate::crypto::rng::Rng;
use crate::crypto::sk::SkCipher;
use crate::endpoint::Stats;
use crate::event::{ChildSaId, Event, IkeSpis, NatState, PeerId, Transmit};
use crate::proposal::IkeChoice;
use crate::reason::Reason;
use crate::window::Window;

/// What one of our requests was for (the kind of the outstanding request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// IKE_SA_INIT.
    Init,
    /// IKE_AUTH.
    Auth,
    /// Empty INFORMATIONAL (liveness check).
    Dpd,
    /// INFORMATIONAL with Delete(IKE).
    DeleteIke,
    /// INFORMATIONAL with Delete(ESP) for these inbound SPIs of ours.
    DeleteChild(Vec<[u8; 4]>),
    /// INFORMATIONAL carrying an error notification, e.g. AUTHENTICATION_FAILED.
    Notify,
    /// CREATE_CHILD_SA rekeying this CHILD SA; `group` overrides the PFS group (after
    /// INVALID_KE_PAYLOAD).
    RekeyChild {
        old: ChildSaId,
        group: Option<KeGroup>,
    },
    /// CREATE_CHILD_SA creating a new CHILD SA (no REKEY_SA, RFC 7296 §1.3.1) on an IKE SA that
    /// has none; `group` as for [`RequestKind::RekeyChild`].
    CreateChild { group: Option<KeGroup> },
    /// CREATE_CHILD_SA rekeying the IKE SA itself; `group` as for [`RequestKind::RekeyChild`].
    RekeyIke { group: Option<KeGroup> },
}

impl RequestKind {
    /// The exchange a request of this kind is sent in (its response must be of the same).
    pub(crate) fn exchange(&self) -> ExchangeType {
        match self {
            Self::Init => ExchangeType::IKE_SA_INIT,
            Self::Auth => ExchangeType::IKE_AUTH,
            Self::Dpd | Self::DeleteIke | Self::DeleteChild(_) | Self::Notify => {
                ExchangeType::INFORMATIONAL
            }
            Self::RekeyChild { .. } | Self::CreateChild { .. } | Self::RekeyIke { .. } => {
                ExchangeType::CREATE_CHILD_SA
            }
        }
    }
}

/// Which end of an IKE SA we are: its original initiator or responder (RFC 7296 §2.2). With our
/// SPI, it is what the peer's messages are routed by: a peer may pick the same SPI as we did
/// for another SA where it plays the other part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    Initiator,
    Responder,
}

impl Side {
    pub fn of(initiator: bool) -> Self {
        if initiator {
            Self::Initiator
        } else {
            Self::Responder
        }
    }
}

/// The endpoint's handle for one IKE SA. Allocated in increasing order, which is the order SAs
/// with simultaneous timers are visited in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SaId(pub u64);

/// What the transitions need from the endpoint: the time, randomness, configuration, and the
/// queues they append to. Built by the endpoint in one place (`Shared::ctx`).
pub(crate) struct Ctx<'a> {
    pub now: Instant,
    pub rng: &'a mut dyn Rng,
    pub cfg: &'a EndpointConfig,
    pub transmits: &'a mut VecDeque<Transmit>,
    pub events: &'a mut VecDeque<Event>,
    pub next_child: &'a mut u64,
    /// The endpoint's SPI routing table (to draw unused SPIs for rekeyed IKE SAs).
    pub by_spi: &'a HashMap<(Spi, Side), SaId>,
    /// IKE SAs born in this transition (IKE SA rekeys), for the endpoint to take over.
    pub spawned: &'a mut Vec<IkeSa>,
    /// The wall-clock time (Unix seconds), if the driver told us (certificate validity).
    pub unix_time: Option<i64>,
    /// The endpoint's counters.
    pub stats: &'a mut Stats,
    /// The driver's source of inbound ESP SPIs, if it gave one.
    pub spis: Option<&'a mut dyn crate::spi::EspSpiSource>,
}

impl Ctx<'_> {
    /// Random bytes.
    pub fn random<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.rng.fill(&mut b);
        b
    }

    /// An inbound ESP SPI for an SA from `remote` to `local`: the driver's
    /// [`crate::spi::EspSpiSource`] if it gave one and it answers, else a random one (values
    /// below 256 are reserved, RFC 4303 §2.1).
    pub fn esp_spi(&mut self, local: core::net::IpAddr, remote: core::net::IpAddr) -> [u8; 4] {
        if let Some(src) = self.spis.as_mut()
            && let Some(spi) = src.inbound_esp_spi(local, remote).filter(|s| *s >= 256)
        {
            return spi.to_be_bytes();
        }
        loop {
            let s: [u8; 4] = self.random();
            if u32::from_be_bytes(s) >= 256 {
                return s;
            }
        }
    }

    /// A fresh nonce (32 bytes, at least half the PRF key size of every PRF we support).
    pub fn nonce(&mut self) -> Vec<u8> {
        self.random::<32>().to_vec()
    }

    /// A fresh IKE SPI, unused by any IKE SA (held, or born in this transition) where we are
    /// on `side`. The only place IKE SPIs of ours are drawn.
    pub fn ike_spi(&mut self, side: Side) -> Spi {
        loop {
            let spi = Spi(self.random());
            let taken = self.by_spi.contains_key(&(spi, side))
                || self
                    .spawned
                    .iter()
                    .any(|s| s.common.routing_key() == (spi, side));
            if !spi.is_zero() && !taken {
                return spi;
            }
        }
    }

    /// Emits a failure diagnostic (always).
    pub fn diagnose(&mut self, d: crate::diagnostic::Diagnostic) {
        self.events.push_back(Event::Diagnostic(Box::new(d)));
    }

    /// Emits a success-path diagnostic, made only when [`EndpointConfig::diagnostics`] is on.
    pub fn detail(&mut self, d: impl FnOnce() -> crate::diagnostic::Diagnostic) {
        if self.cfg.diagnostics {
            self.diagnose(d());
        }
    }

    /// A fresh CHILD SA id.
    pub fn child_id(&mut self) -> crate::event::ChildSaId {
        *self.next_child = self.next_child.wrapping_add(1);
        crate::event::ChildSaId(*self.next_child)
    }
}

/// Keys and ciphers of an IKE SA after IKE_SA_INIT.
pub(crate) struct Keys {
    pub choice: IkeChoice,
    pub sk: IkeSaKeys,
    /// Protects what we send.
    pub out: SkCipher,
    /// Opens what we receive.
    pub inbound: SkCipher,
}

impl core::fmt::Debug for Keys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keys")
            .field("choice", &self.choice)
            .finish_non_exhaustive()
    }
}

impl Keys {
    pub fn prf(&self) -> Prf {
        self.choice.prf
    }
}

/// What every state shares.
#[derive(Debug)]
pub(crate) struct Common {
    pub peer: PeerId,
    pub cfg: Arc<PeerConfig>,
    pub initiator: bool,
    pub spi_i: Spi,
    pub spi_r: Spi,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub nat: NatState,
    pub win: Window<RequestKind>,
    /// Last time an authenticated message (or, before IKE_AUTH, any valid one) arrived.
    pub last_heard: Instant,
    /// When this IKE SA's setup began: its IKE_SA_INIT sent or received (a rekeyed SA keeps its
    /// predecessor's); for a resumed one, when the peer was last heard. The endpoint tells a
    /// race of two setups from a reauthentication by it (`Endpoint::drop_duplicate`), and a
    /// reauthentication's old SAs from the peer's own new one (`Endpoint::maintain_reauth`).
    pub started: Instant,
    /// Last time anything was sent to the peer: a NAT keepalive is due `keepalive` after it.
    pub last_sent: Instant,
    /// [`crate::EndpointConfig::nat_keepalive`] when the SA was made.
    pub keepalive: Option<core::time::Duration>,
    /// Send INITIAL_CONTACT in IKE_AUTH (no other IKE SA with this peer exists).
    pub initial_contact: bool,
    /// The peer announced RFC 7383 fragmentation in IKE_SA_INIT: our large messages are sent
    /// as fragments.
    pub peer_fragmentation: bool,
    /// Received fragments being put back together.
    pub frags: fragments::Reassembly,
    /// The identity the peer proved in IKE_AUTH (`None` before).
    pub remote_identity: Option<crate::codec::Identification>,
}

impl Common {
    pub fn spis(&self) -> IkeSpis {
        IkeSpis {
            initiator: self.spi_i,
            responder: self.spi_r,
        }
    }

    /// Our own SPI (the one the peer's messages are routed by).
    pub fn our_spi(&self) -> Spi {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }

    /// What the endpoint routes the peer's messages for this SA by.
    pub fn routing_key(&self) -> (Spi, Side) {
        (self.our_spi(), Side::of(self.initiator))
    }

    /// A header for a message of ours.
    pub fn header(&self, exchange_type: ExchangeType, response: bool, message_id: u32) -> Header {
        let mut flags = Flags(0);
        if self.initiator {
            flags = flags | Flags::INITIATOR;
        }
        if response {
            flags = flags | Flags::RESPONSE;
        }
        Header {
            initiator_spi: self.spi_i,
            responder_spi: self.spi_r,
            exchange_type,
            flags,
            message_id,
        }
    }

    /// Queues IKE messages for the wire, adding the non-ESP marker on the NAT-T port.
    pub fn transmit(&mut self, ctx: &mut Ctx<'_>, datagrams: &[Vec<u8>]) {
        let natt = self.local.port() == ctx.cfg.natt_port;
        self.last_sent = ctx.now;
        for d in datagrams {
            ctx.transmits.push_back(Transmit {
                local: self.local,
                remote: self.remote,
                payload: if natt {
                    with_non_esp_marker(d)
                } else {
                    d.clone()
                },
                non_esp_marker: natt,
            });
        }
    }

    /// When a NAT keepalive is due: only while we are behind a NAT (then our mapping is what
    /// the peer's traffic depends on; a peer behind one keeps its own) and IKE has moved to
    /// the NAT-T port.
    pub fn keepalive_at(&self, cfg: &EndpointConfig) -> Option<Instant> {
        let interval = self.keepalive?;
        (self.nat.local_behind_nat && self.local.port() == cfg.natt_port)
            .then(|| self.last_sent + interval)
    }

    /// Sends a NAT keepalive (RFC 3948 §2.3: one 0xFF octet, no non-ESP marker).
    pub fn send_keepalive(&mut self, ctx: &mut Ctx<'_>) {
        self.last_sent = ctx.now;
        ctx.transmits.push_back(Transmit {
            local: self.local,
            remote: self.remote,
            payload: vec![crate::codec::NAT_KEEPALIVE],
            non_esp_marker: false,
        });
    }

    /// The longest IKE message (header included, non-ESP marker excluded) we send in one
    /// datagram, or `None` when the peer cannot take fragments. `fragment_size` counts the whole
    /// IP datagram, as strongSwan's setting does: the IP header (20 octets for IPv4, 40 for IPv6,
    /// no options), the UDP header (8) and, on the NAT-T port, the non-ESP marker (4) come off.
    pub fn max_message_len(&self, cfg: &EndpointConfig) -> Option<usize> {
        if !self.peer_fragmentation {
            return None;
        }
        let ip = if self.remote.is_ipv4() { 20 } else { 40 };
        let marker = if self.local.port() == cfg.natt_port {
            4
        } else {
            0
        };
        Some(cfg.fragment_size.saturating_sub(ip + 8 + marker))
    }

    /// Moves IKE to the NAT-T port (RFC 7296 §2.23) when NAT was detected or forced. An
    /// initiator configured with another port than the IKE port for the peer stays on it, as
    /// strongSwan's `remote_port` does: only the peer's operator knows where its NAT-T port is.
    pub fn float_if_natted(&mut self, cfg: &EndpointConfig) {
        if self.initiator && self.remote.port() != cfg.ike_port {
            return;
        }
        if self.nat.encapsulate() && self.local.port() != cfg.natt_port {
            self.local.set_port(cfg.natt_port);
            self.remote.set_port(cfg.natt_port);
        }
    }

    /// Encrypts and sends a request of ours (fragmented if it is too long and the peer takes
    /// fragments) and starts its retransmission timer.
    pub fn send_request(
        &mut self,
        ctx: &mut Ctx<'_>,
        keys: &Keys,
        exchange: ExchangeType,
        payloads: &[Payload],
        kind: RequestKind,
    ) -> Result<(), Reason> {
        let header = self.header(exchange, false, self.win.next_id());
        let datagrams = protect::seal_datagrams(
            &header,
            payloads,
            &keys.out,
            &mut *ctx.rng,
            self.max_message_len(ctx.cfg),
        )
        .map_err(|_| Reason::Encode)?;
        self.transmit(ctx, &datagrams);
        self.win.sent(ctx.now, &ctx.cfg.retransmit, datagrams, kind);
        Ok(())
    }

    /// Encrypts and sends our response to request `id`, caching it for retransmissions.
    pub fn send_response(
        &mut self,
        ctx: &mut Ctx<'_>,
        keys: &Keys,
        exchange: ExchangeType,
        id: u32,
        payloads: &[Payload],
    ) -> Result<(), Reason> {
        let header = self.header(exchange, true, id);
        let datagrams = protect::seal_datagrams(
            &header,
            payloads,
            &keys.out,
            &mut *ctx.rng,
            self.max_message_len(ctx.cfg),
        )
        .map_err(|_| Reason::Encode)?;
        self.transmit(ctx, &datagrams);
        self.win.responded(id, datagrams);
        Ok(())
    }

    /// [`Common::send_response`] for an answer whose loss changes nothing on our side: the
    /// request has been acted on either way, and the peer, the side waiting, retransmits it
    /// until it gets an answer or gives up. (A request of ours that cannot be built ends the SA
    /// instead: see [`established::flush`].)
    pub fn send_response_or_drop(
        &mut self,
        ctx: &mut Ctx<'_>,
        keys: &Keys,
        exchange: ExchangeType,
        id: u32,
        payloads: &[Payload],
    ) {
        let _ = self.send_response(ctx, keys, exchange, id, payloads);
    }

    /// Sends an unprotected message (IKE_SA_INIT and its error answers).
    pub fn send_plain(&mut self, ctx: &mut Ctx<'_>, msg: &Message) -> Option<Vec<u8>> {
        let bytes = msg.encode().ok()?;
        self.transmit(ctx, core::slice::from_ref(&bytes));
        Some(bytes)
    }

    pub fn down(&self, ctx: &mut Ctx<'_>, reason: Reason) {
        ctx.events.push_back(Event::IkeSaDown {
            peer: self.peer,
            spis: self.spis(),
            reason,
        });
    }
}

/// The protocol state of an IKE SA. (Variants differ in size; there is one per IKE SA, so
/// boxing would only add allocations.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum State {
    InitSent(ike_init::InitSent),
    InitReplied(ike_init::InitReplied),
    AuthSent(ike_auth::AuthSent),
    Established(established::Established),
    /// Going away: answers retransmissions from the cache (and, when we sent a DELETE, waits
    /// for its answer) until `until`; then it is dropped.
    Closing {
        keys: Option<Keys>,
        until: Instant,
    },
    /// Transient placeholder while a transition runs; never observed outside one.
    Gone,
}

/// One IKE SA.
#[derive(Debug)]
pub(crate) struct IkeSa {
    pub common: Common,
    pub state: State,
}

impl IkeSa {
    /// Whether the SA is done and can be dropped.
    pub fn finished(&self, now: Instant) -> bool {
        match &self.state {
            State::Gone => true,
            State::Closing { until, .. } => now >= *until && !self.common.win.busy(),
            _ => false,
        }
    }

    /// Whether it is a responder's half-open SA.
    pub fn half_open(&self) -> bool {
        matches!(self.state, State::InitReplied(_))
    }

    pub fn established(&self) -> Option<&established::Established> {
        match &self.state {
            State::Established(e) => Some(e),
            _ => None,
        }
    }

    /// The earliest time this SA wants [`IkeSa::on_timeout`].
    pub fn next_timeout(&self, cfg: &EndpointConfig) -> Option<Instant> {
        let state = match &self.state {
            State::InitReplied(s) => Some(s.expires),
            State::Established(e) => e.next_timeout(&self.common, cfg),
            // While a request is in flight only its timer matters.
            State::Closing { until, .. } if !self.common.win.busy() => Some(*until),
            _ => None,
        };
        match (self.common.win.deadline(), state) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Retransmission and state timers.
    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>) {
        use crate::window::Timeout;
        match self.common.win.on_timeout(ctx.now, &ctx.cfg.retransmit) {
            Timeout::Nothing => {}
            // An IKE_SA_INIT refused (unauthenticated) and answered by nobody else since.
            Timeout::Resend
                if let State::InitSent(s) = &self.state
                    && let Some(r) = s.refused() =>
            {
                self.common.win.abandon();
                self.common.down(ctx, r);
                self.state = State::Gone;
                return;
            }
            Timeout::Resend => {
                if let Some(o) = self.common.win.outstanding() {
                    let d = o.datagrams.clone();
                    self.common.transmit(ctx, &d);
                    ctx.stats.retransmits_sent += 1;
                }
            }
            Timeout::GiveUp => {
                let kind = self.common.win.abandon().map(|o| o.kind);
                match &mut self.state {
                    State::Closing { .. } => {}
                    State::Established(e) => {
                        e.delete_all_children(&self.common, ctx);
                        self.common.down(ctx, Reason::PeerUnreachable);
                        self.state = State::Gone;
                    }
                    _ => {
                        if kind.is_some() {
                            self.common.down(ctx, Reason::PeerUnreachable);
                        }
                        self.state = State::Gone;
                    }
                }
                return;
            }
        }
        match &mut self.state {
            State::InitReplied(s) if ctx.now >= s.expires => {
                // Never authenticated: nothing was reported up, nothing to report down.
                self.state = State::Gone;
            }
            State::Established(_) => self.with_established(ctx, established::on_timeout),
            _ => {}
        }
    }
}

/// An unprotected error answer to an IKE_SA_INIT request (no state kept): the request's SPIs
/// with a zero responder SPI, as RFC 7296 §2.6 / §1.2 want for COOKIE and INVALID_KE_PAYLOAD.
pub(crate) fn init_error_response(request: &Header, notify: Notify) -> Message {
    Message {
        header: Header {
            initiator_spi: request.initiator_spi,
            responder_spi: Spi::ZERO,
            exchange_type: ExchangeType::IKE_SA_INIT,
            flags: Flags::RESPONSE,
            message_id: 0,
        },
        payloads: vec![Payload::Notify(notify)],
    }
}
