//! `strait-operator uninstall`: what `helm uninstall` cannot remove by itself, run by the chart's
//! post-delete hook once the operator is gone. The objects the operator and the agents created at
//! run time (heartbeat Leases, the leader Lease, the agent DaemonSet) have no Helm release, and
//! the tunnels carry the operator's finalizer: without an operator, deleting a tunnel (or the CRD,
//! with `crds.keep=false`) would hang on it forever. The tunnels themselves stay, as a kept CRD's
//! objects do: a later install takes them up again.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};
use strait_crds::IPsecTunnel;
use strait_crds::heartbeat::LEASE_PREFIX;

use crate::controller::FINALIZER;
use crate::{daemonset, leader};

/// What [`run`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Tunnels whose finalizer was removed.
    pub finalizers: usize,
    /// Leases deleted (heartbeats and the leader's).
    pub leases: usize,
    /// Whether the agent DaemonSet was still there and was deleted.
    pub daemonset: bool,
}

/// Whether a Lease is one the operator or an agent wrote.
pub fn is_ours(lease_name: &str) -> bool {
    lease_name == leader::LEASE_NAME || lease_name.starts_with(LEASE_PREFIX)
}

/// `finalizers` without the operator's, or `None` when it is not there.
pub fn without_ours(finalizers: &[String]) -> Option<Vec<String>> {
    finalizers.iter().any(|f| f == FINALIZER).then(|| {
        finalizers
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect()
    })
}

/// Waits until no operator pod runs in `namespace` (at most `wait`), so none can put a finalizer
/// back, then removes the finalizers, the Leases and the agent DaemonSet.
///
/// # Errors
/// An API call failed or operator pods are still there after `wait`.
pub async fn run(client: Client, namespace: &str, wait: Duration) -> anyhow::Result<Report> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let operators = ListParams::default().labels("app.kubernetes.io/name=strait-operator");
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = pods.list(&operators).await?.items.len();
        if left == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{left} operator pod(s) still in {namespace} after {wait:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut report = Report::default();
    let tunnels: Api<IPsecTunnel> = Api::all(client.clone());
    for t in tunnels.list(&ListParams::default()).await?.items {
        let Some(keep) = without_ours(t.finalizers()) else {
            continue;
        };
        // resourceVersion makes the patch fail rather than drop a finalizer added meanwhile
        let patch = serde_json::json!({
            "metadata": {"finalizers": keep, "resourceVersion": t.resource_version()}
        });
        tunnels
            .patch(
                &t.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        report.finalizers += 1;
    }

    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    for l in leases.list(&ListParams::default()).await?.items {
        if is_ours(&l.name_any()) {
            leases
                .delete(&l.name_any(), &DeleteParams::default())
                .await?;
            report.leases += 1;
        }
    }

    let daemonsets: Api<DaemonSet> = Api::namespaced(client, namespace);
    if daemonsets.get_opt(daemonset::NAME).await?.is_some() {
        daemonsets
            .delete(daemonset::NAME, &DeleteParams::foreground())
            .await?;
        report.daemonset = true;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_leases() {
        assert!(is_ours("strait-operator-leader"));
        assert!(is_ours("strait-agent-node-1"));
        assert!(!is_ours("kube-scheduler"));
        assert!(!is_ours("strait-operator"));
    }

    #[test]
    fn removes_only_our_finalizer() {
        let f = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(without_ours(&f(&["a"])), None);
        assert_eq!(
            without_ours(&f(&["a", FINALIZER, "b"])),
            Some(f(&["a", "b"]))
        );
        assert_eq!(without_ours(&f(&[FINALIZER])), Some(Vec::new()));
    }
}
