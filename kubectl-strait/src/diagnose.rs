//! `kubectl strait diagnose TUNNEL`: from "not Ready" to the cause and the next step. A pure
//! function of the [`Facts`]: each check is a line marked ok, warn or FAIL, and the verdict
//! names the first cause in the order things depend on each other (a spec the agent refuses
//! and a missing Secret come before the election, the election before the IKE exchange).

use std::fmt::Write as _;
use std::net::IpAddr;

use strait_agent::dataplane::routes::{route_mtu, transform_of};
use strait_crds::{IPsecTunnel, IkeState};
use strait_ike::proposal::EspProposal;
use strait_xfrm::Family;

use strait_agent::probe::Outcome;

use crate::facts::{Facts, ProbeFact, SecretState, endpoint_ip};
use crate::reasons::advice;
use crate::status::{active_entry, age, ready};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// As it should be.
    Ok,
    /// Worth a look, not the cause by itself.
    Warn,
    /// Wrong: a cause.
    Fail,
}

/// One checked fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The outcome.
    pub mark: Mark,
    /// What was found.
    pub text: String,
}

/// The diagnosis of one tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The tunnel's name.
    pub tunnel: String,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// The cause: its reason (a key of the reasons table), and what it means here.
    pub cause: Option<(String, String)>,
    /// The next step for that cause.
    pub next: Option<String>,
    /// The MTU line.
    pub mtu: Option<String>,
}

impl Report {
    /// The exit status `diagnose` ends with: 0 when Ready and nothing failed.
    pub fn healthy(&self) -> bool {
        self.cause.is_none() && self.checks.iter().all(|c| c.mark != Mark::Fail)
    }

    /// The text a person reads.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "IPsecTunnel {}", self.tunnel);
        for c in &self.checks {
            let m = match c.mark {
                Mark::Ok => "ok  ",
                Mark::Warn => "warn",
                Mark::Fail => "FAIL",
            };
            let _ = writeln!(o, "  [{m}] {}", c.text);
        }
        if let Some(m) = &self.mtu {
            let _ = writeln!(o, "  [info] {m}");
        }
        match &self.cause {
            Some((reason, what)) => {
                let _ = writeln!(o, "\nCause: {reason}: {what}");
                if let Some(n) = &self.next {
                    let _ = writeln!(o, "Next:  {n}");
                }
            }
            None => {
                let _ = writeln!(o, "\nNo problem found: the tunnel is Ready.");
            }
        }
        o
    }
}

struct Builder {
    checks: Vec<Check>,
    cause: Option<(String, String)>,
}

impl Builder {
    fn ok(&mut self, t: String) {
        self.checks.push(Check {
            mark: Mark::Ok,
            text: t,
        });
    }
    fn warn(&mut self, t: String) {
        self.checks.push(Check {
            mark: Mark::Warn,
            text: t,
        });
    }
    fn fail(&mut self, t: String) {
        self.checks.push(Check {
            mark: Mark::Fail,
            text: t,
        });
    }
    /// The first cause found wins: later ones follow from it.
    fn cause(&mut self, reason: &str, what: String) {
        if self.cause.is_none() {
            self.cause = Some((reason.to_owned(), what));
        }
    }
}

/// The kind of an identity as the agent reads it (what AuthenticationFailed most often hides).
pub fn id_kind(id: &str) -> &'static str {
    let t = id.trim();
    if t == "%any" {
        "any identity"
    } else if t.parse::<IpAddr>().is_ok() {
        "IP address"
    } else if t.starts_with('@') {
        "FQDN"
    } else if t.contains('=') {
        "X.500 DN"
    } else if t.contains('@') {
        "user@FQDN (RFC822)"
    } else {
        "FQDN"
    }
}

