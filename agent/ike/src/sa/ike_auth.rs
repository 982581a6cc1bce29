//! IKE_AUTH (RFC 7296 §1.2, §2.15): PSK or certificate authentication both ways and the first
//! CHILD SA.
//! The initiator's [`AuthSent`] state, and the responder's transition out of
//! [`super::ike_init::InitReplied`].

use super::cert_auth;
use super::child::{self, Child};
use super::established::Established;
use super::ike_init::{InitDone, InitReplied};
use super::{Common, Ctx, RequestKind, State};
use crate::codec::{
    AuthMethod, Authentication, ExchangeType, Identification, Notify, NotifyType, Payload, Sa,
    TrafficSelectors, message::notifies,
};
use crate::config::AuthConfig;
use crate::crypto::auth;
use crate::diagnostic::{self, Diagnostic};
use crate::event::Event;
use crate::reason::Reason;

/// How long after answering IKE_AUTH an SA is not taken as one the peer holds, for the
/// duplicate check ([`Established::settle_at`]): longer than datagrams between two sites are
/// reordered, shorter than a retransmission.
pub(crate) const DUPLICATE_SETTLE: core::time::Duration = core::time::Duration::from_secs(2);

/// The payloads of a decrypted message, first of each kind.
#[derive(Debug, Default)]
pub(crate) struct Inner<'a> {
    pub idi: Option<&'a Identification>,
    pub idr: Option<&'a Identification>,
    pub auth: Option<&'a Authentication>,
    pub sa: Option<&'a Sa>,
    pub tsi: Option<&'a TrafficSelectors>,
    pub tsr: Option<&'a TrafficSelectors>,
    pub nonce: Option<&'a crate::codec::Nonce>,
    pub ke: Option<&'a crate::codec::KeyExchange>,
}

impl<'a> Inner<'a> {
    pub fn of(payloads: &'a [Payload]) -> Self {
        let mut s = Self::default();
        for p in payloads {
            match p {
                Payload::IdInitiator(x) => s.idi = s.idi.or(Some(x)),
                Payload::IdResponder(x) => s.idr = s.idr.or(Some(x)),
                Payload::Auth(x) => s.auth = s.auth.or(Some(x)),
                Payload::Sa(x) => s.sa = s.sa.or(Some(x)),
                Payload::TsInitiator(x) => s.tsi = s.tsi.or(Some(x)),
                Payload::TsResponder(x) => s.tsr = s.tsr.or(Some(x)),
                Payload::Nonce(x) => s.nonce = s.nonce.or(Some(x)),
                Payload::KeyExchange(x) => s.ke = s.ke.or(Some(x)),
                _ => {}
            }
        }
        s
    }
}

/// Initiator: IKE_AUTH sent, waiting for the answer.
#[derive(Debug)]
pub(crate) struct AuthSent {
    pub init: InitDone,
    spi_in: [u8; 4],
}

/// Our AUTH payload over `RealMessage | NonceOfPeer | prf(SK_p, IDpayload)`: with a PSK,
/// `prf(prf(PSK, "Key Pad for IKEv2"), octets)`; with a certificate, a Digital Signature.
fn our_auth(c: &Common, init: &InitDone, id: &Identification) -> Result<Authentication, Reason> {
    let (real, peer_nonce, sk_p) = if c.initiator {
        (&init.request, &init.nr, &init.keys.sk.sk_pi)
    } else {
        (&init.response, &init.ni, &init.keys.sk.sk_pr)
    };
    let octets = auth::signed_octets(
        init.keys.prf(),
        real,
        peer_nonce,
        sk_p.as_bytes(),
        &id.auth_octets(),
    );
    match &c.cfg.auth {
        AuthConfig::Psk(psk) => {
            let data = auth::psk_auth(init.keys.prf(), psk.as_bytes(), &octets);
            Ok(Authentication {
                method: AuthMethod::SHARED_KEY_MIC,
                data: data.as_bytes().to_vec(),
            })
        }
        AuthConfig::Certificate(a) => cert_auth::our_auth(a, &init.peer_hashes, &octets),
    }
}

/// What we send before AUTH besides the ID: our certificates, and (initiator) a CERTREQ.
fn cert_payloads(c: &Common) -> Vec<Payload> {
    let AuthConfig::Certificate(a) = &c.cfg.auth else {
        return Vec::new();
    };
    let mut out = cert_auth::cert_payloads(a);
    if c.initiator {
        out.extend(cert_auth::certreq(a));
    }
    out
}

