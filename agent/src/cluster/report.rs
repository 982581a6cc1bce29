//! When the agent writes its `status.gateways[]` entry: on change, at most once per interval per
//! tunnel, and at once when a tunnel comes up. The bodies and field manager are the contract's
//! ([`strait_crds::contract`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use strait_crds::{GatewayStatus, IPsecTunnel};

/// Whether the tunnel's status holds an entry for `node`.
pub fn has_entry(t: &IPsecTunnel, node: &str) -> bool {
    t.status
        .as_ref()
        .is_some_and(|s| s.gateways.iter().any(|g| g.node == node))
}

/// On-change, rate-limited writes: remembers what was last written for each tunnel and when the
/// last attempt was.
#[derive(Debug)]
pub struct Writer {
    min_interval: Duration,
    last: HashMap<String, (Option<GatewayStatus>, Instant)>,
}

impl Writer {
    /// At most one write per `min_interval` per tunnel.
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last: HashMap::new(),
        }
    }

    /// Whether `entry` should be written for `tunnel` now: it differs from what was written,
    /// and the last attempt is at least the interval ago, or the tunnel has just come up after a
    /// write that took. Coming up is what Ready waits for; it follows the first write
    /// (`Connecting`) by milliseconds and happens at most once per handshake, so it skips the
    /// interval. A failed write is still retried only after the interval.
    pub fn due(&self, tunnel: &str, entry: &GatewayStatus, now: Instant) -> bool {
        match self.last.get(tunnel) {
            None => true,
            Some((written, at)) => {
                written.as_ref() != Some(entry)
                    && (now.duration_since(*at) >= self.min_interval
                        || (entry.is_up() && written.as_ref().is_some_and(|w| !w.is_up())))
            }
        }
    }

    /// Records an attempt; `written` is the entry when the API server took it.
    pub fn attempted(&mut self, tunnel: &str, written: Option<GatewayStatus>, now: Instant) {
        self.last.insert(tunnel.to_owned(), (written, now));
    }

    /// Forgets a tunnel (its entry was cleared, or it is no longer run here).
    pub fn forget(&mut self, tunnel: &str) {
        self.last.remove(tunnel);
    }

    /// The tunnels something was written for.
    pub fn tunnels(&self) -> Vec<String> {
        self.last.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_crds::IkeState;

    fn entry(state: IkeState) -> GatewayStatus {
        GatewayStatus {
            node: "gw1".into(),
            ike_state: Some(state),
            ..GatewayStatus::default()
        }
    }

    #[test]
    fn writes_on_change_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut w = Writer::new(Duration::from_secs(1));
        assert!(w.due("t", &entry(IkeState::Connecting), t0));
        w.attempted("t", Some(entry(IkeState::Connecting)), t0);
        // unchanged: never
        assert!(!w.due(
            "t",
            &entry(IkeState::Connecting),
            t0 + Duration::from_secs(5)
        ));
        // changed, too soon
        assert!(!w.due(
            "t",
            &entry(IkeState::Established),
            t0 + Duration::from_millis(300)
        ));
        assert!(w.due(
            "t",
            &entry(IkeState::Established),
            t0 + Duration::from_secs(1)
        ));
        // a failed attempt is retried after the interval
        w.attempted("t", None, t0 + Duration::from_secs(1));
        assert!(!w.due(
            "t",
            &entry(IkeState::Established),
            t0 + Duration::from_millis(1500)
        ));
        assert!(w.due(
            "t",
            &entry(IkeState::Established),
            t0 + Duration::from_secs(2)
        ));
        w.forget("t");
        assert!(w.due("t", &entry(IkeState::Established), t0));
    }

    #[test]
    fn coming_up_is_written_at_once_once() {
        let up = |spi: &str| GatewayStatus {
            child_sas: vec![strait_crds::ChildSaStatus {
                spi_in: spi.into(),
                spi_out: spi.into(),
                ..strait_crds::ChildSaStatus::default()
            }],
            ..entry(IkeState::Established)
        };
        let t0 = Instant::now();
        let soon = t0 + Duration::from_millis(30);
        let mut w = Writer::new(Duration::from_secs(1));
        w.attempted("t", Some(entry(IkeState::Connecting)), t0);
        // established without a CHILD SA is not up: rate-limited
        assert!(!w.due("t", &entry(IkeState::Established), soon));
        assert!(w.due("t", &up("01"), soon));
        w.attempted("t", Some(up("01")), soon);
        // further changes while up wait for the interval
        assert!(!w.due("t", &up("02"), soon + Duration::from_millis(10)));
        assert!(w.due("t", &up("02"), soon + Duration::from_secs(1)));
        // a failed write is retried after the interval, not at once
        w.attempted("t", Some(entry(IkeState::Connecting)), t0);
        w.attempted("t", None, soon);
        assert!(!w.due("t", &up("01"), soon + Duration::from_millis(10)));
        assert!(w.due("t", &up("01"), soon + Duration::from_secs(1)));
        // going down is rate-limited as before
        w.attempted("t", Some(up("01")), soon);
        assert!(!w.due(
            "t",
            &entry(IkeState::Connecting),
            soon + Duration::from_millis(10)
        ));
    }
}
