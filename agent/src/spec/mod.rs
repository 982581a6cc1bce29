//! From an `IPsecTunnel` spec and its secrets to the driver's [`TunnelDef`]: the one mapping both
//! standalone mode (secrets from files) and cluster mode (secrets from the API) use. Where the
//! secrets come from is the caller's [`SecretSource`]; the addresses are resolved in
//! [`resolve`]; the pure spec → [`PeerConfig`] translation is [`peer`].

pub mod peer;
pub mod resolve;

use std::time::Duration;

use strait_crds::contract::StatusReason;
use strait_crds::{IPsecTunnelSpec, SecretKeyRef};
use strait_ike::PeerConfig;
use strait_ike::crypto::keys::SecretBytes;
use zeroize::Zeroizing;

use crate::error::TunnelError;
use peer::Inputs;

/// One tunnel as the driver gets it: the spec (to notice changes) and what it maps to.
#[derive(Debug)]
pub struct TunnelDef {
    /// The `IPsecTunnel` name.
    pub name: String,
    /// The spec as written.
    pub spec: IPsecTunnelSpec,
    /// A digest of the secrets it uses (to notice a changed PSK without keeping it twice).
    pub secret_digest: Vec<u8>,
    /// The endpoint configuration, or why there is none.
    pub peer: Result<PeerConfig, TunnelError>,
    /// Remarks for the status.
    pub notes: Vec<String>,
}

impl TunnelDef {
    /// Whether `other` asks for the same tunnel (so a reload leaves it running).
    pub fn same_as(&self, other: &TunnelDef) -> bool {
        self.spec == other.spec
            && self.secret_digest == other.secret_digest
            && self.notes == other.notes
            && self.peer.is_ok() == other.peer.is_ok()
    }

    /// Whether only what the Secrets hold changed (a rotated PSK, a renewed certificate), both
    /// versions usable: the tunnel can reauthenticate in place instead of restarting.
    pub fn only_secrets_differ(&self, other: &TunnelDef) -> bool {
        self.spec == other.spec
            && self.notes == other.notes
            && self.secret_digest != other.secret_digest
            && self.peer.is_ok()
            && other.peer.is_ok()
    }
}

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
        Some(m) => Err(TunnelError::new(StatusReason::SecretUnavailable, m)),
        None => match resolve::addresses(&spec).await {
            Err(m) => Err(TunnelError::new(StatusReason::AddressUnresolved, m)),
            Ok((local_ip, remote_ip, fallback_ips)) => peer::build_with(
                &spec,
                Inputs {
                    local_ip,
                    remote_ip,
                    fallback_ips,
                    ike_port,
                    remote_port: spec.remote.port.unwrap_or(resolve::DEFAULT_REMOTE_PORT),
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
            .map_err(|e| TunnelError::new(e.reason(), e.to_string())),
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

/// Under the agent's test-only `--test-lifetime-scale`: multiplies every IKE and CHILD SA
/// lifetime by `f`, so rekeys happen within seconds (the API's minimum lifetime is 60 s).
///
/// The schedule is compressed, but not the time a rekey may take before the hard limit: a real
/// margin is minutes (10 % of an hour), far above any exchange, and a scaled one under a second
/// would test the machine's speed. So at least `min_margin` is kept between rekey and hard limit.
pub fn scale_lifetimes(cfg: &mut PeerConfig, f: f64, min_margin: Duration) {
    for l in [&mut cfg.ike_lifetime, &mut cfg.child_lifetime] {
        let margin = l.life_time.saturating_sub(l.rekey_time).mul_f64(f);
        l.rekey_time = l.rekey_time.mul_f64(f);
        l.rand_time = l.rand_time.mul_f64(f);
        l.life_time = l.rekey_time + margin.max(min_margin);
    }
    cfg.reauth_time = cfg.reauth_time.map(|r| r.mul_f64(f));
}
