//! Reassembly of received RFC 7383 fragments (§2.6), one message per direction: the peer's
//! next request and the response to our outstanding request. Only fragments whose ICV checked
//! out reach this module, so a forged fragment can never displace a real one.
//!
//! Rules: duplicates are ignored; a fragment announcing more fragments than the ones collected
//! so far restarts the reassembly (the sender made its fragments smaller), one announcing fewer
//! is dropped; a message ID other than the one collected restarts it; more than
//! [`MAX_FRAGMENTS`] fragments or [`MAX_MESSAGE_LEN`] octets of plaintext are refused.

use zeroize::Zeroizing;

use crate::codec::{ExchangeType, Fragment, PayloadType};

/// Most fragments accepted for one message.
pub(crate) const MAX_FRAGMENTS: u16 = 64;

/// Largest reassembled inner payload chain accepted.
pub(crate) const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// What became of a fragment.
#[derive(Debug)]
pub(crate) enum Added {
    /// Stored (or a duplicate ignored): more are needed.
    Pending,
    /// Not stored: over a limit, or fewer fragments announced than before.
    Refused,
    /// The message is complete: its first inner payload type and plaintext.
    Complete(PayloadType, Zeroizing<Vec<u8>>),
}

#[derive(Debug)]
struct Partial {
    message_id: u32,
    exchange: ExchangeType,
    total: u16,
    first_payload: PayloadType,
    /// Indexed by fragment number minus one.
    parts: Vec<Option<Zeroizing<Vec<u8>>>>,
    len: usize,
}

impl Partial {
    fn new(message_id: u32, exchange: ExchangeType, total: u16) -> Self {
        Self {
            message_id,
            exchange,
            total,
            first_payload: PayloadType::NONE,
            parts: (0..total).map(|_| None).collect(),
            len: 0,
        }
    }
}

/// Fragments being collected for one IKE SA.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    request: Option<Partial>,
    response: Option<Partial>,
}

