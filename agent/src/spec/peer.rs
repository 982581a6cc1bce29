//! From an `IPsecTunnel` spec (with its secret and resolved addresses) to the IKE endpoint's
//! [`PeerConfig`]. Shared by standalone and cluster mode; no I/O here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use strait_crds::contract::StatusReason;
use strait_crds::{IPsecTunnelSpec, Initiation, SecretKeyRef, validate::Cidr};
use strait_ike::codec::TsRange;
use strait_ike::crypto::keys::SecretBytes;
use strait_ike::proposal::{self, EspProposal, IkeProposal};
use strait_ike::{AuthConfig, CertificateAuth, Dpd, Identity, Lifetime, PeerConfig, Role, Volume};

/// Default IKE SA lifetime (strongSwan's `rekey_time` for IKE: 4h; the API documents 24h).
pub const DEFAULT_IKE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A ProposalSpec's lifetime fields as strongSwan derives them: each unset one from the one
/// it follows (hard limit = rekey + 10 %, jitter = hard − rekey). The CRD's validation has
/// already refused a hard limit before the rekey or a jitter beyond it.
fn lifetime_of(p: Option<&strait_crds::ProposalSpec>, default: Duration) -> Lifetime {
    let secs = |d: strait_crds::Duration| Duration::from_secs(d.as_secs());
    let rekey = p.and_then(|p| p.lifetime).map_or(default, secs);
    let base = Lifetime::from_rekey(rekey);
    let Some(p) = p else { return base };
    let life_time = p.max_lifetime.map_or(base.life_time, secs);
    let rand_time = p
        .rand_time
        .map_or_else(|| life_time.saturating_sub(rekey), secs);
    let volume = |rekey: Option<u64>, life: Option<u64>| match (rekey, life) {
        (Some(r), Some(l)) => Some(Volume {
            rekey: r,
            rand: l.saturating_sub(r),
            life: l,
        }),
        (Some(r), None) => Some(Volume::from_rekey(r)),
        // only a hard limit: rekey at 90 % of it, as strongSwan would need rekey_bytes for
        (None, Some(l)) => Some(Volume {
            rekey: l - l / 10,
            rand: 0,
            life: l,
        }),
        (None, None) => None,
    };
    Lifetime {
        rekey_time: rekey,
        rand_time,
        life_time,
        bytes: volume(p.rekey_bytes, p.life_bytes),
        packets: volume(p.rekey_packets, p.life_packets),
    }
}

/// Default CHILD SA lifetime.
pub const DEFAULT_ESP_LIFETIME: Duration = Duration::from_secs(3600);
/// Default DPD interval.
pub const DEFAULT_DPD_INTERVAL: Duration = Duration::from_secs(30);
/// Default DPD timeout.
pub const DEFAULT_DPD_TIMEOUT: Duration = Duration::from_secs(150);

