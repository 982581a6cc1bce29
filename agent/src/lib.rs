//! `strait-agent`: the per-node daemon, as a library so integration tests can drive its parts.
//! The binary (`main.rs`) only parses arguments and reports errors.

pub mod cluster;
pub mod dataplane;
pub mod defs;
pub mod driver;
pub mod metrics;
pub mod peer;
pub mod rng;
pub mod standalone;
pub mod status;
