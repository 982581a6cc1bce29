//! Where negotiated CHILD SAs go: nowhere ([`NoDataplane`], `--dataplane none`) or into the
//! kernel's XFRM ([`KernelDataplane`], `--dataplane kernel`). This file is the seam the driver
//! drives; [`objects`] is the pure translation from negotiated SAs to XFRM objects.
//!
//! Kernel order on install: inbound SA, outbound SA, then the policies out/in/fwd, all tagged
//! with a reqid from Strait's reserved range (one per CHILD SA selector set, see [`objects`]),
//! so nothing of another daemon is ever touched and a restart can sweep what is ours.
//!
//! Fail closed: from the moment a tunnel starts until it is removed (or the agent exits
//! cleanly), its configured selectors are covered by policies of its own ([`Dataplane::guard`]):
//! `block` policies, or for an `onTraffic` tunnel "trap" policies without SAs (as strongSwan's
//! `start_action = trap`), whose traffic makes the kernel send an acquire that starts the IKE
//! SA. A CHILD SA's policies take over the selectors they cover and give them back when it goes
//! ([`table`]), so there is no moment, before the first CHILD SA, between a teardown and the
//! next, after DPD or a Delete, in which traffic for the tunnel's subnets leaves in clear.

mod kernel;
pub mod netfilter;
mod none;
pub mod objects;
pub mod routes;
pub(crate) mod routing;
mod table;
pub mod xfrmi;

use std::collections::BTreeMap;
use std::future::Future;

use strait_ike::proposal::EspProposal;
use strait_ike::{ChildSaId, ChildSaInstall, ChildSaResumed, PeerConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::error::TunnelError;
pub use kernel::KernelDataplane;
pub use none::{NoDataplane, Recorded};

/// Which data plane the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Kernel XFRM.
    Kernel,
    /// Nothing is installed.
    None,
}

impl Kind {
    /// `kernel` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Kernel => "kernel",
            Kind::None => "none",
        }
    }
}

/// What the driver asks of a data plane. `tunnel` is the tunnel's small index (its reqid is
/// derived from it).
pub trait Dataplane: Send {
    /// Which one this is.
    fn kind(&self) -> Kind;

    /// Whether trap policies (initiation `onTraffic`) are available.
    fn supports_on_traffic(&self) -> bool {
        false
    }

    /// Prepares a freshly bound IKE socket (ESP-in-UDP on the NAT-T port, bypass policies).
    ///
    /// # Errors
    /// The socket options could not be set.
    fn prepare_socket(&self, sock: &UdpSocket, natt: bool) -> Result<(), TunnelError>;

    /// Checks before a tunnel starts that its ESP proposals can be installed.
    fn preflight(
        &mut self,
        esp: &[EspProposal],
    ) -> impl Future<Output = Result<(), TunnelError>> + Send;

    /// Installs one CHILD SA.
    fn install(
        &mut self,
        tunnel: u32,
        sa: &ChildSaInstall,
    ) -> impl Future<Output = Result<(), TunnelError>> + Send;

    /// Takes over the kernel objects an earlier agent installed for a CHILD SA this one
    /// resumed ([`strait_ike::Event::ChildSaResumed`]), so they are not swept and a later
    /// [`Dataplane::delete`] removes them.
    ///
    /// # Errors
    /// They are not in the kernel, or not under this tunnel.
    fn resume(
        &mut self,
        tunnel: u32,
        sa: &ChildSaResumed,
    ) -> impl Future<Output = Result<(), TunnelError>> + Send;

    /// Removes one CHILD SA (its selectors go back to the tunnel's fail-closed policies).
    fn delete(&mut self, child: ChildSaId) -> impl Future<Output = Result<(), TunnelError>> + Send;

    /// Removes everything this agent installed.
    fn shutdown(&mut self) -> impl Future<Output = Result<(), TunnelError>> + Send;

    /// Installs a tunnel's fail-closed policies for its configured selectors: `block`, or
    /// trap policies for an `onTraffic` tunnel (then traffic for it raises
    /// [`KernelEvent::Acquire`]; only with [`Dataplane::supports_on_traffic`]). They stay
    /// through CHILD SAs coming and going, until [`Dataplane::unguard`]. A data plane that
    /// installs nothing has nothing to guard.
    ///
    /// The kernel data plane also plumbs the gateway for the tunnel: a route per remote subnet
    /// in Strait's table (`src` from the local subnets, MTU `path.mtu` (`spec.mtu`) or computed
    /// from the negotiated transform once a CHILD SA is in), and the forwarding sysctls; all of
    /// it goes with [`Dataplane::unguard`] or a clean shutdown. A route-based tunnel
    /// (`path.route_metric`) gets its XFRM interface instead of fail-closed policies
    /// ([`xfrmi`]).
    fn guard(
        &mut self,
        _tunnel: u32,
        _cfg: &PeerConfig,
        _path: PathOptions,
    ) -> impl Future<Output = Result<(), TunnelError>> + Send {
        async { Ok(()) }
    }

