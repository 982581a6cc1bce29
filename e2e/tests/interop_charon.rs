//! Interop: the real `strait-agent` binary (standalone, `--dataplane none`) against strongSwan's
//! charon (kernel-libipsec) in network namespaces. Every case judges from both sides: charon's
//! `swanctl --list-sas` (the independent judge) and our `strait-agent status --json`.
//!
//! Needs root, `e2e/setup/packages.sh` and a built agent (`cargo build -p strait-agent`). Run:
//! `cargo test -p strait-e2e --test interop_charon -- --test-threads=1`

// test helpers outside #[test] fns: failing loudly is their job
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use strait_e2e::agent::{Agent, SecretFile};
use strait_e2e::capture::{self, AES256GCM16, Capture, Exchange};
use strait_e2e::matrix::{self, Cell, Dir, Peer, Suite};
use strait_e2e::netns::{self, Site, SitePair};
use strait_e2e::scenario::{TUNNEL, assert_agree, charon_for, dump, up};
use strait_e2e::strongswan::{self, Charon, CharonConfig, ListSas};
use strait_e2e::tunnel::{End, TunnelYaml};

const PSK: &str = "strait-interop-psk-7c1f0a9e3b5d";

/// What one test varies.
#[derive(Clone)]
struct Case {
    /// The agent's IKE proposals (`None`: the agent's defaults).
    agent_ike: Vec<&'static str>,
    agent_esp: Vec<&'static str>,
    charon_ike: Vec<&'static str>,
    charon_esp: Vec<&'static str>,
    agent_psk: &'static str,
    charon_psk: &'static str,
    /// DPD `(interval, timeout)` for the agent.
    dpd: Option<(&'static str, &'static str)>,
    /// The peer's root file system (`None`: the host's strongSwan 5.9.8).
    root: Option<PathBuf>,
}

/// The same case against strongSwan 6.0.1 (Debian trixie, `e2e/setup/peers.sh`).
fn six(case: Case) -> Case {
    Case {
        root: Some(strongswan::strongswan6_root()),
        ..case
    }
}

impl Default for Case {
    fn default() -> Self {
        Self {
            agent_ike: vec!["aes256gcm16-prfsha256-x25519"],
            agent_esp: vec!["aes256gcm16-x25519"],
            charon_ike: vec!["aes256gcm16-prfsha256-x25519"],
            charon_esp: vec!["aes256gcm16-x25519"],
            agent_psk: PSK,
            charon_psk: PSK,
            dpd: None,
            root: None,
        }
    }
}

/// The interop matrix's cell for `case` (`None` for a suite outside the matrix's three).
fn cell(case: &Case, dir: Dir, nat: bool) -> Option<Cell> {
    let peer = if case.root.is_some() {
        Peer::Strongswan6
    } else {
        Peer::Strongswan5
    };
    let ike = case.agent_ike.first().copied().unwrap_or_default();
    let suite = if ike.contains("gcm16") && ike.ends_with("x25519") {
        Suite::GcmX25519
    } else if ike.ends_with("ecp384") {
        Suite::Ecp384
    } else if ike.contains("modp") && !ike.contains("gcm") {
        Suite::CbcModp
    } else {
        return None;
    };
    let c = Cell::new(peer, dir).suite(suite);
    Some(if nat { c.nat() } else { c })
}

/// A [`matrix::Judged`] for `case`, if it is a cell of the matrix.
fn judged(case: &Case, dir: Dir, nat: bool) -> Option<matrix::Judged> {
    cell(case, dir, nat).map(|c| matrix::judge(module_path!(), &[c]))
}

/// The agent's IPsecTunnel: `me` is the agent's site, `peer_addr` where the peer is.
fn agent_tunnel(
    case: &Case,
    me: &Site,
    peer: &Site,
    peer_addr: &str,
    initiation: &str,
) -> TunnelYaml {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    TunnelYaml {
        ike: strings(&case.agent_ike),
        esp: strings(&case.agent_esp),
        dpd: case.dpd.map(|(i, t)| (i.to_owned(), t.to_owned())),
        ..TunnelYaml::new(
            TUNNEL,
            End::new(me.id, me.addr, me.subnet),
            End::new(peer.id, peer_addr, peer.subnet),
        )
        .initiation(initiation)
    }
}

fn agent_config(case: &Case, me: &Site, peer: &Site, peer_addr: &str, initiation: &str) -> String {
    agent_tunnel(case, me, peer, peer_addr, initiation).render()
}

fn start_agent(case: &Case, me: &Site, peer: &Site, peer_addr: &str, initiation: &str) -> Agent {
    start_yaml(
        &me.ns,
        &agent_config(case, me, peer, peer_addr, initiation),
        case.agent_psk,
        &[],
    )
}

/// The agent in `ns` (`--dataplane none`) running `yaml`, with `psk` as its `gw-psk` Secret.
fn start_yaml(ns: &str, yaml: &str, psk: &str, args: &[&str]) -> Agent {
    Agent::start(
        ns,
        yaml,
        &[SecretFile {
            name: "gw-psk".into(),
            key: "psk".into(),
            value: psk.into(),
        }],
        "none",
        args,
    )
    .expect("start strait-agent")
}

/// charon's side: `remote_addr` where it sends IKE (`None`: responder only).
fn charon_config(case: &Case, me: &Site, peer: &Site, remote_addr: Option<String>) -> CharonConfig {
    let mut cfg = charon_for(me, peer, case.charon_psk, remote_addr);
    let conn = &mut cfg.connections[0];
    conn.proposals = case.charon_ike.iter().map(|s| (*s).to_owned()).collect();
    conn.children[0].esp_proposals = case.charon_esp.iter().map(|s| (*s).to_owned()).collect();
    cfg.root.clone_from(&case.root);
    cfg
}

