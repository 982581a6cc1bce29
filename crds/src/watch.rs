//! How the operator and the agents watch the API server again after a watch fails.

use std::hash::{BuildHasher as _, RandomState};
use std::time::Duration;

/// The first delay before watching again.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// The longest delay before watching again (before jitter).
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Delays between attempts to watch again: [`RETRY_MIN`] doubling up to [`RETRY_MAX`], each
/// plus up to half again at random (so agents on many nodes do not return in step); back to
/// the start after any success.
///
/// kube's default goes up to 30 s plus up to 100 % jitter, tuned to spare a struggling API
/// server; after an outage of a minute it left the operator deaf for most of a minute more
/// once the server was back, while tunnels waited to be reconciled. One watch per operator and
/// two per agent retrying every few seconds is a light load on a server that is down.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: RETRY_MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (base * 2).min(RETRY_MAX);
        // std's hasher keys are random per process and per call: enough for spreading retries.
        let r = RandomState::new().hash_one(base);
        let jitter = base.mul_f64((r % 1_000) as f64 / 2_000.0);
        Some(base + jitter)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = RETRY_MIN;
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::utils::Backoff as _;

    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = WatchBackoff::default();
        let bases = [500, 1_000, 2_000, 4_000, 5_000, 5_000, 5_000];
        for base in bases {
            let d = b.next().unwrap_or_default();
            let base = Duration::from_millis(base);
            assert!(d >= base && d <= base.mul_f64(1.5), "{d:?} for {base:?}");
        }
        b.reset();
        let d = b.next().unwrap_or_default();
        assert!(d >= RETRY_MIN && d <= RETRY_MIN.mul_f64(1.5), "{d:?}");
    }
}
