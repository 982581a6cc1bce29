//! `strait-agent`: the per-node daemon, as a library so integration tests can drive its parts.
//! The binary (`main.rs`) only parses arguments and reports errors.
//!
//! - [`spec`]: an `IPsecTunnel` spec and its secrets → the IKE endpoint's configuration;
//! - [`driver`]: the event loop around the sans-IO IKE endpoint, sockets and timers;
//! - [`dataplane`]: where negotiated CHILD SAs go (kernel XFRM, or nowhere);
//! - [`status`], [`metrics`], [`notation`]: what the agent reports, and in which words;
//! - [`standalone`] and [`cluster`]: the two ways of running, from a file or from the API.

pub mod cluster;
pub mod dataplane;
pub mod driver;
pub mod error;
pub mod metrics;
pub mod notation;
pub mod probe;
pub mod rng;
pub mod spec;
pub mod standalone;
pub mod status;
pub mod steering;
