//! What the endpoint tells the driver: install or delete CHILD SAs, IKE SA up/down/rekeyed.

use core::net::SocketAddr;
use core::time::Duration;

use crate::codec::{Spi, TsRange};
use crate::crypto::alg::{Encr, Esn, Integ};
use crate::crypto::keys::SecretBytes;
use crate::proposal::IkeChoice;
use crate::reason::Reason;

/// A configured tunnel, as returned by [`crate::Endpoint::add_peer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

/// One CHILD SA (a pair of ESP SAs), unique within an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChildSaId(pub u64);

/// An ESP SPI (4 bytes, network order).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EspSpi(pub [u8; 4]);

impl core::fmt::Debug for EspSpi {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:08x}", u32::from_be_bytes(self.0))
    }
}

/// The SPIs of an IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IkeSpis {
    /// The original initiator's SPI.
    pub initiator: Spi,
    /// The responder's SPI.
    pub responder: Spi,
}

/// What NAT detection found (RFC 7296 §2.23).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatState {
    /// Our address as the peer saw it differs from ours: we are behind a NAT.
    pub local_behind_nat: bool,
    /// The peer's address differs from the one it reported: the peer is behind a NAT.
    pub remote_behind_nat: bool,
    /// Encapsulation was forced by configuration (we faked our NAT-D hash).
    pub forced: bool,
}

impl NatState {
    /// Whether IKE moves to port 4500 and ESP is UDP-encapsulated.
    pub fn encapsulate(&self) -> bool {
        self.local_behind_nat || self.remote_behind_nat || self.forced
    }
}

/// UDP encapsulation of ESP (RFC 3948): the ports ESP-in-UDP uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpEncap {
    /// Our port (4500).
    pub local_port: u16,
    /// The peer's port (4500, or what its NAT mapped it to).
    pub remote_port: u16,
}

/// IPsec mode of a CHILD SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Tunnel mode (the only one this endpoint negotiates).
    Tunnel,
}

/// ESP keys of one CHILD SA: zeroized on drop; `Debug` prints lengths only.
#[derive(Debug, Clone)]
pub struct ChildKeys {
    /// Inbound cipher key (with the 4-byte salt at the end for AES-GCM, as XFRM wants it).
    pub encr_in: SecretBytes,
    /// Inbound integrity key (empty for AEAD).
    pub integ_in: SecretBytes,
    /// Outbound cipher key.
    pub encr_out: SecretBytes,
    /// Outbound integrity key.
    pub integ_out: SecretBytes,
}

/// Lifetimes of a CHILD SA for the kernel: soft expiry triggers a rekey
/// ([`crate::Endpoint::expire_child`]), hard expiry removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildLifetimes {
    /// Time until rekeying starts (jitter already applied).
    pub soft: Duration,
    /// Time until the SA must be gone.
    pub hard: Duration,
    /// Bytes until rekeying starts, and until the SA must be gone (jitter applied).
    pub bytes: Option<(u64, u64)>,
    /// Packets until rekeying starts, and until the SA must be gone.
    pub packets: Option<(u64, u64)>,
}

/// Install one CHILD SA (both directions) in the data plane.
#[derive(Debug, Clone)]
pub struct ChildSaInstall {
    /// The tunnel.
    pub peer: PeerId,
    /// This CHILD SA.
    pub child: ChildSaId,
    /// SPI of the inbound ESP SA (we chose it).
    pub spi_in: EspSpi,
    /// SPI of the outbound ESP SA (the peer chose it).
    pub spi_out: EspSpi,
    /// Keys.
    pub keys: ChildKeys,
    /// Cipher.
    pub encr: Encr,
    /// Integrity algorithm (`None` with an AEAD).
    pub integ: Option<Integ>,
    /// Extended sequence numbers.
    pub esn: Esn,
    /// Our traffic selectors (as negotiated).
    pub local_ts: Vec<TsRange>,
    /// The peer's traffic selectors.
    pub remote_ts: Vec<TsRange>,
    /// Mode.
    pub mode: Mode,
    /// UDP encapsulation, when NAT-T is in use.
    pub encapsulation: Option<UdpEncap>,
    /// Our outer address.
    pub local_addr: SocketAddr,
    /// The peer's outer address.
    pub remote_addr: SocketAddr,
    /// Lifetimes.
    pub lifetimes: ChildLifetimes,
    /// The CHILD SA this one replaces (rekey): delete that one after this one is installed,
    /// when the matching [`Event::ChildSaDelete`] arrives.
    pub replaces: Option<ChildSaId>,
    /// Whether we sent the request of the exchange that created this CHILD SA. A rekey
    /// responder should keep sending on the old SA until the old one's Delete arrives: the
    /// initiator installs the new pair only when it gets the response.
    pub initiator: bool,
    /// This CHILD SA is the redundant one of a rekey collision (RFC 7296 §2.8.1): we created it,
    /// we already queued its Delete, and the peer deletes it on receipt. Install the inbound SA
    /// only and never send on it: packets sent on it while the Delete is in flight would reach a
    /// peer that has already removed it. The old SA carries traffic until the surviving one's
    /// outbound SA is installed.
    pub redundant: bool,
}

