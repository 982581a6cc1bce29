//! A real Kubernetes control plane for tests: etcd and kube-apiserver as child processes on
//! loopback, the envtest model. The API server is the real one (CRD validation, CEL, status
//! subresource, server-side apply, `kubectl wait`); controllers and "nodes" are our own processes.
//!
//! The binaries come from `e2e/setup/controlplane.sh`, which builds them from pinned Go module
//! versions into `${STRAIT_CACHE:-/var/cache/strait}/bin`.
//!
//! Lifetime: every process this module starts runs in one process group, led by a small watchdog
//! shell. Dropping [`ControlPlane`] (also while a test panics) terminates the whole group and removes
//! the temporary directory. If the test process dies without unwinding (SIGKILL, abort), the
//! watchdog notices within a second and kills the group, so nothing outlives the test.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::kube::Kube;

/// How long etcd may take to answer `/health`.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long kube-apiserver may take to answer `/readyz` (slow on a busy 2-core machine).
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the processes get to exit after SIGTERM before they get SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a start is retried when a port picked as free was taken in the meantime.
const START_ATTEMPTS: usize = 3;

/// The directory holding the control-plane binaries: `${STRAIT_CACHE:-/var/cache/strait}/bin`.
pub fn bin_dir() -> PathBuf {
    crate::cmd::cache_root().join("bin")
}

/// Paths of the installed control-plane binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `kube-apiserver`
    pub kube_apiserver: PathBuf,
    /// `etcd`
    pub etcd: PathBuf,
    /// `kubectl`, the same version as the API server
    pub kubectl: PathBuf,
    /// `helm`
    pub helm: PathBuf,
}

impl Binaries {
    /// Finds the binaries in [`bin_dir`]. Fails, naming every missing one and the script that
    /// installs them, when any is absent: tests that need the control plane must fail, not skip.
    pub fn find() -> Result<Self> {
        let dir = bin_dir();
        let path = |name: &str| dir.join(name);
        let bins = Self {
            kube_apiserver: path("kube-apiserver"),
            etcd: path("etcd"),
            kubectl: path("kubectl"),
            helm: path("helm"),
        };
        let missing: Vec<String> = [&bins.kube_apiserver, &bins.etcd, &bins.kubectl, &bins.helm]
            .into_iter()
            .filter(|p| !is_executable(p))
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "control-plane binaries missing: {}. Run `e2e/setup/controlplane.sh` (as root, or with \
                 STRAIT_CACHE pointing at a writable directory) to build and install them",
                missing.join(", ")
            );
        }
        Ok(bins)
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running etcd + kube-apiserver pair on loopback, with an admin kubeconfig.
///
/// Stopped (process group killed, temp dir removed) on drop.
#[derive(Debug)]
pub struct ControlPlane {
    // Field order matters for drop: `group` stops the processes before `dir` is deleted.
    group: ProcessGroup,
    dir: TempDir,
    bins: Binaries,
    server_url: String,
    /// kubectl and helm with an admin kubeconfig (group `system:masters`) that verifies the
    /// server's self-signed certificate.
    kube: Kube,
    etcd_url: String,
    /// kube-apiserver's arguments while it is stopped by [`ControlPlane::stop_apiserver`].
    stopped_apiserver: Option<Vec<std::ffi::OsString>>,
}

/// The control plane's `kubectl` and `helm` (`cp.kubectl([...])`).
impl std::ops::Deref for ControlPlane {
    type Target = Kube;

