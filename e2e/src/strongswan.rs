//! strongSwan's charon as the real IKEv2 peer, one instance per network namespace.
//!
//! Each [`Charon`] runs as `ip netns exec NS unshare -m --propagation private sh -c 'mount -t
//! tmpfs tmpfs /run && exec charon'`: the private `/run` gives it its own pid file, so several
//! charons run side by side. Its own `strongswan.conf` puts the vici socket, the log and the
//! swanctl directory into a temporary directory. Dropping it (also on panic) stops charon
//! (SIGTERM, then SIGKILL) and removes the directory; the mount namespace and its tmpfs go with
//! the process.
//!
//! On the host kernel (no ESP) use [`Plugins::Libipsec`]: userspace ESP over a TUN device, always
//! UDP-encapsulated. In the kernel VM use [`Plugins::KernelNetlink`], as in production.
//!
//! The packages come from `e2e/setup/packages.sh`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;

use crate::cmd::{self, Output};
use crate::netns;

/// The charon binary of Debian's `strongswan-charon`.
pub const CHARON: &str = "/usr/lib/ipsec/charon";
const SETUP: &str = "e2e/setup/packages.sh";
/// Prefix of the temporary directories (`strait-charon-<pid>-XXXXXX` in the temp dir).
const DIR_PREFIX: &str = "strait-charon-";
/// How long charon may take to open its vici socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long charon gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Fails, naming `e2e/setup/packages.sh`, unless charon, swanctl and pki are installed.
pub fn require_installed() -> Result<()> {
    cmd::require_file(Path::new(CHARON), SETUP)?;
    cmd::require_program("swanctl", SETUP)?;
    cmd::require_program("pki", SETUP)?;
    for plugin in [
        "libstrongswan-kernel-libipsec.so",
        "libstrongswan-curve25519.so",
    ] {
        cmd::require_file(&Path::new("/usr/lib/ipsec/plugins").join(plugin), SETUP)?;
    }
    Ok(())
}

/// Which plugins charon loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plugins {
    /// Userspace ESP (kernel-libipsec over TUN) plus kernel-netlink for addresses and routes: for
    /// the host kernel, which has XFRM but no ESP.
    Libipsec,
    /// Kernel ESP through XFRM netlink only: for the kernel VM.
    KernelNetlink,
    /// Exactly this `load =` list.
    Custom(Vec<String>),
}

impl Plugins {
    const COMMON: &'static str = "random nonce openssl pem pkcs1 pkcs8 x509 pubkey revocation \
                                  constraints curve25519 kdf socket-default vici";

    fn load_line(&self) -> String {
        match self {
            // kernel-libipsec must come before kernel-netlink: it then owns SAs and policies
            Self::Libipsec => format!("{} kernel-libipsec kernel-netlink", Self::COMMON),
            Self::KernelNetlink => format!("{} kernel-netlink", Self::COMMON),
            Self::Custom(list) => list.join(" "),
        }
    }
}

/// How one side of a connection authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Pre-shared key (from the `secrets` section).
    Psk,
    /// Public key; for `local`, the certificate file name in `swanctl/x509/` (see
    /// [`Charon::install_cert`]); for `remote`, `None` (trust any cert from a loaded CA).
    Pubkey(Option<String>),
}

/// `local { }` or `remote { }` of a connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The IKE identity (`id = `), as strongSwan writes it.
    pub id: String,
    /// How this end authenticates.
    pub auth: Auth,
}

impl Endpoint {
    /// A PSK endpoint with identity `id`.
    pub fn psk(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            auth: Auth::Psk,
        }
    }

    /// A public-key endpoint with identity `id`; `cert` names the local certificate file.
    pub fn pubkey(id: &str, cert: Option<&str>) -> Self {
        Self {
            id: id.to_owned(),
            auth: Auth::Pubkey(cert.map(str::to_owned)),
        }
    }
}

/// A CHILD SA configuration (`children { NAME { } }`).
#[derive(Debug, Clone)]
pub struct ChildConfig {
    /// Name of the child.
    pub name: String,
    /// `local_ts`
    pub local_ts: Vec<String>,
    /// `remote_ts`
    pub remote_ts: Vec<String>,
    /// `esp_proposals`; a DH group in a proposal means PFS on rekeys.
    pub esp_proposals: Vec<String>,
    /// `rekey_time`, e.g. `"1h"`, `"20s"`.
    pub rekey_time: Option<String>,
    /// `life_time`
    pub life_time: Option<String>,
    /// `start_action`: `none`, `trap` or `start`.
    pub start_action: String,
    /// `dpd_action`: `clear`, `trap` or `restart`.
    pub dpd_action: Option<String>,
    /// `mode`: `tunnel` (default) or `transport`.
    pub mode: Option<String>,
    /// Any other `key = value` lines for this child.
    pub extra: Vec<(String, String)>,
}

