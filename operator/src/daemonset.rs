//! The agent DaemonSet, scheduled only onto nodes that some tunnel selects.
//!
//! Its node affinity has one `nodeSelectorTerm` per distinct tunnel `spec.gateway.nodeSelector`
//! (terms are OR'ed by the scheduler; the expressions inside one term are AND'ed, exactly like a
//! label selector). With no tunnel the DaemonSet is deleted.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    LocalObjectReference, NodeSelectorRequirement, NodeSelectorTerm, ResourceRequirements,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};
use strait_crds::contract::OPERATOR_FIELD_MANAGER;

/// The DaemonSet's name.
pub const NAME: &str = strait_crds::contract::AGENT_DAEMONSET;
/// The label that selects the agent pods.
pub const POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "strait-agent");
/// The agents' metrics port, on the node's own address.
pub const METRICS_PORT: u16 = 9470;

/// What the agent pods run: from the operator's flags, which the chart sets.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentTemplate {
    /// Container image.
    pub image: String,
    /// Image pull policy.
    pub image_pull_policy: String,
    /// Container arguments.
    pub args: Vec<String>,
    /// The agent's ServiceAccount.
    pub service_account: String,
    /// `RUST_LOG` of the agent.
    pub log_level: LogLevel,
    /// Text or JSON lines.
    pub log_format: LogFormat,
    /// The pod-level settings the chart passes through (`--agent-pod-options`).
    pub pod: PodOptions,
    /// A host directory (tmpfs: `/run`) where the agents keep their IKE state across restarts
    /// (`--agent-state-dir`); `None`: every agent restart renegotiates its tunnels.
    pub state_host_path: Option<String>,
}

/// Where the agent container sees [`AgentTemplate::state_host_path`].
pub const STATE_MOUNT: &str = "/run/strait-state";

/// A log level, as the chart's `logLevel` values spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// And warnings.
    Warn,
    /// And what happens (the default).
    #[default]
    Info,
    /// And why.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `RUST_LOG` directive: the level for Strait, `kube` (very chatty at debug) at warn.
    pub fn directive(self) -> String {
        let l = match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        };
        format!("{l},kube=warn")
    }
}

/// How a binary writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Pod-level settings of the agent, typed with the Kubernetes API's own structs so that the
/// chart can pass its values through `toJson` and a malformed value stops the operator at start
/// with the field named, instead of producing a DaemonSet the API server refuses. An absent
/// field keeps the operator's default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodOptions {
    /// Requests and limits; default: requests 10m CPU, 32Mi memory, no limits.
    pub resources: Option<ResourceRequirements>,
    /// Empty or absent: no priority class (see `docs/operator.md` for why that is the default).
    pub priority_class_name: Option<String>,
    /// Default: tolerate every taint (a node agent must run wherever a tunnel is elected).
    pub tolerations: Option<Vec<Toleration>>,
    /// Further restricts the nodes, on top of the affinity to the tunnels' gateway selectors.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Secrets for pulling the agent image.
    #[serde(default)]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

impl PodOptions {
    /// Parses the JSON the chart passes as `--agent-pod-options`.
    ///
    /// # Errors
    /// Not JSON, an unknown field, or a field of the wrong shape; the message names the field.
    pub fn parse(s: &str) -> Result<Self, String> {
        serde_json::from_str(s).map_err(|e| format!("--agent-pod-options: {e}"))
    }
}

/// Resources when none are given: enough for IKE on a few tunnels.
fn default_resources() -> Value {
    json!({"requests": {"cpu": "10m", "memory": "32Mi"}})
}

/// An owner reference to `deployment`, so that deleting it (e.g. `helm uninstall`) garbage
/// collects the DaemonSet. Not a controller reference (the Deployment controller does not manage
/// DaemonSets) and no `blockOwnerDeletion` (it would need update on deployments/finalizers).
pub fn owner_reference(deployment: &Deployment) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "apps/v1".to_owned(),
        kind: "Deployment".to_owned(),
        name: deployment.metadata.name.clone()?,
        uid: deployment.metadata.uid.clone()?,
        controller: None,
        block_owner_deletion: None,
    })
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

