//! The tunnel's outer addresses: the only part of the spec mapping that asks the system
//! (DNS for the remote names, the routing table for our source address).

use std::net::{IpAddr, SocketAddr};

use strait_crds::IPsecTunnelSpec;

/// The peer's IKE port when the spec sets none.
pub const DEFAULT_REMOTE_PORT: u16 = 500;

/// Whether any of the peer's addresses is a DNS name (then it is resolved again before each
/// attempt to initiate).
pub fn has_names(spec: &IPsecTunnelSpec) -> bool {
    remote_entries(spec).any(|a| a.parse::<IpAddr>().is_err())
}

/// `remote.address`, then `remote.fallbackAddresses`.
fn remote_entries(spec: &IPsecTunnelSpec) -> impl Iterator<Item = &str> {
    core::iter::once(spec.remote.address.as_str())
        .chain(spec.remote.fallback_addresses.iter().map(String::as_str))
}

/// The peer's addresses in order: each IP as written, each DNS name as the first address it
/// resolves to of the family in use (`local.address`'s, else the first entry's). An entry that
/// does not resolve is left out while another one does.
///
/// # Errors
/// No entry resolves: the first entry's problem, as a message for a person.
pub async fn remote_addresses(spec: &IPsecTunnelSpec) -> Result<Vec<IpAddr>, String> {
    let mut want_v4 = spec
        .local
        .address
        .as_deref()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .map(|ip| ip.is_ipv4());
    let mut out: Vec<IpAddr> = Vec::new();
    let mut first_error = None;
    for entry in remote_entries(spec) {
        match resolve_one(entry, want_v4).await {
            Ok(ip) => {
                want_v4.get_or_insert(ip.is_ipv4());
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if out.is_empty() {
        return Err(first_error.unwrap_or_else(|| "no remote address".into()));
    }
    Ok(out)
}

async fn resolve_one(entry: &str, want_v4: Option<bool>) -> Result<IpAddr, String> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return match want_v4 {
            Some(v4) if v4 != ip.is_ipv4() => Err(format!(
                "{entry} is not of the address family of the tunnel's other addresses"
            )),
            _ => Ok(ip),
        };
    }
    let found: Vec<IpAddr> = tokio::net::lookup_host((entry, DEFAULT_REMOTE_PORT))
        .await
        .map_err(|e| format!("cannot resolve {entry}: {e}"))?
        .map(|a| a.ip())
        .collect();
    found
        .iter()
        .copied()
        .find(|ip| want_v4.is_none_or(|v4| v4 == ip.is_ipv4()))
        .ok_or_else(|| match found.first() {
            None => format!("{entry} has no address"),
            Some(_) => format!("{entry} has no address of the tunnel's address family"),
        })
}

/// Our address: configured, or the source address the routing table picks towards `remote`
/// (the node's address in cluster mode).
///
/// # Errors
/// A message for a person.
pub fn local_address(spec: &IPsecTunnelSpec, remote: IpAddr) -> Result<IpAddr, String> {
    if let Some(a) = &spec.local.address {
        return a
            .parse::<IpAddr>()
            .map_err(|_| format!("spec.local.address {a:?} is not an IP address"));
    }
    let any: SocketAddr = if remote.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let s = std::net::UdpSocket::bind(any).map_err(|e| e.to_string())?;
    s.connect(SocketAddr::new(remote, DEFAULT_REMOTE_PORT))
        .map_err(|e| format!("no route to {remote}: {e}"))?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.ip())
}

/// Our address, the peer's first address and its others, in the order attempts use them.
///
/// # Errors
/// A message for a person.
pub async fn addresses(spec: &IPsecTunnelSpec) -> Result<(IpAddr, IpAddr, Vec<IpAddr>), String> {
    let remote = remote_addresses(spec).await?;
    let (first, rest) = remote.split_first().ok_or("no remote address")?;
    Ok((local_address(spec, *first)?, *first, rest.to_vec()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(remote: &str) -> IPsecTunnelSpec {
        let y = format!(
            "local: {{id: a, subnets: [10.1.0.0/16]}}\nremote: {remote}\nauth: {{psk: {{secretRef: {{name: p, key: k}}}}}}\n"
        );
        serde_yaml::from_str(&y).unwrap()
    }

    #[tokio::test]
    async fn addresses_in_order_names_resolved_and_unresolvable_ones_left_out() {
        let s = spec(
            "{id: b, address: 127.0.0.2, fallbackAddresses: [localhost, no-such-host.invalid, 127.0.0.2], subnets: [10.2.0.0/16]}",
        );
        assert!(has_names(&s));
        let got = remote_addresses(&s).await.unwrap();
        assert_eq!(
            got,
            [
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
        let (local, _, _) = addresses(&s).await.unwrap();
        assert!(local.is_loopback(), "{local}");
        let only_bad = spec("{id: b, address: no-such-host.invalid, subnets: [10.2.0.0/16]}");
        let e = remote_addresses(&only_bad).await.unwrap_err();
        assert!(e.contains("no-such-host.invalid"), "{e}");
        let ips = spec(
            "{id: b, address: 192.0.2.1, fallbackAddresses: ['2001:db8::1'], subnets: [10.2.0.0/16]}",
        );
        assert!(!has_names(&ips));
        assert_eq!(
            remote_addresses(&ips).await.unwrap().len(),
            1,
            "the other family is left out"
        );
    }
}
