//! Real ESP: needs a kernel with ESP and the AES-GCM/CBC/HMAC modules, i.e. the e2e VM:
//!
//!   cargo test -p strait-xfrm --features kernel-esp-tests --no-run   # prints the binary
//!   e2e/vm/run.sh -- target/debug/deps/kernel_esp-HASH --test-threads=1
//!
//! Each test builds two network namespaces joined by a veth pair ("a" 10.0.0.1, "b"
//! 10.0.0.2), installs SAs and policies through strait-xfrm, and sends real traffic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use strait_xfrm::{
    Direction, Event, Family, Integrity, KeepSet, Key, Lifetimes, Limits, Mode, NatT, Policy,
    Reqid, Sa, SaCrypto, SaId, Selector, Template, Transform, Xfrm, socket,
};

const A: &str = "10.0.0.1";
const B: &str = "10.0.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

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

/// Two namespaces `<tag>a` and `<tag>b` over veth; removed on drop.
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new(tag: &str) -> Self {
        let (a, b) = (format!("{tag}a"), format!("{tag}b"));
        let _ = Command::new("ip").args(["netns", "del", &a]).output();
        let _ = Command::new("ip").args(["netns", "del", &b]).output();
        sh(&format!(
            "ip netns add {a} && ip netns add {b} && \
             ip link add va netns {a} type veth peer name vb netns {b} && \
             ip -n {a} addr add {A}/24 dev va && ip -n {b} addr add {B}/24 dev vb && \
             ip -n {a} link set lo up && ip -n {b} link set lo up && \
             ip -n {a} link set va up && ip -n {b} link set vb up"
        ));
        Pair { a, b }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).output();
    }
}

/// Moves the calling thread into a named namespace (sockets opened afterwards live there).
fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

fn open_in(ns: &str) -> Xfrm {
    enter(ns);
    Xfrm::open().unwrap()
}

/// Runs the body on its own thread (it will switch namespaces) with a current-thread runtime.
fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let t = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body())
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

fn gcm(seed: u8) -> SaCrypto {
    SaCrypto::aes_gcm16(Key::new((0..36).map(|i| seed ^ i).collect())).unwrap()
}

fn cbc(seed: u8) -> SaCrypto {
    SaCrypto::aes_cbc(
        Key::new((0..32).map(|i| seed ^ i).collect()),
        Integrity::HmacSha256,
        Key::new((0..32).map(|i| seed.wrapping_add(i)).collect()),
    )
    .unwrap()
}

/// SA from `src` to `dst`, inbound ones with a replay window.
fn sa(src: &str, dst: &str, spi: u32, reqid: u32, mode: Mode, crypto: SaCrypto) -> Sa {
    let mut s = Sa::new(
        ip(src),
        ip(dst),
        spi,
        Reqid::ours(reqid).unwrap(),
        mode,
        crypto,
    );
    s.replay_window = 32;
    s
}

/// out + in (+ fwd in tunnel mode) policies for one side.
fn policies(
    local_sel: &str,
    remote_sel: &str,
    local: &str,
    remote: &str,
    reqid_out: u32,
    reqid_in: u32,
    mode: Mode,
) -> Vec<Policy> {
    let sel = Selector::between(local_sel.parse().unwrap(), remote_sel.parse().unwrap());
    let out = Policy::protect(
        sel,
        Direction::Out,
        1000,
        Template::esp(ip(local), ip(remote), mode, Reqid::ours(reqid_out).unwrap()),
    );
    let mut inb = Policy::protect(
        sel.reversed(),
        Direction::In,
        1000,
        Template::esp(ip(remote), ip(local), mode, Reqid::ours(reqid_in).unwrap()),
    );
    let mut v = vec![out, inb.clone()];
    if mode == Mode::Tunnel {
        inb.dir = Direction::Fwd;
        v.push(inb);
    }
    v
}

/// A's and B's transport-mode policies between A and B (reqid 1 from A, 2 from B).
fn transport_pair_policies() -> (Vec<Policy>, Vec<Policy>) {
    let pa = policies(
        &format!("{A}/32"),
        &format!("{B}/32"),
        A,
        B,
        1,
        2,
        Mode::Transport,
    );
    let pb = policies(
        &format!("{B}/32"),
        &format!("{A}/32"),
        B,
        A,
        2,
        1,
        Mode::Transport,
    );
    (pa, pb)
}

/// A UDP socket on 4500 that takes ESP-in-UDP, in the current namespace.
fn encap_socket() -> UdpSocket {
    let sock = UdpSocket::bind("0.0.0.0:4500").unwrap();
    socket::bypass_policies(&sock, Family::V4).unwrap();
    socket::set_udp_encap(&sock).unwrap();
    sock
}

