//! What the driver configures: the endpoint as a whole ([`EndpointConfig`]) and one tunnel to a
//! peer ([`PeerConfig`]). Secrets live in zeroizing buffers and never print.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;

use std::sync::Arc;

use crate::codec::{IdType, Identification, TsRange};
use crate::crypto::keys::SecretBytes;
use crate::crypto::sign::SigningKey;
use crate::crypto::x509::Certificate;
use crate::proposal::{EspProposal, IkeProposal};

/// Retransmission schedule of our requests (strongSwan's `retransmit_*` settings): the k-th
/// retransmission is sent `timeout × base^(k-1)` after the previous send; after `tries`
/// retransmissions and one more wait we give up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetransmitConfig {
    /// First timeout (strongSwan: 4 s).
    pub timeout: Duration,
    /// Backoff factor (strongSwan: 1.8). Clamped to 1.0..=10.0.
    pub base: f64,
    /// Retransmissions before giving up (strongSwan: 5). Clamped to at most 20.
    pub tries: u32,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(4),
            base: 1.8,
            tries: 5,
        }
    }
}

/// Endpoint-wide settings.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The IKE port (500).
    pub ike_port: u16,
    /// The NAT-T port (4500): datagrams received on it carry the non-ESP marker.
    pub natt_port: u16,
    /// Retransmission schedule.
    pub retransmit: RetransmitConfig,
    /// How long a responder keeps an IKE SA whose IKE_AUTH never came (strongSwan: 30 s).
    pub half_open_timeout: Duration,
    /// Half-open IKE SAs (all peers) above which IKE_SA_INIT requests must carry a cookie.
    pub cookie_threshold: usize,
    /// Half-open IKE SAs from one IP address above which a cookie is required (charon: 3).
    pub cookie_threshold_per_ip: usize,
    /// Half-open IKE SAs from one IP address at which its IKE_SA_INIT requests are dropped
    /// unanswered, cookie or not (strongSwan's `block_threshold`, 5): a cookie only proves
    /// that the source can receive, so without it one real host makes us compute a key
    /// exchange and keep state for every request it sends (review S-1).
    pub block_threshold_per_ip: usize,
    /// Half-open IKE SAs in all at which IKE_SA_INIT requests are dropped unanswered
    /// (strongSwan's `init_limit_half_open`; `None`: no limit, strongSwan's default).
    pub half_open_limit: Option<usize>,
    /// Most octets of SKF fragments a half-open SA (the peer has not authenticated yet)
    /// collects for one message; beyond them its fragments are dropped. The peer holds the SA's
    /// keys after IKE_SA_INIT alone, so this bounds what any source can make us buffer. An
    /// IKE_AUTH with a chain of three RSA-4096 certificates is about 7 KiB.
    pub preauth_fragment_bytes: usize,
    /// How long a cookie secret is used before it is replaced (the previous one is still
    /// accepted for one more period).
    pub cookie_secret_lifetime: Duration,
    /// RFC 7383 fragmentation: announce IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT, fragment
    /// our large messages when the peer announced it too, and reassemble the peer's fragments
    /// (dropped when this is off). strongSwan: `fragmentation = yes`.
    pub fragmentation: bool,
    /// Largest IP datagram (IP and UDP headers, non-ESP marker and IKE message) we send for a
    /// protected IKE message when fragmentation is in use; longer messages are sent as
    /// fragments that fit (strongSwan's `fragment_size`, 1280). IP options are not counted.
    /// IKE_SA_INIT is never fragmented.
    pub fragment_size: usize,
    /// RFC 3948 §2.3: while we are behind a NAT, a one-octet NAT keepalive goes to the peer's
    /// NAT-T port whenever nothing else was sent to it for this long, so the NAT keeps its
    /// mapping and the peer's ESP still reaches us (strongSwan's `keep_alive`, 20 s). `None`:
    /// never.
    pub nat_keepalive: Option<Duration>,
    /// Also emit the success-path [`crate::diagnostic::Diagnostic`]s (the tunnel chosen, the
    /// narrowed selectors) and one per dropped datagram; failures are emitted regardless. The
    /// agent turns it on when its debug log is enabled.
    pub diagnostics: bool,
    /// As responder, answer SINGLE_PAIR_REQUIRED (RFC 7296 §3.10.1) to a CHILD SA request
    /// whose selectors are more than one range on either side, as some gateways do. For
    /// tests and simulations of such peers: the agent never sets it.
    pub single_pair_only: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            ike_port: 500,
            natt_port: 4500,
            retransmit: RetransmitConfig::default(),
            half_open_timeout: Duration::from_secs(30),
            cookie_threshold: 30,
            cookie_threshold_per_ip: 3,
            block_threshold_per_ip: 5,
            half_open_limit: None,
            preauth_fragment_bytes: 16 * 1024,
            cookie_secret_lifetime: Duration::from_secs(120),
            fragmentation: true,
            fragment_size: 1280,
            nat_keepalive: Some(Duration::from_secs(20)),
            diagnostics: false,
            single_pair_only: false,
        }
    }
}

