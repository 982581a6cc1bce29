//! strait-xfrm: the typed, async bridge between the Strait agent and the kernel's XFRM (IPsec
//! SAs and policies) over netlink. It is the only code in Strait that touches XFRM.
//!
//! - [`Xfrm`] holds one `NETLINK_XFRM` socket: allocate SPIs, add/update/get/delete SAs and
//!   policies, list them, read counters, sweep ours ([`Xfrm::sweep`]).
//! - Everything we install is tagged with a reqid from a reserved range ([`ownership`]); we
//!   never modify or delete an untagged object.
//! - [`Xfrm::events`] streams expire and acquire notifications about our objects.
//! - [`socket`] prepares the IKE sockets (ESP-in-UDP, per-socket bypass policies).
//! - [`host`] sets the gateway sysctls (restorably) and computes MTU/MSS for a transform.
//! - [`Xfrm::preflight`] tells, in words an operator can act on, what the kernel lacks.
//! - [`SpiAllocator`] reserves inbound SPIs in the kernel synchronously (for the IKE endpoint).
//!
//! Keys travel in [`Key`] (wiped on drop, `Debug` shows the length only) and in wiped buffers
//! on their way to the kernel; no error ever contains key bytes.

pub mod counters;
pub mod error;
pub mod events;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod host;
mod netlink;
pub mod ownership;
pub mod policy;
pub mod preflight;
pub mod sa;
pub mod selector;
pub mod socket;
pub mod spi;

use std::sync::Arc;

pub use counters::SaCounters;
pub use error::{Error, Fault, Result, Unsupported};
pub use events::{Event, EventStream};
pub use host::{EspPath, GatewaySysctls, SysctlGuard};
pub use ownership::{KeepSet, Reqid, SweepReport};
pub use policy::{Action, Direction, Policy, PolicyId, PolicyInfo, Template};
pub use preflight::PreflightReport;
pub use sa::{
    Integrity, Key, Lifetimes, Limits, Mark, Mode, NatT, Proto, Sa, SaCrypto, SaId, SaInfo,
    Transform,
};
pub use selector::{Family, PortMatch, Prefix, Selector};
pub use spi::SpiAllocator;

/// A handle on the kernel's XFRM in the caller's network namespace. Cheap to clone; clones
/// share one netlink socket, and requests on it are served one at a time.
#[derive(Debug, Clone)]
pub struct Xfrm {
    conn: Arc<netlink::Conn>,
}

impl Xfrm {
    /// Opens the netlink socket. Must be called inside a tokio runtime. Fails with
    /// [`Unsupported::XfrmUser`] when the kernel has no XFRM netlink interface.
    pub fn open() -> Result<Self> {
        Ok(Xfrm {
            conn: Arc::new(netlink::Conn::open()?),
        })
    }
}