/// The DaemonSet to server-side apply, for `terms` (non-empty), owned by `owner` if given.
pub fn manifest(
    namespace: &str,
    tpl: &AgentTemplate,
    terms: &[NodeSelectorTerm],
    owner: Option<&OwnerReference>,
) -> Value {
    let labels = json!({POD_LABEL.0: POD_LABEL.1, "app.kubernetes.io/part-of": "strait"});
    let mut args = tpl.args.clone();
    if tpl.state_host_path.is_some() {
        // a directory of the agent's own (0700) inside the mounted one
        args.push(format!("--state-dir={STATE_MOUNT}/ike"));
    }
    if !args.iter().any(|a| a.starts_with("--metrics-addr")) {
        // the node's own address, not every interface: a gateway node faces the Internet
        args.push(format!("--metrics-addr=$(HOST_IP):{METRICS_PORT}"));
    }
    if tpl.log_format == LogFormat::Json {
        // a flag of the daemon subcommands, so it goes after `cluster`
        args.push("--log-json".to_owned());
    }
    let opts = &tpl.pod;
    // the status socket (`kubectl exec ... strait-agent status`) lives in /run/strait; the root
    // file system is read-only
    let mut volumes = vec![json!({"name": "run", "emptyDir": {"medium": "Memory"}})];
    let mut mounts = vec![json!({"name": "run", "mountPath": "/run/strait"})];
    if let Some(host) = &tpl.state_host_path {
        // A host directory, not an emptyDir: the state must outlive the pod (a rolling update
        // replaces it). On /run it is tmpfs, gone at reboot with the kernel SAs it belongs to.
        volumes.push(
            json!({"name": "state", "hostPath": {"path": host, "type": "DirectoryOrCreate"}}),
        );
        mounts.push(json!({"name": "state", "mountPath": STATE_MOUNT}));
    }
    let mut pod = json!({
        "serviceAccountName": tpl.service_account,
        "hostNetwork": true,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "terminationGracePeriodSeconds": 30,
        "tolerations": opts.tolerations.as_ref().map_or_else(
            || json!([{"operator": "Exists"}]),
            |t| json!(t),
        ),
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": terms,
        }}},
        "containers": [{
            "name": "agent",
            "image": tpl.image,
            "imagePullPolicy": tpl.image_pull_policy,
            "args": args,
            "env": [
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "RUST_LOG", "value": tpl.log_level.directive()},
                // a stop while its own pod is being deleted is a restart (with saved state)
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                // where /metrics listens (`$(HOST_IP)` in the arguments)
                {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
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
                {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
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
            "volumeMounts": mounts,
            "resources": opts.resources.as_ref().map_or_else(default_resources, |r| json!(r)),
        }],
        "volumes": volumes,
    });
    // Absent fields rather than empty ones: under server-side apply an empty value would still
    // claim the field.
    if let Some(p) = opts.priority_class_name.as_ref().filter(|p| !p.is_empty()) {
        set(&mut pod, "priorityClassName", json!(p));
    }
    if !opts.node_selector.is_empty() {
        set(&mut pod, "nodeSelector", json!(opts.node_selector));
    }
    if !opts.image_pull_secrets.is_empty() {
        set(&mut pod, "imagePullSecrets", json!(opts.image_pull_secrets));
    }
    let mut metadata = json!({"name": NAME, "namespace": namespace, "labels": labels});
    if let Some(o) = owner {
        set(&mut metadata, "ownerReferences", json!([o]));
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": {POD_LABEL.0: POD_LABEL.1}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    })
}

/// Sets `key` in the JSON object `obj` (always an object here).
fn set(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert(key.to_owned(), value);
    }
}

