//! Reading the cluster: the only module that talks to the API server. Everything `diagnose`
//! and `peer-config` judge is collected here into plain values, so the judging is pure and
//! unit-tested. Secret values are read only to run the agent's own spec mapping on them and are
//! dropped before this returns; what is kept is whether each key is there and its length.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context as _, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{AttachParams, ListParams};
use kube::core::{Selector, SelectorExt as _};
use kube::{Api, Client, ResourceExt as _};
use strait_agent::probe::PortResult;
use strait_agent::spec::{self, SecretSource};
use strait_crds::heartbeat;
use strait_crds::{IPsecTunnel, SecretKeyRef};
use zeroize::Zeroizing;

/// The label the agent pods carry (the chart's and the operator's DaemonSet).
pub const AGENT_POD_LABEL: &str = "app.kubernetes.io/name=strait-agent";

/// What a Secret key the spec names looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretState {
    /// The key is there with this many bytes (after the agent's newline trim).
    Present {
        /// Length in bytes.
        bytes: usize,
    },
    /// The Secret exists without this key; these keys are there.
    NoKey {
        /// The keys it has.
        keys: Vec<String>,
    },
    /// The key is there but empty.
    Empty,
    /// No such Secret in the operator's namespace.
    NotFound,
    /// The API refused to show it (RBAC): only its name is known.
    Unreadable(String),
}

/// One Secret key the spec needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretCheck {
    /// The reference.
    pub reference: SecretKeyRef,
    /// What was found.
    pub state: SecretState,
}

/// A gateway candidate: a node the tunnel's selector matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFact {
    /// Node name.
    pub name: String,
    /// The node's Ready condition is True.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned or draining).
    pub cordoned: bool,
    /// Its addresses, ExternalIP first, then InternalIP.
    pub addresses: Vec<String>,
    /// Seconds since its agent last renewed the heartbeat, if it has one.
    pub heartbeat_age: Option<i64>,
    /// The heartbeat is within its lease.
    pub alive: bool,
    /// The agent pod on it: name and a one-word state (`Running`, `CrashLoopBackOff`, ...).
    pub agent_pod: Option<(String, String)>,
}

/// Everything `diagnose` looks at for one tunnel.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The operator's namespace.
    pub namespace: String,
    /// The tunnel.
    pub tunnel: IPsecTunnel,
    /// The selector's error, when it is not valid.
    pub selector_error: Option<String>,
    /// Nodes the selector matches.
    pub candidates: Vec<NodeFact>,
    /// Each Secret key the spec names.
    pub secrets: Vec<SecretCheck>,
    /// The agent's own spec mapping with those Secrets: `Err((reason, message))` as the agent
    /// would report it.
    pub mapping: Result<(), (String, String)>,
    /// Warning Events about the tunnel, newest last: (reason, message).
    pub warnings: Vec<(String, String)>,
    /// The UDP probe from the gateway.
    pub probe: ProbeFact,
    /// When the facts were read.
    pub now: Timestamp,
}

/// The UDP 500/4500 probe (`strait-agent probe`) run in a gateway's agent pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFact {
    /// Not run, and why.
    Skipped(String),
    /// Run on this node, with each port's result.
    Ran {
        /// The node it ran on.
        node: String,
        /// One result per port.
        results: Vec<PortResult>,
    },
    /// It could not run there (no pods/exec right, an agent image without `probe`): the
    /// command and the error.
    Failed {
        /// What to run by hand.
        command: String,
        /// What went wrong.
        error: String,
    },
}

/// Secrets read from the API for one mapping run (dropped with it).
struct ReadSecrets<'a> {
    namespace: &'a str,
    secrets: &'a BTreeMap<String, Secret>,
}

impl SecretSource for ReadSecrets<'_> {
    fn read(&mut self, r: &SecretKeyRef) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
        strait_agent::cluster::secrets::key_of(self.namespace, self.secrets.get(&r.name), r)
    }
}

