//! `strait-agent probe`: is the peer reachable for IKE from this node, and does it accept the
//! tunnel's IKE proposals? One IKE_SA_INIT ([`strait_ike::probe`]) to UDP 500 and one to 4500
//! (with the non-ESP marker), each from an ephemeral port of its own, retransmitted once a
//! second until an answer or the timeout. `kubectl strait diagnose` runs it in the gateway's
//! agent pod (hostNetwork), so the probe leaves from the address the tunnel uses.

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strait_ike::codec::{Udp4500, classify_udp4500, with_non_esp_marker};
use strait_ike::probe::{Answer, Probe};
use strait_ike::proposal::IkeProposal;

use crate::notation::ike_choice_name;
use crate::rng::OsRng;

/// What one port's probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortResult {
    /// The peer's UDP port.
    pub port: u16,
    /// The probe's source address (after the kernel chose the route), when it got that far.
    pub from: Option<String>,
    /// The answer.
    pub outcome: Outcome,
    /// Milliseconds from the first request to the answer.
    pub rtt_ms: Option<u64>,
}

/// How a peer answered the probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Outcome {
    /// It accepted a proposal (this one, strongSwan notation). `nat`: what NAT detection saw
    /// (`none`, `local` = this node is behind a NAT, `remote`, `both`), absent if the peer
    /// sent no NAT-D.
    Accepted {
        /// The chosen proposal.
        proposal: String,
        /// NAT between the two.
        nat: Option<String>,
    },
    /// It asked for another offered key exchange group (IANA id) first.
    InvalidKe {
        /// The group it wants.
        group: u16,
    },
    /// It asked for a cookie.
    Cookie,
    /// It refused every proposal offered.
    NoProposalChosen,
    /// It answered with another error notification.
    Refused {
        /// The notification's name.
        notify: String,
    },
    /// No answer within the timeout.
    NoAnswer {
        /// Requests sent.
        attempts: u32,
    },
    /// The kernel refused to send, or an ICMP error came back (port unreachable, no route).
    Unreachable {
        /// The error.
        error: String,
    },
}

impl Outcome {
    /// The peer answered IKE on this port (whatever it said).
    pub fn answered(&self) -> bool {
        !matches!(self, Self::NoAnswer { .. } | Self::Unreachable { .. })
    }

    /// One line for a person.
    pub fn describe(&self) -> String {
        match self {
            Self::Accepted { proposal, nat } => {
                let nat = match nat.as_deref() {
                    None | Some("none") => String::new(),
                    Some("local") => ", this node is behind a NAT".into(),
                    Some("remote") => ", the peer is behind a NAT".into(),
                    Some(n) => format!(", NAT: {n}"),
                };
                format!("answered, accepts {proposal}{nat}")
            }
            Self::InvalidKe { group } => {
                format!(
                    "answered, wants key exchange group {group} (offered; the agent retries with it)"
                )
            }
            Self::Cookie => {
                "answered with a COOKIE request (it is under load or always asks)".into()
            }
            Self::NoProposalChosen => {
                "answered NO_PROPOSAL_CHOSEN: it accepts none of the tunnel's IKE proposals".into()
            }
            Self::Refused { notify } => format!("answered {notify}"),
            Self::NoAnswer { attempts } => format!("no answer to {attempts} IKE_SA_INIT requests"),
            Self::Unreachable { error } => format!("unreachable: {error}"),
        }
    }
}

/// What to probe.
#[derive(Debug, Clone)]
pub struct Target {
    /// The peer's address.
    pub remote: IpAddr,
    /// Send from this address (the tunnel's `local.address`); default: the route's source.
    pub local: Option<IpAddr>,
    /// The peer's IKE port (500).
    pub ike_port: u16,
    /// The peer's NAT-T port (4500), probed with the non-ESP marker.
    pub natt_port: u16,
    /// The tunnel's IKE proposals.
    pub proposals: Vec<IkeProposal>,
    /// How long to wait on each port.
    pub timeout: Duration,
}

