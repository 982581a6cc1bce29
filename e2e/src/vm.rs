//! The kernel data-plane VM: a stock Debian kernel (with ESP, XFRM, AES-GCM) under qemu TCG,
//! through `e2e/vm/run.sh`. The host's root filesystem is shared read-only, so host binaries —
//! including freshly built test binaries — run inside as they are; the guest's `/tmp` is its own.
//!
//! The pieces come from `e2e/setup/packages.sh` and `e2e/setup/vm.sh`. A boot takes 20-60 s on
//! the 2-core machines (TCG, no KVM): put several checks into one guest command where possible.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cmd;

const SETUP: &str = "e2e/setup/vm.sh (after e2e/setup/packages.sh)";

/// `e2e/vm/run.sh` of this checkout.
pub fn run_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/run.sh")
}

/// `e2e/vm/<name>`: a guest script of this checkout.
pub fn guest_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm").join(name)
}

/// `${STRAIT_CACHE:-/var/cache/strait}/vm`
pub fn cache_dir() -> PathBuf {
    crate::cmd::cache_root().join("vm")
}

/// Fails, naming the setup scripts, unless qemu, the extracted kernel and virtme-ng are in place.
pub fn require_ready() -> Result<()> {
    cmd::require_root()?;
    cmd::require_program("qemu-system-x86_64", "e2e/setup/packages.sh")?;
    cmd::require_program("busybox", "e2e/setup/packages.sh")?;
    let vm = cache_dir();
    cmd::require_file(&vm.join("venv/bin/vng"), SETUP)?;
    let current = vm.join("current");
    cmd::require_file(&current, SETUP)?;
    let kernel = std::fs::read_to_string(&current)
        .with_context(|| format!("reading {}", current.display()))?;
    cmd::require_file(Path::new(kernel.trim()), SETUP)?;
    Ok(())
}

/// Options for [`run_with`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Host directories the guest may write to (everything else is read-only or guest tmpfs).
    pub rwdirs: Vec<PathBuf>,
    /// Kill the VM after this long (default: run.sh's 300 s).
    pub timeout: Option<Duration>,
    /// Guest memory, e.g. `"512M"` (default: run.sh's).
    pub memory: Option<String>,
    /// A NIC on qemu's user-mode network: the guest reaches the host's loopback at
    /// [`HOST_LOOPBACK`] (run.sh `--net-user`).
    pub network: bool,
}

/// The address at which a guest with [`Options::network`] reaches the host's `127.0.0.1`
/// (qemu user networking maps its gateway address to the host's loopback).
pub const HOST_LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 2);

/// The result of a VM run.
#[derive(Debug)]
pub struct VmOutput {
    /// The guest command's exit status (124: the VM timed out; 3: VM pieces or modules missing).
    pub status: ExitStatus,
    /// Everything the VM and the guest command printed (stdout and stderr together).
    pub output: String,
    /// Wall time of the whole run (boot + command).
    pub elapsed: Duration,
}

impl VmOutput {
    /// `true` when the guest command exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Boots the VM and runs `cmd` (program and arguments) inside as root, in this process's
/// working directory. `Err` only when the VM could not be started at all.
pub fn run(cmd: &[&str]) -> Result<VmOutput> {
    run_with(&Options::default(), cmd)
}

fn command(opts: &Options, cmd: &[&str]) -> Result<Command> {
    require_ready()?;
    if cmd.is_empty() {
        bail!("vm::run: empty command");
    }
    let mut c = Command::new(run_script());
    for dir in &opts.rwdirs {
        c.arg("--rwdir").arg(dir);
    }
    if let Some(t) = opts.timeout {
        c.arg("--timeout").arg(t.as_secs().max(1).to_string());
    }
    if let Some(m) = &opts.memory {
        c.arg("--mem").arg(m);
    }
    if opts.network {
        c.arg("--net-user");
    }
    c.arg("--").args(cmd);
    Ok(c)
}

/// [`run`] with options.
pub fn run_with(opts: &Options, cmd: &[&str]) -> Result<VmOutput> {
    let mut c = command(opts, cmd)?;
    let start = Instant::now();
    // run.sh merges the VM's console into its stdout; its own errors go to stderr
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", cmd::display(&c)))?;
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(VmOutput {
        status: out.status,
        output,
        elapsed: start.elapsed(),
    })
}

/// A copy of a host file (e.g. the running test binary) in a directory the guest can see.
///
/// The guest mounts its own tmpfs over `/tmp`, `/var/tmp` and `/var/cache`, so a binary built
/// into a cargo target dir there (CI caches it under `/var/cache/strait`) is invisible inside.
/// Pass [`Staged::dir`] in [`Options::rwdirs`] and run [`Staged::path`]. Removed on drop.
#[derive(Debug)]
pub struct Staged {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Staged {
    /// Copies `file` into a fresh directory, keeping its name and permissions.
    ///
    /// # Errors
    /// The copy failed.
    pub fn copy(file: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("strait-vmstage-")
            .tempdir()
            .context("creating a staging directory for the VM")?;
        let name = file
            .file_name()
            .with_context(|| format!("{} has no file name", file.display()))?;
        let path = dir.path().join(name);
        std::fs::copy(file, &path)
            .with_context(|| format!("staging {} for the VM", file.display()))?;
        Ok(Self { dir, path })
    }

    /// The directory to pass as an rwdir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The staged copy.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A VM running in the background ([`spawn`]), for tests whose host side acts while the guest
/// runs. The whole run.sh process group (qemu included) is killed on drop.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    log: tempfile::NamedTempFile,
    start: Instant,
}

/// Boots the VM in the background and runs `cmd` inside, as [`run_with`] does; its console goes
/// to a file ([`Running::output`]).
///
/// # Errors
/// The VM pieces are missing or run.sh cannot start.
pub fn spawn(opts: &Options, cmd: &[&str]) -> Result<Running> {
    let mut c = command(opts, cmd)?;
    let log = tempfile::Builder::new()
        .prefix("strait-vm-console-")
        .tempfile()
        .context("creating the VM console log")?;
    let out = log.reopen().context("opening the VM console log")?;
    let err = out.try_clone().context("opening the VM console log")?;
    let start = Instant::now();
    let child = c
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // its own group, so drop can stop timeout, vng, qemu and cat together
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::display(&c)))?;
    Ok(Running {
        child: Some(child),
        log,
        start,
    })
}

impl Running {
    /// The console so far.
    pub fn output(&self) -> String {
        std::fs::read(self.log.path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status once the VM has finished, `None` while it runs.
    ///
    /// # Errors
    /// Waiting on the process failed.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().context("polling the VM"),
            None => bail!("the VM was already reaped"),
        }
    }

    /// Waits for the VM to finish (run.sh enforces its own timeout) and returns what it printed.
    ///
    /// # Errors
    /// Waiting on the process failed.
    pub fn wait(mut self) -> Result<VmOutput> {
        let mut child = self.child.take().context("the VM was already reaped")?;
        let status = child.wait().context("waiting for the VM")?;
        Ok(VmOutput {
            status,
            output: self.output(),
            elapsed: self.start.elapsed(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // `timeout` in run.sh moves itself (and vng, qemu) into a process group of its own, so
        // signalling run.sh's group is not enough: kill every descendant, found by parent pid.
        if let Ok(root) = i32::try_from(child.id()) {
            let mut all = descendants(root);
            all.push(root);
            for pid in all {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = killpg(Pid::from_raw(root), Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Every process below `root` (children, grandchildren, ...), from `/proc/*/stat`.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while let Some(&p) = found.get(i) {
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.retain(|&p| p != root);
    found
}
