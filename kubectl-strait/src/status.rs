//! `kubectl strait status`: every tunnel's IKE and CHILD SAs across its gateways, laid out as
//! `swanctl --list-sas` lays out charon's. A pure function of the tunnels and the time.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use strait_crds::{GatewayStatus, IPsecTunnel, IkeState};

/// The Ready condition's status and reason of a tunnel ("Unknown" when there is none).
pub fn ready(t: &IPsecTunnel) -> (&str, &str, &str) {
    t.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map_or(("Unknown", "NoStatus", ""), |c| {
            (c.status.as_str(), c.reason.as_str(), c.message.as_str())
        })
}

/// The active gateway's own status entry, once it has reported.
pub fn active_entry(t: &IPsecTunnel) -> Option<&GatewayStatus> {
    let s = t.status.as_ref()?;
    let active = s.active_gateway.as_deref()?;
    s.gateways.iter().find(|g| g.node == active)
}

/// A duration as kubectl writes ages: `45s`, `3m12s`, `2h5m`, `4d3h`.
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

fn since(t: Option<&Time>, now: Timestamp) -> Option<String> {
    t.map(|t| age(now.as_second() - t.0.as_second()))
}

fn until(t: Option<&Time>, now: Timestamp) -> Option<String> {
    t.map(|t| age(t.0.as_second() - now.as_second()))
}

/// The text for `tunnels` (sorted by name) at `now`.
pub fn render(tunnels: &[IPsecTunnel], now: Timestamp) -> String {
    let mut out = String::new();
    let mut sorted: Vec<&IPsecTunnel> = tunnels.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if sorted.is_empty() {
        out.push_str("no IPsecTunnels\n");
    }
    for t in sorted {
        tunnel(&mut out, t, now);
    }
    out
}

fn tunnel(out: &mut String, t: &IPsecTunnel, now: Timestamp) {
    let name = t.metadata.name.as_deref().unwrap_or("?");
    let (status, reason, _) = ready(t);
    let word = match status {
        "True" => "Ready",
        "False" => "not Ready",
        _ => "Ready unknown",
    };
    let active = t.status.as_ref().and_then(|s| s.active_gateway.as_deref());
    let _ = writeln!(
        out,
        "{name}: {word} ({reason}), remote {}, active gateway {}",
        t.spec.remote.address,
        active.unwrap_or("none")
    );
    let gateways = t
        .status
        .as_ref()
        .map(|s| s.gateways.as_slice())
        .unwrap_or_default();
    if gateways.is_empty() {
        let _ = writeln!(out, "  no agent has reported on this tunnel");
    }
    for g in gateways {
        gateway(out, g, active == Some(g.node.as_str()), now);
    }
}

