//! Why no agent runs on the nodes a tunnel selects, from the objects Kubernetes already has:
//! the operator's Namespace (its Pod Security labels), the agent DaemonSet, its pods' container
//! statuses and the DaemonSet controller's `FailedCreate` Events. Without this, a namespace that
//! refuses privileged pods or an image that cannot be pulled looks like a tunnel that waits
//! forever for its agent.
//!
//! A pure function of those objects, so every case is unit-tested; the controller reads them only
//! for tunnels that have matching nodes but no live agent.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};

/// The Pod Security admission label that decides whether the agent pods may be created.
pub const PSA_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Condition and Event reasons of a diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// Pod Security admission refuses the agent pods (hostNetwork, NET_ADMIN).
    AgentPodsForbidden,
    /// The DaemonSet controller cannot create the agent pods for another reason (a quota, a
    /// webhook, an unknown priority class).
    AgentPodsNotCreated,
    /// A matching node is outside the DaemonSet's own `nodeSelector` (chart `agent.nodeSelector`).
    AgentNotScheduled,
    /// The agent image cannot be pulled or is not on the node.
    AgentImageUnavailable,
    /// The agent container keeps exiting.
    AgentCrashLoopBackOff,
    /// The agent pod exists but its container does not run, for another reason.
    AgentPodNotRunning,
    /// The agent pod runs but its heartbeat Lease is not renewed.
    AgentNotReporting,
}

impl Problem {
    /// The CamelCase reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentPodsForbidden => "AgentPodsForbidden",
            Self::AgentPodsNotCreated => "AgentPodsNotCreated",
            Self::AgentNotScheduled => "AgentNotScheduled",
            Self::AgentImageUnavailable => "AgentImageUnavailable",
            Self::AgentCrashLoopBackOff => "AgentCrashLoopBackOff",
            Self::AgentPodNotRunning => "AgentPodNotRunning",
            Self::AgentNotReporting => "AgentNotReporting",
        }
    }

    /// Every reason, for the Event logic and the docs.
    pub const ALL: [Self; 7] = [
        Self::AgentPodsForbidden,
        Self::AgentPodsNotCreated,
        Self::AgentNotScheduled,
        Self::AgentImageUnavailable,
        Self::AgentCrashLoopBackOff,
        Self::AgentPodNotRunning,
        Self::AgentNotReporting,
    ];

    /// The problem whose reason is `s`.
    pub fn from_reason(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// A problem and what a person should know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// The reason.
    pub problem: Problem,
    /// For a person: what is wrong, where, and what to do.
    pub message: String,
}

/// What the controller read.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The operator's namespace (agent pods run there).
    pub namespace: &'a str,
    /// That Namespace object, if it could be read.
    pub namespace_object: Option<&'a Namespace>,
    /// The agent DaemonSet, if it exists.
    pub daemonset: Option<&'a DaemonSet>,
    /// The agent pods (selected by the DaemonSet's label).
    pub pods: &'a [Pod],
    /// The DaemonSet's `FailedCreate` Events.
    pub failed_creates: &'a [Event],
    /// The nodes the tunnel selects, with their labels, none of which has a live agent.
    pub nodes: &'a [(&'a str, &'a BTreeMap<String, String>)],
}

/// Waiting reasons of a container whose image is the problem.
const IMAGE_REASONS: [&str; 4] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
];

/// Waiting reasons of a container on its way up, for a few seconds normally.
const STARTING_REASONS: [&str; 2] = ["ContainerCreating", "PodInitializing"];