/// Diagnoses the tunnel of `f`.
pub fn diagnose(f: &Facts) -> Report {
    let t = &f.tunnel;
    let mut b = Builder {
        checks: Vec::new(),
        cause: None,
    };
    let (status, reason, message) = ready(t);
    if status == "True" {
        b.ok(format!("Ready: {reason}"));
    } else {
        b.fail(format!("Ready {status}: {reason}: {message}"));
    }
    spec_and_secrets(f, &mut b);
    election(f, &mut b);
    gateway(f, &mut b);
    probe(f, &mut b);
    for (r, m) in f.warnings.iter().rev().take(3) {
        b.warn(format!("Warning event {r}: {m}"));
    }
    if status != "True" {
        b.cause(
            reason,
            if message.is_empty() {
                "(no message)".to_owned()
            } else {
                message.to_owned()
            },
        );
    }
    let next = b.cause.as_ref().map(|(r, _)| next_step(t, r, &f.namespace));
    Report {
        tunnel: t.metadata.name.clone().unwrap_or_default(),
        checks: b.checks,
        cause: b.cause,
        next,
        mtu: mtu_line(t),
    }
}

fn spec_and_secrets(f: &Facts, b: &mut Builder) {
    let mut secrets_ok = true;
    for s in &f.secrets {
        let r = &s.reference;
        let at = format!("Secret {}/{} key {:?}", f.namespace, r.name, r.key);
        match &s.state {
            SecretState::Present { bytes } => b.ok(format!("{at}: present ({bytes} bytes)")),
            SecretState::NoKey { keys } => {
                secrets_ok = false;
                b.fail(format!(
                    "{at}: the Secret has no such key (it has: {})",
                    keys.join(", ")
                ));
                b.cause("SecretUnavailable", format!("{at} is missing"));
            }
            SecretState::Empty => {
                secrets_ok = false;
                b.fail(format!("{at}: empty"));
                b.cause("SecretUnavailable", format!("{at} is empty"));
            }
            SecretState::NotFound => {
                secrets_ok = false;
                b.fail(format!("{at}: no such Secret"));
                b.cause(
                    "SecretUnavailable",
                    format!("Secret {}/{} does not exist", f.namespace, r.name),
                );
            }
            SecretState::Unreadable(e) => {
                b.warn(format!(
                    "{at}: cannot be read with your credentials ({e}); not checked"
                ));
            }
        }
    }
    match &f.mapping {
        Ok(()) => {
            b.ok("spec and Secrets map to an IKE configuration, as the agent maps them".to_owned())
        }
        // a missing Secret is already the cause, with the key named
        Err((reason, _)) if reason == "SecretUnavailable" && !secrets_ok => {}
        Err((reason, message)) => {
            b.fail(format!("the agent refuses the spec: {reason}: {message}"));
            b.cause(reason, message.clone());
        }
    }
}

fn election(f: &Facts, b: &mut Builder) {
    let t = &f.tunnel;
    if let Some(e) = &f.selector_error {
        b.fail(format!("spec.gateway.nodeSelector is not valid: {e}"));
        b.cause("InvalidGatewaySelector", e.clone());
        return;
    }
    if t.spec.gateway.is_none() {
        b.fail("no spec.gateway.nodeSelector".to_owned());
        b.cause(
            "NoGatewaySelector",
            "the tunnel names no gateway nodes".to_owned(),
        );
        return;
    }
    if f.candidates.is_empty() {
        b.fail("no node matches spec.gateway.nodeSelector".to_owned());
        b.cause(
            "NoGatewayAvailable",
            format!(
                "no node has the labels spec.gateway.nodeSelector asks for ({})",
                selector_text(t)
            ),
        );
        return;
    }
    let names: Vec<&str> = f.candidates.iter().map(|n| n.name.as_str()).collect();
    b.ok(format!(
        "{} node(s) match spec.gateway.nodeSelector: {}",
        names.len(),
        names.join(", ")
    ));
    let mut alive = 0;
    for n in &f.candidates {
        let hb = n.heartbeat_age.map_or_else(
            || "no heartbeat Lease".to_owned(),
            |a| format!("heartbeat {} ago", age(a)),
        );
        let pod = n.agent_pod.as_ref().map_or_else(
            || "no agent pod".to_owned(),
            |(p, s)| format!("agent pod {p} {s}"),
        );
        let mut extra = String::new();
        if !n.ready {
            extra.push_str(", node not Ready");
        }
        if n.cordoned {
            extra.push_str(", cordoned");
        }
        let line = format!("node {}: {hb}, {pod}{extra}", n.name);
        if n.alive {
            alive += 1;
            if n.cordoned || !n.ready {
                b.warn(line)
            } else {
                b.ok(line)
            }
        } else {
            b.warn(line);
        }
    }
    if alive == 0 {
        b.fail("no matching node has a live agent".to_owned());
        let pods: Vec<String> = f
            .candidates
            .iter()
            .filter_map(|n| {
                n.agent_pod
                    .as_ref()
                    .map(|(p, s)| format!("{p} on {} is {s}", n.name))
            })
            .collect();
        let what = if pods.is_empty() {
            "no agent pod runs on the matching nodes".to_owned()
        } else {
            format!("no agent renews its heartbeat ({})", pods.join("; "))
        };
        b.cause("NoGatewayAvailable", what);
    }
}