/// The peer's address: `remote` itself, or the first address its DNS name resolves to.
///
/// # Errors
/// A name that does not resolve.
pub fn resolve(remote: &str) -> anyhow::Result<IpAddr> {
    use std::net::ToSocketAddrs as _;
    if let Ok(ip) = remote.parse() {
        return Ok(ip);
    }
    (remote, 0)
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("resolving {remote:?}: {e}"))?
        .map(|a| a.ip())
        .next()
        .ok_or_else(|| anyhow::anyhow!("{remote:?} resolves to no address"))
}

/// Probes both ports, one after the other.
pub fn run(t: &Target) -> Vec<PortResult> {
    [(t.ike_port, false), (t.natt_port, true)]
        .into_iter()
        .map(|(port, marker)| one(t, port, marker))
        .collect()
}

fn one(t: &Target, port: u16, marker: bool) -> PortResult {
    let remote = SocketAddr::new(t.remote, port);
    let mut r = PortResult {
        port,
        from: None,
        outcome: Outcome::NoAnswer { attempts: 0 },
        rtt_ms: None,
    };
    let unreachable = |e: std::io::Error| Outcome::Unreachable {
        error: if e.kind() == ErrorKind::ConnectionRefused {
            format!("ICMP port unreachable: nothing listens there, or a firewall rejects ({e})")
        } else {
            e.to_string()
        },
    };
    let any: IpAddr = match t.remote {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = match UdpSocket::bind((t.local.unwrap_or(any), 0)) {
        Ok(s) => s,
        Err(e) => {
            r.outcome = unreachable(e);
            return r;
        }
    };
    // The tunnel's own policies may cover the peer's outer address (host-to-host selectors):
    // like the agent's IKE sockets, the probe bypasses them. Without CAP_NET_ADMIN it cannot,
    // and the probe goes out as any other datagram would.
    let _ = strait_xfrm::socket::bypass_policies(&sock, strait_xfrm::Family::of(&t.remote));
    // Connected: the kernel reports ICMP errors on this socket and drops other sources.
    if let Err(e) = sock.connect(remote) {
        r.outcome = unreachable(e);
        return r;
    }
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(e) => {
            r.outcome = unreachable(e);
            return r;
        }
    };
    r.from = Some(local.to_string());
    let (probe, request) = match Probe::request(&t.proposals, local, remote, &mut OsRng::new()) {
        Ok(p) => p,
        Err(e) => {
            r.outcome = Outcome::Unreachable {
                error: e.to_string(),
            };
            return r;
        }
    };
    let request = if marker {
        with_non_esp_marker(&request)
    } else {
        request
    };
    let start = Instant::now();
    let deadline = start + t.timeout;
    let mut attempts = 0;
    let mut buf = vec![0u8; 65_535];
    while Instant::now() < deadline {
        if let Err(e) = sock.send(&request) {
            r.outcome = unreachable(e);
            return r;
        }
        attempts += 1;
        let next = (Instant::now() + Duration::from_secs(1)).min(deadline);
        while let Some(wait) = next
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            let _ = sock.set_read_timeout(Some(wait));
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    r.outcome = unreachable(e);
                    return r;
                }
            };
            let datagram = buf.get(..n).unwrap_or_default();
            let ike = if marker {
                match classify_udp4500(datagram) {
                    Udp4500::Ike(ike) => ike,
                    _ => continue,
                }
            } else {
                datagram
            };
            if let Ok(Some(a)) = probe.answer(ike) {
                r.outcome = outcome(a);
                r.rtt_ms = Some(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
                return r;
            }
        }
    }
    r.outcome = Outcome::NoAnswer { attempts };
    r
}