/// charon's IKE proposal (`AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519`) in strongSwan's
/// proposal-string notation, for comparison with ours.
fn charon_proposal_tokens(p: &str) -> Vec<String> {
    p.split('/')
        .map(|t| {
            match t.trim() {
                "AES_GCM_16-128" | "AES_GCM_16_128" => "aes128gcm16",
                "AES_GCM_16-256" | "AES_GCM_16_256" => "aes256gcm16",
                "AES_CBC-128" | "AES_CBC_128" => "aes128",
                "AES_CBC-256" | "AES_CBC_256" => "aes256",
                "HMAC_SHA2_256_128" => "sha256",
                "HMAC_SHA2_384_192" => "sha384",
                "HMAC_SHA2_512_256" => "sha512",
                "PRF_HMAC_SHA2_256" => "prfsha256",
                "PRF_HMAC_SHA2_384" => "prfsha384",
                "PRF_HMAC_SHA2_512" => "prfsha512",
                "CURVE_25519" => "x25519",
                "ECP_256" => "ecp256",
                "ECP_384" => "ecp384",
                "ECP_521" => "ecp521",
                "MODP_2048" => "modp2048",
                "MODP_3072" => "modp3072",
                "MODP_4096" => "modp4096",
                other => other,
            }
            .to_owned()
        })
        .collect()
}

/// Asserts charon's IKE SA and CHILD SA are up and agree with our status, proposals included.
fn assert_agree_on(sas: &ListSas, ours: &Value, expect_ike: &str) {
    assert_agree(sas, ours);
    let ike = sas.ike(TUNNEL).unwrap();
    let child = ike.children.iter().find(|c| c.name == "net").unwrap();
    // IKE proposal: same tokens on both sides
    let theirs = charon_proposal_tokens(ike.proposal.as_deref().unwrap_or_default());
    let mut ours_tokens: Vec<String> = ours["ikeProposal"]
        .as_str()
        .unwrap_or_default()
        .split('-')
        .map(str::to_owned)
        .collect();
    let mut theirs_sorted = theirs.clone();
    theirs_sorted.sort();
    ours_tokens.sort();
    assert_eq!(
        theirs_sorted, ours_tokens,
        "IKE proposal differs: charon {:?} vs ours {}",
        ike.proposal, ours["ikeProposal"]
    );
    assert_eq!(ours["ikeProposal"], expect_ike, "our status: {ours}");
    // CHILD SA: the same ESP transform
    let c = &ours["childSas"][0];
    let esp = charon_proposal_tokens(
        child
            .proposal
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches("ESP:"),
    );
    let ours_esp = c["proposal"].as_str().unwrap_or_default();
    for tok in ours_esp.split('-') {
        assert!(
            esp.iter().any(|t| t == tok),
            "ESP transform {ours_esp} vs charon {:?}",
            child.proposal
        );
    }
}

/// charon on `right` responding, and the agent on `left` started to it. The sites come first:
/// they go last, after the processes in them.
fn agent_to_charon(case: &Case, nat: bool) -> (SitePair, Charon, Agent) {
    let pair = SitePair::new(nat).expect("topology");
    let charon = Charon::start(
        &pair.right.ns,
        &charon_config(case, &pair.right, &pair.left, None),
    )
    .expect("start charon");
    if case.root.is_some() {
        assert_is_six(&charon);
    }
    let agent = start_agent(
        case,
        &pair.left,
        &pair.right,
        &pair.right.addr.to_string(),
        "start",
    );
    (pair, charon, agent)
}

/// Agent on `left` initiates to charon on `right`; both sides agree once up.
fn agent_initiates(case: &Case, nat: bool, expect_ike: &str) {
    let _serial = netns::serial();
    let judgement = judged(case, Dir::We, nat);
    let (pair, charon, agent) = agent_to_charon(case, nat);
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    let sas = charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    assert_agree_on(&sas, &ours, expect_ike);
    assert_eq!(ours["initiator"], true);
    // charon with libipsec fakes NAT-D, so we always see a NAT and talk on 4500
    assert_eq!(ours["natDetected"], true, "{ours}");
    assert_eq!(
        ours["remoteEndpoint"],
        format!("{}:4500", pair.right.addr),
        "{ours}"
    );
    assert_eq!(ours["childSas"][0]["encapsulated"], true, "{ours}");
    if nat {
        let remote = sas
            .ike(TUNNEL)
            .and_then(|s| s.remote.clone())
            .unwrap_or_default();
        assert!(
            remote.contains(&format!("{}[4500]", pair.left.public_addr)),
            "charon sees us as {remote:?}"
        );
    }
    eprintln!("{}", agent.status_text().unwrap());
    if let Some(j) = judgement {
        j.pass();
    }
}

#[test]
fn agent_initiates_charon_responds() {
    agent_initiates(&Case::default(), false, "aes256gcm16-prfsha256-x25519");
}

/// charon on `left` (behind the NAT with `nat`) initiates to the agent on `right`, which knows
/// it at `left`'s public address; returns our status once up, both sides agreeing.
fn charon_initiates(case: &Case, nat: bool) -> (Value, SitePair) {
    charon_initiates_with(case, nat, "aes256gcm16-prfsha256-x25519")
}

/// [`charon_initiates`] where the IKE SA must come up with `expect_ike`.
fn charon_initiates_with(case: &Case, nat: bool, expect_ike: &str) -> (Value, SitePair) {
    let judgement = judged(case, Dir::They, nat);
    let pair = SitePair::new(nat).expect("topology");
    let agent = start_agent(
        case,
        &pair.right,
        &pair.left,
        &pair.left.public_addr.to_string(),
        "respond",
    );
    let charon = Charon::start(
        &pair.left.ns,
        &charon_config(
            case,
            &pair.left,
            &pair.right,
            Some(pair.right.addr.to_string()),
        ),
    )
    .expect("start charon");
    if case.root.is_some() {
        assert_is_six(&charon);
    }
    charon
        .initiate(TUNNEL, "net", 20)
        .unwrap_or_else(|e| panic!("charon initiate: {e:#}\n{}", dump(&agent, &charon)));
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(10), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    assert_agree_on(&charon.list_sas().expect("list-sas"), &ours, expect_ike);
    if let Some(j) = judgement {
        j.pass();
    }
    (ours, pair)
}

