//! The product's own processes against a [`ControlPlane`]: `strait-operator run` and
//! `strait-agent cluster` (the latter inside a network namespace acting as a node, reaching the
//! API server through an [`apiforward::PortForward`]). Each runs under a watchdog shell that
//! kills it if this process dies without unwinding; dropping the handle kills it too.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::apiforward::PortForward;
use crate::controlplane::ControlPlane;

/// The operator's namespace used by the tests and the demo.
pub const NAMESPACE: &str = "strait-system";

/// The built product binary `name` (`strait-agent`, `strait-operator` or `kubectl-strait`).
///
/// `$STRAIT_AGENT_BIN` / `$STRAIT_OPERATOR_BIN` when set: a build made beforehand (the VM tier's
/// stripped copy, the demo's release build). Otherwise all three are built once per process with
/// `cargo build -p strait-agent -p strait-operator -p kubectl-strait` (a no-op when current; the same command as
/// e2e/test.sh, so features unify the same way and nothing is rebuilt), and the binary is found
/// in `$CARGO_TARGET_DIR` or `<workspace>/target`. A bare `cargo test -p strait-e2e` works too.
///
/// # Errors
/// The variable names no file, cargo cannot run, or the build fails (its stderr is in the error).
pub fn binary(name: &str) -> Result<PathBuf> {
    let var = format!("{}_BIN", name.replace('-', "_").to_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{var}={} does not exist", p.display());
    }
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(build_products)
        .clone()
        .map_err(|e| anyhow!(e))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let p = target.join("debug").join(name);
    if p.is_file() {
        Ok(p)
    } else {
        bail!("{} is missing after `cargo build`", p.display())
    }
}

/// What e2e/test.sh's build step and the VM tier run too (the same selection, so features unify
/// the same way and nothing is compiled twice).
const BUILD_ARGS: [&str; 7] = [
    "build",
    "-p",
    "strait-agent",
    "-p",
    "strait-operator",
    "-p",
    "kubectl-strait",
];

