//! The IPsecTunnel controller: gateway election, conditions, events, the agent DaemonSet, and the
//! deletion handshake with the agents.
//!
//! Reconcile is small and idempotent: it reads the tunnel, the Nodes and the agents' heartbeat
//! Leases (from watch caches), elects a gateway, computes the conditions, and server-side applies
//! the fields the operator owns (`observedGeneration`, `conditions`, `activeGateway`) under the
//! field manager `strait-operator` — only when they changed, and never `gateways[]`, whose entries
//! belong to the agents.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt as _};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use strait_crds::contract::OPERATOR_FIELD_MANAGER;
use strait_crds::watch::WatchBackoff;
use strait_crds::{IPsecTunnel, heartbeat};

use crate::caches::{Cache, CacheSync};
use crate::conditions::{self, Situation};
use crate::daemonset::{self, AgentTemplate};
use crate::diagnosis::{self, Diagnosis, Problem};
use crate::election::{Candidate, elect};
use crate::error::{Error, Fault};
use crate::metrics::{Metrics, READY_STATUSES};

/// The finalizer that holds a deleted tunnel until its agents removed their kernel objects.
pub const FINALIZER: &str = "strait.dev/cleanup";
/// How often the DaemonSet is re-applied even when nothing changed (repairs manual edits).
const DAEMONSET_RESYNC: Duration = Duration::from_secs(300);
/// How often a tunnel is reconciled when no event and no lease expiry comes first.
const RESYNC: Duration = Duration::from_secs(300);
/// How long the direct read of a heartbeat Lease may take before the API server counts as away.
const LEASE_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a tunnel whose nodes have no live agent is looked at again: pod states (an image
/// pull failing, a crash loop) are not watched, so the diagnosis follows them by polling.
const DIAGNOSIS_RESYNC: Duration = Duration::from_secs(10);

/// Whether this operator could see the API server lately. A heartbeat Lease only looks expired
/// to us because we saw no renewal; while we could not see (the API server down or hung, our
/// watch broken) and for one lease duration after, a missing renewal proves nothing, so the
/// active gateway keeps its tunnels. Without this, every tunnel was torn down and rebuilt after
/// any API outage longer than the lease.
#[derive(Debug)]
struct ApiSight {
    /// A request or watch failed and nothing succeeded since.
    failing: bool,
    /// Since when requests succeed again (or since start: a new operator has seen no renewals).
    ok_since: Instant,
    /// When the heartbeat Lease watch last delivered an event (wall clock, as Lease times are).
    last_lease_event: Option<Timestamp>,
}

impl ApiSight {
    fn new(now: Instant) -> Self {
        Self {
            failing: false,
            ok_since: now,
            last_lease_event: None,
        }
    }

    /// Records a failure; `true` when this starts a failing spell (so it is logged once).
    fn failed(&mut self) -> bool {
        !std::mem::replace(&mut self.failing, true)
    }

    /// The Lease watch delivered an event at `at`.
    fn lease_event(&mut self, at: Timestamp, now: Instant) {
        self.last_lease_event = Some(at);
        self.succeeded(now);
    }

    /// Whether the Lease watch delivered an event after `expired`. The events of one watch come
    /// in order, so a renewal made before that event is in the cache: a Lease that still looks
    /// expired then really was not renewed, whatever a direct read says.
    fn watch_live_after(&self, expired: Timestamp) -> bool {
        self.last_lease_event.is_some_and(|at| at > expired)
    }

    fn succeeded(&mut self, now: Instant) {
        if self.failing {
            self.failing = false;
            self.ok_since = now;
        }
    }

    /// Until when an expired-looking heartbeat (lease of `grace`) proves nothing; `None` when
    /// we have seen well enough for long enough to trust it.
    fn blind_until(&self, grace: Duration, now: Instant) -> Option<Instant> {
        if self.failing {
            return Some(now + grace);
        }
        let until = self.ok_since + grace;
        (until > now).then_some(until)
    }
}

/// Which watch an event that re-reconciles every tunnel came from.
#[derive(Debug, Clone, Copy)]
enum WatchSource {
    Node,
    Lease,
}

/// What the controller needs from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The operator's namespace: heartbeat Leases, Secrets, the agent DaemonSet.
    pub namespace: String,
    /// How long a deleted tunnel waits for its agents before the finalizer is released anyway.
    pub deletion_timeout: Duration,
    /// The agent DaemonSet's pod template; `None` when the DaemonSet is managed elsewhere.
    pub agent: Option<AgentTemplate>,
    /// The Deployment (in `namespace`) that owns the agent DaemonSet, so that deleting it
    /// removes the DaemonSet; `None`: no owner (the operator runs outside a Deployment).
    pub owner_deployment: Option<String>,
    /// This replica's identity, reported on Events.
    pub identity: String,
    /// With leader election: how long the watch caches may take to fill before the process
    /// exits to be restarted (a stuck leader would hold the Lease and reconcile nothing).
    pub cache_sync_timeout: Option<Duration>,
}