async fn install(x: &Xfrm, sas: &[Sa], pols: &[Policy]) {
    for s in sas {
        x.add_sa(s).await.unwrap();
    }
    for p in pols {
        x.add_policy(p).await.unwrap();
    }
}

fn ping(ns: &str, args: &str) {
    let out = sh(&format!("ip netns exec {ns} ping -c 3 -i 0.2 -W 2 {args}"));
    assert!(out.contains(" 0% packet loss"), "{out}");
}

/// (spi -> (bytes, packets)) from `ip -s xfrm state`.
fn ip_counters(ns: &str) -> HashMap<u32, (u64, u64)> {
    let out = sh(&format!("ip -n {ns} -s xfrm state"));
    let mut m = HashMap::new();
    let mut spi = None;
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        if let Some(i) = l.find("spi 0x") {
            // `ip -s` prints "spi 0x00001001(4097)".
            let hex: String = l[i + 6..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            spi = Some(u32::from_str_radix(&hex, 16).unwrap());
        }
        if l.trim() == "lifetime current:" {
            let v = lines.next().unwrap();
            let nums: Vec<u64> = v
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            m.insert(spi.unwrap(), (nums[0], nums[1]));
        }
    }
    m
}

async fn assert_counters_match(x: &Xfrm, ns: &str) {
    let ours = x.counters().await.unwrap();
    let theirs = ip_counters(ns);
    assert!(!ours.is_empty());
    for c in &ours {
        let (bytes, packets) = theirs[&c.id.spi];
        assert_eq!(
            (c.bytes, c.packets),
            (bytes, packets),
            "spi {:#x}",
            c.id.spi
        );
        assert!(c.packets > 0, "no traffic on {:#x}", c.id.spi);
        assert_eq!(c.integrity_failures, 0);
    }
    eprintln!("counters in {ns}: {ours:?}");
}

#[test]
fn preflight_accepts_gcm_and_cbc() {
    let p = Pair::new("pf");
    run(move || async move {
        let x = open_in(&p.a);
        let t = [
            Transform::AesGcm16 { key_bits: 256 },
            Transform::AesGcm16 { key_bits: 128 },
            Transform::AesCbc {
                key_bits: 256,
                integrity: Integrity::HmacSha512,
            },
            Transform::AesCbc {
                key_bits: 128,
                integrity: Integrity::HmacSha384,
            },
        ];
        let r = x.preflight(&t).await.unwrap();
        assert_eq!(r.supported, t);
        assert!(x.list_sas().await.unwrap().is_empty(), "probe left behind");
    });
}

#[test]
fn tunnel_mode_gcm_with_allocated_spis_passes_traffic_and_counts() {
    let p = Pair::new("tu");
    run(move || async move {
        let (ia, ib) = ("10.1.0.1", "10.2.0.1");
        let xb = open_in(&p.b);
        let xa = open_in(&p.a);
        // Inbound SPIs come from ALLOCSPI on the receiving side; the keyed SA replaces the
        // larval one with update_sa.
        let spi_ab = xb
            .alloc_spi(
                ip(A),
                ip(B),
                Reqid::ours(1).unwrap(),
                Mode::Tunnel,
                0xc000_0000..=0xcfff_ffff,
            )
            .await
            .unwrap();
        let spi_ba = xa
            .alloc_spi(
                ip(B),
                ip(A),
                Reqid::ours(2).unwrap(),
                Mode::Tunnel,
                0xc000_0000..=0xcfff_ffff,
            )
            .await
            .unwrap();
        let ab = sa(A, B, spi_ab, 1, Mode::Tunnel, gcm(1));
        let ba = sa(B, A, spi_ba, 2, Mode::Tunnel, gcm(2));
        xa.add_sa(&ab).await.unwrap();
        xa.update_sa(&ba).await.unwrap();
        xb.update_sa(&ab).await.unwrap();
        xb.add_sa(&ba).await.unwrap();
        let pa = policies(
            &format!("{ia}/32"),
            &format!("{ib}/32"),
            A,
            B,
            1,
            2,
            Mode::Tunnel,
        );
        let pb = policies(
            &format!("{ib}/32"),
            &format!("{ia}/32"),
            B,
            A,
            2,
            1,
            Mode::Tunnel,
        );
        install(&xa, &[], &pa).await;
        install(&xb, &[], &pb).await;
        sh(&format!(
            "ip -n {a} addr add {ia}/32 dev lo && ip -n {b} addr add {ib}/32 dev lo && \
             ip -n {a} route add {ib}/32 via {B} src {ia} && ip -n {b} route add {ia}/32 via {A} src {ib}",
            a = p.a,
            b = p.b
        ));
        ping(&p.a, ib);
        let info = xa.get_sa(&ab.id()).await.unwrap().unwrap();
        assert_eq!(info.algorithms, vec!["rfc4106(gcm(aes))"]);
        assert!(!info.larval);
        assert_counters_match(&xa, &p.a).await;
        assert_counters_match(&xb, &p.b).await;
    });
}

