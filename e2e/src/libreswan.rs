//! Libreswan's pluto as a real IKEv2 peer, one instance per network namespace.
//!
//! Libreswan cannot be installed next to strongSwan (bookworm's packages conflict) and 5.x needs
//! trixie's glibc, so each version lives in its own Debian root file system built by
//! `e2e/setup/peers.sh`. A [`Pluto`] runs as `ip netns exec NS unshare -m --propagation private
//! sh -c '...; exec chroot ROOT pluto'`: in its private mount namespace a tmpfs covers the root's
//! `/run`, the instance's temporary directory is bound to `ROOT/run/t` (config, secrets, NSS
//! database, control socket, log), and `/proc` and `/dev` are mounted in the root. The mounts go
//! with the process. pluto has no userspace ESP: its tunnels need the kernel VM.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;

use crate::cmd::{self, Output};
use crate::netns;

const SETUP: &str = "e2e/setup/peers.sh";
/// Prefix of the temporary directories (`strait-pluto-<pid>-XXXXXX` in the temp dir).
const DIR_PREFIX: &str = "strait-pluto-";
/// Where the instance's directory appears inside the root.
const INNER: &str = "/run/t";
/// How long pluto may take to open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long pluto gets to exit after `whack --shutdown` before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The Libreswan versions the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 4.10, Debian 12 (bookworm).
    V4,
    /// 5.2, Debian 13 (trixie).
    V5,
}

impl Version {
    /// The root file system holding this version.
    pub fn root(self) -> PathBuf {
        let suite = match self {
            Self::V4 => "bookworm",
            Self::V5 => "trixie",
        };
        cmd::cache_root()
            .join("peers")
            .join(format!("libreswan-{suite}"))
    }

    /// The version as Libreswan names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "Libreswan 4.10",
            Self::V5 => "Libreswan 5.2",
        }
    }
}

/// Fails, naming `e2e/setup/peers.sh`, unless `version`'s root holds pluto.
pub fn require_installed(version: Version) -> Result<()> {
    cmd::require_file(&version.root().join("usr/libexec/ipsec/pluto"), SETUP)
}

/// One `#N: "conn"...` line of `whack --trafficstatus`: an established CHILD SA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    /// The connection's name.
    pub conn: String,
    /// Bytes received on the SA.
    pub in_bytes: u64,
    /// Bytes sent on the SA.
    pub out_bytes: u64,
}

/// Parses `whack --trafficstatus`.
pub fn parse_traffic(text: &str) -> Vec<Traffic> {
    text.lines()
        .filter_map(|l| {
            let conn = l.split('"').nth(1)?.to_owned();
            let field = |k: &str| {
                l.split(", ")
                    .find_map(|f| f.trim().strip_prefix(k))
                    .and_then(|v| v.parse().ok())
            };
            Some(Traffic {
                conn,
                in_bytes: field("inBytes=")?,
                out_bytes: field("outBytes=")?,
            })
        })
        .collect()
}

/// What goes into pluto's NSS database before it starts, as a site's admin puts it there.
#[derive(Debug, Clone)]
pub struct NssCerts {
    /// The site's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that issued it (PEM), trusted for peers' certificates (`CT,,`).
    pub ca: PathBuf,
    /// The nickname `leftcert=` names.
    pub nickname: String,
}

/// A running pluto in a network namespace.
#[derive(Debug)]
pub struct Pluto {
    ns: String,
    version: Version,
    dir: TempDir,
    child: Option<Child>,
}

impl Pluto {
    /// Writes `ipsec.conf` and `ipsec.secrets`, creates an empty NSS database, starts pluto in
    /// `ns` and waits for its control socket; pluto loads the connections itself.
    pub fn start(ns: &str, version: Version, ipsec_conf: &str, secrets: &str) -> Result<Self> {
        Self::start_with(ns, version, ipsec_conf, secrets, None)
    }

