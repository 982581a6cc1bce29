//! `strait-ike`: a sans-IO IKEv2 implementation (RFC 7296).
//!
//! Nothing in this crate performs I/O, reads a clock or draws OS randomness: time and randomness
//! are passed in by the driver, so every exchange can be tested deterministically on a simulated
//! clock (the quinn-proto model). The one exception is aws-lc's own RNG for ECDSA nonces and
//! RSA-PSS salts, which its API does not let us pass in ([`crypto`]). A driver may also hand in an
//! [`EspSpiSource`] (the kernel's SPI allocation), which the endpoint calls, never the reverse.
//!
//! [`Endpoint`] documents how a driver must call it.

pub mod codec;
pub mod config;
pub mod crypto;
pub mod diagnostic;
pub(crate) mod dn;
pub mod endpoint;
pub mod event;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod natd;
pub mod probe;
pub mod proposal;
pub mod reason;
pub(crate) mod resume;
pub(crate) mod sa;
pub mod spi;
pub(crate) mod timers;
pub(crate) mod ts;
pub(crate) mod window;

pub use config::{
    AuthConfig, CertificateAuth, ConfigError, Dpd, EndpointConfig, Identity, Lifetime, PeerConfig,
    RetransmitConfig, Role, Volume,
};
pub use endpoint::{Endpoint, Stats};
pub use event::{
    ChildKeys, ChildLifetimes, ChildSaId, ChildSaInstall, ChildSaResumed, EspSpi, Event, IkeSpis,
    Mode, NatState, PeerId, Transmit, UdpEncap,
};
pub use reason::{Fault, Reason};
pub use resume::{ResumeError, Resumed, SavedState};
pub use spi::EspSpiSource;
