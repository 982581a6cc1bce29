//! The deterministic simulator (after FoundationDB's and TigerBeetle's): several endpoints, each
//! on its own simulated node with a kernel SA table, a network that loses, duplicates, delays
//! and reorders datagrams, and process crashes and hitless restarts, all on one simulated
//! clock and drawn from one seed. Nothing here reads the real clock or OS randomness, so a run
//! is a function of its [`Scenario`] line.
//!
//! The driver and the kernel model follow the agent's: the same retry backoff
//! (`agent/src/driver/tunnel.rs`), the same outbound plan for rekeys
//! (`agent/src/dataplane/objects.rs`), the same adoption of a previous run's SAs across a restart
//! (`agent/src/driver/adopt.rs`).
//!
//! What is checked while it runs and at the end is listed on [`World::run`].
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod scenario;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strait_ike::codec::{Flags, Header, NAT_KEEPALIVE, PayloadType, TsRange};
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::proposal::{parse_esp_list, parse_ike_list};
use strait_ike::{
    AuthConfig, CertificateAuth, ChildSaId, ChildSaInstall, Dpd, Endpoint, EndpointConfig, EspSpi,
    EspSpiSource, Event, Identity, IkeSpis, Lifetime, PeerConfig, PeerId, Reason, RetransmitConfig,
    Role,
};

pub use scenario::{Kind, ProcessEvent, Scenario, SimRng, TunnelSpec};

/// The agent's re-initiation backoff (`RETRY_MIN`, `RETRY_MAX`).
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// The kernel's acquire interval: a larval state blocks new acquires this long.
const ACQUIRE_EVERY: Duration = Duration::from_secs(30);
/// The agent keeps a previous run's SAs until every tunnel is back plus this, at most
/// [`ADOPT_MAX`].
const ADOPT_SETTLE: Duration = Duration::from_secs(2);
const ADOPT_MAX: Duration = Duration::from_secs(90);
/// How long a node may send on two outbound SAs of one tunnel (make before break: the new one
/// is in before the old one goes, for a round trip on a clean network).
const OUTBOUND_GRACE: Duration = Duration::from_secs(10);
/// One-way delay of a clean network.
const DELAY: Duration = Duration::from_millis(5);
/// Wall-clock time of the simulation's start (saved state is timed by it).
const WALL_CLOCK: u64 = 1_800_000_000;
/// More violations than this in one run are not worth reading.
const MAX_VIOLATIONS: usize = 20;

/// What many runs exercised, summed, so a run of the explorer shows it reached the corners it
/// is meant to.
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    pub runs: u64,
    pub ike_up: u64,
    pub ike_resumed: u64,
    pub ike_rekeys: u64,
    pub child_installs: u64,
    pub child_rekeys: u64,
    pub rekey_collisions: u64,
    pub child_failed: u64,
    pub children_resumed: u64,
    pub resumed_not_in_kernel: u64,
    pub down_unreachable: u64,
    pub down_by_peer: u64,
    pub down_other: u64,
    pub retries: u64,
    pub acquires: u64,
    pub crashes: u64,
    pub pauses: u64,
    pub restarts: u64,
    pub hard_expiries: u64,
    pub datagrams: u64,
    pub lost: u64,
    pub too_big: u64,
    pub nat_dropped: u64,
    pub encapsulated: u64,
    pub esp_mappings: u64,
    pub keepalives: u64,
    pub rebinds: u64,
    pub reauths: u64,
    pub clock_steps: u64,
    pub fragments: u64,
    pub duplicated: u64,
    pub retransmits: u64,
    pub esp_ok: u64,
    pub esp_no_sa: u64,
    pub max_ike_sas: u64,
    pub max_children: u64,
}