impl ChildConfig {
    /// A tunnel-mode child between two subnets with strongSwan's defaults otherwise.
    pub fn new(name: &str, local_ts: &str, remote_ts: &str) -> Self {
        Self {
            name: name.to_owned(),
            local_ts: vec![local_ts.to_owned()],
            remote_ts: vec![remote_ts.to_owned()],
            esp_proposals: vec!["aes256gcm16-x25519".to_owned()],
            rekey_time: None,
            life_time: None,
            start_action: "none".to_owned(),
            dpd_action: None,
            mode: None,
            extra: Vec::new(),
        }
    }
}

/// A connection (`connections { NAME { } }`).
#[derive(Debug, Clone)]
pub struct Connection {
    /// Name of the connection (the IKE config name).
    pub name: String,
    /// `local_addrs`, e.g. `["192.0.2.1"]`; empty means any.
    pub local_addrs: Vec<String>,
    /// `remote_addrs`; empty means any (a responder that accepts any peer).
    pub remote_addrs: Vec<String>,
    /// IKE `proposals`.
    pub proposals: Vec<String>,
    /// `local { }`
    pub local: Endpoint,
    /// `remote { }`
    pub remote: Endpoint,
    /// `children { }`
    pub children: Vec<ChildConfig>,
    /// IKE `rekey_time`.
    pub rekey_time: Option<String>,
    /// IKE `reauth_time`.
    pub reauth_time: Option<String>,
    /// IKE `over_time`.
    pub over_time: Option<String>,
    /// `dpd_delay`
    pub dpd_delay: Option<String>,
    /// `dpd_timeout` (IKEv1 only in strongSwan; IKEv2 uses retransmission settings)
    pub dpd_timeout: Option<String>,
    /// `encap`: force UDP encapsulation of ESP.
    pub encap: bool,
    /// `mobike`
    pub mobike: Option<bool>,
    /// Any other `key = value` lines for this connection.
    pub extra: Vec<(String, String)>,
}

impl Connection {
    /// An IKEv2 connection with strongSwan-style defaults used throughout the tests.
    pub fn new(name: &str, local: Endpoint, remote: Endpoint) -> Self {
        Self {
            name: name.to_owned(),
            local_addrs: Vec::new(),
            remote_addrs: Vec::new(),
            proposals: vec!["aes256gcm16-prfsha256-x25519".to_owned()],
            local,
            remote,
            children: Vec::new(),
            rekey_time: None,
            reauth_time: None,
            over_time: None,
            dpd_delay: None,
            dpd_timeout: None,
            encap: false,
            mobike: None,
            extra: Vec::new(),
        }
    }
}

/// An entry of the `secrets { }` section.
#[derive(Debug, Clone)]
pub enum Secret {
    /// `ike-NAME { id-N = ...; secret = ... }`: a PSK for these identities.
    Ike {
        /// Identities the key is for (empty: any).
        ids: Vec<String>,
        /// The key: text, or `0x...` hex, or `0s...` base64.
        secret: String,
    },
}

/// Everything a [`Charon`] is configured with.
#[derive(Debug, Clone)]
pub struct CharonConfig {
    /// Plugins to load.
    pub plugins: Plugins,
    /// Connections in swanctl.conf.
    pub connections: Vec<Connection>,
    /// Secrets in swanctl.conf.
    pub secrets: Vec<Secret>,
    /// `charon.dos_protection`; `None` keeps strongSwan's default (on).
    pub dos_protection: Option<bool>,
    /// `charon.cookie_threshold`
    pub cookie_threshold: Option<u32>,
    /// `charon.block_threshold`
    pub block_threshold: Option<u32>,
    /// `charon.init_limit_half_open`
    pub init_limit_half_open: Option<u32>,
    /// Log level for the `ike`, `cfg`, `knl`, `net`, `enc` groups (-1..4), default 2.
    pub log_level: i32,
    /// Raw lines added inside `charon { }`, e.g. `"retransmit_tries = 2"`.
    pub extra_charon: Vec<String>,
    /// Files copied into `swanctl/` before the first `--load-all`: certificates, keys.
    pub files: Vec<SwanctlFile>,
    /// The root file system charon runs from, chrooted (e.g. [`strongswan6_root`]); `None`: the
    /// host's charon. swanctl stays the host's: it reaches charon over the vici socket.
    pub root: Option<PathBuf>,
}

/// strongSwan 6.0.1 (Debian trixie), built by `e2e/setup/peers.sh`.
pub fn strongswan6_root() -> PathBuf {
    cmd::cache_root().join("peers/strongswan-trixie")
}

/// A file to copy into the instance's `swanctl/<subdir>/`.
#[derive(Debug, Clone)]
pub struct SwanctlFile {
    /// The file to copy.
    pub src: PathBuf,
    /// `x509` (own certificates), `x509ca` (trusted CAs), `private` (keys), ...
    pub subdir: String,
    /// The name in `subdir`; referenced by `certs = ` in [`Auth::Pubkey`].
    pub name: String,
}