/// Reads the tunnel `name` and what it depends on; with `probe`, runs the UDP probe in the
/// gateway's agent pod.
///
/// # Errors
/// The tunnel cannot be read (missing, or the API is unreachable).
pub async fn collect(client: &Client, namespace: &str, name: &str, probe: bool) -> Result<Facts> {
    let tunnel = Api::<IPsecTunnel>::all(client.clone())
        .get(name)
        .await
        .with_context(|| format!("reading IPsecTunnel {name:?}"))?;
    let now = Timestamp::now();
    let (selector_error, candidates) = candidates(client, namespace, &tunnel, now).await?;
    let (secrets, mapping) = secrets_and_mapping(client, namespace, &tunnel).await;
    let warnings = warnings(client, name).await;
    let probe = if probe {
        probe_from_gateway(client, namespace, &tunnel, &candidates).await
    } else {
        ProbeFact::Skipped("--no-probe".to_owned())
    };
    Ok(Facts {
        namespace: namespace.to_owned(),
        tunnel,
        selector_error,
        candidates,
        secrets,
        mapping,
        warnings,
        probe,
        now,
    })
}

/// The agent's container in its pod (the operator's DaemonSet).
const AGENT_CONTAINER: &str = "agent";

/// How long the probe waits on each port, in seconds (it probes 500, then 4500).
const PROBE_TIMEOUT_SECONDS: u32 = 3;

/// The gateway to probe from: the active one, else the first candidate with a live agent,
/// as long as its agent pod runs.
fn probe_node<'a>(tunnel: &IPsecTunnel, candidates: &'a [NodeFact]) -> Option<&'a NodeFact> {
    let running = |n: &&NodeFact| n.agent_pod.as_ref().is_some_and(|(_, s)| s == "Running");
    let active = tunnel
        .status
        .as_ref()
        .and_then(|s| s.active_gateway.as_deref());
    candidates
        .iter()
        .filter(running)
        .find(|n| Some(n.name.as_str()) == active)
        .or_else(|| candidates.iter().filter(running).find(|n| n.alive))
}

/// The `strait-agent probe` command line for `tunnel`.
pub fn probe_command(tunnel: &IPsecTunnel) -> Vec<String> {
    let s = &tunnel.spec;
    let mut cmd = vec![
        "strait-agent".to_owned(),
        "probe".to_owned(),
        s.remote.address.clone(),
        "--timeout".to_owned(),
        PROBE_TIMEOUT_SECONDS.to_string(),
        "--json".to_owned(),
    ];
    if let Some(a) = &s.local.address {
        cmd.extend(["--local".to_owned(), a.clone()]);
    }
    // (4500 is probed anyway, with the non-ESP marker)
    if let Some(p) = s.remote.port.filter(|p| *p != 500 && *p != 4500) {
        cmd.extend(["--ike-port".to_owned(), p.to_string()]);
    }
    for p in s.ike.iter().flat_map(|i| &i.proposals) {
        cmd.extend(["--ike-proposal".to_owned(), p.clone()]);
    }
    cmd
}

async fn probe_from_gateway(
    client: &Client,
    namespace: &str,
    tunnel: &IPsecTunnel,
    candidates: &[NodeFact],
) -> ProbeFact {
    let remote = &tunnel.spec.remote.address;
    if remote == "%any" {
        return ProbeFact::Skipped(
            "the peer's address is %any: nothing to probe (the peer must initiate)".to_owned(),
        );
    }
    let Some(node) = probe_node(tunnel, candidates) else {
        return ProbeFact::Skipped("no gateway node with a running agent pod".to_owned());
    };
    let Some((pod, _)) = &node.agent_pod else {
        return ProbeFact::Skipped("no agent pod".to_owned());
    };
    let cmd = probe_command(tunnel);
    let by_hand = format!(
        "kubectl exec -n {namespace} {pod} -c {AGENT_CONTAINER} -- {}",
        cmd.join(" ")
    );
    let failed = |error: String| ProbeFact::Failed {
        command: by_hand.clone(),
        error,
    };
    // Two ports, each waited on for the timeout, plus the exec's own round trips.
    let limit = std::time::Duration::from_secs(u64::from(2 * PROBE_TIMEOUT_SECONDS + 15));
    match tokio::time::timeout(limit, exec(client, namespace, pod, &cmd)).await {
        Err(_) => failed(format!("no result within {} s", limit.as_secs())),
        Ok(Err(e)) => failed(format!("{e:#}")),
        Ok(Ok(stdout)) => match serde_json::from_slice::<Vec<PortResult>>(&stdout) {
            Ok(results) if !results.is_empty() => ProbeFact::Ran {
                node: node.name.clone(),
                results,
            },
            _ => failed(format!(
                "unexpected output: {}",
                String::from_utf8_lossy(&stdout).trim()
            )),
        },
    }
}