fn selector_text(t: &IPsecTunnel) -> String {
    t.spec
        .gateway
        .as_ref()
        .and_then(|g| serde_json::to_string(&g.node_selector).ok())
        .unwrap_or_default()
}

fn gateway(f: &Facts, b: &mut Builder) {
    let t = &f.tunnel;
    let Some(status) = &t.status else { return };
    let Some(active) = &status.active_gateway else {
        if !f.candidates.is_empty() && f.candidates.iter().any(|n| n.alive) {
            b.warn("no active gateway elected yet".to_owned());
        }
        return;
    };
    let Some(g) = active_entry(t) else {
        b.warn(format!(
            "active gateway {active} has not reported on the tunnel yet"
        ));
        return;
    };
    let state = g.ike_state.map_or("Unknown", IkeState::as_str);
    let ends = match (&g.local_endpoint, &g.remote_endpoint) {
        (Some(l), Some(r)) => format!(", {l} ... {r}"),
        _ => String::new(),
    };
    let line = format!(
        "active gateway {active}: IKE {state}{ends}, {} CHILD SA(s)",
        g.child_sas.len()
    );
    if g.is_up() {
        b.ok(line)
    } else {
        b.fail(line)
    }
    if let Some(e) = &g.last_error {
        b.fail(format!("{active} last error: {}: {}", e.reason, e.message));
        if !g.is_up() {
            b.cause(&e.reason, e.message.clone());
        }
    }
    if g.nat_detected == Some(true) {
        b.ok("NAT detected between the gateway and the peer: ESP travels in UDP 4500".to_owned());
    }
}

