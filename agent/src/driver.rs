//! The driver (quinn's `ConnectionDriver` shape): one task owns the sans-IO [`Endpoint`] and
//! feeds it datagrams from the UDP sockets, the clock (only read here), and commands; after
//! every input it drains `poll_event` into the data plane, the status and the logs, then
//! `poll_transmit` onto the sockets (kernel state before the peer hears of it).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use strait_crds::{ChildSaStatus, GatewayStatus, IPsecTunnelSpec, LastError};
use strait_ike::proposal::{IkeChoice, Keyword};
use strait_ike::{
    ChildSaId, ChildSaInstall, Endpoint, EndpointConfig, Event, IkeSpis, PeerConfig, PeerId,
    Reason, Role,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::dataplane::{self, Dataplane, KernelEvent};
use crate::metrics::{Metrics, MetricsRequest};
use crate::status::{AgentStatus, StatusRequest, TunnelStatus};

/// First re-initiation delay after a failure; doubled up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(2);
/// Under `--test-lifetime-scale`, the least time between a scheduled rekey and the hard limit.
const TEST_MIN_HARD_MARGIN: Duration = Duration::from_secs(5);
/// Longest re-initiation delay.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits for the peers to acknowledge our DELETEs.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// After a restart, XFRM objects of the previous run are kept until every tunnel is up again
/// (plus [`ADOPT_SETTLE`], for packets already in flight on the old SAs), at most this long.
pub const ADOPT_MAX: Duration = Duration::from_secs(90);
/// See [`ADOPT_MAX`].
pub const ADOPT_SETTLE: Duration = Duration::from_secs(2);

/// One tunnel as the driver gets it: the spec (to notice changes) and what it maps to.
#[derive(Debug)]
pub struct TunnelDef {
    /// The `IPsecTunnel` name.
    pub name: String,
    /// The spec as written.
    pub spec: IPsecTunnelSpec,
    /// A digest of the secrets it uses (to notice a changed PSK without keeping it twice).
    pub secret_digest: Vec<u8>,
    /// The endpoint configuration, or why there is none (reason, message).
    pub peer: Result<PeerConfig, (&'static str, String)>,
    /// Remarks for the status.
    pub notes: Vec<String>,
}

impl TunnelDef {
    fn same_as(&self, other: &TunnelDef) -> bool {
        self.spec == other.spec
            && self.secret_digest == other.secret_digest
            && self.notes == other.notes
            && self.peer.is_ok() == other.peer.is_ok()
    }
}

/// What the rest of the agent can ask of the driver.
#[derive(Debug)]
pub enum Command {
    /// Replace the tunnel set: added, changed and removed tunnels are applied, the others are
    /// left alone.
    Reload(Vec<TunnelDef>),
    /// Delete every IKE SA, wait briefly for the DELETEs to go out, clean the data plane, stop.
    Shutdown(oneshot::Sender<()>),
}

/// Ports and names.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The IKE port we listen on (500).
    pub ike_port: u16,
    /// The NAT-T port (4500).
    pub natt_port: u16,
    /// This node's name, for the status.
    pub node: String,
    /// The endpoint's settings (ports are overwritten from the two above).
    pub endpoint: EndpointConfig,
}

struct Datagram {
    local: SocketAddr,
    remote: SocketAddr,
    data: Vec<u8>,
}

struct Socket {
    local: SocketAddr,
    sock: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

struct Tunnel {
    def: TunnelDef,
    index: u32,
    peer: Option<PeerId>,
    role: Option<Role>,
    current: Option<IkeSpis>,
    status: TunnelStatus,
    children: BTreeMap<ChildSaId, ChildSaStatus>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When we sent the first IKE_SA_INIT of the handshake under way (for its duration).
    initiated_at: Option<Instant>,
}

/// The driver task's state.
pub struct Driver<D: Dataplane> {
    settings: Settings,
    endpoint: Endpoint,
    dp: D,
    sockets: Vec<Socket>,
    dgram_tx: mpsc::Sender<Datagram>,
    dgram_rx: mpsc::Receiver<Datagram>,
    tunnels: BTreeMap<String, Tunnel>,
    by_peer: HashMap<PeerId, String>,
    /// Tunnels waiting to re-initiate, earliest first, so that no wakeup scans every tunnel.
    /// An entry whose tunnel no longer has that `retry_at` is stale and skipped.
    retries: BinaryHeap<Reverse<(Instant, String)>>,
    next_index: u32,
    kernel_events: Option<mpsc::Receiver<KernelEvent>>,
    metrics: Option<Metrics>,
    scrapes: Option<mpsc::Receiver<MetricsRequest>>,
    /// Hashes of recently sent datagrams (to count retransmissions).
    recent_sends: std::collections::VecDeque<u64>,
    /// Adopted objects of a previous run: sweep them at the latest then.
    adopt_until: Option<Instant>,
    /// Every tunnel was up at this time; sweep [`ADOPT_SETTLE`] later.
    adopt_ready_at: Option<Instant>,
    lifetime_scale: Option<f64>,
}

impl<D: Dataplane> core::fmt::Debug for Driver<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driver")
            .field("endpoint", &self.endpoint)
            .field("tunnels", &self.tunnels.len())
            .finish_non_exhaustive()
    }
}