/// Runs `cmd` in the agent container of `pod` and returns its standard output (the probe
/// exits 1 when no port answered: its JSON still says what happened).
async fn exec(client: &Client, namespace: &str, pod: &str, cmd: &[String]) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let params = AttachParams::default()
        .container(AGENT_CONTAINER)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut proc = pods
        .exec(pod, cmd.iter().map(String::as_str), &params)
        .await
        .with_context(|| format!("exec in pod {namespace}/{pod}"))?;
    let mut stdout = proc.stdout().context("no stdout from exec")?;
    let mut stderr = proc.stderr().context("no stderr from exec")?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (o, e) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    o.context("reading the probe's output")?;
    e.context("reading the probe's errors")?;
    proc.join().await.context("waiting for the probe")?;
    if out.is_empty() {
        anyhow::bail!("{}", String::from_utf8_lossy(&err).trim());
    }
    Ok(out)
}

async fn candidates(
    client: &Client,
    namespace: &str,
    tunnel: &IPsecTunnel,
    now: Timestamp,
) -> Result<(Option<String>, Vec<NodeFact>)> {
    let Some(g) = &tunnel.spec.gateway else {
        return Ok((None, Vec::new()));
    };
    let sel = match Selector::try_from(g.node_selector.clone()) {
        Ok(s) => s,
        Err(e) => return Ok((Some(e.to_string()), Vec::new())),
    };
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing nodes")?;
    let leases: BTreeMap<String, Lease> = Api::<Lease>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|l| l.items.into_iter().map(|l| (l.name_any(), l)).collect())
        .unwrap_or_default();
    let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(AGENT_POD_LABEL))
        .await
        .map(|p| p.items)
        .unwrap_or_default();
    let mut out = Vec::new();
    for n in nodes.items.iter().filter(|n| sel.matches(n.labels())) {
        let name = n.name_any();
        let lease = leases.get(&heartbeat::lease_name(&name));
        let renewed = lease
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
            .map(|t| now.as_second() - t.0.as_second());
        out.push(NodeFact {
            ready: node_ready(n),
            cordoned: n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
            addresses: node_addresses(n),
            heartbeat_age: renewed,
            alive: lease.is_some_and(|l| heartbeat::is_alive(l, now)),
            agent_pod: pods
                .iter()
                .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name))
                .map(|p| (p.name_any(), pod_state(p))),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((None, out))
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// ExternalIP first (what a remote site usually sees), then InternalIP.
pub fn node_addresses(n: &Node) -> Vec<String> {
    let all = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let of = |kind: &'static str| {
        all.iter()
            .filter(move |a| a.type_ == kind && a.address.parse::<IpAddr>().is_ok())
            .map(|a| a.address.clone())
    };
    of("ExternalIP").chain(of("InternalIP")).collect()
}

/// One word for a pod: its first container's waiting reason, or its phase.
fn pod_state(p: &Pod) -> String {
    let status = p.status.as_ref();
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    waiting
        .or_else(|| status.and_then(|s| s.phase.clone()))
        .unwrap_or_else(|| "Unknown".to_owned())
}