impl Reassembly {
    /// Adds an authenticated fragment of the message `message_id` (a response if `response`),
    /// refusing a message longer than `max_len` (at most [`MAX_MESSAGE_LEN`]).
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        response: bool,
        message_id: u32,
        exchange: ExchangeType,
        fragment: Fragment,
        first_payload: PayloadType,
        plain: Zeroizing<Vec<u8>>,
        max_len: usize,
    ) -> Added {
        let Fragment { number, total } = fragment;
        if total > MAX_FRAGMENTS || number == 0 || number > total {
            return Added::Refused;
        }
        let slot = if response {
            &mut self.response
        } else {
            &mut self.request
        };
        let restart = match slot {
            Some(p) if p.message_id == message_id && p.exchange == exchange => {
                if total < p.total {
                    return Added::Refused;
                }
                total > p.total
            }
            _ => true,
        };
        if restart {
            *slot = Some(Partial::new(message_id, exchange, total));
        }
        let Some(p) = slot.as_mut() else {
            return Added::Refused;
        };
        let index = usize::from(number - 1);
        let Some(entry) = p.parts.get_mut(index) else {
            return Added::Refused;
        };
        if entry.is_some() {
            return Added::Pending;
        }
        let len = p.len.saturating_add(plain.len());
        if len > MAX_MESSAGE_LEN.min(max_len) {
            // The message can never complete within the limit.
            *slot = None;
            return Added::Refused;
        }
        p.len = len;
        if number == 1 {
            p.first_payload = first_payload;
        }
        *entry = Some(plain);
        if p.parts.iter().any(Option::is_none) {
            return Added::Pending;
        }
        let Some(p) = slot.take() else {
            return Added::Refused;
        };
        let mut whole = Zeroizing::new(Vec::with_capacity(p.len));
        for part in p.parts.into_iter().flatten() {
            whole.extend_from_slice(&part);
        }
        Added::Complete(p.first_payload, whole)
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn frag(number: u16, total: u16) -> Fragment {
        Fragment { number, total }
    }

    fn bytes(b: &[u8]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(b.to_vec())
    }

    const X: ExchangeType = ExchangeType::IKE_AUTH;

    /// `add` without a budget of its own: the limits are the module's.
    impl Reassembly {
        #[allow(clippy::too_many_arguments)]
        fn put(
            &mut self,
            response: bool,
            message_id: u32,
            exchange: ExchangeType,
            fragment: Fragment,
            first_payload: PayloadType,
            plain: Zeroizing<Vec<u8>>,
        ) -> Added {
            self.add(
                response,
                message_id,
                exchange,
                fragment,
                first_payload,
                plain,
                MAX_MESSAGE_LEN,
            )
        }
    }

    #[test]
    fn a_smaller_budget_refuses_what_would_exceed_it() {
        let mut r = Reassembly::default();
        let ten = [0u8; 10];
        assert!(matches!(
            r.add(false, 1, X, frag(1, 3), PayloadType::IDI, bytes(&ten), 25),
            Added::Pending
        ));
        assert!(matches!(
            r.add(false, 1, X, frag(2, 3), PayloadType::NONE, bytes(&ten), 25),
            Added::Pending
        ));
        assert!(matches!(
            r.add(false, 1, X, frag(3, 3), PayloadType::NONE, bytes(&ten), 25),
            Added::Refused
        ));
        assert!(r.request.is_none(), "the refused message is dropped whole");
    }

    fn complete(a: Added) -> (PayloadType, Vec<u8>) {
        match a {
            Added::Complete(t, p) => (t, p.to_vec()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn any_order_duplicates_ignored() {
        let mut r = Reassembly::default();
        assert!(matches!(
            r.put(false, 1, X, frag(3, 3), PayloadType::NONE, bytes(b"c")),
            Added::Pending
        ));
        assert!(matches!(
            r.put(false, 1, X, frag(1, 3), PayloadType::IDI, bytes(b"a")),
            Added::Pending
        ));
        // A duplicate does not replace the stored piece.
        assert!(matches!(
            r.put(false, 1, X, frag(1, 3), PayloadType::SA, bytes(b"z")),
            Added::Pending
        ));
        let (t, p) = complete(r.put(false, 1, X, frag(2, 3), PayloadType::NONE, bytes(b"b")));
        assert_eq!((t, p.as_slice()), (PayloadType::IDI, &b"abc"[..]));
        // The slot is free again.
        assert!(r.request.is_none());
    }

    #[test]
    fn directions_are_separate_and_single_fragment_messages_work() {
        let mut r = Reassembly::default();
        assert!(matches!(
            r.put(true, 7, X, frag(1, 2), PayloadType::IDR, bytes(b"r1")),
            Added::Pending
        ));
        let (t, p) = complete(r.put(false, 3, X, frag(1, 1), PayloadType::SA, bytes(b"q")));
        assert_eq!((t, p.as_slice()), (PayloadType::SA, &b"q"[..]));
        let (t, p) = complete(r.put(true, 7, X, frag(2, 2), PayloadType::NONE, bytes(b"r2")));
        assert_eq!((t, p.as_slice()), (PayloadType::IDR, &b"r1r2"[..]));
    }

    #[test]
    fn totals_message_ids_and_limits() {
        let mut r = Reassembly::default();
        let _ = r.put(false, 1, X, frag(1, 2), PayloadType::IDI, bytes(b"a"));
        // Fewer fragments announced: dropped, the collection stays.
        assert!(matches!(
            r.put(false, 1, X, frag(1, 1), PayloadType::IDI, bytes(b"x")),
            Added::Refused
        ));
        // More fragments announced: start over with this one.
        assert!(matches!(
            r.put(false, 1, X, frag(3, 3), PayloadType::NONE, bytes(b"3")),
            Added::Pending
        ));
        assert!(matches!(
            r.put(false, 1, X, frag(2, 3), PayloadType::NONE, bytes(b"2")),
            Added::Pending
        ));
        let (_, p) = complete(r.put(false, 1, X, frag(1, 3), PayloadType::IDI, bytes(b"1")));
        assert_eq!(p, b"123");
        // Another message ID replaces a partial one.
        let _ = r.put(false, 2, X, frag(1, 2), PayloadType::IDI, bytes(b"old"));
        let _ = r.put(false, 3, X, frag(1, 2), PayloadType::IDI, bytes(b"new"));
        let (_, p) = complete(r.put(false, 3, X, frag(2, 2), PayloadType::NONE, bytes(b"!")));
        assert_eq!(p, b"new!");
        // Limits.
        assert!(matches!(
            r.put(
                false,
                4,
                X,
                frag(1, MAX_FRAGMENTS + 1),
                PayloadType::IDI,
                bytes(b"a")
            ),
            Added::Refused
        ));
        let big = vec![0u8; MAX_MESSAGE_LEN / 2 + 1];
        assert!(matches!(
            r.put(false, 5, X, frag(1, 3), PayloadType::IDI, bytes(&big)),
            Added::Pending
        ));
        assert!(matches!(
            r.put(false, 5, X, frag(2, 3), PayloadType::NONE, bytes(&big)),
            Added::Refused
        ));
        assert!(r.request.is_none());
    }
}