#[test]
fn charon_initiates_agent_responds() {
    let _serial = netns::serial();
    let (ours, _pair) = charon_initiates(&Case::default(), false);
    assert_eq!(ours["initiator"], false);
    assert_eq!(ours["initiation"], "respond");
}

#[test]
fn through_nat_agent_behind_nat_initiates() {
    agent_initiates(&Case::default(), true, "aes256gcm16-prfsha256-x25519");
}

#[test]
fn through_nat_charon_behind_nat_initiates() {
    let _serial = netns::serial();
    // the agent knows the peer only by the NAT's outside address
    let (ours, pair) = charon_initiates(&Case::default(), true);
    assert_eq!(ours["natDetected"], true);
    let remote = ours["remoteEndpoint"].as_str().unwrap();
    assert!(
        remote.starts_with(&format!("{}:", pair.left.public_addr)) && !remote.ends_with(":500"),
        "we see charon at {remote}"
    );
}

/// The proposal matrix: each row negotiated agent → charon with exactly these proposals on
/// both sides.
#[test]
fn proposal_table() {
    proposals(|c| c);
}

fn proposals(peer: fn(Case) -> Case) {
    let rows: [(&str, &str); 5] = [
        ("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519"),
        ("aes128gcm16-prfsha256-ecp256", "aes128gcm16-ecp256"),
        ("aes256-sha256-modp2048", "aes256-sha256"),
        ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-ecp384"),
        ("aes256-sha512-modp3072", "aes256-sha512-modp3072"),
    ];
    for (ike, esp) in rows {
        let case = peer(Case {
            agent_ike: vec![ike],
            agent_esp: vec![esp],
            charon_ike: vec![ike],
            charon_esp: vec![esp],
            ..Case::default()
        });
        // our status names the PRF explicitly; for the CBC rows it equals the integrity hash
        let expect = match ike {
            "aes256-sha256-modp2048" => "aes256-sha256-prfsha256-modp2048",
            "aes256-sha512-modp3072" => "aes256-sha512-prfsha512-modp3072",
            other => other,
        };
        eprintln!("proposal row: ike {ike} / esp {esp}");
        agent_initiates(&case, false, expect);
        // the matrix's other two suites with charon initiating too (GCM/X25519 has its own
        // cases both ways)
        if matches!(
            cell(&case, Dir::They, false).map(|c| c.suite),
            Some(Suite::CbcModp | Suite::Ecp384)
        ) {
            let _serial = netns::serial();
            drop(charon_initiates_with(&case, false, expect));
        }
    }
}

/// The agent on `left` initiates to charon on `right` and fails with `reason`. The sites come
/// first: they go last, after the processes in them.
fn agent_fails(case: &Case, reason: &str) -> (SitePair, Charon, Agent, Value) {
    let (pair, charon, agent) = agent_to_charon(case, false);
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(15), |t| {
            t["lastError"]["reason"] == reason
        })
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    (pair, charon, agent, ours)
}

#[test]
fn wrong_psk_is_authentication_failed_on_both_sides() {
    let _serial = netns::serial();
    let case = Case {
        agent_psk: "this-is-not-the-key-charon-has",
        ..Case::default()
    };
    let (_pair, charon, agent, ours) = agent_fails(&case, "AuthenticationFailed");
    assert_ne!(ours["ikeState"], "Established");
    assert!(!agent.log().contains(case.agent_psk), "PSK in our log");
    assert!(
        !agent.status_json().unwrap().contains(case.agent_psk),
        "PSK in status"
    );
    let log = charon.log();
    assert!(
        log.contains("AUTH_FAILED") || log.contains("AUTHENTICATION_FAILED"),
        "charon's log does not show the authentication failure:\n{log}"
    );
    assert!(
        charon
            .list_sas()
            .unwrap()
            .ike(TUNNEL)
            .is_none_or(|s| s.state != "ESTABLISHED")
    );
}

