//! IKE_SA_INIT (RFC 7296 §1.2): the initiator's [`InitSent`] and the responder's
//! [`InitReplied`], with NAT detection, COOKIE and INVALID_KE_PAYLOAD retries.

use std::sync::Arc;
use std::time::Instant;

use core::net::SocketAddr;

use super::proposals;
use super::{Common, Ctx, IkeSa, Keys, RequestKind, State, init_error_response};
use crate::codec::{
    ExchangeType, Flags, HashAlgorithm, Header, KeyExchange as KePayload, Message, Nonce, Notify,
    NotifyType, Payload, Spi,
};
use crate::config::{AuthConfig, PeerConfig};
use crate::crypto::alg::KeGroup;
use crate::crypto::kdf;
use crate::crypto::ke::KeyExchange;
use crate::crypto::sk::SkCipher;
use crate::diagnostic::{self, Diagnostic, SaKind};
use crate::event::{NatState, PeerId};
use crate::natd;
use crate::proposal::{IkeChoice, select_ike};
use crate::reason::Reason;
use crate::window::Window;

/// How many COOKIE or INVALID_KE_PAYLOAD round trips an initiator accepts for one SA.
const MAX_INIT_RETRIES: u8 = 4;

/// The hash algorithms we advertise for RFC 7427 signatures. Not IDENTITY (5): RFC 8420 makes
/// it the announcement of EdDSA, which we cannot verify (review M-1d), so a peer with an Ed25519
/// key learns it in IKE_SA_INIT instead of failing AUTH.
const SIGNATURE_HASHES: [HashAlgorithm; 3] = [
    HashAlgorithm::SHA2_256,
    HashAlgorithm::SHA2_384,
    HashAlgorithm::SHA2_512,
];

/// What both ends hold once IKE_SA_INIT is done.
#[derive(Debug)]
pub(crate) struct InitDone {
    pub keys: Keys,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    /// The IKE_SA_INIT request exactly as sent (the initiator's RealMessage1).
    pub request: Vec<u8>,
    /// The IKE_SA_INIT response exactly as sent (the responder's RealMessage2).
    pub response: Vec<u8>,
    /// The hash algorithms the peer accepts for RFC 7427 signatures (SIGNATURE_HASH_ALGORITHMS).
    pub peer_hashes: Vec<HashAlgorithm>,
}

/// Initiator: IKE_SA_INIT request sent, waiting for the answer.
#[derive(Debug)]
pub(crate) struct InitSent {
    ke: KeyExchange,
    ni: Vec<u8>,
    request: Vec<u8>,
    cookie: Option<Vec<u8>>,
    retries: u8,
    fake_natd: Option<[u8; 20]>,
    /// An unauthenticated error answer already received: the attempt ends with it when the
    /// next retransmission falls due, unless a real answer comes first (RFC 7296 §2.21.1,
    /// review M-1a: anyone who saw our SPI can send one).
    refused: Option<Reason>,
}

/// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH until `expires`.
#[derive(Debug)]
pub(crate) struct InitReplied {
    pub init: InitDone,
    pub expires: Instant,
    /// The other tunnels that fit the initiator's address, in the order they are tried: in
    /// IKE_AUTH the first whose remote identity matches IDi takes over if ours does not.
    pub alternatives: Vec<(PeerId, Arc<PeerConfig>)>,
}

fn common_notifies(payloads: &mut Vec<Payload>, fragmentation: bool) {
    if fragmentation {
        payloads.push(Payload::Notify(Notify::empty(
            NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
        )));
    }
    payloads.push(Payload::Notify(Notify::signature_hash_algorithms(
        &SIGNATURE_HASHES,
    )));
}

/// The hash algorithms of the peer's SIGNATURE_HASH_ALGORITHMS notify (none if absent).
fn peer_hashes(msg: &Message) -> Vec<HashAlgorithm> {
    msg.notify(NotifyType::SIGNATURE_HASH_ALGORITHMS)
        .and_then(Notify::hash_algorithms)
        .unwrap_or_default()
}