/// The UDP probe's lines: each port as the gateway saw it. Silence on both ports is
/// PeerUnreachable; a refusal of every proposal is NoProposalChosen, whatever the tunnel's
/// own state says (the probe offers exactly the tunnel's IKE proposals).
fn probe(f: &Facts, b: &mut Builder) {
    let remote = &f.tunnel.spec.remote.address;
    let (node, results) = match &f.probe {
        ProbeFact::Skipped(why) if why == "--no-probe" => return,
        ProbeFact::Skipped(why) => {
            b.warn(format!("UDP probe of the peer not run: {why}"));
            return;
        }
        ProbeFact::Failed { command, error } => {
            b.warn(format!(
                "UDP probe of the peer could not run on the gateway ({error}); by hand: {command}"
            ));
            return;
        }
        ProbeFact::Ran { node, results } => (node, results),
    };
    let nat = results
        .iter()
        .any(|r| matches!(&r.outcome, Outcome::Accepted { nat: Some(n), .. } if n != "none"));
    let mut silent = Vec::new();
    for r in results {
        let from = r
            .from
            .as_deref()
            .map_or_else(String::new, |a| format!(" ({a})"));
        let rtt = r.rtt_ms.map_or_else(String::new, |m| format!(" in {m} ms"));
        let line = format!(
            "probe from {node}{from} to {remote} UDP {}: {}{rtt}",
            r.port,
            r.outcome.describe()
        );
        match &r.outcome {
            Outcome::Accepted { .. } | Outcome::InvalidKe { .. } | Outcome::Cookie => b.ok(line),
            Outcome::NoProposalChosen => {
                b.fail(line);
                b.cause(
                    "NoProposalChosen",
                    "the peer answered the gateway's probe with NO_PROPOSAL_CHOSEN: it accepts none of our IKE proposals".to_owned(),
                );
            }
            Outcome::Refused { .. } => b.warn(line),
            Outcome::NoAnswer { .. } | Outcome::Unreachable { .. } => {
                silent.push(format!("{}: {}", r.port, r.outcome.describe()));
                // Without a NAT, IKE and ESP need only port 500 and protocol 50.
                if r.port == 500 || nat || silent.len() == results.len() {
                    b.fail(line);
                } else {
                    b.warn(line);
                }
            }
        }
    }
    let ike_silent = results
        .iter()
        .any(|r| r.port == 500 && !r.outcome.answered());
    if silent.len() == results.len() || ike_silent || (nat && !silent.is_empty()) {
        b.cause(
            "PeerUnreachable",
            format!(
                "from gateway {node}, {remote} does not answer IKE on UDP {}",
                silent.join("; UDP ")
            ),
        );
    }
}

/// The next step for `reason`, made concrete with this tunnel's names and addresses.
fn next_step(t: &IPsecTunnel, reason: &str, ns: &str) -> String {
    let generic = advice(reason)
        .map_or_else(
            || {
                format!(
                    "no advice for reason {reason:?}: read the agent's log on the active gateway"
                )
            },
            |a| format!("{} ({})", a.next, a.cause),
        )
        .replace("NAMESPACE", ns);
    let s = &t.spec;
    let gw_addr = active_entry(t)
        .and_then(|g| g.local_endpoint.as_deref().and_then(endpoint_ip))
        .map_or_else(|| "the gateway node".to_owned(), |a| a.to_string());
    match reason {
        "AuthenticationFailed" => {
            let how = if s.auth.psk.is_some() {
                "the same pre-shared key on both sides (kubectl strait peer-config shows how to copy it)"
            } else {
                "the peer's certificate issued by the CA in spec.auth.ca, and ours by a CA the peer trusts"
            };
            format!(
                "check {how}; identities: we are {} ({}) and expect the peer to be {} ({}); the peer must expect the same, of the same kind",
                s.local.id,
                id_kind(&s.local.id),
                s.remote.id,
                id_kind(&s.remote.id)
            )
        }
        "PeerUnreachable" => format!(
            "allow UDP 500, UDP 4500 and IP protocol 50 (ESP) from {gw_addr} to {} and back, on every firewall and security group between them; then check that the peer's IKE daemon runs and listens on {}:500",
            s.remote.address, s.remote.address
        ),
        "NoProposalChosen" => format!(
            "we offer IKE [{}] and ESP [{}]: the peer must accept one of each (kubectl strait peer-config {} prints them for it)",
            proposals(s.ike.as_ref().map(|p| p.proposals.as_slice())),
            proposals(s.esp.as_ref().map(|p| p.proposals.as_slice())),
            t.metadata.name.as_deref().unwrap_or("TUNNEL"),
        ),
        "TsUnacceptable" => format!(
            "we propose local {} and remote {}: the peer must have them the other way round",
            s.local.subnets.join(" "),
            s.remote.subnets.join(" ")
        ),
        _ => generic,
    }
}

fn proposals(p: Option<&[String]>) -> String {
    match p {
        Some(list) if !list.is_empty() => list.join(", "),
        _ => "the agent's defaults".to_owned(),
    }
}

