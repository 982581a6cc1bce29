//! Prometheus metrics (`--metrics-addr`, served on `GET /metrics` by [`http`]).
//!
//! Every name is `strait_…` with its unit in the name; label values come from fixed sets (IKE
//! states, CamelCase reasons, `ike`/`child`, `in`/`out`) or are tunnel names — never a `Debug`
//! rendering, never key material. The driver owns the [`Metrics`]; a scrape asks the driver
//! (over a channel) to refresh the gauges and the kernel's per-CHILD-SA counters and to encode.

use std::collections::BTreeMap;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::sync::oneshot;

use strait_crds::IkeState;

use crate::dataplane::Traffic;

mod http;

pub use http::{DEFAULT_ADDR, parse_addr, serve};

/// A scrape: the driver answers with the exposition text.
pub type MetricsRequest = oneshot::Sender<String>;

/// IKE SA states as labelled (`strait_ike_sas{state}`): per tunnel, its `ikeState` in lower case.
pub const IKE_STATES: [&str; 3] = ["established", "connecting", "down"];

/// The agent's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Tunnels by IKE state.
    pub ike_sas: IntGaugeVec,
    /// CHILD SAs installed.
    pub child_sas: IntGauge,
    /// Completed and failed initial handshakes (IKE_SA_INIT + IKE_AUTH).
    pub handshakes: IntCounterVec,
    /// Rekeys, by kind (`ike`, `child`).
    pub rekeys: IntCounterVec,
    /// Established IKE SAs declared dead (the peer stopped answering).
    pub dpd_failures: IntCounter,
    /// Datagrams sent again unchanged (our retransmitted requests and repeated answers).
    pub retransmissions: IntCounter,
    /// Time from our first IKE_SA_INIT to the established IKE SA (initiator side).
    pub handshake_duration: Histogram,
    /// Bytes carried by a tunnel's CHILD SAs (kernel counters), by direction.
    pub child_sa_bytes: IntCounterVec,
    /// Packets carried by a tunnel's CHILD SAs, by direction.
    pub child_sa_packets: IntCounterVec,
    /// IKE datagrams dropped without changing any SA, by reason ([`DROP_REASONS`]).
    pub ike_dropped: IntCounterVec,
    /// COOKIE challenges sent (RFC 7296 §2.6: many half-open SAs, likely a flood).
    pub cookies_sent: IntCounter,
}