    fn deref(&self) -> &Kube {
        &self.kube
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until `/readyz` is ok.
    pub fn start() -> Result<Self> {
        let bins = Binaries::find()?;
        let mut last_err = None;
        for attempt in 1..=START_ATTEMPTS {
            match Self::start_once(&bins) {
                Ok(cp) => return Ok(cp),
                Err(StartError::PortTaken(e)) if attempt < START_ATTEMPTS => {
                    eprintln!("control plane: a port was taken meanwhile, retrying: {e:#}");
                    last_err = Some(e);
                }
                Err(StartError::PortTaken(e) | StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("control plane did not start")))
    }

    fn start_once(bins: &Binaries) -> Result<Self, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("strait-controlplane-")
            .tempdir()
            .context("creating the control-plane temp dir")?;
        let root = dir.path();
        let mut group = ProcessGroup::new(root)?;

        // ---- etcd ----
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd = Command::new(&bins.etcd);
        etcd.arg("--name=strait-test")
            .arg(format!("--data-dir={}", root.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=strait-test={peer_url}"))
            // Test data is disposable; fsync on a shared disk only makes tests slow.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        group.spawn("etcd", etcd)?;
        wait_for_etcd(&mut group, etcd_client)?;

        // ---- credentials ----
        let token = random_hex(24)?;
        let token_file = root.join("tokens.csv");
        fs::write(
            &token_file,
            format!("{token},strait-admin,strait-admin-uid,\"system:masters\"\n"),
        )
        .context("writing the token file")?;
        let sa_key = root.join("sa.key");
        let sa_pub = root.join("sa.pub");
        run_quiet(
            Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&sa_key),
            "generating the service-account signing key with openssl",
        )?;
        run_quiet(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&sa_key)
                .arg("-out")
                .arg(&sa_pub),
            "extracting the service-account public key with openssl",
        )?;

        // ---- kube-apiserver ----
        let port = free_port()?;
        let cert_dir = root.join("apiserver-certs");
        let server_url = format!("https://127.0.0.1:{port}");
        let mut apiserver = Command::new(&bins.kube_apiserver);
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            // No kubelet or Service network here; a loopback advertise address is only valid
            // without the `kubernetes` Service endpoint reconciler.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--secure-port={port}"))
            // No --tls-cert-file: the server writes a self-signed CA and serving cert here.
            .arg(format!("--cert-dir={}", cert_dir.display()))
            .arg(format!("--token-auth-file={}", token_file.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg("--allow-privileged=true")
            .arg("--v=1");
        group.spawn("kube-apiserver", apiserver)?;

        // The serving certificate file holds the leaf and its self-signed CA.
        let ca_file = cert_dir.join("apiserver.crt");
        let kubeconfig = root.join("kubeconfig");
        let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
        while !ca_file.exists() {
            group.check_alive()?;
            if Instant::now() > deadline {
                return Err(group
                    .failure(format!(
                        "kube-apiserver did not write {} within {APISERVER_READY_TIMEOUT:?}",
                        ca_file.display()
                    ))
                    .into());
            }
            thread::sleep(Duration::from_millis(100));
        }
        fs::write(&kubeconfig, kubeconfig_yaml(&server_url, &ca_file, &token))
            .context("writing the kubeconfig")?;

        let helm_home = root.join("helm");
        let mut cp = Self {
            group,
            dir,
            kube: Kube::new(
                bins.kubectl.clone(),
                bins.helm.clone(),
                kubeconfig,
                helm_home,
            ),
            bins: bins.clone(),
            server_url,
            etcd_url,
            stopped_apiserver: None,
        };
        cp.wait_ready(deadline)?;
        Ok(cp)
    }

    fn wait_ready(&mut self, deadline: Instant) -> Result<(), StartError> {
        loop {
            self.group.check_alive()?;
            let out = self
                .kubectl_command(["get", "--raw", "/readyz", "--request-timeout=5s"])
                .output()
                .context("running kubectl")?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self
                    .group
                    .failure(format!(
                        "kube-apiserver /readyz not ok within {APISERVER_READY_TIMEOUT:?}; last answer: {}{}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                    .into());
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// etcd's client URL, `http://127.0.0.1:PORT`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The binaries this control plane runs with (use `kubectl`/`helm` from here).
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// A scratch directory that lives as long as the control plane.
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process ids of everything this control plane runs (watchdog, etcd, kube-apiserver).
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.group.watchdog.id())
            .chain(self.group.children.iter().map(|(_, c, _)| c.id()))
            .collect()
    }

    /// The last `lines` lines of each process's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.group.log_tail(lines)
    }

    /// The process id of the running kube-apiserver, if it runs.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.group
            .children
            .iter()
            .find(|(name, _, _)| name == "kube-apiserver")
            .map(|(_, c, _)| c.id())
    }

    /// Freezes kube-apiserver (SIGSTOP): its sockets stay open but nothing answers, the way a
    /// hung or partitioned API server looks to clients. Undo with [`Self::resume_apiserver`].
    ///
    /// # Errors
    /// The API server is not running or the signal failed.
    pub fn pause_apiserver(&self) -> Result<()> {
        self.signal_apiserver(Signal::SIGSTOP)
    }

    /// Lets a paused kube-apiserver run again (SIGCONT).
    ///
    /// # Errors
    /// The API server is not running or the signal failed.
    pub fn resume_apiserver(&self) -> Result<()> {
        self.signal_apiserver(Signal::SIGCONT)
    }

    fn signal_apiserver(&self, sig: Signal) -> Result<()> {
        let pid = self
            .apiserver_pid()
            .ok_or_else(|| anyhow!("kube-apiserver is not running"))?;
        let pid = i32::try_from(pid).context("pid out of range")?;
        nix::sys::signal::kill(Pid::from_raw(pid), sig)
            .with_context(|| format!("sending {sig} to kube-apiserver"))
    }

    /// Kills kube-apiserver (SIGKILL, no graceful shutdown: clients see connections reset, then
    /// refused) and waits for it to exit. etcd keeps running, so nothing stored is lost.
    /// [`Self::start_apiserver`] brings it back with the same arguments, port and certificate.
    ///
    /// # Errors
    /// The API server is not running, or its command line cannot be read.
    pub fn stop_apiserver(&mut self) -> Result<()> {
        let idx = self
            .group
            .children
            .iter()
            .position(|(name, _, _)| name == "kube-apiserver")
            .ok_or_else(|| anyhow!("kube-apiserver is not running"))?;
        let pid = self
            .group
            .children
            .get(idx)
            .map(|(_, c, _)| c.id())
            .ok_or_else(|| anyhow!("kube-apiserver is not running"))?;
        // Its own argv is the one source of truth for a restart with the same flags.
        let raw = fs::read(format!("/proc/{pid}/cmdline"))
            .context("reading kube-apiserver's command line")?;
        let argv: Vec<std::ffi::OsString> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(a).to_owned())
            .collect();
        let (_, mut child, log) = self.group.children.remove(idx);
        let _ = child.kill();
        child.wait().context("waiting for kube-apiserver to exit")?;
        // keep the first run's log next to the next one's
        let _ = fs::rename(&log, log.with_extension("log.stopped"));
        self.stopped_apiserver = Some(argv.into_iter().skip(1).collect());
        Ok(())
    }

    /// Starts kube-apiserver again after [`Self::stop_apiserver`], with the same arguments (so
    /// the same port, etcd and serving certificate), and waits until `/readyz` is ok.
    ///
    /// # Errors
    /// It was not stopped, or it did not become ready in time.
    pub fn start_apiserver(&mut self) -> Result<()> {
        let args = self
            .stopped_apiserver
            .take()
            .ok_or_else(|| anyhow!("kube-apiserver was not stopped by stop_apiserver"))?;
        let mut cmd = Command::new(&self.bins.kube_apiserver);
        cmd.args(&args);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.group.spawn("kube-apiserver", cmd)?;
            match self.wait_ready(Instant::now() + APISERVER_READY_TIMEOUT) {
                Ok(()) => return Ok(()),
                // The port can linger for a moment after SIGKILL; a second try then succeeds.
                Err(StartError::PortTaken(e)) if attempt < START_ATTEMPTS => {
                    eprintln!("kube-apiserver restart: port still taken, retrying: {e:#}");
                    if let Some(i) = self
                        .group
                        .children
                        .iter()
                        .position(|(name, _, _)| name == "kube-apiserver")
                    {
                        let (_, mut c, _) = self.group.children.remove(i);
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    thread::sleep(Duration::from_secs(1));
                    cmd = Command::new(&self.bins.kube_apiserver);
                    cmd.args(&args);
                }
                Err(StartError::PortTaken(e) | StartError::Other(e)) => return Err(e),
            }
        }
    }
}

/// Why one start attempt failed.
enum StartError {
    /// A port picked as free was bound by someone else before our process got it: retry.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        let text = format!("{e:#}");
        if text.contains("address already in use") {
            Self::PortTaken(e)
        } else {
            Self::Other(e)
        }
    }
}

/// Processes in one process group, led by a watchdog shell that kills the group if the test
/// process goes away without running our `Drop`.
#[derive(Debug)]
struct ProcessGroup {
    pgid: Pid,
    watchdog: Child,
    children: Vec<(String, Child, PathBuf)>,
    log_dir: PathBuf,
}

impl ProcessGroup {
    fn new(root: &Path) -> Result<Self> {
        let me = std::process::id();
        // Polls our pid with `kill -0`; once we are gone (killed without unwinding, so no Drop),
        // kills every other member of its group and removes the temp dir ($1).
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             kill -KILL $(pgrep -g $$ | grep -vx $$) 2>/dev/null; sleep 1; rm -rf -- \"$1\""
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("strait-controlplane-watchdog")
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("spawning the watchdog shell")?;
        let pgid = i32::try_from(watchdog.id())
            .map(Pid::from_raw)
            .context("watchdog pid out of range")?;
        Ok(Self {
            pgid,
            watchdog,
            children: Vec::new(),
            log_dir: root.to_path_buf(),
        })
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<()> {
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log2 = log.try_clone().context("cloning a log file handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(self.pgid.as_raw())
            .spawn()
            .with_context(|| format!("spawning {name} ({:?})", cmd.get_program()))?;
        self.children.push((name.to_owned(), child, log_path));
        Ok(())
    }

    /// Fails with the process's log when one of the processes has exited.
    fn check_alive(&mut self) -> Result<()> {
        let mut dead = None;
        for (name, child, _) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                dead = Some(format!("{name} exited early ({status})"));
                break;
            }
        }
        match dead {
            Some(msg) => Err(self.failure(msg)),
            None => Ok(()),
        }
    }

