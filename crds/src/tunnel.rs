//! The `IPsecTunnel` resource: spec (what the admin wants) and status (what the agents report).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

// CEL rules the API server runs. Kept beside `validate.rs`, which checks the same in standalone
// mode; the tokens are exactly those `strait_ike::proposal` accepts (weak ones are absent).
const SUBNETS_RULE: &str = "self.all(s, isCIDR(s) && cidr(s) == cidr(s).masked())";
const SUBNETS_MESSAGE: &str =
    "each subnet must be in CIDR notation with no host bits set, e.g. 10.0.0.0/24";
/// A DNS name, as a CEL regular expression literal.
macro_rules! dns_name_pattern {
    () => {
        "'^[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?([.][a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*[.]?$'"
    };
}
const REMOTE_ADDRESS_RULE: &str = concat!("isIP(self) || self.matches(", dns_name_pattern!(), ")");
const FALLBACK_ADDRESSES_RULE: &str = concat!(
    "self.all(a, isIP(a) || a.matches(",
    dns_name_pattern!(),
    "))"
);
const PROPOSALS_RULE: &str = "self.all(p, p.lowerAscii().split('-').all(t, t in ['aes128', 'aes256', 'aes128gcm16', 'aes128gcm128', 'aes256gcm16', 'aes256gcm128', 'sha256', 'sha2_256', 'sha384', 'sha2_384', 'sha512', 'sha2_512', 'prfsha256', 'prfsha384', 'prfsha512', 'modp2048', 'modp3072', 'modp4096', 'ecp256', 'ecp384', 'ecp521', 'x25519', 'curve25519', 'esn', 'noesn']))";
const PROPOSALS_MESSAGE: &str = "unknown or weak algorithm in a proposal: use strongSwan names such as aes256gcm16-prfsha384-x25519 or aes256-sha256-modp3072; 3des, des, md5, sha1, modp768/1024/1536 and null are refused as weak";

/// A site-to-site IPsec tunnel between this cluster and a remote gateway.
///
/// Cluster-scoped: a tunnel changes node routing, so only cluster admins create one. Secrets it
/// names are read from the operator's own namespace.
// kube's printcolumn(...) repeats `type_ = "string"` by design; clippy mistakes it for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strait.dev",
    version = "v1alpha1",
    kind = "IPsecTunnel",
    plural = "ipsectunnels",
    singular = "ipsectunnel",
    shortname = "ipsec",
    category = "strait",
    status = "IPsecTunnelStatus",
    derive = "PartialEq",
    doc = "A site-to-site IPsec tunnel negotiated with IKEv2 by Strait's agents.",
    printcolumn(
        name = "Remote",
        type_ = "string",
        json_path = ".spec.remote.address",
        description = "The remote gateway"
    ),
    printcolumn(
        name = "Gateway",
        type_ = "string",
        json_path = ".status.activeGateway",
        description = "The node that terminates the tunnel"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Local Subnets",
        type_ = "string",
        json_path = ".spec.local.subnets",
        priority = 1,
        description = "Subnets on this side"
    ),
    printcolumn(
        name = "Remote Subnets",
        type_ = "string",
        json_path = ".spec.remote.subnets",
        priority = 1,
        description = "Subnets on the remote side"
    ),
    printcolumn(
        name = "NAT",
        type_ = "string",
        json_path = ".status.gateways[*].natDetected",
        priority = 1,
        description = "Whether each reporting gateway detected a NAT"
    ),
    printcolumn(
        name = "IKE",
        type_ = "string",
        json_path = ".status.gateways[*].ikeProposal",
        priority = 1,
        description = "The negotiated IKE proposal"
    ),
    printcolumn(
        name = "ESP",
        type_ = "string",
        json_path = ".status.gateways[*].childSas[*].proposal",
        priority = 1,
        description = "The negotiated ESP proposal of each CHILD SA"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.dataPlane) || !has(self.dataPlane.mode) || self.dataPlane.mode != 'routeBased' || !has(self.initiation) || self.initiation != 'onTraffic'").message("initiation onTraffic needs dataPlane.mode policyBased (a route-based tunnel has no trap policies)"))]
pub struct IPsecTunnelSpec {
    /// Which nodes may terminate the tunnel (cluster mode only; ignored in standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,
    /// This side of the tunnel.
    pub local: LocalEndpoint,
    /// The remote site.
    pub remote: RemoteEndpoint,
    /// How both sides authenticate: exactly one of a pre-shared key or a certificate.
    pub auth: AuthSpec,
    /// IKE SA proposals and lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike: Option<ProposalSpec>,
    /// ESP (CHILD SA) proposals and lifetime; a key-exchange group in a proposal means PFS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esp: Option<ProposalSpec>,
    /// Dead peer detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpd: Option<DpdSpec>,
    /// NAT traversal behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_traversal: Option<NatTraversalSpec>,
    /// Whether this side starts the tunnel: `start` (at once), `onTraffic` (when the kernel sees
    /// matching traffic) or `respond` (wait for the peer).
    #[serde(default)]
    pub initiation: Initiation,
    /// How the subnets are carried: `one` CHILD SA for all of them (the default), or
    /// `perSubnetPair`, a CHILD SA for each (local subnet, remote subnet) pair, as Libreswan's
    /// `leftsubnets=`/`rightsubnets=` and many route-less gateways want. A peer that answers
    /// SINGLE_PAIR_REQUIRED gets `perSubnetPair` either way.
    #[serde(default, skip_serializing_if = "ChildSas::is_one")]
    pub child_sas: ChildSas,
    /// MTU of the inner packets; derived from the path MTU and ESP overhead when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9000))]
    pub mtu: Option<u32>,
    /// How traffic enters the tunnel on the gateway: policy-based (the default) or through an
    /// XFRM interface of its own (route-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane: Option<DataPlaneSpec>,
}

