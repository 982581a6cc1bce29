//! CREATE_CHILD_SA (RFC 7296 §1.3): rekeying CHILD SAs (§1.3.3, §2.8) and the IKE SA itself
//! (§1.3.2, §2.18), new CHILD SAs both ways (§1.3.1, [`create`]), and the collision rules of
//! §2.8.1, §2.8.2 and §2.25.
//!
//! CHILD SA rekey, make-before-break: both ends install the new SA first
//! (`replaces: Some(old)`); the rekey initiator then sends Delete(ESP, old inbound SPI) and
//! reports the old SA gone when that Delete is answered; the responder reports it gone when
//! the Delete arrives.
//!
//! Collisions: when both ends rekey the same SA, each answers the other as usual and notes the
//! peer's nonces; once its own exchange completes, the exchange holding the lowest of the four
//! nonces created the redundant SA, which its initiator deletes, while the other initiator
//! deletes the old SA (§2.8.1, §2.8.2). A request that finds the SA being deleted, or a CHILD
//! SA request during an IKE rekey (and the reverse), gets TEMPORARY_FAILURE (§2.25) and the
//! requester retries after a random delay.

mod child;
mod create;
mod ike;

pub(crate) use child::{ChildRekeyOut, Offer, on_child_response, soft_expire, start_child};
pub(crate) use create::{ChildCreateOut, on_create_response, start_create};
pub(crate) use ike::{
    IkeCollision, IkeRekeyOut, adopt_on_delete, await_delete, delete_ike, on_ike_response,
    start_ike,
};

use core::time::Duration;
use std::time::Instant;

use super::child::ChildState;
use super::established::{Established, Next};
use super::ike_auth::Inner;
use super::{Common, Ctx, RequestKind};
use crate::codec::message::notifies;
use crate::codec::{ExchangeType, Notify, NotifyType, Payload, ProtocolId};
use crate::crypto::alg::KeGroup;
use crate::timers;

/// Shortest wait before retrying a rekey the peer refused for now (TEMPORARY_FAILURE).
const RETRY_MIN: Duration = Duration::from_secs(10);
/// Random extra wait on top of [`RETRY_MIN`], so both ends do not retry in lockstep.
const RETRY_JITTER_MS: u64 = 10_000;

/// RFC 7296 §2.8.1: whether the lowest of the four nonces belongs to the `first` exchange
/// (octet-wise comparison; a nonce that is a prefix of another is the lower, which is Rust's
/// slice order). Ties on the lowest fall back to the higher nonces, so both ends agree.
pub(crate) fn lowest_nonce_in_first(first: (&[u8], &[u8]), second: (&[u8], &[u8])) -> bool {
    lo_hi(first) < lo_hi(second)
}

fn lo_hi<'a>((a, b): (&'a [u8], &'a [u8])) -> (&'a [u8], &'a [u8]) {
    if a <= b { (a, b) } else { (b, a) }
}

/// When the IKE SA of `c` should be rekeyed, counted from now.
pub(crate) fn ike_rekey_time(c: &Common, ctx: &mut Ctx<'_>) -> Instant {
    let random = u64::from_be_bytes(ctx.random());
    ctx.now + timers::rekey_after(&c.cfg.ike_lifetime, random)
}

/// Starts a new IKE SA's clocks: its rekey, and its hard lifetime (never before the rekey).
pub(crate) fn start_ike_timers(e: &mut Established, c: &Common, ctx: &mut Ctx<'_>) {
    let rekey = ike_rekey_time(c, ctx);
    e.ike_rekey_at = Some(rekey);
    e.ike_expires_at = Some((ctx.now + c.cfg.ike_lifetime.life_time).max(rekey));
    // only the side that starts the tunnel reauthenticates (strongSwan's initiator does)
    if c.cfg.role != crate::Role::Respond
        && let Some(every) = c.cfg.reauth_time
    {
        let random = u64::from_be_bytes(ctx.random());
        // the IKE lifetime's jitter, but at most a tenth of the interval: a jitter beyond it
        // (a 1 h lifetime has 6 min, a 24 h one 2.4 h) cut every interval to the 1 s floor,
        // a reauthentication each second
        let lt = crate::config::Lifetime {
            rekey_time: every,
            rand_time: c.cfg.ike_lifetime.rand_time.min(every / 10),
            ..c.cfg.ike_lifetime
        };
        e.reauth_at = Some(ctx.now + timers::rekey_after(&lt, random));
    }
}

