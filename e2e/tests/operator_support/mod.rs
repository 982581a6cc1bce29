//! Shared pieces of the operator tests: operator replicas, the stand-in agent heartbeat, the
//! agent's status reports, polling and reading the tunnel's status and Events.
//!
//! The operator binary is found (built if need be) by [`strait_e2e::product::binary`]; a build
//! failure or a missing binary fails the test with a message; nothing is skipped.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use strait_e2e::controlplane::ControlPlane;
pub use strait_e2e::product::Daemon;
use strait_e2e::tunnel::{End, TunnelYaml};

/// The operator's namespace in these tests.
pub const NS: &str = "strait-system";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// One replica of the operator with the admin's identity ([`Daemon::operator_replica`]).
pub fn operator(cp: &ControlPlane, name: &str, extra: &[&str]) -> Daemon {
    operator_as(cp, name, cp.kubeconfig_path(), extra)
}

/// One replica of the operator with `kubeconfig`'s identity (e.g. a ServiceAccount's).
pub fn operator_as(cp: &ControlPlane, name: &str, kubeconfig: &Path, extra: &[&str]) -> Daemon {
    Daemon::operator_replica(cp, name, kubeconfig, extra)
        .unwrap_or_else(|e| panic!("starting operator {name}: {e:#}"))
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
    strait_e2e::product::wait_crd(cp, 60).unwrap();
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

/// `kubectl apply` of `yaml`.
pub fn apply(cp: &ControlPlane, yaml: &str) {
    cp.kubectl_stdin(["apply", "-f", "-"], yaml)
        .unwrap_or_else(|e| panic!("kubectl apply: {e:#}"));
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
    TunnelYaml {
        gateway_label: Some(label.into()),
        ..TunnelYaml::new(
            name,
            End::new("dc1.example.com", "", "198.51.100.0/24"),
            End::new("dc2.example.com", "192.0.2.2", "203.0.113.0/24"),
        )
        .psk("dc2-psk")
    }
    .render()
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

/// kubectl's arguments to apply stdin to the status subresource as the agent on `node` does
/// (server-side, field manager `strait-agent/<node>`).
pub fn agent_status_apply(node: &str) -> [String; 6] {
    [
        "apply".into(),
        "--server-side".into(),
        format!("--field-manager=strait-agent/{node}"),
        "--subresource=status".into(),
        "-f".into(),
        "-".into(),
    ]
}

/// Applies `status.gateways[]` entry YAML (indented list item) as the agent on `node` would:
/// server-side apply of the status subresource under the field manager `strait-agent/<node>`.
pub fn agent_report(cp: &ControlPlane, tunnel: &str, node: &str, entry_fields: &str) {
    let yaml = format!(
        "apiVersion: strait.dev/v1alpha1\nkind: IPsecTunnel\nmetadata:\n  name: {tunnel}\nstatus:\n  gateways:\n  - node: {node}\n{entry_fields}"
    );
    cp.kubectl_stdin(agent_status_apply(node), &yaml)
        .unwrap_or_else(|e| panic!("agent status apply failed: {e:#}"));
}

/// One line per Event about `tunnel`, as `fields` (a jsonpath template) renders it
/// (cluster-scoped objects' Events live in `default`).
fn event_lines(cp: &ControlPlane, tunnel: &str, fields: &str) -> Vec<String> {
    cp.kubectl([
        "get",
        "events.events.k8s.io",
        "-n",
        "default",
        "-o",
        &format!(
            r#"jsonpath={{range .items[?(@.regarding.name=="{tunnel}")]}}{fields}{{"\n"}}{{end}}"#
        ),
    ])
    .unwrap_or_default()
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Reasons of the Events about `tunnel`.
pub fn event_reasons(cp: &ControlPlane, tunnel: &str) -> Vec<String> {
    event_lines(cp, tunnel, "{.reason}")
}

/// The notes of the Events about `tunnel` with `reason`.
pub fn event_notes(cp: &ControlPlane, tunnel: &str, reason: &str) -> String {
    event_lines(cp, tunnel, "{.reason}: {.note}")
        .into_iter()
        .filter(|l| l.starts_with(&format!("{reason}:")))
        .collect::<Vec<_>>()
        .join("\n")
}