/// How traffic enters the tunnel on the gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.routeMetric) || self.mode == 'routeBased'").message("dataPlane.routeMetric needs dataPlane.mode routeBased"))]
pub struct DataPlaneSpec {
    /// `policyBased` (the default): XFRM policies for the tunnel's subnets pick its traffic, as
    /// strongSwan does by default. `routeBased`: an XFRM interface of the tunnel's own
    /// (`strait-x<N>`), its SAs and policies bound to it, and routes to the remote subnets
    /// through it; two tunnels may then have the same subnets (primary and backup, by
    /// `routeMetric`).
    #[serde(default)]
    pub mode: DataPlaneMode,
    /// Route-based only: the metric of the routes into the tunnel's interface. Of two tunnels
    /// to the same subnets, the one with the lower metric carries the traffic while it has a
    /// CHILD SA (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub route_metric: Option<u32>,
}

/// Policy-based or route-based.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum DataPlaneMode {
    /// Policies select the traffic.
    #[default]
    PolicyBased,
    /// Routes into an XFRM interface select the traffic.
    RouteBased,
}

impl DataPlaneSpec {
    /// The route metric of a route-based tunnel when none is set.
    pub const DEFAULT_ROUTE_METRIC: u32 = 100;
}

/// Where the tunnel may be terminated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Nodes whose labels match are gateway candidates; one of them is elected active.
    pub node_selector: LabelSelector,
}

/// This side's identity, address and protected subnets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalEndpoint {
    /// IKE identity: an IP address, an FQDN, `user@fqdn` or an X.500 DN (`C=CH, O=Example, CN=gw1`).
    #[schemars(length(min = 1, max = 255))]
    pub id: String,
    /// The local IKE address; the gateway node's IP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("local.address must be an IP address"))]
    pub address: Option<String>,
    /// Local subnets protected by the tunnel, in CIDR notation.
    #[schemars(length(min = 1, max = 64), inner(length(max = 49)))]
    #[x_kube(validation = Rule::new(SUBNETS_RULE).message(SUBNETS_MESSAGE))]
    pub subnets: Vec<String>,
}

/// The remote site's identity, address and subnets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteEndpoint {
    /// The identity the peer must prove (same forms as `local.id`).
    #[schemars(length(min = 1, max = 255))]
    pub id: String,
    /// The remote IKE address: an IP address or a DNS name.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(REMOTE_ADDRESS_RULE).message("remote.address must be an IP address or a DNS name"))]
    pub address: String,
    /// Further addresses of the peer (IP addresses or DNS names), tried in order after
    /// `address` when an attempt to initiate fails; the peer may also initiate from any of
    /// them. DNS names are resolved again before each attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new(FALLBACK_ADDRESSES_RULE).message("remote.fallbackAddresses must be IP addresses or DNS names"))]
    pub fallback_addresses: Vec<String>,
    /// The peer's IKE port (default 500). 4500 starts on the NAT-T port, with the non-ESP
    /// marker; with any port but 500 no switch to 4500 happens when a NAT is found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Remote subnets reachable through the tunnel, in CIDR notation.
    #[schemars(length(min = 1, max = 64), inner(length(max = 49)))]
    #[x_kube(validation = Rule::new(SUBNETS_RULE).message(SUBNETS_MESSAGE))]
    pub subnets: Vec<String>,
}

/// Authentication: exactly one of `psk` or `certificate`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.psk) != has(self.certificate)").message("set exactly one of auth.psk or auth.certificate"))]
#[x_kube(validation = Rule::new("!has(self.certificate) || has(self.ca)").message("auth.certificate needs auth.ca to verify the peer's certificate"))]
pub struct AuthSpec {
    /// A pre-shared key, read from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<SecretKeySource>,
    /// Our certificate and private key, from a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<SecretSource>,
    /// The CA certificate(s) that must have signed the peer's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeySource>,
}

/// A reference to one key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySource {
    /// The Secret and key.
    pub secret_ref: SecretKeyRef,
}

/// A Secret name and a key in it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name (in the operator's namespace, or a directory under `--secrets-dir`).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to a whole Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSource {
    /// The Secret.
    pub secret_ref: SecretRef,
}

