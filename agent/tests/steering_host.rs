//! The route role's kernel side against the machine's own kernel, with real packets: three
//! "nodes" (namespaces) on one underlay bridge, routed to each other's pod subnets as a
//! host-gateway CNI would (a small test CNI: static routes), a pod behind node B, and a remote
//! host reachable only from the gateway nodes A and C (a veth stands in for the tunnel: the host
//! kernel has no ESP; the kernel VM tier carries the same path through real ESP). Every node's
//! reverse-path filter is strict, as many distributions set it.
//!
//! B masquerades its pods' traffic out of the pod network, as many CNIs do. B steers the
//! remote subnet to the active gateway and exempts it from that masquerade; the test checks
//! the pod's traffic goes through the overlay (VXLAN datagrams on the underlay, the pod's packet never in clear
//! beside them), follows a failover to C, is refused (not leaked by the default route) while
//! there is no gateway, works with direct routes, and that removal gives the node back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use strait_agent::steering::plan::{self, Mode, Overlay, STEER_TABLE, TunnelView};
use strait_agent::steering::{Plan, Steering};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

const REMOTE: &str = "198.51.100.2";
const SUBNET: &str = "198.51.100.0/24";

/// The namespaces, deleted on drop (also when the test panics).
struct Topology {
    ul: String,
    a: String,
    b: String,
    c: String,
    pod: String,
    rem: String,
}

impl Topology {
    fn new(tag: &str) -> Self {
        let id = std::process::id();
        let n = |r: &str| format!("strait-st{tag}-{r}-{id}");
        let t = Self {
            ul: n("ul"),
            a: n("a"),
            b: n("b"),
            c: n("c"),
            pod: n("pod"),
            rem: n("rem"),
        };
        for ns in [&t.ul, &t.a, &t.b, &t.c, &t.pod, &t.rem] {
            sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        }
        let (ul, pod, rem) = (&t.ul, &t.pod, &t.rem);
        // the underlay: a bridge with a router address (the nodes' default route)
        sh(&format!(
            "ip -n {ul} link add br0 type bridge && ip -n {ul} link set br0 up && \
             ip -n {ul} addr add 192.0.2.254/24 dev br0"
        ));
        for (i, node) in [(1, &t.a), (2, &t.b), (3, &t.c)] {
            sh(&format!(
                "ip link add u0 netns {node} type veth peer name p{i} netns {ul} && \
                 ip -n {ul} link set p{i} master br0 up && \
                 ip -n {node} addr add 192.0.2.{i}/24 dev u0 && ip -n {node} link set u0 up && \
                 ip -n {node} route add default via 192.0.2.254 && \
                 ip netns exec {node} sysctl -qw net.ipv4.ip_forward=1 \
                   net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.u0.rp_filter=1"
            ));
            // the test CNI: node i owns 10.244.i.0/24 and routes the others' via their nodes
            for j in 1..=3 {
                if j != i {
                    sh(&format!(
                        "ip -n {node} route add 10.244.{j}.0/24 via 192.0.2.{j}"
                    ));
                }
            }
        }
        // B masquerades what its pods send out of the pod network, as many CNIs do (flannel,
        // Calico's natOutgoing): without the route role's exemption the pod's packets would
        // reach the gateway from B's overlay address, outside the tunnel's policies
        sh(&format!(
            "ip netns exec {} nft 'add table ip cni; \
             add chain ip cni post {{ type nat hook postrouting priority srcnat; }}; \
             add rule ip cni post ip saddr 10.244.2.0/24 ip daddr != 10.244.0.0/16 masquerade'",
            t.b
        ));
        // a pod on B
        sh(&format!(
            "ip link add e0 netns {pod} type veth peer name pod0 netns {b} && \
             ip -n {pod} addr add 10.244.2.2/24 dev e0 && ip -n {pod} link set e0 up && \
             ip -n {pod} route add default via 10.244.2.1 && \
             ip -n {b} addr add 10.244.2.1/24 dev pod0 && ip -n {b} link set pod0 up",
            b = t.b
        ));
        // the remote host behind the gateways ("the tunnel": a veth from A and one from C)
        sh(&format!("ip -n {rem} addr add {REMOTE}/32 dev lo"));
        for (i, node) in [(1, &t.a), (3, &t.c)] {
            sh(&format!(
                "ip link add t0 netns {node} type veth peer name t{i} netns {rem} && \
                 ip -n {node} addr add 10.99.{i}.1/30 dev t0 && ip -n {node} link set t0 up && \
                 ip -n {node} route add {SUBNET} via 10.99.{i}.2 && \
                 ip -n {rem} addr add 10.99.{i}.2/30 dev t{i} && ip -n {rem} link set t{i} up"
            ));
        }
        t.remote_via(1);
        t
    }