/// An IKE identity (RFC 7296 §3.5), as strongSwan writes them.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identity {
    /// ID_IPV4_ADDR.
    Ipv4(Ipv4Addr),
    /// ID_IPV6_ADDR.
    Ipv6(Ipv6Addr),
    /// ID_FQDN.
    Fqdn(String),
    /// ID_RFC822_ADDR (`user@fqdn`).
    UserFqdn(String),
    /// ID_DER_ASN1_DN: the DER of an X.500 Name.
    DerDn(Vec<u8>),
    /// Accept any identity from the peer (only meaningful as a remote identity).
    Any,
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Ipv4(a) => write!(f, "{a}"),
            Self::Ipv6(a) => write!(f, "{a}"),
            Self::Fqdn(s) => write!(f, "{s}"),
            Self::UserFqdn(s) => write!(f, "{s}"),
            Self::DerDn(d) => write!(f, "DN({} bytes)", d.len()),
            Self::Any => f.write_str("%any"),
        }
    }
}

impl Identity {
    /// The identity for an IP address.
    pub fn ip(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => Self::Ipv4(a),
            IpAddr::V6(a) => Self::Ipv6(a),
        }
    }

    /// The ID payload we send for this identity (`None` for [`Identity::Any`]).
    pub fn to_payload(&self) -> Option<Identification> {
        Some(match self {
            Self::Ipv4(a) => Identification::ipv4(*a),
            Self::Ipv6(a) => Identification::ipv6(*a),
            Self::Fqdn(s) => Identification::fqdn(s),
            Self::UserFqdn(s) => Identification::rfc822(s),
            Self::DerDn(d) => Identification::der_dn(d),
            Self::Any => return None,
        })
    }

    /// Whether a received ID payload names this identity (FQDN and user@FQDN compare
    /// case-insensitively, as DNS names do).
    pub fn matches(&self, id: &Identification) -> bool {
        match self {
            Self::Any => true,
            Self::Fqdn(s) => {
                id.id_type == IdType::FQDN && id.data.eq_ignore_ascii_case(s.as_bytes())
            }
            Self::UserFqdn(s) => {
                id.id_type == IdType::RFC822_ADDR && id.data.eq_ignore_ascii_case(s.as_bytes())
            }
            Self::DerDn(d) => id.id_type == IdType::DER_ASN1_DN && crate::dn::matches(d, &id.data),
            _ => self.to_payload().is_some_and(|p| &p == id),
        }
    }
}

/// How this end authenticates and how it checks the peer.
#[derive(Clone)]
#[non_exhaustive]
pub enum AuthConfig {
    /// A pre-shared key (AUTH method 2), used in both directions.
    Psk(SecretBytes),
    /// Certificates: we sign with our key (RFC 7427 Digital Signature, AUTH method 14) and send
    /// our chain; the peer's chain must lead to one of our trust anchors.
    Certificate(CertificateAuth),
}

impl core::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Psk(_) => f.write_str("Psk(<redacted>)"),
            Self::Certificate(c) => f.debug_tuple("Certificate").field(c).finish(),
        }
    }
}

/// Certificate authentication material.
///
/// The private key stays inside aws-lc, which clears it when the last clone of this value is
/// dropped; it never prints.
#[derive(Clone)]
pub struct CertificateAuth {
    /// Our certificate, then any intermediates to send with it (CERT payloads, in this order).
    pub chain: Vec<Certificate>,
    /// Our private key; it must match the first certificate of `chain`.
    pub key: Arc<SigningKey>,
    /// Trust anchors for the peer's certificate (also announced in CERTREQ).
    pub ca: Vec<Certificate>,
}