fn first_group(cfg: &PeerConfig) -> Result<KeGroup, Reason> {
    cfg.ike_proposals
        .iter()
        .find_map(|p| p.ke.first().copied())
        // PeerConfig::validate wants a key exchange group in every IKE proposal.
        .ok_or(Reason::InternalError)
}

impl InitSent {
    fn message(&self, c: &Common, cfg: &PeerConfig, fragmentation: bool) -> Message {
        let mut payloads = Vec::new();
        if let Some(cookie) = &self.cookie {
            payloads.push(Payload::Notify(Notify::new(
                NotifyType::COOKIE,
                cookie.clone(),
            )));
        }
        payloads.push(Payload::Sa(proposals::ike_offer(&cfg.ike_proposals, &[])));
        payloads.push(Payload::KeyExchange(KePayload {
            group: self.ke.group().id(),
            data: self.ke.public_value().to_vec(),
        }));
        if let Some(n) = Nonce::new(self.ni.clone()) {
            payloads.push(Payload::Nonce(n));
        }
        for n in natd::natd_notifies(c.spi_i, Spi::ZERO, c.local, c.remote, self.fake_natd) {
            payloads.push(Payload::Notify(n));
        }
        common_notifies(&mut payloads, fragmentation);
        Message {
            header: Header {
                initiator_spi: c.spi_i,
                responder_spi: Spi::ZERO,
                exchange_type: ExchangeType::IKE_SA_INIT,
                flags: Flags::INITIATOR,
                message_id: 0,
            },
            payloads,
        }
    }

    /// Starts an IKE SA as initiator: sends the IKE_SA_INIT request.
    pub fn start(
        ctx: &mut Ctx<'_>,
        peer: PeerId,
        cfg: Arc<PeerConfig>,
        remote: SocketAddr,
        spi_i: Spi,
    ) -> Result<IkeSa, Reason> {
        let group = first_group(&cfg)?;
        let ke = KeyExchange::generate(group, &mut *ctx.rng).map_err(|_| Reason::LocalCrypto)?;
        let fake_natd = cfg.force_encapsulation.then(|| ctx.random::<20>());
        // RFC 7296 §2.23: a peer reached on the NAT-T port hears us on ours, with the marker
        let port = if remote.port() == ctx.cfg.natt_port {
            ctx.cfg.natt_port
        } else {
            ctx.cfg.ike_port
        };
        let local = SocketAddr::new(cfg.local_addr.ip(), port);
        let mut c = Common {
            peer,
            local,
            remote,
            cfg,
            initiator: true,
            spi_i,
            spi_r: Spi::ZERO,
            nat: NatState::default(),
            win: Window::new(0, 0),
            last_heard: ctx.now,
            started: ctx.now,
            last_sent: ctx.now,
            keepalive: ctx.cfg.nat_keepalive,
            initial_contact: true,
            peer_fragmentation: false,
            frags: Default::default(),
            remote_identity: None,
        };
        let st = InitSent {
            ke,
            ni: ctx.nonce(),
            request: Vec::new(),
            cookie: None,
            retries: 0,
            fake_natd,
            refused: None,
        };
        let mut st = st;
        let cfg = Arc::clone(&c.cfg);
        let bytes = c
            .send_plain(ctx, &st.message(&c, &cfg, ctx.cfg.fragmentation))
            .ok_or(Reason::Encode)?;
        st.request = bytes.clone();
        c.win
            .sent(ctx.now, &ctx.cfg.retransmit, vec![bytes], RequestKind::Init);
        Ok(IkeSa {
            common: c,
            state: State::InitSent(st),
        })
    }

