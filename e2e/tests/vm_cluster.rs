//! Cluster mode with real ESP: the control plane (etcd + kube-apiserver) and the operator run on
//! the host; the gateway node and the remote site run inside the kernel VM, which reaches the
//! host's API server over qemu user networking (`10.0.2.2` is the host's loopback). Feature
//! `vm-tests`; `e2e/vm/tier.sh` runs this binary on the host (it boots its own VM).
//!
//! Why not the API server inside the guest: under TCG on the 2-core machines kube-apiserver took
//! ~375 s to answer `/readyz` (measured), too slow for CI.
//!
//! ```text
//!  host: etcd, kube-apiserver 127.0.0.1:PORT, strait-operator, kubectl
//!   |  slirp: guest 10.0.2.2:PORT -> host 127.0.0.1:PORT
//!  guest (Debian kernel with ESP):
//!   gw1: strait-agent cluster --dataplane kernel, 127.0.0.1:PORT forwarded to 10.0.2.2:PORT
//!        192.0.2.1/30 ---- 192.0.2.2/30 \
//!        inner 198.51.100.1                 remote (charon, kernel-netlink), IKE 192.0.2.100
//!   gw2: the same, standby                  inner 203.0.113.1
//!        192.0.2.5/30 ---- 192.0.2.6/30 /
//!   the cluster's routed underlay: gw1 10.1.1.2/24, gw2 10.1.2.2/24, node2 10.1.3.2/24, each
//!        on its own link to a router `fabric` (.1); the InternalIPs
//!   node2: strait-agent route (both gateways run one too)
//!        198.51.100.65/26 ---- pod 198.51.100.66 (the test CNI: the pod's /26 via node2)
//!   gw1: 198.51.100.129/26 ---- gwpod 198.51.100.130 (a pod on the gateway node)
//! ```
//!
//! The pod on node2 reaches the remote host through the route role's VXLAN overlay to gw1 and
//! gw1's ESP SA, both ways (pings, and 10 MiB over TCP each way with a checksum, the second
//! connection opened by the remote host), and so do a pod on gw1 and gw1's own process, over a 1400-byte path MTU with ICMP "fragmentation
//! needed" dropped (the gateway's MSS clamping), while every node masquerades what leaves the
//! pod network as flannel does (the exemptions of the route role and the agent keep the pod's
//! address). Then gw1 dies (its processes killed, its links
//! down) while the remote host streams to the pod over TCP and the pod pings the remote host:
//! the operator fails over to gw2, node2 follows, the stream survives intact, and the gap is
//! reported. What either end of a gateway's link to the remote site sends carries no cleartext
//! packet of the tunnel's subnets throughout.
//!
//! The two halves meet through files in a directory both see (`--rwdir`): the host writes the
//! kubeconfig and the port; the guest writes `node-up` once charon and the agents run, and
//! `traffic` once traffic passed through gw1's ESP SAs. The host applies the tunnel, waits for
//! `Ready`, waits for `traffic` and checks the status against it, writes `failover-go`, waits
//! for the guest's `failover` (gw2's SAs) and checks the status again, then deletes the tunnel;
//! the guest then sees charon's IKE SA and gw2's XFRM objects go.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_e2e::apiforward::PortForward;
use strait_e2e::cluster::{self, LOCAL_NET, REMOTE_ADDR, REMOTE_NET};
use strait_e2e::controlplane::ControlPlane;
use strait_e2e::netns;
use strait_e2e::product::{self, Daemon, NAMESPACE};
use strait_e2e::strongswan::{Charon, CharonConfig, Plugins};
use strait_e2e::vm;

const TUNNEL: &str = "dc1-to-dc2";
const PSK: &str = "strait-vm-cluster-psk-7c31a9e05d";
const LOCAL_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const REMOTE_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const NODE: &str = "gw1";
/// The standby gateway.
const NODE_B: &str = "gw2";
/// The node without a tunnel, with a pod behind it.
const NODE2: &str = "node2";
/// The nodes' InternalIPs on the routed underlay, and the overlay addresses they give.
const INTERNAL: [(&str, &str); 3] = [
    (NODE, "10.1.1.2"),
    (NODE_B, "10.1.2.2"),
    (NODE2, "10.1.3.2"),
];
const OVERLAY_GW1: &str = "240.1.1.2";
const OVERLAY_GW2: &str = "240.1.2.2";
/// A short heartbeat, so that gw1's death is noticed within seconds (8 s: renewals through
/// the emulated VM's API forward can take a few seconds).
const LEASE_ARGS: [&str; 4] = ["--lease-duration-seconds", "8", "--renew-interval", "1"];
const POD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
/// A pod on the gateway node itself.
const GW_POD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 130);
/// The guest half finds the shared directory here.
const SHARED_ENV: &str = "STRAIT_VM_CLUSTER_DIR";
/// Printed by the guest half when all its checks passed.
const GUEST_PASS: &str = "VM-CLUSTER GUEST PASS";

