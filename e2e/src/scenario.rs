//! The steps the standalone tests share: the agent against charon on two [`Site`]s, how to tell
//! the tunnel is up, whether both sides agree on it, and what to print when they do not.

use serde_json::Value;

use crate::agent::Agent;
use crate::netns::Site;
use crate::strongswan::{Charon, CharonConfig, ChildConfig, Connection, Endpoint, ListSas, Secret};

/// The tunnel's name in the standalone tests' configs (charon's connection too).
pub const TUNNEL: &str = "gw";

/// The agent's status says the tunnel is up: IKE SA established and the tunnel ready.
pub fn up(t: &Value) -> bool {
    t["ikeState"] == "Established" && t["ready"] == true
}

/// Our status and both logs, to explain a failure.
pub fn dump(agent: &Agent, charon: &Charon) -> String {
    dump_last(agent, charon, usize::MAX)
}

/// [`dump`] with only the last `lines` lines of each log (a flood's logs are long).
pub fn dump_last(agent: &Agent, charon: &Charon, lines: usize) -> String {
    let last = |log: String| {
        let all: Vec<&str> = log.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    };
    format!(
        "--- agent status:\n{}\n--- agent log:\n{}\n--- charon log:\n{}",
        agent.status_text().unwrap_or_else(|e| e.to_string()),
        last(agent.log()),
        last(charon.log())
    )
}

/// charon's IKE SA [`TUNNEL`] is established, its CHILD SA `net` installed, and our first CHILD
/// SA's SPIs cross over with charon's.
///
/// # Panics
/// They do not agree (with charon's `--list-sas` in the message).
#[allow(clippy::panic)]
pub fn assert_agree(sas: &ListSas, ours: &Value) {
    let ike = sas
        .ike(TUNNEL)
        .unwrap_or_else(|| panic!("charon has no IKE SA:\n{}", sas.raw));
    assert_eq!(ike.state, "ESTABLISHED", "charon:\n{}", sas.raw);
    assert!(sas.is_up(TUNNEL, "net"), "charon:\n{}", sas.raw);
    let c = ours.pointer("/childSas/0").unwrap_or(&Value::Null);
    let (spi_in, spi_out) = (
        c["spiIn"].as_str().unwrap_or_default(),
        c["spiOut"].as_str().unwrap_or_default(),
    );
    let raw = &sas.raw;
    assert!(
        raw.contains(&format!("out {spi_in}")),
        "our inbound SPI {spi_in} is not charon's outbound:\n{raw}"
    );
    assert!(
        raw.contains(&format!("in  {spi_out}")),
        "our outbound SPI {spi_out} is not charon's inbound:\n{raw}"
    );
}

/// charon on `me` with connection [`TUNNEL`] (CHILD `net`, `me`'s subnet to `peer`'s) to `peer`,
/// authenticated by `psk`; `remote_addr` is where it sends IKE (`None`: it only responds). ESP in
/// UDP is forced: kernel-libipsec (the default plugins) does nothing else. Tests adjust the rest.
pub fn charon_for(me: &Site, peer: &Site, psk: &str, remote_addr: Option<String>) -> CharonConfig {
    let mut conn = Connection::new(TUNNEL, Endpoint::psk(me.id), Endpoint::psk(peer.id));
    conn.local_addrs = vec![me.addr.to_string()];
    conn.remote_addrs = remote_addr.into_iter().collect();
    conn.encap = true;
    conn.children
        .push(ChildConfig::new("net", me.subnet, peer.subnet));
    psk_config(conn, &[me.id, peer.id], psk)
}

/// charon with the one connection `conn` and the PSK `psk` for identities `ids`.
pub fn psk_config(conn: Connection, ids: &[&str], psk: &str) -> CharonConfig {
    CharonConfig {
        connections: vec![conn],
        secrets: vec![Secret::Ike {
            ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            secret: psk.to_owned(),
        }],
        ..CharonConfig::default()
    }
}