/// Checks the peer's identity and AUTH payload (and, with certificates, its chain at the
/// wall-clock time `unix_time`).
fn verify_peer(
    c: &Common,
    init: &InitDone,
    payloads: &[Payload],
    id: Option<&Identification>,
    auth_p: Option<&Authentication>,
    unix_time: Option<i64>,
) -> Result<(), Reason> {
    let (Some(id), Some(auth_p)) = (id, auth_p) else {
        return Err(Reason::InvalidSyntax);
    };
    if !c.cfg.remote_id.matches(id) {
        return Err(Reason::AuthenticationFailed);
    }
    let (real, peer_nonce, sk_p) = if c.initiator {
        (&init.response, &init.ni, &init.keys.sk.sk_pr)
    } else {
        (&init.request, &init.nr, &init.keys.sk.sk_pi)
    };
    let octets = auth::signed_octets(
        init.keys.prf(),
        real,
        peer_nonce,
        sk_p.as_bytes(),
        &id.auth_octets(),
    );
    match &c.cfg.auth {
        AuthConfig::Psk(psk) => {
            if auth_p.method == AuthMethod::SHARED_KEY_MIC
                && auth::verify_psk_auth(init.keys.prf(), psk.as_bytes(), &octets, &auth_p.data)
            {
                Ok(())
            } else {
                Err(Reason::AuthenticationFailed)
            }
        }
        AuthConfig::Certificate(a) => {
            let certs: Vec<&crate::codec::Certificate> = payloads
                .iter()
                .filter_map(|p| match p {
                    Payload::Certificate(x) => Some(x),
                    _ => None,
                })
                .collect();
            cert_auth::verify_peer(a, unix_time, id, &certs, auth_p, &octets)
        }
    }
}

/// Initiator: sends IKE_AUTH right after IKE_SA_INIT completed.
pub(crate) fn send_auth(c: &mut Common, ctx: &mut Ctx<'_>, init: InitDone) -> State {
    let result = (|| {
        let idi = c.cfg.local_id.to_payload().ok_or(Reason::Encode)?;
        let auth_p = our_auth(c, &init, &idi)?;
        let spi_in = ctx.esp_spi(c.local.ip(), c.remote.ip());
        let mut payloads = vec![Payload::IdInitiator(idi)];
        payloads.extend(cert_payloads(c));
        if c.initial_contact {
            payloads.push(Payload::Notify(Notify::empty(NotifyType::INITIAL_CONTACT)));
        }
        if let Some(idr) = c.cfg.remote_id.to_payload() {
            payloads.push(Payload::IdResponder(idr));
        }
        payloads.push(Payload::Auth(auth_p));
        // one pair per CHILD SA: the first one here, the others once the IKE SA is up
        let first = c.cfg.child_per_pair.then(|| c.cfg.first_pair()).flatten();
        let first = first
            .as_ref()
            .map(|(l, r)| (core::slice::from_ref(l), core::slice::from_ref(r)));
        payloads.extend(child::request_payloads(c, spi_in, false, first));
        c.send_request(
            ctx,
            &init.keys,
            ExchangeType::IKE_AUTH,
            &payloads,
            RequestKind::Auth,
        )?;
        Ok(spi_in)
    })();
    match result {
        Ok(spi_in) => State::AuthSent(AuthSent { init, spi_in }),
        Err(r) => {
            c.win.abandon();
            c.down(ctx, r);
            State::Gone
        }
    }
}

fn up(c: &Common, ctx: &mut Ctx<'_>, e: &Established) {
    ctx.events.push_back(e.up_event(c, false));
}

