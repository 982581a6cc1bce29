//! The Closing state: an IKE SA that is going away answers retransmissions from its cache and,
//! when it sent a Delete, waits for the answer, until it is dropped.

use std::time::Instant;

use super::{Common, Ctx, IkeSa, Keys, State};
use crate::codec::{ExchangeType, Notify, NotifyType, Payload, ProtocolId};

/// A new request to an IKE SA that is going away (typically one replaced by a rekey that
/// waits for the peer's Delete): an INFORMATIONAL is acknowledged, and its Delete(IKE) ends
/// the wait; anything else gets TEMPORARY_FAILURE (§2.25).
pub(crate) fn on_request(
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    keys: &Keys,
    until: &mut Instant,
    exchange: ExchangeType,
    id: u32,
    payloads: &[Payload],
) {
    let delete_ike = payloads
        .iter()
        .any(|p| matches!(p, Payload::Delete(d) if d.protocol == ProtocolId::IKE));
    let answer = if exchange == ExchangeType::INFORMATIONAL {
        Vec::new()
    } else {
        vec![Payload::Notify(Notify::empty(
            NotifyType::TEMPORARY_FAILURE,
        ))]
    };
    c.send_response_or_drop(ctx, keys, exchange, id, &answer);
    if delete_ike {
        *until = (*until).min(ctx.now);
    }
}

impl IkeSa {
    /// Moves the SA to closing, keeping its keys to answer retransmitted requests.
    pub fn close(&mut self, ctx: &Ctx<'_>) {
        let keys = match core::mem::replace(&mut self.state, State::Gone) {
            State::InitReplied(s) => Some(s.init.keys),
            State::AuthSent(s) => Some(s.init.keys),
            State::Established(e) => Some(e.keys),
            State::Closing { keys, .. } => keys,
            State::InitSent(_) | State::Gone => None,
        };
        // Long enough for the peer's first three sends of a request whose answer was lost
        // (4 + 7.2 + 13 s with strongSwan's schedule), so it learns the real outcome from our
        // cached answer instead of timing out (review M-1f).
        let linger = (0..3)
            .map(|k| crate::timers::retransmit_wait(&ctx.cfg.retransmit, k))
            .sum::<core::time::Duration>();
        self.state = State::Closing {
            keys,
            until: ctx.now + linger,
        };
    }
}