    fn resend(mut self, c: &mut Common, ctx: &mut Ctx<'_>) -> State {
        let cfg = Arc::clone(&c.cfg);
        match c.send_plain(ctx, &self.message(c, &cfg, ctx.cfg.fragmentation)) {
            Some(bytes) => {
                self.request = bytes.clone();
                c.win
                    .resent_same_id(ctx.now, &ctx.cfg.retransmit, vec![bytes]);
                State::InitSent(self)
            }
            None => {
                c.win.abandon();
                c.down(ctx, Reason::Encode);
                State::Gone
            }
        }
    }

    /// Notes an unauthenticated refusal and keeps waiting (see `refused`); the first one is
    /// the reason reported.
    fn refuse(mut self, reason: Reason) -> State {
        self.refused.get_or_insert(reason);
        State::InitSent(self)
    }

    /// The refusal to end the attempt with when its retransmission falls due.
    pub fn refused(&self) -> Option<Reason> {
        self.refused
    }

    /// Handles the IKE_SA_INIT response.
    pub fn on_response(
        mut self,
        c: &mut Common,
        ctx: &mut Ctx<'_>,
        msg: &Message,
        raw: &[u8],
    ) -> State {
        if let Some(n) = msg.notify(NotifyType::COOKIE) {
            if self.retries >= MAX_INIT_RETRIES || n.data.is_empty() || n.data.len() > 64 {
                return State::InitSent(self);
            }
            self.retries += 1;
            self.cookie = Some(n.data.clone());
            return self.resend(c, ctx);
        }
        if let Some(n) = msg.notify(NotifyType::INVALID_KE_PAYLOAD) {
            let wanted = n.requested_group().and_then(KeGroup::from_id);
            let offered = wanted.filter(|g| c.cfg.ike_proposals.iter().any(|p| p.ke.contains(g)));
            return match offered {
                Some(g) if self.retries < MAX_INIT_RETRIES && g != self.ke.group() => {
                    match KeyExchange::generate(g, &mut *ctx.rng) {
                        Ok(ke) => {
                            self.retries += 1;
                            self.ke = ke;
                            self.resend(c, ctx)
                        }
                        Err(_) => fail(c, ctx, Reason::LocalCrypto),
                    }
                }
                _ => self.refuse(Reason::NoProposalChosen),
            };
        }
        if let Some(n) = msg.notifies().find(|n| n.ty.is_error()) {
            if n.ty == NotifyType::NO_PROPOSAL_CHOSEN && self.refused.is_none() {
                ctx.diagnose(Diagnostic::ProposalsRefused {
                    peer: c.peer,
                    kind: SaKind::Ike,
                    offered: c
                        .cfg
                        .ike_proposals
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                });
            }
            return self.refuse(Reason::from_notify(n.ty));
        }
        if msg.header.responder_spi.is_zero() {
            // Unusable: a real answer carries the responder's SPI. Keep waiting.
            return State::InitSent(self);
        }
        match self.complete(c, ctx, msg, raw) {
            Ok(done) => super::ike_auth::send_auth(c, ctx, done),
            Err(r) => fail(c, ctx, r),
        }
    }

    fn complete(
        self,
        c: &mut Common,
        ctx: &mut Ctx<'_>,
        msg: &Message,
        raw: &[u8],
    ) -> Result<InitDone, Reason> {
        let (mut sa, mut ke, mut nonce) = (None, None, None);
        for p in &msg.payloads {
            match p {
                Payload::Sa(s) => sa = Some(s),
                Payload::KeyExchange(k) => ke = Some(k),
                Payload::Nonce(n) => nonce = Some(n),
                _ => {}
            }
        }
        let (Some(sa), Some(ke), Some(nonce)) = (sa, ke, nonce) else {
            return Err(Reason::InvalidSyntax);
        };
        let (choice, _) =
            proposals::ike_accepted(sa, &c.cfg.ike_proposals).ok_or(Reason::NoProposalChosen)?;
        if choice.ke != self.ke.group() || ke.group != self.ke.group().id() {
            return Err(Reason::NoProposalChosen);
        }
        c.win.take_response(0);
        c.spi_r = msg.header.responder_spi;
        c.peer_fragmentation = ctx.cfg.fragmentation
            && msg
                .notify(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED)
                .is_some();
        c.last_heard = ctx.now;
        let nr = nonce.as_bytes().to_vec();
        let keys = derive_keys(choice, &self.ke, &ke.data, &self.ni, &nr, c, true)?;
        if let Some((local_nat, remote_nat)) =
            natd::check(msg.notifies(), c.spi_i, c.spi_r, c.local, c.remote)
        {
            c.nat = NatState {
                local_behind_nat: local_nat,
                remote_behind_nat: remote_nat,
                forced: c.cfg.force_encapsulation,
            };
        }
        c.float_if_natted(ctx.cfg);
        Ok(InitDone {
            keys,
            ni: self.ni,
            nr,
            request: self.request,
            response: raw.to_vec(),
            peer_hashes: peer_hashes(msg),
        })
    }
}

