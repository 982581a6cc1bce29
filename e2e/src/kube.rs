//! `kubectl` and `helm` against one cluster: the envtest-style [`crate::controlplane::ControlPlane`]
//! and the kubelet [`crate::nodes::NodeCluster`] both hand out a [`Kube`], so the steps the tests
//! share (apply, wait, read status) are written once for either.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result, anyhow, bail};

/// The `kubectl` and `helm` binaries, a kubeconfig, and a directory of helm's own.
#[derive(Debug, Clone)]
pub struct Kube {
    kubectl: PathBuf,
    helm: PathBuf,
    kubeconfig: PathBuf,
    helm_home: PathBuf,
}

impl Kube {
    /// A client of the cluster `kubeconfig` names; helm keeps its config, cache and data in
    /// `helm_home` (nothing is written to `$HOME`).
    pub fn new(kubectl: PathBuf, helm: PathBuf, kubeconfig: PathBuf, helm_home: PathBuf) -> Self {
        Self {
            kubectl,
            helm,
            kubeconfig,
            helm_home,
        }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A `kubectl` command preset with this cluster's kubeconfig.
    pub fn kubectl_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// The environment a user of a kubectl plugin in `plugin_dir` has: the plugin and kubectl
    /// on `$PATH`, this cluster's kubeconfig in `$KUBECONFIG`.
    pub fn plugin_env(&self, plugin_dir: &Path) -> [(&'static str, OsString); 2] {
        let mut path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .collect::<Vec<_>>();
        path.insert(0, plugin_dir.to_owned());
        if let Some(d) = self.kubectl.parent() {
            path.insert(1, d.to_owned());
        }
        [
            ("KUBECONFIG", self.kubeconfig.clone().into_os_string()),
            ("PATH", std::env::join_paths(path).unwrap_or_default()),
        ]
    }

    /// `kubectl ARGS` for a kubectl plugin in `plugin_dir`, found on `$PATH` as a user's would
    /// be (kubectl looks a plugin up only by the arguments before the first flag, so the
    /// kubeconfig goes in `$KUBECONFIG`, not in a `--kubeconfig` in front).
    pub fn kubectl_plugin_command<I, S>(&self, plugin_dir: &Path, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.kubectl);
        cmd.envs(self.plugin_env(plugin_dir))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `kubectl ARGS`; returns its stdout, or an error with its stderr if it failed.
    pub fn kubectl<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(self.kubectl_command(args), None)
    }

    /// Runs `kubectl ARGS` with `stdin` as its input (e.g. `apply -f -`).
    pub fn kubectl_stdin<I, S>(&self, args: I, stdin: &str) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(self.kubectl_command(args), Some(stdin))
    }

    /// Runs `kubectl ARGS` and returns its full output whatever the exit status, for tests that
    /// expect a failure.
    pub fn kubectl_output<I, S>(&self, args: I, stdin: Option<&str>) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_output(self.kubectl_command(args), stdin)
    }

    /// A `helm` command preset with this cluster's kubeconfig and helm's own directories.
    pub fn helm_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.helm);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CONFIG_HOME", self.helm_home.join("config"))
            .env("HELM_CACHE_HOME", self.helm_home.join("cache"))
            .env("HELM_DATA_HOME", self.helm_home.join("data"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `helm ARGS`; returns its stdout, or an error with its stderr if it failed.
    pub fn helm<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(self.helm_command(args), None)
    }
}

fn run_output(mut cmd: Command, stdin: Option<&str>) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not run {program}"))?;
    if let Some(input) = stdin {
        let mut pipe = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin pipe for {program}"))?;
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing stdin of {program}"))?;
    }
    child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))
}

fn run_checked(cmd: Command, stdin: Option<&str>) -> Result<String> {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = run_output(cmd, stdin)?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("command output is not UTF-8")
}
