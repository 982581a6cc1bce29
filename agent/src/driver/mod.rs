//! The driver (quinn's `ConnectionDriver` shape): one task owns the sans-IO [`Endpoint`] and
//! feeds it datagrams from the UDP sockets, the clock (read here, and passed on), and commands;
//! after every input it drains `poll_event` into the data plane, the status and the logs, then
//! `poll_transmit` onto the sockets (kernel state before the peer hears of it).
//!
//! This file is the loop and its I/O (sockets, data plane calls, metrics). What each event does
//! to a tunnel is [`tunnel`]; when a previous run's kernel objects are swept is [`adopt`]. Both
//! are pure and unit-tested.

mod adopt;
mod saved;
mod sockets;
mod tunnel;

pub use adopt::{ADOPT_MAX, ADOPT_SETTLE};
pub use sockets::{Datagram, SimNetwork};
pub use tunnel::{RETRY_MAX, RETRY_MIN};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use strait_crds::contract::StatusReason;
use strait_ike::{ChildSaInstall, Endpoint, EndpointConfig, Event, PeerConfig, PeerId, Role};
use tokio::sync::{mpsc, oneshot};

use crate::dataplane::{Dataplane, KernelEvent};
use crate::error::TunnelError;
use crate::metrics::{Metrics, MetricsRequest};
use crate::notation::esp_name;
use crate::spec::TunnelDef;
use crate::status::{AgentStatus, StatusRequest};
use adopt::{Adoption, Sweep};
use sockets::Sockets;
use tunnel::{IkeUp, Tunnel};

/// Under `--test-lifetime-scale`, the least time between a scheduled rekey and the hard limit.
const TEST_MIN_HARD_MARGIN: Duration = Duration::from_secs(5);
/// How long after our answer a CHILD SA the kernel refused is deleted at the peer: our answer
/// and our Delete would otherwise reach it back to back, and charon may handle the Delete first
/// (its worker threads race), ignore it as being for an unknown SA, and keep the CHILD SA.
pub const REFUSED_CHILD_DELETE_DELAY: Duration = Duration::from_secs(1);
/// How long shutdown waits for the peers to acknowledge our DELETEs.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the rest of the agent can ask of the driver.
#[derive(Debug)]
pub enum Command {
    /// Replace the tunnel set: added, changed and removed tunnels are applied, the others are
    /// left alone.
    Reload(Vec<TunnelDef>),
    /// Stop the driver: as [`Stop`] says, then answer on the sender.
    Shutdown(Stop, oneshot::Sender<()>),
}

/// How the driver stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Another agent process follows on this node: with `--state-dir`, the IKE state is saved
    /// and every SA and kernel object stays for it to resume; without, as [`Stop::Leave`].
    Restart,
    /// No agent follows (uninstalled, or this node no longer runs agents): delete every IKE SA,
    /// wait briefly for the DELETEs to go out, clean the data plane and the saved state.
    Leave,
}

/// How many half-open IKE SAs the endpoint holds before it drops IKE_SA_INIT requests
/// (`--block-threshold`, `--init-limit-half-open`; `EndpointConfig::block_threshold_per_ip`,
/// `half_open_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HalfOpenLimits {
    /// From one address.
    pub per_address: usize,
    /// In all (`None`: no limit).
    pub total: Option<usize>,
}

/// What the driver runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name, for the status.
    pub node: String,
    /// The endpoint's settings; its ports are the ones the driver binds.
    pub endpoint: EndpointConfig,
    /// Where IKE state is saved for the next agent process (`--state-dir`); `None`: not
    /// saved, and SIGTERM deletes every IKE SA.
    pub state_dir: Option<std::path::PathBuf>,
}

/// The driver task's state.
pub struct Driver<D: Dataplane> {
    settings: Settings,
    endpoint: Endpoint,
    dp: D,
    sockets: Sockets,
    tunnels: BTreeMap<String, Tunnel>,
    by_peer: HashMap<PeerId, String>,
    /// Tunnels waiting to re-initiate, earliest first, so that no wakeup scans every tunnel.
    /// An entry whose tunnel no longer has that `retry_at` is stale and skipped.
    retries: BinaryHeap<Reverse<(Instant, String)>>,
    next_index: u32,
    kernel_events: Option<mpsc::Receiver<KernelEvent>>,
    metrics: Option<Metrics>,
    scrapes: Option<mpsc::Receiver<MetricsRequest>>,
    /// A previous run's kernel objects, kept until every tunnel is back.
    adoption: Adoption,
    /// CHILD SAs the kernel refused, to be deleted at the peer at the given time.
    refused: Vec<(Instant, PeerId, strait_ike::ChildSaId)>,
    lifetime_scale: Option<f64>,
    /// Saved IKE state ([`saved`]); `None` without `--state-dir` or when it cannot be opened.
    state: Option<saved::StateDir>,
    /// What a previous process saved, by tunnel, until the tunnel is added (at start, or in
    /// cluster mode when the operator's choice arrives) or `resume_until`.
    to_resume: HashMap<String, saved::Saved>,
    /// When saved state no tunnel took is dropped ([`ADOPT_MAX`] after start, when the
    /// previous run's kernel objects are swept at the latest).
    resume_until: Option<Instant>,
    /// DNS names resolved again before a retry ([`Driver::on_resolved`]), from the tasks that
    /// resolve them, so a slow resolver holds up no other tunnel.
    resolved_tx: mpsc::Sender<Resolved>,
    resolved_rx: mpsc::Receiver<Resolved>,
    /// In a simulation: the wall clock's anchor ([`set_wall_clock`]).
    simulated_wall_clock: Option<(Instant, u64)>,
}

