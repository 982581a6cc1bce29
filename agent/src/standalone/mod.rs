//! Standalone mode: the agent without Kubernetes, configured from a YAML file of `IPsecTunnel`
//! documents, with Secrets read from a directory laid out like a mounted Secret volume.

pub mod config;
pub mod run;
pub mod secrets;