fn build_products() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(&cargo)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(BUILD_ARGS)
        .output()
        .map_err(|e| format!("running {cargo} build: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`cargo {}` failed:\n{}",
            BUILD_ARGS.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The watchdog: runs "$@", kills it when our process (its parent) is gone.
const WATCHDOG: &str = r#""$@" & c=$!; p=$PPID
trap 'kill -TERM "$c" 2>/dev/null; wait "$c"; exit $?' TERM
while kill -0 "$c" 2>/dev/null; do
  kill -0 "$p" 2>/dev/null || { kill -9 "$c"; exit 1; }
  sleep 1 & wait $!
done
wait "$c""#;

/// One product process (with its watchdog), logging to a file.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    _forward: Option<PortForward>,
    /// An operator replica's metrics and health ports (see [`Daemon::operator_replica`]).
    ports: Option<(u16, u16)>,
}

impl Daemon {
    fn spawn(
        name: &str,
        ns: Option<&str>,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
        forward: Option<PortForward>,
    ) -> Result<Self> {
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "bash"]);
                c
            }
            None => Command::new("bash"),
        };
        c.arg("-c")
            .arg(WATCHDOG)
            .arg(format!("{name}-watchdog"))
            .arg(program)
            .args(args);
        c.env("RUST_LOG", "info,kube=warn");
        // after the default: an entry may override RUST_LOG
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
            _forward: forward,
            ports: None,
        })
    }

    /// `strait-operator run --namespace strait-system` in the root namespace, with `extra`.
    ///
    /// # Errors
    /// The binary is missing or cannot start.
    pub fn operator(cp: &ControlPlane, extra: &[&str]) -> Result<Self> {
        let bin = binary("strait-operator")?;
        let mut args: Vec<String> = [
            "run",
            "--namespace",
            NAMESPACE,
            "--metrics-addr=127.0.0.1:0",
            "--health-addr=127.0.0.1:0",
            "--manage-agent-daemonset=false",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::spawn(
            "operator",
            None,
            &bin,
            &args,
            &[("KUBECONFIG", &cp.kubeconfig_path().to_string_lossy())],
            cp.scratch_dir().join("operator.log"),
            None,
        )
    }

    /// One named replica of `strait-operator run`, as the operator tests run several: identity
    /// `name`, its own metrics and health ports ([`Daemon::metrics`], [`Daemon::health`]), debug
    /// logs, the identity of `kubeconfig`, and the product's defaults otherwise (it manages the
    /// agent DaemonSet), with `extra`.
    ///
    /// # Errors
    /// The binary is missing or cannot start.
    pub fn operator_replica(
        cp: &ControlPlane,
        name: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let bin = binary("strait-operator")?;
        let (metrics, health) = (free_port()?, free_port()?);
        let mut args: Vec<String> = vec![
            "run".into(),
            "--namespace".into(),
            NAMESPACE.into(),
            format!("--metrics-addr=127.0.0.1:{metrics}"),
            format!("--health-addr=127.0.0.1:{health}"),
            format!("--identity={name}"),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut d = Self::spawn(
            &format!("operator {name}"),
            None,
            &bin,
            &args,
            &[
                ("KUBECONFIG", &kubeconfig.to_string_lossy()),
                ("RUST_LOG", "info,kube=warn,strait_operator=debug"),
            ],
            cp.scratch_dir().join(format!("operator-{name}.log")),
            None,
        )?;
        d.ports = Some((metrics, health));
        Ok(d)
    }

    /// An operator replica's metrics port on the root namespace's loopback, if it has one.
    pub fn metrics_port(&self) -> Option<u16> {
        self.ports.map(|(m, _)| m)
    }

    /// An operator replica's `/metrics` text (empty when it does not answer).
    pub fn metrics(&self) -> String {
        self.ports
            .and_then(|(m, _)| http_get(m, "/metrics"))
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// GET `path` from an operator replica's health server: status code and body.
    pub fn health(&self, path: &str) -> Option<(u16, String)> {
        self.ports.and_then(|(_, h)| http_get(h, path))
    }

    /// `strait-agent cluster --node NODE` inside namespace `ns`, reaching the API server at the
    /// same `127.0.0.1:PORT` through a port forward, with `extra` arguments.
    ///
    /// # Errors
    /// The binary is missing, the forward cannot be set up, or the process cannot start.
    pub fn cluster_agent(cp: &ControlPlane, ns: &str, node: &str, extra: &[&str]) -> Result<Self> {
        Self::cluster_agent_as(cp, ns, node, extra, cp.kubeconfig_path())
    }

    /// [`Daemon::cluster_agent`] with another identity: `kubeconfig` (e.g. a ServiceAccount
    /// token's) instead of the admin's.
    ///
    /// # Errors
    /// As [`Daemon::cluster_agent`].
    pub fn cluster_agent_as(
        cp: &ControlPlane,
        ns: &str,
        node: &str,
        extra: &[&str],
        kubeconfig: &Path,
    ) -> Result<Self> {
        let sock = cp.scratch_dir().join(format!("agent-{node}.sock"));
        let mut args: Vec<String> = vec![
            "cluster".into(),
            "--node".into(),
            node.into(),
            "--namespace".into(),
            NAMESPACE.into(),
            "--status-socket".into(),
            sock.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::agent_in(cp, ns, &format!("agent-{node}"), &args, kubeconfig)
    }

    /// `strait-agent route` for `node` inside the namespace `ns`, with the admin's kubeconfig
    /// (the API server forwarded into the namespace).
    ///
    /// # Errors
    /// As [`Daemon::cluster_agent`].
    pub fn route_agent(cp: &ControlPlane, ns: &str, node: &str, extra: &[&str]) -> Result<Self> {
        let mut args: Vec<String> = vec!["route".into(), "--node".into(), node.into()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::agent_in(
            cp,
            ns,
            &format!("route-{node}"),
            &args,
            cp.kubeconfig_path(),
        )
    }

    /// `strait-agent ARGS` in `ns`, logging to `<name>.log` in the scratch directory (a
    /// restarted one keeps the earlier log as `.log.previous`).
    fn agent_in(
        cp: &ControlPlane,
        ns: &str,
        name: &str,
        args: &[String],
        kubeconfig: &Path,
    ) -> Result<Self> {
        let bin = binary("strait-agent")?;
        let api: std::net::SocketAddr = cp
            .server_url()
            .trim_start_matches("https://")
            .parse()
            .with_context(|| format!("API server URL {}", cp.server_url()))?;
        let forward = PortForward::start(ns, api)?;
        let log = cp.scratch_dir().join(format!("{name}.log"));
        // append: a restarted agent keeps the earlier log above
        let earlier = fs::read_to_string(&log).unwrap_or_default();
        let d = Self::spawn(
            name,
            Some(ns),
            &bin,
            args,
            &[("KUBECONFIG", &kubeconfig.to_string_lossy())],
            log.clone(),
            Some(forward),
        )?;
        if !earlier.is_empty() {
            let _ = fs::write(log.with_extension("log.previous"), earlier);
        }
        Ok(d)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn pgid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .map(Pid::from_raw)
    }

    /// SIGKILL to the process and its watchdog: no goodbye (no DELETE, Lease not released).
    pub fn kill(&mut self) {
        if let Some(pg) = self.pgid() {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // the node's port forward goes with it (a restarted agent brings its own)
        self._forward = None;
    }

    /// SIGTERM, then the exit status within `grace` (SIGKILL after it).
    ///
    /// # Errors
    /// It did not stop in time.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let pg = self
            .pgid()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let _ = killpg(pg, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.child = None;
                self._forward = None;
                return Ok(st);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} ignored SIGTERM for {grace:?}", self.name);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- {} log (tail) ----\n{}",
                self.name,
                lines
                    .get(lines.len().saturating_sub(60)..)
                    .unwrap_or(&[])
                    .join("\n")
            );
        }
        self.kill();
    }
}

/// A free loopback port.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A minimal HTTP/1.1 GET to `127.0.0.1:port`: status code and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
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

/// A kubeconfig for ServiceAccount `sa` in `namespace`: the admin kubeconfig with its token
/// swapped for one from the TokenRequest API, written to the control plane's scratch directory.
/// Whatever runs with it has exactly that ServiceAccount's RBAC.
///
/// # Errors
/// The token request fails, or the admin kubeconfig has no token line to swap.
pub fn service_account_kubeconfig(cp: &ControlPlane, namespace: &str, sa: &str) -> Result<PathBuf> {
    let token = cp.kubectl(["create", "token", sa, "-n", namespace, "--duration=1h"])?;
    let admin = fs::read_to_string(cp.kubeconfig_path()).context("reading the admin kubeconfig")?;
    let mut swapped = false;
    let text: Vec<String> = admin
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("token:") {
                swapped = true;
                format!("    token: {}", token.trim())
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !swapped {
        bail!("no token line in the admin kubeconfig to swap");
    }
    let path = cp
        .scratch_dir()
        .join(format!("{namespace}-{sa}.kubeconfig"));
    fs::write(&path, text.join("\n")).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The generated CRD (`crds/ipsectunnel.yaml`), applied server-side; returns once the API server
/// serves the kind. Then the operator's namespace.
///
/// # Errors
/// kubectl fails, or the CRD is not Established within 60 s.
pub fn install_crd(cp: &ControlPlane) -> Result<String> {
    let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/ipsectunnel.yaml");
    let out = cp.kubectl(["apply", "--server-side", "-f", crd])?;
    wait_crd(cp, 60)?;
    cp.kubectl(["create", "namespace", NAMESPACE])?;
    Ok(out)
}

/// Waits up to `secs` seconds until the API server serves the IPsecTunnel CRD (`Established`).
///
/// # Errors
/// kubectl fails or it is not Established in time.
pub fn wait_crd(cp: &ControlPlane, secs: u32) -> Result<String> {
    cp.kubectl([
        "wait",
        "--for=condition=Established",
        "crd/ipsectunnels.strait.dev",
        &format!("--timeout={secs}s"),
    ])
}

/// A Node object `name` labelled `strait.dev/gateway=true` (there is no kubelet: the object is
/// all the operator needs to elect it).
///
/// # Errors
/// kubectl fails.
pub fn gateway_node(cp: &ControlPlane, name: &str) -> Result<()> {
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{strait.dev/gateway: \"true\"}}\n"
        ),
    )?;
    Ok(())
}
