//! The gateway's nftables table against the machine's own kernel and `nft`, with real packets:
//! a "pod" namespace behind a gateway namespace whose CNI masquerades everything leaving the
//! node (a NAT chain of another table, as iptables or a CNI's nftables would have), and a remote
//! namespace that captures what arrives. Our table must keep the source address of traffic to
//! the remote subnet (so it still matches the tunnel's policies) and clamp TCP SYNs to the MSS
//! of the tunnel's MTU; removing it must give the node back as it was.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::fd::AsFd as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strait_agent::dataplane::netfilter::{IkeGuard, Netfilter, TunnelFilter};
use strait_xfrm::Prefix;

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

/// Three named namespaces, deleted on drop (also when the test panics).
struct Topology {
    pod: String,
    gw: String,
    remote: String,
}

impl Topology {
    /// `tag` keeps the names of the tests of one process apart.
    fn new(tag: &str) -> Self {
        let id = std::process::id();
        let t = Self {
            pod: format!("strait-nf{tag}-pod-{id}"),
            gw: format!("strait-nf{tag}-gw-{id}"),
            remote: format!("strait-nf{tag}-rem-{id}"),
        };
        let (p, g, r) = (&t.pod, &t.gw, &t.remote);
        for n in [p, g, r] {
            sh(&format!("ip netns add {n} && ip -n {n} link set lo up"));
        }
        sh(&format!(
            "ip link add a0 netns {p} type veth peer name g0 netns {g} && \
             ip link add g1 netns {g} type veth peer name b0 netns {r} && \
             ip -n {p} addr add 10.244.1.2/24 dev a0 && ip -n {p} link set a0 up && \
             ip -n {p} route add default via 10.244.1.1 && \
             ip -n {g} addr add 10.244.1.1/24 dev g0 && ip -n {g} link set g0 up && \
             ip -n {g} addr add 192.0.2.1/24 dev g1 && ip -n {g} link set g1 up && \
             ip -n {g} route add 203.0.113.0/24 via 192.0.2.2 && \
             ip netns exec {g} sysctl -qw net.ipv4.ip_forward=1 && \
             ip -n {r} addr add 192.0.2.2/24 dev b0 && ip -n {r} addr add 203.0.113.2/32 dev b0 && \
             ip -n {r} link set b0 up && ip -n {r} route add 10.244.0.0/16 via 192.0.2.1"
        ));
        // the cluster's masquerade, in a table that is not ours
        sh(&format!(
            "printf 'table ip cni {{\\n chain post {{\\n type nat hook postrouting priority srcnat; \
             policy accept;\\n ip saddr 10.244.0.0/16 oifname \"g1\" masquerade\\n }}\\n}}\\n' \
             | ip netns exec {g} nft -f -"
        ));
        t
    }

    /// The first packet matching `filter` that reaches the remote namespace while `send` runs
    /// (again and again, until the capture has one), as tcpdump prints it.
    fn capture(&self, filter: &str, send: &str) -> String {
        let mut dump: Child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.remote,
                "tcpdump",
                "-l",
                "-n",
                "-v",
                "-c",
                "1",
            ])
            .args(["-i", "b0", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let deadline = Instant::now() + Duration::from_secs(10);
        while dump.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                dump.kill().ok();
                dump.wait().ok();
                panic!("nothing matching `{filter}` reached the remote site");
            }
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.pod, "sh", "-c", send])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(300));
        }
        let out = dump.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in [&self.pod, &self.gw, &self.remote] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `body` on a thread that entered the namespace `ns` (the `nft` it starts runs there).
fn in_ns<T: Send + 'static>(ns: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        body()
    })
    .join()
    .unwrap()
}

/// Runs `f` to completion on a current-thread runtime of its own.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn p(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

const PING: &str = "ping -c1 -W1 203.0.113.2";
// a SYN from the pod (bash opens the connection; nothing listens, the SYN is what we look at)
const SYN: &str = "timeout 1 bash -c 'echo > /dev/tcp/203.0.113.2/80'";

