//! Make-before-break across a restart: the XFRM objects a previous run left in the kernel keep
//! carrying traffic until every tunnel has its CHILD SAs again, plus a moment for packets in
//! flight on the old SAs; then they are swept. A tunnel that never comes back does not keep
//! them forever.
//!
//! Pure: the clock is passed in, so the timing is unit-tested here.

use std::time::{Duration, Instant};

/// The longest the previous run's objects are kept.
pub const ADOPT_MAX: Duration = Duration::from_secs(90);
/// How long after every tunnel is up again the previous run's objects are swept.
pub const ADOPT_SETTLE: Duration = Duration::from_secs(2);

/// Whether, and until when, a previous run's objects are kept.
#[derive(Debug, Default)]
pub(crate) struct Adoption {
    /// Sweep at the latest then; `None`: nothing adopted (or swept already).
    until: Option<Instant>,
    /// Every tunnel was up at this time.
    ready_at: Option<Instant>,
}

/// Why it is time to sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sweep {
    /// Every tunnel came back.
    Settled,
    /// [`ADOPT_MAX`] passed first.
    TimedOut,
}

impl Adoption {
    /// Objects of a previous run were found at `now`.
    pub(crate) fn start(&mut self, now: Instant) {
        self.until = Some(now + ADOPT_MAX);
        self.ready_at = None;
    }

    /// When [`Adoption::check`] must run next, if anything is adopted.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match (self.until, self.ready_at) {
            (Some(until), Some(ready)) => Some(until.min(ready + ADOPT_SETTLE)),
            (until, _) => until,
        }
    }

    /// Called after every input with whether every tunnel is up: says when to sweep (once).
    pub(crate) fn check(&mut self, now: Instant, all_up: bool) -> Option<Sweep> {
        let until = self.until?;
        if !all_up {
            self.ready_at = None;
        } else if self.ready_at.is_none() {
            self.ready_at = Some(now);
        }
        let settled = self.ready_at.is_some_and(|r| now >= r + ADOPT_SETTLE);
        if !settled && now < until {
            return None;
        }
        self.until = None;
        self.ready_at = None;
        Some(if settled {
            Sweep::Settled
        } else {
            Sweep::TimedOut
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_adopted_never_sweeps() {
        let mut a = Adoption::default();
        assert_eq!(a.deadline(), None);
        assert_eq!(a.check(Instant::now(), true), None);
    }

    #[test]
    fn sweeps_once_everything_is_up_and_settled() {
        let t0 = Instant::now();
        let mut a = Adoption::default();
        a.start(t0);
        assert_eq!(a.deadline(), Some(t0 + ADOPT_MAX));
        assert_eq!(a.check(t0, false), None);
        let up = t0 + Duration::from_secs(5);
        assert_eq!(a.check(up, true), None);
        assert_eq!(a.deadline(), Some(up + ADOPT_SETTLE));
        // a tunnel going down again restarts the settling
        assert_eq!(a.check(up + Duration::from_secs(1), false), None);
        assert_eq!(a.deadline(), Some(t0 + ADOPT_MAX));
        let again = up + Duration::from_secs(3);
        assert_eq!(a.check(again, true), None);
        assert_eq!(a.check(again + ADOPT_SETTLE, true), Some(Sweep::Settled));
        // once only
        assert_eq!(a.check(again + ADOPT_SETTLE * 2, true), None);
        assert_eq!(a.deadline(), None);
    }

    #[test]
    fn a_tunnel_that_never_returns_does_not_keep_them_forever() {
        let t0 = Instant::now();
        let mut a = Adoption::default();
        a.start(t0);
        assert_eq!(
            a.check(t0 + ADOPT_MAX - Duration::from_millis(1), false),
            None
        );
        assert_eq!(a.check(t0 + ADOPT_MAX, false), Some(Sweep::TimedOut));
    }
}
