//! Timer arithmetic: the retransmission backoff schedule and lifetime jitter. Pure functions of
//! the configuration (and of random bytes passed in), so tests can assert exact times.

use core::time::Duration;

use crate::config::{Lifetime, RetransmitConfig};

/// The wait after send number `attempt` (0 = the original send) before the next retransmission
/// or, after the last one, before giving up: `timeout × base^attempt`.
pub fn retransmit_wait(cfg: &RetransmitConfig, attempt: u32) -> Duration {
    let base = if cfg.base.is_finite() {
        cfg.base.clamp(1.0, 10.0)
    } else {
        1.0
    };
    let exp = i32::try_from(attempt.min(32)).unwrap_or(32);
    let secs = cfg.timeout.as_secs_f64() * base.powi(exp);
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(86_400))
}

/// Retransmissions before giving up, bounded.
pub fn retransmit_tries(cfg: &RetransmitConfig) -> u32 {
    cfg.tries.min(20)
}

/// The soft (rekey) time of a lifetime: `rekey_time` minus a jitter drawn from `random`
/// uniformly (enough for timing) in `0..rand_time`.
pub fn rekey_after(lt: &Lifetime, random: u64) -> Duration {
    let jitter_ms = u64::try_from(lt.rand_time.as_millis()).unwrap_or(u64::MAX);
    let jitter = if jitter_ms == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(random % jitter_ms)
    };
    lt.rekey_time
        .saturating_sub(jitter)
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strongswan_schedule() {
        let cfg = RetransmitConfig::default();
        let waits: Vec<f64> = (0..=5)
            .map(|k| retransmit_wait(&cfg, k).as_secs_f64())
            .collect();
        let want = [4.0, 7.2, 12.96, 23.328, 41.9904, 75.58272];
        for (w, e) in waits.iter().zip(want) {
            assert!((w - e).abs() < 1e-6, "{w} vs {e}");
        }
        let silly = RetransmitConfig {
            base: f64::NAN,
            ..cfg
        };
        assert_eq!(retransmit_wait(&silly, 3), Duration::from_secs(4));
        let huge = RetransmitConfig { base: 1e9, ..cfg };
        assert!(retransmit_wait(&huge, 40) > Duration::ZERO);
    }

    #[test]
    fn jitter_stays_in_range() {
        let lt = Lifetime::from_rekey(Duration::from_secs(3600));
        for r in [0, 1, 359_999, u64::MAX] {
            let t = rekey_after(&lt, r);
            assert!(t <= Duration::from_secs(3600) && t > Duration::from_secs(3240));
        }
    }
}
