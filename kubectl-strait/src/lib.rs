//! `kubectl strait`, a kubectl plugin for Strait's tunnels:
//!
//! - [`status`]: every tunnel's IKE and CHILD SAs across its gateways (`swanctl --list-sas`);
//! - [`diagnose`]: from "not Ready" to the cause and the next step, over the [`facts`] read
//!   from the cluster and the [`reasons`] table;
//! - [`peer_config`]: the remote site's strongSwan or Libreswan config for a tunnel;
//! - [`gather`]: a support archive without secrets.
//!
//! Only [`facts`], [`gather`] and the binary talk to the API server; the rest are pure
//! functions of what was read, unit-tested case by case.

pub mod diagnose;
pub mod facts;
pub mod gather;
pub mod peer_config;
pub mod reasons;
pub mod status;