/// Shared state of all reconciles.
struct Context {
    client: Client,
    settings: Settings,
    reporter: Reporter,
    metrics: Metrics,
    nodes: Store<Node>,
    leases: Store<Lease>,
    tunnels: Store<IPsecTunnel>,
    /// Which of the three caches hold a complete list; wait on this, never on a store.
    caches: CacheSync,
    /// Tunnel name → its Ready condition's status and reason.
    ready_by_tunnel: Mutex<BTreeMap<String, (String, String)>>,
    /// The active gateway this operator last elected for each tunnel (spreading, [`elect`]).
    assigned: Mutex<BTreeMap<String, String>>,
    last_daemonset: Mutex<Option<(String, Instant)>>,
    sight: Arc<Mutex<ApiSight>>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let wc = watcher::Config::default().any_semantic();
    let caches = CacheSync::new();
    let (nodes, nodes_writer) = reflector::store();
    let node_events = watcher(Api::<Node>::all(client.clone()), wc.clone())
        .backoff(WatchBackoff::default())
        .reflect(nodes_writer)
        .inspect_ok(caches.observer(Cache::Nodes))
        .touched_objects()
        .map_ok(|_| WatchSource::Node);
    let (leases, leases_writer) = reflector::store();
    let lease_events = watcher(
        Api::<Lease>::namespaced(client.clone(), &settings.namespace),
        wc.clone(),
    )
    .backoff(WatchBackoff::default())
    .reflect(leases_writer)
    .inspect_ok(caches.observer(Cache::Leases))
    .touched_objects()
    .try_filter(|l| std::future::ready(heartbeat::node_of_lease(&l.name_any()).is_some()))
    .map_ok(|_| WatchSource::Lease);
    // Any Node or heartbeat change may move a gateway: re-reconcile every tunnel (there are few).
    let sight = Arc::new(Mutex::new(ApiSight::new(Instant::now())));
    let watch_sight = sight.clone();
    let triggers = futures::stream::select(node_events, lease_events).filter_map(move |r| {
        if let Ok(mut s) = watch_sight.lock() {
            match &r {
                Ok(WatchSource::Lease) => s.lease_event(Timestamp::now(), Instant::now()),
                Ok(WatchSource::Node) => s.succeeded(Instant::now()),
                Err(_) => {
                    s.failed();
                }
            }
        }
        async {
            r.map(|_| ())
                .map_err(|e| tracing::warn!(error = %e, "watching nodes or leases failed"))
                .ok()
        }
    });

    // The controller's own watch, but built here so that it reports its InitDone to `caches`.
    let (tunnels, tunnels_writer) = reflector::store();
    let tunnel_events = watcher(Api::<IPsecTunnel>::all(client.clone()), wc)
        .reflect(tunnels_writer)
        .inspect_ok(caches.observer(Cache::Tunnels))
        .applied_objects();
    let controller = Controller::for_stream(tunnel_events, tunnels.clone())
        .trigger_backoff(WatchBackoff::default());
    let reporter = Reporter {
        controller: "strait-operator".to_owned(),
        instance: Some(settings.identity.clone()),
    };
    let ctx = Arc::new(Context {
        reporter,
        client,
        settings,
        metrics,
        nodes,
        leases,
        tunnels,
        caches,
        ready_by_tunnel: Mutex::new(BTreeMap::new()),
        assigned: Mutex::new(BTreeMap::new()),
        last_daemonset: Mutex::new(None),
        sight,
    });

    // With no tunnel there is no reconcile: bring the DaemonSet in line once at start.
    let start_ctx = ctx.clone();
    tokio::spawn(async move {
        start_ctx.caches.wait().await;
        if let Err(e) = start_ctx.sync_daemonset(None).await {
            tracing::warn!(error = %e, "initial agent DaemonSet sync failed");
        }
    });
    // A leader whose watches never fill reconciles nothing and keeps every gateway as it was
    // (seen once on kubelets: a replica that had just started took over and stayed silent).
    // As controller-runtime's cache sync timeout does, give up and exit: the kubelet restarts
    // the pod, and this replica, or the other, starts again with fresh connections.
    let sync_ctx = ctx.clone();
    let sync_timeout = ctx.settings.cache_sync_timeout;
    tokio::spawn(async move {
        let Some(limit) = sync_timeout else {
            return;
        };
        let filled = tokio::time::timeout(limit, sync_ctx.caches.wait()).await;
        match filled {
            Ok(()) => tracing::info!("watch caches filled"),
            Err(_) => {
                tracing::error!(
                    missing = ?sync_ctx.caches.missing(),
                    timeout_s = limit.as_secs(),
                    "the watch caches did not fill in time; exiting so that the pod is restarted"
                );
                std::process::exit(1);
            }
        }
    });