fn fail(c: &mut Common, ctx: &mut Ctx<'_>, reason: Reason) -> State {
    c.win.abandon();
    c.down(ctx, reason);
    State::Gone
}

/// SKEYSEED and the seven keys, and the SK ciphers for our role.
pub(crate) fn derive_keys(
    choice: IkeChoice,
    ke: &KeyExchange,
    peer_public: &[u8],
    ni: &[u8],
    nr: &[u8],
    c: &Common,
    initiator: bool,
) -> Result<Keys, Reason> {
    let shared = ke
        .compute_shared(peer_public)
        .map_err(|_| Reason::InvalidSyntax)?;
    let seed = kdf::skeyseed(choice.prf, ni, nr, shared.as_bytes());
    let sk = kdf::derive_ike_sa_keys(
        choice.prf,
        seed.as_bytes(),
        ni,
        nr,
        &c.spi_i.0,
        &c.spi_r.0,
        choice.encr,
        choice.integ,
    )
    .map_err(|_| Reason::LocalCrypto)?;
    let (out, inbound) = SkCipher::pair(&sk, choice.encr, choice.integ, initiator)
        .map_err(|_| Reason::LocalCrypto)?;
    Ok(Keys {
        choice,
        sk,
        out,
        inbound,
    })
}

/// Why the responder did not create state for an IKE_SA_INIT request.
#[derive(Debug)]
pub(crate) enum InitRefused {
    /// Answer with this (unprotected, stateless) message.
    Answer(Message),
    /// Drop the request.
    Drop,
}

