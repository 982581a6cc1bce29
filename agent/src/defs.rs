//! From an `IPsecTunnel` spec and its secrets to the driver's [`TunnelDef`]: the one mapping both
//! standalone mode (secrets from files) and cluster mode (secrets from the API) use. Where the
//! secrets come from is the caller's [`SecretSource`]; everything else is decided here.

use std::net::{IpAddr, SocketAddr};

use strait_crds::{IPsecTunnelSpec, SecretKeyRef};
use strait_ike::crypto::keys::SecretBytes;
use zeroize::Zeroizing;

use crate::driver::TunnelDef;
use crate::peer::{self, Inputs};

/// Reads one key of one Secret. The error is a message for a person: it names the Secret and
/// key, never the content.
pub trait SecretSource {
    /// The bytes of `r`, or why there are none.
    ///
    /// # Errors
    /// The Secret or key is missing, unreadable or empty.
    fn read(&mut self, r: &SecretKeyRef) -> Result<Zeroizing<Vec<u8>>, String>;
}

/// Drops one trailing newline (`\n` or `\r\n`): a key written by hand with `echo` has one, one
/// created with `--from-literal` has none; both must mean the same key.
pub fn trim_newline(bytes: &mut Zeroizing<Vec<u8>>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

/// The Secret keys a spec needs: the PSK, or the certificate's `tls.crt`/`tls.key` and the CA.
pub fn secret_refs(spec: &IPsecTunnelSpec) -> Vec<SecretKeyRef> {
    let mut refs: Vec<SecretKeyRef> = [&spec.auth.psk, &spec.auth.ca]
        .into_iter()
        .flatten()
        .map(|s| s.secret_ref.clone())
        .collect();
    if let Some(c) = &spec.auth.certificate {
        for key in ["tls.crt", "tls.key"] {
            refs.push(SecretKeyRef {
                name: c.secret_ref.name.clone(),
                key: key.into(),
            });
        }
    }
    refs
}

/// Builds the driver's definition of one tunnel. A tunnel whose secrets or addresses cannot be
/// had still gets a definition (carrying the reason), so its status says why it is not up.
pub async fn definition(
    name: String,
    spec: IPsecTunnelSpec,
    ike_port: u16,
    secrets: &mut (dyn SecretSource + Send),
) -> TunnelDef {
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut psk = None;
    let mut certificate = peer::CertificateParts::default();
    let mut missing = None;
    for r in secret_refs(&spec) {
        match secrets.read(&r) {
            Ok(bytes) => {
                // name and key too, so moving a value between keys is a change
                digest.update(r.name.as_bytes());
                digest.update(&[0]);
                digest.update(r.key.as_bytes());
                digest.update(&[0]);
                digest.update(&bytes);
                if spec.auth.psk.as_ref().is_some_and(|p| p.secret_ref == r) {
                    psk = Some(SecretBytes::from_slice(&bytes));
                }
                certificate.offer(&spec, &r, &bytes);
            }
            Err(m) => {
                missing.get_or_insert(m);
            }
        }
    }
    let secret_digest = digest.finish().as_ref().to_vec();
    let mut notes = Vec::new();
    let peer = match missing {
        Some(m) => Err(("SecretUnavailable", m)),
        None => match addresses(&spec).await {
            Err(m) => Err(("AddressUnresolved", m)),
            Ok((local_ip, remote_ip)) => peer::build_with(
                &spec,
                Inputs {
                    local_ip,
                    remote_ip,
                    ike_port,
                    remote_port: 500,
                    psk,
                    // the driver falls back to responding when its data plane has no traps
                    on_traffic_supported: true,
                },
                certificate.complete(),
            )
            .map(|b| {
                notes = b.notes;
                b.config
            })
            .map_err(|e| (e.reason(), e.to_string())),
        },
    };
    TunnelDef {
        name,
        spec,
        secret_digest,
        peer,
        notes,
    }
}

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