fn wait_file(path: &Path, timeout: Duration, vm: &mut vm::Running, what: &str) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = fs::read_to_string(path) {
            return s;
        }
        if let Some(st) = vm.try_wait().unwrap() {
            panic!("the VM ended ({st}) before {what}:\n{}", vm.output());
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not after {timeout:?}:\n{}",
            vm.output()
        );
        thread::sleep(Duration::from_millis(250));
    }
}

fn status(cp: &ControlPlane) -> Value {
    cluster::status(cp, TUNNEL)
}

/// A copy of `src` in `dir`, stripped of debug info when `strip` can (the guest reads it over
/// 9p under TCG).
/// The status entry of `node` names the SPIs the guest found in its kernel (`spi_in spi_out`
/// first in `file`).
fn assert_status_spis(cp: &ControlPlane, node: &str, file: &str) {
    let s = status(cp);
    let entry = s["gateways"]
        .as_array()
        .and_then(|g| g.iter().find(|e| e["node"] == node))
        .unwrap_or_else(|| panic!("no status entry of {node}: {s:#}"));
    let spis: Vec<&str> = file.split_whitespace().take(2).collect();
    assert_eq!(spis.len(), 2, "the guest's file: {file:?}");
    let child = &entry["childSas"][0];
    let ours = |k: &str| {
        child[k]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("0x")
    };
    assert_eq!(
        (ours("spiIn"), ours("spiOut")),
        (spis[0], spis[1]),
        "{node}'s status SPIs vs its kernel's in the guest: {entry:#}"
    );
}

fn stage_binary(src: &Path, dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&dst)
        .arg(src)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(src, &dst).unwrap();
    }
    dst
}

/// The admin kubeconfig with its CA file copied next to it, so the guest can read both.
fn stage_kubeconfig(cp: &ControlPlane, dir: &Path) -> PathBuf {
    let text = fs::read_to_string(cp.kubeconfig_path()).unwrap();
    let ca_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("certificate-authority:"))
        .expect("CA line in the kubeconfig");
    let ca = ca_line.split_once(':').unwrap().1.trim();
    let staged_ca = dir.join("ca.crt");
    fs::copy(ca, &staged_ca).unwrap();
    let text = text.replace(
        ca_line,
        &format!("    certificate-authority: {}", staged_ca.display()),
    );
    let path = dir.join("kubeconfig");
    fs::write(&path, text).unwrap();
    path
}