/// The first problem found, node by node (in the given order); `None` when the objects show
/// nothing wrong (for example the DaemonSet controller has not acted yet).
pub fn diagnose(o: &Observed<'_>) -> Option<Diagnosis> {
    let ds_selector = o
        .daemonset
        .and_then(|d| d.spec.template.spec.as_ref())
        .and_then(|p| p.node_selector.as_ref());
    let mut without_pod = Vec::new();
    for (node, labels) in o.nodes {
        let pod = o
            .pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(*node));
        match pod {
            Some(p) => {
                if let Some(d) = pod_problem(p, node) {
                    return Some(d);
                }
            }
            None => {
                if let Some(sel) = ds_selector.filter(|s| !selects(s, labels)) {
                    return Some(Diagnosis {
                        problem: Problem::AgentNotScheduled,
                        message: format!(
                            "node {node} matches spec.gateway.nodeSelector but not the agent \
                             DaemonSet's nodeSelector {} (chart value agent.nodeSelector), so no \
                             agent runs there",
                            show(sel)
                        ),
                    });
                }
                without_pod.push(*node);
            }
        }
    }
    if without_pod.is_empty() {
        return None;
    }
    let nodes = without_pod.join(", ");
    if let Some(level) = enforced_level(o.namespace_object)
        && level != "privileged"
    {
        return Some(Diagnosis {
            problem: Problem::AgentPodsForbidden,
            message: format!(
                "no agent pod on {nodes}: namespace {ns} enforces Pod Security level \"{level}\" \
                 ({PSA_ENFORCE_LABEL}), which refuses the agent pods (hostNetwork, NET_ADMIN). \
                 Label it: kubectl label namespace {ns} {PSA_ENFORCE_LABEL}=privileged --overwrite",
                ns = o.namespace,
            ),
        });
    }
    let latest = o
        .failed_creates
        .iter()
        .max_by_key(|e| event_time(e))
        .and_then(|e| e.message.as_deref())?;
    let problem = if latest.contains("PodSecurity") {
        Problem::AgentPodsForbidden
    } else {
        Problem::AgentPodsNotCreated
    };
    let hint = if problem == Problem::AgentPodsForbidden {
        format!(
            " Label the namespace: kubectl label namespace {} {PSA_ENFORCE_LABEL}=privileged",
            o.namespace
        )
    } else {
        String::new()
    };
    Some(Diagnosis {
        problem,
        message: format!(
            "no agent pod on {nodes}: the DaemonSet {}/{} cannot create pods: {latest}.{hint}",
            o.namespace,
            crate::daemonset::NAME
        ),
    })
}

/// What is wrong with the agent pod `p` on `node`, if anything.
fn pod_problem(p: &Pod, node: &str) -> Option<Diagnosis> {
    let name = p.metadata.name.as_deref().unwrap_or("?");
    let status = p.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "agent").or_else(|| cs.first()));
    let at = format!("agent pod {name} on node {node}");
    if let Some(c) = container {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("Waiting");
            if STARTING_REASONS.contains(&reason) {
                return None;
            }
            let detail = w
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            if IMAGE_REASONS.contains(&reason) {
                return Some(Diagnosis {
                    problem: Problem::AgentImageUnavailable,
                    message: format!("{at} cannot get image {}: {reason}{detail}", c.image),
                });
            }
            if reason == "CrashLoopBackOff" {
                let last = c
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| {
                        let why = t.reason.as_deref().unwrap_or("exited");
                        let msg = t
                            .message
                            .as_deref()
                            .map(|m| format!(" ({m})"))
                            .unwrap_or_default();
                        format!("; last exit code {} ({why}){msg}", t.exit_code)
                    })
                    .unwrap_or_default();
                return Some(Diagnosis {
                    problem: Problem::AgentCrashLoopBackOff,
                    message: format!(
                        "{at} is in CrashLoopBackOff after {} restart(s){last}; see kubectl logs -n {} {name} --previous",
                        c.restart_count,
                        p.metadata.namespace.as_deref().unwrap_or_default(),
                    ),
                });
            }
            return Some(Diagnosis {
                problem: Problem::AgentPodNotRunning,
                message: format!("{at} is waiting: {reason}{detail}"),
            });
        }
        if let Some(t) = c.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            return Some(Diagnosis {
                problem: Problem::AgentPodNotRunning,
                message: format!(
                    "{at} exited with code {} ({})",
                    t.exit_code,
                    t.reason.as_deref().unwrap_or("terminated")
                ),
            });
        }
        if c.state.as_ref().is_some_and(|s| s.running.is_some()) {
            return Some(Diagnosis {
                problem: Problem::AgentNotReporting,
                message: format!(
                    "{at} is running but does not renew its heartbeat Lease; see kubectl logs -n {} {name}",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                ),
            });
        }
    }
    // no container status yet: pending (unschedulable, or not started)
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let unscheduled = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
        .map(|c| {
            format!(
                ": {}: {}",
                c.reason.as_deref().unwrap_or("Unschedulable"),
                c.message.as_deref().unwrap_or_default()
            )
        });
    unscheduled.map(|why| Diagnosis {
        problem: Problem::AgentPodNotRunning,
        message: format!("{at} is {phase}{why}"),
    })
}