fn retry_time(ctx: &mut Ctx<'_>) -> Instant {
    let random = u64::from_be_bytes(ctx.random());
    ctx.now + RETRY_MIN + Duration::from_millis(random % RETRY_JITTER_MS)
}

/// Queues the rekeys whose time has come.
pub(crate) fn schedule(e: &mut Established, now: Instant) {
    for ch in &mut e.children {
        if ch.state == ChildState::Installed && ch.rekey_at.is_some_and(|t| now >= t) {
            ch.rekey_at = None;
            e.queue.push_back(RequestKind::RekeyChild {
                old: ch.id,
                group: None,
            });
        }
    }
    if e.ike_rekey_at.is_some_and(|t| now >= t) {
        e.ike_rekey_at = None;
        e.queue.push_back(RequestKind::RekeyIke { group: None });
    }
}

/// A CREATE_CHILD_SA request on an established IKE SA: a CHILD SA rekey, a new CHILD SA, or an
/// IKE SA rekey.
pub(crate) fn on_request(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    id: u32,
    payloads: &[Payload],
) -> Next {
    let inner = Inner::of(payloads);
    let rekey = notifies(payloads).find(|n| n.ty == NotifyType::REKEY_SA);
    let ike = rekey.is_none()
        && inner.tsi.is_none()
        && inner
            .sa
            .and_then(|s| s.proposals.first())
            .is_some_and(|p| p.protocol == ProtocolId::IKE);
    if ike {
        return ike::on_ike_request(e, c, ctx, id, payloads);
    }
    let answer = match child::respond_child(e, c, ctx, rekey, &inner) {
        Ok(a) => a,
        Err(r) => vec![Payload::Notify(r.notify())],
    };
    c.send_response_or_drop(ctx, &e.keys, ExchangeType::CREATE_CHILD_SA, id, &answer);
    Next::Stay
}

/// Why a CREATE_CHILD_SA request is refused.
enum Refusal {
    Notify(NotifyType),
    InvalidKe(KeGroup),
}

impl Refusal {
    /// The error notification that answers the request.
    fn notify(self) -> Notify {
        match self {
            Self::Notify(t) => Notify::empty(t),
            Self::InvalidKe(g) => Notify::invalid_ke(g.id()),
        }
    }
}

impl From<NotifyType> for Refusal {
    fn from(t: NotifyType) -> Self {
        Self::Notify(t)
    }
}

#[cfg(test)]
mod tests {
    use super::lowest_nonce_in_first;

    #[test]
    fn lowest_of_four_nonces() {
        // The lowest is in the first exchange, whichever of its two it is.
        assert!(lowest_nonce_in_first((&[1, 9], &[5]), (&[2], &[3])));
        assert!(lowest_nonce_in_first((&[5], &[1, 9]), (&[2], &[3])));
        assert!(!lowest_nonce_in_first((&[5], &[4]), (&[3], &[9])));
        assert!(!lowest_nonce_in_first((&[5], &[4]), (&[9], &[3])));
        // Octet by octet, not as integers: a prefix is lower, a longer nonce is not higher.
        assert!(lowest_nonce_in_first((&[7, 0], &[9]), (&[7, 0, 0], &[9])));
        assert!(lowest_nonce_in_first((&[1, 255, 255], &[9]), (&[2], &[9])));
        // Both ends, each seeing its own exchange first, agree.
        type Pair<'a> = (&'a [u8], &'a [u8]);
        let a: Pair<'_> = (&[3, 3], &[8]);
        let b: Pair<'_> = (&[3, 4], &[0, 1]);
        assert_ne!(lowest_nonce_in_first(a, b), lowest_nonce_in_first(b, a));
        // An equal lowest falls back to the other nonce.
        assert!(lowest_nonce_in_first((&[1], &[2]), (&[1], &[3])));
        assert!(!lowest_nonce_in_first((&[1], &[3]), (&[1], &[2])));
    }
}