/// The host half: control plane, operator, the VM; apply → Ready → traffic → delete.
#[test]
fn cluster_kernel_dataplane_in_vm() {
    strait_e2e::cmd::require_root().expect("root");
    vm::require_ready().expect("VM pieces");
    let t_cp = Instant::now();
    let cp = ControlPlane::start().expect("control plane");
    product::install_crd(&cp).unwrap();
    product::gateway_node(&cp, NODE).unwrap();
    product::gateway_node(&cp, NODE_B).unwrap();
    cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE2}}}\n"),
    )
    .unwrap();
    // what the route role reads: the nodes' InternalIPs (a kubelet would report them)
    for (n, ip) in INTERNAL {
        cp.kubectl([
            "patch",
            "node",
            n,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}}]}}}}"#),
        ])
        .unwrap();
    }
    cp.kubectl_stdin(["apply", "-f", "-"], &cluster::psk_secret("dc2-psk", PSK))
        .unwrap();
    // gw1 dies below and never clears its status entry: do not wait a minute for it on delete
    let operator = Daemon::operator(&cp, &["--deletion-timeout", "10s"]).expect("operator");
    println!(
        "host: control plane + CRD + operator in {:.1} s",
        t_cp.elapsed().as_secs_f64()
    );

    // the guest sees this directory at the same path; everything it needs is copied in
    let shared = tempfile::Builder::new()
        .prefix("strait-vmcluster-")
        .tempdir()
        .unwrap();
    let dir = shared.path();
    let me = stage_binary(&std::env::current_exe().unwrap(), dir, "vm_cluster");
    stage_binary(
        &product::binary("strait-agent").unwrap(),
        dir,
        "strait-agent",
    );
    stage_kubeconfig(&cp, dir);
    let port = cp
        .server_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("API server port");
    fs::write(dir.join("port"), port.to_string()).unwrap();

    let opts = vm::Options {
        rwdirs: vec![dir.to_owned()],
        timeout: Some(Duration::from_secs(900)),
        network: true,
        ..vm::Options::default()
    };
    let env = format!("{SHARED_ENV}={}", dir.display());
    let t_vm = Instant::now();
    let mut guest = vm::spawn(
        &opts,
        &[
            "env",
            &env,
            me.to_str().unwrap(),
            "guest_gateway_node",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
    )
    .unwrap();

    wait_file(
        &dir.join("node-up"),
        Duration::from_secs(600),
        &mut guest,
        "the guest's gateway node and charon up",
    );
    println!(
        "host: guest node up {:.1} s after the VM start",
        t_vm.elapsed().as_secs_f64()
    );
    // the heartbeat makes a node a candidate: gw1 is the only one (gw2's agent starts once
    // the tunnel is up on gw1, and an election keeps a live active gateway)
    cluster::wait_heartbeats(&cp, &[NODE], Duration::from_secs(120), || guest.output())
        .unwrap_or_else(|e| panic!("the guest agent: {e:#}"));

    // ---- apply → Ready ----
    let tunnel = cluster::tunnel(TUNNEL, "dc2-psk").render();
    let applied = Instant::now();
    cp.kubectl_stdin(["apply", "-f", "-"], &tunnel).unwrap();
    let out = cp.kubectl([
        "wait",
        "--for=condition=Ready",
        &format!("ipsectunnel/{TUNNEL}"),
        "--timeout=300s",
    ]);
    let apply_to_ready = applied.elapsed();
    assert!(
        out.is_ok(),
        "kubectl wait Ready: {out:?}\nstatus: {:#}\n--- operator:\n{}\n--- guest:\n{}",
        status(&cp),
        operator.log(),
        guest.output()
    );
    println!(
        "host: apply -> Ready (agent in the VM, kernel data plane): {:.2} s",
        apply_to_ready.as_secs_f64()
    );
    assert_eq!(status(&cp)["activeGateway"], NODE, "{:#}", status(&cp));

    // ---- traffic through ESP (judged in the guest); its SAs are the ones our status names ----
    let traffic = wait_file(
        &dir.join("traffic"),
        Duration::from_secs(300),
        &mut guest,
        "the guest's traffic checks",
    );
    assert_status_spis(&cp, NODE, &traffic);
    println!("host: the status's SPIs are gw1's kernel SAs that carried the traffic: {traffic}");

    // ---- gw1 dies (in the guest); the operator fails over to gw2 ----
    cluster::wait_heartbeats(&cp, &[NODE_B], Duration::from_secs(120), || guest.output())
        .unwrap_or_else(|e| panic!("the guest's standby agent: {e:#}"));
    assert_eq!(status(&cp)["activeGateway"], NODE, "{:#}", status(&cp));
    publish(&dir.join("failover-go"), "go");
    let failover = wait_file(
        &dir.join("failover"),
        Duration::from_secs(300),
        &mut guest,
        "the guest's failover",
    );
    let s = status(&cp);
    assert_eq!(s["activeGateway"], NODE_B, "{s:#}");
    assert_status_spis(&cp, NODE_B, &failover);
    println!("host: failed over to gw2; the status's SPIs are gw2's kernel SAs: {failover}");

    // ---- delete: finalizer released; the guest checks charon and the kernel ----
    let t = Instant::now();
    let out = cp.kubectl([
        "delete",
        "ipsectunnel",
        TUNNEL,
        "--wait=true",
        "--timeout=180s",
    ]);
    assert!(
        out.is_ok(),
        "delete: {out:?}\nstatus: {:#}\n--- guest:\n{}",
        status(&cp),
        guest.output()
    );
    let delete_time = t.elapsed();
    println!(
        "host: delete -> finalizer released: {:.2} s",
        delete_time.as_secs_f64()
    );
    let res = guest.wait().unwrap();
    println!("---- VM console ----\n{}", res.output);
    assert!(
        res.success() && res.output.contains(GUEST_PASS),
        "guest half failed ({}) after {:?}; console above",
        res.status,
        res.elapsed
    );
    assert!(
        !operator.log().contains(PSK),
        "the PSK reached the operator's log"
    );
    println!(
        "summary: apply->Ready {:.2} s, delete {:.2} s, VM run {:.1} s",
        apply_to_ready.as_secs_f64(),
        delete_time.as_secs_f64(),
        res.elapsed.as_secs_f64()
    );
}

// ------------------------------------------------------------------------------- guest half

/// The cluster agent in a node namespace, stopped on drop.
struct GuestAgent {
    child: Child,
    log: PathBuf,
    _forward: Option<PortForward>,
}