fn gateway(out: &mut String, g: &GatewayStatus, active: bool, now: Timestamp) {
    let state = g.ike_state.map_or("Unknown", IkeState::as_str);
    let role = if active { " (active)" } else { "" };
    let mut line = format!("  {}{role}: IKE {state}", g.node);
    if let (Some(l), Some(r)) = (&g.local_endpoint, &g.remote_endpoint) {
        let _ = write!(line, ", {l} ... {r}");
    }
    if let Some(n) = g.nat_detected {
        let _ = write!(line, ", NAT {}", if n { "detected" } else { "no" });
    }
    let _ = writeln!(out, "{line}");
    if g.ike_state == Some(IkeState::Established) {
        let mut ike = String::from("    IKE");
        if let Some(s) = &g.ike_spis {
            let _ = write!(ike, " SPIs {s}");
        }
        if let Some(p) = &g.ike_proposal {
            let _ = write!(ike, ", {p}");
        }
        if let Some(a) = since(g.established_at.as_ref(), now) {
            let _ = write!(ike, ", established {a} ago");
        }
        let _ = writeln!(out, "{ike}");
    }
    for c in &g.child_sas {
        let mut child = format!("    CHILD ESP SPIs {}_i {}_o", c.spi_in, c.spi_out);
        if let Some(p) = &c.proposal {
            let _ = write!(child, ", {p}");
        }
        if let Some(m) = &c.mode {
            let _ = write!(child, ", {m}");
        }
        if c.encapsulated == Some(true) {
            child.push_str(", in UDP");
        }
        if let Some(a) = since(c.established_at.as_ref(), now) {
            let _ = write!(child, ", installed {a} ago");
        }
        if let Some(r) = until(c.rekey_at.as_ref(), now) {
            let _ = write!(child, ", rekey in {r}");
        }
        let _ = writeln!(out, "{child}");
        let _ = writeln!(out, "      local  {}", c.local_ts.join(" "));
        let _ = writeln!(out, "      remote {}", c.remote_ts.join(" "));
    }
    if let Some(e) = &g.last_error {
        let _ = writeln!(out, "    last error: {}: {}", e.reason, e.message);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use k8s_openapi::jiff::Timestamp;
    use strait_crds::IPsecTunnel;

    use super::{age, render};

    fn tunnel(yaml: &str) -> IPsecTunnel {
        serde_yaml::from_str(yaml).unwrap()
    }

    const UP: &str = r#"
apiVersion: strait.dev/v1alpha1
kind: IPsecTunnel
metadata: {name: site-b}
spec:
  local: {id: "@cluster", subnets: [10.1.0.0/16]}
  remote: {id: "@site-b", address: 192.0.2.7, subnets: [10.2.0.0/16]}
  auth: {psk: {secretRef: {name: psk, key: psk}}}
status:
  activeGateway: gw1
  conditions:
  - {type: Ready, status: "True", reason: TunnelEstablished, message: up, lastTransitionTime: "2026-12-07T00:00:00Z"}
  gateways:
  - node: gw1
    ikeState: Established
    ikeProposal: aes256gcm16-prfsha384-x25519
    ikeSpis: 0a0b0c0d01020304_i 1112131415161718_r
    localEndpoint: 198.51.100.1:500
    remoteEndpoint: 192.0.2.7:500
    natDetected: false
    establishedAt: "2026-12-07T00:00:00Z"
    childSas:
    - {spiIn: c1000001, spiOut: c2000002, proposal: aes256gcm16, localTs: [10.1.0.0/16], remoteTs: [10.2.0.0/16], mode: tunnel, encapsulated: false, establishedAt: "2026-12-07T00:00:00Z", rekeyAt: "2026-12-07T01:00:00Z"}
  - node: gw2
    ikeState: Down
    lastError: {reason: PeerUnreachable, message: "no answer from 192.0.2.7:500"}
"#;

    #[test]
    fn lists_the_sas_of_every_gateway() {
        let now: Timestamp = "2026-12-07T00:03:12Z".parse().unwrap();
        let text = render(&[tunnel(UP)], now);
        let want = "\
site-b: Ready (TunnelEstablished), remote 192.0.2.7, active gateway gw1
  gw1 (active): IKE Established, 198.51.100.1:500 ... 192.0.2.7:500, NAT no
    IKE SPIs 0a0b0c0d01020304_i 1112131415161718_r, aes256gcm16-prfsha384-x25519, established 3m12s ago
    CHILD ESP SPIs c1000001_i c2000002_o, aes256gcm16, tunnel, installed 3m12s ago, rekey in 56m48s
      local  10.1.0.0/16
      remote 10.2.0.0/16
  gw2: IKE Down
    last error: PeerUnreachable: no answer from 192.0.2.7:500
";
        assert_eq!(text, want);
    }

    #[test]
    fn a_tunnel_without_status_says_so() {
        let bare = UP.split("status:").next().unwrap();
        let text = render(&[tunnel(bare)], Timestamp::UNIX_EPOCH);
        assert!(
            text.starts_with(
                "site-b: Ready unknown (NoStatus), remote 192.0.2.7, active gateway none\n"
            ),
            "{text}"
        );
        assert!(text.contains("no agent has reported"), "{text}");
        assert_eq!(render(&[], Timestamp::UNIX_EPOCH), "no IPsecTunnels\n");
    }

    #[test]
    fn ages_as_kubectl_writes_them() {
        assert_eq!(age(-5), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(7500), "2h5m");
        assert_eq!(age(4 * 86_400 + 3 * 3600 + 7), "4d3h");
    }
}
