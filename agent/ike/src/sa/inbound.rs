//! A message for an existing IKE SA, after the endpoint found the SA by its SPI: checks it
//! belongs, opens it (putting fragments back together), follows the peer to a new address, and
//! hands it to the state it is for.

use core::net::SocketAddr;

use super::fragments::Added;
use super::protect::{self, Opened, ProtectError};
use super::{Common, Ctx, IkeSa, RequestKind, State, established, informational, mapping};
use crate::codec::{ExchangeType, Header, Message, Notify, Payload};
use crate::reason::Reason;
use crate::window::RequestCheck;

/// What became of a message for an existing SA (for the endpoint's `Stats`).
pub(crate) enum Outcome {
    Handled,
    Integrity,
    Unexpected,
    Retransmit,
}

/// Takes an authenticated fragment (RFC 7383 §2.6): a fragment of the response we wait for or
/// of the peer's next request is stored, and once all are in, the whole inner payload chain is
/// parsed. Fragment 1 of a retransmitted request resends our cached response (§2.6.1); other
/// fragments of it are ignored. `Err` carries what became of a fragment that completed
/// nothing.
fn on_fragment(
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    preauth: bool,
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
    // review S-1: before IKE_AUTH the peer is anyone who sent an IKE_SA_INIT
    let max_len = if preauth {
        ctx.cfg.preauth_fragment_bytes
    } else {
        super::fragments::MAX_MESSAGE_LEN
    };
    match c.frags.add(
        response,
        h.message_id,
        h.exchange_type,
        fragment,
        first_payload,
        plain,
        max_len,
    ) {
        Added::Pending => Err(Outcome::Handled),
        Added::Refused => Err(Outcome::Unexpected),
        Added::Complete(first, plain) => {
            Ok(crate::codec::parse_inner(first, &plain).map_err(ProtectError::Syntax))
        }
    }
}

/// Routes a message for an existing SA through its state.
pub(crate) fn on_message(
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
        }) => match on_fragment(
            &mut sa.common,
            ctx,
            matches!(sa.state, State::InitReplied(_)),
            h,
            fragment,
            first_payload,
            plain,
        ) {
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
    let moved = mapping::may_follow(&sa.common, ctx.cfg, local, remote);
    if h.flags.is_response() {
        // M-1e: an answer in another exchange than our request's is not its answer; the
        // request stays outstanding and is retransmitted (a consumed one would hang the SA).
        if sa
            .common
            .win
            .outstanding()
            .is_some_and(|o| o.id == h.message_id && o.kind.exchange() != h.exchange_type)
        {
            return Outcome::Unexpected;
        }
        let Some(out) = sa.common.win.take_response(h.message_id) else {
            return Outcome::Unexpected;
        };
        // Only an SA that was established before this datagram has CHILD SAs at the old address.
        let rebound =
            moved && mapping::follow(&mut sa.common, local, remote) && sa.established().is_some();
        match sa.state {
            State::AuthSent(_)
                if out.kind == RequestKind::Auth && h.exchange_type == ExchangeType::IKE_AUTH =>
            {
                // The handshake states are consumed by their transition (rustls style).
                if let State::AuthSent(s) = core::mem::replace(&mut sa.state, State::Gone) {
                    sa.state = s.on_response(&mut sa.common, ctx, &payloads);
                }
            }
            State::Established(_) => sa.with_established(ctx, |e, c, ctx| {
                informational::on_response(e, c, ctx, out.kind, &payloads)
            }),
            _ => {}
        }
        if rebound {
            mapping::rekey_children(sa, ctx);
        }
        sa.with_established(ctx, established::flush);
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
    // Only an SA that was established before this datagram has CHILD SAs at the old address.
    let rebound =
        moved && mapping::follow(&mut sa.common, local, remote) && sa.established().is_some();
    match &mut sa.state {
        State::InitReplied(_) if h.exchange_type == ExchangeType::IKE_AUTH => {
            let State::InitReplied(s) = core::mem::replace(&mut sa.state, State::Gone) else {
                return Outcome::Unexpected;
            };
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
        State::Established(_) => sa.with_established(ctx, |e, c, ctx| {
            informational::on_request(e, c, ctx, h.exchange_type, h.message_id, &payloads)
        }),
        State::Closing {
            keys: Some(keys),
            until,
        } => super::closing::on_request(
            &mut sa.common,
            ctx,
            keys,
            until,
            h.exchange_type,
            h.message_id,
            &payloads,
        ),
        _ => {}
    }
    if rebound {
        mapping::rekey_children(sa, ctx);
    }
    Outcome::Handled
}