impl SwanctlFile {
    /// `src` into `swanctl/<subdir>/<name>`.
    pub fn new(src: &Path, subdir: &str, name: &str) -> Self {
        Self {
            src: src.to_owned(),
            subdir: subdir.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl Default for CharonConfig {
    fn default() -> Self {
        Self {
            plugins: Plugins::Libipsec,
            connections: Vec::new(),
            secrets: Vec::new(),
            dos_protection: None,
            cookie_threshold: None,
            block_threshold: None,
            init_limit_half_open: None,
            log_level: 2,
            extra_charon: Vec::new(),
            files: Vec::new(),
            root: None,
        }
    }
}

fn list(items: &[String]) -> String {
    items.join(",")
}

impl CharonConfig {
    /// Adds the files for certificate authentication with `own` (signed by `pki`'s CA): the CA
    /// as trusted, `own`'s certificate as `<name>.crt` and its key. Use
    /// `Endpoint::pubkey(id, Some("<name>.crt"))` for `local`.
    pub fn add_cert_auth(&mut self, pki: &TestPki, own: &CertFiles, name: &str) {
        self.files
            .push(SwanctlFile::new(&pki.ca.cert, "x509ca", "ca.crt"));
        self.files
            .push(SwanctlFile::new(&own.cert, "x509", &format!("{name}.crt")));
        self.files.push(SwanctlFile::new(
            &own.key,
            "private",
            &format!("{name}.key"),
        ));
    }

    fn strongswan_conf(&self, dir: &Path) -> String {
        let vici = dir.join("charon.vici");
        let log = dir.join("charon.log");
        let mut s = String::new();
        let _ = writeln!(s, "charon {{");
        let _ = writeln!(s, "    load_modular = no");
        let _ = writeln!(s, "    load = {}", self.plugins.load_line());
        // no DNS, no installs into the root namespace's files
        let _ = writeln!(s, "    install_virtual_ip = no");
        if let Some(d) = self.dos_protection {
            let _ = writeln!(s, "    dos_protection = {}", if d { "yes" } else { "no" });
        }
        for (key, value) in [
            ("cookie_threshold", self.cookie_threshold),
            ("block_threshold", self.block_threshold),
            ("init_limit_half_open", self.init_limit_half_open),
        ] {
            if let Some(v) = value {
                let _ = writeln!(s, "    {key} = {v}");
            }
        }
        for line in &self.extra_charon {
            let _ = writeln!(s, "    {line}");
        }
        let _ = writeln!(s, "    plugins {{");
        let _ = writeln!(
            s,
            "        vici {{\n            socket = unix://{}\n        }}",
            vici.display()
        );
        let _ = writeln!(s, "    }}");
        let l = self.log_level;
        let _ = writeln!(
            s,
            "    filelog {{\n        main {{\n            path = {}\n            time_format = %H:%M:%S\n            \
             default = 1\n            ike = {l}\n            cfg = {l}\n            knl = {l}\n            \
             net = {l}\n            enc = {}\n            flush_line = yes\n        }}\n    }}",
            log.display(),
            l.min(1)
        );
        let _ = writeln!(
            s,
            "    syslog {{\n        daemon {{\n            default = -1\n        }}\n    }}"
        );
        let _ = writeln!(s, "}}");
        let _ = writeln!(s, "swanctl {{\n    socket = unix://{}\n}}", vici.display());
        s
    }

    fn swanctl_conf(&self) -> String {
        let mut s = String::from("connections {\n");
        for c in &self.connections {
            let _ = writeln!(s, "    {} {{", c.name);
            let _ = writeln!(s, "        version = 2");
            if !c.local_addrs.is_empty() {
                let _ = writeln!(s, "        local_addrs = {}", list(&c.local_addrs));
            }
            if !c.remote_addrs.is_empty() {
                let _ = writeln!(s, "        remote_addrs = {}", list(&c.remote_addrs));
            }
            let _ = writeln!(s, "        proposals = {}", list(&c.proposals));
            let _ = writeln!(s, "        encap = {}", if c.encap { "yes" } else { "no" });
            for (key, value) in [
                ("rekey_time", &c.rekey_time),
                ("reauth_time", &c.reauth_time),
                ("over_time", &c.over_time),
                ("dpd_delay", &c.dpd_delay),
                ("dpd_timeout", &c.dpd_timeout),
            ] {
                if let Some(v) = value {
                    let _ = writeln!(s, "        {key} = {v}");
                }
            }
            if let Some(m) = c.mobike {
                let _ = writeln!(s, "        mobike = {}", if m { "yes" } else { "no" });
            }
            for (k, v) in &c.extra {
                let _ = writeln!(s, "        {k} = {v}");
            }
            for (section, ep) in [("local", &c.local), ("remote", &c.remote)] {
                let _ = writeln!(s, "        {section} {{");
                let _ = writeln!(s, "            id = {}", ep.id);
                match &ep.auth {
                    Auth::Psk => {
                        let _ = writeln!(s, "            auth = psk");
                    }
                    Auth::Pubkey(cert) => {
                        let _ = writeln!(s, "            auth = pubkey");
                        if let Some(cert) = cert {
                            let _ = writeln!(s, "            certs = {cert}");
                        }
                    }
                }
                let _ = writeln!(s, "        }}");
            }
            let _ = writeln!(s, "        children {{");
            for ch in &c.children {
                let _ = writeln!(s, "            {} {{", ch.name);
                let _ = writeln!(s, "                local_ts = {}", list(&ch.local_ts));
                let _ = writeln!(s, "                remote_ts = {}", list(&ch.remote_ts));
                let _ = writeln!(
                    s,
                    "                esp_proposals = {}",
                    list(&ch.esp_proposals)
                );
                let _ = writeln!(s, "                start_action = {}", ch.start_action);
                for (key, value) in [
                    ("rekey_time", &ch.rekey_time),
                    ("life_time", &ch.life_time),
                    ("dpd_action", &ch.dpd_action),
                    ("mode", &ch.mode),
                ] {
                    if let Some(v) = value {
                        let _ = writeln!(s, "                {key} = {v}");
                    }
                }
                for (k, v) in &ch.extra {
                    let _ = writeln!(s, "                {k} = {v}");
                }
                let _ = writeln!(s, "            }}");
            }
            let _ = writeln!(s, "        }}\n    }}");
        }
        s.push_str("}\nsecrets {\n");
        for (n, secret) in self.secrets.iter().enumerate() {
            match secret {
                Secret::Ike { ids, secret } => {
                    let _ = writeln!(s, "    ike-{n} {{");
                    for (i, id) in ids.iter().enumerate() {
                        let _ = writeln!(s, "        id-{i} = {id}");
                    }
                    let _ = writeln!(s, "        secret = \"{secret}\"");
                    let _ = writeln!(s, "    }}");
                }
            }
        }
        s.push_str("}\n");
        s
    }
}

/// The state of one IKE SA as `swanctl --list-sas` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSa {
    /// Connection name.
    pub name: String,
    /// Unique id (`#N`).
    pub unique_id: u32,
    /// `ESTABLISHED`, `CONNECTING`, `REKEYING`, `DELETING`, ...
    pub state: String,
    /// Negotiated proposal, e.g. `AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519`.
    pub proposal: Option<String>,
    /// `local  'id' @ addr[port]` line, as printed.
    pub local: Option<String>,
    /// `remote 'id' @ addr[port]` line, as printed.
    pub remote: Option<String>,
    /// The CHILD SAs under it.
    pub children: Vec<ChildSa>,
}

/// The state of one CHILD SA as `swanctl --list-sas` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    /// Child config name.
    pub name: String,
    /// Unique id (`#N`).
    pub unique_id: u32,
    /// `INSTALLED`, `REKEYED`, `DELETING`, ...
    pub state: String,
    /// `TUNNEL`, `TUNNEL-in-UDP`, `TRANSPORT`, ...
    pub mode: Option<String>,
    /// Negotiated proposal, e.g. `ESP:AES_GCM_16-256/CURVE_25519`.
    pub proposal: Option<String>,
    /// Inbound byte and packet counters.
    pub bytes_in: u64,
    /// Inbound packets.
    pub packets_in: u64,
    /// Outbound bytes.
    pub bytes_out: u64,
    /// Outbound packets.
    pub packets_out: u64,
}

/// `swanctl --list-sas`: the text and what was parsed from it.
#[derive(Debug, Clone)]
pub struct ListSas {
    /// The output as printed.
    pub raw: String,
    /// The IKE SAs in it.
    pub ike_sas: Vec<IkeSa>,
}

impl ListSas {
    /// Parses `swanctl --list-sas` output. Lines it does not know are ignored.
    pub fn parse(raw: &str) -> Self {
        let mut ike_sas: Vec<IkeSa> = Vec::new();
        for line in raw.lines() {
            let indent = line.len() - line.trim_start().len();
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            if indent == 0 {
                if let Some((name, id, rest)) = split_sa_header(text) {
                    let state = rest.first().cloned().unwrap_or_default();
                    ike_sas.push(IkeSa {
                        name,
                        unique_id: id,
                        state,
                        proposal: None,
                        local: None,
                        remote: None,
                        children: Vec::new(),
                    });
                }
                continue;
            }
            let Some(ike) = ike_sas.last_mut() else {
                continue;
            };
            if indent == 2 {
                if let Some((name, id, rest)) = split_sa_header(text) {
                    // "net: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256/CURVE_25519"
                    let fields: Vec<&String> =
                        rest.iter().filter(|f| !f.starts_with("reqid")).collect();
                    let get = |i: usize| fields.get(i).map(|s| (*s).clone());
                    ike.children.push(ChildSa {
                        name,
                        unique_id: id,
                        state: get(0).unwrap_or_default(),
                        mode: get(1),
                        proposal: get(2),
                        bytes_in: 0,
                        packets_in: 0,
                        bytes_out: 0,
                        packets_out: 0,
                    });
                } else if text.starts_with("local ") {
                    ike.local = Some(text.to_owned());
                } else if text.starts_with("remote ") {
                    ike.remote = Some(text.to_owned());
                } else if !text.contains(' ') && text.contains('/') {
                    ike.proposal = Some(text.to_owned());
                }
            } else if let Some(child) = ike.children.last_mut() {
                // "in  c9e4ba0f (-|0x...),     84 bytes,     1 packets,     0s ago"
                let dir_in = text.starts_with("in ");
                if dir_in || text.starts_with("out ") {
                    let (bytes, packets) = counters(text);
                    if dir_in {
                        child.bytes_in = bytes;
                        child.packets_in = packets;
                    } else {
                        child.bytes_out = bytes;
                        child.packets_out = packets;
                    }
                }
            }
        }
        Self {
            raw: raw.to_owned(),
            ike_sas,
        }
    }