impl<D: Dataplane> Drop for Driver<D> {
    fn drop(&mut self) {
        for s in &self.sockets {
            s.reader.abort();
        }
    }
}

fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn time_in(d: Duration) -> Option<Time> {
    let d = k8s_openapi::jiff::SignedDuration::try_from(d).ok()?;
    k8s_openapi::jiff::Timestamp::now()
        .checked_add(d)
        .ok()
        .map(Time)
}

/// The IKE proposal in strongSwan's notation.
pub fn ike_choice_name(c: &IkeChoice) -> String {
    let mut parts = vec![c.encr.keyword()];
    if let Some(i) = c.integ {
        parts.push(i.keyword());
    }
    parts.push(c.prf.keyword());
    parts.push(c.ke.keyword());
    parts.join("-")
}

fn spis_string(s: &IkeSpis) -> String {
    format!("{:?}_i {:?}_r", s.initiator, s.responder)
}

/// A sentence for a person, per reason.
pub fn reason_message(r: Reason) -> &'static str {
    match r {
        Reason::NoProposalChosen => {
            "no proposal chosen: the peer and this tunnel have no algorithm set in common (compare spec.ike/spec.esp proposals with the peer's)"
        }
        Reason::AuthenticationFailed => {
            "authentication failed: the peer rejected our AUTH or its AUTH/identity did not verify (check the pre-shared key or the certificates and CA, and both identities)"
        }
        Reason::PeerUnreachable => {
            "the peer did not answer (retransmissions or dead peer detection timed out)"
        }
        Reason::TsUnacceptable => "the peer did not accept the traffic selectors (subnets)",
        Reason::InvalidSyntax => "the peer sent, or reported, a malformed message",
        Reason::DeletedByPeer => "the peer deleted the SA",
        Reason::DeletedLocally => "deleted by this agent",
        Reason::HalfOpenTimeout => "the peer never completed IKE_AUTH",
        Reason::Replaced => "replaced by a newer SA",
        Reason::CertificateNotYetValid => "the peer's certificate is not yet valid",
        Reason::CertificateExpired => "the peer's certificate has expired",
        Reason::PeerError => "the peer answered with an error notification",
        _ => "internal error in this agent",
    }
}

/// Tells the endpoint the wall-clock time (for certificate validity). A system clock before
/// 1970 leaves it unset: certificate authentication then fails with `InternalError`.
fn set_wall_clock(endpoint: &mut Endpoint) {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => endpoint.set_wall_clock(Instant::now(), d.as_secs()),
        Err(_) => {
            tracing::error!("the system clock is before 1970; certificates cannot be checked")
        }
    }
}

fn last_error(reason: &str, message: String) -> Option<LastError> {
    Some(LastError {
        reason: reason.to_owned(),
        message,
        time: Some(now_time()),
    })
}