/// Why an IKE datagram was dropped (`strait_ike_datagrams_dropped_total{reason}`).
pub const DROP_REASONS: [&str; 6] = [
    "malformed",
    "nat_keepalive",
    "unknown_spi",
    "integrity_failed",
    "unexpected",
    "no_peer_config",
];

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: prometheus::Result<T>,
) -> prometheus::Result<T> {
    let m = m?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

impl Metrics {
    /// A fresh set on its own registry.
    ///
    /// # Errors
    /// Only on a programming error (a duplicate or invalid name).
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let m = Self {
            ike_sas: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("strait_ike_sas", "Tunnels by the state of their IKE SA."),
                    &["state"],
                ),
            )?,
            child_sas: reg(
                &r,
                IntGauge::new("strait_child_sas", "CHILD SAs currently installed."),
            )?,
            handshakes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "strait_handshakes_total",
                        "Initial IKE handshakes, by result (success/failure) and reason.",
                    ),
                    &["result", "reason"],
                ),
            )?,
            rekeys: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "strait_rekeys_total",
                        "Completed rekeys, by kind (ike/child).",
                    ),
                    &["kind"],
                ),
            )?,
            dpd_failures: reg(
                &r,
                IntCounter::new(
                    "strait_dpd_failures_total",
                    "Established IKE SAs declared dead because the peer stopped answering.",
                ),
            )?,
            retransmissions: reg(
                &r,
                IntCounter::new(
                    "strait_retransmissions_total",
                    "IKE datagrams sent again unchanged.",
                ),
            )?,
            handshake_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "strait_handshake_duration_seconds",
                        "Time from the first IKE_SA_INIT to the established IKE SA (as initiator).",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                ),
            )?,
            child_sa_bytes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "strait_child_sa_bytes_total",
                        "Bytes carried by the tunnel's CHILD SAs (kernel counters), by direction.",
                    ),
                    &["tunnel", "direction"],
                ),
            )?,
            child_sa_packets: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "strait_child_sa_packets_total",
                        "Packets carried by the tunnel's CHILD SAs (kernel counters), by direction.",
                    ),
                    &["tunnel", "direction"],
                ),
            )?,
            ike_dropped: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "strait_ike_datagrams_dropped_total",
                        "IKE datagrams dropped without changing any SA, by reason.",
                    ),
                    &["reason"],
                ),
            )?,
            cookies_sent: reg(
                &r,
                IntCounter::new(
                    "strait_ike_cookies_sent_total",
                    "COOKIE challenges sent to IKE_SA_INIT requests (many half-open SAs).",
                ),
            )?,
            registry: r,
        };
        for reason in DROP_REASONS {
            m.ike_dropped.with_label_values(&[reason]);
        }
        for s in IKE_STATES {
            m.ike_sas.with_label_values(&[s]).set(0);
        }
        for k in ["ike", "child"] {
            m.rekeys.with_label_values(&[k]);
        }
        Ok(m)
    }

    /// Sets the IKE SA gauge by state (one tunnel, one state) and the CHILD SA gauge.
    pub fn set_tunnels(&self, states: impl Iterator<Item = Option<IkeState>>, child_sas: usize) {
        let mut by_state = [0usize; IKE_STATES.len()];
        for st in states.flatten() {
            if let Some(n) = IKE_STATES
                .iter()
                .position(|s| s.eq_ignore_ascii_case(st.as_str()))
                .and_then(|i| by_state.get_mut(i))
            {
                *n += 1;
            }
        }
        for (s, n) in IKE_STATES.into_iter().zip(by_state) {
            self.ike_sas
                .with_label_values(&[s])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.child_sas
            .set(i64::try_from(child_sas).unwrap_or(i64::MAX));
    }

    /// Brings the drop and cookie counters up to the endpoint's own (which only grow).
    pub fn set_endpoint_stats(&self, s: &strait_ike::Stats) {
        let to = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        for (reason, v) in DROP_REASONS.into_iter().zip([
            s.malformed,
            s.keepalives,
            s.unknown_spi,
            s.integrity_failed,
            s.unexpected,
            s.no_peer_config,
        ]) {
            to(&self.ike_dropped.with_label_values(&[reason]), v);
        }
        to(&self.cookies_sent, s.cookies_sent);
        // the endpoint counts its own: requests sent again, and answers repeated from its cache
        to(
            &self.retransmissions,
            s.retransmits_sent.saturating_add(s.retransmits_answered),
        );
    }

    /// Sets the per-tunnel traffic counters to the kernel's sums (a counter that went down —
    /// the tunnel was re-created — starts again from the new value). Tunnels not in `traffic`
    /// lose their series.
    pub fn set_traffic(&self, traffic: &BTreeMap<String, Traffic>) {
        for (name, t) in traffic {
            for (dir, bytes, packets) in [
                ("in", t.bytes_in, t.packets_in),
                ("out", t.bytes_out, t.packets_out),
            ] {
                for (vec, v) in [
                    (&self.child_sa_bytes, bytes),
                    (&self.child_sa_packets, packets),
                ] {
                    let c = vec.with_label_values(&[name.as_str(), dir]);
                    let have = c.get();
                    if v >= have {
                        c.inc_by(v - have);
                    } else {
                        let _ = vec.remove_label_values(&[name.as_str(), dir]);
                        vec.with_label_values(&[name.as_str(), dir]).inc_by(v);
                    }
                }
            }
        }
        for vec in [&self.child_sa_bytes, &self.child_sa_packets] {
            let stale: Vec<String> = prometheus::core::Collector::collect(vec)
                .iter()
                .flat_map(|mf| mf.get_metric().iter())
                .filter_map(|m| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == "tunnel")
                        .map(|l| l.value().to_owned())
                })
                .filter(|n| !traffic.contains_key(n))
                .collect();
            for n in stale {
                for dir in ["in", "out"] {
                    let _ = vec.remove_label_values(&[n.as_str(), dir]);
                }
            }
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_traffic() {
        let m = Metrics::new().unwrap();
        let mut t = BTreeMap::new();
        t.insert(
            "gw".to_owned(),
            Traffic {
                bytes_in: 100,
                packets_in: 1,
                bytes_out: 200,
                packets_out: 2,
            },
        );
        m.set_traffic(&t);
        let text = m.encode();
        assert!(text.contains("strait_child_sa_bytes_total{direction=\"out\",tunnel=\"gw\"} 200"));
        assert!(text.contains("strait_ike_sas{state=\"established\"} 0"));
        // a re-created tunnel starts again from the kernel's value
        if let Some(x) = t.get_mut("gw") {
            x.bytes_out = 50;
        }
        m.set_traffic(&t);
        assert!(m.encode().contains("direction=\"out\",tunnel=\"gw\"} 50"));
        // a removed tunnel loses its series
        m.set_traffic(&BTreeMap::new());
        assert!(!m.encode().contains("tunnel=\"gw\""));
    }

    #[test]
    fn tunnels_by_state() {
        let m = Metrics::new().unwrap();
        let states = [
            Some(IkeState::Established),
            Some(IkeState::Established),
            Some(IkeState::Connecting),
            None,
        ];
        m.set_tunnels(states.into_iter(), 3);
        let text = m.encode();
        assert!(
            text.contains("strait_ike_sas{state=\"established\"} 2"),
            "{text}"
        );
        assert!(text.contains("strait_ike_sas{state=\"connecting\"} 1"));
        assert!(text.contains("strait_ike_sas{state=\"down\"} 0"));
        assert!(text.contains("strait_child_sas 3"));
        m.set_tunnels(std::iter::empty(), 0);
        assert!(
            m.encode()
                .contains("strait_ike_sas{state=\"established\"} 0")
        );
    }
}