    /// Where the remote site sends the cluster's traffic back (the active gateway).
    fn remote_via(&self, node: u8) {
        sh(&format!(
            "ip -n {} route replace 10.244.0.0/16 via 10.99.{node}.1",
            self.rem
        ));
    }

    fn ping(&self) -> bool {
        ok(&format!("ip netns exec {} ping -c1 -W1 {REMOTE}", self.pod))
    }

    /// What the underlay bridge sees while `send` runs once: (VXLAN datagrams from B, the
    /// pod's packets to the remote host in clear).
    fn underlay_during(&self, send: impl FnOnce()) -> (usize, usize) {
        let cap = |filter: &str| -> Child {
            Command::new("ip")
                .args([
                    "netns", "exec", &self.ul, "tcpdump", "-l", "-n", "-i", "br0",
                ])
                .arg(filter)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let vx = cap(&format!(
            "udp dst port {} and src host 192.0.2.2",
            Overlay::default().port
        ));
        let clear = cap(&format!("icmp and dst host {REMOTE}"));
        std::thread::sleep(Duration::from_millis(700));
        send();
        std::thread::sleep(Duration::from_millis(300));
        let count = |c: Child| {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let out = c.wait_with_output().unwrap();
            // tcpdump ends with an empty line when stopped
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        };
        (count(vx), count(clear))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in [&self.ul, &self.a, &self.b, &self.c, &self.pod, &self.rem] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `body` on a thread that entered the namespace `ns`, on a runtime of its own.
fn in_ns<T: Send + 'static, F: std::future::Future<Output = T>>(
    ns: &str,
    body: impl FnOnce() -> F + Send + 'static,
) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body())
    })
    .join()
    .unwrap()
}

fn addresses() -> BTreeMap<String, Ipv4Addr> {
    [("a", 1), ("b", 2), ("c", 3)]
        .into_iter()
        .map(|(n, i)| (n.to_owned(), Ipv4Addr::new(192, 0, 2, i)))
        .collect()
}

fn plan_for(node: &str, mode: Mode, gateway: Option<&str>) -> Plan {
    let tunnels = [TunnelView {
        key: "default/site".into(),
        local_subnets: vec!["10.244.0.0/16".into()],
        remote_subnets: vec![SUBNET.into()],
        gateway: gateway.map(str::to_owned),
    }];
    plan::plan(node, mode, &tunnels, &addresses())
}

/// Applies the plan for `node` inside its namespace with a fresh `Steering` (as a restarted
/// role would), or removes everything when `plan` is `None`.
fn steer(ns: &str, overlay: Overlay, plan: Option<Plan>) {
    in_ns(ns, move || async move {
        let mut s = Steering::open(overlay).unwrap();
        match plan {
            Some(p) => s.apply(&p).await.unwrap(),
            None => s.remove_all().await.unwrap(),
        }
    });
}

/// Our table's routes (an empty table does not exist for `ip`: nothing).
/// One long-lived role process on a node: a thread in its namespace holding one `Steering`,
/// as `strait-agent route` does (it remembers what it loosened).
struct Role {
    tx: std::sync::mpsc::Sender<Option<Plan>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Role {
    fn start(ns: &str, overlay: Overlay) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Option<Plan>>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut s = Steering::open(overlay).unwrap();
                while let Ok(p) = rx.recv() {
                    match p {
                        Some(p) => s.apply(&p).await.unwrap(),
                        None => s.remove_all().await.unwrap(),
                    }
                    done_tx.send(()).unwrap();
                }
            });
        });
        Self { tx, done }
    }

    fn apply(&self, plan: Option<Plan>) {
        self.tx.send(plan).unwrap();
        self.done
            .recv_timeout(Duration::from_secs(10))
            .expect("the role thread failed");
    }
}

fn table(ns: &str) -> String {
    sh(&format!(
        "ip -n {ns} route show table {STEER_TABLE} 2>/dev/null || true"
    ))
}

