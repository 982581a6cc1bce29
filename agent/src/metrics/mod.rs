//! Prometheus metrics (`--metrics-addr`, served on `GET /metrics` by [`http`]).
//!
//! Every name is `strait_…` with its unit in the name; label values come from fixed sets (IKE
//! states, CamelCase reasons, `ike`/`child`, `in`/`out`) or are tunnel and interface names — never a `Debug`
//! rendering, never key material. The driver owns the [`Metrics`]; a scrape asks the driver
//! (over a channel) to refresh the gauges, the kernel's per-CHILD-SA counters and route-based
//! tunnels' interface counters, and to encode.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::sync::oneshot;

use strait_crds::{GatewayStatus, IkeState};

use crate::dataplane::{InterfaceCounters, Traffic};

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
    /// Completed and failed initial handshakes (IKE_SA_INIT + IKE_AUTH), by tunnel, result
    /// and reason.
    pub handshakes: IntCounterVec,
    /// Rekeys, by tunnel and kind (`ike`, `child`).
    pub rekeys: IntCounterVec,
    /// CHILD SAs that could not be created or rekeyed while the IKE SA stayed up, by tunnel
    /// and reason.
    pub child_sa_failures: IntCounterVec,
    /// Inbound packets the kernel dropped as replayed, by tunnel.
    pub child_sa_replay_drops: IntCounterVec,
    /// Inbound packets that failed the kernel's integrity check, by tunnel.
    pub child_sa_integrity_failures: IntCounterVec,
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
    /// A route-based tunnel's XFRM interface: bytes, packets, errors and drops by direction
    /// (the device's own counters).
    pub interface_bytes: IntCounterVec,
    /// Packets through the interface.
    pub interface_packets: IntCounterVec,
    /// Errors on the interface.
    pub interface_errors: IntCounterVec,
    /// Packets the interface dropped (for example, no SA yet).
    pub interface_dropped: IntCounterVec,
    /// Per tunnel: 1 while its IKE SA is established with at least one CHILD SA.
    pub tunnel_up: IntGaugeVec,
    /// Per tunnel: when its IKE SA was established (Unix seconds), while it is.
    pub tunnel_established: IntGaugeVec,
    /// The kernel's XFRM error counters (`/proc/net/xfrm_stat`), by name.
    pub xfrm_errors: IntCounterVec,
    /// Per certificate tunnel: when its own certificate (`local`) and its earliest trust anchor
    /// (`ca`) expire (Unix seconds).
    pub cert_expiry: IntGaugeVec,
}

