//! The real `strait-agent` binary in a network namespace, in standalone mode: config and secrets
//! written to a temporary directory, status read through `strait-agent status --json`, and the
//! process killed (and the directory removed) on drop, even when the test fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::cmd;
use crate::netns;

/// A secret file: `DIR/<name>/<key>` holding `value`.
#[derive(Debug, Clone)]
pub struct SecretFile {
    /// The Secret's name.
    pub name: String,
    /// The key within it.
    pub key: String,
    /// The content.
    pub value: String,
}

impl SecretFile {
    /// The Secrets of certificate authentication, as [`CERT_AUTH_YAML`] names them: `tls`
    /// (`tls.crt`, `tls.key`: our certificate and key) and `ca` (`ca.crt`: the trust anchor).
    ///
    /// # Errors
    /// A file cannot be read.
    pub fn certificate(own: &crate::strongswan::CertFiles, ca: &Path) -> Result<Vec<Self>> {
        let file = |name: &str, key: &str, path: &Path| -> Result<Self> {
            Ok(Self {
                name: name.into(),
                key: key.into(),
                value: std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            })
        };
        Ok(vec![
            file("tls", "tls.crt", &own.cert)?,
            file("tls", "tls.key", &own.key)?,
            file("ca", "ca.crt", ca)?,
        ])
    }
}

/// `spec.auth` for certificate authentication with the Secrets of [`SecretFile::certificate`]
/// (its lines indented for `auth:`'s children).
pub const CERT_AUTH_YAML: &str =
    "certificate: {secretRef: {name: tls}}\n    ca: {secretRef: {name: ca, key: ca.crt}}";

/// `BIN standalone` with its config, Secrets and status socket in `root` (`tunnels.yaml`,
/// `secrets/`, `agent.sock`), `--dataplane dataplane` and `--node node`.
pub fn standalone_args(bin: &Path, root: &Path, dataplane: &str, node: &str) -> Vec<String> {
    vec![
        bin.display().to_string(),
        "standalone".into(),
        "--config".into(),
        root.join("tunnels.yaml").display().to_string(),
        "--secrets-dir".into(),
        root.join("secrets").display().to_string(),
        "--dataplane".into(),
        dataplane.into(),
        "--status-socket".into(),
        root.join("agent.sock").display().to_string(),
        "--node".into(),
        node.into(),
    ]
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    ns: String,
    dir: TempDir,
    child: Option<Child>,
    bin: PathBuf,
}

impl Agent {
    /// Writes `config` (IPsecTunnel YAML) and `secrets`, starts
    /// `strait-agent standalone --dataplane DATAPLANE` in `ns` with `extra` arguments, and waits
    /// until its status socket answers.
    ///
    /// # Errors
    /// The binary is missing, or the agent exited or did not answer within 10 s.
    pub fn start(
        ns: &str,
        config: &str,
        secrets: &[SecretFile],
        dataplane: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let bin = crate::product::binary("strait-agent")?;
        Self::start_binary(bin, ns, config, secrets, dataplane, extra)
    }

    /// [`Agent::start`] with the binary at `bin` (e.g. one a Debian package installed).
    ///
    /// # Errors
    /// As [`Agent::start`].
    pub fn start_binary(
        bin: PathBuf,
        ns: &str,
        config: &str,
        secrets: &[SecretFile],
        dataplane: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("strait-agent-{}-", std::process::id()))
            .tempdir()
            .context("creating agent directory")?;
        let root = dir.path();
        fs::write(root.join("tunnels.yaml"), config)?;
        for s in secrets {
            let d = root.join("secrets").join(&s.name);
            fs::create_dir_all(&d)?;
            fs::write(d.join(&s.key), &s.value)?;
        }
        fs::create_dir_all(root.join("secrets"))?;
        let log = fs::File::create(root.join("agent.log"))?;
        let mut args = standalone_args(&bin, root, dataplane, "test-node");
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut c = netns::exec_command(ns, &args);
        c.env("RUST_LOG", "info,strait_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = c
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::display(&c)))?;
        let mut agent = Self {
            ns: ns.to_owned(),
            dir,
            child: Some(child),
            bin,
        };
        // `STRAIT_AGENT_START_TIMEOUT_SECS` (default 10): the kernel VM under TCG needs longer
        let secs = std::env::var("STRAIT_AGENT_START_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10u64);
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = agent.try_wait()? {
                bail!(
                    "strait-agent exited during start-up ({st}):\n{}",
                    agent.log()
                );
            }
            if agent.status_json().is_ok() {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!(
                    "strait-agent did not serve status within {secs} s:\n{}",
                    agent.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its working directory (config, secrets, log, socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The status socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Whether it has exited, and how.
    ///
    /// # Errors
    /// `wait` failed.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    /// `strait-agent status --json`, raw.
    ///
    /// # Errors
    /// The command failed.
    pub fn status_json(&self) -> Result<String> {
        let sock = self.socket().display().to_string();
        let bin = self.bin.display().to_string();
        let out = cmd::check(std::process::Command::new(&bin).args([
            "status",
            "--json",
            "--status-socket",
            &sock,
        ]))?;
        Ok(out.stdout)
    }

    /// `strait-agent status` (text).
    ///
    /// # Errors
    /// The command failed.
    pub fn status_text(&self) -> Result<String> {
        let sock = self.socket().display().to_string();
        let bin = self.bin.display().to_string();
        let out = cmd::check(std::process::Command::new(&bin).args([
            "status",
            "--status-socket",
            &sock,
        ]))?;
        Ok(out.stdout)
    }

    /// The status of tunnel `name`, parsed.
    ///
    /// # Errors
    /// No status, or no such tunnel.
    pub fn tunnel(&self, name: &str) -> Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&self.status_json()?)?;
        v.get("tunnels")
            .and_then(|t| t.as_array())
            .and_then(|ts| ts.iter().find(|t| t["name"] == name))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no tunnel {name:?} in status: {v}"))
    }

    /// Polls tunnel `name` until `pred` holds.
    ///
    /// # Errors
    /// Timeout (with the last status and the agent's log).
    pub fn wait_tunnel(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.tunnel(name);
            if let Ok(t) = &last
                && pred(t)
            {
                return Ok(t.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "tunnel {name}: condition not met after {timeout:?}; last status: {}\n--- agent log:\n{}",
                    last.map(|v| v.to_string())
                        .unwrap_or_else(|e| e.to_string()),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends a signal.
    ///
    /// # Errors
    /// The process is gone.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = self
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| anyhow::anyhow!("agent not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)?;
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` for the exit status.
    ///
    /// # Errors
    /// It did not exit in time (it is then killed).
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        loop {
            if let Some(st) = self.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() > deadline {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                bail!(
                    "strait-agent ignored SIGTERM for {grace:?}:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("STRAIT_KEEP_LOGS").is_some() {
            eprintln!("agent: keeping {}", self.dir.path().display());
            self.dir.disable_cleanup(true);
        }
    }
}