/// A tunnel's peer addresses resolved again, for the retry that waits for them.
#[derive(Debug)]
struct Resolved {
    tunnel: String,
    /// The tunnel's endpoint peer when the lookup started (a restarted tunnel has another).
    peer: PeerId,
    addrs: Result<Vec<std::net::IpAddr>, String>,
}

/// How long a retry waits for its DNS names before it goes to the addresses it had.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

impl<D: Dataplane> core::fmt::Debug for Driver<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driver")
            .field("endpoint", &self.endpoint)
            .field("tunnels", &self.tunnels.len())
            .finish_non_exhaustive()
    }
}

/// The monotonic clock, read through tokio's: the same as `Instant::now()` in the agent, and
/// the simulated clock when a test pauses tokio's time (`Driver::simulated`).
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Tells the endpoint the wall-clock time (for certificate validity). A system clock before
/// 1970 leaves it unset: certificate authentication then fails with `ClockUnset`. In a
/// simulation, `simulated` (an instant and the unix time then) stands for the system clock, so
/// wall time moves with the simulated monotonic clock.
fn set_wall_clock(endpoint: &mut Endpoint, simulated: Option<(Instant, u64)>) {
    let unix = match simulated {
        Some((at, unix)) => Ok(unix + clock().saturating_duration_since(at).as_secs()),
        None => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs()),
    };
    match unix {
        Ok(secs) => endpoint.set_wall_clock(clock(), secs),
        Err(_) => {
            tracing::error!("the system clock is before 1970; certificates cannot be checked")
        }
    }
}

impl<D: Dataplane> Driver<D> {
    /// A driver with no tunnel yet.
    pub fn new(settings: Settings, dp: D) -> Self {
        let sockets = Sockets::new(settings.endpoint.ike_port, settings.endpoint.natt_port);
        Self::with_parts(
            settings,
            dp,
            sockets,
            Box::new(crate::rng::OsRng::new()),
            None,
        )
    }

    /// A driver for a deterministic simulation: it binds no socket (the simulator carries its
    /// datagrams through the returned [`SimNetwork`]), draws its randomness from `rng`, and
    /// takes `unix_time` as the wall clock now. Run it on a current-thread tokio runtime with
    /// paused time, so its timers run on the simulated clock; then, with the same seed, inputs
    /// and data plane, a run repeats exactly.
    pub fn simulated(
        settings: Settings,
        dp: D,
        rng: Box<dyn strait_ike::crypto::rng::Rng + Send>,
        unix_time: u64,
    ) -> (Self, SimNetwork) {
        let (sockets, net) =
            Sockets::simulated(settings.endpoint.ike_port, settings.endpoint.natt_port);
        let d = Self::with_parts(settings, dp, sockets, rng, Some((clock(), unix_time)));
        (d, net)
    }

    fn with_parts(
        settings: Settings,
        dp: D,
        sockets: Sockets,
        rng: Box<dyn strait_ike::crypto::rng::Rng + Send>,
        simulated_wall_clock: Option<(Instant, u64)>,
    ) -> Self {
        let mut endpoint = Endpoint::new(settings.endpoint.clone(), rng);
        set_wall_clock(&mut endpoint, simulated_wall_clock);
        let mut dp = dp;
        if let Some(spis) = dp.spi_source() {
            endpoint.set_spi_source(spis);
        }
        let kernel_events = dp.take_events();
        let state = settings.state_dir.as_deref().and_then(|d| {
            saved::StateDir::open(d)
                .map_err(|e| tracing::error!(dir = %d.display(), error = %e, "IKE state cannot be saved there; restarts will renegotiate"))
                .ok()
        });
        let (resolved_tx, resolved_rx) = mpsc::channel(64);
        Self {
            resolved_tx,
            resolved_rx,
            settings,
            endpoint,
            dp,
            sockets,
            tunnels: BTreeMap::new(),
            by_peer: HashMap::new(),
            retries: BinaryHeap::new(),
            next_index: 0,
            kernel_events,
            metrics: Metrics::new()
                .map_err(|e| tracing::error!(error = %e, "metrics unavailable"))
                .ok(),
            scrapes: None,
            adoption: Adoption::default(),
            refused: Vec::new(),
            lifetime_scale: None,
            state,
            to_resume: HashMap::new(),
            resume_until: None,
            simulated_wall_clock,
        }
    }

