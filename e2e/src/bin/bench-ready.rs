//! Control-plane figures on the real kube-apiserver + etcd: how long `kubectl apply` takes to
//! reach `Ready=True`, what 500 tunnels applied at once cost (time, API writes, memory), and how
//! long a gateway failover takes after the active agent is SIGKILLed. Prints markdown tables.
//!
//! The parts are the real ones: the operator process, two gateway "nodes" (network namespaces)
//! each running `strait-agent cluster --dataplane none` (the host kernel has no ESP), and one
//! strongSwan charon in a third namespace answering every tunnel, one charon connection (own
//! IKE address in 198.18.0.0/15, own identities, own subnets) per tunnel.
//!
//! Ready is observed through one long-running `kubectl get ipsectunnels --watch
//! --output-watch-events -o json`: each event is stamped when it is read, so a time is "from just
//! before `kubectl apply` starts to the moment the watch delivers the object with Ready=True".
//!
//! Run (as root, after `cargo build --release -p strait-agent -p strait-operator`):
//! `STRAIT_AGENT_BIN=target/release/strait-agent STRAIT_OPERATOR_BIN=target/release/strait-operator
//!  cargo run -p strait-e2e --release --bin bench-ready`; `--short` for the CI-sized run.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::BufReader;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;
use strait_e2e::cluster::{self, ESP, IKE};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns::{self, Topology};
use strait_e2e::product::{self, Daemon, NAMESPACE};
use strait_e2e::strongswan::{
    self, Charon, CharonConfig, ChildConfig, Connection, Endpoint, Secret,
};
use strait_e2e::tunnel::{End, TunnelYaml};

const PSK: &str = "strait-bench-psk-only-for-this-machine";
const NODES: [&str; 2] = ["gw1", "gw2"];
/// Where charon's per-tunnel IKE addresses live (RFC 2544's benchmarking range).
const REMOTE_RANGE: &str = "198.18.0.0/16";
/// Upper bounds, so a broken run ends with a diagnosis instead of hanging.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy)]
struct Plan {
    sequential: usize,
    batch: usize,
    failovers: usize,
    /// Heartbeat lease of the agents, and how often they renew it.
    lease_secs: u32,
    renew_secs: f64,
    /// Apply the batch with `kubectl apply --server-side` (one PATCH per tunnel) instead of
    /// client-side apply (a GET, then a create, per tunnel).
    server_side: bool,
}