impl CertificateAuth {
    /// Builds the material from PEM text as a `kubernetes.io/tls` Secret holds it: `tls.crt`
    /// (our certificate, then intermediates), `tls.key`, and the CA bundle for the peer.
    ///
    /// # Errors
    /// [`ConfigError::InvalidCertificate`] when something does not parse or the key does not
    /// match the certificate.
    pub fn from_pem(chain: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, ConfigError> {
        let me = Self {
            chain: Certificate::from_pem(chain).map_err(|_| ConfigError::InvalidCertificate)?,
            key: Arc::new(SigningKey::from_pem(key).map_err(|_| ConfigError::InvalidCertificate)?),
            ca: Certificate::from_pem(ca).map_err(|_| ConfigError::InvalidCertificate)?,
        };
        me.validate()?;
        Ok(me)
    }

    /// Checks that there is a certificate, that the key belongs to it and that there is at
    /// least one trust anchor.
    ///
    /// # Errors
    /// [`ConfigError::InvalidCertificate`] for the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let leaf = self.chain.first().ok_or(ConfigError::InvalidCertificate)?;
        let public = leaf
            .public_key()
            .map_err(|_| ConfigError::InvalidCertificate)?;
        if public != self.key.public_key() || self.ca.is_empty() {
            return Err(ConfigError::InvalidCertificate);
        }
        Ok(())
    }
}

impl core::fmt::Debug for CertificateAuth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CertificateAuth")
            .field("chain", &self.chain)
            .field("key", &self.key)
            .field("ca", &self.ca)
            .finish()
    }
}

/// When the tunnel is brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Initiate as soon as the driver calls [`crate::Endpoint::initiate`].
    Start,
    /// Only answer the peer.
    Respond,
    /// Initiate when the kernel reports traffic ([`crate::Endpoint::acquire`]).
    OnTraffic,
}

/// Rekey timing of an SA (strongSwan's `rekey_time`, `rand_time`, `life_time`): rekeying starts
/// `rekey_time` minus a random jitter in `0..rand_time` after installation; `life_time` is the
/// hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Nominal rekey time.
    pub rekey_time: Duration,
    /// Up to this much is subtracted at random from `rekey_time`.
    pub rand_time: Duration,
    /// Hard lifetime.
    pub life_time: Duration,
    /// CHILD SAs only: limits on the bytes through the SA, counted by the data plane.
    pub bytes: Option<Volume>,
    /// CHILD SAs only: limits on the packets through the SA.
    pub packets: Option<Volume>,
}

impl Lifetime {
    /// strongSwan's derivation from one lifetime: rekey at `lifetime`, jitter 10 %, hard
    /// limit 110 %; no volume limits.
    pub fn from_rekey(rekey_time: Duration) -> Self {
        Self {
            rekey_time,
            rand_time: rekey_time / 10,
            life_time: rekey_time.saturating_add(rekey_time / 10),
            bytes: None,
            packets: None,
        }
    }
}

/// A volume limit of a CHILD SA (strongSwan's `rekey_bytes`, `rand_bytes`, `life_bytes` and
/// their packet twins): the data plane reports the soft limit (rekey at `rekey` minus a jitter
/// in `0..rand`) and removes the SA at `life`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Volume {
    /// Nominal rekey point.
    pub rekey: u64,
    /// Up to this much is subtracted at random from `rekey`.
    pub rand: u64,
    /// Hard limit.
    pub life: u64,
}

impl Volume {
    /// strongSwan's derivation: hard limit `rekey` + 10 %, jitter the difference.
    pub fn from_rekey(rekey: u64) -> Self {
        let life = rekey
            .saturating_add(rekey / 10)
            .max(rekey.saturating_add(1));
        Self {
            rekey,
            rand: life - rekey,
            life,
        }
    }

    /// The soft limit after jitter drawn from `random` (at least 1, below `life`).
    pub fn soft(&self, random: u64) -> u64 {
        let jitter = if self.rand == 0 {
            0
        } else {
            random % self.rand
        };
        self.rekey
            .saturating_sub(jitter)
            .clamp(1, self.life.saturating_sub(1).max(1))
    }
}

/// Dead peer detection: an empty INFORMATIONAL when nothing was heard for `interval`; the peer
/// is declared unreachable when no answer came within `timeout` (or retransmissions ran out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dpd {
    /// Quiet time before a liveness check.
    pub interval: Duration,
    /// How long a liveness check may go unanswered.
    pub timeout: Duration,
}

