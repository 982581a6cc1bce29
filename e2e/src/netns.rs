//! Network namespaces as sites, nodes and NAT routers, joined by veth links.
//!
//! Every namespace is named `strait-<pid>-<seq>-<node>`: `<pid>` is the test process that owns it,
//! so [`sweep_stale`] can find and remove what a crashed run (SIGKILL, abort) left behind.
//! Dropping a [`Topology`] — also while a test panics — kills every process inside its namespaces
//! and deletes them, which takes their veths, addresses, routes, nftables tables and XFRM state
//! with them. Nothing is ever configured in the root namespace.
//!
//! Addresses come from the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24)
//! and never leave the namespaces.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd::{self, Output};

/// Prefix of every namespace this module creates.
pub const PREFIX: &str = "strait-";
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

static SEQ: AtomicU32 = AtomicU32::new(1);
static SERIAL: Mutex<()> = Mutex::new(());

/// A process-wide lock for tests that create namespaces and daemons: hold the guard for the whole
/// test so tests in one binary run one at a time (the 2-core machines are slow enough already).
/// A test that panicked while holding it does not poison it for the others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `ip netns exec NS ARGS...`, checked: fails with the command, status and output unless it
/// exits 0.
pub fn exec<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Result<Output> {
    cmd::check(&mut exec_command(ns, args))
}

/// `ip netns exec NS ARGS...`, returning the output whatever the exit status.
pub fn exec_unchecked<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Result<Output> {
    cmd::output(&mut exec_command(ns, args))
}

/// A [`Command`] running the shell `script` inside `ns` and in a mount namespace of its own
/// (`unshare -m --propagation private`): what a daemon needs for a private `/run` or a chroot
/// with mounts that go when it exits.
pub fn exec_private_mounts(ns: &str, script: &str) -> Command {
    exec_command(
        ns,
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ],
    )
}

/// A [`Command`] running `args` inside `ns`, for callers that need to set more (env, stdio).
pub fn exec_command<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// Makes `ns` drop ICMP "fragmentation needed", sent or forwarded (table `inet
/// strait_test_pmtu`, gone with the namespace): with a smaller MTU on the path, TCP then works
/// only if the gateway clamps the MSS, as behind the many firewalls that drop ICMP.
///
/// # Errors
/// `nft` fails.
pub fn drop_frag_needed(ns: &str) -> Result<()> {
    let rules = "table inet strait_test_pmtu {\n\
         chain pmtu_out { type filter hook output priority 0; icmp type destination-unreachable icmp code frag-needed drop; }\n\
         chain pmtu_fwd { type filter hook forward priority 0; icmp type destination-unreachable icmp code frag-needed drop; }\n}\n";
    nft_file(ns, rules)
}

/// Makes `ns` masquerade what leaves the pod network `pods` as a CNI does (flannel's rule, or
/// Calico's `natOutgoing`: `ip saddr PODS ip daddr != PODS masquerade`, table `ip cni`, gone
/// with the namespace). Tunnel traffic then keeps its pod address only where Strait exempts
/// it.
///
/// # Errors
/// `nft` fails.
pub fn masquerade_like_a_cni(ns: &str, pods: &str) -> Result<()> {
    let rules = format!(
        "table ip cni {{\n\
         chain post {{ type nat hook postrouting priority srcnat; ip saddr {pods} ip daddr != {pods} masquerade; }}\n}}\n"
    );
    nft_file(ns, &rules)
}

fn nft_file(ns: &str, rules: &str) -> Result<()> {
    let file = tempfile::NamedTempFile::new().context("a file for nft's rules")?;
    std::fs::write(file.path(), rules).context("writing nft's rules")?;
    exec(
        ns,
        &[OsStr::new("nft"), OsStr::new("-f"), file.path().as_os_str()],
    )
    .map(|_| ())
}

/// The XFRM policies in `ns` (`ip xfrm policy` lines starting with `src`) but the IKE sockets'
/// bypass policies, which show as 0.0.0.0/0 <-> 0.0.0.0/0, or ::/0 <-> ::/0 for an IPv6
/// socket (one per socket and direction, with no other selector).
///
/// # Errors
/// `ip` fails.
pub fn xfrm_policies(ns: &str) -> Result<Vec<String>> {
    Ok(exec(ns, &["ip", "xfrm", "policy"])?
        .stdout
        .lines()
        .filter(|l| {
            l.starts_with("src ")
                && !matches!(
                    l.trim_end(),
                    "src 0.0.0.0/0 dst 0.0.0.0/0" | "src ::/0 dst ::/0"
                )
        })
        .map(str::to_owned)
        .collect())
}