impl AuthSent {
    /// Handles the IKE_AUTH response.
    pub fn on_response(self, c: &mut Common, ctx: &mut Ctx<'_>, payloads: &[Payload]) -> State {
        let inner = Inner::of(payloads);
        if inner.auth.is_none() {
            let reason = notifies(payloads)
                .find(|n| n.ty.is_error())
                .map_or(Reason::InvalidSyntax, |n| Reason::from_notify(n.ty));
            c.down(ctx, reason);
            return State::Gone;
        }
        if let Some(idr) = inner.idr
            && !c.cfg.remote_id.matches(idr)
        {
            ctx.diagnose(Diagnostic::IdentityMismatch {
                peer: c.peer,
                remote: c.remote,
                received: diagnostic::identification(idr),
                expected: vec![diagnostic::identity(&c.cfg.remote_id)],
            });
        }
        if let Err(r) = verify_peer(
            c,
            &self.init,
            payloads,
            inner.idr,
            inner.auth,
            ctx.unix_time,
        ) {
            // Tell the responder (RFC 7296 §2.21.2) in an INFORMATIONAL retransmitted like any
            // request; the SA lingers, closing, until it is answered or retransmissions run out.
            let n = [Payload::Notify(Notify::empty(
                NotifyType::AUTHENTICATION_FAILED,
            ))];
            c.down(ctx, r);
            if c.send_request(
                ctx,
                &self.init.keys,
                ExchangeType::INFORMATIONAL,
                &n,
                RequestKind::Notify,
            )
            .is_err()
            {
                c.win.abandon();
                return State::Gone;
            }
            return State::Closing {
                keys: Some(self.init.keys),
                until: ctx.now,
            };
        }
        c.remote_identity = inner.idr.cloned();
        let mut est = Established::new(self.init.keys, ctx.now);
        est.single_pair = c.cfg.child_per_pair;
        super::rekey::start_ike_timers(&mut est, c, ctx);
        up(c, ctx, &est);
        match child::accepted(c, inner.sa, inner.tsi, inner.tsr, false) {
            Ok((choice, spi_out, tsi, tsr)) => {
                let new = child::NewChild {
                    choice,
                    spi_in: self.spi_in,
                    spi_out,
                    nonces: (&self.init.ni, &self.init.nr),
                    g_ir: None,
                    local_ts: tsi,
                    remote_ts: tsr,
                    replaces: None,
                    exchange_initiator: c.initiator,
                };
                match child::install(c, ctx, &est.keys, new) {
                    Ok(ch) => est.children.push(ch),
                    Err(r) => child::failed(c, ctx, r),
                }
                if est.single_pair {
                    // the first pair narrowed to less: not offered again
                    let first = c.cfg.first_pair();
                    if first.is_some() && est.next_pair(&c.cfg) == first {
                        est.pairs_tried.extend(first);
                    }
                }
                if est.next_pair(&c.cfg).is_some() {
                    est.queue
                        .push_back(RequestKind::CreateChild { group: None });
                }
            }
            Err(_)
                if notifies(payloads).any(|n| n.ty == NotifyType::SINGLE_PAIR_REQUIRED)
                    && c.cfg.role != crate::config::Role::Respond =>
            {
                // the peer takes one subnet pair per CHILD SA: create them one by one
                est.single_pair = true;
                est.queue
                    .push_back(RequestKind::CreateChild { group: None });
            }
            Err(r) => {
                let reason = notifies(payloads)
                    .find(|n| n.ty.is_error())
                    .map_or(r, |n| Reason::from_notify(n.ty));
                child::failed(c, ctx, reason);
                if est.single_pair {
                    // the first pair was refused: on to the others
                    est.pairs_tried.extend(c.cfg.first_pair());
                    if est.next_pair(&c.cfg).is_some() {
                        est.queue
                            .push_back(RequestKind::CreateChild { group: None });
                    }
                }
                if inner.sa.is_some() {
                    // The responder installed something we cannot accept: delete it.
                    est.queue
                        .push_back(RequestKind::DeleteChild(vec![self.spi_in]));
                }
            }
        }
        State::Established(est)
    }
}

