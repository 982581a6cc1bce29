//! CHILD SAs: keying material for ESP (RFC 7296 §2.17), the install event, and the responder's
//! side of negotiating one (proposal selection and traffic selector narrowing).

use std::time::Instant;

use super::proposals;
use super::{Common, Ctx, Keys};
use crate::codec::{Notify, NotifyType, Payload, Sa, TrafficSelectors, TsRange};
use crate::crypto::kdf;
use crate::diagnostic::{self, Diagnostic, SaKind};
use crate::event::{
    ChildKeys, ChildLifetimes, ChildSaId, ChildSaInstall, EspSpi, Event, Mode, UdpEncap,
};
use crate::proposal::{EspChoice, select_esp};
use crate::reason::Reason;
use crate::timers;
use crate::ts;

/// Where a CHILD SA is in its life (RFC 7296 §2.8, §2.25.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildState {
    /// In use; may be rekeyed.
    Installed,
    /// Replaced by a rekey: stays installed until a Delete (ours or the peer's) removes it.
    Rekeyed,
    /// Our Delete for it is queued or in flight; it is reported gone when answered.
    Deleting,
}

/// One installed CHILD SA.
#[derive(Debug, Clone)]
pub(crate) struct Child {
    pub id: ChildSaId,
    pub spi_in: [u8; 4],
    pub spi_out: [u8; 4],
    /// When rekeying should start (our own timer; the kernel's soft expiry may come first).
    /// `None` once a rekey is queued or running, or the SA is on its way out.
    pub rekey_at: Option<Instant>,
    /// When the kernel removes the SA by itself (its hard lifetime): a rekey must be done by then.
    pub hard_at: Instant,
    pub state: ChildState,
    /// What was negotiated, for a driver resuming the SA ([`crate::Endpoint::resume`]).
    pub choice: EspChoice,
    pub local_ts: Vec<TsRange>,
    pub remote_ts: Vec<TsRange>,
}

/// A CHILD SA just negotiated, as [`install`] takes it.
pub(crate) struct NewChild<'a> {
    pub choice: EspChoice,
    /// Our SPI (the peer sends with it).
    pub spi_in: [u8; 4],
    /// The peer's SPI (we send with it).
    pub spi_out: [u8; 4],
    /// (Ni, Nr) of the exchange that creates the SA.
    pub nonces: (&'a [u8], &'a [u8]),
    /// The shared secret of that exchange's own key exchange (PFS), if it had one.
    pub g_ir: Option<&'a [u8]>,
    pub local_ts: Vec<TsRange>,
    pub remote_ts: Vec<TsRange>,
    /// The CHILD SA it rekeys.
    pub replaces: Option<ChildSaId>,
    /// Whether we sent the request of that exchange. RFC 7296 §2.17 takes the
    /// initiator-to-responder keys first, "initiator" being the initiator of that exchange (for
    /// a CREATE_CHILD_SA it need not be the IKE SA's original initiator; for IKE_AUTH it is).
    pub exchange_initiator: bool,
}

/// Derives a CHILD SA's keys, emits [`Event::ChildSaInstall`] and returns its record.
pub(crate) fn install(
    c: &Common,
    ctx: &mut Ctx<'_>,
    keys: &Keys,
    new: NewChild<'_>,
) -> Result<Child, Reason> {
    let NewChild {
        choice,
        spi_in,
        spi_out,
        nonces,
        g_ir,
        local_ts,
        remote_ts,
        replaces,
        exchange_initiator,
    } = new;
    let km = kdf::derive_child_sa_keys(
        keys.prf(),
        keys.sk.sk_d.as_bytes(),
        g_ir,
        nonces.0,
        nonces.1,
        choice.encr,
        choice.integ,
    )
    .map_err(|_| Reason::LocalCrypto)?;
    let (out, inn) = if exchange_initiator {
        (km.initiator_to_responder, km.responder_to_initiator)
    } else {
        (km.responder_to_initiator, km.initiator_to_responder)
    };
    let id = ctx.child_id();
    let random = u64::from_be_bytes(ctx.random());
    let lt = &c.cfg.child_lifetime;
    let soft = timers::rekey_after(lt, random);
    let hard = lt.life_time.max(soft);
    ctx.events
        .push_back(Event::ChildSaInstall(Box::new(ChildSaInstall {
            peer: c.peer,
            child: id,
            spi_in: EspSpi(spi_in),
            spi_out: EspSpi(spi_out),
            keys: ChildKeys {
                encr_in: inn.encr,
                integ_in: inn.integ,
                encr_out: out.encr,
                integ_out: out.integ,
            },
            encr: choice.encr,
            integ: choice.integ,
            esn: choice.esn,
            local_ts: local_ts.clone(),
            remote_ts: remote_ts.clone(),
            mode: Mode::Tunnel,
            encapsulation: encapsulation(c),
            initiator: exchange_initiator,
            local_addr: c.local,
            remote_addr: c.remote,
            lifetimes: ChildLifetimes {
                soft,
                hard,
                bytes: lt.bytes.map(|v| (v.soft(random.rotate_left(21)), v.life)),
                packets: lt.packets.map(|v| (v.soft(random.rotate_left(42)), v.life)),
            },
            replaces,
            redundant: false,
        })));
    Ok(Child {
        id,
        spi_in,
        spi_out,
        rekey_at: Some(ctx.now + soft),
        hard_at: ctx.now + hard,
        state: ChildState::Installed,
        choice,
        local_ts,
        remote_ts,
    })
}

