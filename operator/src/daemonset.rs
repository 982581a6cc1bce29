//! The agent DaemonSet, scheduled only onto nodes that some tunnel selects.
//!
//! Its node affinity has one `nodeSelectorTerm` per distinct tunnel `spec.gateway.nodeSelector`
//! (terms are OR'ed by the scheduler; the expressions inside one term are AND'ed, exactly like a
//! label selector). With no tunnel the DaemonSet is deleted.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use strait_crds::contract::OPERATOR_FIELD_MANAGER;

/// The DaemonSet's name.
pub const NAME: &str = "strait-agent";

/// What the agent pods run: from the operator's flags, which the chart sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTemplate {
    /// Container image.
    pub image: String,
    /// Image pull policy.
    pub image_pull_policy: String,
    /// Container arguments.
    pub args: Vec<String>,
    /// The agent's ServiceAccount.
    pub service_account: String,
}

/// The node selector term equivalent to a label selector.
pub fn term(selector: &LabelSelector) -> NodeSelectorTerm {
    let mut exprs: Vec<NodeSelectorRequirement> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| NodeSelectorRequirement {
            key: k.clone(),
            operator: "In".to_owned(),
            values: Some(vec![v.clone()]),
        })
        .collect();
    exprs.extend(
        selector
            .match_expressions
            .iter()
            .flatten()
            .map(|e| NodeSelectorRequirement {
                key: e.key.clone(),
                operator: e.operator.clone(),
                values: e.values.clone().filter(|v| !v.is_empty()),
            }),
    );
    if exprs.is_empty() {
        // An empty label selector matches every node, but an empty term matches none: say
        // "every node" in a form the scheduler accepts (every kubelet sets this label).
        exprs.push(NodeSelectorRequirement {
            key: "kubernetes.io/hostname".to_owned(),
            operator: "Exists".to_owned(),
            values: None,
        });
    }
    NodeSelectorTerm {
        match_expressions: Some(exprs),
        match_fields: None,
    }
}

/// Distinct terms for `selectors`, in a stable order (so the applied object only changes when the
/// set of selectors does).
pub fn terms<'a>(selectors: impl IntoIterator<Item = &'a LabelSelector>) -> Vec<NodeSelectorTerm> {
    let mut by_key: BTreeMap<String, NodeSelectorTerm> = BTreeMap::new();
    for s in selectors {
        let t = term(s);
        let key = serde_json::to_string(&t).unwrap_or_default();
        by_key.entry(key).or_insert(t);
    }
    by_key.into_values().collect()
}

/// The DaemonSet to server-side apply, for `terms` (non-empty).
pub fn manifest(namespace: &str, tpl: &AgentTemplate, terms: &[NodeSelectorTerm]) -> Value {
    let labels =
        json!({"app.kubernetes.io/name": "strait-agent", "app.kubernetes.io/part-of": "strait"});
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "strait-agent"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": tpl.service_account,
                    "hostNetwork": true,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "priorityClassName": "system-node-critical",
                    "terminationGracePeriodSeconds": 30,
                    "tolerations": [{"operator": "Exists"}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": terms,
                    }}},
                    "containers": [{
                        "name": "agent",
                        "image": tpl.image,
                        "imagePullPolicy": tpl.image_pull_policy,
                        "args": tpl.args,
                        "env": [
                            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        ],
                        // NET_ADMIN: XFRM netlink and the IKE sockets' options; NET_BIND_SERVICE:
                        // UDP 500 in the host's network namespace, where unprivileged ports start
                        // at 1024 and `drop: ALL` took the capability from uid 0 too. No raw
                        // sockets are used, so no NET_RAW.
                        "securityContext": {
                            "capabilities": {"add": ["NET_ADMIN", "NET_BIND_SERVICE"], "drop": ["ALL"]},
                            "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                        },
                        "ports": [
                            {"name": "ike", "containerPort": 500, "protocol": "UDP"},
                            {"name": "ike-natt", "containerPort": 4500, "protocol": "UDP"},
                            {"name": "metrics", "containerPort": 9470, "protocol": "TCP"},
                        ],
                        // /healthz asks the IKE driver loop itself: a wedged loop is restarted
                        // even while the heartbeat task still renews the Lease
                        "livenessProbe": {
                            "httpGet": {"path": "/healthz", "port": "metrics"},
                            "initialDelaySeconds": 10, "periodSeconds": 10,
                            "timeoutSeconds": 7, "failureThreshold": 3,
                        },
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz", "port": "metrics"},
                            "periodSeconds": 10, "timeoutSeconds": 7,
                        },
                        // the status socket (`kubectl exec ... strait-agent status`) lives here;
                        // the root file system is read-only
                        "volumeMounts": [{"name": "run", "mountPath": "/run/strait"}],
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                    }],
                    "volumes": [{"name": "run", "emptyDir": {"medium": "Memory"}}],
                },
            },
        },
    })
}

/// Applies the DaemonSet for `terms`, or deletes it when `terms` is empty.
pub async fn sync(
    api: &Api<DaemonSet>,
    namespace: &str,
    tpl: &AgentTemplate,
    terms: &[NodeSelectorTerm],
) -> Result<(), kube::Error> {
    if terms.is_empty() {
        return match api.delete(NAME, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!("no tunnel left: deleted the agent DaemonSet");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        };
    }
    let body = manifest(namespace, tpl, terms);
    api.patch(
        NAME,
        &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn the_agent_can_bind_udp_500_and_serve_its_status_socket() {
        let tpl = AgentTemplate {
            image: "strait-agent:test".into(),
            image_pull_policy: "IfNotPresent".into(),
            service_account: "strait-agent".into(),
            args: vec!["cluster".into()],
        };
        let ds = manifest("strait-system", &tpl, &[]);
        let pod = &ds["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let caps = &c["securityContext"]["capabilities"];
        assert_eq!(caps["drop"], json!(["ALL"]));
        assert_eq!(caps["add"], json!(["NET_ADMIN", "NET_BIND_SERVICE"]));
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/run/strait");
        assert_eq!(pod["volumes"][0]["name"], c["volumeMounts"][0]["name"]);
        let ports: Vec<_> = c["ports"]
            .as_array()
            .map(|v| v.iter().map(|p| p["containerPort"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(ports, vec![json!(500), json!(4500), json!(9470)]);
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
        }
    }

    #[test]
    fn selectors_become_ored_terms() {
        let a = LabelSelector {
            match_labels: Some([("strait.dev/gateway".to_owned(), "true".to_owned())].into()),
            match_expressions: None,
        };
        let b = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "Exists".into(),
                values: None,
            }]),
        };
        let t = terms([&a, &b, &a]);
        assert_eq!(t.len(), 2, "duplicates collapse");
        let json = serde_json::to_string(&t).unwrap();
        assert!(
            json.contains(r#"{"key":"strait.dev/gateway","operator":"In","values":["true"]}"#),
            "{json}"
        );
        assert!(
            json.contains(r#"{"key":"zone","operator":"Exists"}"#),
            "{json}"
        );
    }
}