    /// The first IKE SA of connection `name`.
    pub fn ike(&self, name: &str) -> Option<&IkeSa> {
        self.ike_sas.iter().find(|sa| sa.name == name)
    }

    /// `true` when an IKE SA of `ike` is ESTABLISHED and has an INSTALLED CHILD SA `child`.
    pub fn is_up(&self, ike: &str, child: &str) -> bool {
        self.ike_sas.iter().any(|sa| {
            sa.name == ike
                && sa.state == "ESTABLISHED"
                && sa
                    .children
                    .iter()
                    .any(|c| c.name == child && c.state == "INSTALLED")
        })
    }
}

/// `"name: #3, A, B"` -> `("name", 3, ["A", "B"])`
fn split_sa_header(text: &str) -> Option<(String, u32, Vec<String>)> {
    let (name, rest) = text.split_once(": #")?;
    let mut fields = rest.split(", ");
    let id = fields.next()?.parse().ok()?;
    Some((
        name.to_owned(),
        id,
        fields.map(|f| f.trim().to_owned()).collect(),
    ))
}

fn counters(text: &str) -> (u64, u64) {
    let mut bytes = 0;
    let mut packets = 0;
    for part in text.split(',') {
        let mut words = part.split_whitespace();
        if let (Some(n), Some(unit)) = (words.next(), words.next()) {
            match (n.parse(), unit) {
                (Ok(n), "bytes") => bytes = n,
                (Ok(n), "packets") => packets = n,
                _ => {}
            }
        }
    }
    (bytes, packets)
}

/// Removes charon directories left in the temp dir by test processes that died without
/// unwinding (their charons died with their namespaces, see [`netns::sweep_stale`]).
pub fn sweep_stale_dirs() {
    cmd::sweep_stale_tmp(DIR_PREFIX);
}

/// A running charon in a network namespace.
#[derive(Debug)]
pub struct Charon {
    ns: String,
    dir: TempDir,
    child: Option<Child>,
    root: Option<PathBuf>,
}

impl Charon {
    /// Writes the configuration, starts charon in `ns`, waits for its vici socket and loads
    /// connections and secrets (`swanctl --load-all`).
    pub fn start(ns: &str, config: &CharonConfig) -> Result<Self> {
        match &config.root {
            None => require_installed()?,
            Some(r) => cmd::require_file(&r.join(&CHARON[1..]), "e2e/setup/peers.sh")?,
        }
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("creating charon directory")?;
        let root = dir.path();
        for sub in [
            "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private",
            "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12",
        ] {
            fs::create_dir_all(root.join("swanctl").join(sub))?;
        }
        fs::write(root.join("strongswan.conf"), config.strongswan_conf(root))?;
        fs::write(root.join("swanctl/swanctl.conf"), config.swanctl_conf())?;
        for f in &config.files {
            let dst = root.join("swanctl").join(&f.subdir).join(&f.name);
            fs::copy(&f.src, &dst)
                .with_context(|| format!("copying {} to {}", f.src.display(), dst.display()))?;
        }
        let mut charon = Self {
            ns: ns.to_owned(),
            dir,
            child: None,
            root: config.root.clone(),
        };
        charon.spawn()?;
        charon.load_all()?;
        Ok(charon)
    }