    controller
        .reconcile_all_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(tunnel = %obj.name, "reconciled"),
                // A failed watch of IPsecTunnels is retried with backoff; say so, as for
                // Nodes and Leases, so that an operator deaf to the API server is visible.
                Err(kube::runtime::controller::Error::QueueError(e)) => {
                    tracing::warn!(error = %e, "watching IPsecTunnels failed");
                }
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

async fn reconcile(tunnel: Arc<IPsecTunnel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // Decide nothing from half-filled caches: an empty Node cache would look like "no gateway".
    ctx.caches.wait().await;
    let api = Api::<IPsecTunnel>::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, tunnel, |event| async {
        match event {
            Finalizer::Apply(t) => apply(&t, &ctx).await,
            Finalizer::Cleanup(t) => cleanup(&t, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));

    let m = &ctx.metrics;
    m.reconcile_duration
        .with_label_values(&[] as &[&str])
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => m.reconciles.with_label_values(&["success"]).inc(),
        Err(e) if e.fault() == Fault::Waiting => {
            m.reconciles.with_label_values(&["waiting"]).inc();
        }
        Err(e) => {
            m.reconciles.with_label_values(&["error"]).inc();
            m.reconcile_errors.with_label_values(&[e.kind()]).inc();
        }
    }
    result
}

fn error_policy(tunnel: Arc<IPsecTunnel>, err: &Error, _ctx: Arc<Context>) -> Action {
    match err.fault() {
        Fault::Waiting => {
            tracing::info!(tunnel = %tunnel.name_any(), "{err}");
            Action::requeue(Duration::from_secs(1))
        }
        _ => {
            tracing::warn!(tunnel = %tunnel.name_any(), kind = err.kind(), error = %err, "reconcile failed");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

/// The outcome of the election for one tunnel.
struct Election {
    active: Option<String>,
    /// When the active gateway's heartbeat runs out, if nothing renews it.
    active_expires: Option<Timestamp>,
    matching_nodes: usize,
    /// The matching nodes' names, in name order.
    matching: Vec<String>,
}

async fn apply(t: &IPsecTunnel, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    let name = t.name_any();
    let status = t.status.clone().unwrap_or_default();
    let previous = status.active_gateway.clone();

    ctx.sync_daemonset(None).await?;

    let selector = t
        .spec
        .gateway
        .as_ref()
        .map(|g| Selector::try_from(g.node_selector.clone()));
    let (election, bad_selector) = match selector {
        None => (
            None,
            Some((
                "NoGatewaySelector",
                "spec.gateway.nodeSelector is required when the operator manages the tunnel"
                    .to_owned(),
            )),
        ),
        Some(Err(e)) => (
            None,
            Some((
                "InvalidGatewaySelector",
                format!("spec.gateway.nodeSelector cannot be evaluated: {e}"),
            )),
        ),
        Some(Ok(sel)) => {
            let e = ctx.elect(&name, &sel, previous.as_deref(), now);
            let e = ctx.confirm_expiry(e, previous.as_deref(), &sel, now).await;
            if let (Some(kept), Ok(mut a)) = (&e.active, ctx.assigned.lock()) {
                // the previous gateway kept the tunnel after all
                a.insert(name.clone(), kept.clone());
            }
            (Some((e, sel)), None)
        }
    };
    // Nodes match but none has a live agent: find out why, if the cluster's objects say.
    let diagnosis = match &election {
        Some((e, _)) if e.active.is_none() && !e.matching.is_empty() => {
            ctx.diagnose(&e.matching).await
        }
        _ => None,
    };
    let situation = match (&election, &bad_selector) {
        (Some((e, _)), _) => match &e.active {
            Some(node) => Situation::Active {
                node,
                entry: status.gateways.iter().find(|g| g.node == *node),
            },
            None => Situation::NoGateway {
                matching_nodes: e.matching_nodes,
                diagnosis: diagnosis.as_ref(),
            },
        },
        (None, Some((reason, message))) => Situation::BadSelector { reason, message },
        (None, None) => Situation::NoGateway {
            matching_nodes: 0,
            diagnosis: None,
        },
    };
    let active = election.as_ref().and_then(|(e, _)| e.active.clone());
    let generation = t.metadata.generation;
    let conditions = conditions::to_api(
        conditions::compute(situation),
        &status.conditions,
        generation,
        now,
    );

    let changed = status.observed_generation != generation
        || status.active_gateway != active
        || sorted(&status.conditions) != sorted(&conditions);
    if changed {
        let mut body = serde_json::json!({
            "apiVersion": strait_crds::API_VERSION,
            "kind": "IPsecTunnel",
            "status": {"observedGeneration": generation, "conditions": conditions},
        });
        if let (Some(node), Some(s)) = (&active, body.get_mut("status")) {
            s["activeGateway"] = serde_json::Value::String(node.clone());
        }
        let api = Api::<IPsecTunnel>::all(ctx.client.clone());
        api.patch_status(
            &name,
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        ctx.announce(
            t,
            previous.as_deref(),
            active.as_deref(),
            election.as_ref().map(|(_, s)| s),
            &status.conditions,
            &conditions,
            now,
        )
        .await;
    }
    ctx.set_ready(
        &name,
        conditions::ready_status(&conditions),
        conditions::ready_reason(&conditions),
    );

    // A heartbeat that runs out is no event: wake up when the active one would.
    let diagnosing = election
        .as_ref()
        .is_some_and(|(e, _)| e.active.is_none() && !e.matching.is_empty())
        && ctx.settings.agent.is_some();
    if diagnosing {
        return Ok(Action::requeue(DIAGNOSIS_RESYNC));
    }
    let wake = election
        .and_then(|(e, _)| e.active_expires)
        .and_then(|exp| exp.duration_since(now).try_into().ok())
        .map_or(RESYNC, |d: Duration| {
            (d + Duration::from_millis(200)).min(RESYNC)
        });
    Ok(Action::requeue(wake))
}

async fn cleanup(t: &IPsecTunnel, ctx: &Context) -> Result<Action, Error> {
    let name = t.name_any();
    let now = Timestamp::now();
    let pending: Vec<String> = t
        .status
        .iter()
        .flat_map(|s| &s.gateways)
        .map(|g| g.node.clone())
        .collect();
    if !pending.is_empty() {
        let since = t.metadata.deletion_timestamp.as_ref().map_or(now, |d| d.0);
        let timeout =
            SignedDuration::try_from(ctx.settings.deletion_timeout).unwrap_or(SignedDuration::MAX);
        if now.duration_since(since) < timeout {
            return Err(Error::WaitingForAgents { nodes: pending });
        }
        ctx.publish(
            t,
            EventType::Warning,
            "CleanupTimedOut",
            format!(
                "the agents on {} did not confirm removing the tunnel within {}s; releasing the \
                 finalizer anyway. Kernel state may remain on those nodes until their agent runs again",
                pending.join(", "),
                ctx.settings.deletion_timeout.as_secs()
            ),
        )
        .await;
    }
    tracing::info!(tunnel = %name, "agents are done; releasing the finalizer");
    if let Ok(mut m) = ctx.ready_by_tunnel.lock() {
        m.remove(&name);
    }
    if let Ok(mut a) = ctx.assigned.lock() {
        a.remove(&name);
    }
    ctx.update_tunnel_gauges();
    ctx.sync_daemonset(Some(&name)).await?;
    Ok(Action::await_change())
}

/// Conditions in a comparable order.
fn sorted(c: &[Condition]) -> Vec<&Condition> {
    let mut v: Vec<&Condition> = c.iter().collect();
    v.sort_by(|a, b| a.type_.cmp(&b.type_));
    v
}

impl Context {
    fn elect(
        &self,
        tunnel: &str,
        sel: &Selector,
        previous: Option<&str>,
        now: Timestamp,
    ) -> Election {
        // held until this choice is recorded: tunnels reconciled at once see each other's
        let mut assigned = self
            .assigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let load = self.gateway_load(tunnel, &assigned);
        let mut matching = Vec::new();
        let mut alive: BTreeMap<String, Timestamp> = BTreeMap::new();
        let mut candidates: BTreeMap<String, Candidate> = BTreeMap::new();
        for node in self.nodes.state() {
            if node.metadata.deletion_timestamp.is_some() || !sel.matches(node.labels()) {
                continue;
            }
            let node_name = node.name_any();
            matching.push(node_name.clone());
            let lease_ref =
                ObjectRef::new(&heartbeat::lease_name(&node_name)).within(&self.settings.namespace);
            let expires = self
                .leases
                .get(&lease_ref)
                .and_then(|l| heartbeat::expires_at(&l));
            if let Some(exp) = expires.filter(|exp| *exp > now) {
                let c = Candidate {
                    cordoned: cordoned(&node),
                    load: load.get(&node_name).copied().unwrap_or(0),
                };
                candidates.insert(node_name.clone(), c);
                alive.insert(node_name, exp);
            }
        }
        let active = elect(previous, &candidates);
        match &active {
            Some(n) => assigned.insert(tunnel.to_owned(), n.clone()),
            None => assigned.remove(tunnel),
        };
        drop(assigned);
        matching.sort();
        Election {
            active_expires: active.as_ref().and_then(|a| alive.get(a).copied()),
            active,
            matching_nodes: matching.len(),
            matching,
        }
    }

    /// How many tunnels other than `tunnel` each node is the active gateway of: this
    /// operator's own recent choices first (the cache lags its status writes, and tunnels
    /// applied together are reconciled together), then the cached status.
    fn gateway_load(
        &self,
        tunnel: &str,
        assigned: &BTreeMap<String, String>,
    ) -> BTreeMap<String, usize> {
        let mut load: BTreeMap<String, usize> = BTreeMap::new();
        for t in self.tunnels.state() {
            let name = t.name_any();
            if name == tunnel || t.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let node = assigned
                .get(&name)
                .cloned()
                .or_else(|| t.status.as_ref().and_then(|s| s.active_gateway.clone()));
            if let Some(n) = node {
                *load.entry(n).or_default() += 1;
            }
        }
        load
    }

    /// The current gateway `previous` lost the election: if only because its heartbeat looks
    /// expired, check that before it loses the tunnel. It keeps the tunnel while this operator
    /// could not see the API server lately ([`ApiSight`]), or when a direct read of its Lease
    /// (not the watch cache, which may lag) shows it renewed.
    async fn confirm_expiry(
        &self,
        mut e: Election,
        previous: Option<&str>,
        sel: &Selector,
        now: Timestamp,
    ) -> Election {
        let Some(prev) = previous.filter(|p| e.active.as_deref() != Some(*p)) else {
            return e;
        };
        // a node removed, being deleted, deselected or cordoned loses the role at once
        match self.nodes.get(&ObjectRef::new(prev)) {
            Some(n)
                if n.metadata.deletion_timestamp.is_none()
                    && sel.matches(n.labels())
                    && !cordoned(&n) => {}
            _ => return e,
        }
        let lease_ref =
            ObjectRef::new(&heartbeat::lease_name(prev)).within(&self.settings.namespace);
        // no Lease at all: the agent never ran or was removed, not a renewal we missed
        let Some(cached) = self.leases.get(&lease_ref) else {
            return e;
        };
        let secs = cached
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .filter(|s| *s > 0)
            .unwrap_or(heartbeat::DEFAULT_LEASE_DURATION_SECONDS);
        let grace = Duration::from_secs(u64::try_from(secs).unwrap_or(15));
        let lock = |f: &dyn Fn(&mut ApiSight)| {
            if let Ok(mut s) = self.sight.lock() {
                f(&mut s);
            }
        };
        let api = Api::<Lease>::namespaced(self.client.clone(), &self.settings.namespace);
        let read = tokio::time::timeout(LEASE_READ_TIMEOUT, api.get(&lease_ref.name)).await;
        let fresh = match read {
            Ok(Ok(l)) => {
                lock(&|s| s.succeeded(Instant::now()));
                Some(l)
            }
            Ok(Err(kube::Error::Api(ae))) if ae.code == 404 => {
                lock(&|s| s.succeeded(Instant::now()));
                None
            }
            Ok(Err(e)) => {
                self.read_failed(prev, &cached, &e.to_string());
                None
            }
            Err(_) => {
                self.read_failed(prev, &cached, "timed out");
                None
            }
        };
        let renewed = fresh
            .as_ref()
            .and_then(heartbeat::expires_at)
            .filter(|exp| *exp > now);
        let blind = self
            .sight
            .lock()
            .ok()
            .and_then(|s| s.blind_until(grace, Instant::now()))
            .and_then(|until| {
                let left = until.saturating_duration_since(Instant::now());
                now.checked_add(SignedDuration::try_from(left).ok()?).ok()
            });
        if let Some(until) = renewed.or(blind) {
            tracing::info!(
                node = prev,
                renewed = renewed.is_some(),
                "the gateway's heartbeat looked expired, but it renewed or the API server was \
                 not visible lately: keeping the gateway"
            );
            e.active = Some(prev.to_owned());
            e.active_expires = Some(until);
        }
        e
    }

    /// A direct read of `prev`'s Lease failed. It blinds us ([`ApiSight`]) unless the Lease
    /// watch delivered an event after the cached Lease ran out: then the cache is current and
    /// the gateway really stopped renewing. Without that exception a new leader whose reads
    /// failed (a Service route still pointing at a stopped node) kept a dead gateway forever,
    /// each watch event restarting the grace period.
    fn read_failed(&self, prev: &str, cached: &Lease, why: &str) {
        let Ok(mut s) = self.sight.lock() else {
            return;
        };
        let current = heartbeat::expires_at(cached).is_some_and(|exp| s.watch_live_after(exp));
        if current {
            tracing::debug!(
                node = prev,
                error = why,
                "reading the gateway's Lease failed; the Lease watch is current past its expiry"
            );
        } else if s.failed() {
            tracing::warn!(
                node = prev,
                error = why,
                "reading the gateway's Lease failed: the API server counts as not visible"
            );
        }
    }

    /// Why `node` stopped being a candidate, for the failover Event.
    fn why_lost(&self, node: &str, sel: Option<&Selector>) -> String {
        let Some(sel) = sel else {
            return format!(
                "spec.gateway.nodeSelector no longer selects {node} (missing or invalid)"
            );
        };
        match self.nodes.get(&ObjectRef::new(node)) {
            None => format!("node {node} was removed"),
            Some(n) if n.metadata.deletion_timestamp.is_some() => {
                format!("node {node} is being deleted")
            }
            Some(n) if !sel.matches(n.labels()) => {
                format!("node {node} no longer matches spec.gateway.nodeSelector")
            }
            Some(n) if cordoned(&n) => {
                format!("node {node} is cordoned (spec.unschedulable): another gateway took over")
            }
            Some(_) => format!("the agent on {node} stopped renewing its heartbeat Lease"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn announce(
        &self,
        t: &IPsecTunnel,
        previous: Option<&str>,
        active: Option<&str>,
        sel: Option<&Selector>,
        old: &[Condition],
        new: &[Condition],
        _now: Timestamp,
    ) {
        match (previous, active) {
            (None, Some(n)) => {
                let note = format!("node {n} elected as the active gateway");
                self.publish(t, EventType::Normal, "GatewayElected", note)
                    .await;
            }
            (Some(p), Some(n)) if p != n => {
                self.metrics
                    .failovers
                    .with_label_values(&[] as &[&str])
                    .inc();
                let note = format!(
                    "active gateway moved from {p} to {n}: {}",
                    self.why_lost(p, sel)
                );
                self.publish(t, EventType::Warning, "GatewayFailover", note)
                    .await;
            }
            (Some(p), None) => {
                let note = format!("{}; no other node can take over", self.why_lost(p, sel));
                self.publish(t, EventType::Warning, "GatewayLost", note)
                    .await;
            }
            _ => {}
        }
        if let Some((type_, reason, note)) = ready_event(old, new) {
            self.publish(t, type_, &reason, note).await;
        }
    }

    async fn publish(&self, t: &IPsecTunnel, type_: EventType, reason: &str, note: String) {
        let ev = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        // A fresh Recorder per Event: the shared one folds Events with the same reason into one
        // series that keeps the first note, and each transition here has its own message.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&ev, &t.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing an Event failed");
        }
    }

    fn set_ready(&self, tunnel: &str, status: &str, reason: &str) {
        if let Ok(mut m) = self.ready_by_tunnel.lock() {
            m.insert(tunnel.to_owned(), (status.to_owned(), reason.to_owned()));
        }
        self.update_tunnel_gauges();
    }

    fn update_tunnel_gauges(&self) {
        let Ok(m) = self.ready_by_tunnel.lock() else {
            return;
        };
        for s in READY_STATUSES {
            let n = m.values().filter(|v| v.0 == s).count();
            self.metrics
                .tunnels
                .with_label_values(&[s])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.metrics.set_tunnel_ready(
            m.iter()
                .map(|(t, (s, r))| (t.as_str(), s.as_str(), r.as_str())),
        );
    }

    /// Why the agents on `nodes` (matching, none alive) do not run, from the operator's
    /// Namespace, the agent DaemonSet, its pods and its `FailedCreate` Events. Only when the
    /// operator manages the DaemonSet; a read that fails (an older chart's RBAC, the API server
    /// away) leaves that part out rather than failing the reconcile.
    async fn diagnose(&self, nodes: &[String]) -> Option<Diagnosis> {
        self.settings.agent.as_ref()?;
        let ns = &self.settings.namespace;
        let skip = |what: &'static str| {
            move |e: kube::Error| {
                tracing::debug!(error = %e, "diagnosis: cannot read {what}");
            }
        };
        let namespace = Api::<Namespace>::all(self.client.clone())
            .get(ns)
            .await
            .map_err(skip("the namespace"))
            .ok();
        let ds = Api::<DaemonSet>::namespaced(self.client.clone(), ns)
            .get_opt(daemonset::NAME)
            .await
            .map_err(skip("the agent DaemonSet"))
            .ok()
            .flatten();
        let (k, v) = daemonset::POD_LABEL;
        let pods = Api::<Pod>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().labels(&format!("{k}={v}")))
            .await
            .map_err(skip("the agent pods"))
            .map(|l| l.items)
            .unwrap_or_default();
        let events = Api::<CoreEvent>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().fields(&format!(
                "involvedObject.kind=DaemonSet,involvedObject.name={},reason=FailedCreate",
                daemonset::NAME
            )))
            .await
            .map_err(skip("the DaemonSet's Events"))
            .map(|l| l.items)
            .unwrap_or_default();
        let node_objects: Vec<Arc<Node>> = nodes
            .iter()
            .filter_map(|n| self.nodes.get(&ObjectRef::new(n)))
            .collect();
        let empty = BTreeMap::new();
        let with_labels: Vec<(&str, &BTreeMap<String, String>)> = node_objects
            .iter()
            .map(|n| {
                (
                    n.metadata.name.as_deref().unwrap_or_default(),
                    n.metadata.labels.as_ref().unwrap_or(&empty),
                )
            })
            .collect();
        diagnosis::diagnose(&diagnosis::Observed {
            namespace: ns,
            namespace_object: namespace.as_ref(),
            daemonset: ds.as_ref(),
            pods: &pods,
            failed_creates: &events,
            nodes: &with_labels,
        })
    }

    /// Applies the agent DaemonSet for the current tunnels (all but `exclude`, whose finalizer is
    /// being released). Tunnels being deleted still count: their agents must stay to clean up.
    async fn sync_daemonset(&self, exclude: Option<&str>) -> Result<(), Error> {
        let Some(tpl) = &self.settings.agent else {
            return Ok(());
        };
        let tunnels = self.tunnels.state();
        let selectors: Vec<&LabelSelector> = tunnels
            .iter()
            .filter(|t| exclude.is_none_or(|x| t.metadata.name.as_deref() != Some(x)))
            .filter_map(|t| t.spec.gateway.as_ref().map(|g| &g.node_selector))
            .collect();
        let terms = daemonset::terms(selectors);
        let key = serde_json::to_string(&terms).map_err(Error::Serialize)?;
        let fresh = self
            .last_daemonset
            .lock()
            .ok()
            .and_then(|g| {
                g.as_ref()
                    .map(|(k, at)| *k == key && at.elapsed() < DAEMONSET_RESYNC)
            })
            .unwrap_or(false);
        if fresh {
            return Ok(());
        }
        let owner = match &self.settings.owner_deployment {
            Some(name) => {
                let api =
                    Api::<Deployment>::namespaced(self.client.clone(), &self.settings.namespace);
                let d = api
                    .get(name)
                    .await
                    .map_err(|source| Error::OwnerDeployment {
                        name: name.clone(),
                        source,
                    })?;
                daemonset::owner_reference(&d)
            }
            None => None,
        };
        let api = Api::<DaemonSet>::namespaced(self.client.clone(), &self.settings.namespace);
        daemonset::sync(&api, &self.settings.namespace, tpl, &terms, owner.as_ref()).await?;
        if let Ok(mut g) = self.last_daemonset.lock() {
            *g = Some((key, Instant::now()));
        }
        Ok(())
    }
}

/// Reasons of a tunnel on its way up rather than of a failure.
const PROGRESS_REASONS: [&str; 3] = ["WaitingForAgent", "Connecting", "ChildSasPending"];

/// The Event for a change of the Ready condition: `Ready` when it turns True; a `NotReady`
/// Warning when it stops being True, or changes to a failure. A new tunnel moving from waiting
/// for its agent to connecting is no Warning: it would put one on every tunnel created (and
/// cost a write each when hundreds are applied at once). A diagnosed agent problem
/// ([`Problem`]) is a Warning with its own reason, also on a new tunnel: it needs a person.
fn ready_event(old: &[Condition], new: &[Condition]) -> Option<(EventType, String, String)> {
    let ready = |c: &[Condition]| {
        c.iter()
            .find(|c| c.type_ == conditions::READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    match (ready(old), ready(new)) {
        (old, Some((s, _, msg))) if s == "True" && old.as_ref().is_none_or(|o| o.0 != "True") => {
            Some((EventType::Normal, "Ready".to_owned(), msg))
        }
        (old, Some((s, r, msg)))
            if s != "True"
                && Problem::from_reason(&r).is_some()
                && old.as_ref().is_none_or(|o| o.1 != r) =>
        {
            Some((EventType::Warning, r, msg))
        }
        (Some((os, or, _)), Some((s, r, msg)))
            if s != "True"
                && (os == "True" || (or != r && !PROGRESS_REASONS.contains(&r.as_str()))) =>
        {
            Some((
                EventType::Warning,
                "NotReady".to_owned(),
                format!("{r}: {msg}"),
            ))
        }
        _ => None,
    }
}

/// Whether `node` is cordoned (`kubectl cordon`, or drained): not elected while another
/// candidate is not.
fn cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_cond(status: &str, reason: &str) -> Vec<Condition> {
        vec![Condition {
            type_: conditions::READY.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }]
    }

    #[test]
    fn ready_events_mark_readiness_and_failures_not_progress() {
        let ev = |old: &[Condition], new: &[Condition]| {
            ready_event(old, new).map(|(t, r, note)| (t == EventType::Warning, r, note))
        };
        // a diagnosed agent problem: its own reason, on a new tunnel too, once
        let forbidden = ready_cond("False", "AgentPodsForbidden");
        assert_eq!(
            ev(&[], &forbidden),
            Some((
                true,
                "AgentPodsForbidden".into(),
                "AgentPodsForbidden message".into()
            ))
        );
        assert_eq!(
            ev(&ready_cond("False", "NoGatewayAvailable"), &forbidden).map(|e| e.1),
            Some("AgentPodsForbidden".into())
        );
        assert_eq!(ev(&forbidden, &forbidden), None);
        let (waiting, connecting) = (
            ready_cond("False", "WaitingForAgent"),
            ready_cond("False", "Connecting"),
        );
        let (up, failed) = (
            ready_cond("True", "TunnelEstablished"),
            ready_cond("False", "AuthenticationFailed"),
        );
        // a new tunnel on its way up: no Warning
        assert_eq!(ev(&[], &waiting), None);
        assert_eq!(ev(&waiting, &connecting), None);
        assert_eq!(
            ev(&connecting, &up),
            Some((false, "Ready".into(), "TunnelEstablished message".into()))
        );
        // a failure, or losing readiness even to a progress reason: a Warning
        assert_eq!(
            ev(&connecting, &failed),
            Some((
                true,
                "NotReady".into(),
                "AuthenticationFailed: AuthenticationFailed message".into()
            ))
        );
        assert!(ev(&up, &connecting).is_some_and(|e| e.0 && e.1 == "NotReady"));
        assert_eq!(ev(&failed, &failed), None);
        assert_eq!(ev(&up, &up), None);
    }

    #[test]
    fn a_heartbeat_proves_nothing_while_and_shortly_after_the_api_is_not_visible() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(6);
        let mut s = ApiSight::new(t0);
        // a new operator has seen no renewals yet
        assert_eq!(s.blind_until(lease, t0), Some(t0 + lease));
        assert_eq!(s.blind_until(lease, t0 + lease), None);
        // the API server goes away: blind for as long as it lasts
        let down = t0 + Duration::from_secs(10);
        s.failed();
        assert_eq!(s.blind_until(lease, down), Some(down + lease));
        let later = down + Duration::from_secs(60);
        assert_eq!(s.blind_until(lease, later), Some(later + lease));
        // back: one more lease duration for the agents to renew
        s.succeeded(later);
        assert_eq!(
            s.blind_until(lease, later + Duration::from_secs(1)),
            Some(later + lease)
        );
        // further successes do not extend it
        s.succeeded(later + Duration::from_secs(3));
        assert_eq!(s.blind_until(lease, later + lease), None);
    }

    #[test]
    fn a_failing_spell_is_reported_once() {
        let t0 = Instant::now();
        let mut s = ApiSight::new(t0);
        assert!(s.failed());
        assert!(!s.failed());
        s.succeeded(t0 + Duration::from_secs(1));
        assert!(s.failed());
    }

    #[test]
    fn a_lease_watch_current_past_the_expiry_outweighs_a_failed_read() {
        let t0 = Instant::now();
        let mut s = ApiSight::new(t0);
        let expired = Timestamp::from_second(1_000).unwrap();
        // no Lease event yet: nothing says the cache is current
        assert!(!s.watch_live_after(expired));
        // an event from before the expiry proves nothing about renewals after it
        s.lease_event(Timestamp::from_second(999).unwrap(), t0);
        assert!(!s.watch_live_after(expired));
        assert!(!s.watch_live_after(Timestamp::from_second(999).unwrap()));
        // one after it does
        s.lease_event(Timestamp::from_second(1_001).unwrap(), t0);
        assert!(s.watch_live_after(expired));
        // and a Lease event is a success: it ends a failing spell
        s.failed();
        let back = t0 + Duration::from_secs(2);
        s.lease_event(Timestamp::from_second(1_002).unwrap(), back);
        assert!(!s.failing);
        assert_eq!(s.ok_since, back);
    }
}