/// Why a tunnel spec cannot become a peer configuration. Messages name the field and, for
/// proposals, the offending token; they never contain secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// An IKE proposal string was refused.
    #[error("spec.ike.proposals[{index}] {text:?}: {source}")]
    IkeProposal {
        /// Position in the list.
        index: usize,
        /// The string.
        text: String,
        /// What is wrong (names the token).
        source: proposal::ProposalError,
    },
    /// An ESP proposal string was refused.
    #[error("spec.esp.proposals[{index}] {text:?}: {source}")]
    EspProposal {
        /// Position in the list.
        index: usize,
        /// The string.
        text: String,
        /// What is wrong (names the token).
        source: proposal::ProposalError,
    },
    /// An identity could not be understood.
    #[error("spec.{side}.id {id:?}: {message}")]
    Id {
        /// `local` or `remote`.
        side: &'static str,
        /// The identity as written.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// Lifetime fields that contradict each other (the API server's schema cannot compare
    /// them; the CRD's client-side validation names the same).
    #[error("{field}: {message}")]
    Lifetime {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A subnet is not a CIDR prefix.
    #[error("spec.{side}.subnets[{index}]: {message}")]
    Subnet {
        /// `local` or `remote`.
        side: &'static str,
        /// Position in the list.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// `auth.certificate` without the certificate, key or CA material.
    #[error("spec.auth.certificate: {0}")]
    NoCertificate(&'static str),
    /// The certificate, key or CA does not parse, or the key does not belong to the certificate.
    #[error(
        "spec.auth.certificate: tls.crt, tls.key or the auth.ca bundle is unusable \
         (not PEM, no certificate, no CA, or the key does not match the first certificate of tls.crt)"
    )]
    InvalidCertificate,
    /// No pre-shared key was given.
    #[error("spec.auth.psk: no pre-shared key")]
    NoPsk,
    /// The endpoint refused the assembled configuration.
    #[error("{0}")]
    Config(#[from] strait_ike::ConfigError),
}

impl PeerError {
    /// The reason for status.
    pub fn reason(&self) -> StatusReason {
        match self {
            Self::IkeProposal { .. } | Self::EspProposal { .. } => StatusReason::InvalidProposal,
            Self::NoCertificate(_) | Self::InvalidCertificate => StatusReason::InvalidCertificate,
            Self::Id { .. }
            | Self::Subnet { .. }
            | Self::Lifetime { .. }
            | Self::NoPsk
            | Self::Config(_) => StatusReason::InvalidConfig,
        }
    }
}

/// Everything [`build`] needs besides the spec.
#[derive(Debug)]
pub struct Inputs {
    /// Our outer address.
    pub local_ip: IpAddr,
    /// The peer's outer address.
    pub remote_ip: IpAddr,
    /// Its other addresses, tried in order after `remote_ip` (`remote.fallbackAddresses`).
    pub fallback_ips: Vec<IpAddr>,
    /// Our IKE port (500).
    pub ike_port: u16,
    /// The peer's IKE port (`remote.port`, 500).
    pub remote_port: u16,
    /// The pre-shared key.
    pub psk: Option<SecretBytes>,
    /// Whether `onTraffic` can be honoured (kernel data plane with trap policies).
    pub on_traffic_supported: bool,
}

/// Certificate material as read from the Secrets, in PEM: `tls.crt` (our certificate, then any
/// intermediates), `tls.key`, and the `auth.ca` bundle. The key never prints.
pub struct CertificateInputs {
    /// `tls.crt`.
    pub chain: Vec<u8>,
    /// `tls.key`.
    pub key: SecretBytes,
    /// The CA bundle that must have issued the peer's certificate.
    pub ca: Vec<u8>,
}

impl core::fmt::Debug for CertificateInputs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CertificateInputs")
            .field("chain", &format_args!("{} bytes", self.chain.len()))
            .field("key", &"<redacted>")
            .field("ca", &format_args!("{} bytes", self.ca.len()))
            .finish()
    }
}

/// Collects [`CertificateInputs`] from the Secret keys a caller reads (in any order):
/// [`CertificateParts::offer`] every key read, then [`CertificateParts::complete`].
#[derive(Default)]
pub struct CertificateParts {
    chain: Option<Vec<u8>>,
    key: Option<SecretBytes>,
    ca: Option<Vec<u8>>,
}

impl core::fmt::Debug for CertificateParts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CertificateParts")
            .field("chain", &self.chain.is_some())
            .field("key", &self.key.is_some())
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

impl CertificateParts {
    /// Keeps `bytes` if `r` is the spec's `tls.crt`, `tls.key` or `auth.ca`.
    pub fn offer(&mut self, spec: &IPsecTunnelSpec, r: &SecretKeyRef, bytes: &[u8]) {
        if let Some(c) = &spec.auth.certificate
            && c.secret_ref.name == r.name
        {
            match r.key.as_str() {
                "tls.crt" => self.chain = Some(bytes.to_vec()),
                "tls.key" => self.key = Some(SecretBytes::from_slice(bytes)),
                _ => {}
            }
        }
        if spec.auth.ca.as_ref().is_some_and(|ca| &ca.secret_ref == r) {
            self.ca = Some(bytes.to_vec());
        }
    }

    /// The material, when all three parts were offered.
    pub fn complete(self) -> Option<CertificateInputs> {
        Some(CertificateInputs {
            chain: self.chain?,
            key: self.key?,
            ca: self.ca?,
        })
    }
}