impl Coverage {
    pub fn add(&mut self, o: &Coverage) {
        macro_rules! sum {
            ($($f:ident),*) => { $(self.$f += o.$f;)* };
        }
        sum!(
            runs,
            ike_up,
            ike_resumed,
            ike_rekeys,
            child_installs,
            child_rekeys,
            rekey_collisions,
            child_failed,
            children_resumed,
            resumed_not_in_kernel,
            down_unreachable,
            down_by_peer,
            down_other,
            retries,
            acquires,
            crashes,
            pauses,
            restarts,
            hard_expiries,
            datagrams,
            lost,
            too_big,
            nat_dropped,
            encapsulated,
            esp_mappings,
            keepalives,
            rebinds,
            reauths,
            clock_steps,
            fragments,
            duplicated,
            retransmits,
            esp_ok,
            esp_no_sa
        );
        self.max_ike_sas = self.max_ike_sas.max(o.max_ike_sas);
        self.max_children = self.max_children.max(o.max_children);
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every invariant that did not hold, first ones first (at most [`MAX_VIOLATIONS`]).
    pub violations: Vec<String>,
    pub coverage: Coverage,
    /// A digest of every datagram sent, with its time: equal for equal scenarios.
    pub trace: u64,
}

/// ESP SAs of a node's kernel are allocated here, unique on the node for the whole run (the
/// kernel's `XFRM_MSG_ALLOCSPI`); it outlives the agent's process like the kernel does.
struct SpiPool {
    rng: SimRng,
    used: HashSet<u32>,
}

struct NodeSpis(Arc<Mutex<SpiPool>>);

impl EspSpiSource for NodeSpis {
    fn inbound_esp_spi(&mut self, _local: IpAddr, _remote: IpAddr) -> Option<u32> {
        let mut p = self.0.lock().ok()?;
        loop {
            let spi = 256 + (p.rng.next_u64() % (u64::from(u32::MAX) - 256)) as u32;
            if p.used.insert(spi) {
                return Some(spi);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbound {
    Now,
    /// Installed when this CHILD SA's delete arrives (a rekey responder).
    After(ChildSaId),
    /// The redundant SA of a collision, or held back by a process that is gone.
    Never,
}

struct KernelSa {
    tunnel: usize,
    /// The CHILD SA of the running process that owns it; `None`: left by an earlier process
    /// and not (yet) taken back.
    child: Option<ChildSaId>,
    spi_out: u32,
    key_in: Vec<u8>,
    key_out: Vec<u8>,
    out: Outbound,
    /// Where its ESP goes from and to: ports are the UDP encapsulation's, 0 for plain ESP.
    local: SocketAddr,
    remote: SocketAddr,
    /// The last new source address of the peer's ESP-in-UDP already reported
    /// (`XFRM_MSG_MAPPING`, once per address).
    mapped: Option<SocketAddr>,
    /// Order of installation: the kernel sends on the newest.
    seq: u64,
    soft_at: Option<Instant>,
    hard_at: Instant,
}

#[derive(Default)]
struct Kernel {
    /// By inbound SPI.
    sas: BTreeMap<u32, KernelSa>,
    /// Inbound SPIs ever installed on this node.
    ever: HashSet<u32>,
    /// Inbound SPIs the kernel removed at their hard lifetime.
    expired: HashSet<u32>,
    seq: u64,
    /// When the SAs left by an earlier process are swept.
    sweep_at: Option<Instant>,
}

impl Kernel {
    /// The SA the kernel sends on for `tunnel`.
    fn outbound(&self, tunnel: usize) -> Option<&KernelSa> {
        self.sas
            .values()
            .filter(|s| s.tunnel == tunnel && s.out == Outbound::Now)
            .max_by_key(|s| s.seq)
    }
}

/// The agent's view of one tunnel (`agent/src/driver/tunnel.rs`).
struct Driver {
    role: Role,
    peer: Option<PeerId>,
    /// The IKE SA the status describes: the newest of `up`.
    current: Option<IkeSpis>,
    /// Every established IKE SA of the tunnel, oldest first.
    up: Vec<IkeSpis>,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_acquire: Option<Instant>,
}

enum Comeback {
    Crash,
    /// The same process goes on.
    Pause,
    /// Saved state per tunnel.
    Restart(BTreeMap<usize, Vec<u8>>),
}

struct Node {
    /// The agent's process; `None` while it is gone.
    ep: Option<Endpoint>,
    generation: u64,
    /// While the process is gone: when it comes back and how.
    back_at: Option<(Instant, Comeback)>,
    /// The machine is down with it (a crash): the kernel neither sends nor receives.
    crashed: bool,
    /// How far (seconds) the node's wall clock was stepped back.
    clock_back: u64,
    /// The process is stopped: it keeps its state, and what comes in waits in `inbox`.
    paused: bool,
    inbox: Vec<Inbox>,
    drivers: BTreeMap<usize, Driver>,
    kernel: Kernel,
    spis: Arc<Mutex<SpiPool>>,
    timeout: Option<Instant>,
}

/// What waits for a stopped process: datagrams in its socket (a socket buffer's worth), the
/// kernel's expiry messages.
enum Inbox {
    Ike {
        to: SocketAddr,
        from: SocketAddr,
        payload: Vec<u8>,
    },
    Expire {
        peer: PeerId,
        spi: u32,
        hard: bool,
    },
}

/// Datagrams a stopped process's socket holds; more are dropped.
const SOCKET_BUFFER: usize = 64;

#[derive(Debug, Clone)]
enum Payload {
    Ike(Vec<u8>),
    Esp {
        spi: u32,
        key: Vec<u8>,
        tunnel: usize,
    },
}

#[derive(Debug, Clone)]
struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    payload: Payload,
}

/// What the next step does.
#[derive(Debug, Clone, Copy)]
enum Step {
    Process(usize),
    Back(usize),
    Deliver,
    Timeout(usize),
    Soft(usize, u32),
    Hard(usize, u32),
    Sweep(usize),
    Retry(usize, usize),
    Traffic,
    Settle,
    Check,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Faults,
    Converging,
    /// Every ESP packet must find its SAs: rekeys are make-before-break.
    Settled,
    /// Checking the final state (a rekey may be finishing).
    Final,
}

/// The messages one endpoint sends on one IKE SA in one direction: (sender, SPIi, SPIr,
/// response).
type MessageStream = (usize, [u8; 8], [u8; 8], bool);

pub struct World {
    sc: Scenario,
    net_rng: SimRng,
    t0: Instant,
    now: Instant,
    nodes: Vec<Node>,
    /// IP address → (node, tunnel).
    addr_of: HashMap<IpAddr, (usize, usize)>,
    /// NAT tunnels → what the NAT adds to its inside end's ports.
    nat_offset: BTreeMap<usize, u16>,
    net: BTreeMap<(Instant, u64), Datagram>,
    seq: u64,
    traffic_at: Instant,
    next_event: usize,
    events: Vec<ProcessEvent>,
    phase: Phase,
    settle_at: Instant,
    check_at: Instant,
    give_up_at: Instant,
    /// ESP key → (receiving node, SPI): no key is used by two SAs.
    keys: HashMap<Vec<u8>, (usize, u32)>,
    /// (sender, SPIs, response) → highest message ID and every ID sent.
    msgids: HashMap<MessageStream, (u32, HashSet<u32>)>,
    violations: Vec<String>,
    cov: Coverage,
    trace: u64,
    /// Print every event (`STRAIT_SIM_TRACE`, for replaying one scenario).
    trace_events: bool,
    /// (node, tunnel) → since when it has had more than one outbound SA.
    two_outbound: HashMap<(usize, usize), Instant>,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn addr(node: usize, tunnel: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, node as u8 + 1, tunnel as u8 + 1, 1)),
        500,
    )
}

/// The NAT's address in front of NAT tunnel `tunnel`'s inside end.
fn public_ip(tunnel: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(100, 64, tunnel as u8 + 1, 1))
}

fn subnet(node: usize, tunnel: usize) -> TsRange {
    TsRange::subnet(
        IpAddr::V4(Ipv4Addr::new(172, 16 + node as u8, tunnel as u8, 0)),
        24,
    )
    .unwrap()
}

/// Tunnel `t` as `node` (one of its two ends) configures it.
fn peer_config(t: &TunnelSpec, index: usize, node: usize) -> PeerConfig {
    let (other, role) = if node == t.a {
        (t.b, t.role_a)
    } else {
        (t.a, t.role_b)
    };
    let esp = if t.pfs {
        "aes256gcm16-x25519"
    } else {
        "aes256gcm16"
    };
    let mut c = PeerConfig::psk(
        addr(node, index),
        Identity::Fqdn(format!("e{node}.sim")),
        addr(other, index),
        Identity::Fqdn(format!("e{other}.sim")),
        b"simulated pre-shared key",
    )
    .with_proposals(
        parse_ike_list(&["aes256gcm16-prfsha384-x25519"]).unwrap(),
        parse_esp_list(&[esp]).unwrap(),
    )
    .with_ts(vec![subnet(node, index)], vec![subnet(other, index)]);
    if t.cert {
        // The lower-numbered end holds the RSA certificate, the other the ECDSA one.
        let (mine, theirs) = if node < other {
            ("rsa", "ecdsa")
        } else {
            ("ecdsa", "rsa")
        };
        c.local_id = Identity::Fqdn(format!("{mine}.example.com"));
        c.remote_id = Identity::Fqdn(format!("{theirs}.example.com"));
        c.auth = AuthConfig::Certificate(certificate(mine));
    }
    if t.nat && node == t.b {
        // it cannot know the NAT's ports (nor follow a rebinding by configuration)
        c.remote_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 500);
    }
    c.role = role;
    c.child_lifetime = Lifetime::from_rekey(secs(t.child_rekey));
    c.ike_lifetime = Lifetime::from_rekey(secs(t.ike_rekey));
    c.dpd = t.dpd.map(|(i, o)| Dpd {
        interval: secs(i),
        timeout: secs(o),
    });
    c
}

