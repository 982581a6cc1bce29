//! Whether a stopping process is followed by another on the same node: a stop while the
//! process's own pod is being deleted and its DaemonSet stays (and is not being deleted) is a
//! rolling update or `kubectl delete pod`, so the DaemonSet starts a replacement here. Anything
//! else is a stop for good: the DaemonSet deleted (`helm uninstall`), or a SIGTERM without a
//! pod deletion (the node shutting down). The cluster agent keeps its SAs across a
//! replacement; the route role keeps its routes, so pods' traffic never leaves in clear while
//! the replacement starts.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

/// How long a stopping process waits for the API to say whether a replacement follows.
const ASK_API: Duration = Duration::from_secs(3);

/// Whether the DaemonSet `daemonset` in `namespace` starts a replacement for `pod` on this
/// node. When the API cannot say in time, `false`: the caller stops for good, never leaving
/// state behind that nothing adopts.
pub async fn replacement_follows(
    client: Client,
    namespace: &str,
    pod: &str,
    daemonset: &str,
) -> bool {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let sets = Api::<DaemonSet>::namespaced(client, namespace);
    let ask = async {
        let pod = pods.get_opt(pod).await?;
        let set = sets.get_opt(daemonset).await?;
        Ok::<_, kube::Error>((pod, set))
    };
    let deleting = |m: &kube::api::ObjectMeta| m.deletion_timestamp.is_some();
    match tokio::time::timeout(ASK_API, ask).await {
        Ok(Ok((Some(p), Some(d)))) if deleting(&p.metadata) && !deleting(&d.metadata) => true,
        Ok(Ok((p, d))) => {
            tracing::info!(
                pod_deleted = p.as_ref().is_none_or(|p| deleting(&p.metadata)),
                daemonset_stays = d.as_ref().is_some_and(|d| !deleting(&d.metadata)),
                daemonset,
                "no replacement follows on this node: leaving"
            );
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot tell a restart from a stop: leaving");
            false
        }
        Err(_) => {
            tracing::warn!("the API did not say in time whether this is a restart: leaving");
            false
        }
    }
}
