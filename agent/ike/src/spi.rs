//! Where a CHILD SA's inbound ESP SPI comes from.

use core::net::IpAddr;

/// A source of inbound ESP SPIs, given to [`crate::Endpoint::set_spi_source`] by a driver whose
/// data plane can allocate them (the kernel's `XFRM_MSG_ALLOCSPI`), so that they are unique
/// among every SA on the node rather than random. The endpoint asks it synchronously while it
/// builds a message; without one, or when it answers `None`, the SPI is drawn from the
/// endpoint's RNG (values ≥ 256).
pub trait EspSpiSource {
    /// A fresh SPI (≥ 256) for an inbound SA from `remote` to `local` (the IKE SA's current
    /// addresses), or `None` to fall back to a random one.
    fn inbound_esp_spi(&mut self, local: IpAddr, remote: IpAddr) -> Option<u32>;
}