impl Plan {
    fn from_args() -> Result<Self> {
        let mut plan = Self {
            sequential: 50,
            batch: 500,
            failovers: 10,
            lease_secs: 3,
            renew_secs: 1.0,
            server_side: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut num = |what: &str| -> Result<String> {
                args.next().ok_or_else(|| anyhow!("{what} needs a value"))
            };
            match a.as_str() {
                "--short" => {
                    plan.sequential = 5;
                    plan.batch = 20;
                    plan.failovers = 2;
                }
                "--sequential" => plan.sequential = num(&a)?.parse()?,
                "--batch" => plan.batch = num(&a)?.parse()?,
                "--failovers" => plan.failovers = num(&a)?.parse()?,
                "--lease" => plan.lease_secs = num(&a)?.parse()?,
                "--renew" => plan.renew_secs = num(&a)?.parse()?,
                "--server-side" => plan.server_side = true,
                "-h" | "--help" => {
                    println!(
                        "bench-ready [--short] [--sequential N] [--batch N] [--failovers N] \
                         [--lease SECS] [--renew SECS] [--server-side]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(plan)
    }
}

/// One tunnel's numbering: its charon connection, addresses, identities and subnets.
#[derive(Debug, Clone)]
struct TunnelDef {
    name: String,
    k: usize,
}

impl TunnelDef {
    fn new(name: String, k: usize) -> Self {
        Self { name, k }
    }

    fn remote_addr(&self) -> String {
        format!("198.18.{}.{}", self.k / 250, self.k % 250 + 1)
    }

    fn local_id(&self) -> String {
        format!("k{}.dc1.strait.example", self.k)
    }

    fn remote_id(&self) -> String {
        format!("k{}.dc2.strait.example", self.k)
    }

    fn local_subnet(&self) -> String {
        format!("10.{}.{}.0/24", 1 + self.k / 256, self.k % 256)
    }

    fn remote_subnet(&self) -> String {
        format!("10.{}.{}.0/24", 101 + self.k / 256, self.k % 256)
    }

    fn yaml(&self) -> String {
        TunnelYaml::new(
            &self.name,
            End::new(self.local_id(), "", self.local_subnet()),
            End::new(self.remote_id(), self.remote_addr(), self.remote_subnet()),
        )
        .gateways()
        .psk("bench-psk")
        .proposals(IKE, ESP)
        .render()
    }

    fn charon_conn(&self) -> Connection {
        let mut conn = Connection::new(
            &format!("k{}", self.k),
            Endpoint::psk(&self.remote_id()),
            Endpoint::psk(&self.local_id()),
        );
        conn.local_addrs = vec![self.remote_addr()];
        conn.proposals = vec![IKE.into()];
        // the new gateway's IKE SA replaces the dead one's at once, as a real peer would want
        conn.extra.push(("unique".into(), "replace".into()));
        let mut child = ChildConfig::new("net", &self.remote_subnet(), &self.local_subnet());
        child.esp_proposals = vec![ESP.into()];
        conn.children.push(child);
        conn
    }
}

// ---------------------------------------------------------------------------------------------
// The watch: one `kubectl get --watch` whose events are stamped when read.

/// What the watch last saw of one tunnel.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// When the last event about it was read.
    at: Option<Instant>,
    ready: bool,
    /// When it was first seen Ready=True (reset when it stops being Ready).
    ready_since: Option<Instant>,
    active: Option<String>,
    /// Nodes that have an entry in status.gateways.
    entries: Vec<String>,
}

#[derive(Default)]
struct WatchState {
    tunnels: HashMap<String, Seen>,
    /// Watch restarts (kubectl exited); each restart re-lists.
    restarts: u32,
}

struct Watch {
    shared: Arc<(Mutex<WatchState>, Condvar)>,
    stop: Arc<AtomicBool>,
    child: Arc<Mutex<Option<Child>>>,
    reader: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<WatchState>) -> MutexGuard<'_, WatchState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Watch {
    fn start(cp: &ControlPlane) -> Self {
        let shared = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let child: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
        let (kubectl, kubeconfig) = (
            cp.binaries().kubectl.clone(),
            cp.kubeconfig_path().to_owned(),
        );
        let (s, st, ch) = (shared.clone(), stop.clone(), child.clone());
        let reader = thread::spawn(move || {
            let mut first = true;
            while !st.load(Ordering::SeqCst) {
                if !first {
                    lock(&s.0).restarts += 1;
                    thread::sleep(Duration::from_millis(200));
                }
                first = false;
                let spawned = Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "get",
                        "ipsectunnels",
                        "--watch",
                        "--output-watch-events",
                        "-o",
                        "json",
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn();
                let Ok(mut c) = spawned else { continue };
                let Some(out) = c.stdout.take() else { continue };
                if let Ok(mut g) = ch.lock() {
                    *g = Some(c);
                }
                let events =
                    serde_json::Deserializer::from_reader(BufReader::new(out)).into_iter::<Value>();
                for ev in events {
                    let Ok(ev) = ev else { break };
                    let now = Instant::now();
                    observe(&s, &ev, now);
                }
                if let Ok(mut g) = ch.lock()
                    && let Some(mut c) = g.take()
                {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        });
        Self {
            shared,
            stop,
            child,
            reader: Some(reader),
        }
    }

    /// Waits until `pred` returns something for the current state, or `timeout` passes.
    fn wait<T>(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&HashMap<String, Seen>) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.shared;
        let mut g = lock(m);
        loop {
            if let Some(t) = pred(&g.tunnels) {
                return Some(t);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            g = cv
                .wait_timeout(g, left.min(Duration::from_millis(500)))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn seen(&self, name: &str) -> Seen {
        lock(&self.shared.0)
            .tunnels
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    fn restarts(&self) -> u32 {
        lock(&self.shared.0).restarts
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(mut g) = self.child.lock()
            && let Some(c) = g.as_mut()
        {
            let _ = c.kill();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn observe(shared: &(Mutex<WatchState>, Condvar), ev: &Value, now: Instant) {
    let Some(name) = ev.pointer("/object/metadata/name").and_then(Value::as_str) else {
        return;
    };
    let field = |path: &str| ev.pointer(&format!("/object/status{path}"));
    let (m, cv) = shared;
    let mut g = lock(m);
    if ev.get("type").and_then(Value::as_str) == Some("DELETED") {
        g.tunnels.remove(name);
    } else {
        let ready = field("/conditions")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
            })
            .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"));
        let seen = g.tunnels.entry(name.to_owned()).or_default();
        seen.at = Some(now);
        if ready && !seen.ready {
            seen.ready_since = Some(now);
        } else if !ready {
            seen.ready_since = None;
        }
        seen.ready = ready;
        seen.active = field("/activeGateway")
            .and_then(Value::as_str)
            .map(str::to_owned);
        seen.entries = field("/gateways")
            .and_then(Value::as_array)
            .map(|g| {
                g.iter()
                    .filter_map(|e| e.get("node").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
    }
    drop(g);
    cv.notify_all();
}

// ---------------------------------------------------------------------------------------------
// Measurements outside the watch.

/// Write requests the API server has served, by `resource[/subresource]`, from its own
/// `apiserver_request_total` counter.
fn api_writes(cp: &ControlPlane) -> Result<BTreeMap<String, f64>> {
    let text = cp.kubectl(["get", "--raw", "/metrics"])?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        // APPLY is server-side apply (a PATCH); the server counts it under its own verb.
        if !matches!(
            label("verb").as_str(),
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
        ) {
            continue;
        }
        let mut key = label("resource");
        let sub = label("subresource");
        if !sub.is_empty() {
            key = format!("{key}/{sub}");
        }
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry(key).or_insert(0.0) += v;
    }
    Ok(out)
}

fn diff(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// The pid of the process whose command name is `comm` and whose command line or environment
/// contains `needle` (a path unique to this run).
fn find_pid(comm: &str, needle: &str) -> Option<u32> {
    let needle = needle.as_bytes();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let c = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if c.trim() != comm {
            return None;
        }
        let has = |file: &str| {
            fs::read(format!("/proc/{pid}/{file}"))
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        };
        (has("cmdline") || has("environ")).then_some(pid)
    })
}

/// (VmRSS, VmHWM) in MiB.
fn rss(pid: u32) -> Option<(f64, f64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<f64> {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    Some((kb("VmRSS:")? / 1024.0, kb("VmHWM:")? / 1024.0))
}

/// CPU time (user + system) the process has used, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = stat.rsplit_once(") ")?.1;
    let mut f = rest.split_whitespace().skip(11);
    let utime: f64 = f.next()?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    // USER_HZ is 100 on Linux
    Some((utime + stime) / 100.0)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The setup.

struct Bench {
    plan: Plan,
    // Drop order: agents and operator before the watch, the network and the control plane.
    agents: Vec<(String, Option<Daemon>)>,
    operator: Daemon,
    watch: Watch,
    charon: Charon,
    topo: Topology,
    cp: ControlPlane,
    defs: Vec<TunnelDef>,
}

impl Bench {
    fn setup(plan: Plan) -> Result<Self> {
        let t = Instant::now();
        let cp = ControlPlane::start()?;
        product::install_crd(&cp)?;
        for node in NODES {
            product::gateway_node(&cp, node)?;
        }
        cp.kubectl_stdin(
            ["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: bench-psk, namespace: {NAMESPACE}}}\nstringData: {{psk: \"{PSK}\"}}\n"
            ),
        )?;

        let defs: Vec<TunnelDef> = std::iter::once("failover".to_owned())
            .chain((0..plan.sequential).map(|i| format!("seq-{i:03}")))
            .chain((0..plan.batch).map(|i| format!("batch-{i:03}")))
            .enumerate()
            .map(|(k, name)| TunnelDef::new(name, k))
            .collect();

        let topo = cluster::builder(&NODES, REMOTE_RANGE).build()?;
        // Per tunnel on the remote site's loopback, in one `ip -batch`: its IKE address, and an
        // address inside its subnet (charon's libipsec routes each CHILD SA from one).
        let batch: String = defs
            .iter()
            .map(|d| {
                format!(
                    "address add {}/32 dev lo\naddress add {}/32 dev lo\n",
                    d.remote_addr(),
                    d.remote_subnet().replace(".0/24", ".1")
                )
            })
            .collect();
        let batch_file = cp.scratch_dir().join("remote-addresses.ip");
        fs::write(&batch_file, batch)?;
        netns::exec(
            topo.ns("remote")?,
            &["ip", "-batch", &batch_file.display().to_string()],
        )?;

        let config = CharonConfig {
            connections: defs.iter().map(TunnelDef::charon_conn).collect(),
            secrets: vec![Secret::Ike {
                ids: Vec::new(),
                secret: PSK.to_owned(),
            }],
            // Hundreds of handshakes from one address at once: charon's per-address DoS limits
            // would measure charon, not us. Off, and the half-open limit raised.
            dos_protection: Some(false),
            init_limit_half_open: Some(10_000),
            log_level: 1,
            ..CharonConfig::default()
        };
        let charon = Charon::start(topo.ns("remote")?, &config)?;

        let watch = Watch::start(&cp);
        let operator = Daemon::operator(&cp, &[])?;
        let mut bench = Self {
            plan,
            agents: Vec::new(),
            operator,
            watch,
            charon,
            topo,
            cp,
            defs,
        };
        for node in NODES {
            let d = bench.start_agent(node)?;
            bench.agents.push((node.to_owned(), Some(d)));
        }
        for node in NODES {
            bench.wait_heartbeat(node, None)?;
        }
        eprintln!(
            "setup: control plane, charon ({} connections), operator and 2 agents in {:.1} s",
            bench.defs.len(),
            t.elapsed().as_secs_f64()
        );
        Ok(bench)
    }

    fn agent_args(&self) -> Vec<String> {
        vec![
            "--dataplane".into(),
            "none".into(),
            "--lease-duration-seconds".into(),
            self.plan.lease_secs.to_string(),
            "--renew-interval".into(),
            self.plan.renew_secs.to_string(),
        ]
    }

    fn start_agent(&self, node: &str) -> Result<Daemon> {
        let args = self.agent_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::cluster_agent(&self.cp, self.topo.ns(node)?, node, &args)
    }

    fn agent_mut(&mut self, node: &str) -> Result<&mut Option<Daemon>> {
        self.agents
            .iter_mut()
            .find(|(n, _)| n == node)
            .map(|(_, d)| d)
            .ok_or_else(|| anyhow!("no agent slot for {node}"))
    }

    fn lease_renew_time(&self, node: &str) -> Option<String> {
        self.cp
            .kubectl([
                "get",
                "lease",
                "-n",
                NAMESPACE,
                &format!("strait-agent-{node}"),
                "-o",
                "jsonpath={.spec.renewTime}",
            ])
            .ok()
            .filter(|s| !s.trim().is_empty())
    }

    /// Waits until `node`'s heartbeat Lease exists with a renewal other than `old`.
    fn wait_heartbeat(&self, node: &str, old: Option<&str>) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(now) = self.lease_renew_time(node)
                && old != Some(now.as_str())
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("agent {node} renewed no heartbeat Lease in 60 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn diagnose(&self, what: &str, names: &[&str]) -> anyhow::Error {
        let mut s = format!("{what}\n");
        for n in names.iter().take(3) {
            let _ = writeln!(
                s,
                "--- {n}: {}",
                self.cp
                    .kubectl(["get", "ipsectunnel", n, "-o", "jsonpath={.status}"])
                    .unwrap_or_else(|e| format!("{e:#}"))
            );
        }
        for (node, d) in &self.agents {
            if let Some(d) = d {
                let log = d.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines.get(lines.len().saturating_sub(30)..).unwrap_or(&[]);
                let _ = writeln!(s, "--- agent {node} (tail):\n{}", tail.join("\n"));
            }
        }
        let log = self.charon.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines.get(lines.len().saturating_sub(30)..).unwrap_or(&[]);
        let _ = writeln!(s, "--- charon (tail):\n{}", tail.join("\n"));
        let log = self.operator.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines.get(lines.len().saturating_sub(30)..).unwrap_or(&[]);
        let _ = writeln!(s, "--- operator (tail):\n{}", tail.join("\n"));
        anyhow!(s)
    }

    fn pids(&self) -> Vec<(String, Option<u32>)> {
        let mut v = vec![(
            "operator".to_owned(),
            find_pid(
                "strait-operator",
                &self.cp.kubeconfig_path().display().to_string(),
            ),
        )];
        for node in NODES {
            let sock = self.cp.scratch_dir().join(format!("agent-{node}.sock"));
            v.push((
                format!("agent {node}"),
                find_pid("strait-agent", &sock.display().to_string()),
            ));
        }
        v.push(("charon (peer)".to_owned(), self.charon.pid()));
        v.push(("kube-apiserver".to_owned(), self.cp.apiserver_pid()));
        v
    }

    // -----------------------------------------------------------------------------------------

    fn sequential(&self, out: &mut String) -> Result<()> {
        let defs: Vec<&TunnelDef> = self
            .defs
            .iter()
            .filter(|d| d.name.starts_with("seq-"))
            .collect();
        let mut ready = Vec::new();
        let mut applies = Vec::new();
        for d in &defs {
            let t0 = Instant::now();
            self.cp.kubectl_stdin(["apply", "-f", "-"], &d.yaml())?;
            applies.push(t0.elapsed());
            let at = self
                .watch
                .wait(READY_TIMEOUT, |m| {
                    m.get(&d.name).and_then(|s| s.ready_since)
                })
                .ok_or_else(|| {
                    self.diagnose(
                        &format!("{} not Ready within {READY_TIMEOUT:?}", d.name),
                        &[&d.name],
                    )
                })?;
            let dt = at.saturating_duration_since(t0);
            eprintln!("  {}: Ready after {}", d.name, ms(dt));
            ready.push(dt);
        }
        ready.sort();
        applies.sort();
        let _ = writeln!(
            out,
            "### Time to Ready ({} tunnels applied one after another)\n",
            ready.len()
        );
        let _ = writeln!(
            out,
            "| tunnels | p50 | p95 | min | max | of which `kubectl apply` itself (p50) |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |\n",
            ready.len(),
            ms(pct(&ready, 50.0)),
            ms(pct(&ready, 95.0)),
            ms(ready.first().copied().unwrap_or_default()),
            ms(ready.last().copied().unwrap_or_default()),
            ms(pct(&applies, 50.0)),
        );
        Ok(())
    }

    fn batch(&self, out: &mut String) -> Result<()> {
        let defs: Vec<&TunnelDef> = self
            .defs
            .iter()
            .filter(|d| d.name.starts_with("batch-"))
            .collect();
        let n = defs.len();
        let yaml = defs
            .iter()
            .map(|d| d.yaml())
            .collect::<Vec<_>>()
            .join("---\n");
        let pids = self.pids();
        let rss_before: Vec<Option<(f64, f64)>> =
            pids.iter().map(|(_, p)| p.and_then(rss)).collect();
        let cpu_before: Vec<Option<f64>> = pids.iter().map(|(_, p)| p.and_then(cpu_secs)).collect();
        let writes_before = api_writes(&self.cp)?;
        let how: &[&str] = if self.plan.server_side {
            &["apply", "--server-side", "-f", "-"]
        } else {
            &["apply", "-f", "-"]
        };
        let t0 = Instant::now();
        self.cp.kubectl_stdin(how.iter().copied(), &yaml)?;
        let apply = t0.elapsed();
        eprintln!(
            "  kubectl apply of {n} tunnels returned after {}",
            secs(apply)
        );
        let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
        let mut last_report = Instant::now();
        let times = self
            .watch
            .wait(BATCH_TIMEOUT, |m| {
                let times: Vec<Duration> = names
                    .iter()
                    .filter_map(|n| m.get(*n).and_then(|s| s.ready_since))
                    .map(|at| at.saturating_duration_since(t0))
                    .collect();
                if last_report.elapsed() > Duration::from_secs(5) {
                    eprintln!(
                        "  {:.0} s: {}/{n} Ready",
                        t0.elapsed().as_secs_f64(),
                        times.len()
                    );
                    last_report = Instant::now();
                }
                (times.len() == n).then_some(times)
            })
            .ok_or_else(|| {
                let not: Vec<&str> = names
                    .iter()
                    .filter(|n| !self.watch.seen(n).ready)
                    .copied()
                    .collect();
                self.diagnose(
                    &format!(
                        "{} of {n} tunnels not Ready within {BATCH_TIMEOUT:?}",
                        not.len()
                    ),
                    &not,
                )
            })?;
        let all_ready = t0.elapsed();
        let writes_ready = diff(&api_writes(&self.cp)?, &writes_before);
        let rss_ready: Vec<Option<(f64, f64)>> =
            pids.iter().map(|(_, p)| p.and_then(rss)).collect();
        let cpu_ready: Vec<Option<f64>> = pids.iter().map(|(_, p)| p.and_then(cpu_secs)).collect();
        // Late writes (the agents' next status refreshes, events) belong to the cost too.
        thread::sleep(Duration::from_secs(10));
        let settled = t0.elapsed();
        let writes_settled = diff(&api_writes(&self.cp)?, &writes_before);
        let rss_after: Vec<Option<(f64, f64)>> =
            pids.iter().map(|(_, p)| p.and_then(rss)).collect();
        let still_ready = names.iter().filter(|n| self.watch.seen(n).ready).count();

        let mut sorted = times;
        sorted.sort();
        let _ = writeln!(
            out,
            "### {n} tunnels applied at once (one multi-document `kubectl {}`)\n",
            how.join(" ")
        );
        let _ = writeln!(
            out,
            "| tunnels | `kubectl apply` returns | 50% Ready | 95% Ready | all Ready | still Ready {:.0} s later |",
            settled.as_secs_f64()
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {} | {} | {still_ready}/{n} |\n",
            secs(apply),
            secs(pct(&sorted, 50.0)),
            secs(pct(&sorted, 95.0)),
            secs(sorted.last().copied().unwrap_or(all_ready)),
        );
        let _ = writeln!(
            out,
            "API write requests (POST/PUT/PATCH/APPLY/DELETE in the API server's \
             `apiserver_request_total`) from just before the apply:\n"
        );
        let _ = writeln!(
            out,
            "| resource | until all Ready ({}) | per tunnel | until +10 s ({}) | per tunnel |",
            secs(all_ready),
            secs(settled)
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        #[allow(clippy::cast_precision_loss)]
        let per = |v: f64| v / n as f64;
        let mut keys: Vec<&String> = writes_settled.keys().collect();
        keys.sort();
        let (mut tot_r, mut tot_s) = (0.0, 0.0);
        for k in keys {
            let r = writes_ready.get(k).copied().unwrap_or(0.0);
            let s = writes_settled.get(k).copied().unwrap_or(0.0);
            tot_r += r;
            tot_s += s;
            let _ = writeln!(
                out,
                "| {k} | {r:.0} | {:.2} | {s:.0} | {:.2} |",
                per(r),
                per(s)
            );
        }
        let _ = writeln!(
            out,
            "| **all** | {tot_r:.0} | {:.2} | {tot_s:.0} | {:.2} |\n",
            per(tot_r),
            per(tot_s)
        );
        let _ = writeln!(
            out,
            "Resident memory (MiB; peak = VmHWM over the process's life) and CPU time used from \
             the apply until all were Ready:\n"
        );
        let _ = writeln!(
            out,
            "| process | before | all Ready | +10 s | peak | CPU s until all Ready |\n| --- | --- | --- | --- | --- | --- |"
        );
        let f = |v: &Option<(f64, f64)>, peak: bool| {
            v.map_or_else(
                || "?".to_owned(),
                |(r, h)| format!("{:.1}", if peak { h } else { r }),
            )
        };
        for (i, (name, _)) in pids.iter().enumerate() {
            let g = |v: &Vec<Option<(f64, f64)>>| v.get(i).copied().flatten();
            let cpu = match (
                cpu_before.get(i).copied().flatten(),
                cpu_ready.get(i).copied().flatten(),
            ) {
                (Some(a), Some(b)) => format!("{:.1}", b - a),
                _ => "?".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {cpu} |",
                f(&g(&rss_before), false),
                f(&g(&rss_ready), false),
                f(&g(&rss_after), false),
                f(&g(&rss_after), true),
            );
        }
        let _ = writeln!(out);
        Ok(())
    }

    fn failovers(&mut self, out: &mut String) -> Result<()> {
        let name = "failover".to_owned();
        let def = self
            .defs
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .ok_or_else(|| anyhow!("no failover tunnel"))?;
        self.cp.kubectl_stdin(["apply", "-f", "-"], &def.yaml())?;
        let mut times = Vec::new();
        for run in 1..=self.plan.failovers {
            // settled: Ready, and only the active gateway has an entry (a restarted standby
            // clears the one it left behind)
            let active = self
                .watch
                .wait(READY_TIMEOUT, |m| {
                    m.get(&name).and_then(|s| {
                        let a = s.active.clone()?;
                        (s.ready && s.entries == [a.clone()]).then_some(a)
                    })
                })
                .ok_or_else(|| self.diagnose("failover tunnel not settled", &[&name]))?;
            let other = NODES
                .iter()
                .find(|n| **n != active)
                .map(|n| (*n).to_owned())
                .ok_or_else(|| anyhow!("no standby"))?;
            // the standby must be alive for the operator: a renewal seen after its start
            let old = self.lease_renew_time(&other);
            self.wait_heartbeat(&other, old.as_deref())?;
            let killed_lease = self.lease_renew_time(&active);
            let t0 = Instant::now();
            if let Some(mut d) = self.agent_mut(&active)?.take() {
                d.kill();
            }
            let at = self
                .watch
                .wait(FAILOVER_TIMEOUT, |m| {
                    m.get(&name).and_then(|s| {
                        (s.ready
                            && s.active.as_deref() == Some(&other)
                            && s.entries.contains(&other))
                        .then_some(s.at)
                        .flatten()
                    })
                })
                .ok_or_else(|| {
                    self.diagnose(
                        &format!("no failover {active} -> {other} within {FAILOVER_TIMEOUT:?}"),
                        &[&name],
                    )
                })?;
            let dt = at.saturating_duration_since(t0);
            eprintln!(
                "  failover {run}: {active} killed -> Ready on {other} after {}",
                ms(dt)
            );
            times.push(dt);
            // the killed node comes back as the standby
            let d = self.start_agent(&active)?;
            *self.agent_mut(&active)? = Some(d);
            self.wait_heartbeat(&active, killed_lease.as_deref())?;
        }
        times.sort();
        let _ = writeln!(
            out,
            "### Failover (active gateway's agent SIGKILLed -> Ready on the standby)\n"
        );
        let _ = writeln!(
            out,
            "| runs | heartbeat lease / renewal | p50 | min | max |\n| --- | --- | --- | --- | --- |"
        );
        let _ = writeln!(
            out,
            "| {} | {} s / {} s | {} | {} | {} |\n",
            times.len(),
            self.plan.lease_secs,
            self.plan.renew_secs,
            ms(pct(&times, 50.0)),
            ms(times.first().copied().unwrap_or_default()),
            ms(times.last().copied().unwrap_or_default()),
        );
        Ok(())
    }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), kernel {}, load average at start {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn run() -> Result<()> {
    let plan = Plan::from_args()?;
    strait_e2e::cmd::require_root()?;
    let _serial = netns::serial();
    let _ = netns::sweep_stale();
    strongswan::sweep_stale_dirs();
    let machine = machine();
    let agent = product::binary("strait-agent")?;
    let operator = product::binary("strait-operator")?;
    let mut bench = Bench::setup(plan).context("setting up")?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Control plane: time to Ready, {} at once, failover\n",
        plan.batch
    );
    let _ = writeln!(
        out,
        "Machine: {machine}. Binaries: `{}`, `{}`. Agents: `--dataplane none`, heartbeat lease \
         {} s renewed every {} s; operator defaults. Peer: one strongSwan charon (kernel-libipsec) \
         with one connection per tunnel, DoS protection off. Times: from just before `kubectl \
         apply` (or the SIGKILL) to the moment a `kubectl get --watch` delivers the object in \
         the awaited state.\n",
        agent.display(),
        operator.display(),
        plan.lease_secs,
        plan.renew_secs
    );
    eprintln!("failovers ({}):", plan.failovers);
    bench.failovers(&mut out)?;
    eprintln!("sequential ({}):", plan.sequential);
    bench.sequential(&mut out)?;
    eprintln!("batch ({}):", plan.batch);
    bench.batch(&mut out)?;
    let restarts = bench.watch.restarts();
    if restarts > 0 {
        let _ = writeln!(out, "(the watch was restarted {restarts} times)\n");
    }
    for (node, d) in &mut bench.agents {
        if let Some(d) = d
            && !d.running()
        {
            bail!("agent {node} exited during the benchmark:\n{}", d.log());
        }
    }
    print!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-ready: {e:#}");
            ExitCode::FAILURE
        }
    }
}