    fn spawn(&mut self) -> Result<()> {
        let root = self.dir.path();
        let out = fs::File::create(root.join("charon.stdout"))?;
        let script = match &self.root {
            None => format!("mount -t tmpfs tmpfs /run && exec {CHARON}"),
            // the instance's directory at the same path inside the root, so strongswan.conf,
            // the vici socket and the log are where the host's swanctl and the tests look
            Some(r) => {
                let (r, d) = (r.display(), root.display());
                format!(
                    "mount -t tmpfs tmpfs {r}/run && mount -t tmpfs tmpfs {r}/tmp \
                     && mkdir -p {r}{d} && mount --bind {d} {r}{d} && mount -t proc proc {r}/proc \
                     && mount --rbind /dev {r}/dev && mount --rbind /sys {r}/sys \
                     && exec chroot {r} {CHARON}"
                )
            }
        };
        let mut c = netns::exec_private_mounts(&self.ns, &script);
        c.env("STRONGSWAN_CONF", root.join("strongswan.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // `ip netns exec`, `unshare` and `sh -c 'exec'` all exec: the child's pid is charon's
        let mut child = c
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::display(&c)))?;
        let started = cmd::wait_for_path(&mut child, &self.vici_path(), START_TIMEOUT);
        self.child = Some(child);
        started.map_err(|e| anyhow::anyhow!("charon in {}: {e}{}", self.ns, self.log_excerpt()))
    }

