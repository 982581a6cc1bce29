//! Cluster mode's control loop: which tunnels this node runs (those whose `activeGateway` is
//! this node, with their Secrets), telling the driver when that set changes, and writing and
//! clearing this node's `status.gateways[]` entry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use strait_crds::{IPsecTunnel, contract, heartbeat};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Options, report, secrets, succession};
use crate::driver::{Command, Stop};
use crate::error::TunnelError;
use crate::spec::{self, TunnelDef};
use crate::status::{AgentStatus, StatusRequest};

/// How often the driver's state is compared with what was last written.
const POLL: Duration = Duration::from_millis(250);
/// Definitions are rebuilt this often even without a watch event (DNS names, routes).
const REBUILD_EVERY: Duration = Duration::from_secs(30);
/// How long to wait for the driver to drop removed tunnels before clearing their entries.
const DROP_WAIT: Duration = Duration::from_secs(5);
/// A clear that did not show in the watch cache is repeated after this long.
const CLEAR_RETRY: Duration = Duration::from_secs(2);
/// Drives a reflector's watch stream, waking the controller on every change.
pub(crate) async fn drive<S, K>(what: &'static str, stream: S, wake: Arc<Notify>)
where
    S: Stream<Item = Result<K, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => wake.notify_one(),
            Err(e) => tracing::warn!(watch = what, error = %e, "watch failed; retrying"),
        }
    }
}

/// What was given to the driver for one tunnel, to notice changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    spec: String,
    secrets: Vec<u8>,
    problem: Option<TunnelError>,
}

fn fingerprint(def: &TunnelDef) -> Fingerprint {
    Fingerprint {
        spec: serde_json::to_string(&def.spec).unwrap_or_default(),
        secrets: def.secret_digest.clone(),
        problem: def.peer.as_ref().err().cloned(),
    }
}

pub(super) struct Controller {
    opts: Options,
    client: Client,
    api: Api<IPsecTunnel>,
    cmd_tx: mpsc::Sender<Command>,
    status_tx: mpsc::Sender<StatusRequest>,
    running: BTreeMap<String, Fingerprint>,
    writer: report::Writer,
    cleared: BTreeMap<String, Instant>,
    /// The heartbeat task: stopped, and the Lease released, before teardown starts.
    heartbeat: Option<tokio::task::AbortHandle>,
}

impl Controller {
    pub(super) fn new(
        opts: &Options,
        client: Client,
        cmd_tx: mpsc::Sender<Command>,
        status_tx: mpsc::Sender<StatusRequest>,
    ) -> Self {
        Self {
            opts: opts.clone(),
            api: Api::all(client.clone()),
            client,
            cmd_tx,
            status_tx,
            running: BTreeMap::new(),
            writer: report::Writer::new(opts.status_interval),
            cleared: BTreeMap::new(),
            heartbeat: None,
        }
    }

    /// The heartbeat task [`Self::run`] stops on SIGTERM before it releases the Lease.
    pub(super) fn with_heartbeat(mut self, task: tokio::task::AbortHandle) -> Self {
        self.heartbeat = Some(task);
        self
    }