async fn secrets_and_mapping(
    client: &Client,
    namespace: &str,
    tunnel: &IPsecTunnel,
) -> (Vec<SecretCheck>, Result<(), (String, String)>) {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut read: BTreeMap<String, Secret> = BTreeMap::new();
    let mut checks = Vec::new();
    for r in spec::secret_refs(&tunnel.spec) {
        let state = match read.get(&r.name) {
            Some(s) => key_state(s, &r.key),
            None => match api.get_opt(&r.name).await {
                Ok(Some(s)) => {
                    let st = key_state(&s, &r.key);
                    read.insert(r.name.clone(), s);
                    st
                }
                Ok(None) => SecretState::NotFound,
                Err(e) => SecretState::Unreadable(e.to_string()),
            },
        };
        checks.push(SecretCheck {
            reference: r,
            state,
        });
    }
    // the agent's mapping, with placeholder addresses: DNS and routes are the node's business
    let mut spec = tunnel.spec.clone();
    let v6 = spec
        .remote
        .address
        .parse::<IpAddr>()
        .is_ok_and(|a| a.is_ipv6());
    let placeholder = if v6 { "2001:db8::1" } else { "192.0.2.1" };
    if spec.remote.address.parse::<IpAddr>().is_err() {
        placeholder.clone_into(&mut spec.remote.address);
    }
    if spec.local.address.is_none() {
        spec.local.address = Some(if v6 { "2001:db8::2" } else { "192.0.2.2" }.to_owned());
    }
    let mut source = ReadSecrets {
        namespace,
        secrets: &read,
    };
    let def = spec::definition(tunnel.name_any(), spec, 500, &mut source).await;
    let mapping = def
        .peer
        .map(|_| ())
        .map_err(|e| (e.reason.to_string(), e.message.clone()));
    drop(read);
    (checks, mapping)
}

fn key_state(s: &Secret, key: &str) -> SecretState {
    let data = s.data.as_ref();
    match data.and_then(|d| d.get(key)) {
        None => SecretState::NoKey {
            keys: data
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default(),
        },
        Some(v) => {
            let mut b = Zeroizing::new(v.0.clone());
            spec::trim_newline(&mut b);
            if b.is_empty() {
                SecretState::Empty
            } else {
                SecretState::Present { bytes: b.len() }
            }
        }
    }
}

/// Warning Events about the tunnel (the operator records them in the `default` namespace, as
/// for every cluster-scoped object), oldest first.
async fn warnings(client: &Client, tunnel: &str) -> Vec<(String, String)> {
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=IPsecTunnel,involvedObject.name={tunnel},type=Warning"
    ));
    let mut events: Vec<Event> = Api::<Event>::all(client.clone())
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    events.sort_by_key(|e| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or_default()
    });
    events
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// The addresses the remote site should expect the cluster's IKE from: `spec.local.address`,
/// else every gateway's reported local endpoint and every candidate node's addresses.
pub fn cluster_addresses(t: &IPsecTunnel, candidates: &[NodeFact]) -> Vec<String> {
    if let Some(a) = &t.spec.local.address {
        return vec![a.clone()];
    }
    let mut out: Vec<String> = Vec::new();
    let mut add = |a: String| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    if let Some(s) = &t.status {
        let active = s.active_gateway.as_deref();
        let mut gws: Vec<_> = s.gateways.iter().collect();
        // the active gateway's address first: a remote initiator tries them in order
        gws.sort_by_key(|g| Some(g.node.as_str()) != active);
        for g in gws {
            if let Some(ip) = g.local_endpoint.as_deref().and_then(endpoint_ip) {
                add(ip.to_string());
            }
        }
    }
    for n in candidates {
        if let Some(a) = n.addresses.first() {
            add(a.clone());
        }
    }
    out
}

/// The address of an `addr:port` or `[v6]:port` endpoint.
pub fn endpoint_ip(e: &str) -> Option<IpAddr> {
    if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    e.parse().ok()
}