impl InitReplied {
    /// Responder: answers a fresh IKE_SA_INIT request and creates the half-open SA.
    #[allow(clippy::too_many_arguments)]
    pub fn respond(
        ctx: &mut Ctx<'_>,
        peer: PeerId,
        cfg: Arc<PeerConfig>,
        msg: &Message,
        raw: &[u8],
        local: SocketAddr,
        remote: SocketAddr,
        spi_r: Spi,
    ) -> Result<IkeSa, InitRefused> {
        let (mut sa, mut ke, mut nonce) = (None, None, None);
        for p in &msg.payloads {
            match p {
                Payload::Sa(s) => sa = Some(s),
                Payload::KeyExchange(k) => ke = Some(k),
                Payload::Nonce(n) => nonce = Some(n),
                _ => {}
            }
        }
        let (Some(sa), Some(ke_p), Some(nonce)) = (sa, ke, nonce) else {
            return Err(InitRefused::Answer(init_error_response(
                &msg.header,
                Notify::empty(NotifyType::INVALID_SYNTAX),
            )));
        };
        let theirs: Vec<_> = sa
            .proposals
            .iter()
            .map(|p| proposals::ike_from_wire(p).unwrap_or_else(empty_ike))
            .collect();
        let peer_ke = KeGroup::from_id(ke_p.group);
        let Some((idx, choice)) = select_ike(&cfg.ike_proposals, &theirs, peer_ke) else {
            ctx.diagnose(Diagnostic::NoProposalMatch {
                peer,
                remote,
                kind: SaKind::Ike,
                received: sa.proposals.iter().map(diagnostic::wire_proposal).collect(),
                configured: cfg.ike_proposals.iter().map(ToString::to_string).collect(),
            });
            return Err(InitRefused::Answer(init_error_response(
                &msg.header,
                Notify::empty(NotifyType::NO_PROPOSAL_CHOSEN),
            )));
        };
        if Some(choice.ke) != peer_ke {
            return Err(InitRefused::Answer(init_error_response(
                &msg.header,
                Notify::invalid_ke(choice.ke.id()),
            )));
        }
        let number = sa.proposals.get(idx).map_or(1, |p| p.number);
        let ke = KeyExchange::generate(choice.ke, &mut *ctx.rng).map_err(|_| InitRefused::Drop)?;
        let nr = ctx.nonce();
        let ni = nonce.as_bytes().to_vec();
        let mut c = Common {
            peer,
            cfg,
            initiator: false,
            spi_i: msg.header.initiator_spi,
            spi_r,
            local,
            remote,
            nat: NatState::default(),
            win: Window::new(0, 1),
            last_heard: ctx.now,
            started: ctx.now,
            last_sent: ctx.now,
            keepalive: ctx.cfg.nat_keepalive,
            initial_contact: false,
            peer_fragmentation: ctx.cfg.fragmentation
                && msg
                    .notify(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED)
                    .is_some(),
            frags: Default::default(),
            remote_identity: None,
        };
        let keys = match derive_keys(choice, &ke, &ke_p.data, &ni, &nr, &c, false) {
            Ok(k) => k,
            Err(_) => {
                return Err(InitRefused::Answer(init_error_response(
                    &msg.header,
                    Notify::empty(NotifyType::INVALID_SYNTAX),
                )));
            }
        };
        // The request's NAT-D hashes were made with a zero responder SPI.
        if let Some((local_nat, remote_nat)) =
            natd::check(msg.notifies(), c.spi_i, Spi::ZERO, local, remote)
        {
            c.nat = NatState {
                local_behind_nat: local_nat,
                remote_behind_nat: remote_nat,
                forced: c.cfg.force_encapsulation,
            };
        }
        let fake = c.cfg.force_encapsulation.then(|| ctx.random::<20>());
        let mut payloads = vec![
            Payload::Sa(proposals::ike_answer(number, &choice, &[])),
            Payload::KeyExchange(KePayload {
                group: choice.ke.id(),
                data: ke.public_value().to_vec(),
            }),
        ];
        if let Some(n) = Nonce::new(nr.clone()) {
            payloads.push(Payload::Nonce(n));
        }
        for n in natd::natd_notifies(c.spi_i, c.spi_r, local, remote, fake) {
            payloads.push(Payload::Notify(n));
        }
        if let AuthConfig::Certificate(a) = &c.cfg.auth {
            payloads.extend(super::cert_auth::certreq(a));
        }
        common_notifies(&mut payloads, ctx.cfg.fragmentation);
        let response = Message {
            header: c.header(ExchangeType::IKE_SA_INIT, true, 0),
            payloads,
        };
        let bytes = c.send_plain(ctx, &response).ok_or(InitRefused::Drop)?;
        c.win.responded(0, vec![bytes.clone()]);
        Ok(IkeSa {
            state: State::InitReplied(InitReplied {
                init: InitDone {
                    keys,
                    ni,
                    nr,
                    request: raw.to_vec(),
                    response: bytes,
                    peer_hashes: peer_hashes(msg),
                },
                expires: ctx.now + ctx.cfg.half_open_timeout,
                alternatives: Vec::new(),
            }),
            common: c,
        })
    }
}

fn empty_ike() -> crate::proposal::IkeProposal {
    crate::proposal::IkeProposal {
        encr: Vec::new(),
        prf: Vec::new(),
        integ: Vec::new(),
        ke: Vec::new(),
    }
}
