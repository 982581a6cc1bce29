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

use std::time::Duration;

use serde_json::Value;
use strait_e2e::agent::{Agent, SecretFile};
use strait_e2e::netns::{self, Site, SitePair};
use strait_e2e::strongswan::{
    Charon, CharonConfig, ChildConfig, Connection, Endpoint, ListSas, Secret,
};

const PSK: &str = "strait-interop-psk-7c1f0a9e3b5d";
const TUNNEL: &str = "gw";

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
        }
    }
}

fn yaml_list(v: &[&str]) -> String {
    format!("[{}]", v.join(", "))
}

/// The agent's IPsecTunnel: `me` is the agent's site, `peer_addr` where the peer is.
fn agent_config(case: &Case, me: &Site, peer: &Site, peer_addr: &str, initiation: &str) -> String {
    let dpd = case.dpd.map_or(String::new(), |(i, t)| {
        format!("  dpd: {{interval: {i}, timeout: {t}}}\n")
    });
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: IPsecTunnel
metadata: {{name: {TUNNEL}}}
spec:
  local: {{id: {lid}, address: {laddr}, subnets: [{lnet}]}}
  remote: {{id: {rid}, address: {peer_addr}, subnets: [{rnet}]}}
  auth: {{psk: {{secretRef: {{name: gw-psk, key: psk}}}}}}
  ike: {{proposals: {ike}}}
  esp: {{proposals: {esp}}}
{dpd}  initiation: {initiation}
",
        lid = me.id,
        laddr = me.addr,
        lnet = me.subnet,
        rid = peer.id,
        rnet = peer.subnet,
        ike = yaml_list(&case.agent_ike),
        esp = yaml_list(&case.agent_esp),
    )
}

fn start_agent(case: &Case, me: &Site, peer: &Site, peer_addr: &str, initiation: &str) -> Agent {
    Agent::start(
        &me.ns,
        &agent_config(case, me, peer, peer_addr, initiation),
        &[SecretFile {
            name: "gw-psk".into(),
            key: "psk".into(),
            value: case.agent_psk.into(),
        }],
        "none",
        &[],
    )
    .expect("start strait-agent")
}

/// charon's side: `remote_addr` where it sends IKE (`None`: responder only).
fn charon_config(case: &Case, me: &Site, peer: &Site, remote_addr: Option<String>) -> CharonConfig {
    let mut conn = Connection::new(TUNNEL, Endpoint::psk(me.id), Endpoint::psk(peer.id));
    conn.local_addrs = vec![me.addr.to_string()];
    conn.remote_addrs = remote_addr.into_iter().collect();
    conn.proposals = case.charon_ike.iter().map(|s| (*s).to_owned()).collect();
    conn.encap = true;
    let mut child = ChildConfig::new("net", me.subnet, peer.subnet);
    child.esp_proposals = case.charon_esp.iter().map(|s| (*s).to_owned()).collect();
    conn.children.push(child);
    CharonConfig {
        connections: vec![conn],
        secrets: vec![Secret::Ike {
            ids: vec![me.id.to_owned(), peer.id.to_owned()],
            secret: case.charon_psk.to_owned(),
        }],
        ..CharonConfig::default()
    }
}

fn up(t: &Value) -> bool {
    t["ikeState"] == "Established" && t["ready"] == true
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

/// Asserts charon's IKE SA and CHILD SA are up and agree with our status.
fn assert_agree(sas: &ListSas, ours: &Value, expect_ike: &str) {
    let ike = sas
        .ike(TUNNEL)
        .unwrap_or_else(|| panic!("charon has no IKE SA:\n{}", sas.raw));
    assert_eq!(ike.state, "ESTABLISHED", "charon:\n{}", sas.raw);
    let child = ike
        .children
        .iter()
        .find(|c| c.name == "net")
        .unwrap_or_else(|| panic!("charon has no CHILD SA:\n{}", sas.raw));
    assert_eq!(child.state, "INSTALLED", "charon:\n{}", sas.raw);
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
    // CHILD SA: SPIs cross over, same ESP transform
    let c = &ours["childSas"][0];
    let raw = &sas.raw;
    let spi_in = c["spiIn"].as_str().unwrap();
    let spi_out = c["spiOut"].as_str().unwrap();
    assert!(
        raw.contains(&format!("out {spi_in}")) || raw.contains(&format!("out  {spi_in}")),
        "our inbound SPI {spi_in} is not charon's outbound:\n{raw}"
    );
    assert!(
        raw.contains(&format!("in  {spi_out}")) || raw.contains(&format!("in {spi_out}")),
        "our outbound SPI {spi_out} is not charon's inbound:\n{raw}"
    );
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

fn dump(agent: &Agent, charon: &Charon) -> String {
    format!(
        "--- agent status:\n{}\n--- agent log:\n{}\n--- charon log:\n{}",
        agent.status_text().unwrap_or_else(|e| e.to_string()),
        agent.log(),
        charon.log()
    )
}

/// Agent on `left` initiates to charon on `right`; returns both once up.
fn agent_initiates(case: &Case, nat: bool, expect_ike: &str) {
    let _serial = netns::serial();
    let pair = SitePair::new(nat).expect("topology");
    let charon = Charon::start(
        &pair.right.ns,
        &charon_config(case, &pair.right, &pair.left, None),
    )
    .expect("start charon");
    let agent = start_agent(
        case,
        &pair.left,
        &pair.right,
        &pair.right.addr.to_string(),
        "start",
    );
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    let sas = charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    assert_agree(&sas, &ours, expect_ike);
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
}

#[test]
fn agent_initiates_charon_responds() {
    agent_initiates(&Case::default(), false, "aes256gcm16-prfsha256-x25519");
}

#[test]
fn charon_initiates_agent_responds() {
    let _serial = netns::serial();
    let case = Case::default();
    let pair = SitePair::new(false).expect("topology");
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
    charon
        .initiate(TUNNEL, "net", 20)
        .unwrap_or_else(|e| panic!("charon initiate: {e:#}\n{}", dump(&agent, &charon)));
    let ours = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(10), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon log:\n{}", charon.log()));
    let sas = charon.list_sas().expect("list-sas");
    assert_agree(&sas, &ours, "aes256gcm16-prfsha256-x25519");
    assert_eq!(ours["initiator"], false);
    assert_eq!(ours["initiation"], "respond");
}