/// A peer configuration and remarks for the operator (e.g. "onTraffic treated as respond").
#[derive(Debug)]
pub struct Built {
    /// The configuration.
    pub config: PeerConfig,
    /// Things a person should know about how the spec was interpreted.
    pub notes: Vec<String>,
}

/// Parses the IKE proposals of a spec (defaults when none).
///
/// # Errors
/// The first refused string, naming its token.
pub fn ike_proposals(spec: &IPsecTunnelSpec) -> Result<Vec<IkeProposal>, PeerError> {
    let list = spec
        .ike
        .as_ref()
        .map(|p| p.proposals.as_slice())
        .unwrap_or_default();
    if list.is_empty() {
        return Ok(proposal::default_ike());
    }
    list.iter()
        .enumerate()
        .map(|(index, text)| {
            text.parse::<IkeProposal>()
                .map_err(|source| PeerError::IkeProposal {
                    index,
                    text: text.clone(),
                    source,
                })
        })
        .collect()
}

/// Parses the ESP proposals of a spec (defaults when none).
///
/// # Errors
/// The first refused string, naming its token.
pub fn esp_proposals(spec: &IPsecTunnelSpec) -> Result<Vec<EspProposal>, PeerError> {
    let list = spec
        .esp
        .as_ref()
        .map(|p| p.proposals.as_slice())
        .unwrap_or_default();
    if list.is_empty() {
        return Ok(proposal::default_esp());
    }
    list.iter()
        .enumerate()
        .map(|(index, text)| {
            text.parse::<EspProposal>()
                .map_err(|source| PeerError::EspProposal {
                    index,
                    text: text.clone(),
                    source,
                })
        })
        .collect()
}

/// Assembles the endpoint's configuration for one tunnel authenticated with a PSK (a spec with
/// `auth.certificate` needs [`build_with`]).
///
/// # Errors
/// The first problem found.
pub fn build(spec: &IPsecTunnelSpec, inputs: Inputs) -> Result<Built, PeerError> {
    build_with(spec, inputs, None)
}

/// Assembles the endpoint's configuration for one tunnel; `certificate` is the material of
/// `auth.certificate` and `auth.ca` when the spec uses them.
///
/// # Errors
/// The first problem found.
pub fn build_with(
    spec: &IPsecTunnelSpec,
    inputs: Inputs,
    certificate: Option<CertificateInputs>,
) -> Result<Built, PeerError> {
    let mut notes = Vec::new();
    let ike = ike_proposals(spec)?;
    let esp = esp_proposals(spec)?;
    let local_id = identity("local", &spec.local.id)?;
    let remote_id = identity("remote", &spec.remote.id)?;
    let auth = if spec.auth.certificate.is_some() {
        if spec.auth.ca.is_none() {
            return Err(PeerError::NoCertificate(
                "auth.ca is needed to verify the peer's certificate",
            ));
        }
        let c = certificate.ok_or(PeerError::NoCertificate(
            "the certificate Secret (tls.crt, tls.key) or the CA could not be read",
        ))?;
        AuthConfig::Certificate(
            CertificateAuth::from_pem(&c.chain, c.key.as_bytes(), &c.ca)
                .map_err(|_| PeerError::InvalidCertificate)?,
        )
    } else {
        AuthConfig::Psk(inputs.psk.ok_or(PeerError::NoPsk)?)
    };
    // (the CRD's validation leaves proposal strings to the IKE crate, below)
    if let Some(e) = strait_crds::validate::validate(spec)
        .into_iter()
        .find(|e| e.field.starts_with("spec.ike.") || e.field.starts_with("spec.esp."))
    {
        return Err(PeerError::Lifetime {
            field: e.field,
            message: e.message,
        });
    }
    let lifetime = |p: &Option<strait_crds::ProposalSpec>, d: Duration| lifetime_of(p.as_ref(), d);
    let dpd = spec.dpd.as_ref();
    let secs = |d: Option<strait_crds::Duration>, dflt: Duration| {
        d.map_or(dflt, |d| Duration::from_secs(d.as_secs()))
    };
    let dpd = Dpd {
        interval: secs(dpd.and_then(|d| d.interval), DEFAULT_DPD_INTERVAL),
        timeout: secs(dpd.and_then(|d| d.timeout), DEFAULT_DPD_TIMEOUT),
    };
    let role = match spec.initiation {
        Initiation::Start => Role::Start,
        Initiation::Respond => Role::Respond,
        Initiation::OnTraffic if inputs.on_traffic_supported => Role::OnTraffic,
        Initiation::OnTraffic => {
            notes.push(
                "initiation onTraffic needs kernel trap policies, which this agent does not \
                 install (with --dataplane none, or not yet with kernel); this tunnel only responds"
                    .into(),
            );
            Role::Respond
        }
    };
    let config = PeerConfig {
        local_addr: SocketAddr::new(inputs.local_ip, inputs.ike_port),
        remote_addr: SocketAddr::new(inputs.remote_ip, inputs.remote_port),
        fallback_addrs: inputs
            .fallback_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, inputs.remote_port))
            .collect(),
        local_id,
        remote_id,
        auth,
        ike_proposals: ike,
        esp_proposals: esp,
        ike_lifetime: lifetime(&spec.ike, DEFAULT_IKE_LIFETIME),
        reauth_time: spec
            .ike
            .as_ref()
            .and_then(|p| p.reauth_time)
            .map(|d| Duration::from_secs(d.as_secs())),
        child_lifetime: lifetime(&spec.esp, DEFAULT_ESP_LIFETIME),
        dpd: Some(dpd),
        local_ts: subnets("local", &spec.local.subnets)?,
        remote_ts: subnets("remote", &spec.remote.subnets)?,
        role,
        force_encapsulation: spec
            .nat_traversal
            .as_ref()
            .is_some_and(|n| n.force_encapsulation),
        child_per_pair: spec.child_sas == strait_crds::ChildSas::PerSubnetPair,
    };
    config.validate()?;
    Ok(Built { config, notes })
}