/// UDP encapsulation of the CHILD SA's ESP: only when a NAT was detected (or faked, to force
/// it), as RFC 7296 §2.23 and RFC 3948 say. Not because IKE runs on the NAT-T port: a MOBIKE
/// peer (strongSwan's default) moves IKE to 4500 without a NAT and sends plain ESP.
pub(crate) fn encapsulation(c: &Common) -> Option<UdpEncap> {
    c.nat.encapsulate().then(|| UdpEncap {
        local_port: c.local.port(),
        remote_port: c.remote.port(),
    })
}

/// Reports a CHILD SA that could not be created (the IKE SA stays up); a refusal of our
/// proposals also says what we offered.
pub(crate) fn failed(c: &Common, ctx: &mut Ctx<'_>, reason: Reason) {
    if reason == Reason::NoProposalChosen {
        ctx.diagnose(Diagnostic::ProposalsRefused {
            peer: c.peer,
            kind: SaKind::Child,
            offered: c
                .cfg
                .esp_proposals
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
    }
    ctx.events.push_back(Event::ChildSaFailed {
        peer: c.peer,
        reason,
    });
}

/// The initiator's CHILD SA request payloads: SA, TSi, TSr. The selectors are `ts` (ours,
/// the peer's) when given, else the tunnel's configured ones.
pub(crate) fn request_payloads(
    c: &Common,
    spi_in: [u8; 4],
    with_ke: bool,
    ts: Option<(&[TsRange], &[TsRange])>,
) -> [Payload; 3] {
    let (local, remote) = ts.unwrap_or((&c.cfg.local_ts, &c.cfg.remote_ts));
    [
        Payload::Sa(proposals::esp_offer(&c.cfg.esp_proposals, spi_in, with_ke)),
        Payload::TsInitiator(ts::payload(local)),
        Payload::TsResponder(ts::payload(remote)),
    ]
}

/// What the responder agreed to for a requested CHILD SA.
#[derive(Debug)]
pub(crate) struct Agreed {
    pub number: u8,
    pub choice: EspChoice,
    pub spi_out: [u8; 4],
    /// Narrowed TSi (the initiator's side).
    pub tsi: Vec<TsRange>,
    /// Narrowed TSr (our side).
    pub tsr: Vec<TsRange>,
}

/// Responder: picks an ESP proposal and narrows the selectors; an error notification type when
/// the CHILD SA cannot be created (with a diagnostic saying what did not meet).
pub(crate) fn respond(
    c: &Common,
    ctx: &mut Ctx<'_>,
    sa: Option<&Sa>,
    tsi: Option<&TrafficSelectors>,
    tsr: Option<&TrafficSelectors>,
    ignore_ke: bool,
) -> Result<Agreed, NotifyType> {
    let (Some(sa), Some(tsi), Some(tsr)) = (sa, tsi, tsr) else {
        return Err(NotifyType::INVALID_SYNTAX);
    };
    let mut theirs = Vec::new();
    let mut meta = Vec::new();
    for p in &sa.proposals {
        if let Some((prop, spi)) = proposals::esp_from_wire(p) {
            theirs.push(prop);
            meta.push((p.number, spi));
        }
    }
    let selected = select_esp(&c.cfg.esp_proposals, &theirs, ignore_ke)
        .and_then(|(idx, choice)| meta.get(idx).map(|&(n, spi)| (n, spi, choice)));
    let Some((number, spi_out, choice)) = selected else {
        ctx.diagnose(Diagnostic::NoProposalMatch {
            peer: c.peer,
            remote: c.remote,
            kind: SaKind::Child,
            received: sa.proposals.iter().map(diagnostic::wire_proposal).collect(),
            configured: c
                .cfg
                .esp_proposals
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
        return Err(NotifyType::NO_PROPOSAL_CHOSEN);
    };
    let (theirs_i, theirs_r) = (ts::ranges(tsi), ts::ranges(tsr));
    if ctx.cfg.single_pair_only && (theirs_i.len() > 1 || theirs_r.len() > 1) {
        return Err(NotifyType::SINGLE_PAIR_REQUIRED);
    }
    let tsi = ts::narrow(&theirs_i, &c.cfg.remote_ts);
    let tsr = ts::narrow(&theirs_r, &c.cfg.local_ts);
    if tsi.is_empty() || tsr.is_empty() {
        ctx.diagnose(Diagnostic::TsMismatch {
            peer: c.peer,
            received: (
                diagnostic::selectors(&theirs_i),
                diagnostic::selectors(&theirs_r),
            ),
            configured: (
                diagnostic::selectors(&c.cfg.remote_ts),
                diagnostic::selectors(&c.cfg.local_ts),
            ),
        });
        return Err(NotifyType::TS_UNACCEPTABLE);
    }
    ctx.detail(|| Diagnostic::TsNarrowed {
        peer: c.peer,
        local: diagnostic::selectors(&tsr),
        remote: diagnostic::selectors(&tsi),
        offered_local: diagnostic::selectors(&theirs_r),
        offered_remote: diagnostic::selectors(&theirs_i),
    });
    Ok(Agreed {
        number,
        choice,
        spi_out,
        tsi,
        tsr,
    })
}

/// The responder's CHILD SA answer payloads.
pub(crate) fn answer_payloads(a: &Agreed, spi_in: [u8; 4]) -> [Payload; 3] {
    [
        Payload::Sa(proposals::esp_answer(a.number, &a.choice, spi_in)),
        Payload::TsInitiator(ts::payload(&a.tsi)),
        Payload::TsResponder(ts::payload(&a.tsr)),
    ]
}

/// An error notification for a CHILD SA.
pub(crate) fn error_payload(ty: NotifyType) -> Payload {
    Payload::Notify(Notify::empty(ty))
}

/// The initiator's view of an accepted CHILD SA: transforms, outbound SPI, TSi, TSr.
pub(crate) type AcceptedChild = (EspChoice, [u8; 4], Vec<TsRange>, Vec<TsRange>);

/// Initiator: checks the responder's CHILD SA answer against what we offered.
pub(crate) fn accepted(
    c: &Common,
    sa: Option<&Sa>,
    tsi: Option<&TrafficSelectors>,
    tsr: Option<&TrafficSelectors>,
    with_ke: bool,
) -> Result<AcceptedChild, Reason> {
    let (Some(sa), Some(tsi), Some(tsr)) = (sa, tsi, tsr) else {
        return Err(Reason::InvalidSyntax);
    };
    let (choice, spi_out) = proposals::esp_accepted(sa, &c.cfg.esp_proposals, with_ke)
        .ok_or(Reason::NoProposalChosen)?;
    let (tsi, tsr) = (ts::ranges(tsi), ts::ranges(tsr));
    if !ts::all_within(&tsi, &c.cfg.local_ts) || !ts::all_within(&tsr, &c.cfg.remote_ts) {
        return Err(Reason::TsUnacceptable);
    }
    Ok((choice, spi_out, tsi, tsr))
}

/// Marks the install event of `id` (queued by [`install`]) as the redundant SA of a rekey
/// collision, so the data plane never sends on it.
pub(crate) fn mark_redundant(ctx: &mut Ctx<'_>, id: ChildSaId) {
    for ev in ctx.events.iter_mut().rev() {
        if let Event::ChildSaInstall(sa) = ev
            && sa.child == id
        {
            sa.redundant = true;
            return;
        }
    }
}