    /// The tunnel's peer addresses changed (its DNS names resolved to others): the IKE
    /// firewall admits the new ones.
    fn peers_changed(
        &mut self,
        _tunnel: u32,
        _cfg: &PeerConfig,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Removes a tunnel's fail-closed policies (the tunnel is gone).
    fn unguard(&mut self, _tunnel: u32) -> impl Future<Output = Result<(), TunnelError>> + Send {
        async { Ok(()) }
    }

    /// Where the IKE endpoint gets inbound ESP SPIs, once: the driver takes it at start.
    /// `None`: random SPIs (nothing on the node to collide with).
    fn spi_source(&mut self) -> Option<Box<dyn strait_ike::EspSpiSource + Send>> {
        None
    }

    /// The kernel's notifications (expiries, acquires) for our objects, once: the driver takes
    /// the receiver at start. `None`: this data plane has none.
    fn take_events(&mut self) -> Option<mpsc::Receiver<KernelEvent>> {
        None
    }

    /// Traffic per tunnel index: what the tunnel's CHILD SAs carried, including CHILD SAs
    /// already deleted (so the sums only grow while the tunnel exists).
    fn traffic(&mut self) -> impl Future<Output = BTreeMap<u32, Traffic>> + Send {
        async { BTreeMap::new() }
    }

    /// The kernel's XFRM error counters (`/proc/net/xfrm_stat`), by name; empty when this
    /// data plane has no kernel.
    fn xfrm_errors(&mut self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }

    /// The XFRM interfaces of route-based tunnels and their counters, by tunnel index.
    fn interfaces(&mut self) -> impl Future<Output = BTreeMap<u32, InterfaceCounters>> + Send {
        async { BTreeMap::new() }
    }

    /// At start: notes the objects of ours a previous run left behind (after a crash) and keeps
    /// them, so traffic keeps flowing until the new CHILD SAs are up. Returns how many.
    fn adopt(&mut self) -> impl Future<Output = usize> + Send {
        async { 0 }
    }

    /// Whether objects adopted at start are still waiting to be swept.
    fn adopting(&self) -> bool {
        false
    }

    /// Removes every object of ours the agent has not installed itself in this run (the
    /// adopted ones the new CHILD SAs replaced).
    fn sweep_adopted(&mut self) -> impl Future<Output = Result<(), TunnelError>> + Send {
        async { Ok(()) }
    }
}

/// What the spec says about a tunnel's data path, beyond its IKE configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// `spec.mtu`.
    pub mtu: Option<u32>,
    /// Route-based (`spec.dataPlane.mode: routeBased`), with this route metric; `None`:
    /// policy-based.
    pub route_metric: Option<u32>,
}

impl PathOptions {
    /// The options `spec` asks for.
    pub fn of(spec: &strait_crds::IPsecTunnelSpec) -> Self {
        let route_metric = spec
            .data_plane
            .as_ref()
            .filter(|d| d.mode == strait_crds::DataPlaneMode::RouteBased)
            .map(|d| {
                d.route_metric
                    .unwrap_or(strait_crds::DataPlaneSpec::DEFAULT_ROUTE_METRIC)
            });
        Self {
            mtu: spec.mtu,
            route_metric,
        }
    }
}

/// A kernel notification about one of our SAs, by tunnel index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEvent {
    /// A CHILD SA reached its soft (rekey now) or hard (the kernel deleted it) limit.
    Expire {
        /// The tunnel index (from the reqid).
        tunnel: u32,
        /// The SA's SPI (either direction).
        spi: u32,
        /// Hard or soft.
        hard: bool,
    },
    /// Outbound traffic found one of the tunnel's policies without an SA.
    Acquire {
        /// The tunnel index.
        tunnel: u32,
    },
    /// Authentic ESP-in-UDP for one of the tunnel's inbound SAs came from a new address or
    /// port: the peer's NAT mapping changed.
    Mapping {
        /// The tunnel index.
        tunnel: u32,
        /// The inbound SA's SPI.
        spi: u32,
        /// Where the packet came from.
        remote: std::net::SocketAddr,
    },
}

/// `/proc/net/xfrm_stat` (`XfrmInNoStates<TAB>3` per line) as name → value; lines that do not
/// parse are skipped.
pub fn parse_xfrm_stat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, value) = (w.next()?, w.next()?.parse().ok()?);
            (name.starts_with("Xfrm") && w.next().is_none()).then(|| (name.to_owned(), value))
        })
        .collect()
}

/// A route-based tunnel's XFRM interface and its device counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// The interface's name (`strait-x<N>`).
    pub interface: String,
    /// Received: packets decrypted by the tunnel's inbound SAs.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Sent: packets routed into the interface for encryption.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors (for example, no SA for the traffic).
    pub tx_errors: u64,
    /// Sent packets dropped.
    pub tx_dropped: u64,
}

/// Bytes and packets of a tunnel's CHILD SAs, by direction (kernel counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes received (decrypted by inbound SAs).
    pub bytes_in: u64,
    /// Packets received.
    pub packets_in: u64,
    /// Bytes sent (encrypted by outbound SAs).
    pub bytes_out: u64,
    /// Packets sent.
    pub packets_out: u64,
    /// Inbound packets dropped as replayed or outside the anti-replay window.
    pub replay_drops: u64,
    /// Inbound packets that failed the integrity check (a wrong key, or forged or corrupted
    /// on the way).
    pub integrity_failures: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfrm_stat_is_read_by_name() {
        let text = "XfrmInError             \t0\nXfrmInNoStates          \t7\nXfrmOutPolBlock\t12\n\
                    garbage line here\nXfrmBad notanumber\n";
        let m = parse_xfrm_stat(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m.get("XfrmInNoStates"), Some(&7));
        assert_eq!(m.get("XfrmOutPolBlock"), Some(&12));
    }
}