/// One tunnel to one peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Our address for this tunnel (the port is the IKE port, usually 500).
    pub local_addr: SocketAddr,
    /// The peer's address; an unspecified IP accepts any peer (responder only).
    pub remote_addr: SocketAddr,
    /// The peer's other addresses. An attempt to initiate that fails (no answer, a refusal,
    /// failed authentication) makes the next attempt use the next address, in order and
    /// round again; the address that worked is kept. As responder the peer is accepted from
    /// any of them.
    pub fallback_addrs: Vec<SocketAddr>,
    /// Our identity.
    pub local_id: Identity,
    /// The identity the peer must prove.
    pub remote_id: Identity,
    /// Authentication.
    pub auth: AuthConfig,
    /// IKE proposals, preferred first.
    pub ike_proposals: Vec<IkeProposal>,
    /// ESP proposals, preferred first; a key exchange group means PFS on CHILD SA rekeys.
    pub esp_proposals: Vec<EspProposal>,
    /// IKE SA lifetime.
    pub ike_lifetime: Lifetime,
    /// Reauthenticate this often (strongSwan's `reauth_time`; `None`: never): a new IKE SA
    /// and CHILD SAs, authenticated afresh, made before the old ones are deleted, by the side
    /// that initiates the tunnel. Jittered by `ike_lifetime.rand_time`, at most a tenth of the
    /// interval; an IKE rekey does not restart the count.
    pub reauth_time: Option<Duration>,
    /// CHILD SA lifetime.
    pub child_lifetime: Lifetime,
    /// Dead peer detection, if wanted.
    pub dpd: Option<Dpd>,
    /// Our protected subnets.
    pub local_ts: Vec<TsRange>,
    /// The peer's protected subnets.
    pub remote_ts: Vec<TsRange>,
    /// When to initiate.
    pub role: Role,
    /// Encapsulate ESP in UDP even without a NAT (we fake the NAT-D hash, as strongSwan does).
    pub force_encapsulation: bool,
    /// Create our CHILD SAs one per (local, remote) selector pair from the start, as after a
    /// SINGLE_PAIR_REQUIRED: IKE_AUTH's carries the first pair, the others follow in
    /// CREATE_CHILD_SAs.
    pub child_per_pair: bool,
}

/// A configuration the endpoint cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No IKE proposal.
    #[error("no IKE proposal")]
    NoIkeProposal,
    /// An IKE proposal without a key exchange method, PRF or cipher.
    #[error("incomplete IKE proposal")]
    IncompleteIkeProposal,
    /// No ESP proposal.
    #[error("no ESP proposal")]
    NoEspProposal,
    /// No traffic selector on one side.
    #[error("no traffic selectors")]
    NoTrafficSelectors,
    /// Our identity cannot be `%any`.
    #[error("local identity cannot be %any")]
    LocalIdAny,
    /// An initiating peer needs a concrete remote address.
    #[error("an initiator needs a remote address")]
    NoRemoteAddress,
    /// The remote address family differs from the local one.
    #[error("local and remote address families differ")]
    AddressFamilyMismatch,
    /// Certificate authentication without a usable certificate, a key that matches it, or a
    /// trust anchor.
    #[error("unusable certificate, private key or CA")]
    InvalidCertificate,
    /// A change that an existing tunnel cannot take in place ([`crate::Endpoint::reauthenticate`]):
    /// another remote address or role.
    #[error("a new remote address or role needs the tunnel removed and added again")]
    NotInPlace,
}

impl PeerConfig {
    /// A tunnel authenticated with a pre-shared key, initiated at once ([`Role::Start`]), IKE SA
    /// rekeyed daily and CHILD SAs hourly, no DPD, no forced encapsulation. It still needs its
    /// proposals and traffic selectors ([`PeerConfig::with_proposals`],
    /// [`PeerConfig::with_ts`]); other fields are set with struct update syntax.
    pub fn psk(
        local_addr: SocketAddr,
        local_id: Identity,
        remote_addr: SocketAddr,
        remote_id: Identity,
        psk: &[u8],
    ) -> Self {
        Self {
            local_addr,
            remote_addr,
            fallback_addrs: Vec::new(),
            local_id,
            remote_id,
            auth: AuthConfig::Psk(SecretBytes::from_slice(psk)),
            ike_proposals: Vec::new(),
            esp_proposals: Vec::new(),
            ike_lifetime: Lifetime::from_rekey(Duration::from_secs(24 * 3600)),
            reauth_time: None,
            child_lifetime: Lifetime::from_rekey(Duration::from_secs(3600)),
            dpd: None,
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            role: Role::Start,
            force_encapsulation: false,
            child_per_pair: false,
        }
    }