impl<D: Dataplane> Driver<D> {
    /// A driver with no tunnel yet.
    pub fn new(settings: Settings, dp: D) -> Self {
        let mut ep = settings.endpoint.clone();
        ep.ike_port = settings.ike_port;
        ep.natt_port = settings.natt_port;
        let mut endpoint = Endpoint::new(ep, Box::new(crate::rng::OsRng::new()));
        set_wall_clock(&mut endpoint);
        let (dgram_tx, dgram_rx) = mpsc::channel(1024);
        let mut dp = dp;
        let kernel_events = dp.take_events();
        Self {
            settings,
            endpoint,
            dp,
            sockets: Vec::new(),
            dgram_tx,
            dgram_rx,
            tunnels: BTreeMap::new(),
            by_peer: HashMap::new(),
            retries: BinaryHeap::new(),
            next_index: 0,
            kernel_events,
            metrics: Metrics::new()
                .map_err(|e| tracing::error!(error = %e, "metrics unavailable"))
                .ok(),
            scrapes: None,
            recent_sends: std::collections::VecDeque::new(),
            adopt_until: None,
            adopt_ready_at: None,
            lifetime_scale: None,
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
            self.adopt_until = Some(Instant::now() + ADOPT_MAX);
        }
        self.reload(initial).await;
        loop {
            self.check_adopted().await;
            let deadline = self.next_deadline();
            let timer = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(d) = self.dgram_rx.recv() => {
                    self.endpoint.handle(Instant::now(), d.local, d.remote, &d.data);
                }
                () = timer => self.on_timer(),
                Some(req) = status.recv() => {
                    let _ = req.send(self.status());
                }
                Some(ev) = recv_opt(&mut self.kernel_events) => self.on_kernel_event(ev),
                Some(req) = recv_opt(&mut self.scrapes) => {
                    let text = self.scrape().await;
                    let _ = req.send(text);
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Reload(defs)) => self.reload(defs).await,
                    Some(Command::Shutdown(done)) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
            }
            self.flush().await;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let retry = self.retries.peek().map(|Reverse((at, _))| *at);
        let adopt = match (self.adopt_until, self.adopt_ready_at) {
            (Some(until), Some(ready)) => Some(until.min(ready + ADOPT_SETTLE)),
            (until, _) => until,
        };
        [self.endpoint.poll_timeout(), retry, adopt]
            .into_iter()
            .flatten()
            .min()
    }

    /// Sweeps what a previous run left in the kernel once every tunnel has its CHILD SAs again
    /// (make-before-break across a restart), or at [`ADOPT_MAX`].
    async fn check_adopted(&mut self) {
        let Some(until) = self.adopt_until else {
            return;
        };
        let now = Instant::now();
        let all_up = self
            .tunnels
            .values()
            .filter(|t| t.peer.is_some())
            .all(|t| t.status.ready);
        if !all_up {
            self.adopt_ready_at = None;
        } else if self.adopt_ready_at.is_none() {
            self.adopt_ready_at = Some(now);
        }
        let settled = self.adopt_ready_at.is_some_and(|r| now >= r + ADOPT_SETTLE);
        if !settled && now < until {
            return;
        }
        if !settled {
            tracing::warn!(
                "not every tunnel came back in time: sweeping the previous run's XFRM objects anyway"
            );
        }
        self.adopt_until = None;
        self.adopt_ready_at = None;
        if let Err(e) = self.dp.sweep_adopted().await {
            tracing::warn!(reason = e.reason, message = %e.message, "sweep after restart");
        }
    }

