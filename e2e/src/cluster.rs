//! The cluster tests' site: gateway nodes `gw1`, `gw2` (network namespaces, each on its own /30
//! to the remote site) and the remote site, whose charon answers at [`REMOTE_ADDR`] on its
//! loopback; the tunnel between them, its PSK Secret, and the wait for the agents' heartbeats.
//!
//! ```text
//!  gw1 192.0.2.1/30 ---- 192.0.2.2/30 \
//!                                      remote (charon), IKE address 192.0.2.100 on lo
//!  gw2 192.0.2.5/30 ---- 192.0.2.6/30 /
//! ```

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::controlplane::ControlPlane;
use crate::netns::{Topology, TopologyBuilder};
use crate::product::NAMESPACE;
use crate::strongswan::{CharonConfig, ChildConfig, Connection, Endpoint};
use crate::tunnel::{End, TunnelYaml};

pub const LOCAL_ID: &str = "dc1.strait.example";
pub const REMOTE_ID: &str = "dc2.strait.example";
/// The remote site's IKE address (on its loopback, routed from every gateway node).
pub const REMOTE_ADDR: &str = "192.0.2.100";
/// The cluster's side and the remote site's side of the tunnel.
pub const LOCAL_NET: &str = "198.51.100.0/24";
pub const REMOTE_NET: &str = "203.0.113.0/24";
pub const IKE: &str = "aes256gcm16-prfsha256-x25519";
pub const ESP: &str = "aes256gcm16-x25519";
/// A gateway agent without ESP (this host's kernel has none) and with a short heartbeat, so
/// failover is quick: lease 6 s, renewed every 2 s.
pub const AGENT_ARGS: &[&str] = &[
    "--dataplane",
    "none",
    "--lease-duration-seconds",
    "6",
    "--renew-interval",
    "2",
];

/// The namespaces of `gateways` (`gw1`, `gw2`: the n-th on 192.0.2.(4n-3)/30, the remote end on
/// .(4n-2)) and `remote`, each gateway routing `to` (an address or range on the remote site's
/// loopback) through its link. Callers add the remote site's addresses.
pub fn builder(gateways: &[&str], to: &str) -> TopologyBuilder {
    let mut b = Topology::builder();
    for g in gateways {
        b = b.node(g);
    }
    b = b.node("remote");
    for (i, g) in (1u32..).zip(gateways) {
        let (gw, remote) = (
            format!("192.0.2.{}", 4 * i - 3),
            format!("192.0.2.{}", 4 * i - 2),
        );
        b = b
            .link(g, &format!("{gw}/30"), "remote", &format!("{remote}/30"))
            .route(g, &[to, "via", &remote]);
    }
    b
}

/// [`builder`] for [`REMOTE_ADDR`], with it and 203.0.113.1 on the remote site's loopback
/// (charon with kernel-libipsec wants an address of its own inside its traffic selector).
///
/// # Errors
/// The namespaces cannot be made.
pub fn topology(gateways: &[&str]) -> Result<Topology> {
    builder(gateways, REMOTE_ADDR)
        .subnet("remote", &format!("{REMOTE_ADDR}/32"))
        .subnet("remote", "203.0.113.1/32")
        .build()
}

/// charon's connection `name` at [`REMOTE_ADDR`], responding, PSK identities, CHILD `net` from
/// [`REMOTE_NET`] to [`LOCAL_NET`], [`IKE`] and [`ESP`].
pub fn charon_conn(name: &str) -> Connection {
    let mut conn = Connection::new(name, Endpoint::psk(REMOTE_ID), Endpoint::psk(LOCAL_ID));
    conn.local_addrs = vec![REMOTE_ADDR.into()];
    conn.proposals = vec![IKE.into()];
    let mut child = ChildConfig::new("net", REMOTE_NET, LOCAL_NET);
    child.esp_proposals = vec![ESP.into()];
    conn.children.push(child);
    conn
}

/// charon for tunnel `name`, authenticated by `psk`.
pub fn charon_config(name: &str, psk: &str) -> CharonConfig {
    crate::scenario::psk_config(charon_conn(name), &[LOCAL_ID, REMOTE_ID], psk)
}

/// Tunnel `name` between the sites on the gateways labelled `strait.dev/gateway`, PSK in
/// Secret `secret`, [`IKE`] and [`ESP`].
pub fn tunnel(name: &str, secret: &str) -> TunnelYaml {
    TunnelYaml::new(
        name,
        End::new(LOCAL_ID, "", LOCAL_NET),
        End::new(REMOTE_ID, REMOTE_ADDR, REMOTE_NET),
    )
    .gateways()
    .psk(secret)
    .proposals(IKE, ESP)
}

/// Secret `name` in the operator's namespace holding `psk` under key `psk`.
pub fn psk_secret(name: &str, psk: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nstringData: {{psk: \"{psk}\"}}\n"
    )
}

/// Tunnel `name`'s status (null when it cannot be read).
pub fn status(cp: &ControlPlane, name: &str) -> Value {
    cp.kubectl(["get", "ipsectunnel", name, "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v.get("status").cloned())
        .unwrap_or(Value::Null)
}

/// Waits until every node in `nodes` has its heartbeat Lease (the operator elects only nodes
/// with one); `logs` explains a timeout.
///
/// # Errors
/// Not all Leases exist after `timeout`.
pub fn wait_heartbeats(
    cp: &ControlPlane,
    nodes: &[&str],
    timeout: Duration,
    logs: impl Fn() -> String,
) -> Result<()> {
    let mut args = vec![
        "get".to_owned(),
        "lease".into(),
        "-n".into(),
        NAMESPACE.into(),
    ];
    args.extend(nodes.iter().map(|n| format!("strait-agent-{n}")));
    let start = Instant::now();
    while cp.kubectl(&args).is_err() {
        if start.elapsed() > timeout {
            bail!(
                "the agents wrote no heartbeat Lease within {timeout:?}:\n{}",
                logs()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
