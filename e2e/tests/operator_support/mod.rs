//! Shared pieces of the operator tests: the operator binary as a process, the stand-in agent
//! heartbeat, polling, and a tiny HTTP client for /metrics.
//!
//! The operator binary is built with `cargo build -p strait-operator` the first time a test asks
//! for it (a no-op when it is current), then found in `$CARGO_TARGET_DIR` or `<workspace>/target`.
//! A build failure or a missing binary fails the test with a message; nothing is skipped.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use strait_e2e::controlplane::ControlPlane;

/// The operator's namespace in these tests.
pub const NS: &str = "strait-system";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Builds (once per test process) and returns `target/debug/strait-operator`.
pub fn operator_binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = Command::new(&cargo)
            .current_dir(workspace())
            .args(["build", "-p", "strait-operator", "--bin", "strait-operator"])
            .output()
            .map_err(|e| format!("could not run {cargo}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`cargo build -p strait-operator` failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace().join("target"), PathBuf::from);
        let bin = target.join("debug/strait-operator");
        if !bin.is_file() {
            return Err(format!(
                "the operator binary is missing at {} after `cargo build -p strait-operator`",
                bin.display()
            ));
        }
        Ok(bin)
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One `strait-operator run` process. Killed on drop; also killed by its watchdog shell if the
/// test process dies without unwinding.
#[derive(Debug)]
pub struct Operator {
    child: Child,
    pub log: PathBuf,
    pub metrics_port: u16,
    pub health_port: u16,
    pub name: String,
}

impl Operator {
    /// Starts the operator against `cp` with `extra` arguments.
    pub fn start(cp: &ControlPlane, name: &str, extra: &[&str]) -> Self {
        Self::start_with_kubeconfig(cp, name, cp.kubeconfig_path(), extra)
    }

    /// Starts the operator with another kubeconfig (e.g. a ServiceAccount's).
    pub fn start_with_kubeconfig(
        cp: &ControlPlane,
        name: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Self {
        let bin = operator_binary();
        let (metrics_port, health_port) = (free_port(), free_port());
        let log = cp.scratch_dir().join(format!("operator-{name}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        // The watchdog kills the operator when the test process (its parent) is gone.
        let script = r#""$@" & c=$!; p=$PPID
            while kill -0 "$c" 2>/dev/null; do
              kill -0 "$p" 2>/dev/null || { kill -9 "$c"; exit 1; }
              sleep 1
            done
            wait "$c""#;
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("operator-watchdog")
            .arg(&bin)
            .arg("run")
            .args(["--namespace", NS])
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg(format!("--health-addr=127.0.0.1:{health_port}"))
            .arg(format!("--identity={name}"))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn,strait_operator=debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Self {
            child,
            log,
            metrics_port,
            health_port,
            name: name.to_owned(),
        }
    }

    /// SIGKILL, no goodbye: the leader Lease is not released.
    pub fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` from the metrics (or health) server.
    pub fn get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        http_get(port, path)
    }

    /// The metrics text.
    pub fn metrics(&self) -> String {
        self.get(self.metrics_port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- operator {} log (tail) ----\n{}",
                self.name,
                tail(&self.log_text(), 60)
            );
        }
        self.kill();
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A minimal HTTP/1.1 GET: status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// Polls `f` every 200 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// `kubectl get ipsectunnel NAME -o jsonpath=PATH`, empty on error.
pub fn tunnel_field(cp: &ControlPlane, name: &str, jsonpath: &str) -> String {
    cp.kubectl([
        "get",
        "ipsectunnel",
        name,
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
    .unwrap_or_default()
}

/// The Ready condition as `status/reason`.
pub fn ready(cp: &ControlPlane, name: &str) -> String {
    tunnel_field(
        cp,
        name,
        r#"{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}"#,
    )
}

/// Applies the generated CRD, the operator namespace, and waits until tunnels can be created.
pub fn install_crd(cp: &ControlPlane) {
    let crd = workspace().join("crds/ipsectunnel.yaml");
    cp.kubectl(["apply", "--server-side", "-f", crd.to_str().unwrap()])
        .unwrap();
    cp.kubectl([
        "wait",
        "--for=condition=Established",
        "crd/ipsectunnels.strait.dev",
        "--timeout=60s",
    ])
    .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the IPsecTunnel kind in discovery",
        || cp.kubectl(["get", "ipsectunnels"]).ok(),
    );
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"),
    )
    .unwrap();
}

/// Creates a Node object (there is no kubelet: it is only an API object) with `labels`.
pub fn node(cp: &ControlPlane, name: &str, labels: &[(&str, &str)]) {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n{labels}"),
    )
    .unwrap();
}

/// A PSK tunnel whose gateways are the nodes labelled `label=true`.
pub fn tunnel_yaml(name: &str, label: &str) -> String {
    format!(
        r#"apiVersion: strait.dev/v1alpha1
kind: IPsecTunnel
metadata:
  name: {name}
spec:
  gateway:
    nodeSelector:
      matchLabels:
        {label}: "true"
  local: {{id: dc1.example.com, subnets: [198.51.100.0/24]}}
  remote: {{id: dc2.example.com, address: 192.0.2.2, subnets: [203.0.113.0/24]}}
  auth:
    psk: {{secretRef: {{name: dc2-psk, key: psk}}}}
"#
    )
}

/// Current UTC time as a Kubernetes MicroTime string.
pub fn micro_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Writes the heartbeat Lease `strait-agent-<node>` as the agent would: renewTime now.
pub fn renew_lease(cp: &ControlPlane, node: &str, duration_secs: u32) {
    let yaml = format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: strait-agent-{node}\n  namespace: {NS}\n\
         spec:\n  holderIdentity: {node}\n  leaseDurationSeconds: {duration_secs}\n  renewTime: \"{}\"\n",
        micro_now()
    );
    cp.kubectl_stdin(
        [
            "apply",
            "--server-side",
            &format!("--field-manager=strait-agent/{node}"),
            "-f",
            "-",
        ],
        &yaml,
    )
    .unwrap();
}

/// STAND-IN for the agent's heartbeat until the agent's cluster mode lands: a thread renewing
/// the Lease `strait-agent-<node>` every second, as the agent will. Dropping (or `stop`) stops
/// renewing, so the Lease then expires like a dead agent's.
#[derive(Debug)]
pub struct StandInHeartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    last_renewal: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl StandInHeartbeat {
    pub fn start(cp: &ControlPlane, node: &str, duration_secs: u32) -> Self {
        renew_lease(cp, node, duration_secs);
        let stop = Arc::new(AtomicBool::new(false));
        let last_renewal = Arc::new(std::sync::Mutex::new(Some(Instant::now())));
        let kubeconfig = cp.kubeconfig_path().to_path_buf();
        let kubectl = cp.binaries().kubectl.clone();
        let (s, lr, node) = (stop.clone(), last_renewal.clone(), node.to_owned());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_secs(1));
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let yaml = format!(
                    "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: strait-agent-{node}\n  namespace: {NS}\n\
                     spec:\n  holderIdentity: {node}\n  leaseDurationSeconds: {duration_secs}\n  renewTime: \"{}\"\n",
                    micro_now()
                );
                let mut child = Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "apply",
                        "--server-side",
                        &format!("--field-manager=strait-agent/{node}"),
                        "-f",
                        "-",
                    ])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let _ = child.stdin.take().unwrap().write_all(yaml.as_bytes());
                if child.wait().is_ok_and(|s| s.success()) {
                    *lr.lock().unwrap() = Some(Instant::now());
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
            last_renewal,
        }
    }

    /// Stops renewing; returns when the last renewal happened.
    pub fn stop(&mut self) -> Instant {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.last_renewal
            .lock()
            .unwrap()
            .unwrap_or_else(Instant::now)
    }
}

impl Drop for StandInHeartbeat {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Applies `status.gateways[]` entry YAML (indented list item) as the agent on `node` would:
/// server-side apply of the status subresource under the field manager `strait-agent/<node>`.
pub fn agent_report(cp: &ControlPlane, tunnel: &str, node: &str, entry_fields: &str) {
    let yaml = format!(
        "apiVersion: strait.dev/v1alpha1\nkind: IPsecTunnel\nmetadata:\n  name: {tunnel}\nstatus:\n  gateways:\n  - node: {node}\n{entry_fields}"
    );
    cp.kubectl_stdin(
        [
            "apply",
            "--server-side",
            &format!("--field-manager=strait-agent/{node}"),
            "--subresource=status",
            "-f",
            "-",
        ],
        &yaml,
    )
    .unwrap_or_else(|e| panic!("agent status apply failed: {e:#}"));
}

/// Reasons of the Events about `tunnel` (cluster-scoped objects' Events live in `default`).
pub fn event_reasons(cp: &ControlPlane, tunnel: &str) -> Vec<String> {
    cp.kubectl([
        "get",
        "events.events.k8s.io",
        "-n",
        "default",
        "-o",
        &format!(
            r#"jsonpath={{range .items[?(@.regarding.name=="{tunnel}")]}}{{.reason}}{{"\n"}}{{end}}"#
        ),
    ])
    .unwrap_or_default()
    .lines()
    .map(str::to_owned)
    .collect()
}

/// The notes of the Events about `tunnel` with `reason`.
pub fn event_notes(cp: &ControlPlane, tunnel: &str, reason: &str) -> String {
    cp.kubectl([
        "get",
        "events.events.k8s.io",
        "-n",
        "default",
        "-o",
        &format!(
            r#"jsonpath={{range .items[?(@.regarding.name=="{tunnel}")]}}{{.reason}}: {{.note}}{{"\n"}}{{end}}"#
        ),
    ])
    .unwrap_or_default()
    .lines()
    .filter(|l| l.starts_with(&format!("{reason}:")))
    .collect::<Vec<_>>()
    .join("\n")
}