    /// Runs until SIGTERM/SIGINT; says how it stopped.
    pub(super) async fn run(mut self) -> anyhow::Result<Stop> {
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        let wake = Arc::new(Notify::new());
        let (tunnels, tw) = reflector::store::<IPsecTunnel>();
        let (secrets, sw) = reflector::store::<Secret>();
        let tunnel_watch = tokio::spawn(drive(
            "ipsectunnels",
            reflector::reflector(tw, watcher(self.api.clone(), watcher::Config::default()))
                .backoff(strait_crds::watch::WatchBackoff::default()),
            Arc::clone(&wake),
        ));
        // Streaming lists need only `watch` on Secrets (the agent's Role has no `list`).
        let secret_watch = tokio::spawn(drive(
            "secrets",
            reflector::reflector(
                sw,
                watcher(
                    Api::<Secret>::namespaced(self.client.clone(), &self.opts.namespace),
                    watcher::Config::default().streaming_lists(),
                ),
            )
            .backoff(strait_crds::watch::WatchBackoff::default()),
            Arc::clone(&wake),
        ));
        let stopped = tokio::select! {
            r = async { tokio::try_join!(tunnels.wait_until_ready(), secrets.wait_until_ready()) } => {
                r.map_err(|e| anyhow::anyhow!("watch cache: {e}"))?;
                false
            }
            _ = term.recv() => true,
            _ = int.recv() => true,
        };
        if !stopped {
            tracing::info!("watch caches filled");
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut dirty = true;
            let mut built = Instant::now();
            loop {
                tokio::select! {
                    () = wake.notified() => dirty = true,
                    _ = tick.tick() => {}
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                }
                if dirty || built.elapsed() >= REBUILD_EVERY {
                    dirty = false;
                    built = Instant::now();
                    self.reconcile(&tunnels, &secrets).await;
                }
                self.report().await;
            }
        }
        tunnel_watch.abort();
        secret_watch.abort();
        let how = self.how_to_stop().await;
        if how == Stop::Restart {
            // The replacement pod resumes the saved SAs and renews the Lease; until then one
            // long renewal keeps the operator from failing over, and the entries stay.
            if let Some(beat) = self.heartbeat.take() {
                beat.abort();
            }
            let grace = self
                .opts
                .restart_grace_seconds
                .max(self.opts.lease_duration_seconds);
            let leases = Api::<Lease>::namespaced(self.client.clone(), &self.opts.namespace);
            if let Err(e) = heartbeat::renew(&leases, &self.opts.node, grace).await {
                tracing::warn!(error = %e, "could not extend the heartbeat Lease for the restart");
            }
            tracing::info!(
                grace_seconds = grace,
                "stopping for a restart: IKE state saved, SAs and status entries kept"
            );
            self.stop_driver(how).await;
            return Ok(how);
        }
        // Release the heartbeat first: the operator can elect another node while this one
        // tears down, and a replacement pod that renews the Lease quickly cannot hide the stop.
        if let Some(beat) = self.heartbeat.take() {
            beat.abort();
        }
        let leases = Api::<Lease>::namespaced(self.client.clone(), &self.opts.namespace);
        if let Err(e) = heartbeat::release(&leases, &self.opts.node).await {
            tracing::warn!(error = %e, "could not release the heartbeat Lease");
        }
        tracing::info!("stopping: deleting every IKE SA");
        self.stop_driver(how).await;
        let mut names: Vec<String> = self.running.keys().cloned().collect();
        names.extend(self.writer.tunnels());
        names.sort();
        names.dedup();
        for name in names {
            self.clear(&name).await;
        }
        Ok(how)
    }

    /// Stops the driver as `how` says and waits until it has.
    async fn stop_driver(&self, how: Stop) {
        let (done_tx, done_rx) = oneshot::channel();
        if self
            .cmd_tx
            .send(Command::Shutdown(how, done_tx))
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
    }

    /// Whether this stop is a restart: with saved state (`--state-dir`), when a replacement
    /// agent follows on this node ([`succession`]). When the API cannot say, the SAs are
    /// deleted: today's behaviour, never a zombie.
    async fn how_to_stop(&self) -> Stop {
        let (Some(_), Some(pod)) = (&self.opts.state_dir, &self.opts.pod) else {
            return Stop::Leave;
        };
        let ns = &self.opts.namespace;
        if succession::replacement_follows(self.client.clone(), ns, pod, contract::AGENT_DAEMONSET)
            .await
        {
            Stop::Restart
        } else {
            Stop::Leave
        }
    }