/// Applies the DaemonSet for `terms`, or deletes it when `terms` is empty.
pub async fn sync(
    api: &Api<DaemonSet>,
    namespace: &str,
    tpl: &AgentTemplate,
    terms: &[NodeSelectorTerm],
    owner: Option<&OwnerReference>,
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
    let body = manifest(namespace, tpl, terms, owner);
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

    fn tpl() -> AgentTemplate {
        AgentTemplate {
            image: "strait-agent:test".into(),
            image_pull_policy: "IfNotPresent".into(),
            service_account: "strait-agent".into(),
            args: vec!["cluster".into()],
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            pod: PodOptions::default(),
            state_host_path: None,
        }
    }

    #[test]
    fn saved_state_lives_in_a_host_directory_that_outlives_the_pod() {
        let t = AgentTemplate {
            state_host_path: Some("/run/strait-agent".into()),
            log_format: LogFormat::Json,
            ..tpl()
        };
        let ds = manifest("ns", &t, &[], None);
        let pod = &ds["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(
            c["args"],
            json!([
                "cluster",
                "--state-dir=/run/strait-state/ike",
                "--metrics-addr=$(HOST_IP):9470",
                "--log-json"
            ])
        );
        assert_eq!(
            pod["volumes"][1],
            json!({"name": "state", "hostPath": {"path": "/run/strait-agent", "type": "DirectoryOrCreate"}})
        );
        assert_eq!(
            c["volumeMounts"][1],
            json!({"name": "state", "mountPath": STATE_MOUNT})
        );
        // off: no host path at all, and the agent renegotiates on restart
        let ds = manifest("ns", &tpl(), &[], None);
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"].as_array().map(Vec::len), Some(1));
        assert!(
            !pod["containers"][0]["args"]
                .to_string()
                .contains("state-dir")
        );
    }

    #[test]
    fn defaults_tolerate_everything_request_little_and_name_no_priority_class() {
        let ds = manifest("strait-system", &tpl(), &[], None);
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
        let c = &pod["containers"][0];
        assert_eq!(
            c["resources"],
            json!({"requests": {"cpu": "10m", "memory": "32Mi"}})
        );
        // metrics on the node's own address, from the downward API
        assert_eq!(
            c["args"],
            json!(["cluster", "--metrics-addr=$(HOST_IP):9470"])
        );
        assert_eq!(
            c["env"][4],
            json!({"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}})
        );
        assert_eq!(
            c["env"][2],
            json!({"name": "RUST_LOG", "value": "info,kube=warn"})
        );
        for absent in ["priorityClassName", "nodeSelector", "imagePullSecrets"] {
            assert!(pod.get(absent).is_none(), "{absent} set: {pod}");
        }
        assert!(ds["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn the_charts_pod_options_reach_the_pod_spec() {
        let json = r#"{
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
            "priorityClassName": "system-node-critical",
            "tolerations": [{"key": "edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "imagePullSecrets": [{"name": "regcred"}]
        }"#;
        let t = AgentTemplate {
            pod: PodOptions::parse(json).unwrap(),
            log_level: LogLevel::Debug,
            log_format: LogFormat::Json,
            args: vec!["cluster".into(), "--dataplane=none".into()],
            ..tpl()
        };
        let ds = manifest("strait-system", &t, &[], None);
        let pod = &ds["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["resources"]["limits"]["memory"], "128Mi");
        assert_eq!(c["resources"]["requests"]["cpu"], "50m");
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        assert_eq!(pod["tolerations"][0]["key"], "edge");
        assert_eq!(pod["tolerations"].as_array().map(Vec::len), Some(1));
        assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
        // JSON logs: the agent's own flag, after the subcommand's arguments
        assert_eq!(
            c["args"],
            json!([
                "cluster",
                "--dataplane=none",
                "--metrics-addr=$(HOST_IP):9470",
                "--log-json"
            ])
        );
        // an address the chart's agent.args give is kept, and not given twice
        let t = AgentTemplate {
            args: vec!["cluster".into(), "--metrics-addr=127.0.0.1:9999".into()],
            ..tpl()
        };
        let ds = manifest("strait-system", &t, &[], None);
        assert_eq!(
            ds["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["cluster", "--metrics-addr=127.0.0.1:9999"])
        );
        assert_eq!(c["env"][2]["value"], "debug,kube=warn");
        // the node selector adds to the tunnels' affinity, it does not replace it
        assert!(pod["affinity"]["nodeAffinity"].is_object());
    }

    #[test]
    fn an_empty_priority_class_means_none() {
        let t = AgentTemplate {
            pod: PodOptions::parse(r#"{"priorityClassName": ""}"#).unwrap(),
            ..tpl()
        };
        let ds = manifest("ns", &t, &[], None);
        assert!(
            ds["spec"]["template"]["spec"]
                .get("priorityClassName")
                .is_none()
        );
    }

    #[test]
    fn bad_pod_options_are_refused_with_the_field_named() {
        let e = PodOptions::parse(r#"{"tolerations": {"operator": "Exists"}}"#).unwrap_err();
        assert!(
            e.contains("--agent-pod-options") && e.contains("sequence"),
            "{e}"
        );
        let e = PodOptions::parse(r#"{"priorityClass": "x"}"#).unwrap_err();
        assert!(e.contains("unknown field `priorityClass`"), "{e}");
        let e = PodOptions::parse("resources: {}").unwrap_err();
        assert!(e.contains("--agent-pod-options"), "{e}");
        assert_eq!(PodOptions::parse("{}").unwrap(), PodOptions::default());
    }

    #[test]
    fn the_daemonset_is_owned_by_the_operator_deployment() {
        let d = Deployment {
            metadata: kube::api::ObjectMeta {
                name: Some("strait-operator".into()),
                uid: Some("1234-abcd".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let owner = owner_reference(&d).unwrap();
        let ds = manifest("ns", &tpl(), &[], Some(&owner));
        assert_eq!(
            ds["metadata"]["ownerReferences"],
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "strait-operator", "uid": "1234-abcd"}])
        );
        // no uid (not read from the API server): no reference rather than a broken one
        let mut no_uid = d.clone();
        no_uid.metadata.uid = None;
        assert!(owner_reference(&no_uid).is_none());
    }

    #[test]
    fn the_agent_can_bind_udp_500_and_serve_its_status_socket() {
        let ds = manifest("strait-system", &tpl(), &[], None);
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