#[test]
fn transport_mode_cbc_with_esn_passes_traffic() {
    let p = Pair::new("tr");
    run(move || async move {
        let xa = open_in(&p.a);
        let xb = open_in(&p.b);
        let mut ab = sa(A, B, 0x1001, 1, Mode::Transport, cbc(3));
        let mut ba = sa(B, A, 0x2002, 2, Mode::Transport, cbc(4));
        for s in [&mut ab, &mut ba] {
            s.esn = true;
            s.replay_window = 128;
        }
        let (pa, pb) = transport_pair_policies();
        install(&xa, &[ab.clone(), ba.clone()], &pa).await;
        install(&xb, &[ab.clone(), ba.clone()], &pb).await;
        ping(&p.a, B);
        let info = xb.get_sa(&ab.id()).await.unwrap().unwrap();
        assert!(info.esn);
        assert_eq!(info.replay_window, 128);
        assert_eq!(info.algorithms, vec!["cbc(aes)", "hmac(sha256)"]);
        assert_counters_match(&xa, &p.a).await;
        assert_counters_match(&xb, &p.b).await;
        let st = sh(&format!("ip -n {} xfrm state", p.b));
        assert!(st.contains("esn") && st.contains("mode transport"), "{st}");
    });
}

#[test]
fn nat_t_espinudp_passes_traffic_with_socket_helpers() {
    let p = Pair::new("nt");
    run(move || async move {
        let xa = open_in(&p.a);
        let sock_a = UdpSocket::bind("0.0.0.0:4500").unwrap();
        socket::bypass_policies(&sock_a, Family::V4).unwrap();
        socket::set_udp_encap(&sock_a).unwrap();
        let xb = open_in(&p.b);
        let sock_b = UdpSocket::bind("0.0.0.0:4500").unwrap();
        socket::bypass_policies(&sock_b, Family::V4).unwrap();
        socket::set_udp_encap(&sock_b).unwrap();
        let nat = Some(NatT {
            sport: 4500,
            dport: 4500,
        });
        let mut ab = sa(A, B, 0x3003, 1, Mode::Transport, gcm(5));
        let mut ba = sa(B, A, 0x4004, 2, Mode::Transport, gcm(6));
        ab.nat_t = nat;
        ba.nat_t = nat;
        let (pa, pb) = transport_pair_policies();
        install(&xa, &[ab.clone(), ba.clone()], &pa).await;
        install(&xb, &[ab.clone(), ba.clone()], &pb).await;
        ping(&p.a, B);
        let st = sh(&format!("ip -n {} xfrm state", p.b));
        assert!(
            st.contains("encap type espinudp sport 4500 dport 4500"),
            "{st}"
        );
        assert_eq!(xb.get_sa(&ab.id()).await.unwrap().unwrap().nat_t, nat);
        assert_counters_match(&xa, &p.a).await;
        assert_counters_match(&xb, &p.b).await;
        drop((sock_a, sock_b));
    });
}

#[test]
fn a_changed_nat_mapping_is_reported_once_per_interval() {
    let p = Pair::new("mp");
    run(move || async move {
        let xa = open_in(&p.a);
        let sock_a = encap_socket();
        let xb = open_in(&p.b);
        let sock_b = encap_socket();
        let mut events = xb.events().unwrap();
        let natt = |sport, dport| Some(NatT { sport, dport });
        // B's copy of A's outbound SA expects A at port 4500; A's sends from 4501, as if a
        // NAT between them had given A a new mapping.
        let mut ab = sa(A, B, 0x3113, 1, Mode::Transport, gcm(5));
        let mut ba = sa(B, A, 0x4114, 2, Mode::Transport, gcm(6));
        ba.nat_t = natt(4500, 4500);
        ab.nat_t = natt(4501, 4500);
        let (pa, pb) = transport_pair_policies();
        install(&xa, &[ab.clone(), ba.clone()], &pa).await;
        ab.nat_t = natt(4500, 4500);
        ab.mapping_maxage = Some(10);
        install(&xb, &[ab.clone(), ba.clone()], &pb).await;
        // The packets are authentic, so they are taken (the echo replies come back), and the
        // kernel reports the new source of the first one; the others fall in the interval.
        ping(&p.a, B);
        let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("a mapping event within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(
            ev,
            Event::Mapping {
                sa: ab.id(),
                reqid: ab.reqid,
                old: format!("{A}:4500").parse().unwrap(),
                new: format!("{A}:4501").parse().unwrap(),
            }
        );
        let more = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
        assert!(
            more.is_err(),
            "a second report within the interval: {more:?}"
        );
        drop((sock_a, sock_b));
    });
}