impl GuestAgent {
    /// `/tmp/strait-agent ARGS` inside `ns`, logging to `/tmp/<name>.log`; with `forward`, the
    /// API server is forwarded into the namespace for as long as this runs (one forward per
    /// namespace: a second process there uses the first's).
    fn start(dir: &Path, ns: &str, port: u16, forward: bool, name: &str, args: &[&str]) -> Self {
        let api = SocketAddr::from((vm::HOST_LOOPBACK, port));
        let forward =
            forward.then(|| PortForward::start(ns, api).expect("API forward into the node"));
        let log = PathBuf::from(format!("/tmp/{name}.log"));
        let out = fs::File::create(&log).unwrap();
        let mut argv = vec!["/tmp/strait-agent"];
        argv.extend_from_slice(args);
        let child = netns::exec_command(ns, &argv)
            .env("KUBECONFIG", dir.join("kubeconfig"))
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            _forward: forward,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as when its node dies.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and its exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the agent ignored SIGTERM:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for GuestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `path` whole: the host polls for it and must never read it half-written.
fn publish(path: &Path, text: &str) {
    let tmp = path.with_extension("partial");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// One SA of `ip -s xfrm state`: (spi hex, dst, bytes, packets).
fn sas(ns: &str) -> Vec<(String, String, u64, u64)> {
    let out = netns::exec(ns, &["ip", "-s", "xfrm", "state"])
        .unwrap()
        .stdout;
    let mut v: Vec<(String, String, u64, u64)> = Vec::new();
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        let t = l.trim();
        if let Some(rest) = l.strip_prefix("src ") {
            // "src A dst B"
            let dst = rest
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_owned();
            v.push((String::new(), dst, 0, 0));
        } else if let (Some(cur), Some(i)) = (v.last_mut(), t.find("spi 0x")) {
            cur.0 = t[i + 6..]
                .split(|c: char| c.is_whitespace() || c == '(')
                .next()
                .unwrap_or_default()
                .to_owned();
        } else if t == "lifetime current:"
            && let (Some(cur), Some(next)) = (v.last_mut(), lines.next())
        {
            // "84(bytes), 1(packets)"
            let n: Vec<u64> = next
                .split(',')
                .filter_map(|p| p.trim().split('(').next()?.parse().ok())
                .collect();
            cur.2 = n.first().copied().unwrap_or(0);
            cur.3 = n.get(1).copied().unwrap_or(0);
        }
    }
    v
}

/// The node's SAs and policies, and the agent's log.
fn kernel_view(gw: &str, agent: &GuestAgent) -> String {
    format!(
        "{:?} {:?}\n{}",
        sas(gw),
        netns::xfrm_policies(gw).unwrap(),
        agent.log()
    )
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "{what}: not after {timeout:?}\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The guest half: runs inside the VM only, started by `cluster_kernel_dataplane_in_vm` with the
/// shared directory in `STRAIT_VM_CLUSTER_DIR`.
#[test]
#[ignore = "the guest half of cluster_kernel_dataplane_in_vm: runs inside the VM, started by it"]
fn guest_gateway_node() {
    let dir = PathBuf::from(std::env::var_os(SHARED_ENV).unwrap_or_else(|| {
        panic!(
            "{SHARED_ENV} unset: this runs inside the VM, started by cluster_kernel_dataplane_in_vm"
        )
    }));
    let t0 = Instant::now();
    let port: u16 = fs::read_to_string(dir.join("port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _serial = netns::serial();
    let topo = cluster::builder(&[NODE, NODE_B], REMOTE_ADDR)
        .subnet("remote", &format!("{REMOTE_ADDR}/32"))
        .subnet("remote", &format!("{REMOTE_HOST}/32"))
        .subnet(NODE, &format!("{LOCAL_HOST}/32"))
        // the cluster's routed underlay: every node on its own link to a router
        .node("fabric")
        .node(NODE2)
        .node("pod")
        .link(NODE, "10.1.1.2/24", "fabric", "10.1.1.1/24")
        .link(NODE_B, "10.1.2.2/24", "fabric", "10.1.2.1/24")
        .link(NODE2, "10.1.3.2/24", "fabric", "10.1.3.1/24")
        .router("fabric")
        .route(NODE, &["10.1.0.0/16", "via", "10.1.1.1"])
        .route(NODE_B, &["10.1.0.0/16", "via", "10.1.2.1"])
        .route(NODE2, &["10.1.0.0/16", "via", "10.1.3.1"])
        // a pod behind node2, and the test CNI's routes to its /26 from every node
        .link("pod", &format!("{POD}/26"), NODE2, "198.51.100.65/26")
        .route("pod", &["default", "via", "198.51.100.65"])
        .router(NODE2)
        .route(NODE, &["198.51.100.64/26", "via", "10.1.1.1"])
        .route(NODE_B, &["198.51.100.64/26", "via", "10.1.2.1"])
        .route("fabric", &["198.51.100.64/26", "via", "10.1.3.2"])
        // a pod on gw1 itself (its /26 only reached before the failover)
        .node("gwpod")
        .link("gwpod", &format!("{GW_POD}/26"), NODE, "198.51.100.129/26")
        .route("gwpod", &["default", "via", "198.51.100.129"])
        // a main-table route of the test's own (the agent adds its own in table 23040, which
        // is looked up first): the remote subnet via the link, from our inner address
        .route(
            NODE,
            &[
                REMOTE_NET,
                "via",
                "192.0.2.2",
                "src",
                &LOCAL_HOST.to_string(),
            ],
        )
        .build()
        .expect("namespaces");
    let gw = topo.ns(NODE).unwrap().to_owned();
    let gw_b = topo.ns(NODE_B).unwrap().to_owned();
    let remote = topo.ns("remote").unwrap().to_owned();
    // The underlay to the remote site has a path MTU of 1400 and no node lets ICMP
    // "fragmentation needed" through: TCP across the tunnel works only if the gateway clamps
    // the MSS (set before the agent computes its routes' MTU from the uplink).
    for g in [NODE, NODE_B] {
        for (node, peer) in [(g, "remote"), ("remote", g)] {
            let iface = topo.interface(node, peer).unwrap();
            topo.exec(node, &["ip", "link", "set", "dev", &iface, "mtu", "1400"])
                .unwrap();
        }
    }
    let node2_ns = topo.ns(NODE2).unwrap().to_owned();
    for ns in [&gw, &gw_b, &remote, &node2_ns] {
        netns::drop_frag_needed(ns).unwrap();
    }
    // every node masquerades what leaves the pod network, as flannel does: the pod's packets
    // keep its address only through the route role's exemption on node2 and the agent's on
    // the gateway (the remote host could not answer the overlay's or a node's address)
    for ns in [&gw, &gw_b, &node2_ns] {
        netns::masquerade_like_a_cni(ns, LOCAL_NET).unwrap();
    }

    let cfg = CharonConfig {
        plugins: Plugins::KernelNetlink,
        ..cluster::charon_config(TUNNEL, PSK)
    };
    // the boot's first charon start can exceed the harness's 20 s: one retry
    let charon = Charon::start(&remote, &cfg)
        .or_else(|e| {
            println!("guest: first charon start failed, retrying: {e:#}");
            Charon::start(&remote, &cfg)
        })
        .expect("charon");
    println!("guest: charon up at {:.1} s", t0.elapsed().as_secs_f64());

    // run the agent from the guest's tmpfs, not over 9p
    fs::copy(dir.join("strait-agent"), "/tmp/strait-agent").unwrap();
    let gateway_agent = |node: &str, ns: &str| {
        let sock = format!("/tmp/strait-agent-{node}.sock");
        let mut args = vec![
            "cluster",
            "--node",
            node,
            "--namespace",
            NAMESPACE,
            "--status-socket",
            &sock,
            "--dataplane",
            "kernel",
            "--metrics-addr",
            "off",
        ];
        args.extend(LEASE_ARGS);
        GuestAgent::start(&dir, ns, port, true, &format!("strait-agent-{node}"), &args)
    };
    let mut agent = gateway_agent(NODE, &gw);
    // the route role on every node (on a gateway it only keeps the overlay device to receive
    // on); the gateways' namespaces already have the agent's API forward
    let node2 = node2_ns.clone();
    let [mut role_gw1, mut role_gw2, mut role_node2] = [
        (NODE, gw.as_str(), false),
        (NODE_B, gw_b.as_str(), false),
        (NODE2, node2.as_str(), true),
    ]
    .map(|(n, ns, fwd)| {
        GuestAgent::start(
            &dir,
            ns,
            port,
            fwd,
            &format!("route-{n}"),
            &["route", "--node", n],
        )
    });
    publish(&dir.join("node-up"), "up");
    println!(
        "guest: agents started at {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // ---- the host applies the tunnel: charon and the kernel get the SAs ----
    charon
        .wait_up(TUNNEL, "net", Duration::from_secs(600))
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\n--- agent:\n{}\n--- charon:\n{}",
                agent.log(),
                charon.log()
            )
        });
    wait_until(
        "the agent's two SAs and three policies in the node",
        Duration::from_secs(60),
        || sas(&gw).len() == 2 && netns::xfrm_policies(&gw).unwrap().len() == 3,
        || kernel_view(&gw, &agent),
    );
    println!("guest: tunnel up at {:.1} s", t0.elapsed().as_secs_f64());
    // the standby gateway's agent, now that gw1 holds the tunnel
    let mut agent_b = gateway_agent(NODE_B, &gw_b);
    for (node, from, to) in [
        (NODE, LOCAL_HOST, REMOTE_HOST),
        ("remote", REMOTE_HOST, LOCAL_HOST),
    ] {
        if let Err(e) = topo.ping(node, Some(from), to, 3) {
            panic!(
                "ping {from} -> {to}: {e:#}\n{:?}\n{:?}\n--- agent:\n{}\n--- charon:\n{}",
                sas(&gw),
                sas(&remote),
                agent.log(),
                charon.log()
            );
        }
    }
    let ours = sas(&gw);
    let theirs = sas(&remote);
    let gw_addr = "192.0.2.1";
    let sa_in = ours.iter().find(|s| s.1 == gw_addr).expect("inbound SA");
    let sa_out = ours
        .iter()
        .find(|s| s.1 == REMOTE_ADDR)
        .expect("outbound SA");
    let their_in = theirs
        .iter()
        .find(|s| s.1 == REMOTE_ADDR)
        .expect("charon's inbound SA");
    let their_out = theirs
        .iter()
        .find(|s| s.1 == gw_addr)
        .expect("charon's outbound SA");
    assert!(sa_in.3 > 0 && sa_out.3 > 0, "no ESP counted: {ours:?}");
    // the same SPIs and byte counts on both ends: the pings went through these SAs
    assert_eq!(
        (&sa_out.0, sa_out.2),
        (&their_in.0, their_in.2),
        "{ours:?} {theirs:?}"
    );
    assert_eq!(
        (&sa_in.0, sa_in.2),
        (&their_out.0, their_out.2),
        "{ours:?} {theirs:?}"
    );
    println!(
        "guest: ping both ways through ESP; gw in {} B/{} pkts (spi {}), out {} B/{} pkts (spi {}), \
         equal to charon's kernel counters",
        sa_in.2, sa_in.3, sa_in.0, sa_out.2, sa_out.3, sa_out.0
    );
    let (spi_in, spi_out, bytes_in, bytes_out) =
        (sa_in.0.clone(), sa_out.0.clone(), sa_in.2, sa_out.2);

    // ---- a pod on node2 <-> the remote host: the overlay to gw1, then ESP; nothing in clear ----
    let steered_to = |overlay: &str| {
        let via = format!("{REMOTE_NET} via {overlay} dev strait-vx");
        netns::exec_unchecked(&node2, &["ip", "route", "show", "table", "23041"])
            .is_ok_and(|o| o.stdout.contains(&via))
    };
    wait_until(
        "node2 steering the remote subnet to gw1",
        Duration::from_secs(60),
        || steered_to(OVERLAY_GW1),
        || format!("{}\n{}", role_node2.log(), role_gw1.log()),
    );
    // What each end of a gateway's link to the remote site sends is everything on that wire.
    // Outbound only: on the way in, tcpdump also shows the packets the kernel has just
    // decrypted.
    let wire_out = |node: &str, peer: &str| Capture {
        what: format!("{node} -> {peer}"),
        child: netns::exec_command(
            topo.ns(node).unwrap(),
            &[
                "tcpdump",
                "-n",
                "-l",
                "--immediate-mode",
                "-Q",
                "out",
                "-i",
                &topo.interface(node, peer).unwrap(),
                "net 198.51.100.0/24 or net 203.0.113.0/24",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump"),
    };
    let gw1_dump = wire_out(NODE, "remote");
    let dumps = [
        wire_out("remote", NODE),
        wire_out(NODE_B, "remote"),
        wire_out("remote", NODE_B),
    ];
    thread::sleep(Duration::from_secs(2));
    let before = sas(&gw);
    for (node, from, to) in [
        ("pod", POD, REMOTE_HOST),
        ("remote", REMOTE_HOST, POD),
        ("gwpod", GW_POD, REMOTE_HOST),
        ("remote", REMOTE_HOST, GW_POD),
    ] {
        if let Err(e) = topo.ping(node, Some(from), to, 3) {
            panic!(
                "ping {from} -> {to}: {e:#}\n{:?}\n--- route node2:\n{}\n--- route gw1:\n{}\n--- agent:\n{}",
                sas(&gw),
                role_node2.log(),
                role_gw1.log(),
                agent.log()
            );
        }
    }
    // 10 MB each way with a checksum, for a pod on node2, a pod on the gateway node and the
    // gateway's own process (its source from the agent's route); the remote host opens the
    // second connection of each pair
    const LEN: u64 = 10 * 1024 * 1024;
    let pod_ns = topo.ns("pod").unwrap().to_owned();
    let gwpod_ns = topo.ns("gwpod").unwrap().to_owned();
    for (what, server_ns, server, client_ns, seed) in [
        (
            "pod on node2 -> remote host",
            &remote,
            REMOTE_HOST,
            &pod_ns,
            1,
        ),
        ("remote host -> pod on node2", &pod_ns, POD, &remote, 2),
        (
            "pod on gw1 -> remote host",
            &remote,
            REMOTE_HOST,
            &gwpod_ns,
            4,
        ),
        ("remote host -> pod on gw1", &gwpod_ns, GW_POD, &remote, 5),
        ("gw1 itself -> remote host", &remote, REMOTE_HOST, &gw, 6),
        ("remote host -> gw1 itself", &gw, LOCAL_HOST, &remote, 7),
    ] {
        let t = strait_e2e::transfer::tcp(
            server_ns,
            server,
            client_ns,
            LEN,
            seed,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| {
            panic!(
                "TCP {what}: {e:#}\n{:?}\n--- route node2:\n{}\n--- agent:\n{}",
                sas(&gw),
                role_node2.log(),
                agent.log()
            )
        });
        assert!(t.intact(LEN), "TCP {what}: {t:?}");
        println!(
            "guest: TCP {what}: 10 MiB intact (checksum {:016x}) in {:.1} s, {:.1} MB/s, path MTU 1400 \
             without ICMP",
            t.received,
            t.elapsed.as_secs_f64(),
            LEN as f64 / 1e6 / t.elapsed.as_secs_f64()
        );
    }
    thread::sleep(Duration::from_millis(500));
    let after = sas(&gw);
    let packets = |v: &[(String, String, u64, u64)], dst: &str| {
        v.iter().find(|s| s.1 == dst).map_or(0, |s| s.3)
    };
    let (more_out, more_in) = (
        packets(&after, REMOTE_ADDR).saturating_sub(packets(&before, REMOTE_ADDR)),
        packets(&after, gw_addr).saturating_sub(packets(&before, gw_addr)),
    );
    assert!(
        more_out >= 12 && more_in >= 12,
        "the pods' 12 pings each way went through ESP: +{more_out} out, +{more_in} in"
    );
    let bytes = |v: &[(String, String, u64, u64)], dst: &str| {
        v.iter().find(|s| s.1 == dst).map_or(0, |s| s.2)
    };
    let (bytes_out_more, bytes_in_more) = (
        bytes(&after, REMOTE_ADDR).saturating_sub(bytes(&before, REMOTE_ADDR)),
        bytes(&after, gw_addr).saturating_sub(bytes(&before, gw_addr)),
    );
    assert!(
        bytes_out_more >= 3 * LEN && bytes_in_more >= 3 * LEN,
        "the transfers went through ESP: +{bytes_out_more} B out, +{bytes_in_more} B in"
    );
    println!(
        "guest: pod on {NODE2} <-> remote host through the overlay and ESP both ways (+{more_out} \
         out, +{more_in} in on the SAs)"
    );
    publish(
        &dir.join("traffic"),
        &format!("{spi_in} {spi_out} {bytes_in} {bytes_out}"),
    );

    // ---- gw1 dies during a TCP stream: gw2 takes over, node2 follows, the stream survives ----
    wait_until(
        "the host's go for the failover",
        Duration::from_secs(120),
        || dir.join("failover-go").exists(),
        String::new,
    );
    // the remote host streams to the pod (1 KiB every 10 ms) while the pod pings it (every
    // 50 ms, timestamped): the pings give the data plane's gap, the stream that TCP survives
    let stream = strait_e2e::transfer::Stream::start(
        &pod_ns,
        POD,
        &remote,
        1024,
        Duration::from_millis(10),
        3,
        Duration::from_secs(120),
    )
    .expect("the TCP stream");
    let pings = netns::exec_command(
        &pod_ns,
        &["ping", "-D", "-n", "-i", "0.05", &REMOTE_HOST.to_string()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("ping");
    thread::sleep(Duration::from_secs(3));
    assert!(gw1_dump.judge().is_empty(), "cleartext from gw1");
    let died = Instant::now();
    agent.kill();
    role_gw1.kill();
    for peer in ["remote", "fabric"] {
        let iface = topo.interface(NODE, peer).unwrap();
        topo.exec(NODE, &["ip", "link", "set", "dev", &iface, "down"])
            .unwrap();
    }
    let gw_b_addr = "192.0.2.5";
    wait_until(
        "node2 steering to gw2, and gw2's SAs carrying the pings",
        Duration::from_secs(120),
        || {
            steered_to(OVERLAY_GW2) && {
                let v = sas(&gw_b);
                packets(&v, REMOTE_ADDR) > 0 && packets(&v, gw_b_addr) > 0
            }
        },
        || {
            format!(
                "{:?}\n--- route node2:\n{}\n--- agent gw2:\n{}\n--- charon:\n{}",
                sas(&gw_b),
                role_node2.log(),
                agent_b.log(),
                charon.log()
            )
        },
    );
    let took_over = died.elapsed();
    thread::sleep(Duration::from_secs(3));
    let streamed = stream.finish().unwrap_or_else(|e| {
        panic!(
            "the TCP stream across the failover: {e:#}\n{:?}\n--- agent gw2:\n{}",
            sas(&gw_b),
            agent_b.log()
        )
    });
    assert!(
        streamed.intact(),
        "the stream across the failover: {streamed:?}"
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pings.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let out = pings.wait_with_output().unwrap();
    let replies: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let gap = replies
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    assert!(
        replies.len() > 40,
        "too few ping replies: {}",
        replies.len()
    );
    // the lease (5 s), the election, gw2's handshake under emulation and node2's route
    assert!(
        gap < 60.0,
        "the data plane was down {gap:.1} s across the failover"
    );
    for dump in dumps {
        let clear = dump.judge();
        assert!(clear.is_empty(), "cleartext on the wire: {clear:#?}");
    }
    let theirs = sas(&remote);
    let ours = sas(&gw_b);
    let b_in = ours
        .iter()
        .find(|s| s.1 == gw_b_addr)
        .expect("gw2's inbound SA");
    let b_out = ours
        .iter()
        .find(|s| s.1 == REMOTE_ADDR)
        .expect("gw2's outbound SA");
    assert!(
        theirs.iter().any(|s| s.0 == b_in.0) && theirs.iter().any(|s| s.0 == b_out.0),
        "charon does not hold gw2's SAs: {theirs:?} {ours:?}"
    );
    println!(
        "guest: gw1 died (agent and route role killed, links down): node2 steered to gw2 and \
         gw2's SAs carried traffic {:.1} s later; data-plane gap {:.0} ms (pings every 50 ms, \
         {} replies); the remote host's TCP stream to the pod survived intact ({} B, longest \
         stall {} ms); 0 cleartext packets on either gateway's wire to the remote site",
        took_over.as_secs_f64(),
        gap * 1000.0,
        replies.len(),
        streamed.sent_bytes,
        streamed.longest_pause.as_millis()
    );
    publish(
        &dir.join("failover"),
        &format!("{} {} {:.0}", b_in.0, b_out.0, gap * 1000.0),
    );

    // ---- the host deletes the tunnel: DELETE reaches charon, gw2's kernel is clean ----
    wait_until(
        "charon's IKE SA gone after the deletion",
        Duration::from_secs(300),
        || charon.list_sas().is_ok_and(|s| s.ike_sas.is_empty()),
        || {
            format!(
                "{}\n--- agent gw2:\n{}",
                charon.list_sas().map(|s| s.raw).unwrap_or_default(),
                agent_b.log()
            )
        },
    );
    let deleted = Instant::now();
    wait_until(
        "gw2's SAs and policies removed",
        Duration::from_secs(30),
        || sas(&gw_b).is_empty() && netns::xfrm_policies(&gw_b).unwrap().is_empty(),
        || kernel_view(&gw_b, &agent_b),
    );
    assert!(
        charon.log().contains("received DELETE"),
        "charon got no DELETE:\n{}",
        charon.log()
    );
    println!(
        "guest: DELETE reached charon; gw2's SAs and policies gone {:?} later",
        deleted.elapsed()
    );
    let st = agent_b.terminate();
    assert!(st.success(), "agent exit {st}\n{}", agent_b.log());
    for r in [&mut role_gw2, &mut role_node2] {
        let st = r.terminate();
        assert!(st.success(), "route role exit {st}\n{}", r.log());
    }
    for ns in [&gw_b, &node2] {
        assert!(
            !netns::exec_unchecked(ns, &["ip", "link", "show", "strait-vx"])
                .is_ok_and(|o| o.status.success()),
            "strait-vx left in {ns}"
        );
    }
    for a in [&agent, &agent_b] {
        assert!(!a.log().contains(PSK), "the PSK reached an agent's log");
    }
    println!("{GUEST_PASS} at {:.1} s", t0.elapsed().as_secs_f64());
}

/// A tcpdump of what one end of a link sends.
struct Capture {
    what: String,
    child: Child,
}

impl Capture {
    /// Stops the capture and returns the packets it saw.
    fn judge(self) -> Vec<String> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let out = self.child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("listening on"),
            "tcpdump {} did not start: {err}",
            self.what
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{}: {l}", self.what))
            .collect()
    }
}