/// `leaf`'s certificate and key from `tests/data` (the ECDSA leaf with its intermediate),
/// trusting the test CA.
fn certificate(leaf: &str) -> CertificateAuth {
    let data = |name: &str| {
        std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let mut chain = data(&format!("{leaf}.pem"));
    if leaf == "ecdsa" {
        chain.extend(data("intermediate.pem"));
    }
    CertificateAuth::from_pem(&chain, &data(&format!("{leaf}.key")), &data("ca.pem")).unwrap()
}

/// A node's wall-clock time (Unix seconds) `since` the start, after steps back by `back` s.
fn wall_clock(since: Duration, back: u64) -> u64 {
    (WALL_CLOCK + since.as_secs()).saturating_sub(back)
}

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl World {
    /// Runs `sc` to the end and reports what did not hold:
    ///
    /// - while it runs: an inbound SPI is never installed twice on a node; no ESP key is used
    ///   by two SAs; only installed CHILD SAs are deleted; a tunnel has at most four CHILD SAs
    ///   and an endpoint a bounded number of IKE SAs; a new message ID is never below an
    ///   earlier one of the same IKE SA and direction; saved state always resumes; ESP keys of
    ///   the two ends agree;
    /// - once the network is clean and every tunnel had time to recover: every ESP packet finds
    ///   an outbound SA and, at the peer, its inbound SA (rekeys are make-before-break), a node
    ///   sends on two outbound SAs of a tunnel for at most [`OUTBOUND_GRACE`], and no SA reaches
    ///   its hard lifetime;
    /// - at the end: every tunnel has one IKE SA and one CHILD SA on each end, their SPIs and
    ///   keys match, and nothing else is left in either kernel.
    ///
    /// A panic in the endpoint propagates (the caller catches it).
    pub fn run(sc: &Scenario) -> Outcome {
        let t0 = Instant::now();
        let child_max = sc.longest_child_rekey();
        let faults_end = t0 + secs(sc.fault_secs);
        let settle_at = faults_end + secs(child_max * 11 / 10 + 200);
        let check_at = settle_at + secs(child_max * 5 / 2);
        let mut events = sc.events.clone();
        events.sort_by_key(|e| (e.at, e.endpoint));
        let mut w = World {
            net_rng: SimRng::new(sc.seed),
            t0,
            now: t0,
            nodes: (0..sc.endpoints)
                .map(|n| Node {
                    ep: None,
                    generation: 0,
                    back_at: None,
                    crashed: false,
                    clock_back: 0,
                    paused: false,
                    inbox: Vec::new(),
                    drivers: BTreeMap::new(),
                    kernel: Kernel::default(),
                    spis: Arc::new(Mutex::new(SpiPool {
                        rng: SimRng::new(sc.seed ^ (n as u64 + 1).wrapping_mul(0x1234_5678_9abc)),
                        used: HashSet::new(),
                    })),
                    timeout: None,
                })
                .collect(),
            addr_of: HashMap::new(),
            nat_offset: BTreeMap::new(),
            net: BTreeMap::new(),
            seq: 0,
            traffic_at: t0 + Duration::from_millis(sc.traffic_ms),
            next_event: 0,
            events,
            phase: Phase::Faults,
            settle_at,
            check_at,
            give_up_at: check_at + secs(5),
            keys: HashMap::new(),
            msgids: HashMap::new(),
            violations: Vec::new(),
            cov: Coverage {
                runs: 1,
                ..Coverage::default()
            },
            trace: 0xcbf2_9ce4_8422_2325,
            trace_events: std::env::var_os("STRAIT_SIM_TRACE").is_some(),
            two_outbound: HashMap::new(),
            sc: sc.clone(),
        };
        for (i, t) in sc.tunnels.iter().enumerate() {
            w.addr_of.insert(addr(t.a, i).ip(), (t.a, i));
            w.addr_of.insert(addr(t.b, i).ip(), (t.b, i));
            if t.nat {
                w.nat_offset.insert(i, 1000);
            }
            for (node, role) in [(t.a, t.role_a), (t.b, t.role_b)] {
                w.nodes[node].drivers.insert(
                    i,
                    Driver {
                        role,
                        peer: None,
                        current: None,
                        up: Vec::new(),
                        retry_at: None,
                        backoff: RETRY_MIN,
                        last_acquire: None,
                    },
                );
            }
        }
        for n in 0..sc.endpoints {
            w.start_process(n, None);
        }
        w.main_loop(faults_end);
        Outcome {
            violations: w.violations,
            coverage: w.cov,
            trace: w.trace,
        }
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            let at = self.now - self.t0;
            self.violations
                .push(format!("at {:.3} s: {what}", at.as_secs_f64()));
        }
    }

    fn main_loop(&mut self, faults_end: Instant) {
        loop {
            let Some((at, step)) = self.next_step() else {
                return;
            };
            self.now = at.max(self.now);
            if self.phase == Phase::Faults && self.now >= faults_end {
                self.phase = Phase::Converging;
            }
            match step {
                Step::Process(i) => self.process_event(i),
                Step::Back(n) => self.come_back(n),
                Step::Deliver => self.deliver(),
                Step::Timeout(n) => {
                    if let Some(ep) = self.nodes[n].ep.as_mut() {
                        ep.handle_timeout(self.now);
                    }
                    self.flush(n);
                }
                Step::Soft(n, spi) => self.soft_expiry(n, spi),
                Step::Hard(n, spi) => self.hard_expiry(n, spi),
                Step::Sweep(n) => {
                    let k = &mut self.nodes[n].kernel;
                    k.sweep_at = None;
                    k.sas.retain(|_, s| s.child.is_some());
                }
                Step::Retry(n, t) => self.retry(n, t),
                Step::Traffic => self.traffic(),
                Step::Settle => self.phase = Phase::Settled,
                Step::Check => {
                    self.phase = Phase::Final;
                    if self.final_state(false) || self.now >= self.give_up_at {
                        self.final_state(true);
                        for node in &self.nodes {
                            if let Some(ep) = &node.ep {
                                self.cov.retransmits += ep.stats().retransmits_sent;
                            }
                        }
                        return;
                    }
                    self.check_at = self.now + Duration::from_millis(100);
                }
            }
        }
    }

    /// The earliest thing due, ties in a fixed order.
    fn next_step(&self) -> Option<(Instant, Step)> {
        let mut best: Option<(Instant, Step)> = None;
        let mut offer = |at: Instant, s: Step| {
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, s));
            }
        };
        if let Some(e) = self.events.get(self.next_event) {
            offer(self.t0 + secs(e.at), Step::Process(self.next_event));
        }
        for (n, node) in self.nodes.iter().enumerate() {
            if let Some((at, _)) = &node.back_at {
                offer(*at, Step::Back(n));
            }
        }
        if let Some(((at, _), _)) = self.net.first_key_value() {
            offer(*at, Step::Deliver);
        }
        for (n, node) in self.nodes.iter().enumerate() {
            if let (Some(at), Some(_), false) = (node.timeout, &node.ep, node.paused) {
                offer(at, Step::Timeout(n));
            }
            for (spi, sa) in &node.kernel.sas {
                if let Some(at) = sa.soft_at {
                    offer(at, Step::Soft(n, *spi));
                }
                offer(sa.hard_at, Step::Hard(n, *spi));
            }
            if let Some(at) = node.kernel.sweep_at {
                offer(at, Step::Sweep(n));
            }
            for (t, d) in &node.drivers {
                if let (Some(at), false) = (d.retry_at, node.paused) {
                    offer(at, Step::Retry(n, *t));
                }
            }
        }
        if self.phase != Phase::Final {
            offer(self.traffic_at, Step::Traffic);
        }
        if matches!(self.phase, Phase::Faults | Phase::Converging) {
            offer(self.settle_at, Step::Settle);
        }
        offer(self.check_at, Step::Check);
        best
    }

    /// Starts node `n`'s agent process, empty or resuming `saved`.
    fn start_process(&mut self, n: usize, saved: Option<BTreeMap<usize, Vec<u8>>>) {
        let node = &mut self.nodes[n];
        node.generation += 1;
        let config = EndpointConfig {
            retransmit: RetransmitConfig {
                timeout: secs(1),
                base: 1.5,
                tries: 3,
            },
            fragmentation: true,
            fragment_size: if self.sc.mtu == 0 {
                1280
            } else {
                usize::from(self.sc.mtu)
            },
            nat_keepalive: Some(secs(20)),
            // every other node also emits the success-path and per-drop diagnostics
            diagnostics: n % 2 == 1,
            ..EndpointConfig::default()
        };
        let seed = self.sc.seed ^ ((n as u64) << 48) ^ (node.generation << 32);
        let mut ep = Endpoint::new(config, Box::new(DeterministicRng::new(seed)));
        ep.set_wall_clock(self.now, wall_clock(self.now - self.t0, node.clock_back));
        ep.set_spi_source(Box::new(NodeSpis(Arc::clone(&node.spis))));
        for (i, d) in node.drivers.iter_mut() {
            let cfg = peer_config(&self.sc.tunnels[*i], *i, n);
            d.peer = Some(
                ep.add_peer(cfg)
                    .expect("a simulated tunnel's configuration is valid"),
            );
            d.current = None;
            d.up.clear();
            d.retry_at = None;
            d.backoff = RETRY_MIN;
            d.last_acquire = None;
        }
        node.ep = Some(ep);
        node.crashed = false;
        if let Some(saved) = saved {
            self.cov.restarts += 1;
            for (i, bytes) in saved {
                let peer = self.nodes[n].drivers[&i].peer.unwrap();
                let ep = self.nodes[n].ep.as_mut().unwrap();
                if let Err(e) = ep.resume(self.now, peer, &bytes) {
                    self.violation(format!("e{n} could not resume tunnel {i}: {e}"));
                }
                self.flush(n);
            }
            let k = &mut self.nodes[n].kernel;
            if k.sas.values().any(|s| s.child.is_none()) {
                k.sweep_at = Some(self.now + ADOPT_MAX);
            }
            self.maybe_sweep_soon(n);
        }
        let start: Vec<(usize, PeerId)> = self.nodes[n]
            .drivers
            .iter()
            .filter(|(_, d)| d.role == Role::Start && d.current.is_none())
            .map(|(i, d)| (*i, d.peer.unwrap()))
            .collect();
        for (_, peer) in start {
            self.nodes[n].ep.as_mut().unwrap().initiate(self.now, peer);
            self.flush(n);
        }
    }

    fn process_event(&mut self, i: usize) {
        self.next_event += 1;
        let e = self.events[i];
        let node = &mut self.nodes[e.endpoint];
        if node.ep.is_none() || node.paused {
            return;
        }
        let back = self.now + secs(e.down);
        match e.kind {
            Kind::ClockBack => {
                self.cov.clock_steps += 1;
                node.clock_back += e.down * 3600;
                let at = wall_clock(self.now - self.t0, node.clock_back);
                node.ep.as_mut().unwrap().set_wall_clock(self.now, at);
            }
            Kind::Reauth => {
                let n = e.endpoint;
                let tunnels: Vec<(usize, PeerId)> = node
                    .drivers
                    .iter()
                    .map(|(t, d)| (*t, d.peer.unwrap()))
                    .collect();
                for (t, peer) in tunnels {
                    let cfg = peer_config(&self.sc.tunnels[t], t, n);
                    let ep = self.nodes[n].ep.as_mut().unwrap();
                    match ep.reauthenticate(self.now, peer, cfg) {
                        Ok(started) => self.cov.reauths += u64::from(started),
                        Err(err) => {
                            self.violation(format!("e{n} could not reauthenticate {t}: {err}"))
                        }
                    }
                    self.flush(n);
                }
            }
            Kind::Rebind => {
                for (i, off) in self.nat_offset.iter_mut() {
                    if self.sc.tunnels[*i].a == e.endpoint {
                        self.cov.rebinds += 1;
                        *off = if *off >= 50_000 { 1000 } else { *off + 1000 };
                    }
                }
            }
            Kind::Pause => {
                self.cov.pauses += 1;
                node.paused = true;
                node.back_at = Some((back, Comeback::Pause));
            }
            Kind::Crash => {
                self.cov.crashes += 1;
                let ep = node.ep.take().unwrap();
                self.cov.retransmits += ep.stats().retransmits_sent;
                node.crashed = true;
                node.kernel.sas.clear();
                node.kernel.sweep_at = None;
                node.back_at = Some((back, Comeback::Crash));
            }
            Kind::Restart => {
                let ep = node.ep.take().unwrap();
                self.cov.retransmits += ep.stats().retransmits_sent;
                let mut saved = BTreeMap::new();
                let mut failed = Vec::new();
                for (t, d) in &node.drivers {
                    match ep.save(self.now, d.peer.unwrap()) {
                        Ok(s) => {
                            saved.insert(*t, s.as_bytes().to_vec());
                        }
                        Err(err) => {
                            failed.push(format!("e{} could not save tunnel {t}: {err}", e.endpoint))
                        }
                    }
                }
                // The process is gone: what it held back from the kernel is lost with it.
                for sa in node.kernel.sas.values_mut() {
                    sa.child = None;
                    if matches!(sa.out, Outbound::After(_)) {
                        sa.out = Outbound::Never;
                    }
                }
                node.back_at = Some((back, Comeback::Restart(saved)));
                for f in failed {
                    self.violation(f);
                }
            }
        }
    }

    fn come_back(&mut self, n: usize) {
        let Some((_, how)) = self.nodes[n].back_at.take() else {
            return;
        };
        match how {
            Comeback::Pause => {
                self.nodes[n].paused = false;
                for m in core::mem::take(&mut self.nodes[n].inbox) {
                    let Some(ep) = self.nodes[n].ep.as_mut() else {
                        return;
                    };
                    match m {
                        Inbox::Ike { to, from, payload } => ep.handle(self.now, to, from, &payload),
                        Inbox::Expire { peer, spi, hard } => {
                            ep.expire_child(self.now, peer, EspSpi(spi.to_be_bytes()), hard);
                        }
                    }
                    self.flush(n);
                }
                self.flush(n);
            }
            Comeback::Crash => self.start_process(n, None),
            Comeback::Restart(saved) => self.start_process(n, Some(saved)),
        }
    }

    /// After every input to node `n`'s endpoint: events, then datagrams, then its next timeout.
    fn flush(&mut self, n: usize) {
        loop {
            let mut events = Vec::new();
            let Some(ep) = self.nodes[n].ep.as_mut() else {
                return;
            };
            while let Some(e) = ep.poll_event() {
                events.push(e);
            }
            if events.is_empty() {
                break;
            }
            for e in events {
                self.apply(n, e);
            }
        }
        let node = &mut self.nodes[n];
        let ep = node.ep.as_mut().unwrap();
        let mut out = Vec::new();
        while let Some(t) = ep.poll_transmit() {
            out.push(t);
        }
        let timeout = ep.poll_timeout();
        let ike = ep.ike_sa_count() as u64;
        let children: Vec<(usize, usize)> = node
            .drivers
            .iter()
            .map(|(i, d)| (*i, ep.children(d.peer.unwrap()).len()))
            .collect();
        self.nodes[n].timeout = timeout;
        self.cov.max_ike_sas = self.cov.max_ike_sas.max(ike);
        let bound = 12 * self.nodes[n].drivers.len() as u64 + 5;
        if ike > bound {
            self.violation(format!("e{n} holds {ike} IKE SAs (bound {bound})"));
        }
        for (i, c) in children {
            self.cov.max_children = self.cov.max_children.max(c as u64);
            // Each IKE SA holds a CHILD SA, its rekey and a collision's redundant one at most.
            // (A responder without DPD may hold several IKE SAs a while: an initiator that
            // never got the IKE_AUTH answer gives up on its SA without a word.)
            if c <= 4 {
                continue;
            }
            let peer = self.nodes[n].drivers[&i].peer.unwrap();
            let ep = self.nodes[n].ep.as_ref().unwrap();
            let ike = ep.save(self.now, peer).map_or(0, |s| s.ike_sas());
            if c > 3 * ike {
                self.violation(format!(
                    "e{n} holds {c} CHILD SAs for tunnel {i}, on {ike} IKE SAs"
                ));
            }
        }
        for t in out {
            if t.payload == [NAT_KEEPALIVE] {
                self.cov.keepalives += 1;
            } else {
                let ike = if t.non_esp_marker {
                    &t.payload[4..]
                } else {
                    &t.payload[..]
                };
                self.check_message_id(n, ike);
            }
            self.send(Datagram {
                from: t.local,
                to: t.remote,
                payload: Payload::Ike(t.payload),
            });
        }
    }

    fn check_message_id(&mut self, n: usize, payload: &[u8]) {
        let Ok(w) = Header::peek(payload) else {
            self.violation(format!("e{n} sent a datagram that is not IKE"));
            return;
        };
        if w.next_payload == PayloadType::SKF {
            self.cov.fragments += 1;
        }
        let h = w.header;
        let response = h.flags.0 & Flags::RESPONSE.0 != 0;
        let key = (n, h.initiator_spi.0, h.responder_spi.0, response);
        let (max, seen) = self.msgids.entry(key).or_default();
        let id = h.message_id;
        let backwards = !seen.is_empty() && id < *max && !seen.contains(&id);
        seen.insert(id);
        *max = (*max).max(id);
        if backwards {
            let what = if response { "response" } else { "request" };
            self.violation(format!(
                "e{n} sent a new {what} with message ID {id}, below {max} already sent",
                max = self.msgids[&key].0
            ));
        }
    }

    fn send(&mut self, d: Datagram) {
        let Some(d) = self.nat_outbound(d) else {
            return;
        };
        self.cov.datagrams += 1;
        if let Payload::Ike(p) = &d.payload
            && self.sc.mtu != 0
            && p.len() + 28 > usize::from(self.sc.mtu)
        {
            // too big for the path: gone, as a router would drop it (no PMTU discovery for UDP)
            self.cov.too_big += 1;
            return;
        }
        let since = (self.now - self.t0).as_millis() as u64;
        self.trace = fnv(self.trace, &since.to_be_bytes());
        self.trace = fnv(self.trace, d.to.to_string().as_bytes());
        if let Payload::Ike(p) = &d.payload {
            // The header without its length: an ECDSA signature's length and bytes vary from
            // run to run (its nonce is not ours to draw), nothing else does.
            let ike = p.strip_prefix(&[0u8; 4][..]).unwrap_or(p);
            self.trace = fnv(self.trace, ike.get(..24).unwrap_or(ike));
        }
        let faulty = self.phase == Phase::Faults;
        let copies = if faulty && self.net_rng.chance(self.sc.loss_pct) {
            self.cov.lost += 1;
            0
        } else if faulty && self.net_rng.chance(self.sc.dup_pct) {
            self.cov.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if faulty && self.sc.jitter_ms > 0 {
                Duration::from_millis(self.net_rng.below(self.sc.jitter_ms))
            } else {
                Duration::ZERO
            };
            self.seq += 1;
            self.net
                .insert((self.now + DELAY + jitter, self.seq), d.clone());
        }
    }

    /// A datagram leaving the inside end of a NAT tunnel gets the NAT's address and port;
    /// plain ESP (no port) cannot pass.
    fn nat_outbound(&mut self, mut d: Datagram) -> Option<Datagram> {
        let &(n, i) = self.addr_of.get(&d.from.ip())?;
        let Some(offset) = self.nat_offset.get(&i) else {
            return Some(d);
        };
        if n != self.sc.tunnels[i].a {
            return Some(d);
        }
        if d.from.port() == 0 {
            self.cov.nat_dropped += 1;
            return None;
        }
        d.from = SocketAddr::new(public_ip(i), d.from.port() + offset);
        Some(d)
    }

    /// A datagram to a NAT's address goes to its inside end if it matches the current
    /// mapping; one for an old mapping is dropped.
    fn nat_inbound(&mut self, mut d: Datagram) -> Option<Datagram> {
        let Some((&i, &offset)) = self
            .nat_offset
            .iter()
            .find(|(i, _)| public_ip(**i) == d.to.ip())
        else {
            return Some(d);
        };
        let inside = d.to.port().checked_sub(offset);
        match inside {
            Some(port @ (500 | 4500)) => {
                d.to = SocketAddr::new(addr(self.sc.tunnels[i].a, i).ip(), port);
                Some(d)
            }
            _ => {
                self.cov.nat_dropped += 1;
                None
            }
        }
    }

    /// The kernel reports ESP in UDP of `spi` from a new address (`XFRM_MSG_MAPPING`).
    fn esp_mapping(&mut self, n: usize, tunnel: usize, owned: bool, spi: u32, from: SocketAddr) {
        let node = &mut self.nodes[n];
        let peer = node.drivers[&tunnel].peer.unwrap();
        if !owned || node.paused {
            return;
        }
        if let Some(ep) = node.ep.as_mut() {
            self.cov.esp_mappings += 1;
            ep.esp_mapping(self.now, peer, EspSpi(spi.to_be_bytes()), from);
            self.flush(n);
        }
    }

    fn deliver(&mut self) {
        let Some((_, d)) = self.net.pop_first() else {
            return;
        };
        let Some(d) = self.nat_inbound(d) else {
            return;
        };
        let Some(&(n, tunnel)) = self.addr_of.get(&d.to.ip()) else {
            return;
        };
        match d.payload {
            Payload::Ike(p) => {
                let node = &mut self.nodes[n];
                if node.paused {
                    let queued = node
                        .inbox
                        .iter()
                        .filter(|m| matches!(m, Inbox::Ike { .. }))
                        .count();
                    if queued < SOCKET_BUFFER {
                        node.inbox.push(Inbox::Ike {
                            to: d.to,
                            from: d.from,
                            payload: p,
                        });
                    }
                } else if let Some(ep) = node.ep.as_mut() {
                    ep.handle(self.now, d.to, d.from, &p);
                    self.flush(n);
                }
            }
            Payload::Esp {
                spi,
                key,
                tunnel: t,
            } => {
                debug_assert_eq!(t, tunnel);
                match self.nodes[n].kernel.sas.get_mut(&spi) {
                    Some(sa) if sa.tunnel == tunnel && sa.key_in == key => {
                        self.cov.esp_ok += 1;
                        // ESP in UDP from a new address: the peer's NAT moved it
                        let moved = sa.local.port() != 0
                            && d.from != sa.remote
                            && sa.mapped != Some(d.from);
                        if moved {
                            sa.mapped = Some(d.from);
                            let owned = sa.child.is_some();
                            self.esp_mapping(n, tunnel, owned, spi, d.from);
                        }
                    }
                    Some(_) => self.violation(format!(
                        "e{n} took an ESP packet of tunnel {tunnel} on SPI {spi:08x} with other keys"
                    )),
                    None => {
                        self.cov.esp_no_sa += 1;
                        if self.phase == Phase::Settled {
                            self.violation(format!(
                                "e{n} has no inbound SA {spi:08x} for an ESP packet of tunnel {tunnel}"
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Every tunnel's two ends send one ESP packet each.
    fn traffic(&mut self) {
        self.traffic_at = self.now + Duration::from_millis(self.sc.traffic_ms);
        for i in 0..self.sc.tunnels.len() {
            let t = self.sc.tunnels[i].clone();
            for n in [t.a, t.b] {
                if self.nodes[n].crashed {
                    continue;
                }
                self.check_outbound_count(n, i);
                match self.nodes[n].kernel.outbound(i) {
                    Some(sa) => {
                        let d = Datagram {
                            from: sa.local,
                            to: sa.remote,
                            payload: Payload::Esp {
                                spi: sa.spi_out,
                                key: sa.key_out.clone(),
                                tunnel: i,
                            },
                        };
                        self.send(d);
                    }
                    None => {
                        self.cov.esp_no_sa += 1;
                        if self.phase == Phase::Settled {
                            self.violation(format!("e{n} has no outbound SA for tunnel {i}"));
                        }
                        self.acquire(n, i);
                    }
                }
            }
        }
    }

    /// More than one outbound SA per tunnel only for the make-before-break grace.
    fn check_outbound_count(&mut self, n: usize, i: usize) {
        let count = self.nodes[n]
            .kernel
            .sas
            .values()
            .filter(|s| s.tunnel == i && s.out == Outbound::Now)
            .count();
        if count < 2 {
            self.two_outbound.remove(&(n, i));
            return;
        }
        let since = *self.two_outbound.entry((n, i)).or_insert(self.now);
        if self.phase == Phase::Settled && self.now - since > OUTBOUND_GRACE {
            self.violation(format!(
                "e{n} has had {count} outbound SAs for tunnel {i} since {:.3} s",
                (since - self.t0).as_secs_f64()
            ));
            self.two_outbound.insert((n, i), self.now);
        }
    }

    /// The kernel's trap policy saw traffic without an SA.
    fn acquire(&mut self, n: usize, i: usize) {
        let now = self.now;
        let d = self.nodes[n].drivers.get_mut(&i).unwrap();
        if d.role != Role::OnTraffic || d.last_acquire.is_some_and(|at| now - at < ACQUIRE_EVERY) {
            return;
        }
        d.last_acquire = Some(now);
        let peer = d.peer.unwrap();
        if self.nodes[n].paused {
            return;
        }
        if let Some(ep) = self.nodes[n].ep.as_mut() {
            self.cov.acquires += 1;
            ep.acquire(now, peer);
            self.flush(n);
        }
    }

    fn retry(&mut self, n: usize, i: usize) {
        let d = self.nodes[n].drivers.get_mut(&i).unwrap();
        d.retry_at = None;
        if d.current.is_some() {
            return;
        }
        let peer = d.peer.unwrap();
        if let Some(ep) = self.nodes[n].ep.as_mut() {
            self.cov.retries += 1;
            ep.initiate(self.now, peer);
            self.flush(n);
        }
    }

    fn soft_expiry(&mut self, n: usize, spi: u32) {
        let Some(sa) = self.nodes[n].kernel.sas.get_mut(&spi) else {
            return;
        };
        sa.soft_at = None;
        let (tunnel, owned) = (sa.tunnel, sa.child.is_some());
        let peer = self.nodes[n].drivers[&tunnel].peer.unwrap();
        self.expire(n, owned, peer, spi, false);
    }

    fn hard_expiry(&mut self, n: usize, spi: u32) {
        let Some(sa) = self.nodes[n].kernel.sas.remove(&spi) else {
            return;
        };
        self.nodes[n].kernel.expired.insert(spi);
        self.cov.hard_expiries += 1;
        if self.phase == Phase::Settled {
            self.violation(format!(
                "e{n}'s SA {spi:08x} of tunnel {} reached its hard lifetime",
                sa.tunnel
            ));
        }
        let peer = self.nodes[n].drivers[&sa.tunnel].peer.unwrap();
        self.expire(n, sa.child.is_some(), peer, spi, true);
    }

    /// The kernel tells the agent of an expiry of one of its SAs (`owned`: of this process's).
    fn expire(&mut self, n: usize, owned: bool, peer: PeerId, spi: u32, hard: bool) {
        let node = &mut self.nodes[n];
        if !owned {
            return;
        }
        if node.paused {
            node.inbox.push(Inbox::Expire { peer, spi, hard });
            return;
        }
        if let Some(ep) = node.ep.as_mut() {
            ep.expire_child(self.now, peer, EspSpi(spi.to_be_bytes()), hard);
            self.flush(n);
        }
    }

    fn tunnel_of(&self, n: usize, peer: PeerId) -> usize {
        *self.nodes[n]
            .drivers
            .iter()
            .find(|(_, d)| d.peer == Some(peer))
            .expect("events name configured tunnels")
            .0
    }

    fn apply(&mut self, n: usize, e: Event) {
        let now = self.now;
        if self.trace_events {
            let what = match &e {
                Event::ChildSaInstall(sa) => format!(
                    "install {:?}/{:?} replaces={:?} initiator={} redundant={}",
                    sa.spi_in, sa.spi_out, sa.replaces, sa.initiator, sa.redundant
                ),
                Event::ChildSaResumed(sa) => format!("resumed {:?}/{:?}", sa.spi_in, sa.spi_out),
                other => format!("{other:?}"),
            };
            println!("{:10.3} e{n}: {what}", (now - self.t0).as_secs_f64());
        }
        match e {
            // rendered, so every schedule also proves the log text cannot panic
            Event::Diagnostic(d) => {
                let _ = d.to_string();
            }
            Event::ChildSaInstall(sa) => self.install(n, &sa),
            Event::ChildSaDelete {
                peer,
                child,
                spi_in,
                ..
            } => {
                let spi = u32::from_be_bytes(spi_in.0);
                let k = &mut self.nodes[n].kernel;
                match k.sas.get(&spi) {
                    Some(sa) if sa.child == Some(child) => {
                        k.sas.remove(&spi);
                        for s in k.sas.values_mut() {
                            if s.out == Outbound::After(child) {
                                s.out = Outbound::Now;
                            }
                        }
                    }
                    // a previous process's SA this one could not take back: the agent leaves
                    // it to the sweep
                    Some(sa) if sa.child.is_none() => {}
                    Some(_) => {
                        let t = self.tunnel_of(n, peer);
                        self.violation(format!(
                            "e{n} deleted SA {spi:08x} of tunnel {t} under another CHILD SA's id"
                        ));
                    }
                    None if k.ever.contains(&spi) => {}
                    None => {
                        let t = self.tunnel_of(n, peer);
                        self.violation(format!(
                            "e{n} deleted CHILD SA {spi:08x} of tunnel {t}, never installed"
                        ));
                    }
                }
            }
            Event::ChildSaFailed { .. } => self.cov.child_failed += 1,
            Event::IkeSaUp {
                peer,
                spis,
                resumed,
                ..
            } => {
                let t = self.tunnel_of(n, peer);
                let d = self.nodes[n].drivers.get_mut(&t).unwrap();
                d.current = Some(spis);
                d.up.push(spis);
                d.retry_at = None;
                d.backoff = RETRY_MIN;
                if resumed {
                    self.cov.ike_resumed += 1;
                } else {
                    self.cov.ike_up += 1;
                }
            }
            Event::IkeSaDown { peer, spis, reason } => {
                match reason {
                    Reason::PeerUnreachable => self.cov.down_unreachable += 1,
                    Reason::DeletedByPeer => self.cov.down_by_peer += 1,
                    _ => self.cov.down_other += 1,
                }
                let t = self.tunnel_of(n, peer);
                let d = self.nodes[n].drivers.get_mut(&t).unwrap();
                d.up.retain(|s| *s != spis);
                if d.current.is_some_and(|c| c != spis) || reason == Reason::Replaced {
                    return;
                }
                // Another IKE SA of the tunnel is up: it carries on (the agent's driver too).
                d.current = d.up.last().copied();
                if d.current.is_some() {
                    return;
                }
                if d.role == Role::Start && reason != Reason::DeletedLocally {
                    d.retry_at = Some(now + d.backoff);
                    d.backoff = (d.backoff * 2).min(RETRY_MAX);
                }
            }
            Event::ChildSaResumed(sa) => {
                self.cov.children_resumed += 1;
                let spi = u32::from_be_bytes(sa.spi_in.0);
                let t = self.tunnel_of(n, sa.peer);
                let k = &mut self.nodes[n].kernel;
                let kept = match k.sas.get_mut(&spi) {
                    Some(s)
                        if s.tunnel == t
                            && s.child.is_none()
                            && s.out == Outbound::Now
                            && s.spi_out == u32::from_be_bytes(sa.spi_out.0) =>
                    {
                        s.child = Some(sa.child);
                        true
                    }
                    _ => false,
                };
                if !kept {
                    self.cov.resumed_not_in_kernel += 1;
                    if let Some(ep) = self.nodes[n].ep.as_mut() {
                        ep.child_install_failed(now, sa.peer, sa.child);
                    }
                }
            }
            Event::IkeSaRekeyed { peer, old, new, .. } => {
                self.cov.ike_rekeys += 1;
                let t = self.tunnel_of(n, peer);
                let d = self.nodes[n].drivers.get_mut(&t).unwrap();
                for s in d.up.iter_mut().filter(|s| **s == old) {
                    *s = new;
                }
                if d.current == Some(old) {
                    d.current = Some(new);
                }
            }
        }
    }

    fn install(&mut self, n: usize, sa: &ChildSaInstall) {
        let t = self.tunnel_of(n, sa.peer);
        let spi_in = u32::from_be_bytes(sa.spi_in.0);
        let spi_out = u32::from_be_bytes(sa.spi_out.0);
        self.cov.child_installs += 1;
        if sa.replaces.is_some() {
            self.cov.child_rekeys += 1;
        }
        if sa.redundant {
            self.cov.rekey_collisions += 1;
        }
        if self.nodes[n].kernel.sas.contains_key(&spi_in) {
            self.violation(format!(
                "e{n} installed inbound SPI {spi_in:08x} of tunnel {t} again"
            ));
            return;
        }
        if !self.nodes[n].kernel.ever.insert(spi_in) {
            self.violation(format!(
                "e{n} reused inbound SPI {spi_in:08x} for tunnel {t}"
            ));
        }
        let tunnel = &self.sc.tunnels[t];
        let other = if n == tunnel.a { tunnel.b } else { tunnel.a };
        let key_in = sa.keys.encr_in.as_bytes().to_vec();
        let key_out = sa.keys.encr_out.as_bytes().to_vec();
        for (key, owner) in [
            (key_in.clone(), (n, spi_in)),
            (key_out.clone(), (other, spi_out)),
        ] {
            let prior = *self.keys.entry(key).or_insert(owner);
            if prior != owner {
                self.violation(format!(
                    "e{n}'s CHILD SA {spi_in:08x} of tunnel {t} has a key already used by SA {:08x} on e{}",
                    prior.1, prior.0
                ));
            }
        }
        let out = match (sa.redundant, sa.replaces) {
            (true, _) => Outbound::Never,
            (false, Some(old)) if !sa.initiator => Outbound::After(old),
            _ => Outbound::Now,
        };
        let (local, remote) = match sa.encapsulation {
            Some(e) => (
                SocketAddr::new(sa.local_addr.ip(), e.local_port),
                SocketAddr::new(sa.remote_addr.ip(), e.remote_port),
            ),
            None => (
                SocketAddr::new(sa.local_addr.ip(), 0),
                SocketAddr::new(sa.remote_addr.ip(), 0),
            ),
        };
        if sa.encapsulation.is_some() {
            self.cov.encapsulated += 1;
        }
        let k = &mut self.nodes[n].kernel;
        k.seq += 1;
        k.sas.insert(
            spi_in,
            KernelSa {
                tunnel: t,
                child: Some(sa.child),
                spi_out,
                key_in,
                key_out,
                out,
                local,
                remote,
                mapped: None,
                seq: k.seq,
                soft_at: Some(self.now + sa.lifetimes.soft),
                hard_at: self.now + sa.lifetimes.hard,
            },
        );
        self.maybe_sweep_soon(n);
    }

    /// Once every tunnel of node `n` sends on an SA of this process, the previous process's
    /// SAs go shortly after.
    fn maybe_sweep_soon(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let Some(at) = node.kernel.sweep_at else {
            return;
        };
        let all = node.drivers.keys().all(|t| {
            node.kernel
                .sas
                .values()
                .any(|s| s.tunnel == *t && s.child.is_some() && s.out == Outbound::Now)
        });
        if all {
            node.kernel.sweep_at = Some(at.min(self.now + ADOPT_SETTLE));
        }
    }

    /// Whether every tunnel is in its final state; with `report`, says what is not.
    fn final_state(&mut self, report: bool) -> bool {
        let mut problems = Vec::new();
        for (i, t) in self.sc.tunnels.iter().enumerate() {
            let mut ends = Vec::new();
            for n in [t.a, t.b] {
                let node = &self.nodes[n];
                let Some(ep) = node.ep.as_ref() else {
                    problems.push(format!("e{n} is not running"));
                    continue;
                };
                let peer = node.drivers[&i].peer.unwrap();
                let children = ep.children(peer).len();
                let ike = ep.save(self.now, peer).map(|s| s.ike_sas()).unwrap_or(0);
                let sas: Vec<(u32, &KernelSa)> = node
                    .kernel
                    .sas
                    .iter()
                    .filter(|(_, s)| s.tunnel == i)
                    .map(|(spi, s)| (*spi, s))
                    .collect();
                if ike != 1 || children != 1 || sas.len() != 1 {
                    problems.push(format!(
                        "tunnel {i} on e{n}: {ike} IKE SAs, {children} CHILD SAs, {} kernel SAs",
                        sas.len()
                    ));
                }
                if let [one] = sas[..] {
                    ends.push(one);
                }
            }
            if let [(a_in, a), (b_in, b)] = ends[..] {
                if a.spi_out != b_in
                    || b.spi_out != a_in
                    || a.key_out != b.key_in
                    || b.key_out != a.key_in
                {
                    problems.push(format!("tunnel {i}: the two ends' SAs do not match"));
                }
                if a.out != Outbound::Now || b.out != Outbound::Now {
                    problems.push(format!("tunnel {i}: an end does not send"));
                }
            }
        }
        let ok = problems.is_empty();
        if report {
            // Always reported, however many violations came before.
            let at = (self.now - self.t0).as_secs_f64();
            self.violations.extend(
                problems
                    .into_iter()
                    .map(|p| format!("at the end ({at:.3} s): {p}")),
            );
        }
        ok
    }
}