/// Names of the namespaces that exist now (from `/run/netns`).
pub fn list() -> Vec<String> {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The pid that owns a namespace named by this module, if `name` is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    parts.next()?;
    Some(pid)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces left by test processes that are gone (crashed or killed before their
/// `Drop` ran), killing whatever still runs inside them. Returns the names removed. Namespaces
/// of live processes, and namespaces not named by this module, are left alone.
pub fn sweep_stale() -> Result<Vec<String>> {
    let mut swept = Vec::new();
    for name in list() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        delete_namespace(&name)?;
        swept.push(name);
    }
    Ok(swept)
}

/// Pids of the processes whose network namespace is `ns`.
pub fn pids(ns: &str) -> Vec<u32> {
    cmd::output(Command::new("ip").args(["netns", "pids", ns]))
        .map(|o| {
            o.stdout
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
    }
}

/// Kills every process in `ns` (SIGKILL: these are test processes), waits until they are gone,
/// then deletes the namespace.
fn delete_namespace(ns: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = pids(ns);
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            // delete anyway: the namespace then lives only as long as these processes
            eprintln!("netns: processes {left:?} in {ns} survived SIGKILL");
            break;
        }
        for pid in left {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = cmd::output(Command::new("ip").args(["netns", "del", ns]))?;
    if !out.success() && Path::new("/run/netns").join(ns).exists() {
        bail!("cannot delete namespace {ns}: {}", out.stderr.trim());
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct LinkSpec {
    a: String,
    a_addr: String,
    b: String,
    b_addr: String,
}

#[derive(Debug, Clone)]
struct RouteSpec {
    node: String,
    args: Vec<String>,
}

/// Describes namespaces, links, addresses, routes and NAT; [`TopologyBuilder::build`] creates them.
#[derive(Debug, Default)]
pub struct TopologyBuilder {
    nodes: Vec<String>,
    links: Vec<LinkSpec>,
    subnets: Vec<(String, String)>,
    routes: Vec<RouteSpec>,
    routers: Vec<String>,
    masquerade: Vec<(String, String)>,
}

impl TopologyBuilder {
    /// A node (site, cluster node or router): one network namespace with `lo` up.
    pub fn node(mut self, name: &str) -> Self {
        self.nodes.push(name.to_owned());
        self
    }

    /// A veth link between nodes `a` and `b`, with an address (CIDR) on each end. The interface
    /// in `a` is named `to-<b>` and the one in `b` `to-<a>` (cut to 15 characters).
    pub fn link(mut self, a: &str, a_addr: &str, b: &str, b_addr: &str) -> Self {
        self.links.push(LinkSpec {
            a: a.to_owned(),
            a_addr: a_addr.to_owned(),
            b: b.to_owned(),
            b_addr: b_addr.to_owned(),
        });
        self
    }

    /// An "inner subnet" address (CIDR, usually a /32) on `lo` of `node`: the host a tunnel
    /// carries traffic for.
    pub fn subnet(mut self, node: &str, addr: &str) -> Self {
        self.subnets.push((node.to_owned(), addr.to_owned()));
        self
    }

    /// A route in `node`: the words after `ip route add`, e.g. `["default", "via", "192.0.2.126"]`.
    pub fn route(mut self, node: &str, args: &[&str]) -> Self {
        self.routes.push(RouteSpec {
            node: node.to_owned(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
        });
        self
    }

    /// Makes `node` a router: IPv4 and IPv6 forwarding on.
    pub fn router(mut self, node: &str) -> Self {
        self.routers.push(node.to_owned());
        self
    }

    /// Makes `node` a NAT router: forwarding on, and nftables masquerade (tables `ip strait_nat`
    /// and `ip6 strait_nat`, NAT66 for a test that gives the links IPv6 addresses) on
    /// everything it sends out of its link towards `wan_peer`.
    pub fn nat_router(mut self, node: &str, wan_peer: &str) -> Self {
        self.routers.push(node.to_owned());
        self.masquerade.push((node.to_owned(), wan_peer.to_owned()));
        self
    }

    /// Creates everything. On any error, what was already made is removed again.
    pub fn build(self) -> Result<Topology> {
        cmd::require_root()?;
        cmd::require_program("ip", "e2e/setup/packages.sh")?;
        if !self.masquerade.is_empty() {
            cmd::require_program("nft", "e2e/setup/packages.sh")?;
        }
        let swept = sweep_stale()?;
        if !swept.is_empty() {
            eprintln!("netns: removed stale namespaces of dead test processes: {swept:?}");
        }
        let id = format!(
            "{}{}-{}",
            PREFIX,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut topo = Topology {
            id,
            namespaces: BTreeMap::new(),
            created: Vec::new(),
            children: Vec::new(),
        };
        self.apply(&mut topo)?; // on error `topo` drops here and deletes what exists
        Ok(topo)
    }

    fn apply(&self, topo: &mut Topology) -> Result<()> {
        for node in &self.nodes {
            if node.is_empty() || !node.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("node name {node:?}: use letters, digits and '_'");
            }
            let ns = format!("{}-{node}", topo.id);
            if topo.namespaces.contains_key(node) {
                bail!("node {node} declared twice");
            }
            cmd::ip(&["netns", "add", &ns])?;
            topo.created.push(ns.clone());
            topo.namespaces.insert(node.clone(), ns.clone());
            cmd::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        for l in &self.links {
            let (a_ns, b_ns) = (topo.ns(&l.a)?.to_owned(), topo.ns(&l.b)?.to_owned());
            let (a_if, b_if) = (ifname(&l.b), ifname(&l.a));
            // created directly inside the namespaces: no name clash in the root namespace
            cmd::ip(&[
                "link", "add", &a_if, "netns", &a_ns, "type", "veth", "peer", "name", &b_if,
                "netns", &b_ns,
            ])
            .with_context(|| format!("link {} <-> {}", l.a, l.b))?;
            for (ns, ifc, addr) in [(&a_ns, &a_if, &l.a_addr), (&b_ns, &b_if, &l.b_addr)] {
                cmd::ip(&["-n", ns, "addr", "add", addr, "dev", ifc])?;
                cmd::ip(&["-n", ns, "link", "set", ifc, "up"])?;
            }
        }
        for (node, addr) in &self.subnets {
            let ns = topo.ns(node)?.to_owned();
            cmd::ip(&["-n", &ns, "addr", "add", addr, "dev", "lo"])?;
        }
        for node in &self.routers {
            let ns = topo.ns(node)?.to_owned();
            exec(
                &ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                ],
            )?;
        }
        for (node, wan_peer) in &self.masquerade {
            let ns = topo.ns(node)?.to_owned();
            topo.ns(wan_peer)?;
            let rules: String = ["ip", "ip6"]
                .iter()
                .map(|family| {
                    format!(
                        "table {family} strait_nat {{\n  chain postrouting {{\n    type nat hook \
                         postrouting priority srcnat; policy accept;\n    oifname \"{}\" \
                         masquerade\n  }}\n}}\n",
                        ifname(wan_peer)
                    )
                })
                .collect();
            nft_apply(&ns, &rules).with_context(|| format!("NAT on {node}"))?;
        }
        for r in &self.routes {
            let ns = topo.ns(&r.node)?.to_owned();
            let mut args = vec!["-n", ns.as_str(), "route", "add"];
            args.extend(r.args.iter().map(String::as_str));
            cmd::ip(&args)?;
        }
        Ok(())
    }
}

fn ifname(peer: &str) -> String {
    let mut name = format!("to-{peer}");
    name.truncate(IFNAME_MAX);
    name
}

fn nft_apply(ns: &str, rules: &str) -> Result<()> {
    use std::io::Write as _;
    let mut c = exec_command(ns, &["nft", "-f", "-"]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start nft")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .context("writing nft rules")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft -f in {ns} failed ({}): {}\nrules:\n{rules}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Namespaces and links made by a [`TopologyBuilder`]; all removed on drop.
#[derive(Debug)]
pub struct Topology {
    id: String,
    namespaces: BTreeMap<String, String>,
    created: Vec<String>,
    children: Vec<(String, Child)>,
}

impl Topology {
    /// Starts describing a topology.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The unique prefix of this topology's namespaces (`strait-<pid>-<seq>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace name of `node`.
    pub fn ns(&self, node: &str) -> Result<&str> {
        self.namespaces
            .get(node)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("no node {node:?} in topology {}", self.id))
    }

    /// The interface in `node` that links it to `peer`.
    pub fn interface(&self, node: &str, peer: &str) -> Result<String> {
        self.ns(node)?;
        self.ns(peer)?;
        Ok(ifname(peer))
    }

    /// Runs `args` in `node`'s namespace, checked.
    pub fn exec<S: AsRef<OsStr>>(&self, node: &str, args: &[S]) -> Result<Output> {
        exec(self.ns(node)?, args)
    }

    /// Runs `args` in `node`'s namespace, whatever the exit status.
    pub fn exec_unchecked<S: AsRef<OsStr>>(&self, node: &str, args: &[S]) -> Result<Output> {
        exec_unchecked(self.ns(node)?, args)
    }

    /// Starts `args` in the background in `node`'s namespace, output to `log` (appended). The
    /// process is killed when the topology drops. Returns its pid.
    pub fn spawn<S: AsRef<OsStr>>(&mut self, node: &str, args: &[S], log: &Path) -> Result<u32> {
        let ns = self.ns(node)?.to_owned();
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut c = exec_command(&ns, args);
        let c = c
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = c
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::display(c)))?;
        let pid = child.id();
        self.children.push((ns, child));
        Ok(pid)
    }

    /// `ping -c COUNT -W 2 [-I SRC] DST` from `node`; `Ok(output)` when at least one reply
    /// came back, otherwise an error with ping's output.
    pub fn ping(
        &self,
        node: &str,
        src: Option<Ipv4Addr>,
        dst: Ipv4Addr,
        count: u32,
    ) -> Result<Output> {
        let mut args = vec![
            "ping".to_owned(),
            "-n".to_owned(),
            "-c".to_owned(),
            count.to_string(),
            "-i".to_owned(),
            "0.3".to_owned(),
            "-W".to_owned(),
            "2".to_owned(),
        ];
        if let Some(src) = src {
            args.push("-I".to_owned());
            args.push(src.to_string());
        }
        args.push(dst.to_string());
        self.exec(node, &args)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.created.iter().rev() {
            if let Err(e) = delete_namespace(ns) {
                eprintln!("netns: cleanup: {e:#}");
            }
        }
    }
}

/// One side of a [`SitePair`].
#[derive(Debug, Clone)]
pub struct Site {
    /// Logical node name (`left` or `right`).
    pub node: &'static str,
    /// Namespace name.
    pub ns: String,
    /// The gateway's outer address (where IKE and ESP go from and to).
    pub addr: Ipv4Addr,
    /// The address this site's peer sees it as: `addr`, or the NAT router's outside address.
    pub public_addr: Ipv4Addr,
    /// The site's inner host (on `lo`), inside `subnet`.
    pub inner: Ipv4Addr,
    /// The site's protected subnet.
    pub subnet: &'static str,
    /// An FQDN identity for the site's gateway.
    pub id: &'static str,
}

/// Two sites ready for a site-to-site tunnel, optionally with `left` behind a NAT router.
///
/// ```text
/// without NAT:  left 192.0.2.1/24 ---------------------------------- 192.0.2.2/24 right
/// with NAT:     left 192.0.2.1/25 --- 192.0.2.126/25 nat 192.0.2.129/25 --- 192.0.2.130/25 right
///                                                    (masquerade)
/// inner:        left 198.51.100.1 on lo (198.51.100.0/24)     right 203.0.113.1 on lo (203.0.113.0/24)
/// ```
///
/// `right` has no route to left's private addresses: with NAT it sees only `192.0.2.129`.
/// Routes for the inner subnets are left to the IPsec daemons (strongSwan installs them in table
/// 220).
#[derive(Debug)]
pub struct SitePair {
    /// The namespaces; dropping the pair removes them.
    pub topology: Topology,
    /// The initiating site (behind the NAT, if any).
    pub left: Site,
    /// The responding site.
    pub right: Site,
    /// The NAT router's namespace, when there is one.
    pub nat: Option<String>,
}

/// IPv6 addresses a NAT pair's links get from [`SitePair::add_ipv6_through_nat`].
#[derive(Debug, Clone, Copy)]
pub struct Nat66 {
    /// The left site's, behind the NAT.
    pub inside: &'static str,
    /// The NAT router's on the left link: the left site's default route.
    pub nat_in: &'static str,
    /// The NAT router's on the right link: the address the right site sees the left one at.
    pub nat_out: &'static str,
    /// The right site's.
    pub outside: &'static str,
}

impl SitePair {
    /// Gives the links of a pair built with a NAT IPv6 addresses ([`Nat66`], /64 each, no
    /// duplicate detection), and the left site a default route through the NAT, which
    /// masquerades IPv6 as it does IPv4. The right site has no route to the left's prefix.
    ///
    /// # Errors
    /// The pair has no NAT, or `ip` fails.
    pub fn add_ipv6_through_nat(&self) -> Result<Nat66> {
        let a = Nat66 {
            inside: "2001:db8:6::1",
            nat_in: "2001:db8:6::fe",
            nat_out: "2001:db8:7::fe",
            outside: "2001:db8:7::2",
        };
        if self.nat.is_none() {
            bail!("the pair has no NAT");
        }
        for (node, peer, addr) in [
            ("left", "nat", a.inside),
            ("nat", "left", a.nat_in),
            ("nat", "right", a.nat_out),
            ("right", "nat", a.outside),
        ] {
            let dev = self.topology.interface(node, peer)?;
            let cidr = format!("{addr}/64");
            self.topology.exec(
                node,
                &["ip", "-6", "addr", "add", &cidr, "dev", &dev, "nodad"],
            )?;
        }
        self.topology.exec(
            "left",
            &["ip", "-6", "route", "add", "default", "via", a.nat_in],
        )?;
        Ok(a)
    }

    /// Builds the two sites, with a masquerading router between them when `nat` is true.
    ///
    /// # Errors
    /// The namespaces cannot be made.
    pub fn new(nat: bool) -> Result<Self> {
        Self::build(nat, |b| b)
    }

    /// The pair without NAT, with what `more` adds to it (hosts behind a site, say).
    ///
    /// # Errors
    /// The namespaces cannot be made.
    pub fn with(more: impl FnOnce(TopologyBuilder) -> TopologyBuilder) -> Result<Self> {
        Self::build(false, more)
    }

    fn build(nat: bool, more: impl FnOnce(TopologyBuilder) -> TopologyBuilder) -> Result<Self> {
        let left_inner = Ipv4Addr::new(198, 51, 100, 1);
        let right_inner = Ipv4Addr::new(203, 0, 113, 1);
        let b = more(
            Topology::builder()
                .node("left")
                .node("right")
                .subnet("left", "198.51.100.1/32")
                .subnet("right", "203.0.113.1/32"),
        );
        let (topology, left_addr, left_public, right_addr) = if nat {
            let topo = b
                .node("nat")
                .link("left", "192.0.2.1/25", "nat", "192.0.2.126/25")
                .link("nat", "192.0.2.129/25", "right", "192.0.2.130/25")
                .nat_router("nat", "right")
                .route("left", &["default", "via", "192.0.2.126"])
                .build()?;
            (
                topo,
                Ipv4Addr::new(192, 0, 2, 1),
                Ipv4Addr::new(192, 0, 2, 129),
                Ipv4Addr::new(192, 0, 2, 130),
            )
        } else {
            let topo = b
                .link("left", "192.0.2.1/24", "right", "192.0.2.2/24")
                .build()?;
            let left = Ipv4Addr::new(192, 0, 2, 1);
            (topo, left, left, Ipv4Addr::new(192, 0, 2, 2))
        };
        let left = Site {
            node: "left",
            ns: topology.ns("left")?.to_owned(),
            addr: left_addr,
            public_addr: left_public,
            inner: left_inner,
            subnet: "198.51.100.0/24",
            id: "left.strait.example",
        };
        let right = Site {
            node: "right",
            ns: topology.ns("right")?.to_owned(),
            addr: right_addr,
            public_addr: right_addr,
            inner: right_inner,
            subnet: "203.0.113.0/24",
            id: "right.strait.example",
        };
        let nat = if nat {
            Some(topology.ns("nat")?.to_owned())
        } else {
            None
        };
        Ok(Self {
            topology,
            left,
            right,
            nat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("strait-1234-7-left"), Some(1234));
        assert_eq!(owner_pid("strait-1234-7-node_a"), Some(1234));
        assert_eq!(owner_pid("strait-1234-left"), None);
        assert_eq!(owner_pid("strait-agent-1"), None);
        assert_eq!(owner_pid("other-1234-7-left"), None);
    }

    #[test]
    fn interface_names_fit() {
        assert_eq!(ifname("right"), "to-right");
        assert_eq!(ifname("a_very_long_node_name").len(), IFNAME_MAX);
    }
}