fn outcome(a: Answer) -> Outcome {
    match a {
        Answer::Accepted { choice, nat } => Outcome::Accepted {
            proposal: ike_choice_name(&choice),
            nat: nat.map(|n| {
                match n {
                    (false, false) => "none",
                    (true, false) => "local",
                    (false, true) => "remote",
                    (true, true) => "both",
                }
                .to_owned()
            }),
        },
        Answer::InvalidKe(group) => Outcome::InvalidKe { group },
        Answer::Cookie => Outcome::Cookie,
        Answer::NoProposalChosen => Outcome::NoProposalChosen,
        Answer::Refused(n) => Outcome::Refused {
            notify: format!("{n:?}"),
        },
    }
}

/// The text `strait-agent probe` prints.
pub fn render(remote: IpAddr, results: &[PortResult]) -> String {
    let mut o = String::new();
    for r in results {
        let rtt = r.rtt_ms.map(|m| format!(" in {m} ms")).unwrap_or_default();
        let from = r.from.as_deref().unwrap_or("-");
        let _ = writeln!(
            o,
            "UDP {} of {remote} (from {from}): {}{rtt}",
            r.port,
            r.outcome.describe()
        );
    }
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn outcomes_round_trip_as_json_and_tell_answered_from_silent() {
        let all = [
            Outcome::Accepted {
                proposal: "aes256gcm16-prfsha384-x25519".into(),
                nat: Some("local".into()),
            },
            Outcome::InvalidKe { group: 19 },
            Outcome::Cookie,
            Outcome::NoProposalChosen,
            Outcome::Refused {
                notify: "AUTHENTICATION_FAILED".into(),
            },
            Outcome::NoAnswer { attempts: 3 },
            Outcome::Unreachable {
                error: "Connection refused (os error 111)".into(),
            },
        ];
        for o in &all {
            let r = PortResult {
                port: 500,
                from: Some("192.0.2.1:40000".into()),
                outcome: o.clone(),
                rtt_ms: Some(3),
            };
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<PortResult>(&j).unwrap(), r, "{j}");
        }
        let answered: Vec<bool> = all.iter().map(Outcome::answered).collect();
        assert_eq!(answered, [true, true, true, true, true, false, false]);
        assert!(all[0].describe().contains("this node is behind a NAT"));
        assert_eq!(resolve("192.0.2.7").unwrap().to_string(), "192.0.2.7");
        assert!(resolve("localhost").unwrap().is_loopback());
        assert!(resolve("no-such-host.invalid").is_err());
    }

    #[test]
    fn a_closed_port_on_loopback_is_unreachable_and_silence_is_no_answer() {
        // Nothing listens on these ports of 127.0.0.1: Linux answers ICMP port unreachable,
        // which the connected socket reports.
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let t = Target {
            remote: "127.0.0.1".parse().unwrap(),
            local: None,
            ike_port: port,
            natt_port: port,
            proposals: strait_ike::proposal::default_ike(),
            timeout: Duration::from_millis(1500),
        };
        let r = run(&t);
        assert_eq!(r.len(), 2);
        assert!(
            matches!(&r[0].outcome, Outcome::Unreachable { error } if error.contains("port unreachable")),
            "{r:?}"
        );
        // A socket that reads and never answers: the probe retransmits, then gives up.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = Target {
            ike_port: silent.local_addr().unwrap().port(),
            natt_port: silent.local_addr().unwrap().port(),
            ..t
        };
        let r = run(&t);
        assert_eq!(r[0].outcome, Outcome::NoAnswer { attempts: 2 }, "{r:?}");
        let mut buf = [0u8; 2048];
        let (n, _) = silent.recv_from(&mut buf).unwrap();
        // The second port's request carries the non-ESP marker.
        let (m, _) = {
            let mut last = (0, None);
            silent.set_nonblocking(true).unwrap();
            while let Ok((k, a)) = silent.recv_from(&mut buf) {
                last = (k, Some(a));
            }
            last
        };
        assert!(n > 28 && m == n + 4, "{n} {m}");
    }
}