    fn on_kernel_event(&mut self, ev: KernelEvent) {
        let now = Instant::now();
        let index = match ev {
            KernelEvent::Expire { tunnel, .. } | KernelEvent::Acquire { tunnel } => tunnel,
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
        for s in crate::metrics::IKE_STATES {
            let n = self
                .tunnels
                .values()
                .filter(|t| {
                    t.status
                        .gateway
                        .ike_state
                        .as_deref()
                        .is_some_and(|st| st.eq_ignore_ascii_case(s))
                })
                .count();
            m.ike_sas
                .with_label_values(&[s])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        m.set_endpoint_stats(&self.endpoint.stats());
        let children: usize = self.tunnels.values().map(|t| t.children.len()).sum();
        m.child_sas.set(i64::try_from(children).unwrap_or(i64::MAX));
        let traffic = self.dp.traffic().await;
        let by_name = self
            .tunnels
            .values()
            .filter_map(|t| traffic.get(&t.index).map(|x| (t.def.name.clone(), *x)))
            .collect();
        m.set_traffic(&by_name);
        m.encode()
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.endpoint.handle_timeout(now);
        while let Some(Reverse((at, _))) = self.retries.peek()
            && *at <= now
        {
            let Some(Reverse((at, name))) = self.retries.pop() else {
                break;
            };
            let Some(t) = self.tunnels.get_mut(&name) else {
                continue;
            };
            if t.retry_at != Some(at) {
                continue;
            }
            t.retry_at = None;
            if let Some(peer) = t.peer {
                tracing::info!(tunnel = %t.def.name, "re-initiating");
                t.status.gateway.ike_state = Some("Connecting".into());
                t.initiated_at = Some(now);
                self.endpoint.initiate(now, peer);
            }
        }
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
        // a datagram sent again unchanged is a retransmission (NAT keepalives excepted)
        if t.payload.len() > 1 {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            t.payload.hash(&mut h);
            t.remote.hash(&mut h);
            let h = h.finish();
            if self.recent_sends.contains(&h) {
                if let Some(m) = &self.metrics {
                    m.retransmissions.inc();
                }
            } else {
                if self.recent_sends.len() >= 256 {
                    self.recent_sends.pop_front();
                }
                self.recent_sends.push_back(h);
            }
        }
        let sock = self
            .sockets
            .iter()
            .find(|s| s.local == t.local)
            .or_else(|| {
                self.sockets.iter().find(|s| {
                    s.local.port() == t.local.port() && s.local.is_ipv4() == t.remote.is_ipv4()
                })
            });
        let Some(s) = sock else {
            tracing::warn!(local = %t.local, remote = %t.remote, "no socket to send from");
            return;
        };
        if let Err(e) = s.sock.send_to(&t.payload, t.remote).await {
            tracing::warn!(local = %t.local, remote = %t.remote, error = %e, "send failed");
        }
    }

    fn ensure_sockets(&mut self, ip: IpAddr) -> Result<(), String> {
        for (port, natt) in [
            (self.settings.ike_port, false),
            (self.settings.natt_port, true),
        ] {
            let want = SocketAddr::new(ip, port);
            if self.sockets.iter().any(|s| s.local == want) {
                continue;
            }
            let std_sock = std::net::UdpSocket::bind(want)
                .map_err(|e| format!("cannot bind UDP {want}: {e}"))?;
            std_sock
                .set_nonblocking(true)
                .map_err(|e| format!("UDP {want}: {e}"))?;
            let sock = UdpSocket::from_std(std_sock).map_err(|e| format!("UDP {want}: {e}"))?;
            self.dp.prepare_socket(&sock, natt).map_err(|e| e.message)?;
            let sock = Arc::new(sock);
            let reader = tokio::spawn(read_loop(Arc::clone(&sock), want, self.dgram_tx.clone()));
            tracing::info!(local = %want, "listening");
            self.sockets.push(Socket {
                local: want,
                sock,
                reader,
            });
        }
        Ok(())
    }

    async fn reload(&mut self, defs: Vec<TunnelDef>) {
        // certificates are checked against it; a SIGHUP also picks up a corrected clock
        set_wall_clock(&mut self.endpoint);
        let now = Instant::now();
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
            let removed = self.tunnels.remove(&name);
            if let Some(t) = &removed {
                tracing::info!(tunnel = %name, "removing tunnel");
                if let Some(peer) = t.peer {
                    self.endpoint.remove_peer(now, peer);
                }
            }
            // events of the removed peer (CHILD SA deletes) reach the data plane here
            self.flush().await;
            if let Some(t) = removed
                && t.role == Some(Role::OnTraffic)
                && let Err(e) = self.dp.untrap(t.index).await
            {
                tracing::warn!(tunnel = %name, reason = e.reason, message = %e.message, "removing trap policies");
            }
        }
        for (_, def) in incoming {
            self.add_tunnel(def).await;
        }
    }

    async fn add_tunnel(&mut self, def: TunnelDef) {
        self.next_index = self.next_index.wrapping_add(1);
        let name = def.name.clone();
        let mut t = Tunnel {
            index: self.next_index,
            peer: None,
            role: None,
            current: None,
            status: TunnelStatus {
                name: name.clone(),
                initiation: format!("{:?}", def.spec.initiation),
                local_id: def.spec.local.id.clone(),
                remote_id: def.spec.remote.id.clone(),
                notes: def.notes.clone(),
                gateway: GatewayStatus {
                    node: self.settings.node.clone(),
                    ike_state: Some("Down".into()),
                    ..GatewayStatus::default()
                },
                ..TunnelStatus::default()
            },
            children: BTreeMap::new(),
            retry_at: None,
            backoff: RETRY_MIN,
            initiated_at: None,
            def,
        };
        t.status.initiation = match t.def.spec.initiation {
            strait_crds::Initiation::Start => "start",
            strait_crds::Initiation::Respond => "respond",
            strait_crds::Initiation::OnTraffic => "onTraffic",
        }
        .into();
        match self.start_tunnel(&mut t).await {
            Ok((peer, role)) => {
                t.peer = Some(peer);
                t.role = Some(role);
                self.by_peer.insert(peer, name.clone());
                if role == Role::Start {
                    tracing::info!(tunnel = %name, "initiating");
                    t.status.gateway.ike_state = Some("Connecting".into());
                    let now = Instant::now();
                    t.initiated_at = Some(now);
                    self.endpoint.initiate(now, peer);
                } else {
                    tracing::info!(tunnel = %name, ?role, "waiting for the peer");
                }
            }
            Err((reason, message)) => {
                tracing::error!(tunnel = %name, reason, %message, "tunnel cannot start");
                t.status.gateway.last_error = last_error(reason, message);
            }
        }
        self.tunnels.insert(name, t);
    }

    async fn start_tunnel(
        &mut self,
        t: &mut Tunnel,
    ) -> Result<(PeerId, Role), (&'static str, String)> {
        let cfg = t.def.peer.as_ref().map_err(Clone::clone)?;
        self.ensure_sockets(cfg.local_addr.ip())
            .map_err(|m| ("SocketError", m))?;
        self.dp
            .preflight(&cfg.esp_proposals)
            .await
            .map_err(|e| (e.reason, e.message))?;
        let mut cfg = cfg.clone();
        if cfg.role == Role::OnTraffic {
            if self.dp.supports_on_traffic() {
                self.dp
                    .trap(t.index, &cfg)
                    .await
                    .map_err(|e| (e.reason, e.message))?;
            } else {
                cfg.role = Role::Respond;
                t.status.notes.push(format!(
                    "initiation onTraffic needs kernel trap policies, which the {} data plane \
                     does not have; this tunnel only responds",
                    self.dp.kind().as_str()
                ));
            }
        }
        let role = cfg.role;
        if let Some(f) = self.lifetime_scale {
            for l in [&mut cfg.ike_lifetime, &mut cfg.child_lifetime] {
                // The schedule is compressed, but not the time a rekey may take before the
                // hard limit: a real margin is minutes (10 % of an hour), far above any
                // exchange, and a scaled one under a second would test the machine's speed.
                let margin = l.life_time.saturating_sub(l.rekey_time).mul_f64(f);
                l.rekey_time = l.rekey_time.mul_f64(f);
                l.rand_time = l.rand_time.mul_f64(f);
                l.life_time = l.rekey_time + margin.max(TEST_MIN_HARD_MARGIN);
            }
        }
        let peer = self
            .endpoint
            .add_peer(cfg)
            .map_err(|e| ("InvalidConfig", e.to_string()))?;
        Ok((peer, role))
    }

    async fn shutdown(&mut self) {
        let now = Instant::now();
        let peers: Vec<PeerId> = self.tunnels.values().filter_map(|t| t.peer).collect();
        tracing::info!(tunnels = peers.len(), "shutting down: deleting IKE SAs");
        for p in peers {
            self.endpoint.remove_peer(now, p);
        }
        self.flush().await;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.endpoint.ike_sa_count() > 0 {
            tokio::select! {
                Some(d) = self.dgram_rx.recv() => {
                    self.endpoint.handle(Instant::now(), d.local, d.remote, &d.data);
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
            self.flush().await;
        }
        if let Err(e) = self.dp.shutdown().await {
            tracing::warn!(reason = e.reason, message = %e.message, "data plane cleanup");
        }
    }

    fn tunnel_of(&mut self, peer: PeerId) -> Option<&mut Tunnel> {
        let name = self.by_peer.get(&peer)?;
        self.tunnels.get_mut(name)
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::ChildSaInstall(sa) => self.on_child_install(&sa).await,
            Event::ChildSaDelete {
                peer,
                child,
                spi_in,
                spi_out,
            } => {
                if let Err(e) = self.dp.delete(child).await {
                    tracing::warn!(reason = e.reason, message = %e.message, "CHILD SA removal");
                }
                if let Some(t) = self.tunnel_of(peer) {
                    tracing::info!(tunnel = %t.def.name, spi_in = ?spi_in, spi_out = ?spi_out, "CHILD SA deleted");
                    t.children.remove(&child);
                    t.refresh();
                }
            }
            Event::ChildSaFailed { peer, reason } => {
                if let Some(t) = self.tunnel_of(peer) {
                    tracing::warn!(tunnel = %t.def.name, reason = reason.as_str(), "CHILD SA failed");
                    t.status.gateway.last_error = last_error(
                        reason.as_str(),
                        format!("CHILD SA: {}", reason_message(reason)),
                    );
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
            } => {
                let metrics = self.metrics.clone();
                if let Some(t) = self.tunnel_of(peer) {
                    let started = t.initiated_at.take();
                    if let Some(m) = &metrics {
                        m.handshakes.with_label_values(&["success", "none"]).inc();
                        if let Some(at) = started
                            && initiator
                        {
                            m.handshake_duration.observe(at.elapsed().as_secs_f64());
                        }
                    }
                    let g = &mut t.status.gateway;
                    g.ike_state = Some("Established".into());
                    g.ike_proposal = Some(ike_choice_name(&proposal));
                    g.ike_spis = Some(spis_string(&spis));
                    g.local_endpoint = Some(local_addr.to_string());
                    g.remote_endpoint = Some(remote_addr.to_string());
                    g.nat_detected = Some(nat.local_behind_nat || nat.remote_behind_nat);
                    g.established_at = Some(now_time());
                    g.last_error = None;
                    t.status.initiator = Some(initiator);
                    t.current = Some(spis);
                    t.retry_at = None;
                    t.backoff = RETRY_MIN;
                    tracing::info!(
                        tunnel = %t.def.name,
                        proposal = %ike_choice_name(&proposal),
                        local = %local_addr,
                        remote = %remote_addr,
                        local_behind_nat = nat.local_behind_nat,
                        remote_behind_nat = nat.remote_behind_nat,
                        initiator,
                        "IKE SA established"
                    );
                    t.refresh();
                }
            }
            Event::IkeSaDown { peer, spis, reason } => {
                let metrics = self.metrics.clone();
                if let Some(t) = self.tunnel_of(peer) {
                    let established = t.current == Some(spis);
                    if let Some(m) = &metrics
                        && established
                        && reason == Reason::PeerUnreachable
                    {
                        m.dpd_failures.inc();
                    }
                    if t.current.is_none()
                        && !matches!(reason, Reason::DeletedLocally | Reason::Replaced)
                    {
                        if let Some(m) = &metrics {
                            m.handshakes
                                .with_label_values(&["failure", reason.as_str()])
                                .inc();
                        }
                        t.initiated_at = None;
                    }
                    t.on_ike_down(spis, reason);
                    if let Some(at) = t.retry_at {
                        let name = t.def.name.clone();
                        self.retries.push(Reverse((at, name)));
                    }
                }
            }
            Event::IkeSaRekeyed {
                peer,
                old,
                new,
                proposal,
            } => {
                if let Some(m) = &self.metrics {
                    m.rekeys.with_label_values(&["ike"]).inc();
                }
                if let Some(t) = self.tunnel_of(peer)
                    && t.current == Some(old)
                {
                    tracing::info!(tunnel = %t.def.name, "IKE SA rekeyed");
                    t.current = Some(new);
                    t.status.gateway.ike_spis = Some(spis_string(&new));
                    t.status.gateway.ike_proposal = Some(ike_choice_name(&proposal));
                }
            }
        }
    }

    async fn on_child_install(&mut self, sa: &ChildSaInstall) {
        let Some(index) = self.tunnel_of(sa.peer).map(|t| t.index) else {
            return;
        };
        let result = self.dp.install(index, sa).await;
        if let Some(m) = &self.metrics
            && result.is_ok()
            && sa.replaces.is_some()
        {
            m.rekeys.with_label_values(&["child"]).inc();
        }
        let Some(t) = self.tunnel_of(sa.peer) else {
            return;
        };
        match result {
            Ok(()) => {
                tracing::info!(
                    tunnel = %t.def.name,
                    spi_in = ?sa.spi_in,
                    spi_out = ?sa.spi_out,
                    proposal = %dataplane::esp_name(sa.encr, sa.integ),
                    encapsulated = sa.encapsulation.is_some(),
                    "CHILD SA installed"
                );
                let ts =
                    |v: &[strait_ike::codec::TsRange]| v.iter().map(dataplane::ts_string).collect();
                t.children.insert(
                    sa.child,
                    ChildSaStatus {
                        spi_in: format!("{:?}", sa.spi_in),
                        spi_out: format!("{:?}", sa.spi_out),
                        proposal: Some(dataplane::esp_name(sa.encr, sa.integ)),
                        local_ts: ts(&sa.local_ts),
                        remote_ts: ts(&sa.remote_ts),
                        mode: Some("tunnel".into()),
                        encapsulated: Some(sa.encapsulation.is_some()),
                        established_at: Some(now_time()),
                        rekey_at: time_in(sa.lifetimes.soft),
                    },
                );
                t.refresh();
            }
            Err(e) => {
                tracing::error!(tunnel = %t.def.name, reason = e.reason, message = %e.message, "CHILD SA not installed");
                t.status.gateway.last_error = last_error(e.reason, e.message);
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

impl Tunnel {
    fn refresh(&mut self) {
        self.status.gateway.child_sas = self.children.values().cloned().collect();
        self.status.ready = self.status.gateway.ike_state.as_deref() == Some("Established")
            && !self.children.is_empty();
    }

    fn on_ike_down(&mut self, spis: IkeSpis, reason: Reason) {
        let current = self.current.is_none_or(|c| c == spis);
        if !current || reason == Reason::Replaced {
            tracing::info!(tunnel = %self.def.name, reason = reason.as_str(), spis = %spis_string(&spis), "older IKE SA gone");
            return;
        }
        tracing::warn!(tunnel = %self.def.name, reason = reason.as_str(), spis = %spis_string(&spis), "IKE SA down");
        self.current = None;
        let g = &mut self.status.gateway;
        g.ike_spis = None;
        g.ike_proposal = None;
        g.established_at = None;
        g.nat_detected = None;
        self.status.initiator = None;
        self.children.clear();
        if reason != Reason::DeletedLocally {
            g.last_error = last_error(reason.as_str(), reason_message(reason).to_owned());
        }
        let retry = self.role == Some(Role::Start) && reason != Reason::DeletedLocally;
        if retry {
            let delay = self.backoff;
            self.backoff = (self.backoff * 2).min(RETRY_MAX);
            self.retry_at = Some(Instant::now() + delay);
            g.ike_state = Some("Connecting".into());
            tracing::info!(tunnel = %self.def.name, delay_secs = delay.as_secs(), "will re-initiate");
        } else {
            g.ike_state = Some("Down".into());
        }
        self.refresh();
    }
}

/// `rx.recv()`, or never when there is no receiver.
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn read_loop(sock: Arc<UdpSocket>, local: SocketAddr, tx: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, remote)) => {
                let data = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                if tx
                    .send(Datagram {
                        local,
                        remote,
                        data,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(%local, error = %e, "receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