    /// The namespace charon runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// charon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The directory holding its configuration, sockets and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `swanctl/` of this instance (`SWANCTL_DIR`): put certificates and keys in its subdirectories.
    pub fn swanctl_dir(&self) -> PathBuf {
        self.dir.path().join("swanctl")
    }

    /// The vici socket.
    pub fn vici_path(&self) -> PathBuf {
        self.dir.path().join("charon.vici")
    }

    /// charon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("charon.log")
    }

    /// charon's log so far.
    pub fn log(&self) -> String {
        cmd::daemon_log(&self.log_path(), &self.dir.path().join("charon.stdout"))
    }

    fn log_excerpt(&self) -> String {
        cmd::log_tail("charon", &self.log_path(), &self.log())
    }

    /// Copies a certificate or key into this instance's `swanctl/<subdir>/` (`x509`, `x509ca`,
    /// `private`, ...) under `name`; `--load-all` then loads it.
    pub fn install_cert(&self, src: &Path, subdir: &str, name: &str) -> Result<()> {
        let dst = self.swanctl_dir().join(subdir).join(name);
        fs::copy(src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        Ok(())
    }

    /// A `swanctl` command talking to this instance.
    pub fn swanctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("swanctl");
        c.env("STRONGSWAN_CONF", self.dir.path().join("strongswan.conf"))
            .env("SWANCTL_DIR", self.swanctl_dir())
            .args(args);
        c
    }

    /// Runs `swanctl ARGS...` against this instance, checked; errors carry charon's log tail.
    pub fn swanctl(&self, args: &[&str]) -> Result<Output> {
        cmd::check(&mut self.swanctl_command(args)).map_err(|e| e.context(self.log_excerpt()))
    }

    /// `swanctl --load-all`: (re)loads connections, secrets, certificates and keys.
    pub fn load_all(&self) -> Result<Output> {
        self.swanctl(&["--load-all", "--noprompt"])
    }

    /// Writes a new swanctl.conf from `config` and reloads it.
    pub fn reconfigure(&self, config: &CharonConfig) -> Result<Output> {
        fs::write(
            self.swanctl_dir().join("swanctl.conf"),
            config.swanctl_conf(),
        )?;
        self.load_all()
    }

    /// `swanctl --initiate --ike IKE --child CHILD`, waiting up to `timeout` seconds.
    pub fn initiate(&self, ike: &str, child: &str, timeout: u32) -> Result<Output> {
        let t = timeout.to_string();
        self.swanctl(&[
            "--initiate",
            "--ike",
            ike,
            "--child",
            child,
            "--timeout",
            &t,
        ])
    }

    /// `swanctl --terminate --ike IKE`, waiting up to `timeout` seconds.
    pub fn terminate(&self, ike: &str, timeout: u32) -> Result<Output> {
        let t = timeout.to_string();
        self.swanctl(&["--terminate", "--ike", ike, "--timeout", &t])
    }

    /// `swanctl --list-sas`, as text and parsed.
    pub fn list_sas(&self) -> Result<ListSas> {
        let out = self.swanctl(&["--list-sas"])?;
        Ok(ListSas::parse(&out.stdout))
    }