/// Why an IKE datagram was dropped (`strait_ike_datagrams_dropped_total{reason}`).
pub const DROP_REASONS: [&str; 7] = [
    "malformed",
    "nat_keepalive",
    "unknown_spi",
    "integrity_failed",
    "unexpected",
    "no_peer_config",
    "half_open_limit",
];

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: prometheus::Result<T>,
) -> prometheus::Result<T> {
    let m = m?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

/// `strait_xfrm_interface_<what>_total{tunnel, interface, direction}`.
fn interface_counter(r: &Registry, what: &str, help: &str) -> prometheus::Result<IntCounterVec> {
    reg(
        r,
        IntCounterVec::new(
            Opts::new(
                format!("strait_xfrm_interface_{what}_total"),
                format!(
                    "{help} through a route-based tunnel's XFRM interface (device counters), by \
                     direction."
                ),
            ),
            &["tunnel", "interface", "direction"],
        ),
    )
}

/// Sets the counter `labels` of `vec` to `v`, a kernel counter: one that went down (its
/// object was re-created) starts again from the new value.
fn set_counter(vec: &IntCounterVec, labels: &[&str], v: u64) {
    let c = vec.with_label_values(labels);
    let have = c.get();
    if v >= have {
        c.inc_by(v - have);
    } else {
        let _ = vec.remove_label_values(labels);
        vec.with_label_values(labels).inc_by(v);
    }
}

/// Removes the series of `vec` (a counter or gauge family) whose labels `keep` refuses.
fn drop_series<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    keep: impl Fn(&HashMap<&str, &str>) -> bool,
) {
    let families = prometheus::core::Collector::collect(vec);
    for m in families.iter().flat_map(|mf| mf.get_metric().iter()) {
        let labels: HashMap<&str, &str> = m
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        if !keep(&labels) {
            let _ = vec.remove(&labels);
        }
    }
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
                        "Initial IKE handshakes, by tunnel, result (success/failure) and reason.",
                    ),
                    &["tunnel", "result", "reason"],
                ),
            )?,
            rekeys: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "strait_rekeys_total",
                        "Completed rekeys, by tunnel and kind (ike/child).",
                    ),
                    &["tunnel", "kind"],
                ),
            )?,
            child_sa_failures: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "strait_child_sa_failures_total",
                        "CHILD SAs that could not be created or rekeyed (the IKE SA stayed up), by tunnel and reason.",
                    ),
                    &["tunnel", "reason"],
                ),
            )?,
            child_sa_replay_drops: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "strait_child_sa_replay_drops_total",
                        "Inbound ESP packets the kernel dropped as replayed or outside the anti-replay window (kernel counters).",
                    ),
                    &["tunnel"],
                ),
            )?,
            child_sa_integrity_failures: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "strait_child_sa_integrity_failures_total",
                        "Inbound ESP packets that failed the kernel's integrity check (kernel counters).",
                    ),
                    &["tunnel"],
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
            interface_bytes: interface_counter(&r, "bytes", "Bytes")?,
            interface_packets: interface_counter(&r, "packets", "Packets")?,
            interface_errors: interface_counter(&r, "errors", "Errors")?,
            interface_dropped: interface_counter(&r, "dropped", "Packets dropped")?,
            tunnel_up: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "strait_tunnel_up",
                        "1 while the tunnel's IKE SA is established with at least one CHILD SA.",
                    ),
                    &["tunnel"],
                ),
            )?,
            tunnel_established: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "strait_tunnel_established_timestamp_seconds",
                        "When the tunnel's current IKE SA was established (Unix time).",
                    ),
                    &["tunnel"],
                ),
            )?,
            xfrm_errors: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "strait_kernel_xfrm_errors_total",
                        "The kernel's XFRM error counters (/proc/net/xfrm_stat of the agent's \
                         network namespace), by name.",
                    ),
                    &["error"],
                ),
            )?,
            cert_expiry: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "strait_certificate_expiry_timestamp_seconds",
                        "When the tunnel's own certificate (local) or its earliest-expiring \
                         trust anchor (ca) expires (Unix time).",
                    ),
                    &["tunnel", "certificate"],
                ),
            )?,
            registry: r,
        };
        reg(
            &m.registry,
            IntGaugeVec::new(
                Opts::new(
                    "strait_agent_build_info",
                    "Always 1; `version` is the agent's.",
                ),
                &["version"],
            ),
        )?
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        for reason in DROP_REASONS {
            m.ike_dropped.with_label_values(&[reason]);
        }
        for s in IKE_STATES {
            m.ike_sas.with_label_values(&[s]).set(0);
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
            s.init_blocked,
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
                set_counter(&self.child_sa_bytes, &[name, dir], bytes);
                set_counter(&self.child_sa_packets, &[name, dir], packets);
            }
            set_counter(&self.child_sa_replay_drops, &[name], t.replay_drops);
            set_counter(
                &self.child_sa_integrity_failures,
                &[name],
                t.integrity_failures,
            );
        }
        for vec in [
            &self.child_sa_bytes,
            &self.child_sa_packets,
            &self.child_sa_replay_drops,
            &self.child_sa_integrity_failures,
        ] {
            drop_series(vec, |l| {
                l.get("tunnel").is_some_and(|t| traffic.contains_key(*t))
            });
        }
    }

    /// Sets the per-tunnel gauges from each tunnel's status (by name); tunnels not given lose
    /// their series.
    pub fn set_tunnel_status<'a>(
        &self,
        tunnels: impl Iterator<Item = (&'a str, &'a GatewayStatus)>,
    ) {
        let mut names = BTreeSet::new();
        for (name, g) in tunnels {
            self.tunnel_up
                .with_label_values(&[name])
                .set(i64::from(g.is_up()));
            let at = g
                .established_at
                .as_ref()
                .filter(|_| g.ike_established())
                .map(|t| t.0.as_second());
            match at {
                Some(secs) => self.tunnel_established.with_label_values(&[name]).set(secs),
                None => {
                    let _ = self.tunnel_established.remove_label_values(&[name]);
                }
            }
            // zero from the start, so rate() and increase() see the first rekey and handshake
            for kind in ["ike", "child"] {
                self.rekeys.with_label_values(&[name, kind]);
            }
            self.handshakes
                .with_label_values(&[name, "success", "none"]);
            names.insert(name.to_owned());
        }
        // a tunnel that is gone takes its series with it, counters included
        let known = |l: &HashMap<&str, &str>| l.get("tunnel").is_some_and(|t| names.contains(*t));
        drop_series(&self.tunnel_up, known);
        drop_series(&self.tunnel_established, known);
        for vec in [&self.handshakes, &self.rekeys, &self.child_sa_failures] {
            drop_series(vec, known);
        }
    }

    /// Sets the certificate expiry gauges: (tunnel, `local` or `ca`, Unix seconds); series
    /// not given go.
    pub fn set_cert_expiry(&self, certs: &[(String, &'static str, i64)]) {
        let families = prometheus::core::Collector::collect(&self.cert_expiry);
        for m in families.iter().flat_map(|f| f.get_metric().iter()) {
            let l: Vec<&str> = m.get_label().iter().map(|l| l.value()).collect();
            // labels come sorted by name: certificate, tunnel
            if let [which, tunnel] = l.as_slice()
                && !certs.iter().any(|(t, w, _)| t == tunnel && w == which)
            {
                let _ = self.cert_expiry.remove_label_values(&[tunnel, which]);
            }
        }
        for (tunnel, which, at) in certs {
            self.cert_expiry
                .with_label_values(&[tunnel.as_str(), *which])
                .set(*at);
        }
    }

    /// Sets the kernel's XFRM error counters (name → value, as `/proc/net/xfrm_stat` lists
    /// them).
    pub fn set_xfrm_errors(&self, counters: &BTreeMap<String, u64>) {
        for (name, v) in counters {
            set_counter(&self.xfrm_errors, &[name], *v);
        }
    }

    /// Sets the counters of route-based tunnels' XFRM interfaces to the kernel's (by tunnel
    /// name: interface and counters). Interfaces not in `interfaces` lose their series.
    pub fn set_interfaces(&self, interfaces: &BTreeMap<String, InterfaceCounters>) {
        for (name, c) in interfaces {
            let dev = c.interface.as_str();
            for (dir, bytes, packets, errors, dropped) in [
                ("in", c.rx_bytes, c.rx_packets, c.rx_errors, c.rx_dropped),
                ("out", c.tx_bytes, c.tx_packets, c.tx_errors, c.tx_dropped),
            ] {
                let labels = [name.as_str(), dev, dir];
                set_counter(&self.interface_bytes, &labels, bytes);
                set_counter(&self.interface_packets, &labels, packets);
                set_counter(&self.interface_errors, &labels, errors);
                set_counter(&self.interface_dropped, &labels, dropped);
            }
        }
        for vec in [
            &self.interface_bytes,
            &self.interface_packets,
            &self.interface_errors,
            &self.interface_dropped,
        ] {
            drop_series(vec, |l| {
                l.get("tunnel")
                    .and_then(|t| interfaces.get(*t))
                    .is_some_and(|c| l.get("interface") == Some(&c.interface.as_str()))
            });
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
                replay_drops: 3,
                integrity_failures: 4,
            },
        );
        m.set_traffic(&t);
        let text = m.encode();
        assert!(text.contains("strait_child_sa_bytes_total{direction=\"out\",tunnel=\"gw\"} 200"));
        assert!(text.contains("strait_child_sa_replay_drops_total{tunnel=\"gw\"} 3"));
        assert!(text.contains("strait_child_sa_integrity_failures_total{tunnel=\"gw\"} 4"));
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
    fn interface_counters_follow_the_device() {
        let m = Metrics::new().unwrap();
        let mut i = BTreeMap::new();
        let c = InterfaceCounters {
            interface: "strait-x1".to_owned(),
            rx_bytes: 840,
            rx_packets: 10,
            tx_bytes: 420,
            tx_packets: 5,
            tx_dropped: 2,
            ..InterfaceCounters::default()
        };
        i.insert("gw".to_owned(), c.clone());
        m.set_interfaces(&i);
        let text = m.encode();
        for line in [
            "strait_xfrm_interface_bytes_total{direction=\"in\",interface=\"strait-x1\",tunnel=\"gw\"} 840",
            "strait_xfrm_interface_packets_total{direction=\"out\",interface=\"strait-x1\",tunnel=\"gw\"} 5",
            "strait_xfrm_interface_dropped_total{direction=\"out\",interface=\"strait-x1\",tunnel=\"gw\"} 2",
            "strait_xfrm_interface_errors_total{direction=\"in\",interface=\"strait-x1\",tunnel=\"gw\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        // the tunnel's interface re-made under another name: the old series go
        i.insert(
            "gw".to_owned(),
            InterfaceCounters {
                interface: "strait-x2".to_owned(),
                rx_packets: 1,
                ..c
            },
        );
        m.set_interfaces(&i);
        let text = m.encode();
        assert!(!text.contains("strait-x1"), "{text}");
        assert!(text.contains(
            "strait_xfrm_interface_packets_total{direction=\"in\",interface=\"strait-x2\",tunnel=\"gw\"} 1"
        ));
        m.set_interfaces(&BTreeMap::new());
        assert!(!m.encode().contains("strait_xfrm_interface_bytes_total{"));
    }

    #[test]
    fn per_tunnel_state_and_kernel_errors() {
        let m = Metrics::new().unwrap();
        let up = GatewayStatus {
            ike_state: Some(IkeState::Established),
            established_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            )),
            child_sas: vec![strait_crds::ChildSaStatus::default()],
            ..GatewayStatus::default()
        };
        let down = GatewayStatus {
            ike_state: Some(IkeState::Connecting),
            ..GatewayStatus::default()
        };
        m.set_tunnel_status([("a", &up), ("b", &down)].into_iter());
        m.set_xfrm_errors(&[("XfrmInNoStates".to_owned(), 4)].into_iter().collect());
        m.handshakes
            .with_label_values(&["a", "failure", "AuthenticationFailed"])
            .inc();
        m.rekeys.with_label_values(&["a", "child"]).inc();
        m.child_sa_failures
            .with_label_values(&["a", "TsUnacceptable"])
            .inc();
        let text = m.encode();
        for line in [
            "strait_handshakes_total{reason=\"AuthenticationFailed\",result=\"failure\",tunnel=\"a\"} 1",
            "strait_rekeys_total{kind=\"child\",tunnel=\"a\"} 1",
            "strait_rekeys_total{kind=\"ike\",tunnel=\"b\"} 0",
            "strait_handshakes_total{reason=\"none\",result=\"success\",tunnel=\"b\"} 0",
            "strait_child_sa_failures_total{reason=\"TsUnacceptable\",tunnel=\"a\"} 1",
            "strait_tunnel_up{tunnel=\"a\"} 1",
            "strait_tunnel_up{tunnel=\"b\"} 0",
            "strait_tunnel_established_timestamp_seconds{tunnel=\"a\"} 1800000000",
            "strait_kernel_xfrm_errors_total{error=\"XfrmInNoStates\"} 4",
            "strait_agent_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!text.contains("strait_tunnel_established_timestamp_seconds{tunnel=\"b\"}"));
        m.set_cert_expiry(&[
            ("b".to_owned(), "local", 1_900_000_000),
            ("b".to_owned(), "ca", 2_000_000_000),
        ]);
        let text = m.encode();
        assert!(text.contains(
            "strait_certificate_expiry_timestamp_seconds{certificate=\"local\",tunnel=\"b\"} 1900000000"
        ));
        m.set_tunnel_status([("b", &up)].into_iter());
        m.set_cert_expiry(&[("b".to_owned(), "local", 1_900_000_000)]);
        let text = m.encode();
        assert!(!text.contains("tunnel=\"a\""), "{text}");
        assert!(!text.contains("certificate=\"ca\""), "{text}");
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