    /// For tests only (`--test-lifetime-scale`): multiplies every IKE and CHILD SA lifetime by
    /// `f` (0 < f ≤ 1), so rekeys happen within seconds (the API's minimum lifetime is 60 s).
    /// Other values are ignored.
    #[must_use]
    pub fn with_lifetime_scale(mut self, f: Option<f64>) -> Self {
        self.lifetime_scale = f.filter(|f| *f > 0.0 && *f <= 1.0);
        if let Some(f) = self.lifetime_scale {
            tracing::warn!(
                scale = f,
                "SA lifetimes are scaled down (--test-lifetime-scale, for tests only)"
            );
        }
        self
    }

    /// Serves the metrics: each request on `scrapes` is answered with the exposition text
    /// (see [`crate::metrics::serve`]).
    #[must_use]
    pub fn with_metrics(mut self, scrapes: mpsc::Receiver<MetricsRequest>) -> Self {
        self.scrapes = Some(scrapes);
        self
    }

    /// The metrics as they are now (without a kernel counter refresh).
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    /// The data plane (for tests).
    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    /// Runs until [`Command::Shutdown`] (or until every command sender is gone).
    pub async fn run(
        mut self,
        initial: Vec<TunnelDef>,
        mut commands: mpsc::Receiver<Command>,
        mut status: mpsc::Receiver<StatusRequest>,
    ) {
        if self.dp.adopt().await > 0 {
            self.adoption.start(clock());
        }
        if let Some(state) = &self.state {
            self.to_resume = state.load_all();
            self.resume_until = Some(clock() + ADOPT_MAX);
        }
        self.reload(initial).await;
        self.flush().await;
        loop {
            self.check_adopted().await;
            self.expire_saved();
            let deadline = self.next_deadline();
            let timer = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            // Biased, in this order: a simulation repeats exactly (tokio's default picks among
            // ready branches at random), and a flood of datagrams cannot hold up timers,
            // commands or kernel events, which are few.
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Reload(defs)) => self.reload(defs).await,
                    Some(Command::Shutdown(how, done)) => {
                        self.shutdown(how).await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.shutdown(Stop::Restart).await;
                        return;
                    }
                },
                Some(req) = status.recv() => {
                    let _ = req.send(self.status());
                }
                Some(ev) = recv_opt(&mut self.kernel_events) => self.on_kernel_event(ev),
                () = timer => self.on_timer(),
                Some(r) = self.resolved_rx.recv() => self.on_resolved(r).await,
                Some(req) = recv_opt(&mut self.scrapes) => {
                    let text = self.scrape().await;
                    let _ = req.send(text);
                }
                Some(d) = self.sockets.recv() => {
                    self.endpoint.handle(clock(), d.local, d.remote, &d.data);
                }
            }
            self.flush().await;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let retry = self.retries.peek().map(|Reverse((at, _))| *at);
        [
            self.endpoint.poll_timeout(),
            retry,
            self.adoption.deadline(),
            self.resume_until,
            self.refused.iter().map(|r| r.0).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Sweeps what a previous run left in the kernel once every tunnel has its CHILD SAs again
    /// (make-before-break across a restart), or at [`ADOPT_MAX`].
    async fn check_adopted(&mut self) {
        if self.adoption.deadline().is_none() {
            return;
        }
        let all_up = self
            .tunnels
            .values()
            .filter(|t| t.peer.is_some())
            .all(|t| t.status.ready);
        let Some(sweep) = self.adoption.check(clock(), all_up) else {
            return;
        };
        if sweep == Sweep::TimedOut {
            tracing::warn!(
                "not every tunnel came back in time: sweeping the previous run's XFRM objects anyway"
            );
        }
        if let Err(e) = self.dp.sweep_adopted().await {
            tracing::warn!(reason = %e.reason, message = %e.message, "sweep after restart");
        }
    }

    fn on_kernel_event(&mut self, ev: KernelEvent) {
        let now = clock();
        let index = match ev {
            KernelEvent::Expire { tunnel, .. }
            | KernelEvent::Acquire { tunnel }
            | KernelEvent::Mapping { tunnel, .. } => tunnel,
        };
        let Some(t) = self.tunnels.values().find(|t| t.index == index) else {
            return;
        };
        let Some(peer) = t.peer else { return };
        match ev {
            KernelEvent::Expire { spi, hard, .. } => {
                tracing::debug!(tunnel = %t.def.name, spi = format_args!("{spi:08x}"), hard, "kernel: CHILD SA lifetime expired");
                self.endpoint
                    .expire_child(now, peer, strait_ike::EspSpi(spi.to_be_bytes()), hard);
            }
            KernelEvent::Mapping { spi, remote, .. } => {
                tracing::info!(tunnel = %t.def.name, %remote, spi = format_args!("{spi:08x}"), "kernel: the peer's NAT mapping changed");
                self.endpoint
                    .esp_mapping(now, peer, strait_ike::EspSpi(spi.to_be_bytes()), remote);
            }
            KernelEvent::Acquire { .. } => {
                if t.role == Some(Role::OnTraffic) {
                    tracing::info!(tunnel = %t.def.name, "kernel: traffic without an SA, initiating");
                    self.endpoint.acquire(now, peer);
                }
            }
        }
    }

    /// Refreshes the gauges and the kernel's traffic counters and encodes every metric.
    async fn scrape(&mut self) -> String {
        let Some(m) = self.metrics.clone() else {
            return String::new();
        };
        m.set_tunnels(
            self.tunnels.values().map(|t| t.status.gateway.ike_state),
            self.tunnels.values().map(Tunnel::child_count).sum(),
        );
        m.set_endpoint_stats(&self.endpoint.stats());
        m.set_tunnel_status(
            self.tunnels
                .values()
                .map(|t| (t.def.name.as_str(), &t.status.gateway)),
        );
        m.set_xfrm_errors(&self.dp.xfrm_errors());
        let certs: Vec<(String, &'static str, i64)> = self
            .tunnels
            .values()
            .filter_map(|t| match &t.def.peer {
                Ok(p) => match &p.auth {
                    strait_ike::AuthConfig::Certificate(c) => Some((t.def.name.clone(), c)),
                    _ => None,
                },
                Err(_) => None,
            })
            .flat_map(|(name, c)| {
                let local = c.chain.first().and_then(|x| x.not_after().ok());
                let ca = c.ca.iter().filter_map(|x| x.not_after().ok()).min();
                [("local", local), ("ca", ca)]
                    .into_iter()
                    .filter_map(move |(w, at)| Some((name.clone(), w, at?)))
            })
            .collect();
        m.set_cert_expiry(&certs);
        let traffic = self.dp.traffic().await;
        let by_name = self
            .tunnels
            .values()
            .filter_map(|t| traffic.get(&t.index).map(|x| (t.def.name.clone(), *x)))
            .collect();
        m.set_traffic(&by_name);
        let interfaces = self.dp.interfaces().await;
        let by_name = self
            .tunnels
            .values()
            .filter_map(|t| {
                interfaces
                    .get(&t.index)
                    .map(|x| (t.def.name.clone(), x.clone()))
            })
            .collect();
        m.set_interfaces(&by_name);
        m.encode()
    }

    fn on_timer(&mut self) {
        let now = clock();
        self.endpoint.handle_timeout(now);
        let (due, later): (Vec<_>, Vec<_>) = self.refused.drain(..).partition(|r| r.0 <= now);
        self.refused = later;
        for (_, peer, child) in due {
            self.endpoint.child_install_failed(now, peer, child);
        }
        while let Some(Reverse((at, _))) = self.retries.peek()
            && *at <= now
        {
            let Some(Reverse((at, name))) = self.retries.pop() else {
                break;
            };
            let Some(t) = self.tunnels.get_mut(&name) else {
                continue;
            };
            if t.take_retry(at)
                && let Some(peer) = t.peer
            {
                t.initiating(now);
                if crate::spec::resolve::has_names(&t.def.spec) {
                    // strongSwan resolves a peer's name again for each attempt: a site whose
                    // address changed is found again without a restart
                    let spec = t.def.spec.clone();
                    let tunnel = t.def.name.clone();
                    let tx = self.resolved_tx.clone();
                    tokio::spawn(async move {
                        let addrs = tokio::time::timeout(
                            RESOLVE_TIMEOUT,
                            crate::spec::resolve::remote_addresses(&spec),
                        )
                        .await
                        .unwrap_or_else(|_| Err("DNS lookup timed out".into()));
                        let _ = tx
                            .send(Resolved {
                                tunnel,
                                peer,
                                addrs,
                            })
                            .await;
                    });
                } else {
                    tracing::info!(tunnel = %t.def.name, "re-initiating");
                    self.endpoint.initiate(now, peer);
                }
            }
        }
    }

    /// A retry's DNS names are resolved: the endpoint (and the IKE firewall) take the new
    /// addresses if they changed, then the tunnel initiates. A failed lookup keeps the
    /// addresses it had.
    async fn on_resolved(&mut self, r: Resolved) {
        let Some(t) = self.tunnels.get_mut(&r.tunnel) else {
            return;
        };
        if t.peer != Some(r.peer) {
            return;
        }
        let Ok(cfg) = t.def.peer.as_mut() else {
            return;
        };
        match r.addrs {
            Ok(ips) => {
                let port = cfg.remote_addr.port();
                let mut addrs = ips
                    .into_iter()
                    .map(|ip| std::net::SocketAddr::new(ip, port));
                let before: Vec<_> = cfg.remote_addrs().collect();
                if let Some(first) = addrs.next() {
                    let rest: Vec<_> = addrs.collect();
                    let now: Vec<_> = core::iter::once(first)
                        .chain(rest.iter().copied())
                        .collect();
                    if now != before {
                        match self.endpoint.set_remote_addrs(r.peer, first, rest.clone()) {
                            Ok(()) => {
                                tracing::info!(tunnel = %r.tunnel, ?before, ?now, "the peer's names resolve to other addresses");
                                cfg.remote_addr = first;
                                cfg.fallback_addrs = rest;
                                let cfg = cfg.clone();
                                self.dp.peers_changed(t.index, &cfg).await;
                            }
                            Err(e) => {
                                tracing::warn!(tunnel = %r.tunnel, ?now, error = %e, "the peer's names resolve to unusable addresses; keeping the old ones");
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(tunnel = %r.tunnel, error = %e, "the peer's names did not resolve again; trying the addresses known");
            }
        }
        tracing::info!(tunnel = %r.tunnel, "re-initiating");
        self.endpoint.initiate(clock(), r.peer);
    }

    /// Acts on every queued event, then sends every queued datagram, until both are empty.
    ///
    /// Events first: the kernel must hold a new CHILD SA before the peer hears of it. As a
    /// responder, our answer makes the peer send on the new SA at once, so our inbound SA must
    /// already be installed (RFC 7296 §2.8); as a rekey initiator, the DELETE of the old SA
    /// must not leave before the new one is in (make before break).
    async fn flush(&mut self) {
        loop {
            let mut idle = true;
            while let Some(ev) = self.endpoint.poll_event() {
                idle = false;
                self.on_event(ev).await;
            }
            // before the datagrams: a request of ours the peer sees is one a restarted
            // agent knows it sent
            self.save_changed();
            while let Some(t) = self.endpoint.poll_transmit() {
                idle = false;
                self.send(t).await;
            }
            if idle {
                return;
            }
        }
    }

    async fn send(&mut self, t: strait_ike::Transmit) {
        self.sockets.send(&t).await;
    }

    async fn reload(&mut self, defs: Vec<TunnelDef>) {
        // certificates are checked against it; a SIGHUP also picks up a corrected clock
        set_wall_clock(&mut self.endpoint, self.simulated_wall_clock);
        let now = clock();
        let mut incoming: BTreeMap<String, TunnelDef> =
            defs.into_iter().map(|d| (d.name.clone(), d)).collect();
        let names: Vec<String> = self.tunnels.keys().cloned().collect();
        for name in names {
            let keep = match (incoming.get(&name), self.tunnels.get(&name)) {
                (Some(new), Some(old)) => new.same_as(&old.def),
                _ => false,
            };
            if keep {
                incoming.remove(&name);
                continue;
            }
            let rotate = match (incoming.get(&name), self.tunnels.get(&name)) {
                (Some(new), Some(old)) => new.only_secrets_differ(&old.def),
                _ => false,
            };
            if rotate && let Some(new) = incoming.remove(&name) {
                match self.rotate(new) {
                    None => continue,
                    Some(new) => {
                        incoming.insert(name.clone(), new);
                    }
                }
            }
            let removed = self.tunnels.remove(&name);
            if let Some(state) = &self.state {
                state.remove(&name);
            }
            if let Some(t) = &removed {
                tracing::info!(tunnel = %name, "removing tunnel");
                if let Some(peer) = t.peer {
                    self.endpoint.remove_peer(now, peer);
                }
            }
            // events of the removed peer (CHILD SA deletes) reach the data plane here
            self.flush().await;
            if let Some(t) = removed
                && let Err(e) = self.dp.unguard(t.index).await
            {
                tracing::warn!(tunnel = %name, reason = %e.reason, message = %e.message, "removing the tunnel's fail-closed policies");
            }
        }
        for (_, def) in incoming {
            self.add_tunnel(def).await;
        }
    }

    /// The next tunnel index: counting up (so a removed tunnel's index is not reused at once)
    /// within the range the reqid numbering has room for, skipping those in use.
    fn next_tunnel_index(&mut self) -> u32 {
        let max = crate::dataplane::objects::MAX_TUNNEL;
        for _ in 0..max {
            self.next_index = self.next_index % max + 1;
            let taken = self.tunnels.values().any(|t| t.index == self.next_index);
            if !taken {
                break;
            }
        }
        self.next_index
    }

    async fn add_tunnel(&mut self, def: TunnelDef) {
        let name = def.name.clone();
        let digest = saved::digest(&def);
        // a tunnel resumed from saved state keeps the index its kernel objects carry
        let mut saved = self
            .to_resume
            .remove(&name)
            .filter(|s| s.digest == digest)
            .filter(|s| !self.tunnels.values().any(|t| t.index == s.index));
        let index = match &saved {
            Some(s) => s.index,
            None => self.next_tunnel_index(),
        };
        let mut t = Tunnel::new(def, index, &self.settings.node);
        match self.start_tunnel(&mut t).await {
            Ok((peer, role)) => {
                t.started(peer, role);
                self.by_peer.insert(peer, name.clone());
                let resumed = match saved.take() {
                    Some(s) => {
                        t.resumed_times = Some(s.times.clone());
                        self.resume(&name, peer, &s)
                    }
                    None => false,
                };
                if resumed {
                    // the resumed IKE SA carries on: nothing to initiate
                } else if role == Role::Start {
                    tracing::info!(tunnel = %name, "initiating");
                    let now = clock();
                    t.initiating(now);
                    self.endpoint.initiate(now, peer);
                } else {
                    tracing::info!(tunnel = %name, ?role, "waiting for the peer");
                }
            }
            Err(e) => {
                tracing::error!(tunnel = %name, reason = %e.reason, message = %e.message, "tunnel cannot start");
                t.cannot_start(e);
                // its SAs may still be resumed by a later start of the same definition
                if let Some(s) = saved.take() {
                    self.to_resume.insert(name.clone(), s);
                }
            }
        }
        self.tunnels.insert(name, t);
    }

    /// Drops the saved state no tunnel took in time: its kernel objects are swept by now.
    fn expire_saved(&mut self) {
        if self.resume_until.is_none_or(|t| clock() < t) {
            return;
        }
        self.resume_until = None;
        self.to_resume.clear();
        if let Some(state) = &self.state {
            state.remove_others(self.tunnels.keys().map(String::as_str));
        }
    }

    /// Resumes a tunnel's saved IKE SAs: whether any was taken back.
    fn resume(&mut self, name: &str, peer: PeerId, s: &saved::Saved) -> bool {
        match self.endpoint.resume(clock(), peer, &s.ike) {
            Ok(r) => {
                tracing::info!(tunnel = %name, ike_sas = r.ike_sas, child_sas = r.child_sas, "resumed saved IKE state");
                r.ike_sas > 0
            }
            Err(e) => {
                tracing::warn!(tunnel = %name, error = %e, "saved IKE state refused; negotiating anew");
                if let Some(state) = &self.state {
                    state.remove(name);
                }
                false
            }
        }
    }

    /// Saves the IKE state of every tunnel whose SAs changed.
    fn save_changed(&mut self) {
        let changed = self.endpoint.take_changed();
        let Some(state) = &self.state else { return };
        let now = clock();
        for peer in changed {
            let Some(t) = self.by_peer.get(&peer).and_then(|n| self.tunnels.get(n)) else {
                continue;
            };
            let result = self
                .endpoint
                .save(now, peer)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    state
                        .store(
                            &t.def.name,
                            t.index,
                            &t.digest,
                            &t.established_times(),
                            s.as_bytes(),
                        )
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = result {
                tracing::warn!(tunnel = %t.def.name, error = %e, "saving IKE state");
            }
        }
    }

    /// The endpoint's configuration for `def` as this driver runs it, and a note for the
    /// status when it differs from what the spec asks.
    fn peer_config(&self, def: &TunnelDef) -> Result<(PeerConfig, Option<String>), TunnelError> {
        let mut cfg = def.peer.as_ref().map_err(Clone::clone)?.clone();
        let mut note = None;
        if cfg.role == Role::OnTraffic && !self.dp.supports_on_traffic() {
            cfg.role = Role::Respond;
            note = Some(format!(
                "initiation onTraffic needs kernel trap policies, which the {} data plane \
                 does not have; this tunnel only responds",
                self.dp.kind().as_str()
            ));
        }
        if let Some(f) = self.lifetime_scale {
            crate::spec::scale_lifetimes(&mut cfg, f, TEST_MIN_HARD_MARGIN);
        }
        Ok((cfg, note))
    }

    /// A running tunnel's credentials changed (its spec did not): the endpoint reauthenticates
    /// make-before-break instead of a restart. The definition back if the tunnel could not
    /// take it (then restart it).
    fn rotate(&mut self, def: TunnelDef) -> Option<TunnelDef> {
        let Some(peer) = self.tunnels.get(&def.name).and_then(|t| t.peer) else {
            return Some(def);
        };
        let Ok((cfg, _)) = self.peer_config(&def) else {
            return Some(def);
        };
        match self.endpoint.reauthenticate(clock(), peer, cfg) {
            Ok(started) => {
                tracing::info!(
                    tunnel = %def.name,
                    reauthenticating = started,
                    "credentials changed: {}",
                    if started {
                        "a new IKE SA comes up beside the old one, which goes once it is in"
                    } else {
                        "used from the peer's next authentication (this tunnel only responds)"
                    }
                );
                if let Some(t) = self.tunnels.get_mut(&def.name) {
                    t.digest = saved::digest(&def);
                    t.def = def;
                }
                None
            }
            Err(e) => {
                tracing::warn!(tunnel = %def.name, error = %e, "credentials changed, not in place: restarting the tunnel");
                Some(def)
            }
        }
    }

    async fn start_tunnel(&mut self, t: &mut Tunnel) -> Result<(PeerId, Role), TunnelError> {
        let (cfg, note) = self.peer_config(&t.def)?;
        t.status.notes.extend(note);
        // Fail closed first: whatever happens next (no socket, no ESP in the kernel, no peer),
        // the tunnel's traffic is blocked or trapped, never sent in clear, until it is removed.
        let path = crate::dataplane::PathOptions::of(&t.def.spec);
        self.dp.guard(t.index, &cfg, path).await?;
        self.sockets.ensure(cfg.local_addr.ip(), &self.dp)?;
        self.dp.preflight(&cfg.esp_proposals).await?;
        let role = cfg.role;
        let peer = self
            .endpoint
            .add_peer(cfg)
            .map_err(|e| TunnelError::new(StatusReason::InvalidConfig, e.to_string()))?;
        Ok((peer, role))
    }

    async fn shutdown(&mut self, how: Stop) {
        let now = clock();
        let peers: Vec<PeerId> = self.tunnels.values().filter_map(|t| t.peer).collect();
        if how == Stop::Restart && self.state.is_some() {
            // A restart: the next agent resumes the saved IKE SAs and keeps the kernel's SAs,
            // policies and routes, so nothing is deleted and traffic flows meanwhile.
            self.flush().await;
            tracing::info!(
                tunnels = peers.len(),
                "shutting down: IKE state saved, SAs left in place for the next agent"
            );
            return;
        }
        tracing::info!(tunnels = peers.len(), "shutting down: deleting IKE SAs");
        if let Some(state) = self.state.take() {
            // nothing is left to resume, and the deletes below are not saved
            state.remove_others(std::iter::empty());
        }
        for p in peers {
            self.endpoint.remove_peer(now, p);
        }
        self.flush().await;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.endpoint.ike_sa_count() > 0 {
            tokio::select! {
                Some(d) = self.sockets.recv() => {
                    self.endpoint.handle(clock(), d.local, d.remote, &d.data);
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
            self.flush().await;
        }
        if let Err(e) = self.dp.shutdown().await {
            tracing::warn!(reason = %e.reason, message = %e.message, "data plane cleanup");
        }
    }

    fn tunnel_of(&mut self, peer: PeerId) -> Option<&mut Tunnel> {
        let name = self.by_peer.get(&peer)?;
        self.tunnels.get_mut(name)
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Diagnostic(d) => {
                // what was received and configured when a negotiation fails (as charon logs
                // "received proposals ... configured proposals"); the rest is debug detail
                let tunnel = d
                    .peer()
                    .and_then(|p| self.tunnel_of(p))
                    .map(|t| t.def.name.clone())
                    .unwrap_or_default();
                if d.is_failure() {
                    tracing::info!(tunnel, "{d}");
                } else {
                    tracing::debug!(tunnel, "{d}");
                }
            }
            Event::ChildSaInstall(sa) => self.on_child_install(&sa).await,
            Event::ChildSaDelete {
                peer,
                child,
                spi_in,
                spi_out,
            } => {
                if let Err(e) = self.dp.delete(child).await {
                    tracing::warn!(reason = %e.reason, message = %e.message, "CHILD SA removal");
                }
                if let Some(t) = self.tunnel_of(peer) {
                    tracing::info!(tunnel = %t.def.name, spi_in = ?spi_in, spi_out = ?spi_out, "CHILD SA deleted");
                    t.on_child_deleted(child);
                }
            }
            Event::ChildSaFailed { peer, reason } => {
                let metrics = self.metrics.clone();
                if let Some(t) = self.tunnel_of(peer) {
                    if let Some(m) = &metrics {
                        m.child_sa_failures
                            .with_label_values(&[t.def.name.as_str(), reason.as_str()])
                            .inc();
                    }
                    tracing::warn!(tunnel = %t.def.name, reason = reason.as_str(), "CHILD SA failed");
                    t.on_child_failed(reason);
                }
            }
            Event::IkeSaUp {
                peer,
                proposal,
                spis,
                nat,
                initiator,
                local_addr,
                remote_addr,
                resumed,
            } => {
                let metrics = self.metrics.clone();
                if let Some(t) = self.tunnel_of(peer) {
                    let up = IkeUp {
                        proposal: &proposal,
                        spis,
                        nat,
                        initiator,
                        local_addr,
                        remote_addr,
                    };
                    let took = t.on_ike_up(up, clock());
                    if resumed {
                        t.on_ike_resumed();
                    }
                    // a resumed SA was not negotiated now: no handshake to count
                    if let Some(m) = metrics.as_ref().filter(|_| !resumed) {
                        m.handshakes
                            .with_label_values(&[t.def.name.as_str(), "success", "none"])
                            .inc();
                        if let Some(d) = took {
                            m.handshake_duration.observe(d.as_secs_f64());
                        }
                    }
                    tracing::info!(
                        tunnel = %t.def.name,
                        proposal = %crate::notation::ike_choice_name(&proposal),
                        local = %local_addr,
                        remote = %remote_addr,
                        local_behind_nat = nat.local_behind_nat,
                        remote_behind_nat = nat.remote_behind_nat,
                        initiator,
                        resumed,
                        "IKE SA established"
                    );
                }
            }
            Event::IkeSaDown { peer, spis, reason } => {
                let metrics = self.metrics.clone();
                if let Some(t) = self.tunnel_of(peer) {
                    let down = t.on_ike_down(spis, reason, clock());
                    if let Some(m) = &metrics {
                        if down.dpd_failure {
                            m.dpd_failures.inc();
                        }
                        if down.handshake_failed {
                            m.handshakes
                                .with_label_values(&[
                                    t.def.name.as_str(),
                                    "failure",
                                    reason.as_str(),
                                ])
                                .inc();
                        }
                    }
                    if let Some(at) = t.retry_at {
                        let name = t.def.name.clone();
                        self.retries.push(Reverse((at, name)));
                    }
                }
            }
            Event::ChildSaResumed(sa) => self.on_child_resumed(&sa).await,
            Event::IkeSaRekeyed {
                peer,
                old,
                new,
                proposal,
            } => {
                let metrics = self.metrics.clone();
                if let Some(t) = self.tunnel_of(peer) {
                    if let Some(m) = &metrics {
                        m.rekeys
                            .with_label_values(&[t.def.name.as_str(), "ike"])
                            .inc();
                    }
                    if t.on_ike_rekeyed(old, new, &proposal) {
                        tracing::info!(tunnel = %t.def.name, "IKE SA rekeyed");
                    }
                }
            }
        }
    }

    async fn on_child_install(&mut self, sa: &ChildSaInstall) {
        let Some(index) = self.tunnel_of(sa.peer).map(|t| t.index) else {
            return;
        };
        let result = self.dp.install(index, sa).await;
        let metrics = self.metrics.clone();
        let Some(t) = self.tunnel_of(sa.peer) else {
            return;
        };
        if let Some(m) = &metrics
            && result.is_ok()
            && sa.replaces.is_some()
        {
            m.rekeys
                .with_label_values(&[t.def.name.as_str(), "child"])
                .inc();
        }
        match result {
            Ok(()) => {
                tracing::info!(
                    tunnel = %t.def.name,
                    spi_in = ?sa.spi_in,
                    spi_out = ?sa.spi_out,
                    proposal = %esp_name(sa.encr, sa.integ),
                    encapsulated = sa.encapsulation.is_some(),
                    "CHILD SA installed"
                );
                t.on_child_installed(sa);
            }
            Err(e) => {
                tracing::error!(tunnel = %t.def.name, reason = %e.reason, message = %e.message, "CHILD SA not installed: deleting it at the peer");
                t.on_child_install_failed(e);
                // The peer holds the CHILD SA and would send into it: delete it there too
                // (review R-4) instead of leaving a half-installed SA that black-holes traffic.
                // A CHILD SA we answered for only exists at the peer once our answer is
                // handled there, so its Delete waits a moment.
                let now = clock();
                if sa.initiator {
                    self.endpoint.child_install_failed(now, sa.peer, sa.child);
                } else {
                    self.refused
                        .push((now + REFUSED_CHILD_DELETE_DELAY, sa.peer, sa.child));
                }
            }
        }
    }

    /// A resumed CHILD SA: the data plane takes over the kernel objects the previous agent
    /// installed for it. If they are not there, the CHILD SA is deleted at the peer, and the
    /// tunnel's CHILD SA recovery makes a new one.
    async fn on_child_resumed(&mut self, sa: &strait_ike::ChildSaResumed) {
        let Some(index) = self.tunnel_of(sa.peer).map(|t| t.index) else {
            return;
        };
        let result = self.dp.resume(index, sa).await;
        let Some(t) = self.tunnel_of(sa.peer) else {
            return;
        };
        match result {
            Ok(()) => {
                tracing::info!(tunnel = %t.def.name, spi_in = ?sa.spi_in, spi_out = ?sa.spi_out, "CHILD SA resumed");
                t.on_child_resumed(sa);
            }
            Err(e) => {
                tracing::warn!(tunnel = %t.def.name, reason = %e.reason, message = %e.message, "a resumed CHILD SA is not in the data plane: deleting it at the peer");
                t.on_child_install_failed(e);
                self.endpoint
                    .child_install_failed(clock(), sa.peer, sa.child);
            }
        }
    }

    /// The current status of every tunnel.
    pub fn status(&self) -> AgentStatus {
        AgentStatus {
            node: self.settings.node.clone(),
            dataplane: self.dp.kind().as_str().into(),
            tunnels: self.tunnels.values().map(|t| t.status.clone()).collect(),
        }
    }
}

/// `rx.recv()`, or never when there is no receiver.
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