    /// Polls `--list-sas` until `ike`/`child` is ESTABLISHED/INSTALLED or `timeout` passes.
    pub fn wait_up(&self, ike: &str, child: &str, timeout: Duration) -> Result<ListSas> {
        let deadline = Instant::now() + timeout;
        loop {
            let sas = self.list_sas()?;
            if sas.is_up(ike, child) {
                return Ok(sas);
            }
            if Instant::now() > deadline {
                bail!(
                    "{ike}/{child} not ESTABLISHED/INSTALLED in {} after {timeout:?}:\n{}{}",
                    self.ns,
                    sas.raw,
                    self.log_excerpt()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops charon: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!(
                    "charon in {} ignored SIGTERM for {STOP_GRACE:?}; killed",
                    self.ns
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Charon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("strongswan: {e:#}");
        }
        if std::env::var_os("STRAIT_KEEP_LOGS").is_some() {
            eprintln!("strongswan: keeping {}", self.dir.path().display());
            self.dir.disable_cleanup(true);
        }
    }
}

/// A key type for test certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA with this many bits.
    Rsa(u32),
    /// ECDSA on the curve of this size (256, 384, 521).
    Ecdsa(u32),
}

impl KeyType {
    fn pki_args(self) -> [String; 4] {
        let (t, n) = match self {
            Self::Rsa(n) => ("rsa", n),
            Self::Ecdsa(n) => ("ecdsa", n),
        };
        ["--type".into(), t.into(), "--size".into(), n.to_string()]
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// Its subject DN.
    pub dn: String,
    /// Its subjectAltName FQDN (the ID to use), if an end-entity certificate.
    pub san: Option<String>,
}

/// The tool a [`TestPki`] makes its keys and certificates with: what the remote sites' CAs
/// use. They differ in ways a peer notices: OpenSSL writes DN strings as UTF8String where `pki`
/// writes PrintableString, PKCS#8 keys, and its own extension order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maker {
    /// strongSwan's `pki`.
    Pki,
    /// The `openssl` command (genpkey, req, x509).
    Openssl,
}

/// Makes test certificates with strongSwan's `pki` (or OpenSSL, [`TestPki::new_by`]): a CA,
/// and end-entity certificates signed by it with a SAN FQDN. All files land in `dir`:
/// `ca.crt`/`ca.key`, `<name>.crt`/`<name>.key`.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
    maker: Maker,
    /// The CA.
    pub ca: CertFiles,
}

/// `C=CH, O=Strait Test, CN=x` as OpenSSL's `-subj` writes it.
fn openssl_subj(dn: &str) -> String {
    dn.split(", ").map(|rdn| format!("/{rdn}")).collect()
}

fn openssl_key(key: KeyType, path: &Path) -> Result<()> {
    let opt = match key {
        KeyType::Rsa(n) => ["RSA".to_owned(), format!("rsa_keygen_bits:{n}")],
        KeyType::Ecdsa(n) => ["EC".to_owned(), format!("ec_paramgen_curve:P-{n}")],
    };
    cmd::run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            &opt[0],
            "-pkeyopt",
            &opt[1],
            "-out",
            path_str(path)?,
        ],
    )?;
    Ok(())
}

impl TestPki {
    /// Creates a CA (`C=CH, O=Strait Test, CN=Strait Test CA`) with a key of type `key`.
    pub fn new(dir: &Path, key: KeyType) -> Result<Self> {
        Self::new_by(dir, key, Maker::Pki)
    }

    /// The same, made by `maker`.
    pub fn new_by(dir: &Path, key: KeyType, maker: Maker) -> Result<Self> {
        if maker == Maker::Openssl {
            return Self::new_openssl(dir, key);
        }
        require_installed()?;
        fs::create_dir_all(dir)?;
        let ca_key = dir.join("ca.key");
        let ca_cert = dir.join("ca.crt");
        let dn = "C=CH, O=Strait Test, CN=Strait Test CA".to_owned();
        gen_key(key, &ca_key)?;
        let out = cmd::run(
            "pki",
            &[
                "--self",
                "--ca",
                "--lifetime",
                "3650",
                "--in",
                path_str(&ca_key)?,
                "--type",
                "priv",
                "--dn",
                &dn,
                "--outform",
                "pem",
            ],
        )?;
        fs::write(&ca_cert, out.stdout)?;
        Ok(Self {
            dir: dir.to_owned(),
            maker,
            ca: CertFiles {
                cert: ca_cert,
                key: ca_key,
                dn,
                san: None,
            },
        })
    }

