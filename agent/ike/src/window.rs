//! Message IDs and retransmission (RFC 7296 §2.1–2.3) with a window of one: at most one request
//! of ours outstanding; the last response we sent is kept to answer a retransmitted request
//! byte-for-byte.

use std::time::Instant;

use crate::config::RetransmitConfig;
use crate::timers;

/// Our outstanding request.
#[derive(Debug)]
pub(crate) struct Outstanding<K> {
    /// Its message ID.
    pub id: u32,
    /// The datagrams as sent (IKE messages without the non-ESP marker; several if fragmented).
    pub datagrams: Vec<Vec<u8>>,
    /// What it was for.
    pub kind: K,
    /// Sends so far minus one.
    pub attempt: u32,
    /// When the next retransmission (or giving up) is due.
    pub deadline: Instant,
    /// When it was first sent.
    pub first_sent: Instant,
}

/// What a retransmission timer firing means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// Nothing due.
    Nothing,
    /// Send the request again.
    Resend,
    /// Retransmissions exhausted.
    GiveUp,
}

/// What to do with a received request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RequestCheck {
    /// The next request: process it.
    New,
    /// A retransmission of the request we answered last: send the cached response again.
    Retransmitted,
    /// Old or out of window: drop it.
    Drop,
}

/// One IKE SA's message-ID state.
#[derive(Debug)]
pub(crate) struct Window<K> {
    next_id: u32,
    outstanding: Option<Outstanding<K>>,
    expected: u32,
    last_response: Option<(u32, Vec<Vec<u8>>)>,
}

impl<K> Window<K> {
    /// A window whose next request of ours has ID `next_id` and next expected peer request
    /// has ID `expected`.
    pub fn new(next_id: u32, expected: u32) -> Self {
        Self {
            next_id,
            outstanding: None,
            expected,
            last_response: None,
        }
    }

    /// Everything the window holds (`crate::resume` saves it): our next message ID, the peer's
    /// expected one, our outstanding request and our last response.
    #[allow(clippy::type_complexity)]
    pub fn parts(
        &self,
    ) -> (
        u32,
        u32,
        Option<&Outstanding<K>>,
        Option<&(u32, Vec<Vec<u8>>)>,
    ) {
        (
            self.next_id,
            self.expected,
            self.outstanding.as_ref(),
            self.last_response.as_ref(),
        )
    }

    /// The window [`Window::parts`] describes.
    pub fn from_parts(
        next_id: u32,
        expected: u32,
        outstanding: Option<Outstanding<K>>,
        last_response: Option<(u32, Vec<Vec<u8>>)>,
    ) -> Self {
        Self {
            next_id,
            outstanding,
            expected,
            last_response,
        }
    }

    /// The outstanding request, to change what it is for.
    pub fn outstanding_mut(&mut self) -> Option<&mut Outstanding<K>> {
        self.outstanding.as_mut()
    }

    /// Whether a request of ours is in flight.
    pub fn busy(&self) -> bool {
        self.outstanding.is_some()
    }

    /// The message ID for our next request.
    pub fn next_id(&self) -> u32 {
        self.next_id
    }

    /// The outstanding request.
    pub fn outstanding(&self) -> Option<&Outstanding<K>> {
        self.outstanding.as_ref()
    }

    /// Records a request just sent with ID [`Window::next_id`].
    pub fn sent(&mut self, now: Instant, cfg: &RetransmitConfig, datagrams: Vec<Vec<u8>>, kind: K) {
        self.outstanding = Some(Outstanding {
            id: self.next_id,
            datagrams,
            kind,
            attempt: 0,
            deadline: now + timers::retransmit_wait(cfg, 0),
            first_sent: now,
        });
        self.next_id = self.next_id.wrapping_add(1);
    }