fn subnets(side: &'static str, list: &[String]) -> Result<Vec<TsRange>, PeerError> {
    list.iter()
        .enumerate()
        .map(|(index, s)| {
            let c: Cidr = s.parse().map_err(|message| PeerError::Subnet {
                side,
                index,
                message,
            })?;
            TsRange::subnet(c.addr, c.prefix).ok_or_else(|| PeerError::Subnet {
                side,
                index,
                message: format!("{s:?} has an impossible prefix length"),
            })
        })
        .collect()
}

/// An identity as strongSwan writes it: an IP address, `@fqdn` or an FQDN, `user@fqdn`, or an
/// X.500 DN (`C=CH, O=Example, CN=gw1`); `%any` for the remote side only.
///
/// # Errors
/// The identity has none of these forms.
pub fn identity(side: &'static str, text: &str) -> Result<Identity, PeerError> {
    let err = |message: &str| PeerError::Id {
        side,
        id: text.to_owned(),
        message: message.to_owned(),
    };
    let t = text.trim();
    if t == "%any" {
        return if side == "remote" {
            Ok(Identity::Any)
        } else {
            Err(err("our own identity cannot be %any"))
        };
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(Identity::ip(ip));
    }
    if let Some(fqdn) = t.strip_prefix('@') {
        return if fqdn.is_empty() {
            Err(err("empty FQDN after '@'"))
        } else {
            Ok(Identity::Fqdn(fqdn.to_owned()))
        };
    }
    if t.contains('=') {
        return dn::encode(t).map(Identity::DerDn).map_err(|m| err(&m));
    }
    if let Some((user, host)) = t.split_once('@') {
        return if !user.is_empty() && strait_crds::validate::is_dns_name(host) {
            Ok(Identity::UserFqdn(t.to_owned()))
        } else {
            Err(err("not of the form user@fqdn"))
        };
    }
    if strait_crds::validate::is_dns_name(t) {
        return Ok(Identity::Fqdn(t.to_owned()));
    }
    Err(err(
        "not an IP address, FQDN, user@fqdn or X.500 DN (C=.., O=.., CN=..)",
    ))
}

