//! `bench-ike-rate`: IKE SA setup rate and CPU per SA of a strait-agent responder against a
//! strongSwan charon responder, under the same offered load, in one run (issue #7, benchmark 1).
//!
//! One load generator — our own sans-IO [`strait_ike::Endpoint`], driven here over two wildcard
//! UDP sockets (ports 500 and 4500) — opens `--sas` IKE SAs, each with one ESP CHILD SA, PSK
//! authenticated, keeping at most `--window` handshakes in flight. Each SA comes from its own
//! source address (a `local` route makes all of 198.18.0.0/16, the RFC 2544 benchmarking range,
//! belong to the generator's namespace) and proves that address as its identity, so both
//! responders hold one independent IKE SA per address and replace none.
//!
//! The responders answer from their own namespace, one after the other, with the same DoS
//! settings (cookies once 30 IKE SAs are half-open, or 3 from one address: the agent's built-in
//! values) and the same proposals:
//! - `strait-agent standalone --dataplane none` (the host kernel has no ESP), one `IPsecTunnel`
//!   per generator address (the API has no wildcard peer);
//! - charon with `kernel-libipsec` (userspace ESP: it installs each CHILD SA in memory; routes
//!   are not installed), one connection accepting 198.18.0.0/16 and any identity.
//!
//! An SA counts as established when the generator has processed the IKE_AUTH response that
//! carries the CHILD SA. CPU is utime+stime from `/proc/<pid>/stat` (all threads of the
//! responder; the generator's own thread), memory the responder's VmRSS growth.
//!
//! ```text
//! bench-ike-rate [--sas N] [--mem-sas N] [--window N] [--proposal P]... [--short]
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use strait_e2e::cmd;
use strait_e2e::netns::{self, Topology};
use strait_e2e::strongswan::{
    self, Charon, CharonConfig, ChildConfig, Connection, Endpoint as SwanEndpoint, Plugins, Secret,
};
use strait_e2e::tunnel::{End, TunnelYaml};
use strait_ike::codec::TsRange;
use strait_ike::crypto::keys::SecretBytes;
use strait_ike::crypto::rng::DeterministicRng;
use strait_ike::proposal::{EspProposal, IkeProposal};
use strait_ike::{
    AuthConfig, Endpoint, EndpointConfig, Event, Identity, Lifetime, PeerConfig, PeerId, Role,
};

/// The pre-shared key of every SA. A bench value for namespaces on this machine only.
const PSK: &str = "strait-bench-psk-only-for-this-machine";
/// The responder's IKE address (its end of the veth).
const RESPONDER: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 2);
/// The generator's end of the veth: the responder's route to the source pool goes through it.
const GENERATOR_LINK: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
/// Source addresses of the SAs: `local` on the generator's side, routed on the responder's.
const POOL: &str = "198.18.0.0/16";
/// Inner addresses of the SAs (see [`inner`]); never routed.
const INNER_POOL: &str = "198.19.0.0/17";
/// The responder's protected subnet (traffic selector only; nothing is routed).
const PROTECTED: &str = "203.0.113.0/24";
/// Addresses per /24 of the pool (x.y.z.1 to x.y.z.254); also the SAs per generator endpoint.
const PER_SHARD: usize = 254;
/// The agent's built-in DoS thresholds (`EndpointConfig::default`), given to charon too.
const COOKIE_THRESHOLD: u32 = 30;
const COOKIE_THRESHOLD_IP: u32 = 3;
/// A run ends when no SA completed or failed for this long.
const STALL: Duration = Duration::from_secs(30);
const ESP_PROPOSAL: &str = "aes256gcm16";
const DEFAULT_PROPOSALS: [&str; 2] = ["aes256gcm16-prfsha256-x25519", "aes256-sha256-modp2048"];

#[derive(Debug, Clone)]
struct Args {
    sas: usize,
    mem_sas: usize,
    window: usize,
    proposals: Vec<String>,
    responders: Vec<Kind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Agent,
    Charon,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Agent => "strait-agent",
            Self::Charon => "charon",
        }
    }
}