    /// With these IKE and ESP proposals, preferred first.
    #[must_use]
    pub fn with_proposals(self, ike: Vec<IkeProposal>, esp: Vec<EspProposal>) -> Self {
        Self {
            ike_proposals: ike,
            esp_proposals: esp,
            ..self
        }
    }

    /// With these traffic selectors: our subnets, then the peer's.
    #[must_use]
    pub fn with_ts(self, local: Vec<TsRange>, remote: Vec<TsRange>) -> Self {
        Self {
            local_ts: local,
            remote_ts: remote,
            ..self
        }
    }

    /// The same tunnel as the peer sees it: addresses, identities and traffic selectors
    /// swapped, answering only ([`Role::Respond`]); everything else (authentication included)
    /// as here.
    #[must_use]
    pub fn mirrored(&self) -> Self {
        Self {
            local_addr: self.remote_addr,
            remote_addr: self.local_addr,
            fallback_addrs: Vec::new(),
            local_id: self.remote_id.clone(),
            remote_id: self.local_id.clone(),
            local_ts: self.remote_ts.clone(),
            remote_ts: self.local_ts.clone(),
            role: Role::Respond,
            ..self.clone()
        }
    }

    /// The peer's addresses in the order attempts use them: `remote_addr`, then
    /// `fallback_addrs`.
    pub fn remote_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        core::iter::once(self.remote_addr).chain(self.fallback_addrs.iter().copied())
    }

    /// The first (local, remote) selector pair: what IKE_AUTH offers with `child_per_pair`.
    pub fn first_pair(&self) -> Option<(TsRange, TsRange)> {
        self.local_ts
            .first()
            .copied()
            .zip(self.remote_ts.first().copied())
    }

    /// Checks what the endpoint relies on.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ike_proposals.is_empty() {
            return Err(ConfigError::NoIkeProposal);
        }
        if self
            .ike_proposals
            .iter()
            .any(|p| p.ke.is_empty() || p.prf.is_empty() || p.encr.is_empty())
        {
            return Err(ConfigError::IncompleteIkeProposal);
        }
        if self.esp_proposals.is_empty() {
            return Err(ConfigError::NoEspProposal);
        }
        if self.local_ts.is_empty() || self.remote_ts.is_empty() {
            return Err(ConfigError::NoTrafficSelectors);
        }
        if self.local_id == Identity::Any {
            return Err(ConfigError::LocalIdAny);
        }
        if self.role != Role::Respond && self.remote_addr.ip().is_unspecified() {
            return Err(ConfigError::NoRemoteAddress);
        }
        if self
            .remote_addrs()
            .any(|a| a.is_ipv4() != self.local_addr.is_ipv4())
        {
            return Err(ConfigError::AddressFamilyMismatch);
        }
        if self.fallback_addrs.iter().any(|a| a.ip().is_unspecified()) {
            return Err(ConfigError::NoRemoteAddress);
        }
        if let AuthConfig::Certificate(c) = &self.auth {
            c.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Identity, PeerConfig, Role};
    use crate::codec::TsRange;
    use crate::proposal::{parse_esp_list, parse_ike_list};

    #[test]
    fn a_psk_tunnel_and_its_mirror_are_usable() -> Result<(), &'static str> {
        let net = |a: [u8; 4]| TsRange::subnet(a.into(), 16).ok_or("subnet");
        let a = PeerConfig::psk(
            ([192, 0, 2, 1], 500).into(),
            Identity::Fqdn("a.example".into()),
            ([198, 51, 100, 2], 500).into(),
            Identity::Fqdn("b.example".into()),
            b"secret",
        );
        assert!(a.validate().is_err(), "no proposals or selectors yet");
        let a = a
            .with_proposals(
                parse_ike_list(&["aes256gcm16-prfsha384-x25519"]).map_err(|_| "ike")?,
                parse_esp_list(&["aes256gcm16"]).map_err(|_| "esp")?,
            )
            .with_ts(vec![net([10, 1, 0, 0])?], vec![net([10, 2, 0, 0])?]);
        assert_eq!(a.validate(), Ok(()));
        let b = a.mirrored();
        assert_eq!(b.validate(), Ok(()));
        assert_eq!((b.local_addr, b.remote_addr), (a.remote_addr, a.local_addr));
        assert_eq!((&b.local_id, &b.remote_id), (&a.remote_id, &a.local_id));
        assert_eq!((&b.local_ts, &b.remote_ts), (&a.remote_ts, &a.local_ts));
        assert_eq!((a.role, b.role), (Role::Start, Role::Respond));
        Ok(())
    }
}