/// A small X.500 DN string → DER encoder for ID_DER_ASN1_DN identities.
pub mod dn {
    /// (keyword, OID body bytes, string tag) for the attribute types strongSwan accepts most.
    const ATTRS: &[(&str, &[u8], Option<u8>)] = &[
        ("C", &[0x55, 0x04, 0x06], Some(TAG_PRINTABLE)),
        ("CN", &[0x55, 0x04, 0x03], None),
        ("SN", &[0x55, 0x04, 0x04], None),
        ("serialNumber", &[0x55, 0x04, 0x05], Some(TAG_PRINTABLE)),
        ("L", &[0x55, 0x04, 0x07], None),
        ("ST", &[0x55, 0x04, 0x08], None),
        ("O", &[0x55, 0x04, 0x0a], None),
        ("OU", &[0x55, 0x04, 0x0b], None),
        ("T", &[0x55, 0x04, 0x0c], None),
        ("GN", &[0x55, 0x04, 0x2a], None),
        (
            "E",
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
            Some(TAG_IA5),
        ),
        (
            "emailAddress",
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
            Some(TAG_IA5),
        ),
        (
            "DC",
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
            Some(TAG_IA5),
        ),
        (
            "UID",
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
            None,
        ),
    ];
    const TAG_UTF8: u8 = 0x0c;
    const TAG_PRINTABLE: u8 = 0x13;
    const TAG_IA5: u8 = 0x16;

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = body.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(body);
        out
    }

    fn printable(s: &str) -> bool {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c))
    }

    /// Encodes `C=CH, O=Example, CN=gw1` (RDNs separated by `,` or `/`) as a DER Name.
    ///
    /// # Errors
    /// An RDN without `=`, an unknown attribute type or an empty value.
    pub fn encode(text: &str) -> Result<Vec<u8>, String> {
        let sep = if text.contains(',') { ',' } else { '/' };
        let mut rdns = Vec::new();
        for part in text.split(sep).map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("RDN {part:?} has no '='"))?;
            let (k, v) = (k.trim(), v.trim());
            if v.is_empty() {
                return Err(format!("RDN {k:?} has an empty value"));
            }
            let (_, oid, tag) = ATTRS
                .iter()
                .find(|(name, _, _)| name.eq_ignore_ascii_case(k))
                .ok_or_else(|| format!("unknown DN attribute type {k:?}"))?;
            let tag = tag.unwrap_or(if printable(v) {
                TAG_PRINTABLE
            } else {
                TAG_UTF8
            });
            let mut atv = tlv(0x06, oid);
            atv.extend(tlv(tag, v.as_bytes()));
            rdns.extend(tlv(0x31, &tlv(0x30, &atv)));
        }
        if rdns.is_empty() {
            return Err("empty DN".into());
        }
        Ok(tlv(0x30, &rdns))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> IPsecTunnelSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const BASE: &str = "
