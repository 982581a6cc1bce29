//! `strait-operator`: the controller that elects a gateway node for each `IPsecTunnel`, manages
//! the agent DaemonSet, and turns the agents' reports into the tunnel's conditions.
//!
//! See `docs/operator.md` for the contracts with the agent (heartbeat Lease, `status.gateways[]`
//! entries, deletion) and the RBAC the chart grants.

pub mod caches;
pub mod conditions;
pub mod controller;
pub mod daemonset;
pub mod diagnosis;
pub mod election;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod uninstall;

pub use error::Error;