#[test]
fn mismatched_proposals_are_no_proposal_chosen_on_both_sides() {
    let _serial = netns::serial();
    let case = Case {
        agent_ike: vec!["aes256gcm16-prfsha384-ecp384"],
        charon_ike: vec!["aes128-sha256-modp3072"],
        ..Case::default()
    };
    let (pair, charon, agent, ours) = agent_fails(&case, "NoProposalChosen");
    assert_ne!(ours["ikeState"], "Established");
    let log = charon.log();
    assert!(
        log.contains("NO_PROP") || log.contains("NO_PROPOSAL_CHOSEN"),
        "charon's log does not show NO_PROPOSAL_CHOSEN:\n{log}"
    );
    // our log alone says what we offered
    let ours = agent.log();
    assert!(
        ours.contains(
            "the peer chose none of our IKE proposals (NO_PROPOSAL_CHOSEN); offered: aes256gcm16-prfsha384-ecp384"
        ),
        "{ours}"
    );
    drop((agent, charon));
    // the other way round, our log names what charon sent and what we have
    let agent = start_agent(
        &case,
        &pair.right,
        &pair.left,
        &pair.left.addr.to_string(),
        "respond",
    );
    let charon = Charon::start(
        &pair.left.ns,
        &charon_config(
            &case,
            &pair.left,
            &pair.right,
            Some(pair.right.addr.to_string()),
        ),
    )
    .expect("start charon");
    let _ = charon.initiate(TUNNEL, "net", 5);
    let want = format!(
        "no IKE proposal matches: received from {}:500: aes128-sha256-prfsha256-modp3072; configured: aes256gcm16-prfsha384-ecp384",
        pair.left.addr
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.log().contains(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {want:?} in our log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// DPD against 5.9.8 and 6.0.1: liveness checks every 2 s are answered while charon lives (the
/// tunnel stays up without an error through three of them), and a SIGKILLed charon is
/// declared unreachable within interval + timeout.
#[test]
fn dpd_declares_a_killed_charon_unreachable() {
    let _serial = netns::serial();
    for root in [None, Some(strongswan::strongswan6_root())] {
        let case = Case {
            dpd: Some(("2s", "6s")),
            root,
            ..Case::default()
        };
        let (_pair, charon, agent) = agent_to_charon(&case, false);
        agent
            .wait_tunnel(TUNNEL, Duration::from_secs(20), up)
            .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
        std::thread::sleep(Duration::from_secs(7));
        let t = agent.tunnel(TUNNEL).unwrap();
        assert!(
            up(&t) && t.get("lastError").is_none(),
            "DPD against a live charon: {t}"
        );
        let pid = charon.pid().expect("charon runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let killed = std::time::Instant::now();
        // quiet for up to `interval`, then unanswered for `timeout`: 2 s + 6 s, plus slack
        let ours = agent
            .wait_tunnel(TUNNEL, Duration::from_secs(12), |t| {
                t["lastError"]["reason"] == "PeerUnreachable"
            })
            .unwrap();
        let took = killed.elapsed();
        eprintln!(
            "{}: PeerUnreachable {took:?} after charon was killed",
            if case.root.is_some() {
                "6.0.1"
            } else {
                "5.9.8"
            }
        );
        assert!(took <= Duration::from_secs(10), "took {took:?}");
        assert_ne!(ours["ikeState"], "Established");
        assert_eq!(ours["ready"], false);
        assert!(
            ours["childSas"].as_array().is_none_or(Vec::is_empty),
            "{ours}"
        );
    }
}

/// A capture of a whole agent lifetime (IKE_SA_INIT, IKE_AUTH, and the DELETE that SIGTERM
/// sends) dissected by tshark, decrypted with the keys charon logs: no malformed packet; and
/// SIGTERM exits 0 with charon's IKE SA gone.
#[test]
fn tshark_finds_nothing_malformed_and_sigterm_deletes() {
    let _serial = netns::serial();
    let case = Case::default();
    let pair = SitePair::new(false).expect("topology");
    // on left's side of the one link: every IKE packet of both ends passes it
    let iface = pair.topology.interface("left", "right").unwrap();
    let mut capture = Capture::start(&pair.left.ns, &iface).expect("capture");
    let mut cfg = charon_config(&case, &pair.right, &pair.left, None);
    // ike = 4: charon logs the IKE SA keys, which let tshark decrypt and dissect SK payloads
    cfg.log_level = 4;
    let charon = Charon::start(&pair.right.ns, &cfg).expect("start charon");
    let mut agent = start_agent(
        &case,
        &pair.left,
        &pair.right,
        &pair.right.addr.to_string(),
        "start",
    );
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap();
    let status = agent.terminate(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "agent exit status {status}\n{}",
        agent.log()
    );
    // charon got our DELETE: its IKE SA is gone
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while charon.list_sas().unwrap().ike(TUNNEL).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "charon still has the IKE SA after our SIGTERM:\n{}\n{}",
            charon.list_sas().unwrap().raw,
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // the last DELETE response may still be on its way
    std::thread::sleep(Duration::from_millis(300));
    let keys = capture::charon_ike_keys(&charon.log());
    let seen = capture.stop_decrypting(&keys, AES256GCM16).expect("tshark");
    eprintln!("{}\n{}", seen.counts(), seen.summary);
    assert!(
        seen.undecrypted().is_empty(),
        "tshark could not decrypt {:?} with {keys:?}",
        seen.undecrypted()
    );
    for exchange in [
        Exchange::IkeSaInit,
        Exchange::IkeAuth,
        Exchange::Informational,
    ] {
        for (from, to) in [(&pair.left, &pair.right), (&pair.right, &pair.left)] {
            assert!(
                seen.count_from(from.addr.into(), exchange) >= 1,
                "no {} from {} to {} in the capture:\n{}",
                exchange.name(),
                from.node,
                to.node,
                seen.summary
            );
        }
    }
    assert!(seen.errors.is_empty(), "tshark: {:#?}", seen.errors);
}

#[test]
fn kernel_dataplane_on_esp_less_host_reports_kernel_unsupported() {
    let _serial = netns::serial();
    let case = Case::default();
    let pair = SitePair::new(false).expect("topology");
    let agent = Agent::start(
        &pair.left.ns,
        &agent_config(
            &case,
            &pair.left,
            &pair.right,
            &pair.right.addr.to_string(),
            "start",
        ),
        &[SecretFile {
            name: "gw-psk".into(),
            key: "psk".into(),
            value: PSK.into(),
        }],
        "kernel",
        &[],
    )
    .expect("start agent");
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(10), |t| {
            t["lastError"]["reason"] == "KernelUnsupported"
        })
        .unwrap();
    let msg = ours["lastError"]["message"].as_str().unwrap();
    assert!(msg.contains("ESP"), "{msg}");
    assert!(msg.contains("--dataplane none"), "{msg}");
    // no retry storm: still the same single error, and status keeps answering
    std::thread::sleep(Duration::from_secs(2));
    let again = agent.tunnel(TUNNEL).unwrap();
    assert_eq!(again["lastError"], ours["lastError"]);
    assert_eq!(again["ikeState"], "Down");
    let text = agent.status_text().unwrap();
    assert!(text.contains("KernelUnsupported"), "{text}");
    eprintln!("{text}");
}

#[test]
fn sighup_adds_and_removes_tunnels_without_disturbing_others() {
    let _serial = netns::serial();
    let case = Case::default();
    let (pair, charon, agent) = agent_to_charon(&case, false);
    // the config agent_to_charon started the agent with
    let peer = pair.right.addr.to_string();
    let base = agent_config(&case, &pair.left, &pair.right, &peer, "start");
    let before = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    let mut other = agent_tunnel(&case, &pair.left, &pair.right, "192.0.2.99", "respond");
    other.name = "other".into();
    let extra = other.render();
    std::fs::write(
        agent.dir().join("tunnels.yaml"),
        format!("{base}---\n{extra}"),
    )
    .unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    agent
        .wait_tunnel("other", Duration::from_secs(5), |t| {
            t["initiation"] == "respond"
        })
        .unwrap();
    let during = agent.tunnel(TUNNEL).unwrap();
    assert_eq!(during["ikeSpis"], before["ikeSpis"], "gw was disturbed");
    std::fs::write(agent.dir().join("tunnels.yaml"), &base).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent.tunnel("other").is_ok() {
        assert!(std::time::Instant::now() < deadline, "other not removed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = agent.tunnel(TUNNEL).unwrap();
    assert_eq!(after["ikeSpis"], before["ikeSpis"], "gw was disturbed");
    assert!(charon.list_sas().unwrap().is_up(TUNNEL, "net"));
}

// ---- strongSwan 6.0.1 (Debian trixie), chrooted from the root `e2e/setup/peers.sh` builds ----

/// The peer really is strongSwan 6: its log names the version.
fn assert_is_six(charon: &Charon) {
    let log = charon.log();
    assert!(
        log.contains("strongSwan 6.0.1"),
        "not strongSwan 6.0.1:\n{}",
        log.lines().take(5).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn strongswan6_agent_initiates_and_charon_initiates() {
    agent_initiates(&six(Case::default()), false, "aes256gcm16-prfsha256-x25519");
    let _serial = netns::serial();
    let (ours, _pair) = charon_initiates(&six(Case::default()), false);
    assert_eq!(ours["initiator"], false);
}

#[test]
fn strongswan6_through_nat_both_ways() {
    agent_initiates(&six(Case::default()), true, "aes256gcm16-prfsha256-x25519");
    let _serial = netns::serial();
    let (ours, _pair) = charon_initiates(&six(Case::default()), true);
    assert_eq!(ours["natDetected"], true, "{ours}");
}

#[test]
fn strongswan6_proposal_table() {
    proposals(six);
}

/// `strait-agent probe` from `left` to charon on `right` (left behind a NAT): the outcome of
/// each port, parsed from `--json`, and the exit status.
fn probe(pair: &SitePair, proposal: &str) -> (Vec<Value>, bool) {
    let bin = strait_e2e::product::binary("strait-agent").unwrap();
    let right = pair.right.addr.to_string();
    let o = netns::exec_unchecked(
        &pair.left.ns,
        &[
            bin.to_str().unwrap(),
            "probe",
            &right,
            "--ike-proposal",
            proposal,
            "--timeout",
            "2",
            "--json",
        ],
    )
    .unwrap();
    let text = &o.stdout;
    eprintln!("probe {proposal}: {text}{}", o.stderr);
    let v: Vec<Value> = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v.len(), 2, "{text}");
    assert_eq!(
        (v[0]["port"].as_u64(), v[1]["port"].as_u64()),
        (Some(500), Some(4500))
    );
    (v, o.status.success())
}

/// The probe `kubectl strait diagnose` runs on a gateway tells the four things apart: a charon
/// that accepts the proposal (and the NAT between), one that refuses it, a firewall that drops
/// IKE, and no charon at all.
#[test]
fn probe_tells_acceptance_refusal_silence_and_a_closed_port_apart() {
    let _serial = netns::serial();
    let pair = SitePair::new(true).expect("topology");
    let mut charon = Charon::start(
        &pair.right.ns,
        &charon_config(&Case::default(), &pair.right, &pair.left, None),
    )
    .expect("start charon");
    let (v, ok) = probe(&pair, "aes256gcm16-prfsha256-x25519");
    assert!(ok);
    for p in &v {
        assert_eq!(p["outcome"]["kind"], "accepted", "{p}");
        assert_eq!(
            p["outcome"]["proposal"], "aes256gcm16-prfsha256-x25519",
            "{p}"
        );
        // left is behind the NAT router: charon saw the mapped address
        let nat = p["outcome"]["nat"].as_str().unwrap_or_default();
        assert!(nat == "local" || nat == "both", "{p}");
    }
    let (v, ok) = probe(&pair, "aes128-sha256-modp2048");
    assert!(ok, "a refusal is an answer");
    for p in &v {
        assert_eq!(p["outcome"]["kind"], "noProposalChosen", "{p}");
    }
    // a firewall in front of charon that drops IKE: silence, and a failing exit status
    netns::exec(
        &pair.right.ns,
        &[
            "nft",
            "add table inet probe; add chain inet probe in { type filter hook input priority 0; \
             udp dport { 500, 4500 } drop; }",
        ],
    )
    .unwrap();
    let (v, ok) = probe(&pair, "aes256gcm16-prfsha256-x25519");
    assert!(!ok);
    for p in &v {
        assert_eq!(p["outcome"]["kind"], "noAnswer", "{p}");
        assert_eq!(p["outcome"]["attempts"], 2, "{p}");
    }
    netns::exec(&pair.right.ns, &["nft", "delete table inet probe"]).unwrap();
    // charon gone: the peer's kernel answers ICMP port unreachable
    charon.stop().unwrap();
    let (v, ok) = probe(&pair, "aes256gcm16-prfsha256-x25519");
    assert!(!ok);
    for p in &v {
        assert_eq!(p["outcome"]["kind"], "unreachable", "{p}");
    }
}

/// The name of `ns`'s link to the other site (its one device besides `lo`).
fn link_to_peer(ns: &str) -> String {
    let links = netns::exec(ns, &["ip", "-o", "link", "show"])
        .unwrap()
        .stdout;
    links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|d| d.split('@').next().unwrap_or(d))
        .find(|d| *d != "lo")
        .unwrap_or_else(|| panic!("no link in {ns}: {links}"))
        .to_owned()
}

/// Gives `ns`'s link to the other site the IPv6 address `addr`/64 (no duplicate detection, so
/// it is usable at once).
fn add_v6(ns: &str, addr: &str) {
    let dev = link_to_peer(ns);
    netns::exec(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"]).unwrap();
    netns::exec(
        ns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            &dev,
            "nodad",
        ],
    )
    .unwrap();
}

/// IPv6 outer addresses (the sites' inner subnets stay IPv4): the agent initiates to charon
/// over IPv6, then charon to the agent, against 5.9.8 and 6.0.1; both sides agree, on IPv6
/// endpoints.
#[test]
fn ipv6_outer_addresses_both_directions() {
    let _serial = netns::serial();
    let (l6, r6) = ("2001:db8:5::1", "2001:db8:5::2");
    for (root, agent_starts) in [
        (None, true),
        (None, false),
        (Some(strongswan::strongswan6_root()), true),
        (Some(strongswan::strongswan6_root()), false),
    ] {
        let pair = SitePair::new(false).expect("topology");
        add_v6(&pair.left.ns, l6);
        add_v6(&pair.right.ns, r6);
        let case = Case {
            root,
            ..Case::default()
        };
        let dir = if agent_starts { Dir::We } else { Dir::They };
        let judgement = cell(&case, dir, false).map(|c| matrix::judge(module_path!(), &[c.v6()]));
        // the agent on left, charon on right
        let mut cfg = charon_config(
            &case,
            &pair.right,
            &pair.left,
            (!agent_starts).then(|| l6.to_owned()),
        );
        cfg.connections[0].local_addrs = vec![r6.to_owned()];
        let tunnel = TunnelYaml {
            ike: vec!["aes256gcm16-prfsha256-x25519".into()],
            esp: vec!["aes256gcm16-x25519".into()],
            ..TunnelYaml::new(
                TUNNEL,
                End::new(pair.left.id, l6, pair.left.subnet),
                End::new(pair.right.id, r6, pair.right.subnet),
            )
            .initiation(if agent_starts { "start" } else { "respond" })
        };
        let agent = start_yaml(&pair.left.ns, &tunnel.render(), PSK, &[]);
        let charon = Charon::start(&pair.right.ns, &cfg).expect("start charon");
        if !agent_starts {
            charon
                .initiate(TUNNEL, "net", 20)
                .unwrap_or_else(|e| panic!("charon initiate: {e:#}\n{}", dump(&agent, &charon)));
        }
        let ours = agent
            .wait_tunnel(TUNNEL, Duration::from_secs(20), up)
            .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
        let sas = charon
            .wait_up(TUNNEL, "net", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
        assert_agree_on(&sas, &ours, "aes256gcm16-prfsha256-x25519");
        assert_eq!(ours["initiator"], agent_starts);
        let remote = ours["remoteEndpoint"].as_str().unwrap_or_default();
        assert!(remote.starts_with(&format!("[{r6}]:")), "{ours}");
        let local = ours["localEndpoint"].as_str().unwrap_or_default();
        assert!(local.starts_with(&format!("[{l6}]:")), "{ours}");
        let theirs = sas
            .ike(TUNNEL)
            .and_then(|s| s.remote.clone())
            .unwrap_or_default();
        assert!(theirs.contains(l6), "charon sees us at {theirs:?}");
        if case.root.is_some() {
            assert_is_six(&charon);
        }
        if let Some(j) = judgement {
            j.pass();
        }
        drop((agent, charon));
    }
}

/// IPv6 outer addresses through a NAT66 (the NAT router masquerades IPv6 as it does IPv4;
/// the right site has no route to the left's prefix, so nothing passes unNATed): the agent
/// behind it initiates to charon, then charon behind it to the agent, against 5.9.8 and
/// 6.0.1. Both sides agree, and each sees the other where the NAT puts it.
#[test]
fn ipv6_through_a_nat_both_ways() {
    let _serial = netns::serial();
    for (root, agent_behind) in [
        (None, true),
        (None, false),
        (Some(strongswan::strongswan6_root()), true),
        (Some(strongswan::strongswan6_root()), false),
    ] {
        let pair = SitePair::new(true).expect("topology");
        let netns::Nat66 {
            inside,
            nat_out,
            outside,
            ..
        } = pair.add_ipv6_through_nat().unwrap();
        let case = Case {
            root,
            ..Case::default()
        };
        let dir = if agent_behind { Dir::We } else { Dir::They };
        let judgement = cell(&case, dir, true).map(|c| matrix::judge(module_path!(), &[c.v6()]));
        // the one behind the NAT (left) initiates; the one outside knows it as the NAT
        let (agent_site, charon_site) = if agent_behind {
            (&pair.left, &pair.right)
        } else {
            (&pair.right, &pair.left)
        };
        let (agent_addr, charon_addr) = if agent_behind {
            (inside, outside)
        } else {
            (outside, inside)
        };
        let (agent_sees, charon_sees) = if agent_behind {
            (outside, nat_out)
        } else {
            (nat_out, outside)
        };
        let mut cfg = charon_config(
            &case,
            charon_site,
            agent_site,
            Some(if agent_behind { nat_out } else { outside }.to_owned()),
        );
        cfg.connections[0].local_addrs = vec![charon_addr.to_owned()];
        let tunnel = TunnelYaml {
            ike: vec!["aes256gcm16-prfsha256-x25519".into()],
            esp: vec!["aes256gcm16-x25519".into()],
            ..TunnelYaml::new(
                TUNNEL,
                End::new(agent_site.id, agent_addr, agent_site.subnet),
                End::new(charon_site.id, agent_sees, charon_site.subnet),
            )
            .initiation(if agent_behind { "start" } else { "respond" })
        };
        let agent = start_yaml(&agent_site.ns, &tunnel.render(), PSK, &[]);
        let charon = Charon::start(&charon_site.ns, &cfg).expect("start charon");
        if !agent_behind {
            charon
                .initiate(TUNNEL, "net", 20)
                .unwrap_or_else(|e| panic!("charon initiate: {e:#}\n{}", dump(&agent, &charon)));
        }
        let ours = agent
            .wait_tunnel(TUNNEL, Duration::from_secs(20), up)
            .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
        let sas = charon
            .wait_up(TUNNEL, "net", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
        assert_agree_on(&sas, &ours, "aes256gcm16-prfsha256-x25519");
        assert_eq!(ours["initiator"], agent_behind);
        assert_eq!(ours["natDetected"], true, "{ours}");
        let remote = ours["remoteEndpoint"].as_str().unwrap_or_default();
        assert!(remote.starts_with(&format!("[{agent_sees}]:")), "{ours}");
        let local = ours["localEndpoint"].as_str().unwrap_or_default();
        assert!(local.starts_with(&format!("[{agent_addr}]:")), "{ours}");
        let theirs = sas
            .ike(TUNNEL)
            .and_then(|s| s.remote.clone())
            .unwrap_or_default();
        assert!(
            theirs.contains(charon_sees),
            "charon sees us at {theirs:?}, not at {charon_sees}"
        );
        if agent_behind {
            // our own end floated to 4500 from behind the NAT
            assert!(local.ends_with(":4500"), "{ours}");
        }
        if case.root.is_some() {
            assert_is_six(&charon);
        }
        if let Some(j) = judgement {
            j.pass();
        }
        drop((agent, charon));
    }
}

/// `spec.ike.reauthTime` against charon: every reauthentication (about 6 s under
/// `--test-lifetime-scale 0.1` for an API `reauthTime: 1m`) is a new IKE SA that charon accepts
/// beside the old one, which we then delete; the tunnel is up in every sample, and at the end
/// charon holds exactly our one IKE SA.
#[test]
fn reauth_time_brings_new_ike_sas_that_charon_takes() {
    let _serial = netns::serial();
    reauth_case(&Case::default());
}

#[test]
fn strongswan6_reauth_time_brings_new_ike_sas_that_charon_takes() {
    let _serial = netns::serial();
    reauth_case(&six(Case::default()));
}

fn reauth_case(case: &Case) {
    let pair = SitePair::new(false).expect("topology");
    let charon = Charon::start(
        &pair.right.ns,
        &charon_config(case, &pair.right, &pair.left, None),
    )
    .expect("start charon");
    if case.root.is_some() {
        assert_is_six(&charon);
    }
    let yaml = TunnelYaml {
        ike_lifetime: Some("2m".into()),
        ..agent_tunnel(
            case,
            &pair.left,
            &pair.right,
            &pair.right.addr.to_string(),
            "start",
        )
    }
    .render()
    .replace("lifetime: 2m", "lifetime: 2m, reauthTime: 1m");
    assert!(yaml.contains("reauthTime: 1m"), "{yaml}");
    let agent = start_yaml(&pair.left.ns, &yaml, PSK, &["--test-lifetime-scale", "0.1"]);
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    let mut spis = std::collections::BTreeSet::new();
    let end = std::time::Instant::now() + Duration::from_secs(16);
    while std::time::Instant::now() < end {
        let t = agent.tunnel(TUNNEL).unwrap();
        assert!(up(&t), "down during reauthentication: {t}\n{}", agent.log());
        spis.insert(t["ikeSpis"].to_string());
        std::thread::sleep(Duration::from_millis(200));
    }
    // initial + two reauthentications at least (an IKE rekey at ~12 s may add one)
    assert!(spis.len() >= 3, "IKE SAs seen: {spis:?}\n{}", agent.log());
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(10), up)
        .unwrap();
    let sas = charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap();
    // the old ones are gone at charon too (deleted by us), within the linger
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let n = charon.list_sas().unwrap().ike_sas.len();
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "charon holds {n} IKE SAs\n{}",
            charon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_agree_on(&sas, &ours, "aes256gcm16-prfsha256-x25519");
    let log = charon.log();
    assert!(log.contains("received DELETE for IKE_SA"), "{log}");
}

/// Gives `ns`'s link to the other site one more IPv4 address (`addr` with its prefix).
fn add_v4(ns: &str, addr: &str) {
    let dev = link_to_peer(ns);
    netns::exec(ns, &["ip", "addr", "add", addr, "dev", &dev]).unwrap();
}

/// The right site's second address: charon's tunnel is configured only there, so charon
/// answers IKE_SA_INIT to the first one with NO_PROPOSAL_CHOSEN ("no IKE config found").
const RIGHT_SECOND: &str = "192.0.2.3";

/// charon on `right` with its tunnel on [`RIGHT_SECOND`] only, and `extra` strongswan.conf lines.
fn charon_on_second_address(pair: &SitePair, extra: &[&str]) -> Charon {
    add_v4(&pair.right.ns, &format!("{RIGHT_SECOND}/24"));
    let mut cfg = charon_config(&Case::default(), &pair.right, &pair.left, None);
    cfg.connections[0].local_addrs = vec![RIGHT_SECOND.to_owned()];
    cfg.extra_charon = extra.iter().map(|s| (*s).to_owned()).collect();
    Charon::start(&pair.right.ns, &cfg).expect("start charon")
}

/// The agent's tunnel to the right site at `address`, with `remote_extra` after it (YAML flow
/// mapping entries such as `fallbackAddresses: [...]`).
fn tunnel_to(pair: &SitePair, address: &str, remote_extra: &str) -> String {
    let doc = TunnelYaml {
        ike: vec!["aes256gcm16-prfsha256-x25519".into()],
        esp: vec!["aes256gcm16-x25519".into()],
        ..TunnelYaml::new(
            TUNNEL,
            End::new(pair.left.id, pair.left.addr, pair.left.subnet),
            End::new(pair.right.id, address, pair.right.subnet),
        )
        .initiation("start")
    }
    .render();
    let from = format!(", address: {address},");
    assert!(doc.contains(&from), "{doc}");
    doc.replacen(&from, &format!(", address: {address}, {remote_extra},"), 1)
}

/// `remote.fallbackAddresses` and `remote.port` against charon listening on UDP 5500: the
/// first address refuses (charon has no tunnel there), so the next attempt goes to the
/// fallback, on the set port, without floating to 4500 (charon's NAT-T port is 5501).
#[test]
fn a_refusing_address_falls_back_to_the_next_on_the_set_port() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let charon = charon_on_second_address(&pair, &["port = 5500", "port_nat_t = 5501"]);
    let yaml = tunnel_to(
        &pair,
        &pair.right.addr.to_string(),
        &format!("fallbackAddresses: ['{RIGHT_SECOND}'], port: 5500"),
    );
    let agent = start_yaml(&pair.left.ns, &yaml, PSK, &[]);
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(30), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    assert_eq!(
        ours["remoteEndpoint"],
        format!("{RIGHT_SECOND}:5500"),
        "{ours}"
    );
    let sas = charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    let local = sas
        .ike(TUNNEL)
        .and_then(|s| s.local.clone())
        .unwrap_or_default();
    assert!(
        local.contains(&format!("{RIGHT_SECOND}[5500]")),
        "charon's end: {local}"
    );
    let log = agent.log();
    assert!(
        log.contains("NO_PROPOSAL_CHOSEN"),
        "the first attempt was refused at {}:\n{log}",
        pair.right.addr
    );
    eprintln!("{}", agent.status_text().unwrap());
}

/// `/etc/netns/NS/hosts`, which `ip netns exec NS` binds over `/etc/hosts` for what it starts;
/// written in place (the bind mount follows the inode), removed when dropped.
struct NetnsHosts(PathBuf);

impl NetnsHosts {
    fn new(ns: &str, content: &str) -> Self {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        let f = Self(dir);
        f.write(content);
        f
    }

    fn write(&self, content: &str) {
        std::fs::write(self.0.join("hosts"), content).unwrap();
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // and /etc/netns itself when nothing else is in it
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A DNS name is resolved again until it resolves, and before each attempt: the agent starts
/// while the name does not resolve (`AddressUnresolved`), the name appears on the address where
/// charon refuses (the tunnel starts and is refused), then moves, and the retry finds charon, on
/// the NAT-T port `remote.port: 4500` asks for (with the non-ESP marker from the first message).
#[test]
fn a_dns_name_is_resolved_again_until_it_resolves_and_before_each_attempt() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let charon = charon_on_second_address(&pair, &[]);
    let name = "peer.strait.test";
    let hosts = NetnsHosts::new(&pair.left.ns, "127.0.0.1 localhost\n");
    let agent = start_yaml(
        &pair.left.ns,
        &tunnel_to(&pair, name, "port: 4500"),
        PSK,
        &[],
    );
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(5), |t| {
            t["lastError"]["reason"] == "AddressUnresolved"
        })
        .unwrap();
    hosts.write(&format!(
        "127.0.0.1 localhost\n{} {name}\n",
        pair.right.addr
    ));
    // mapped again within 10 s: the tunnel starts, and charon refuses it there
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            t["lastError"]["reason"] == "NoProposalChosen"
        })
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    hosts.write(&format!("127.0.0.1 localhost\n{RIGHT_SECOND} {name}\n"));
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(30), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    assert_eq!(
        ours["remoteEndpoint"],
        format!("{RIGHT_SECOND}:4500"),
        "{ours}"
    );
    let log = agent.log();
    assert!(log.contains("peer addresses resolve now"), "{log}");
    assert!(
        log.contains("the peer's names resolve to other addresses"),
        "{log}"
    );
    charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    drop((agent, charon, hosts));
}

/// `childSas: perSubnetPair` against charon: the tunnel's two remote subnets get a CHILD SA
/// each on one IKE SA (IKE_AUTH carries the first pair, a CREATE_CHILD_SA the second); charon,
/// with one child config holding both, narrows each request to its pair and installs both.
#[test]
fn per_subnet_pair_child_sas_against_charon() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let second = "198.18.7.0/24";
    // charon routes each CHILD SA from an address of its own inside the local selector
    netns::exec(
        &pair.right.ns,
        &["ip", "addr", "add", "198.18.7.1/32", "dev", "lo"],
    )
    .unwrap();
    let mut cfg = charon_config(&Case::default(), &pair.right, &pair.left, None);
    cfg.connections[0].children[0]
        .local_ts
        .push(second.to_owned());
    let charon = Charon::start(&pair.right.ns, &cfg).expect("start charon");
    let mut tunnel = agent_tunnel(
        &Case::default(),
        &pair.left,
        &pair.right,
        &pair.right.addr.to_string(),
        "start",
    );
    tunnel.remote.subnets.push(second.to_owned());
    tunnel.extra.push_str("  childSas: perSubnetPair\n");
    let agent = start_yaml(&pair.left.ns, &tunnel.render(), PSK, &[]);
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            up(t) && t["childSas"].as_array().is_some_and(|c| c.len() == 2)
        })
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    let remotes: Vec<String> = ours["childSas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["remoteTs"].to_string())
        .collect();
    assert!(
        remotes.iter().any(|r| r.contains("203.0.113.0/24"))
            && remotes.iter().any(|r| r.contains(second))
            && remotes
                .iter()
                .all(|r| !(r.contains("203.0.113.0/24") && r.contains(second))),
        "one pair each: {remotes:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sas = charon.list_sas().unwrap();
        let installed = sas.ike(TUNNEL).map_or(0, |s| {
            s.children.iter().filter(|c| c.state == "INSTALLED").count()
        });
        if installed == 2 {
            assert_eq!(sas.ike_sas.len(), 1, "{}", sas.raw);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "charon installed {installed}:\n{}",
            sas.raw
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