    fn failure(&self, msg: String) -> anyhow::Error {
        anyhow!("{msg}\n{}", self.log_tail(25))
    }

    fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (name, _, path) in &self.children {
            let text = fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = all.get(all.len().saturating_sub(lines)..).unwrap_or(&[]);
            let _ = writeln!(out, "--- last {} lines of {name} log ---", tail.len());
            for line in tail {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    fn all_exited(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|(_, c, _)| matches!(c.try_wait(), Ok(Some(_))))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "control plane stopped while panicking; process logs:\n{}",
                self.log_tail(40)
            );
        }
        // Ask politely (etcd and the API server shut down cleanly on SIGTERM), then insist.
        let _ = killpg(self.pgid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while !self.all_exited() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(self.pgid, Signal::SIGKILL);
        for (_, child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a port")?;
    Ok(listener
        .local_addr()
        .context("reading the bound port")?
        .port())
}

fn wait_for_etcd(group: &mut ProcessGroup, port: u16) -> Result<(), StartError> {
    let deadline = Instant::now() + ETCD_READY_TIMEOUT;
    loop {
        group.check_alive()?;
        if etcd_healthy(port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(group
                .failure(format!(
                    "etcd on 127.0.0.1:{port} not healthy within {ETCD_READY_TIMEOUT:?}"
                ))
                .into());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /health` on etcd's plain-HTTP client port.
fn etcd_healthy(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.take(64 * 1024).read_to_string(&mut response);
    response.starts_with("HTTP/1.") && response.contains("\"health\":\"true\"")
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

fn kubeconfig_yaml(server: &str, ca_file: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: strait-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: strait-admin
  user:
    token: {token}
contexts:
- name: strait-test
  context:
    cluster: strait-test
    user: strait-admin
current-context: strait-test
",
        ca = ca_file.display()
    )
}

fn run_quiet(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