/// The largest inner packet that fits a 1500-byte path with the tunnel's ESP proposal (the
/// negotiated one, else the first offered), computed as the agent computes route MTUs.
fn mtu_line(t: &IPsecTunnel) -> Option<String> {
    let gw = active_entry(t);
    let text = gw
        .and_then(|g| g.child_sas.first())
        .and_then(|c| c.proposal.clone())
        .or_else(|| {
            t.spec
                .esp
                .as_ref()
                .and_then(|e| e.proposals.first().cloned())
        })
        .unwrap_or_else(|| "aes256gcm16".to_owned());
    let p: EspProposal = text.parse().ok()?;
    let transform = transform_of(*p.encr.first()?, p.integ.first().copied());
    let outer = match t.spec.remote.address.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => Family::V6,
        _ => Family::V4,
    };
    let inner_v6 = t.spec.remote.subnets.iter().all(|s| s.contains(':'));
    let inner = if inner_v6 { Family::V6 } else { Family::V4 };
    let nat = gw.and_then(|g| g.nat_detected).unwrap_or(false)
        || t.spec
            .nat_traversal
            .as_ref()
            .is_some_and(|n| n.force_encapsulation);
    let m = route_mtu(t.spec.mtu, transform, outer, inner, nat, 1500)?;
    let why = if t.spec.mtu.is_some() {
        "spec.mtu".to_owned()
    } else {
        format!(
            "{text}{} on a 1500-byte path",
            if nat { " in UDP" } else { "" }
        )
    };
    Some(format!(
        "MTU: inner packets up to {m} bytes fit ({why}); larger ones are fragmented or need PMTU discovery"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use k8s_openapi::jiff::Timestamp;
    use strait_crds::{IPsecTunnel, SecretKeyRef};

    use strait_agent::probe::{Outcome, PortResult};

    use super::{Mark, diagnose, id_kind};
    use crate::facts::{Facts, NodeFact, ProbeFact, SecretCheck, SecretState};

    fn tunnel(status: &str) -> IPsecTunnel {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: strait.dev/v1alpha1
kind: IPsecTunnel
metadata: {{name: site-b}}
spec:
  gateway: {{nodeSelector: {{matchLabels: {{strait.dev/gateway: "true"}}}}}}
  local: {{id: "@cluster", subnets: [10.1.0.0/16]}}
  remote: {{id: 192.0.2.7, address: 192.0.2.7, subnets: [10.2.0.0/16]}}
  auth: {{psk: {{secretRef: {{name: psk, key: psk}}}}}}
{status}"#
        ))
        .unwrap()
    }

    fn not_ready(reason: &str, error: &str) -> String {
        format!(
            r#"status:
  activeGateway: gw1
  conditions:
  - {{type: Ready, status: "False", reason: {reason}, message: "m", lastTransitionTime: "2026-12-07T00:00:00Z"}}
  gateways:
  - node: gw1
    ikeState: Connecting
    localEndpoint: 198.51.100.1:500
    remoteEndpoint: 192.0.2.7:500
{error}"#
        )
    }

    fn node(alive: bool) -> NodeFact {
        NodeFact {
            name: "gw1".into(),
            ready: true,
            cordoned: false,
            addresses: vec!["198.51.100.1".into()],
            heartbeat_age: Some(2),
            alive,
            agent_pod: Some(("strait-agent-x".into(), "Running".into())),
        }
    }

    fn facts(t: IPsecTunnel) -> Facts {
        Facts {
            namespace: "strait-system".into(),
            tunnel: t,
            selector_error: None,
            candidates: vec![node(true)],
            secrets: vec![SecretCheck {
                reference: SecretKeyRef {
                    name: "psk".into(),
                    key: "psk".into(),
                },
                state: SecretState::Present { bytes: 32 },
            }],
            mapping: Ok(()),
            warnings: vec![],
            probe: ProbeFact::Skipped("--no-probe".into()),
            now: Timestamp::UNIX_EPOCH,
        }
    }

    fn port(port: u16, outcome: Outcome) -> PortResult {
        PortResult {
            port,
            from: Some("198.51.100.1:40000".into()),
            outcome,
            rtt_ms: None,
        }
    }

    fn probed(mut f: Facts, results: Vec<PortResult>) -> Facts {
        f.probe = ProbeFact::Ran {
            node: "gw1".into(),
            results,
        };
        f
    }

    fn accepted(nat: &str) -> Outcome {
        Outcome::Accepted {
            proposal: "aes256gcm16-prfsha384-x25519".into(),
            nat: Some(nat.into()),
        }
    }

    const CONNECTING: &str = r#"status:
  activeGateway: gw1
  conditions:
  - {type: Ready, status: "False", reason: IkeSaDown, message: "connecting", lastTransitionTime: "2026-12-07T00:00:00Z"}
  gateways:
  - {node: gw1, ikeState: Connecting}