/// The namespace's enforced Pod Security level, if labelled.
fn enforced_level(ns: Option<&Namespace>) -> Option<&str> {
    ns?.metadata
        .labels
        .as_ref()?
        .get(PSA_ENFORCE_LABEL)
        .map(String::as_str)
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn show(selector: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// When an Event last happened, for picking the newest (0 when it says nothing).
fn event_time(e: &Event) -> i64 {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .map_or(0, |t| t.as_second())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn ns(labels: serde_json::Value) -> Namespace {
        from(json!({"metadata": {"name": "strait-system", "labels": labels}}))
    }

    fn pod(node: &str, status: serde_json::Value) -> Pod {
        from(json!({
            "metadata": {"name": format!("strait-agent-{node}"), "namespace": "strait-system"},
            "spec": {"nodeName": node, "containers": [{"name": "agent"}]},
            "status": status,
        }))
    }

    fn waiting(reason: &str, message: &str) -> serde_json::Value {
        json!({"phase": "Pending", "containerStatuses": [{
            "name": "agent", "image": "localhost/strait-agent:0.1.0", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }]})
    }

    struct World {
        ns: Namespace,
        ds: Option<DaemonSet>,
        pods: Vec<Pod>,
        events: Vec<Event>,
        labels: BTreeMap<String, String>,
    }

    impl World {
        fn new() -> Self {
            Self {
                ns: ns(json!({})),
                ds: None,
                pods: vec![],
                events: vec![],
                labels: [("strait.dev/gateway".to_owned(), "true".to_owned())].into(),
            }
        }
        fn diagnose(&self) -> Option<Diagnosis> {
            let nodes = [("gw-a", &self.labels)];
            diagnose(&Observed {
                namespace: "strait-system",
                namespace_object: Some(&self.ns),
                daemonset: self.ds.as_ref(),
                pods: &self.pods,
                failed_creates: &self.events,
                nodes: &nodes,
            })
        }
    }

    #[test]
    fn a_baseline_or_restricted_namespace_forbids_the_agent_pods() {
        let mut w = World::new();
        assert_eq!(w.diagnose(), None, "nothing known to be wrong yet");
        for level in ["baseline", "restricted"] {
            w.ns = ns(json!({PSA_ENFORCE_LABEL: level}));
            let d = w.diagnose().unwrap();
            assert_eq!(d.problem, Problem::AgentPodsForbidden);
            assert!(d.message.contains(&format!("\"{level}\"")), "{}", d.message);
            assert!(d.message.contains("gw-a"), "{}", d.message);
            assert!(
                d.message
                    .contains("pod-security.kubernetes.io/enforce=privileged"),
                "{}",
                d.message
            );
        }
        w.ns = ns(json!({PSA_ENFORCE_LABEL: "privileged"}));
        assert_eq!(w.diagnose(), None);
    }

    #[test]
    fn the_daemonset_controllers_failed_create_events_say_why() {
        let mut w = World::new();
        let ev = |msg: &str, at: &str| -> Event {
            from(json!({
                "metadata": {"name": format!("e{at}")},
                "involvedObject": {"kind": "DaemonSet", "name": "strait-agent"},
                "reason": "FailedCreate", "message": msg, "lastTimestamp": at,
            }))
        };
        w.events = vec![
            ev("Error creating: old", "2026-01-01T00:00:00Z"),
            ev(
                "Error creating: pods \"strait-agent-x\" is forbidden: violates PodSecurity \"restricted:latest\": host namespaces (hostNetwork=true)",
                "2026-01-01T00:05:00Z",
            ),
        ];
        let d = w.diagnose().unwrap();
        assert_eq!(d.problem, Problem::AgentPodsForbidden);
        assert!(d.message.contains("restricted:latest"), "{}", d.message);
        w.events = vec![ev(
            "Error creating: insufficient quota to match these scopes: [{PriorityClass In [system-node-critical]}]",
            "2026-01-01T00:00:00Z",
        )];
        let d = w.diagnose().unwrap();
        assert_eq!(d.problem, Problem::AgentPodsNotCreated);
        assert!(d.message.contains("insufficient quota"), "{}", d.message);
        // a pod exists on the node now: old creation failures are not the story
        w.pods = vec![pod("gw-a", waiting("ContainerCreating", ""))];
        assert_eq!(w.diagnose(), None, "starting is no problem");
        w.pods = vec![pod(
            "gw-a",
            waiting("CreateContainerConfigError", "secret not found"),
        )];
        let d = w.diagnose().unwrap();
        assert_eq!(d.problem, Problem::AgentPodNotRunning);
        assert!(
            d.message
                .contains("CreateContainerConfigError: secret not found"),
            "{}",
            d.message
        );
    }

    #[test]
    fn image_problems_name_the_pod_node_and_image() {
        let mut w = World::new();
        for reason in ["ImagePullBackOff", "ErrImageNeverPull", "ErrImagePull"] {
            w.pods = vec![pod("gw-a", waiting(reason, "Back-off pulling image"))];
            let d = w.diagnose().unwrap();
            assert_eq!(d.problem, Problem::AgentImageUnavailable, "{reason}");
            assert!(
                d.message.contains("strait-agent-gw-a on node gw-a"),
                "{}",
                d.message
            );
            assert!(
                d.message.contains("localhost/strait-agent:0.1.0"),
                "{}",
                d.message
            );
            assert!(d.message.contains(reason), "{}", d.message);
        }
        // a pod on another node does not explain this one
        w.pods = vec![pod("other", waiting("ImagePullBackOff", ""))];
        assert_eq!(w.diagnose(), None);
    }

    #[test]
    fn a_crash_loop_reports_the_last_exit() {
        let mut w = World::new();
        w.pods = vec![pod(
            "gw-a",
            json!({"phase": "Running", "containerStatuses": [{
                "name": "agent", "image": "img", "imageID": "", "ready": false, "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }]}),
        )];
        let d = w.diagnose().unwrap();
        assert_eq!(d.problem, Problem::AgentCrashLoopBackOff);
        assert!(d.message.contains("5 restart(s)"), "{}", d.message);
        assert!(d.message.contains("exit code 1 (Error)"), "{}", d.message);
        assert!(d.message.contains("--previous"), "{}", d.message);
    }

    #[test]
    fn running_but_silent_and_unschedulable_pods() {
        let mut w = World::new();
        w.pods = vec![pod(
            "gw-a",
            json!({"phase": "Running", "containerStatuses": [{
                "name": "agent", "image": "img", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {}},
            }]}),
        )];
        assert_eq!(
            w.diagnose().map(|d| d.problem),
            Some(Problem::AgentNotReporting)
        );
        w.pods = vec![pod(
            "gw-a",
            json!({"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: insufficient memory",
            }]}),
        )];
        let d = w.diagnose().unwrap();
        assert_eq!(d.problem, Problem::AgentPodNotRunning);
        assert!(d.message.contains("insufficient memory"), "{}", d.message);
        // just created, nothing reported yet: no verdict
        w.pods = vec![pod("gw-a", json!({"phase": "Pending"}))];
        assert_eq!(w.diagnose(), None);
    }

    #[test]
    fn a_node_outside_the_agents_node_selector_gets_no_agent() {
        let mut w = World::new();
        w.ds = Some(from(json!({
            "metadata": {"name": "strait-agent"},
            "spec": {"selector": {}, "template": {"spec": {
                "containers": [{"name": "agent"}],
                "nodeSelector": {"kubernetes.io/os": "linux", "pool": "edge"},
            }}},
        })));
        let d = w.diagnose().unwrap();
        assert_eq!(d.problem, Problem::AgentNotScheduled);
        assert!(
            d.message.contains("{kubernetes.io/os=linux, pool=edge}"),
            "{}",
            d.message
        );
        w.labels.insert("kubernetes.io/os".into(), "linux".into());
        w.labels.insert("pool".into(), "edge".into());
        assert_eq!(w.diagnose(), None);
    }

    #[test]
    fn reasons_are_valid_condition_reasons() {
        for p in Problem::ALL {
            assert!(crate::conditions::is_valid_reason(p.as_str()), "{p:?}");
            assert_eq!(Problem::from_reason(p.as_str()), Some(p));
        }
        assert_eq!(Problem::from_reason("NoGatewayAvailable"), None);
    }
}