/// A CHILD SA taken back from saved state: what [`ChildSaInstall`] said of it, without the
/// keys (the kernel holds them) and with its lifetimes from now.
#[derive(Debug, Clone)]
pub struct ChildSaResumed {
    /// The tunnel.
    pub peer: PeerId,
    /// This CHILD SA, under this endpoint's id.
    pub child: ChildSaId,
    /// Inbound SPI.
    pub spi_in: EspSpi,
    /// Outbound SPI.
    pub spi_out: EspSpi,
    /// Encryption.
    pub encr: Encr,
    /// Integrity, `None` with an AEAD.
    pub integ: Option<Integ>,
    /// Extended sequence numbers.
    pub esn: Esn,
    /// Our side's selectors.
    pub local_ts: Vec<TsRange>,
    /// The peer's side's selectors.
    pub remote_ts: Vec<TsRange>,
    /// ESP in UDP, if a NAT was found.
    pub encapsulation: Option<UdpEncap>,
    /// Our outer address.
    pub local_addr: SocketAddr,
    /// The peer's outer address.
    pub remote_addr: SocketAddr,
    /// Time left until rekeying starts (zero if it is due or under way) and until the hard limit.
    pub lifetimes: ChildLifetimes,
    /// In use (not yet replaced by a rekey, nor being deleted).
    pub in_use: bool,
}

/// Something the driver must act on. Drain them ([`crate::Endpoint::poll_event`]) before the
/// datagrams ([`crate::Endpoint::poll_transmit`]): see [`crate::Endpoint`].
#[derive(Debug, Clone)]
pub enum Event {
    /// Something to log: what was received, configured and decided ([`crate::diagnostic`]).
    Diagnostic(Box<crate::diagnostic::Diagnostic>),
    /// Install a CHILD SA.
    ChildSaInstall(Box<ChildSaInstall>),
    /// Remove a CHILD SA from the data plane.
    ChildSaDelete {
        /// The tunnel.
        peer: PeerId,
        /// The CHILD SA.
        child: ChildSaId,
        /// Its inbound SPI.
        spi_in: EspSpi,
        /// Its outbound SPI.
        spi_out: EspSpi,
    },
    /// A CHILD SA could not be created (the IKE SA stays up).
    ChildSaFailed {
        /// The tunnel.
        peer: PeerId,
        /// Why.
        reason: Reason,
    },
    /// An IKE SA is established (authenticated both ways).
    IkeSaUp {
        /// The tunnel.
        peer: PeerId,
        /// Negotiated transforms.
        proposal: IkeChoice,
        /// Its SPIs.
        spis: IkeSpis,
        /// NAT detection result.
        nat: NatState,
        /// Whether we initiated it.
        initiator: bool,
        /// Our outer address.
        local_addr: SocketAddr,
        /// The peer's outer address.
        remote_addr: SocketAddr,
        /// Taken back from saved state ([`crate::Endpoint::resume`]), not negotiated now.
        resumed: bool,
    },
    /// An IKE SA (and every CHILD SA under it) is gone or could not be set up.
    IkeSaDown {
        /// The tunnel.
        peer: PeerId,
        /// Its SPIs (the responder SPI is zero if the peer never answered).
        spis: IkeSpis,
        /// Why.
        reason: Reason,
    },
    /// A CHILD SA of a resumed IKE SA ([`crate::Endpoint::resume`]): the kernel SAs with its
    /// SPIs, installed by the earlier process, are this CHILD SA's from now on (later
    /// [`Event::ChildSaDelete`]s name it).
    ChildSaResumed(Box<ChildSaResumed>),
    /// An IKE SA was rekeyed: the new SPIs replace the old ones, CHILD SAs moved over.
    IkeSaRekeyed {
        /// The tunnel.
        peer: PeerId,
        /// The old SPIs.
        old: IkeSpis,
        /// The new SPIs.
        new: IkeSpis,
        /// The new SA's transforms.
        proposal: IkeChoice,
    },
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Send from this address (selects the socket: IKE port or NAT-T port).
    pub local: SocketAddr,
    /// Send to this address.
    pub remote: SocketAddr,
    /// The whole UDP payload, non-ESP marker included when `non_esp_marker` is set.
    pub payload: Vec<u8>,
    /// Whether `payload` starts with the non-ESP marker (sent on the NAT-T port).
    pub non_esp_marker: bool,
}