"#;

    fn cause(f: &Facts) -> String {
        diagnose(f).cause.unwrap().0
    }

    #[test]
    fn a_ready_tunnel_is_healthy() {
        let t = tunnel(
            r#"status:
  activeGateway: gw1
  conditions:
  - {type: Ready, status: "True", reason: TunnelEstablished, message: up, lastTransitionTime: "2026-12-07T00:00:00Z"}
  gateways:
  - {node: gw1, ikeState: Established, childSas: [{spiIn: a, spiOut: b, proposal: aes256gcm16}]}
"#,
        );
        let r = diagnose(&facts(t));
        assert!(r.healthy(), "{}", r.render());
        assert!(r.render().contains("No problem found"));
        assert!(
            r.mtu.as_deref().unwrap().contains("up to 1446 bytes"),
            "{:?}",
            r.mtu
        );
        let nat = tunnel(
            r#"status:
  activeGateway: gw1
  gateways:
  - {node: gw1, ikeState: Established, natDetected: true, childSas: [{spiIn: a, spiOut: b, proposal: aes256gcm16}]}
"#,
        );
        let m = diagnose(&facts(nat)).mtu.unwrap();
        assert!(
            m.contains("up to 1438 bytes") && m.contains("in UDP"),
            "{m}"
        );
    }

    #[test]
    fn wrong_psk_names_the_key_and_the_identity_kinds() {
        let f = facts(tunnel(&not_ready(
            "AuthenticationFailed",
            "    lastError: {reason: AuthenticationFailed, message: \"peer sent AUTHENTICATION_FAILED\"}\n",
        )));
        let r = diagnose(&f);
        assert_eq!(r.cause.as_ref().unwrap().0, "AuthenticationFailed");
        let next = r.next.unwrap();
        assert!(next.contains("same pre-shared key"), "{next}");
        assert!(
            next.contains("@cluster (FQDN)") && next.contains("192.0.2.7 (IP address)"),
            "{next}"
        );
        assert!(!r.checks.is_empty() && r.checks.iter().any(|c| c.mark == Mark::Fail));
    }

    #[test]
    fn mismatched_proposals_list_ours() {
        let f = facts(tunnel(&not_ready(
            "NoProposalChosen",
            "    lastError: {reason: NoProposalChosen, message: \"peer sent NO_PROPOSAL_CHOSEN\"}\n",
        )));
        assert_eq!(cause(&f), "NoProposalChosen");
        let next = diagnose(&f).next.unwrap();
        assert!(
            next.contains("the agent's defaults") && next.contains("peer-config site-b"),
            "{next}"
        );
    }

    #[test]
    fn peer_down_gives_the_firewall_rules_between_the_two_addresses() {
        let f = facts(tunnel(&not_ready(
            "PeerUnreachable",
            "    lastError: {reason: PeerUnreachable, message: \"no answer\"}\n",
        )));
        assert_eq!(cause(&f), "PeerUnreachable");
        let next = diagnose(&f).next.unwrap();
        assert!(
            next.contains(
                "UDP 500, UDP 4500 and IP protocol 50 (ESP) from 198.51.100.1 to 192.0.2.7"
            ),
            "{next}"
        );
    }

    #[test]
    fn a_probe_without_answers_is_peer_unreachable_from_that_gateway() {
        let silent = Outcome::NoAnswer { attempts: 3 };
        let f = probed(
            facts(tunnel(CONNECTING)),
            vec![port(500, silent.clone()), port(4500, silent)],
        );
        let r = diagnose(&f);
        let (reason, what) = r.cause.clone().unwrap();
        assert_eq!(reason, "PeerUnreachable");
        assert!(
            what.contains(
                "from gateway gw1, 192.0.2.7 does not answer IKE on UDP 500: no answer to 3"
            ) && what.contains("UDP 4500"),
            "{what}"
        );
        assert!(
            r.render()
                .contains("[FAIL] probe from gw1 (198.51.100.1:40000) to 192.0.2.7 UDP 500")
        );
        assert!(r.next.unwrap().contains("allow UDP 500, UDP 4500"));
        // port 500 closed, 4500 answering: still unreachable for IKE, which starts on 500
        let f = probed(
            facts(tunnel(CONNECTING)),
            vec![
                port(
                    500,
                    Outcome::Unreachable {
                        error: "Connection refused".into(),
                    },
                ),
                port(4500, accepted("none")),
            ],
        );
        assert_eq!(cause(&f), "PeerUnreachable");
    }

    #[test]
    fn a_probe_refused_for_its_proposals_is_no_proposal_chosen() {
        let f = probed(
            facts(tunnel(CONNECTING)),
            vec![
                port(500, Outcome::NoProposalChosen),
                port(4500, Outcome::NoProposalChosen),
            ],
        );
        let r = diagnose(&f);
        assert_eq!(r.cause.as_ref().unwrap().0, "NoProposalChosen");
        assert!(
            r.next
                .unwrap()
                .contains("we offer IKE [the agent's defaults]")
        );
    }

    #[test]
    fn an_answering_peer_is_ok_and_4500_matters_only_behind_a_nat() {
        let ready = r#"status:
  activeGateway: gw1
  conditions:
  - {type: Ready, status: "True", reason: TunnelEstablished, message: up, lastTransitionTime: "2026-12-07T00:00:00Z"}
  gateways:
  - {node: gw1, ikeState: Established, childSas: [{spiIn: a, spiOut: b, proposal: aes256gcm16}]}
"#;
        let f = probed(
            facts(tunnel(ready)),
            vec![port(500, accepted("none")), port(4500, accepted("none"))],
        );
        let r = diagnose(&f);
        assert!(r.healthy(), "{}", r.render());
        assert!(r.render().contains("[ok  ] probe from gw1 (198.51.100.1:40000) to 192.0.2.7 UDP 4500: answered, accepts aes256gcm16-prfsha384-x25519"));
        // no NAT: IKE and ESP need only port 500 and ESP itself; 4500 silent is a warning
        let silent = Outcome::NoAnswer { attempts: 3 };
        let f = probed(
            facts(tunnel(ready)),
            vec![port(500, accepted("none")), port(4500, silent.clone())],
        );
        let r = diagnose(&f);
        assert!(r.healthy(), "{}", r.render());
        assert!(
            r.checks
                .iter()
                .any(|c| c.mark == Mark::Warn && c.text.contains("UDP 4500"))
        );
        // behind a NAT, IKE and ESP move to 4500: silence there is the cause
        let f = probed(
            facts(tunnel(ready)),
            vec![port(500, accepted("local")), port(4500, silent)],
        );
        let r = diagnose(&f);
        assert!(!r.healthy());
        assert_eq!(r.cause.unwrap().0, "PeerUnreachable");
    }

    #[test]
    fn a_probe_that_cannot_run_says_how_to_run_it_by_hand() {
        let mut f = facts(tunnel(CONNECTING));
        f.probe = ProbeFact::Failed {
            command: "kubectl exec -n strait-system strait-agent-x -c agent -- strait-agent probe 192.0.2.7".into(),
            error: "pods \"strait-agent-x\" is forbidden".into(),
        };
        let text = diagnose(&f).render();
        assert!(
            text.contains("[warn] UDP probe of the peer could not run on the gateway (pods")
                && text.contains("by hand: kubectl exec -n strait-system strait-agent-x"),
            "{text}"
        );
        f.probe = ProbeFact::Skipped("no gateway node with a running agent pod".into());
        assert!(
            diagnose(&f)
                .render()
                .contains("[warn] UDP probe of the peer not run: no gateway")
        );
    }

    #[test]
    fn a_missing_secret_comes_before_everything_else() {
        let mut f = facts(tunnel(&not_ready(
            "SecretUnavailable",
            "    lastError: {reason: SecretUnavailable, message: \"Secret strait-system/psk not found\"}\n",
        )));
        f.secrets[0].state = SecretState::NotFound;
        f.mapping = Err((
            "SecretUnavailable".into(),
            "Secret strait-system/psk not found".into(),
        ));
        let r = diagnose(&f);
        assert_eq!(r.cause.as_ref().unwrap().0, "SecretUnavailable");
        assert!(
            r.cause
                .as_ref()
                .unwrap()
                .1
                .contains("Secret strait-system/psk does not exist")
        );
        assert!(
            r.next
                .unwrap()
                .contains("kubectl create secret generic NAME -n strait-system")
        );
        f.secrets[0].state = SecretState::NoKey {
            keys: vec!["other".into()],
        };
        assert!(
            diagnose(&f)
                .render()
                .contains("has no such key (it has: other)")
        );
    }

    #[test]
    fn no_eligible_node_and_no_live_agent() {
        let mut f = facts(tunnel(
            r#"status:
  conditions:
  - {type: Ready, status: "False", reason: NoGatewayAvailable, message: "no node", lastTransitionTime: "2026-12-07T00:00:00Z"}
"#,
        ));
        f.candidates.clear();
        let r = diagnose(&f);
        assert_eq!(r.cause.as_ref().unwrap().0, "NoGatewayAvailable");
        assert!(
            r.cause.as_ref().unwrap().1.contains("strait.dev/gateway"),
            "{:?}",
            r.cause
        );
        assert!(r.next.unwrap().contains("kubectl label node"));
        f.candidates = vec![node(false)];
        f.candidates[0].agent_pod = Some(("strait-agent-x".into(), "CrashLoopBackOff".into()));
        let r = diagnose(&f);
        assert!(
            r.cause
                .as_ref()
                .unwrap()
                .1
                .contains("strait-agent-x on gw1 is CrashLoopBackOff"),
            "{:?}",
            r.cause
        );
    }

    #[test]
    fn a_spec_the_agent_refuses_is_the_cause() {
        let mut f = facts(tunnel(&not_ready("InvalidProposal", "")));
        f.mapping = Err((
            "InvalidProposal".into(),
            "spec.esp.proposals[0] \"3des\": unknown".into(),
        ));
        let r = diagnose(&f);
        assert_eq!(
            r.cause.as_ref().unwrap(),
            &(
                "InvalidProposal".to_owned(),
                "spec.esp.proposals[0] \"3des\": unknown".to_owned()
            )
        );
    }

    #[test]
    fn identity_kinds() {
        assert_eq!(id_kind("192.0.2.1"), "IP address");
        assert_eq!(id_kind("@gw.example"), "FQDN");
        assert_eq!(id_kind("gw.example"), "FQDN");
        assert_eq!(id_kind("ops@example.com"), "user@FQDN (RFC822)");
        assert_eq!(id_kind("C=CH, CN=gw"), "X.500 DN");
        assert_eq!(id_kind("%any"), "any identity");
    }
}