local: {id: left.strait.example, address: 192.0.2.1, subnets: [198.51.100.0/24]}
remote: {id: right.strait.example, address: 192.0.2.2, subnets: [203.0.113.0/24]}
auth: {psk: {secretRef: {name: p, key: psk}}}
";

    fn inputs() -> Inputs {
        Inputs {
            local_ip: "192.0.2.1".parse().unwrap(),
            remote_ip: "192.0.2.2".parse().unwrap(),
            fallback_ips: Vec::new(),
            ike_port: 500,
            remote_port: 500,
            psk: Some(SecretBytes::from_slice(b"secret")),
            on_traffic_supported: false,
        }
    }

    fn ike_data(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/ike/tests/data/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    const CERT_BASE: &str = "
local: {id: 'C=CH, O=Example, CN=gw1', address: 192.0.2.1, subnets: [198.51.100.0/24]}
remote: {id: right.strait.example, address: 192.0.2.2, subnets: [203.0.113.0/24]}
auth:
  certificate: {secretRef: {name: tls}}
  ca: {secretRef: {name: ca, key: ca.crt}}
";

    #[test]
    fn certificate_maps_to_certificate_auth() {
        let s = spec(CERT_BASE);
        let mut i = inputs();
        i.psk = None;
        let mut parts = CertificateParts::default();
        let r = |name: &str, key: &str| SecretKeyRef {
            name: name.into(),
            key: key.into(),
        };
        parts.offer(&s, &r("tls", "tls.key"), &ike_data("rsa.key"));
        parts.offer(&s, &r("other", "tls.crt"), b"ignored");
        parts.offer(&s, &r("ca", "ca.crt"), &ike_data("ca.pem"));
        assert!(!format!("{parts:?}").contains("PRIVATE"));
        parts.offer(&s, &r("tls", "tls.crt"), &ike_data("rsa.pem"));
        let c = parts.complete().unwrap();
        let dbg = format!("{c:?}");
        assert!(
            dbg.contains("<redacted>") && !dbg.contains("PRIVATE"),
            "{dbg}"
        );
        let b = build_with(&s, i, Some(c)).unwrap();
        assert!(matches!(b.config.auth, AuthConfig::Certificate(_)));
        assert!(matches!(b.config.local_id, Identity::DerDn(_)));
        assert!(!format!("{:?}", b.config).contains("PRIVATE"));
    }

    #[test]
    fn certificate_problems_are_invalid_certificate() {
        let s = spec(CERT_BASE);
        let e = build(&s, inputs()).unwrap_err();
        assert_eq!(e.reason().as_str(), "InvalidCertificate", "{e}");
        // a key that is not the certificate's
        let c = CertificateInputs {
            chain: ike_data("rsa.pem"),
            key: SecretBytes::new(ike_data("ecdsa.key")),
            ca: ike_data("ca.pem"),
        };
        let e = build_with(&s, inputs(), Some(c)).unwrap_err();
        assert_eq!(e.reason().as_str(), "InvalidCertificate", "{e}");
        assert!(e.to_string().contains("tls.key"), "{e}");
        // garbage instead of PEM
        let c = CertificateInputs {
            chain: b"not pem".to_vec(),
            key: SecretBytes::new(ike_data("rsa.key")),
            ca: ike_data("ca.pem"),
        };
        assert_eq!(
            build_with(&s, inputs(), Some(c))
                .unwrap_err()
                .reason()
                .as_str(),
            "InvalidCertificate"
        );
    }

    #[test]
    fn identities_by_form() {
        assert_eq!(
            identity("local", "192.0.2.1").unwrap(),
            Identity::Ipv4("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            identity("local", "gw.example.com").unwrap(),
            Identity::Fqdn("gw.example.com".into())
        );
        assert_eq!(
            identity("local", "@gw").unwrap(),
            Identity::Fqdn("gw".into())
        );
        assert_eq!(
            identity("local", "ops@example.com").unwrap(),
            Identity::UserFqdn("ops@example.com".into())
        );
        assert!(matches!(
            identity("local", "C=CH, O=Example, CN=gw1").unwrap(),
            Identity::DerDn(_)
        ));
        assert_eq!(identity("remote", "%any").unwrap(), Identity::Any);
        assert!(identity("local", "%any").is_err());
        assert!(identity("local", "not an id!").is_err());
    }

    #[test]
    fn dn_der_matches_openssl() {
        // `openssl req -subj /C=CH/O=Example/CN=gw1` subject DER
        let der = dn::encode("C=CH, O=Example, CN=gw1").unwrap();
        let expect: Vec<u8> = [
            &[0x30, 0x2d][..],
            &[
                0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02,
            ],
            b"CH",
            &[
                0x31, 0x10, 0x30, 0x0e, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x13, 0x07,
            ],
            b"Example",
            &[
                0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x03,
            ],
            b"gw1",
        ]
        .concat();
        assert_eq!(der, expect);
        assert!(dn::encode("C=CH, XX=1").unwrap_err().contains("XX"));
    }

    #[test]
    fn spec_maps_to_peer_config() {
        let s = spec(&format!(
            "{BASE}ike: {{proposals: [aes256gcm16-prfsha256-x25519], lifetime: 2h}}\n\
             esp: {{proposals: [aes256gcm16-x25519]}}\ndpd: {{interval: 2s, timeout: 6s}}\n\
             initiation: onTraffic\n"
        ));
        let b = build(&s, inputs()).unwrap();
        let c = &b.config;
        assert_eq!(c.role, Role::Respond, "onTraffic without kernel responds");
        assert_eq!(b.notes.len(), 1);
        assert_eq!(c.ike_proposals.len(), 1);
        assert_eq!(
            c.ike_proposals[0].to_string(),
            "aes256gcm16-prfsha256-x25519"
        );
        assert_eq!(c.esp_proposals[0].to_string(), "aes256gcm16-x25519");
        assert_eq!(c.ike_lifetime.rekey_time, Duration::from_secs(7200));
        assert_eq!(c.child_lifetime.rekey_time, DEFAULT_ESP_LIFETIME);
        assert_eq!(
            c.dpd,
            Some(Dpd {
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(6)
            })
        );
        assert_eq!(c.local_ts.len(), 1);
        assert_eq!(c.remote_addr, "192.0.2.2:500".parse().unwrap());
    }

    #[test]
    fn lifetimes_follow_strongswan_s_derivations() {
        let s = spec(&format!(
            "{BASE}ike: {{lifetime: 4h, maxLifetime: 5h, reauthTime: 12h}}\n\
             esp: {{lifetime: 1h, randTime: 5m, rekeyBytes: 1000000, lifePackets: 20000}}\n"
        ));
        let c = build(&s, inputs()).unwrap().config;
        let h = |n: u64| Duration::from_secs(n * 3600);
        // IKE: the hard limit given, the jitter the rest of the way to it
        assert_eq!(
            (
                c.ike_lifetime.rekey_time,
                c.ike_lifetime.life_time,
                c.ike_lifetime.rand_time
            ),
            (h(4), h(5), h(1))
        );
        assert_eq!((c.ike_lifetime.bytes, c.ike_lifetime.packets), (None, None));
        assert_eq!(c.reauth_time, Some(h(12)));
        // ESP: +10 % hard limit, the jitter given; bytes rekey at 1 MB and go at 1.1 MB;
        // only a packet hard limit: rekey at 90 % of it
        let l = &c.child_lifetime;
        assert_eq!(
            (l.rekey_time, l.life_time, l.rand_time),
            (h(1), Duration::from_secs(3960), Duration::from_secs(300))
        );
        assert_eq!(
            l.bytes,
            Some(Volume {
                rekey: 1_000_000,
                rand: 100_000,
                life: 1_100_000
            })
        );
        assert_eq!(
            l.packets,
            Some(Volume {
                rekey: 18_000,
                rand: 0,
                life: 20_000
            })
        );
        // contradictions are refused with the field named, in cluster mode too
        let bad = spec(&format!("{BASE}ike: {{lifetime: 4h, maxLifetime: 3h}}\n"));
        let e = build(&bad, inputs()).unwrap_err();
        assert_eq!(e.reason(), StatusReason::InvalidConfig);
        assert!(
            e.to_string()
                .starts_with("spec.ike.maxLifetime: 3h must be longer"),
            "{e}"
        );
        // nothing set: 24h / 1h, +10 %, no volume limits
        let c = build(&spec(BASE), inputs()).unwrap().config;
        assert_eq!(c.child_lifetime, Lifetime::from_rekey(DEFAULT_ESP_LIFETIME));
    }

    #[test]
    fn bad_proposals_name_the_token() {
        let s = spec(&format!(
            "{BASE}ike: {{proposals: [aes256-sha256-modp2048, aes256-sha1-modp1024]}}\n"
        ));
        let e = build(&s, inputs()).unwrap_err().to_string();
        assert!(e.contains("spec.ike.proposals[1]"), "{e}");
        assert!(e.contains("sha1") || e.contains("modp1024"), "{e}");
        let s = spec(&format!("{BASE}esp: {{proposals: [aes256gcm16-bogus]}}\n"));
        let e = build(&s, inputs()).unwrap_err().to_string();
        assert!(
            e.contains("bogus") && e.contains("spec.esp.proposals[0]"),
            "{e}"
        );
    }

    #[test]
    fn psk_never_in_debug_or_errors() {
        let s = spec(BASE);
        let b = build(&s, inputs()).unwrap();
        assert!(!format!("{:?}", b.config).contains("secret"));
    }
}