const USAGE: &str = "usage: bench-ike-rate [--sas N] [--mem-sas N] [--window N] \
                     [--proposal P]... [--responder agent|charon] [--short]
  --sas N        SAs per proposal and responder (default 5000)
  --mem-sas N    SAs of the memory run (X25519 proposal; default 10000, 0 skips it)
  --window N     handshakes in flight at most (default 128)
  --proposal P   IKE proposal, repeatable (default: aes256gcm16-prfsha256-x25519 and
                 aes256-sha256-modp2048)
  --responder R  only this responder (default both)
  --short        200 SAs, the first proposal only, no memory run (for CI)";

fn parse_args() -> Result<Args> {
    let mut a = Args {
        sas: 5000,
        mem_sas: 10_000,
        window: 128,
        proposals: Vec::new(),
        responders: Vec::new(),
    };
    let mut short = false;
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, f: &str| -> Result<usize> {
        v.ok_or_else(|| anyhow!("{f} needs a value"))?
            .parse()
            .with_context(|| format!("{f}: not a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--sas" => a.sas = num(it.next(), "--sas")?,
            "--mem-sas" => a.mem_sas = num(it.next(), "--mem-sas")?,
            "--window" => a.window = num(it.next(), "--window")?,
            "--proposal" => a.proposals.push(
                it.next()
                    .ok_or_else(|| anyhow!("--proposal needs a value"))?,
            ),
            "--responder" => a.responders.push(match it.next().as_deref() {
                Some("agent" | "strait-agent") => Kind::Agent,
                Some("charon") => Kind::Charon,
                other => bail!("--responder: agent or charon, not {other:?}"),
            }),
            "--short" => short = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.proposals.is_empty() {
        a.proposals = DEFAULT_PROPOSALS.iter().map(|s| (*s).to_owned()).collect();
    }
    if a.responders.is_empty() {
        a.responders = vec![Kind::Agent, Kind::Charon];
    }
    if short {
        a.sas = 200;
        a.mem_sas = 0;
        a.proposals.truncate(1);
    }
    let max = PER_SHARD * 128; // the inner pool is a /17
    if a.sas == 0 || a.sas > max || a.mem_sas > max || a.window == 0 {
        bail!("--sas and --mem-sas must be 1..={max}, --window at least 1");
    }
    Ok(a)
}

/// The source address of SA `i`: 198.18.(i / 254).(i % 254 + 1).
fn source(i: usize) -> Ipv4Addr {
    let shard = u8::try_from(i / PER_SHARD).unwrap_or(u8::MAX);
    let host = u8::try_from(i % PER_SHARD + 1).unwrap_or(u8::MAX);
    Ipv4Addr::new(198, 18, shard, host)
}

/// The inner (traffic selector) address of SA `i`: 198.19.(i / 254).(i % 254 + 1). It differs
/// from the IKE address: charon's kernel-libipsec refuses a TS that covers the peer's IKE
/// address ("conflicts with IKE traffic").
fn inner(i: usize) -> Ipv4Addr {
    let [_, _, c, d] = source(i).octets();
    Ipv4Addr::new(198, 19, c, d)
}

// ---------------------------------------------------------------------------------------------
// /proc readings

/// utime + stime in seconds of a process (`/proc/<pid>/stat`) or thread (`thread-self`).
fn cpu_seconds(stat_path: &str, ticks: f64) -> Result<f64> {
    let s = fs::read_to_string(stat_path).with_context(|| format!("reading {stat_path}"))?;
    // fields after the parenthesised command name: state is field 3, utime 14, stime 15
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{stat_path}: no command field"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("{stat_path}: field {} unreadable", i + 3))
    };
    Ok((get(11)? + get(12)?) / ticks)
}

/// VmRSS of a process, in bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

fn clock_ticks() -> f64 {
    cmd::run("getconf", &["CLK_TCK"])
        .ok()
        .and_then(|o| o.stdout.trim().parse().ok())
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------------
// Responders

/// `strait-agent standalone` started directly (not through `strait_e2e::agent`, which logs at
/// debug level): info logging, as a production agent would run.
#[derive(Debug)]
struct AgentProc {
    dir: tempfile::TempDir,
    child: Option<Child>,
    bin: PathBuf,
}

impl AgentProc {
    fn tunnels_yaml(n: usize, proposal: &str) -> String {
        let mut s = String::with_capacity(n * 520);
        for i in 0..n {
            let (src, inner) = (source(i), inner(i));
            let tunnel = TunnelYaml::new(
                format!("gen-{i}"),
                End::new(RESPONDER.to_string(), RESPONDER, PROTECTED),
                End::new(src.to_string(), src, format!("{inner}/32")),
            )
            .psk("bench-psk")
            .proposals(proposal, ESP_PROPOSAL)
            .dpd("24h", "24h")
            .initiation("respond");
            let _ = write!(s, "---\n{}", tunnel.render());
        }
        s
    }

    fn start(ns: &str, n: usize, proposal: &str) -> Result<Self> {
        let bin = strait_e2e::product::binary("strait-agent")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("strait-bench-agent-{}-", std::process::id()))
            .tempdir()?;
        let root = dir.path();
        fs::write(root.join("tunnels.yaml"), Self::tunnels_yaml(n, proposal))?;
        fs::create_dir_all(root.join("secrets/bench-psk"))?;
        fs::write(root.join("secrets/bench-psk/psk"), PSK)?;
        let log = fs::File::create(root.join("agent.log"))?;
        let args = strait_e2e::agent::standalone_args(&bin, root, "none", "bench");
        let mut c = netns::exec_command(ns, &args);
        c.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = c.spawn().context("starting strait-agent")?;
        let mut me = Self {
            dir,
            child: Some(child),
            bin,
        };
        // the status socket answers once the driver has loaded every tunnel
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(c) = me.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!("strait-agent exited ({st}):\n{}", me.log_tail());
            }
            if me.status().is_ok() {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("strait-agent did not serve status:\n{}", me.log_tail());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn status(&self) -> Result<serde_json::Value> {
        let sock = self.dir.path().join("agent.sock").display().to_string();
        let out = cmd::check(Command::new(&self.bin).args([
            "status",
            "--json",
            "--status-socket",
            &sock,
        ]))?;
        Ok(serde_json::from_str(&out.stdout)?)
    }

    /// Tunnels whose IKE SA is established with a CHILD SA.
    fn established(&self) -> Result<usize> {
        let v = self.status()?;
        Ok(v.get("tunnels")
            .and_then(serde_json::Value::as_array)
            .map_or(0, |t| {
                t.iter()
                    .filter(|t| t.get("ready") == Some(&serde_json::Value::Bool(true)))
                    .count()
            }))
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines
            .get(lines.len().saturating_sub(30)..)
            .unwrap_or_default()
            .join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn charon_config(proposal: &str) -> CharonConfig {
    let mut conn = Connection::new(
        "gen",
        SwanEndpoint::psk(&RESPONDER.to_string()),
        SwanEndpoint::psk("%any"),
    );
    conn.local_addrs = vec![RESPONDER.to_string()];
    conn.remote_addrs = vec![POOL.to_owned()];
    conn.proposals = vec![proposal.to_owned()];
    conn.mobike = Some(false);
    // each generator address is its own identity; nothing to replace
    conn.extra.push(("unique".into(), "no".into()));
    // narrowed to each initiator's own /32, as the agent's per-address tunnels have it
    let mut child = ChildConfig::new("net", PROTECTED, INNER_POOL);
    child.esp_proposals = vec![ESP_PROPOSAL.to_owned()];
    conn.children.push(child);
    CharonConfig {
        plugins: Plugins::Libipsec,
        connections: vec![conn],
        secrets: vec![Secret::Ike {
            ids: Vec::new(),
            secret: PSK.to_owned(),
        }],
        dos_protection: Some(true),
        cookie_threshold: Some(COOKIE_THRESHOLD),
        // strongSwan's default per-address limits; each SA has its own address here
        block_threshold: None,
        init_limit_half_open: None,
        // strongSwan's default log levels (1)
        log_level: std::env::var("STRAIT_BENCH_CHARON_LOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        extra_charon: vec![
            format!("cookie_threshold_ip = {COOKIE_THRESHOLD_IP}"),
            // no kernel routes per CHILD SA: the agent installs nothing either
            "install_routes = no".into(),
            // strongSwan's advice for many SAs (the default is one hash bucket)
            "ikesa_table_size = 4096".into(),
            "ikesa_table_segments = 16".into(),
        ],
        files: Vec::new(),
        root: None,
    }
}

enum Responder {
    Agent(AgentProc),
    Charon(Charon),
}

impl Responder {
    fn pid(&self) -> Result<u32> {
        match self {
            Self::Agent(a) => a.pid(),
            Self::Charon(c) => c.pid(),
        }
        .ok_or_else(|| anyhow!("responder not running"))
    }

    /// Established IKE SAs as the responder itself reports them.
    fn established(&self) -> Result<usize> {
        match self {
            Self::Agent(a) => a.established(),
            Self::Charon(c) => {
                // "IKE_SAs: 5000 total, 0 half-open"
                let out = c.swanctl(&["--stats"])?;
                out.stdout
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("IKE_SAs:"))
                    .and_then(|r| r.split_whitespace().next()?.parse().ok())
                    .ok_or_else(|| anyhow!("no IKE_SAs line in swanctl --stats"))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// One sans-IO endpoint per /24 of the pool: the endpoint scans its SAs on some calls, so
/// bounded endpoints keep the generator's cost per SA flat as N grows.
struct Shard {
    ep: Endpoint,
    by_peer: HashMap<PeerId, usize>,
    peers: Vec<PeerId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SaState {
    Waiting,
    InFlight,
    Done,
    Failed,
}

#[derive(Debug, Default)]
struct Counters {
    established: usize,
    failed: usize,
    in_flight: usize,
    sent: u64,
    received: u64,
    send_errors: u64,
    last_progress: Option<Instant>,
    first_failure: Option<strait_ike::Reason>,
}

#[derive(Debug)]
struct GenResult {
    established: usize,
    failed: usize,
    wall: Duration,
    cpu: f64,
    sent: u64,
    received: u64,
    send_errors: u64,
    first_failure: Option<strait_ike::Reason>,
}

struct Sockets {
    ike: UdpSocket,
    natt: UdpSocket,
}

impl Sockets {
    fn open() -> Result<Self> {
        let open = |port: u16| -> Result<UdpSocket> {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                .with_context(|| format!("binding UDP {port}"))?;
            s.set_nonblocking(true)?;
            // the destination address tells which SA (and shard) a datagram is for
            setsockopt(&s, sockopt::Ipv4PacketInfo, &true)?;
            setsockopt(&s, sockopt::RcvBuf, &(8 << 20))?;
            setsockopt(&s, sockopt::SndBuf, &(8 << 20))?;
            Ok(s)
        };
        Ok(Self {
            ike: open(500)?,
            natt: open(4500)?,
        })
    }

    /// Sends from the SA's own source address (IP_PKTINFO), on the socket of its port.
    fn send(&self, t: &strait_ike::Transmit) -> Result<()> {
        let (SocketAddr::V4(local), SocketAddr::V4(remote)) = (t.local, t.remote) else {
            bail!("IPv6 transmit");
        };
        let sock = if local.port() == 4500 {
            &self.natt
        } else {
            &self.ike
        };
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(*local.ip()).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let dst = SockaddrIn::from(remote);
        sendmsg(
            sock.as_raw_fd(),
            &[IoSlice::new(&t.payload)],
            &[ControlMessage::Ipv4PacketInfo(&info)],
            MsgFlags::empty(),
            Some(&dst),
        )?;
        Ok(())
    }
}

/// One datagram from `sock`, if any: (length, local address, remote address).
fn receive(
    sock: &UdpSocket,
    port: u16,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> Result<Option<(usize, SocketAddr, SocketAddr)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = match recvmsg::<SockaddrIn>(
        sock.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(m) => m,
        Err(Errno::EAGAIN | Errno::EINTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let remote = msg
        .address
        .map(SocketAddrV4::from)
        .ok_or_else(|| anyhow!("datagram without source"))?;
    let mut local = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv4PacketInfo(i) = c {
            local = Some(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr)));
        }
    }
    let local = local.ok_or_else(|| anyhow!("datagram without IP_PKTINFO"))?;
    Ok(Some((
        msg.bytes,
        SocketAddr::new(local.into(), port),
        SocketAddr::V4(remote),
    )))
}

fn peer_config(i: usize, ike: &[IkeProposal], esp: &[EspProposal]) -> Result<PeerConfig> {
    let src = source(i);
    let day = Lifetime::from_rekey(Duration::from_secs(24 * 3600));
    Ok(PeerConfig {
        local_addr: SocketAddr::new(src.into(), 500),
        remote_addr: SocketAddr::new(RESPONDER.into(), 500),
        fallback_addrs: Vec::new(),
        local_id: Identity::Ipv4(src),
        remote_id: Identity::Ipv4(RESPONDER),
        auth: AuthConfig::Psk(SecretBytes::from_slice(PSK.as_bytes())),
        ike_proposals: ike.to_vec(),
        esp_proposals: esp.to_vec(),
        ike_lifetime: day,
        reauth_time: None,
        child_lifetime: day,
        dpd: None,
        local_ts: vec![TsRange::subnet(inner(i).into(), 32).ok_or_else(|| anyhow!("ts"))?],
        remote_ts: vec![
            TsRange::subnet(Ipv4Addr::new(203, 0, 113, 0).into(), 24)
                .ok_or_else(|| anyhow!("ts"))?,
        ],
        role: Role::Start,
        force_encapsulation: false,
        child_per_pair: false,
    })
}

struct Generator {
    shards: Vec<Shard>,
    state: Vec<SaState>,
    sockets: Sockets,
    c: Counters,
}

impl Generator {
    fn new(n: usize, proposal: &str) -> Result<Self> {
        let ike = vec![
            proposal
                .parse::<IkeProposal>()
                .map_err(|e| anyhow!("{proposal}: {e}"))?,
        ];
        let esp = vec![
            ESP_PROPOSAL
                .parse::<EspProposal>()
                .map_err(|e| anyhow!("{ESP_PROPOSAL}: {e}"))?,
        ];
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
        let mut shards = Vec::new();
        for s in 0..n.div_ceil(PER_SHARD) {
            // The generator's randomness needs no secrecy (keys of throwaway bench SAs): a
            // seeded generator keeps the OS out of its CPU figure.
            let rng = DeterministicRng::new(seed.wrapping_add(s as u64));
            let mut shard = Shard {
                ep: Endpoint::new(EndpointConfig::default(), Box::new(rng)),
                by_peer: HashMap::new(),
                peers: Vec::new(),
            };
            for i in s * PER_SHARD..n.min((s + 1) * PER_SHARD) {
                let id = shard
                    .ep
                    .add_peer(peer_config(i, &ike, &esp)?)
                    .map_err(|e| anyhow!("peer {i}: {e}"))?;
                shard.by_peer.insert(id, i);
                shard.peers.push(id);
            }
            shards.push(shard);
        }
        Ok(Self {
            shards,
            state: vec![SaState::Waiting; n],
            sockets: Sockets::open()?,
            c: Counters::default(),
        })
    }

    /// Sends what shard `s` queued and books its events.
    fn drain(&mut self, s: usize) {
        let Some(shard) = self.shards.get_mut(s) else {
            return;
        };
        while let Some(t) = shard.ep.poll_transmit() {
            match self.sockets.send(&t) {
                Ok(()) => self.c.sent += 1,
                Err(_) => self.c.send_errors += 1,
            }
        }
        while let Some(ev) = shard.ep.poll_event() {
            let (peer, ok) = match ev {
                Event::ChildSaInstall(sa) => (sa.peer, true),
                Event::ChildSaFailed { peer, reason } | Event::IkeSaDown { peer, reason, .. } => {
                    if self.c.first_failure.is_none() {
                        self.c.first_failure = Some(reason);
                    }
                    (peer, false)
                }
                _ => continue,
            };
            let Some(st) = shard
                .by_peer
                .get(&peer)
                .and_then(|i| self.state.get_mut(*i))
            else {
                continue;
            };
            if *st != SaState::InFlight {
                continue;
            }
            *st = if ok { SaState::Done } else { SaState::Failed };
            if ok {
                self.c.established += 1;
            } else {
                self.c.failed += 1;
            }
            self.c.in_flight -= 1;
            self.c.last_progress = Some(Instant::now());
        }
    }

    fn run(&mut self, window: usize) -> Result<GenResult> {
        let n = self.state.len();
        let cpu0 = cpu_seconds("/proc/thread-self/stat", clock_ticks())?;
        let ticks = clock_ticks();
        let start = Instant::now();
        self.c.last_progress = Some(start);
        let mut next = 0usize;
        let mut buf = vec![0u8; 65536];
        let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
        let mut timers_at = start;
        while self.c.established + self.c.failed < n {
            let now = Instant::now();
            while self.c.in_flight < window && next < n {
                let s = next / PER_SHARD;
                if let Some(sh) = self.shards.get_mut(s)
                    && let Some(peer) = sh.peers.get(next % PER_SHARD)
                {
                    sh.ep.initiate(now, *peer);
                }
                if let Some(st) = self.state.get_mut(next) {
                    *st = SaState::InFlight;
                }
                self.c.in_flight += 1;
                next += 1;
                self.drain(s);
            }
            {
                let mut fds = [
                    PollFd::new(self.sockets.ike.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.sockets.natt.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::from(10u16)) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            for port in [500u16, 4500] {
                loop {
                    let sock = if port == 500 {
                        &self.sockets.ike
                    } else {
                        &self.sockets.natt
                    };
                    let Some((len, local, remote)) = receive(sock, port, &mut buf, &mut cmsg)?
                    else {
                        break;
                    };
                    self.c.received += 1;
                    let s = shard_of(local);
                    if let (Some(sh), Some(data)) = (self.shards.get_mut(s), buf.get(..len)) {
                        sh.ep.handle(Instant::now(), local, remote, data);
                        self.drain(s);
                    }
                }
            }
            let now = Instant::now();
            if now >= timers_at {
                for s in 0..self.shards.len() {
                    let due = self
                        .shards
                        .get(s)
                        .and_then(|sh| sh.ep.poll_timeout())
                        .is_some_and(|t| t <= now);
                    if due {
                        if let Some(sh) = self.shards.get_mut(s) {
                            sh.ep.handle_timeout(now);
                        }
                        self.drain(s);
                    }
                }
                timers_at = now + Duration::from_millis(20);
            }
            if self
                .c
                .last_progress
                .is_some_and(|t| now.duration_since(t) > STALL)
            {
                break;
            }
        }
        let wall = start.elapsed();
        let cpu = cpu_seconds("/proc/thread-self/stat", ticks)? - cpu0;
        Ok(GenResult {
            established: self.c.established,
            failed: self.c.failed,
            wall,
            cpu,
            sent: self.c.sent,
            received: self.c.received,
            send_errors: self.c.send_errors,
            first_failure: self.c.first_failure,
        })
    }
}

/// The shard of a pool address: its third octet (see [`source`]).
fn shard_of(local: SocketAddr) -> usize {
    match local {
        SocketAddr::V4(v) => usize::from(v.ip().octets()[2]),
        SocketAddr::V6(_) => usize::MAX,
    }
}

/// Runs the generator on its own thread inside namespace `ns` (sockets belong to the namespace
/// of the thread that creates them). Setup (peer configs) happens before the clock starts.
fn generate(ns: &str, n: usize, proposal: &str, window: usize) -> Result<GenResult> {
    let path = format!("/run/netns/{ns}");
    let proposal = proposal.to_owned();
    let h = thread::spawn(move || -> Result<GenResult> {
        let f = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the generator's namespace")?;
        let mut g = Generator::new(n, &proposal)?;
        g.run(window)
    });
    h.join()
        .map_err(|_| anyhow!("the generator thread panicked"))?
}

// ---------------------------------------------------------------------------------------------
// One measurement

#[derive(Debug, Clone)]
struct Row {
    responder: Kind,
    proposal: String,
    sas: usize,
    established: usize,
    responder_count: usize,
    failed: usize,
    wall: f64,
    resp_cpu: f64,
    gen_cpu: f64,
    rss_delta: i64,
    memory_run: bool,
    msgs_per_sa: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.established as f64 / self.wall.max(1e-9)
    }
    fn per_sa(&self, v: f64) -> f64 {
        v / self.established.max(1) as f64
    }
}

fn measure(kind: Kind, proposal: &str, n: usize, window: usize, memory_run: bool) -> Result<Row> {
    let topo = Topology::builder()
        .node("gen")
        .node("resp")
        .link("gen", "198.19.255.1/24", "resp", "198.19.255.2/24")
        .route("gen", &["local", POOL, "dev", "lo"])
        .route("resp", &[POOL, "via", &GENERATOR_LINK.to_string()])
        // charon with kernel-libipsec refuses a CHILD SA without a local address in its TS
        .subnet("resp", "203.0.113.1/32")
        .build()?;
    let gen_ns = topo.ns("gen")?.to_owned();
    let resp_ns = topo.ns("resp")?.to_owned();
    let responder = match kind {
        Kind::Agent => Responder::Agent(AgentProc::start(&resp_ns, n, proposal)?),
        Kind::Charon => Responder::Charon(Charon::start(&resp_ns, &charon_config(proposal))?),
    };
    let pid = responder.pid()?;
    let ticks = clock_ticks();
    // let start-up work (config parsing, charon's plugin threads) settle out of the figures
    thread::sleep(Duration::from_millis(500));
    let stat = format!("/proc/{pid}/stat");
    let cpu0 = cpu_seconds(&stat, ticks)?;
    let rss0 = rss_bytes(pid)?;
    let g = generate(&gen_ns, n, proposal, window)?;
    let cpu1 = cpu_seconds(&stat, ticks)?;
    let rss1 = rss_bytes(pid)?;
    let responder_count = responder.established().unwrap_or(0);
    if g.failed > 0 || responder_count != n {
        // keep the responder's log for a look at what went wrong
        let kept = std::env::temp_dir().join(format!("strait-bench-{}.log", kind.name()));
        let log = match &responder {
            Responder::Agent(a) => fs::read_to_string(a.dir.path().join("agent.log")),
            Responder::Charon(c) => fs::read_to_string(c.log_path()),
        };
        if fs::write(&kept, log.unwrap_or_default()).is_ok() {
            eprintln!("  responder log kept in {}", kept.display());
        }
    }
    drop(responder);
    drop(topo);
    if g.send_errors > 0 {
        eprintln!("  ({} send errors)", g.send_errors);
    }
    if let Some(r) = g.first_failure {
        eprintln!("  first failure: {}", r.as_str());
    }
    Ok(Row {
        responder: kind,
        proposal: proposal.to_owned(),
        sas: n,
        established: g.established,
        responder_count,
        failed: g.failed,
        wall: g.wall.as_secs_f64(),
        resp_cpu: cpu1 - cpu0,
        gen_cpu: g.cpu,
        rss_delta: i64::try_from(rss1).unwrap_or(0) - i64::try_from(rss0).unwrap_or(0),
        memory_run,
        msgs_per_sa: (g.sent + g.received) as f64 / g.established.max(1) as f64,
    })
}

fn short_name(proposal: &str) -> &str {
    proposal.rsplit('-').next().unwrap_or(proposal)
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| responder | proposal | SAs | wall s | SAs/s | responder CPU ms/SA | generator CPU ms/SA | RSS/SA at 10k |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let rss = if r.memory_run {
            format!(
                "{:.1} KiB",
                r.rss_delta as f64 / 1024.0 / r.established.max(1) as f64
            )
        } else {
            "–".to_owned()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {}{} | {:.2} | {:.0} | {:.3} | {:.3} | {} |",
            r.responder.name(),
            r.proposal,
            r.established,
            if r.established == r.sas {
                String::new()
            } else {
                format!(" of {}", r.sas)
            },
            r.wall,
            r.rate(),
            r.per_sa(r.resp_cpu) * 1000.0,
            r.per_sa(r.gen_cpu) * 1000.0,
            rss
        );
    }
    s
}

fn ratios(rows: &[Row]) -> String {
    let mut s = String::new();
    let find = |k: Kind, p: &str, mem: bool| {
        rows.iter()
            .find(|r| r.responder == k && r.proposal == p && r.memory_run == mem)
    };
    let mut seen: Vec<(&str, bool)> = Vec::new();
    for r in rows {
        if seen.contains(&(r.proposal.as_str(), r.memory_run)) {
            continue;
        }
        seen.push((r.proposal.as_str(), r.memory_run));
        let (Some(a), Some(c)) = (
            find(Kind::Agent, &r.proposal, r.memory_run),
            find(Kind::Charon, &r.proposal, r.memory_run),
        ) else {
            continue;
        };
        let rate = a.rate() / c.rate().max(1e-9);
        let cpu = c.per_sa(c.resp_cpu) / a.per_sa(a.resp_cpu).max(1e-9);
        let _ = write!(
            s,
            "ratio {} ({} SAs): strait-agent/charon rate **{rate:.2}×**, charon/strait-agent responder CPU per SA **{cpu:.2}×**",
            short_name(&r.proposal),
            r.sas
        );
        if r.memory_run {
            let m = (c.rss_delta as f64 / c.established.max(1) as f64)
                / (a.rss_delta as f64 / a.established.max(1) as f64).max(1e-9);
            let _ = write!(s, ", charon/strait-agent RSS per SA **{m:.2}×**");
        }
        s.push('\n');
        if r.proposal.contains("x25519") && !r.memory_run {
            let ms = a.per_sa(a.resp_cpu) * 1000.0;
            let _ = writeln!(
                s,
                "target (X25519): rate ≥ 3× charon: **{}** ({rate:.2}×); responder CPU ≤ 0.1 ms/SA: **{}** ({ms:.3} ms)",
                if rate >= 3.0 { "met" } else { "not met" },
                if ms <= 0.1 { "met" } else { "not met" },
            );
        }
    }
    s
}

fn run(args: &Args) -> Result<Vec<Row>> {
    cmd::require_root()?;
    strongswan::require_installed()?;
    let mut plan: Vec<(Kind, String, usize, bool)> = Vec::new();
    for p in &args.proposals {
        for k in &args.responders {
            plan.push((*k, p.clone(), args.sas, false));
        }
    }
    if args.mem_sas > 0 {
        let p = args
            .proposals
            .iter()
            .find(|p| p.contains("x25519"))
            .or(args.proposals.first())
            .cloned()
            .unwrap_or_default();
        for k in &args.responders {
            plan.push((*k, p.clone(), args.mem_sas, true));
        }
    }
    let mut rows = Vec::new();
    for (k, p, n, mem) in plan {
        eprintln!("{} {p} {n} SAs (window {})...", k.name(), args.window);
        let r = measure(k, &p, n, args.window, mem)?;
        eprintln!(
            "  {} established ({} by the responder's count), {} failed, {:.2} s, {:.1} datagrams/SA",
            r.established, r.responder_count, r.failed, r.wall, r.msgs_per_sa
        );
        rows.push(r);
    }
    Ok(rows)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(rows) => {
            println!("{}", table(&rows));
            print!("{}", ratios(&rows));
            let all = rows
                .iter()
                .all(|r| r.established == r.sas && r.responder_count == r.sas);
            println!(
                "\nall SAs established on both sides: {}",
                if all { "yes" } else { "NO" }
            );
            if all {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("bench-ike-rate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