    /// Replaces the outstanding request's datagrams, reusing its message ID (IKE_SA_INIT
    /// retried with a cookie or another KE group); the retransmission count restarts.
    pub fn resent_same_id(
        &mut self,
        now: Instant,
        cfg: &RetransmitConfig,
        datagrams: Vec<Vec<u8>>,
    ) {
        if let Some(o) = &mut self.outstanding {
            o.datagrams = datagrams;
            o.attempt = 0;
            o.deadline = now + timers::retransmit_wait(cfg, 0);
        }
    }

    /// Takes the outstanding request if `id` answers it.
    pub fn take_response(&mut self, id: u32) -> Option<Outstanding<K>> {
        if self.outstanding.as_ref().is_some_and(|o| o.id == id) {
            self.outstanding.take()
        } else {
            None
        }
    }

    /// Drops the outstanding request (the SA is going away).
    pub fn abandon(&mut self) -> Option<Outstanding<K>> {
        self.outstanding.take()
    }

    /// Advances the retransmission timer.
    pub fn on_timeout(&mut self, now: Instant, cfg: &RetransmitConfig) -> Timeout {
        let Some(o) = &mut self.outstanding else {
            return Timeout::Nothing;
        };
        if now < o.deadline {
            return Timeout::Nothing;
        }
        if o.attempt >= timers::retransmit_tries(cfg) {
            return Timeout::GiveUp;
        }
        o.attempt = o.attempt.saturating_add(1);
        o.deadline = now + timers::retransmit_wait(cfg, o.attempt);
        Timeout::Resend
    }

    /// The retransmission deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.outstanding.as_ref().map(|o| o.deadline)
    }

    /// Classifies a received request by its message ID.
    pub fn check_request(&self, id: u32) -> RequestCheck {
        if id == self.expected {
            RequestCheck::New
        } else if self
            .last_response
            .as_ref()
            .is_some_and(|(last, _)| *last == id)
        {
            RequestCheck::Retransmitted
        } else {
            RequestCheck::Drop
        }
    }

    /// The cached response to send again.
    pub fn cached_response(&self) -> Option<&[Vec<u8>]> {
        self.last_response.as_ref().map(|(_, d)| d.as_slice())
    }

    /// Records the response to request `id` (which must be the expected one).
    pub fn responded(&mut self, id: u32, datagrams: Vec<Vec<u8>>) {
        self.last_response = Some((id, datagrams));
        self.expected = id.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    #[test]
    fn window_of_one() {
        let cfg = RetransmitConfig::default();
        let t0 = Instant::now();
        let mut w: Window<&str> = Window::new(1, 1);
        assert_eq!(w.check_request(1), RequestCheck::New);
        assert_eq!(w.check_request(0), RequestCheck::Drop);
        w.responded(1, vec![vec![1]]);
        assert_eq!(w.check_request(1), RequestCheck::Retransmitted);
        assert_eq!(w.check_request(2), RequestCheck::New);
        assert_eq!(w.check_request(3), RequestCheck::Drop);
        assert_eq!(w.cached_response(), Some(&[vec![1u8]][..]));

        w.sent(t0, &cfg, vec![vec![9]], "dpd");
        assert!(w.busy());
        assert_eq!(w.next_id(), 2);
        assert!(w.take_response(2).is_none());
        assert_eq!(
            w.on_timeout(t0 + Duration::from_secs(3), &cfg),
            Timeout::Nothing
        );
        let mut t = t0;
        for k in 0..5 {
            t += timers::retransmit_wait(&cfg, k);
            assert_eq!(w.on_timeout(t, &cfg), Timeout::Resend);
        }
        t += timers::retransmit_wait(&cfg, 5);
        assert_eq!(
            w.on_timeout(t - Duration::from_millis(1), &cfg),
            Timeout::Nothing
        );
        assert_eq!(w.on_timeout(t, &cfg), Timeout::GiveUp);
        assert_eq!(w.take_response(1).map(|o| o.kind), Some("dpd"));
        assert!(!w.busy());
    }
}