    /// [`Pluto::start`] with the site's certificate and key in the NSS database and its CA
    /// trusted, as `peer-config` tells the site's admin: packed with `openssl pkcs12 -export
    /// -name NICKNAME`, imported with pk12util (what `ipsec import` runs) and `certutil -A`.
    pub fn start_with(
        ns: &str,
        version: Version,
        ipsec_conf: &str,
        secrets: &str,
        certs: Option<&NssCerts>,
    ) -> Result<Self> {
        require_installed(version)?;
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("creating pluto directory")?;
        for sub in ["nss", "ipsec.d", "run"] {
            fs::create_dir_all(dir.path().join(sub))?;
        }
        fs::write(dir.path().join("ipsec.conf"), ipsec_conf)?;
        fs::write(dir.path().join("ipsec.secrets"), secrets)?;
        let import = match certs {
            None => String::new(),
            Some(c) => {
                let p12 = dir.path().join("site.p12");
                cmd::check(
                    Command::new("openssl")
                        .args([
                            "pkcs12",
                            "-export",
                            "-passout",
                            "pass:",
                            "-name",
                            &c.nickname,
                        ])
                        .arg("-in")
                        .arg(&c.cert)
                        .arg("-inkey")
                        .arg(&c.key)
                        .arg("-out")
                        .arg(&p12),
                )?;
                fs::copy(&c.ca, dir.path().join("ca.crt"))?;
                // what `ipsec import` runs, without its password prompt
                format!(
                    " && chroot {r} pk12util -i {INNER}/site.p12 -d sql:{INNER}/nss -W '' \
                     && chroot {r} certutil -A -d sql:{INNER}/nss -n {n}-ca -t CT,, -a -i {INNER}/ca.crt",
                    r = version.root().display(),
                    n = c.nickname
                )
            }
        };
        let mut p = Self {
            ns: ns.to_owned(),
            version,
            dir,
            child: None,
        };
        p.spawn(&import)?;
        Ok(p)
    }

