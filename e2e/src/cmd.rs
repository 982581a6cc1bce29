//! Running external commands (`ip`, `nft`, `swanctl`, `pki`, ...) with errors that say what ran,
//! how it ended and what it printed, so a failing test explains itself.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context as _, Result, bail};

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// `true` when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Renders a command line for messages: program and arguments, quoted where needed.
pub fn display(cmd: &Command) -> String {
    let mut s = String::new();
    for (name, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(s, "{}={} ", name.to_string_lossy(), quote(value));
        }
    }
    s.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(arg));
    }
    s
}

fn quote(word: &OsStr) -> String {
    let w = word.to_string_lossy();
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        w.into_owned()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` to completion (stdin from /dev/null) and returns its output, whatever its exit
/// status. Fails only when the program cannot be started.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    Ok(Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `cmd` and fails, quoting the command line, exit status and both outputs, unless it
/// exits with status 0.
pub fn check(cmd: &mut Command) -> Result<Output> {
    let out = output(cmd)?;
    if !out.success() {
        bail!(
            "`{}` failed ({}){}{}",
            display(cmd),
            out.status,
            section("stdout", &out.stdout),
            section("stderr", &out.stderr)
        );
    }
    Ok(out)
}

/// [`check`] for `program args...`.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    check(Command::new(program).args(args))
}

/// `ip ARGS...`, checked.
pub fn ip<S: AsRef<OsStr>>(args: &[S]) -> Result<Output> {
    run("ip", args)
}

fn section(name: &str, text: &str) -> String {
    let text = text.trim_end();
    if text.is_empty() {
        String::new()
    } else {
        format!("\n--- {name}:\n{text}")
    }
}

/// Fails with a message naming `setup` (the script that installs it) unless `path` exists.
pub fn require_file(path: &Path, setup: &str) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        bail!("{} is missing: run {setup} (as root)", path.display())
    }
}

/// The cache the setup scripts fill: `${STRAIT_CACHE:-/var/cache/strait}`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("STRAIT_CACHE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/strait"), PathBuf::from)
}

/// Fails with a message naming `setup` unless `program` is found on `PATH`.
pub fn require_program(program: &str, setup: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    if found {
        Ok(())
    } else {
        bail!("`{program}` is not installed: run {setup} (as root)")
    }
}

/// Fails unless the process runs as root (namespaces, veth, nftables and charon all need it).
pub fn require_root() -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self belongs to the effective uid of the reading process
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if uid == 0 {
        Ok(())
    } else {
        bail!("this test needs root (network namespaces); it runs as uid {uid}")
    }
}

/// Removes the directories `<temp dir>/<prefix><pid>-...` whose process `pid` is gone: left by
/// test processes that died without unwinding (their daemons died with their namespaces).
pub fn sweep_stale_tmp(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A daemon's log file followed by what it printed (`stdout`), for a failure's message.
pub fn daemon_log(log: &Path, stdout: &Path) -> String {
    let mut s = std::fs::read_to_string(log).unwrap_or_default();
    if let Ok(out) = std::fs::read_to_string(stdout)
        && !out.trim().is_empty()
    {
        s.push_str("\n--- stdout/stderr:\n");
        s.push_str(&out);
    }
    s
}

/// The last 40 lines of `log` (a daemon's, read from `path`), headed for a failure's message.
pub fn log_tail(who: &str, path: &Path, log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines.get(lines.len().saturating_sub(40)..).unwrap_or(&[]);
    format!(
        "\n--- last lines of {who}'s log ({}):\n{}",
        path.display(),
        tail.join("\n")
    )
}

/// Waits until a daemon that `child` runs has created `path` (its control socket), failing
/// when the daemon exits first or `timeout` passes; the caller adds who and where, and its log.
pub fn wait_for_path(
    child: &mut std::process::Child,
    path: &Path,
    timeout: std::time::Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("exited during start-up ({status})");
        }
        if std::time::Instant::now() > deadline {
            bail!("did not open {} within {timeout:?}", path.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}