/// A Secret name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Secret name (in the operator's namespace, or a directory under `--secrets-dir`).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Proposals and lifetime, strongSwan style.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProposalSpec {
    /// Proposals in strongSwan notation, most preferred first, e.g. `aes256gcm16-prfsha384-x25519`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = Rule::new(PROPOSALS_RULE).message(PROPOSALS_MESSAGE))]
    pub proposals: Vec<String>,
    /// How long an SA lives before it is rekeyed (IKE default 24h, ESP default 1h);
    /// strongSwan's `rekey_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Duration>,
    /// The hard limit: an SA not rekeyed by then is deleted (default: lifetime + 10 %).
    /// strongSwan's `life_time` for CHILD SAs, `rekey_time + over_time` for IKE SAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Duration>,
    /// Up to this much earlier than `lifetime`, at random, the rekey starts, so that both ends
    /// and many tunnels do not rekey at once (default: maxLifetime - lifetime); `rand_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rand_time: Option<Duration>,
    /// IKE only: reauthenticate this often (strongSwan's `reauth_time`; off by default): a new
    /// IKE SA with its CHILD SAs, authenticated afresh, up before the old ones are deleted.
    /// Jittered by `randTime`, by at most a tenth of this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reauth_time: Option<Duration>,
    /// ESP only: rekey after this many bytes through a CHILD SA (either direction, counted by
    /// the kernel); strongSwan's `rekey_bytes`. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rekey_bytes: Option<u64>,
    /// ESP only: the hard byte limit (default: rekeyBytes + 10 %); `life_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub life_bytes: Option<u64>,
    /// ESP only: rekey after this many packets; `rekey_packets`. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rekey_packets: Option<u64>,
    /// ESP only: the hard packet limit (default: rekeyPackets + 10 %); `life_packets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub life_packets: Option<u64>,
}

/// Dead peer detection timers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DpdSpec {
    /// Idle time after which a liveness check is sent (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time without an answer after which the peer is declared dead (default 150s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// NAT traversal.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NatTraversalSpec {
    /// Encapsulate ESP in UDP/4500 even when no NAT is detected.
    #[serde(default)]
    pub force_encapsulation: bool,
}

/// How many CHILD SAs carry a tunnel's subnets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum ChildSas {
    /// One CHILD SA with every subnet.
    #[default]
    One,
    /// One CHILD SA per (local subnet, remote subnet) pair.
    PerSubnetPair,
}

impl ChildSas {
    /// Whether this is the default (`one`).
    pub fn is_one(&self) -> bool {
        *self == Self::One
    }
}

/// Who starts the tunnel.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum Initiation {
    /// Initiate as soon as the tunnel is configured, and keep it up.
    #[default]
    Start,
    /// Install trap policies and initiate when matching traffic appears.
    OnTraffic,
    /// Never initiate; wait for the peer.
    Respond,
}

/// What the operator and the agents report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct IPsecTunnelStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `IkeEstablished`, `ChildSasInstalled`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The node currently elected to terminate the tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_gateway: Option<String>,
    /// One entry per gateway node, each written by that node's agent under its own field manager.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub gateways: Vec<GatewayStatus>,
}

/// One gateway node's view of the tunnel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// The node name (the list-map key).
    pub node: String,
    /// IKE SA state: `Connecting`, `Established` or `Down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike_state: Option<IkeState>,
    /// The negotiated IKE proposal, strongSwan notation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike_proposal: Option<String>,
    /// IKE SPIs, initiator and responder, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike_spis: Option<String>,
    /// Local and remote IKE endpoints as `addr:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<String>,
    /// The remote IKE endpoint as `addr:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<String>,
    /// Whether a NAT was detected between the peers (ESP then travels in UDP/4500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_detected: Option<bool>,
    /// When the IKE SA was established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_at: Option<Time>,
    /// Installed CHILD SAs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub child_sas: Vec<ChildSaStatus>,
    /// The last error this agent saw, if the tunnel is not up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
}

/// The IKE SA's state as an agent reports it. A rekey is not a state of its own: the SA stays
/// `Established` while its successor is negotiated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum IkeState {
    /// Initiating, or waiting to initiate again after a failure.
    Connecting,
    /// An IKE SA is established.
    Established,
    /// No IKE SA, and none is being initiated (a responder waiting, or a tunnel that cannot
    /// start: `lastError` says why).
    Down,
}

impl IkeState {
    /// The name as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "Connecting",
            Self::Established => "Established",
            Self::Down => "Down",
        }
    }
}

/// One CHILD SA pair.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChildSaStatus {
    /// Inbound SPI, hex.
    pub spi_in: String,
    /// Outbound SPI, hex.
    pub spi_out: String,
    /// The negotiated ESP proposal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<String>,
    /// Local traffic selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_ts: Vec<String>,
    /// Remote traffic selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ts: Vec<String>,
    /// `tunnel` or `transport`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Whether ESP is encapsulated in UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encapsulated: Option<bool>,
    /// When it was installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_at: Option<Time>,
    /// When it will be rekeyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekey_at: Option<Time>,
}

/// An error a person can act on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// CamelCase reason, e.g. `AuthenticationFailed`.
    pub reason: String,
    /// What happened, for a person.
    pub message: String,
    /// When it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}