#[test]
fn vxlan_steers_the_pod_to_the_gateway_follows_failover_refuses_without_one_and_cleans_up() {
    let t = Topology::new("v");
    let o = Overlay::default();
    let vx = Mode::Vxlan(o);

    // without steering the pod's packet leaves B by its default route, in clear: what the
    // role exists to prevent (and proof that the capture below can see it)
    let (_, clear) = t.underlay_during(|| {
        let _ = t.ping();
    });
    assert!(clear > 0, "the capture must see a leaked packet");

    let b = Role::start(&t.b, o);
    for (name, ns) in [("a", &t.a), ("c", &t.c)] {
        steer(ns, o, Some(plan_for(name, vx, Some("a"))));
    }
    b.apply(Some(plan_for("b", vx, Some("a"))));
    let routes = table(&t.b);
    assert!(
        routes.contains("198.51.100.0/24 via 240.0.2.1 dev strait-vx"),
        "{routes}"
    );
    assert!(table(&t.a).trim().is_empty(), "the gateway steers nothing");
    assert!(sh(&format!("ip -n {} rule", t.b)).contains("lookup 23041"));
    assert_eq!(
        sh(&format!(
            "ip netns exec {} sysctl -n net.ipv4.conf.u0.rp_filter",
            t.b
        ))
        .trim(),
        "2",
        "strict uplink loosened"
    );
    let exempt = sh(&format!(
        "ip netns exec {} nft list table inet strait_route",
        t.b
    ));
    assert!(
        exempt.contains("ip saddr 10.244.0.0/16 ip daddr 198.51.100.0/24 snat ip to ip saddr"),
        "{exempt}"
    );
    let mut up = false;
    let (vxlan, clear) = t.underlay_during(|| up = t.ping());
    assert!(
        up,
        "pod on B -> remote host through the overlay to A, with the pod's own address"
    );
    assert!(vxlan > 0, "the request crossed the underlay as VXLAN");
    assert_eq!(clear, 0, "nothing for the remote subnet in clear");

    // a restarted role (the first one gone without removing anything, as on a rolling
    // update) adopts the state: the same plan changes nothing, and the device's alias tells it
    // which filter to put back at the end
    let link = sh(&format!("ip -n {} link show strait-vx", t.b));
    assert!(
        link.contains("alias strait-route loosened rp_filter u0=1"),
        "{link}"
    );
    drop(b);
    let b = Role::start(&t.b, o);
    b.apply(Some(plan_for("b", vx, Some("a"))));
    assert_eq!(table(&t.b), routes);

    // failover to C: the remote site answers through C now
    t.remote_via(3);
    for (name, ns) in [("a", &t.a), ("c", &t.c)] {
        steer(ns, o, Some(plan_for(name, vx, Some("c"))));
    }
    b.apply(Some(plan_for("b", vx, Some("c"))));
    assert!(
        table(&t.b).contains("via 240.0.2.3 dev strait-vx"),
        "{}",
        table(&t.b)
    );
    let neigh = sh(&format!("ip -n {} neigh show dev strait-vx", t.b));
    assert!(
        !neigh.contains("240.0.2.1 "),
        "old gateway's neighbour left: {neigh}"
    );
    let fdb = sh(&format!("bridge -n {} fdb show dev strait-vx", t.b));
    assert!(
        fdb.contains("dst 192.0.2.3") && !fdb.contains("dst 192.0.2.1"),
        "{fdb}"
    );
    assert!(t.ping(), "pod on B -> remote host through C");

    // no active gateway: refused here, not sent by the default route
    b.apply(Some(plan_for("b", vx, None)));
    assert!(
        table(&t.b).contains("unreachable 198.51.100.0/24"),
        "{}",
        table(&t.b)
    );
    let mut up = true;
    let (_, clear) = t.underlay_during(|| up = t.ping());
    assert!(!up);
    assert_eq!(clear, 0, "a tunnel without a gateway leaks nothing");

    // removal gives the node back
    b.apply(None);
    assert!(table(&t.b).trim().is_empty());
    assert!(!ok(&format!(
        "ip netns exec {} nft list table inet strait_route",
        t.b
    )));
    assert!(!sh(&format!("ip -n {} rule", t.b)).contains("23041"));
    assert!(!ok(&format!("ip -n {} link show strait-vx", t.b)));
    assert_eq!(
        sh(&format!(
            "ip netns exec {} sysctl -n net.ipv4.conf.u0.rp_filter",
            t.b
        ))
        .trim(),
        "1",
        "the uplink's filter put back"
    );
}

#[test]
fn direct_routes_reach_the_gateway_on_a_shared_segment() {
    let t = Topology::new("d");
    let o = Overlay::default();
    steer(&t.b, o, Some(plan_for("b", Mode::Direct, Some("a"))));
    let routes = table(&t.b);
    assert!(
        routes.contains("198.51.100.0/24 via 192.0.2.1 dev u0"),
        "{routes}"
    );
    assert!(
        !ok(&format!("ip -n {} link show strait-vx", t.b)),
        "no overlay in direct mode"
    );
    assert!(t.ping());
    steer(&t.b, o, Some(plan_for("b", Mode::Direct, Some("c"))));
    t.remote_via(3);
    assert!(table(&t.b).contains("via 192.0.2.3"));
    assert!(t.ping());
    steer(&t.b, o, None);
    assert!(table(&t.b).trim().is_empty());
}