impl InitReplied {
    /// Responder: handles the IKE_AUTH request.
    pub fn on_auth_request(
        self,
        c: &mut Common,
        ctx: &mut Ctx<'_>,
        id: u32,
        payloads: &[Payload],
    ) -> Result<State, Box<(Reason, Option<super::Keys>)>> {
        let init = self.init;
        let inner = Inner::of(payloads);
        // The tunnel was chosen by address in IKE_SA_INIT; now that the peer has named itself,
        // take the first tunnel for that address whose remote identity it is (as charon picks
        // the peer config by identities), so that several tunnels from one address work.
        let candidates = 1 + self.alternatives.len();
        if let Some(idi) = inner.idi
            && !c.cfg.remote_id.matches(idi)
            && !self
                .alternatives
                .iter()
                .any(|(_, cfg)| cfg.remote_id.matches(idi))
        {
            let expected = core::iter::once(&c.cfg)
                .chain(self.alternatives.iter().map(|(_, cfg)| cfg))
                .map(|cfg| diagnostic::identity(&cfg.remote_id))
                .collect();
            ctx.diagnose(Diagnostic::IdentityMismatch {
                peer: c.peer,
                remote: c.remote,
                received: diagnostic::identification(idi),
                expected,
            });
        }
        if let Some(idi) = inner.idi
            && !c.cfg.remote_id.matches(idi)
            && let Some((peer, cfg)) = self.alternatives.into_iter().find(|(_, cfg)| {
                cfg.remote_id.matches(idi)
                    && inner.idr.is_none_or(|want| {
                        cfg.local_id.matches(want)
                            || cfg.local_id.to_payload().as_ref() == Some(want)
                    })
            })
        {
            c.peer = peer;
            c.cfg = cfg;
        }
        let check =
            verify_peer(c, &init, payloads, inner.idi, inner.auth, ctx.unix_time).and_then(|()| {
                match (inner.idr, c.cfg.local_id.to_payload()) {
                    (Some(want), Some(ours)) if !c.cfg.local_id.matches(want) && want != &ours => {
                        Err(Reason::AuthenticationFailed)
                    }
                    _ => Ok(()),
                }
            });
        if let Err(r) = check {
            let ty = if r == Reason::InvalidSyntax {
                NotifyType::INVALID_SYNTAX
            } else {
                NotifyType::AUTHENTICATION_FAILED
            };
            let n = [Payload::Notify(Notify::empty(ty))];
            c.send_response_or_drop(ctx, &init.keys, ExchangeType::IKE_AUTH, id, &n);
            c.down(ctx, r);
            return Err(Box::new((r, Some(init.keys))));
        }
        let Some(idr) = c.cfg.local_id.to_payload() else {
            return Err(Box::new((Reason::Encode, Some(init.keys))));
        };
        let auth_p = match our_auth(c, &init, &idr) {
            Ok(a) => a,
            Err(r) => return Err(Box::new((r, Some(init.keys)))),
        };
        c.remote_identity = inner.idi.cloned();
        ctx.detail(|| Diagnostic::TunnelChosen {
            peer: c.peer,
            remote: c.remote,
            identity: inner
                .idi
                .map_or_else(String::new, diagnostic::identification),
            candidates,
        });
        let mut est = Established::new(init.keys, ctx.now);
        est.settle_at = Some(ctx.now + DUPLICATE_SETTLE);
        super::rekey::start_ike_timers(&mut est, c, ctx);
        est.initial_contact = notifies(payloads).any(|n| n.ty == NotifyType::INITIAL_CONTACT);
        let mut out = vec![Payload::IdResponder(idr)];
        out.extend(cert_payloads(c));
        out.push(Payload::Auth(auth_p));
        let mut new_child: Option<Child> = None;
        let mut failure = None;
        if inner.sa.is_some() {
            match child::respond(c, ctx, inner.sa, inner.tsi, inner.tsr, true) {
                Ok(agreed) => {
                    let spi_in = ctx.esp_spi(c.local.ip(), c.remote.ip());
                    out.extend(child::answer_payloads(&agreed, spi_in));
                    let new = child::NewChild {
                        choice: agreed.choice,
                        spi_in,
                        spi_out: agreed.spi_out,
                        nonces: (&init.ni, &init.nr),
                        g_ir: None,
                        local_ts: agreed.tsr,
                        remote_ts: agreed.tsi,
                        replaces: None,
                        exchange_initiator: c.initiator,
                    };
                    match child::install(c, ctx, &est.keys, new) {
                        Ok(ch) => new_child = Some(ch),
                        Err(r) => failure = Some(r),
                    }
                }
                Err(ty) => {
                    out.push(child::error_payload(ty));
                    failure = Some(Reason::from_notify(ty));
                }
            }
        }
        // The install event was queued before IkeSaUp: put IkeSaUp first.
        let pending: Vec<Event> = if new_child.is_some() {
            ctx.events.pop_back().into_iter().collect()
        } else {
            Vec::new()
        };
        if let Err(r) = c.send_response(ctx, &est.keys, ExchangeType::IKE_AUTH, id, &out) {
            return Err(Box::new((r, Some(est.keys))));
        }
        up(c, ctx, &est);
        ctx.events.extend(pending);
        if let Some(r) = failure {
            child::failed(c, ctx, r);
        }
        est.children.extend(new_child);
        Ok(State::Established(est))
    }
}