    fn spawn(&mut self, import: &str) -> Result<()> {
        let root = self.version.root();
        let r = root.display();
        let d = self.dir.path().display();
        let script = format!(
            "mount -t tmpfs tmpfs {r}/run && mkdir {r}{INNER} {r}/run/pluto && mount --bind {d} {r}{INNER} \
             && mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev \
             && chroot {r} certutil -N -d sql:{INNER}/nss --empty-password{import} \
             && exec chroot {r} /usr/libexec/ipsec/pluto --nofork --config {INNER}/ipsec.conf \
             --rundir {INNER}/run --nssdir {INNER}/nss --secretsfile {INNER}/ipsec.secrets \
             --ipsecdir {INNER}/ipsec.d --logfile {INNER}/pluto.log"
        );
        let out = fs::File::create(self.dir.path().join("pluto.stdout"))?;
        let mut c = netns::exec_private_mounts(&self.ns, &script);
        c.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        // `ip netns exec`, `unshare`, `sh -c 'exec'` and `chroot` all exec: the child is pluto
        let mut child = c
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::display(&c)))?;
        let ctl = self.dir.path().join("run/pluto.ctl");
        let started = cmd::wait_for_path(&mut child, &ctl, START_TIMEOUT);
        self.child = Some(child);
        started.map_err(|e| {
            anyhow::anyhow!(
                "pluto ({}) in {}: {e}{}",
                self.version.name(),
                self.ns,
                self.log_excerpt()
            )
        })
    }

    /// The namespace pluto runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The version running.
    pub fn version(&self) -> Version {
        self.version
    }

    /// pluto's log so far (and what it printed).
    pub fn log(&self) -> String {
        cmd::daemon_log(&self.log_path(), &self.dir.path().join("pluto.stdout"))
    }

    /// pluto's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pluto.log")
    }

    fn log_excerpt(&self) -> String {
        cmd::log_tail("pluto", &self.log_path(), &self.log())
    }

    /// A `whack ARGS...` command for this instance: run in pluto's mount and network
    /// namespaces, chrooted into its root, on its control socket.
    pub fn whack_command(&self, args: &[&str]) -> Result<Command> {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            bail!("pluto in {} is not running", self.ns);
        };
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(pid.to_string())
            .args(["-m", "-n", "chroot"])
            .arg(self.version.root())
            .args(["/usr/libexec/ipsec/whack", "--ctlsocket"])
            .arg(format!("{INNER}/run/pluto.ctl"))
            .args(args);
        Ok(c)
    }

    /// How many established IKE SAs pluto holds (`whack --showstates`: `ESTABLISHED_IKE_SA`
    /// in 5, `STATE_V2_ESTABLISHED_IKE_SA` in 4).
    ///
    /// # Errors
    /// whack fails.
    pub fn established_ike_sas(&self) -> Result<usize> {
        Ok(self
            .whack(&["--showstates"])?
            .stdout
            .lines()
            .filter(|l| l.contains("ESTABLISHED_IKE_SA"))
            .count())
    }

    /// Runs `whack ARGS...`, checked; errors carry pluto's log tail.
    pub fn whack(&self, args: &[&str]) -> Result<Output> {
        cmd::check(&mut self.whack_command(args)?).map_err(|e| e.context(self.log_excerpt()))
    }

    /// The established CHILD SAs (`whack --trafficstatus`).
    pub fn traffic(&self) -> Result<Vec<Traffic>> {
        Ok(parse_traffic(&self.whack(&["--trafficstatus"])?.stdout))
    }

    /// Polls `--trafficstatus` until `conn` has an established CHILD SA.
    pub fn wait_up(&self, conn: &str, timeout: Duration) -> Result<Traffic> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.traffic()?.into_iter().find(|t| t.conn == conn) {
                return Ok(t);
            }
            if Instant::now() > deadline {
                let states = self
                    .whack(&["--showstates"])
                    .map(|o| o.stdout)
                    .unwrap_or_default();
                bail!(
                    "{conn} has no CHILD SA in {} after {timeout:?}:\n{states}{}",
                    self.ns,
                    self.log_excerpt()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops pluto: `whack --shutdown` (it deletes its SAs, sending DELETE), then SIGKILL after
    /// a grace period.
    pub fn stop(&mut self) -> Result<()> {
        if self.child.is_none() {
            return Ok(());
        }
        let asked = self.whack(&["--shutdown"]);
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if child.try_wait()?.is_some() {
                return asked.map(|_| ());
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!(
                    "pluto in {} did not shut down in {STOP_GRACE:?}; killed",
                    self.ns
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills pluto with SIGKILL: no DELETE goes out, as when its site loses power.
    ///
    /// # Errors
    /// The signal or the wait failed.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The instance's directory (config, secrets, NSS database, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pluto {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("libreswan: {e:#}");
        }
        // pluto 4.10 leaves its IPv6 neighbour-discovery bypass policies behind, and a killed
        // pluto its SAs: the namespace is the test's, so nothing else of its XFRM is lost
        for what in ["policy", "state"] {
            if let Err(e) = netns::exec(&self.ns, &["ip", "xfrm", what, "flush"]) {
                eprintln!("libreswan: {e:#}");
            }
        }
        if std::env::var_os("STRAIT_KEEP_LOGS").is_some() {
            eprintln!("libreswan: keeping {}", self.dir.path().display());
            self.dir.disable_cleanup(true);
        }
    }
}

/// Removes pluto directories left in the temp dir by test processes that died without
/// unwinding.
pub fn sweep_stale_dirs() {
    cmd::sweep_stale_tmp(DIR_PREFIX);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Traffic, parse_traffic};

    #[test]
    fn traffic_status_lines() {
        let text = "#2: \"strait-site\", type=ESP, add_time=1765100000, inBytes=840, outBytes=1260, \
                    maxBytes=2^63B, id='@cluster.example'\n000 \n";
        assert_eq!(
            parse_traffic(text),
            [Traffic {
                conn: "strait-site".into(),
                in_bytes: 840,
                out_bytes: 1260
            }]
        );
        assert!(parse_traffic("").is_empty());
    }
}
