//! The agent's status as text, in the manner of `swanctl --list-sas`.

use super::AgentStatus;

fn ago(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    t.as_ref().map_or_else(String::new, |t| {
        let secs = k8s_openapi::jiff::Timestamp::now()
            .duration_since(t.0)
            .as_secs()
            .max(0);
        format!("{secs}s ago ({})", t.0)
    })
}

/// A text rendering close to `swanctl --list-sas`.
pub fn render(s: &AgentStatus) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "node {}, dataplane {}", s.node, s.dataplane);
    for t in &s.tunnels {
        let g = &t.gateway;
        let _ = writeln!(
            o,
            "{}: {}, IKEv2, {}{}",
            t.name,
            g.ike_state
                .map_or("Down", strait_crds::IkeState::as_str)
                .to_uppercase(),
            g.ike_spis.as_deref().unwrap_or("no IKE SA"),
            match t.initiator {
                Some(true) => " (initiator)",
                Some(false) => " (responder)",
                None => "",
            }
        );
        let _ = writeln!(
            o,
            "  local  '{}' @ {}",
            t.local_id,
            g.local_endpoint.as_deref().unwrap_or("-")
        );
        let _ = writeln!(
            o,
            "  remote '{}' @ {}",
            t.remote_id,
            g.remote_endpoint.as_deref().unwrap_or("-")
        );
        if let Some(p) = &g.ike_proposal {
            let _ = writeln!(o, "  {p}");
        }
        if let Some(nat) = g.nat_detected {
            let _ = writeln!(o, "  NAT detected: {}", if nat { "yes" } else { "no" });
        }
        if g.established_at.is_some() {
            let _ = writeln!(o, "  established {}", ago(&g.established_at));
        }
        for c in &g.child_sas {
            let _ = writeln!(
                o,
                "  {}: INSTALLED, {}{}, ESP:{}",
                t.name,
                c.mode.as_deref().unwrap_or("TUNNEL").to_uppercase(),
                if c.encapsulated == Some(true) {
                    "-in-UDP"
                } else {
                    ""
                },
                c.proposal.as_deref().unwrap_or("-")
            );
            let _ = writeln!(
                o,
                "    installed {}, in {}, out {}",
                ago(&c.established_at),
                c.spi_in,
                c.spi_out
            );
            let _ = writeln!(o, "    local  {}", c.local_ts.join(" "));
            let _ = writeln!(o, "    remote {}", c.remote_ts.join(" "));
        }
        if let Some(e) = &g.last_error {
            let _ = writeln!(o, "  last error: {}: {}", e.reason, e.message);
        }
        for n in &t.notes {
            let _ = writeln!(o, "  note: {n}");
        }
    }
    o
}