    /// Brings the driver's tunnel set in line with the tunnels this node is active for, and
    /// clears the entries of tunnels it no longer runs.
    async fn reconcile(&mut self, tunnels: &Store<IPsecTunnel>, secrets: &Store<Secret>) {
        let node = self.opts.node.clone();
        let all = tunnels.state();
        let mut wanted = Vec::new();
        let mut prints = BTreeMap::new();
        for t in &all {
            let Some(name) = t.metadata.name.clone() else {
                continue;
            };
            let active =
                t.status.as_ref().and_then(|s| s.active_gateway.as_deref()) == Some(node.as_str());
            if !active || t.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let mut source = secrets::StoreSecrets {
                store: secrets,
                namespace: &self.opts.namespace,
            };
            let def = spec::definition(
                name.clone(),
                t.spec.clone(),
                self.opts.ike_port,
                &mut source,
            )
            .await;
            prints.insert(name, fingerprint(&def));
            wanted.push(def);
        }
        if prints != self.running {
            let gone: Vec<String> = self
                .running
                .keys()
                .filter(|n| !prints.contains_key(*n))
                .cloned()
                .collect();
            for (name, p) in &prints {
                match self.running.get(name) {
                    None => tracing::info!(tunnel = %name, "active here: starting"),
                    Some(old) if old != p => {
                        tracing::info!(tunnel = %name, "spec or Secret changed");
                    }
                    Some(_) => {}
                }
                if let Some(e) = &p.problem {
                    tracing::warn!(tunnel = %name, reason = %e.reason, message = %e.message, "tunnel cannot start");
                }
            }
            for name in &gone {
                tracing::info!(tunnel = %name, "no longer active here (or deleted): removing");
            }
            if self.cmd_tx.send(Command::Reload(wanted)).await.is_err() {
                return;
            }
            self.running = prints;
            if !gone.is_empty() {
                self.wait_dropped(&gone).await;
            }
        }
        // entries of tunnels this agent does not run (any more) are removed
        let now = Instant::now();
        let present: Vec<String> = all.iter().filter_map(|t| t.metadata.name.clone()).collect();
        for t in &all {
            let Some(name) = t.metadata.name.as_deref() else {
                continue;
            };
            if self.running.contains_key(name) {
                self.cleared.remove(name);
                continue;
            }
            let mine =
                report::has_entry(t, &node) || self.writer.tunnels().iter().any(|n| n == name);
            let recent = self
                .cleared
                .get(name)
                .is_some_and(|at| now.duration_since(*at) < CLEAR_RETRY);
            if mine && !recent {
                self.clear(name).await;
                self.cleared.insert(name.to_owned(), now);
            }
        }
        for name in self.writer.tunnels() {
            if !present.contains(&name) {
                self.writer.forget(&name);
            }
        }
        self.cleared.retain(|n, _| present.contains(n));
    }

    async fn driver_status(&self) -> Option<AgentStatus> {
        let (tx, rx) = oneshot::channel();
        self.status_tx.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// Waits until the driver no longer has `names` (their DELETEs are sent and their CHILD SAs
    /// gone from the data plane).
    async fn wait_dropped(&self, names: &[String]) {
        let deadline = Instant::now() + DROP_WAIT;
        while Instant::now() < deadline {
            let Some(s) = self.driver_status().await else {
                return;
            };
            if !s.tunnels.iter().any(|t| names.contains(&t.name)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(tunnels = ?names, "the driver did not drop the tunnels in time");
    }

    /// Writes each running tunnel's entry when it changed (rate-limited).
    async fn report(&mut self) {
        let Some(st) = self.driver_status().await else {
            return;
        };
        let now = Instant::now();
        let pp = PatchParams::apply(&contract::agent_field_manager(&self.opts.node)).force();
        for t in st.tunnels {
            if !self.running.contains_key(&t.name) || !self.writer.due(&t.name, &t.gateway, now) {
                continue;
            }
            let body = contract::gateway_entry_body(&t.name, &t.gateway);
            match self
                .api
                .patch_status(&t.name, &pp, &Patch::Apply(&body))
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        tunnel = %t.name,
                        ike_state = t.gateway.ike_state.map_or("", strait_crds::IkeState::as_str),
                        child_sas = t.gateway.child_sas.len(),
                        reason = t.gateway.last_error.as_ref().map_or("", |e| e.reason.as_str()),
                        "status entry written"
                    );
                    self.writer.attempted(&t.name, Some(t.gateway), now);
                }
                Err(e) => {
                    tracing::warn!(tunnel = %t.name, error = %e, "cannot write the status entry");
                    self.writer.attempted(&t.name, None, now);
                }
            }
        }
    }

    /// Removes this agent's entry from a tunnel's status (an apply that owns nothing).
    async fn clear(&mut self, name: &str) {
        let pp = PatchParams::apply(&contract::agent_field_manager(&self.opts.node)).force();
        match self
            .api
            .patch_status(name, &pp, &Patch::Apply(&contract::clear_body(name)))
            .await
        {
            Ok(_) => {
                tracing::info!(tunnel = %name, "status entry cleared");
                self.writer.forget(name);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => self.writer.forget(name),
            Err(e) => tracing::warn!(tunnel = %name, error = %e, "cannot clear the status entry"),
        }
    }
}
