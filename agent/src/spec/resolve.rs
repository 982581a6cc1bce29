//! The tunnel's two outer addresses: the only part of the spec mapping that asks the system
//! (DNS for a remote name, the routing table for our source address).

use std::net::{IpAddr, SocketAddr};

use strait_crds::IPsecTunnelSpec;

/// Our address (configured, or the source address the routing table picks towards the peer —
/// the node's address in cluster mode) and the peer's (an IP, or the first address its DNS name
/// resolves to).
///
/// # Errors
/// A message for a person.
pub async fn addresses(spec: &IPsecTunnelSpec) -> Result<(IpAddr, IpAddr), String> {
    let remote = match spec.remote.address.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => tokio::net::lookup_host((spec.remote.address.as_str(), 500))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", spec.remote.address))?
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| format!("{} has no address", spec.remote.address))?,
    };
    let local = match &spec.local.address {
        Some(a) => a
            .parse::<IpAddr>()
            .map_err(|_| format!("spec.local.address {a:?} is not an IP address"))?,
        None => {
            let any: SocketAddr = if remote.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let s = std::net::UdpSocket::bind(any).map_err(|e| e.to_string())?;
            s.connect(SocketAddr::new(remote, 500))
                .map_err(|e| format!("no route to {remote}: {e}"))?;
            s.local_addr().map_err(|e| e.to_string())?.ip()
        }
    };
    Ok((local, remote))
}