#[test]
fn the_table_keeps_tunnel_traffic_out_of_the_masquerade_and_clamps_the_mss() {
    let t = Topology::new("");
    // the setup masquerades, as a cluster does: this is what breaks the tunnel's policies
    let before = t.capture("icmp[icmptype] = 8", PING);
    assert!(before.contains("192.0.2.1 > 203.0.113.2"), "{before}");
    let syn = t.capture("tcp[tcpflags] & tcp-syn != 0", SYN);
    assert!(syn.contains("mss 1460"), "{syn}");

    let gw = t.gw.clone();
    let listed = in_ns(&gw, || {
        block_on(async {
            let mut nf = Netfilter::default();
            nf.set(
                7,
                Some(TunnelFilter {
                    local: vec![p("10.244.0.0/16")],
                    remote: vec![p("203.0.113.0/24")],
                    mtu_v4: Some(1400),
                    mtu_v6: None,
                    peers: Vec::new(),
                }),
            )
            .await;
            sh("nft list table inet strait")
        })
    });
    assert!(listed.contains("snat ip to ip saddr"), "{listed}");
    assert!(listed.contains("maxseg size > 1360"), "{listed}");

    let after = t.capture("icmp[icmptype] = 8", PING);
    assert!(after.contains("10.244.1.2 > 203.0.113.2"), "{after}");
    let syn = t.capture("tcp[tcpflags] & tcp-syn != 0", SYN);
    assert!(syn.contains("mss 1360"), "{syn}");

    // removed on a clean exit: the node is as it was, the other table untouched
    let tables = in_ns(&gw, || {
        block_on(async {
            let mut nf = Netfilter::default();
            nf.set(7, None).await;
            nf.remove().await;
        });
        sh("nft list tables")
    });
    assert!(!tables.contains("strait"), "{tables}");
    assert!(tables.contains("table ip cni"), "{tables}");
    let back = t.capture("icmp[icmptype] = 8", PING);
    assert!(back.contains("192.0.2.1 > 203.0.113.2"), "{back}");
}

/// Whether a datagram from `from` (in the remote namespace) to the gateway's `port` arrives.
fn arrives(t: &Topology, from: &'static str, port: u16) -> bool {
    let gw = t.gw.clone();
    let rx = in_ns(&gw, move || {
        std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap()
    });
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let remote = t.remote.clone();
    in_ns(&remote, move || {
        let tx = std::net::UdpSocket::bind((from, 0)).unwrap();
        tx.send_to(b"IKE_SA_INIT?", ("192.0.2.1", port)).unwrap();
    });
    let mut buf = [0_u8; 64];
    match rx.recv_from(&mut buf) {
        Ok((_, src)) => {
            assert_eq!(src.ip().to_string(), from);
            true
        }
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{e}"
            );
            false
        }
    }
}

fn refused(ns: &str) -> u64 {
    let out = sh(&format!(
        "ip netns exec {ns} nft list counter inet strait refused"
    ));
    let packets = out
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .unwrap_or_else(|| panic!("no packet count in {out}"));
    packets.parse().unwrap()
}

#[test]
fn ike_is_admitted_only_from_the_tunnels_peers_and_the_rest_is_counted() {
    let t = Topology::new("fw");
    // a stranger on the same segment as the peer
    sh(&format!("ip -n {} addr add 192.0.2.9/24 dev b0", t.remote));
    // ports of our own: nothing else on the host listens on them in this namespace
    let guard = IkeGuard {
        ike_port: 1500,
        natt_port: 5500,
    };
    assert!(arrives(&t, "192.0.2.9", 1500), "before the firewall");
    let gw = t.gw.clone();
    in_ns(&gw, move || {
        block_on(async {
            let mut nf = Netfilter::default();
            nf.guard_ike(guard);
            nf.set(
                1,
                Some(TunnelFilter {
                    local: vec![p("10.244.0.0/16")],
                    remote: vec![p("203.0.113.0/24")],
                    peers: vec!["192.0.2.2".parse().unwrap()],
                    ..TunnelFilter::default()
                }),
            )
            .await;
        });
    });
    assert!(arrives(&t, "192.0.2.2", 1500), "the peer's IKE");
    assert!(arrives(&t, "192.0.2.2", 5500), "the peer's NAT-T");
    assert!(!arrives(&t, "192.0.2.9", 1500), "a stranger's IKE");
    assert!(!arrives(&t, "192.0.2.9", 5500), "a stranger's NAT-T");
    assert!(
        arrives(&t, "192.0.2.9", 1501),
        "other ports are not ours to guard"
    );
    assert_eq!(refused(&t.gw), 2);
    // the pod's traffic through the gateway is not the firewall's business
    let ping = t.capture("icmp[icmptype] = 8", PING);
    assert!(ping.contains("> 203.0.113.2"), "{ping}");

    // a tunnel that accepts any peer address: nothing left to guard
    let gw = t.gw.clone();
    in_ns(&gw, move || {
        block_on(async {
            let mut nf = Netfilter::default();
            nf.guard_ike(guard);
            nf.set(1, Some(TunnelFilter::default())).await;
            nf.set(2, Some(TunnelFilter::default())).await;
        });
    });
    assert!(
        arrives(&t, "192.0.2.9", 1500),
        "with a tunnel open to any peer"
    );
    let gw = t.gw.clone();
    let tables = in_ns(&gw, || {
        block_on(Netfilter::default().remove());
        sh("nft list tables")
    });
    assert!(!tables.contains("strait"), "{tables}");
}