#[test]
fn soft_and_hard_expire_events_arrive() {
    let p = Pair::new("ex");
    run(move || async move {
        let x = open_in(&p.a);
        let mut events = x.events().unwrap();
        let mut s = sa(A, B, 0x5005, 5, Mode::Transport, gcm(7));
        s.lifetimes = Lifetimes {
            soft: Limits {
                add_seconds: Some(1),
                ..Limits::default()
            },
            hard: Limits {
                add_seconds: Some(3),
                ..Limits::default()
            },
        };
        x.add_sa(&s).await.unwrap();
        // A foreign SA's expiry must not show up.
        sh(&format!(
            "ip -n {} xfrm state add src {A} dst {B} proto esp spi 0x6006 reqid 7 mode transport \
             aead 'rfc4106(gcm(aes))' 0x{} 128 limit time-soft 1 limit time-hard 2",
            p.a,
            "ab".repeat(36)
        ));
        let mut got = Vec::new();
        while got.len() < 2 {
            let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("expire events within 10 s")
                .unwrap()
                .unwrap();
            eprintln!("event: {ev:?}");
            got.push(ev);
        }
        let want = |hard| Event::Expire {
            sa: s.id(),
            reqid: s.reqid,
            hard,
        };
        assert_eq!(got, vec![want(false), want(true)]);
        assert!(
            x.get_sa(&s.id()).await.unwrap().is_none(),
            "hard expiry deletes"
        );
    });
}

#[test]
fn acquire_event_for_a_trap_policy() {
    let p = Pair::new("aq");
    run(move || async move {
        let x = open_in(&p.a);
        let mut events = x.events().unwrap();
        let pa = policies(
            &format!("{A}/32"),
            &format!("{B}/32"),
            A,
            B,
            8,
            9,
            Mode::Transport,
        );
        x.add_policy(&pa[0]).await.unwrap();
        let _ = Command::new("ip")
            .args(["netns", "exec", &p.a, "ping", "-c", "1", "-W", "1", B])
            .output();
        let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("acquire within 5 s")
            .unwrap()
            .unwrap();
        eprintln!("event: {ev:?}");
        match ev {
            Event::Acquire {
                policy, template, ..
            } => {
                assert_eq!(policy, pa[0].id());
                assert_eq!(template, pa[0].templates[0]);
            }
            other => panic!("expected acquire, got {other:?}"),
        }
    });
}

#[test]
fn sweep_removes_exactly_ours() {
    let p = Pair::new("sw");
    run(move || async move {
        let x = open_in(&p.a);
        let keep_sa = sa(A, B, 0x7001, 1, Mode::Transport, gcm(8));
        let drop_sa = sa(B, A, 0x7002, 2, Mode::Transport, cbc(9));
        let pols = policies(
            &format!("{A}/32"),
            &format!("{B}/32"),
            A,
            B,
            1,
            2,
            Mode::Transport,
        );
        install(&x, &[keep_sa.clone(), drop_sa.clone()], &pols).await;
        sh(&format!(
            "ip -n {ns} xfrm state add src {A} dst {B} proto esp spi 0x7777 reqid 7 mode tunnel \
             aead 'rfc4106(gcm(aes))' 0x{k} 128 && \
             ip -n {ns} xfrm policy add src 10.9.0.0/24 dst 10.8.0.0/24 dir out \
             tmpl src {A} dst {B} proto esp reqid 7 mode tunnel",
            ns = p.a,
            k = "cd".repeat(36)
        ));
        assert_eq!(x.list_sas().await.unwrap().len(), 3);
        assert_eq!(x.list_our_sas().await.unwrap().len(), 2);
        let foreign = SaId::esp(ip(B), 0x7777);
        assert!(matches!(
            x.delete_sa(&foreign).await,
            Err(strait_xfrm::Error::NotOurs { reqid: 7, .. })
        ));
        let mut keep = KeepSet::new();
        keep.sas.insert(keep_sa.id());
        keep.policies.insert(pols[0].id());
        let r = x.sweep(&keep).await.unwrap();
        assert_eq!(r.sas_deleted, vec![drop_sa.id()]);
        assert_eq!(r.policies_deleted, vec![pols[1].id()]);
        let sas = x.list_sas().await.unwrap();
        let mut spis: Vec<u32> = sas.iter().map(|s| s.id.spi).collect();
        spis.sort();
        assert_eq!(spis, vec![0x7001, 0x7777]);
        x.flush_ours().await.unwrap();
        let st = sh(&format!(
            "ip -n {} xfrm state; ip -n {} xfrm policy",
            p.a, p.a
        ));
        assert!(
            st.contains("spi 0x00007777") && st.contains("10.9.0.0/24"),
            "{st}"
        );
        assert!(
            !st.contains("0x00007001") && !st.contains(&format!("{A}/32")),
            "{st}"
        );
    });
}
