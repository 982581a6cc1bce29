//! The end-to-end harness: the real parts the tests run against — network namespaces as sites and
//! nodes, strongSwan peers, the real control plane (kube-apiserver + etcd) and the kernel VM — each
//! with cleanup that runs even when a test fails.

pub mod agent;
pub mod apiforward;
pub mod capture;
pub mod cluster;
pub mod cmd;
pub mod controlplane;
pub mod flood;
pub mod kube;
pub mod libreswan;
pub mod matrix;
pub mod netns;
pub mod nodes;
pub mod product;
pub mod prometheus;
pub mod scenario;
pub mod strongswan;
pub mod transfer;
pub mod tunnel;
pub mod vm;