    fn new_openssl(dir: &Path, key: KeyType) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let (ca_key, ca_cert) = (dir.join("ca.key"), dir.join("ca.crt"));
        let dn = "C=CH, O=Strait Test, CN=Strait Test CA".to_owned();
        openssl_key(key, &ca_key)?;
        cmd::run(
            "openssl",
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                path_str(&ca_key)?,
                "-subj",
                &openssl_subj(&dn),
                "-days",
                "3650",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                path_str(&ca_cert)?,
            ],
        )?;
        Ok(Self {
            dir: dir.to_owned(),
            maker: Maker::Openssl,
            ca: CertFiles {
                cert: ca_cert,
                key: ca_key,
                dn,
                san: None,
            },
        })
    }

    fn issue_openssl(&self, name: &str, fqdn: &str, key: KeyType) -> Result<CertFiles> {
        let key_path = self.dir.join(format!("{name}.key"));
        let (cert, csr, ext) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.csr")),
            self.dir.join(format!("{name}.ext")),
        );
        let dn = format!("C=CH, O=Strait Test, CN={fqdn}");
        openssl_key(key, &key_path)?;
        cmd::run(
            "openssl",
            &[
                "req",
                "-new",
                "-key",
                path_str(&key_path)?,
                "-subj",
                &openssl_subj(&dn),
                "-out",
                path_str(&csr)?,
            ],
        )?;
        fs::write(
            &ext,
            format!(
                "subjectAltName=DNS:{fqdn}\nextendedKeyUsage=serverAuth,clientAuth\n\
                 keyUsage=critical,digitalSignature\n"
            ),
        )?;
        cmd::run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr)?,
                "-CA",
                path_str(&self.ca.cert)?,
                "-CAkey",
                path_str(&self.ca.key)?,
                "-CAcreateserial",
                "-CAserial",
                path_str(&self.dir.join("ca.srl"))?,
                "-days",
                "730",
                "-extfile",
                path_str(&ext)?,
                "-out",
                path_str(&cert)?,
            ],
        )?;
        Ok(CertFiles {
            cert,
            key: key_path,
            dn,
            san: Some(fqdn.to_owned()),
        })
    }

    /// Issues `<name>.crt` for `fqdn` (SAN and CN) with a new key of type `key`.
    pub fn issue(&self, name: &str, fqdn: &str, key: KeyType) -> Result<CertFiles> {
        if self.maker == Maker::Openssl {
            return self.issue_openssl(name, fqdn, key);
        }
        let key_path = self.dir.join(format!("{name}.key"));
        let cert = self.dir.join(format!("{name}.crt"));
        let dn = format!("C=CH, O=Strait Test, CN={fqdn}");
        gen_key(key, &key_path)?;
        let out = cmd::run(
            "pki",
            &[
                "--issue",
                "--lifetime",
                "730",
                "--in",
                path_str(&key_path)?,
                "--type",
                "priv",
                "--cacert",
                path_str(&self.ca.cert)?,
                "--cakey",
                path_str(&self.ca.key)?,
                "--dn",
                &dn,
                "--san",
                fqdn,
                "--flag",
                "serverAuth",
                "--flag",
                "clientAuth",
                "--outform",
                "pem",
            ],
        )?;
        fs::write(&cert, out.stdout)?;
        Ok(CertFiles {
            cert,
            key: key_path,
            dn,
            san: Some(fqdn.to_owned()),
        })
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

fn gen_key(key: KeyType, path: &Path) -> Result<()> {
    let mut args: Vec<String> = vec!["--gen".into()];
    args.extend(key.pki_args());
    args.extend(["--outform".into(), "pem".into()]);
    let out = cmd::run("pki", &args)?;
    fs::write(path, out.stdout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
gw: #1, ESTABLISHED, IKEv2, 1b2ee1a1c2ffb6f4_i* 3d6b2b6bdc1f1a9d_r
  local  'left.example' @ 192.0.2.1[4500]
  remote 'right.example' @ 192.0.2.2[4500]
  AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519
  established 1s ago, rekeying in 13988s
  net: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256/CURVE_25519
    installed 1s ago, rekeying in 3383s, expires in 3959s
    in  c1e4d9b0,    252 bytes,     3 packets,     0s ago
    out c3a8a1b2,    252 bytes,     3 packets,     0s ago
    local  198.51.100.0/24
    remote 203.0.113.0/24
";

    #[test]
    fn parses_list_sas() {
        let sas = ListSas::parse(SAMPLE);
        assert!(sas.is_up("gw", "net"));
        let ike = sas.ike("gw").unwrap();
        assert_eq!(ike.unique_id, 1);
        assert_eq!(
            ike.proposal.as_deref(),
            Some("AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519")
        );
        let child = &ike.children[0];
        assert_eq!(child.state, "INSTALLED");
        assert_eq!(child.mode.as_deref(), Some("TUNNEL-in-UDP"));
        assert_eq!(
            child.proposal.as_deref(),
            Some("ESP:AES_GCM_16-256/CURVE_25519")
        );
        assert_eq!((child.bytes_in, child.packets_in), (252, 3));
        assert_eq!((child.bytes_out, child.packets_out), (252, 3));
    }

    #[test]
    fn renders_config() {
        let mut conn =
            Connection::new("gw", Endpoint::psk("a.example"), Endpoint::psk("b.example"));
        conn.remote_addrs = vec!["192.0.2.2".into()];
        let mut child = ChildConfig::new("net", "198.51.100.0/24", "203.0.113.0/24");
        child.rekey_time = Some("20s".into());
        conn.children.push(child);
        let cfg = CharonConfig {
            connections: vec![conn],
            secrets: vec![Secret::Ike {
                ids: vec!["a.example".into(), "b.example".into()],
                secret: "k".into(),
            }],
            dos_protection: Some(false),
            ..CharonConfig::default()
        };
        let s = cfg.swanctl_conf();
        assert!(s.contains("remote_addrs = 192.0.2.2"));
        assert!(s.contains("rekey_time = 20s"));
        assert!(s.contains("id-1 = b.example"));
        let c = cfg.strongswan_conf(Path::new("/x"));
        assert!(c.contains("dos_protection = no"));
        assert!(c.contains("socket = unix:///x/charon.vici"));
        assert!(c.contains("kernel-libipsec kernel-netlink"));
    }
}
