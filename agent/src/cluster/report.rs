//! The agent's `status.gateways[]` entry: the server-side apply bodies (its entry, or none to
//! clear it) and when to write (on change, at most once per interval per tunnel).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strait_crds::{GatewayStatus, IPsecTunnel};

/// The field manager of the agent on `node` (the same one its heartbeat Lease uses).
pub fn field_manager(node: &str) -> String {
    format!("strait-agent/{node}")
}

/// The apply body that makes `entry` this agent's only field in the tunnel's status.
pub fn entry_body(tunnel: &str, entry: &GatewayStatus) -> Value {
    json!({
        "apiVersion": "strait.dev/v1alpha1",
        "kind": "IPsecTunnel",
        "metadata": {"name": tunnel},
        "status": {"gateways": [entry]},
    })
}

/// The apply body that owns nothing: server-side apply then removes the entry this manager owned.
pub fn clear_body(tunnel: &str) -> Value {
    json!({
        "apiVersion": "strait.dev/v1alpha1",
        "kind": "IPsecTunnel",
        "metadata": {"name": tunnel},
        "status": {},
    })
}

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
    /// and the last attempt is at least the interval ago.
    pub fn due(&self, tunnel: &str, entry: &GatewayStatus, now: Instant) -> bool {
        match self.last.get(tunnel) {
            None => true,
            Some((written, at)) => {
                written.as_ref() != Some(entry) && now.duration_since(*at) >= self.min_interval
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

    fn entry(state: &str) -> GatewayStatus {
        GatewayStatus {
            node: "gw1".into(),
            ike_state: Some(state.into()),
            ..GatewayStatus::default()
        }
    }

    #[test]
    fn writes_on_change_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut w = Writer::new(Duration::from_secs(1));
        assert!(w.due("t", &entry("Connecting"), t0));
        w.attempted("t", Some(entry("Connecting")), t0);
        // unchanged: never
        assert!(!w.due("t", &entry("Connecting"), t0 + Duration::from_secs(5)));
        // changed, too soon
        assert!(!w.due("t", &entry("Established"), t0 + Duration::from_millis(300)));
        assert!(w.due("t", &entry("Established"), t0 + Duration::from_secs(1)));
        // a failed attempt is retried after the interval
        w.attempted("t", None, t0 + Duration::from_secs(1));
        assert!(!w.due("t", &entry("Established"), t0 + Duration::from_millis(1500)));
        assert!(w.due("t", &entry("Established"), t0 + Duration::from_secs(2)));
        w.forget("t");
        assert!(w.due("t", &entry("Established"), t0));
    }

    #[test]
    fn bodies_hold_only_the_agents_fields() {
        let b = entry_body("dc2", &entry("Established"));
        assert_eq!(b["status"]["gateways"][0]["node"], "gw1");
        assert!(b["status"].get("conditions").is_none());
        assert!(b["status"].get("activeGateway").is_none());
        assert_eq!(clear_body("dc2")["status"], json!({}));
        assert_eq!(field_manager("gw1"), "strait-agent/gw1");
    }
}
