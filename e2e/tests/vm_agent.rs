//! The agent's kernel data plane with real ESP: runs INSIDE the kernel VM only (feature
//! `vm-tests`; `e2e/vm/tier.sh` builds it and runs it in one boot with `STRAIT_AGENT_BIN` set).
//! Every case uses `--dataplane kernel` and judges by the kernel (`ip -s xfrm state/policy`),
//! by ping through the tunnel, and by our status and `/metrics`.
//!
//! Tests run in name order (`--test-threads=1`): the charon case comes first because the first
//! charon start of a boot is the slow one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_e2e::agent::{Agent, SecretFile};
use strait_e2e::libreswan::{self, Pluto};
use strait_e2e::matrix::{self, Cell, Dir, Peer};
use strait_e2e::netns::{self, Site, SitePair};
use strait_e2e::prometheus::{Prometheus, dashboard_queries, metric_names};
use strait_e2e::scenario::{TUNNEL, charon_for, up};
use strait_e2e::strongswan::{
    Charon, CharonConfig, ChildConfig, Connection, Endpoint, KeyType, Plugins, Secret, TestPki,
};
use strait_e2e::tunnel::{Auth, End, TunnelYaml};

const PSK: &str = "strait-vm-psk-5e0b7d21c94a";
const METRICS: &str = "127.0.0.1:9470";

/// The agent's IPsecTunnel with PSK auth; `extra` is more YAML under `spec:` (two-space
/// indented lines).
fn yaml(me: &Site, peer: &Site, peer_addr: &str, initiation: &str, extra: &str) -> String {
    yaml_auth(
        me,
        peer,
        peer_addr,
        initiation,
        extra,
        Auth::Psk("gw-psk".into()),
    )
}

/// The same with `auth`.
fn yaml_auth(
    me: &Site,
    peer: &Site,
    peer_addr: &str,
    initiation: &str,
    extra: &str,
    auth: Auth,
) -> String {
    TunnelYaml {
        auth,
        extra: extra.to_owned(),
        ..TunnelYaml::new(
            TUNNEL,
            End::new(me.id, me.addr, me.subnet),
            End::new(peer.id, peer_addr, peer.subnet),
        )
        .proposals("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519")
        .initiation(initiation)
    }
    .render()
}

fn start(me: &Site, config: &str, extra_args: &[&str]) -> Agent {
    let psk = SecretFile {
        name: "gw-psk".into(),
        key: "psk".into(),
        value: PSK.into(),
    };
    start_with(me, config, &[psk], extra_args)
}

fn start_with(me: &Site, config: &str, secrets: &[SecretFile], extra_args: &[&str]) -> Agent {
    let mut args = vec!["--metrics-addr", METRICS];
    args.extend_from_slice(extra_args);
    Agent::start(&me.ns, config, secrets, "kernel", &args).expect("start strait-agent")
}

/// Routes `dst` (the peer's inner subnet) via `gw` with our inner address as source, in the main
/// table: for a site whose agent does not route by itself (charon's routes are in its table 220,
/// the agent's in its own table 23040, both looked up before main).
fn route(pair: &SitePair, site: &Site, dst: &str, gw: &str) {
    pair.topology
        .exec(
            site.node,
            &[
                "ip",
                "route",
                "replace",
                dst,
                "via",
                gw,
                "src",
                &site.inner.to_string(),
            ],
        )
        .expect("route");
}

/// One SA of `ip -s xfrm state`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct XState {
    src: String,
    dst: String,
    spi: String,
    bytes: u64,
    packets: u64,
    encap: bool,
}

fn xfrm_states(ns: &str) -> Vec<XState> {
    let out = netns::exec(ns, &["ip", "-s", "xfrm", "state"])
        .unwrap()
        .stdout;
    let mut v: Vec<XState> = Vec::new();
    let mut lines = out.lines().peekable();
    while let Some(l) = lines.next() {
        if let Some(rest) = l.strip_prefix("src ") {
            let mut w = rest.split_whitespace();
            let src = w.next().unwrap_or_default().to_owned();
            let dst = w.nth(1).unwrap_or_default().to_owned();
            v.push(XState {
                src,
                dst,
                spi: String::new(),
                bytes: 0,
                packets: 0,
                encap: false,
            });
            continue;
        }
        let Some(cur) = v.last_mut() else { continue };
        let t = l.trim();
        if let Some(i) = t.find("spi 0x") {
            // "spi 0xcb514180(3411100032)" on newer iproute2
            cur.spi = t[i + 6..]
                .split(|c: char| c.is_whitespace() || c == '(')
                .next()
                .unwrap_or_default()
                .to_owned();
        } else if t.starts_with("encap type espinudp") {
            cur.encap = true;
        } else if t == "lifetime current:"
            && let Some(next) = lines.next()
        {
            // "84(bytes), 1(packets)"
            let nums: Vec<u64> = next
                .split(',')
                .filter_map(|p| p.trim().split('(').next()?.parse().ok())
                .collect();
            cur.bytes = nums.first().copied().unwrap_or(0);
            cur.packets = nums.get(1).copied().unwrap_or(0);
        }
    }
    v
}

/// `GET /metrics` from inside `ns`, the body.
fn metrics(ns: &str) -> String {
    let (host, port) = METRICS.split_once(':').unwrap();
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = netns::exec(ns, &["bash", "-c", &script]).unwrap().stdout;
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(out)
}

fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn traffic_metric(body: &str, what: &str, dir: &str) -> u64 {
    metric(
        body,
        &format!("strait_child_sa_{what}_total{{direction=\"{dir}\",tunnel=\"{TUNNEL}\"}}"),
    )
    .map_or(0, |v| v as u64)
}

/// Our SAs agree with our status (SPIs), carried traffic, and `/metrics` shows the kernel's
/// counters. Returns (bytes in, bytes out).
fn check_counters(agent: &Agent) -> (u64, u64) {
    let t = agent.tunnel(TUNNEL).unwrap();
    let c = &t["childSas"][0];
    let (spi_in, spi_out) = (c["spiIn"].as_str().unwrap(), c["spiOut"].as_str().unwrap());
    let states = xfrm_states(agent.ns());
    let find = |spi: &str| {
        states
            .iter()
            .find(|s| s.spi == spi)
            .cloned()
            .unwrap_or_else(|| panic!("SPI {spi} of our status is not in the kernel: {states:?}"))
    };
    let (sin, sout) = (find(spi_in), find(spi_out));
    assert!(
        sin.packets > 0 && sout.packets > 0,
        "no traffic counted: {sin:?} {sout:?}"
    );
    let body = metrics(agent.ns());
    assert_eq!(traffic_metric(&body, "bytes", "in"), sin.bytes, "{body}");
    assert_eq!(traffic_metric(&body, "bytes", "out"), sout.bytes, "{body}");
    assert_eq!(
        traffic_metric(&body, "packets", "in"),
        sin.packets,
        "{body}"
    );
    assert_eq!(
        traffic_metric(&body, "packets", "out"),
        sout.packets,
        "{body}"
    );
    assert!(!body.contains(PSK));
    (sin.bytes, sout.bytes)
}

/// Exactly the tunnel's current CHILD SA in the kernel (two SAs, the status's SPIs) and its three
/// policies: nothing duplicated, nothing orphaned.
fn assert_exact_objects(agent: &Agent) {
    let t = agent.tunnel(TUNNEL).unwrap();
    let children = t["childSas"].as_array().unwrap();
    assert_eq!(children.len(), 1, "{t}");
    let mut want: Vec<String> = vec![
        children[0]["spiIn"].as_str().unwrap().to_owned(),
        children[0]["spiOut"].as_str().unwrap().to_owned(),
    ];
    want.sort();
    let mut have: Vec<String> = xfrm_states(agent.ns()).into_iter().map(|s| s.spi).collect();
    have.sort();
    assert_eq!(have, want, "kernel SAs vs status");
    let pols = netns::xfrm_policies(agent.ns()).unwrap();
    assert_eq!(pols.len(), 3, "out/in/fwd expected: {pols:?}");
}

/// (transmitted, received) from ping's summary.
fn ping_result(child: Child) -> (u64, u64, String) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let nums: Vec<u64> = line
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    (nums[0], nums[1], text)
}

fn ping(pair: &SitePair, from: &Site, to: &Site) {
    pair.topology
        .ping(from.node, Some(from.inner), to.inner, 3)
        .unwrap_or_else(|e| panic!("ping {} -> {}: {e:#}", from.inner, to.inner));
}

/// Once charon has the CHILD SA too: ping both ways, then our counters agree with the kernel
/// and `/metrics`, and exactly our one CHILD SA is installed. Returns (bytes in, bytes out).
fn carries_traffic(pair: &SitePair, agent: &Agent, charon: &Charon) -> (u64, u64) {
    charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap();
    ping(pair, &pair.left, &pair.right);
    ping(pair, &pair.right, &pair.left);
    let counters = check_counters(agent);
    assert_exact_objects(agent);
    counters
}

/// `ip -s xfrm state`, `ip xfrm policy` and every routing table of each site, for a failure's
/// message.
fn kernel_view(sites: &[&Site]) -> String {
    let mut s = String::new();
    for site in sites {
        for cmd in [
            &["ip", "-s", "xfrm", "state"][..],
            &["ip", "xfrm", "policy"][..],
            &["ip", "route", "show", "table", "all"][..],
        ] {
            let out = match netns::exec(&site.ns, cmd) {
                Ok(o) => o.stdout,
                Err(e) => format!("{e:#}"),
            };
            s.push_str(&format!("--- {} {}:\n{out}\n", site.ns, cmd.join(" ")));
        }
    }
    s
}

/// charon with the kernel's ESP (no UDP encapsulation needed), probing us every 5 s.
fn charon_config(me: &Site, peer: &Site) -> CharonConfig {
    let mut cfg = CharonConfig {
        plugins: Plugins::KernelNetlink,
        ..charon_for(me, peer, PSK, Some(peer.addr.to_string()))
    };
    cfg.connections[0].encap = false;
    cfg.connections[0].dpd_delay = Some("5s".into());
    cfg
}

/// charon (PSK) on the right site, with one retry (the boot's first charon start can exceed the
/// harness's 20 s). The left site's route to the right subnet is the agent's own.
fn charon_on_right(pair: &SitePair) -> Charon {
    let (left, right) = (&pair.left, &pair.right);
    Charon::start(&right.ns, &charon_config(right, left))
        .or_else(|_| Charon::start(&right.ns, &charon_config(right, left)))
        .expect("charon")
}

/// Our inbound SPI came from the kernel's allocation (`XFRM_MSG_ALLOCSPI`, in strongSwan's
/// range 0xc0000000-0xcfffffff), not from a random draw.
fn assert_kernel_spi(t: &Value) {
    let spi = t["childSas"][0]["spiIn"].as_str().unwrap_or_default();
    let v = u32::from_str_radix(spi, 16).unwrap_or(0);
    assert!(
        (0xC000_0000..=0xCFFF_FFFF).contains(&v),
        "inbound SPI {spi} is not a kernel-allocated one: {t}"
    );
}

/// The agent's routes (`ip route show table 23040`) in `ns`.
fn agent_routes(ns: &str) -> String {
    netns::exec(ns, &["ip", "route", "show", "table", "23040"])
        .unwrap()
        .stdout
}

fn sysctl(ns: &str, name: &str) -> String {
    netns::exec(ns, &["sysctl", "-n", name])
        .unwrap()
        .stdout
        .trim()
        .to_owned()
}

/// `cargo`'s name order puts this first: the boot's first (slow) charon start happens here.
#[test]
fn a_charon_both_directions_and_counters() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let t0 = Instant::now();
    // the boot's first charon start can exceed the harness's 20 s: one retry
    let charon = Charon::start(&right.ns, &charon_config(right, left))
        .or_else(|_| Charon::start(&right.ns, &charon_config(right, left)))
        .expect("charon");
    eprintln!("charon started in {:?}", t0.elapsed());
    // no route of the test's own on the left: the agent's (table 23040, src from the local
    // subnet) is the only way to the right subnet
    let forwarding_before = sysctl(&left.ns, "net.ipv4.ip_forward");

    // 1. the agent initiates
    let mut agent = start(
        left,
        &yaml(left, right, &right.addr.to_string(), "start", ""),
        &[],
    );
    let t = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon:\n{}", charon.log()));
    assert_eq!(t["childSas"][0]["encapsulated"], false, "{t}");
    assert_kernel_spi(&t);
    // the agent's route: the remote subnet, our inner address as source, the MTU of AES-GCM
    // in tunnel mode through the 1500-byte veth (1500 - 20 - 8 - 8 - 16 - 2 = 1446)
    let routes = agent_routes(&left.ns);
    assert!(
        routes.contains(&format!(
            "{} dev to-right proto 90 scope link src {} mtu 1446",
            right.subnet, left.inner
        )),
        "{routes}"
    );
    assert_eq!(sysctl(&left.ns, "net.ipv4.ip_forward"), "1");
    // the node's own traffic, no source given: the route's src puts it into the tunnel
    pair.topology
        .ping(left.node, None, right.inner, 3)
        .unwrap_or_else(|e| panic!("ping without -I: {e:#}\n{}", kernel_view(&[left, right])));
    let (bin, bout) = carries_traffic(&pair, &agent, &charon);
    // the peer's kernel counted the same packets
    let theirs = xfrm_states(&right.ns);
    assert!(
        theirs.iter().all(|s| s.packets > 0),
        "charon's SAs: {theirs:?}"
    );
    let their_in = theirs
        .iter()
        .find(|s| s.dst == right.addr.to_string())
        .unwrap();
    assert_eq!(their_in.bytes, bout, "what we sent is what charon received");
    let their_out = theirs
        .iter()
        .find(|s| s.dst == left.addr.to_string())
        .unwrap();
    assert_eq!(their_out.bytes, bin, "what charon sent is what we received");
    println!(
        "agent->charon: ping both ways; bytes in {bin} out {bout} agree with ip -s xfrm state and charon"
    );
    // SIGTERM cleans every XFRM object of ours
    agent.terminate(Duration::from_secs(10)).unwrap();
    assert!(xfrm_states(&left.ns).is_empty(), "SAs left after SIGTERM");
    assert!(
        netns::xfrm_policies(&left.ns).unwrap().is_empty(),
        "policies left after SIGTERM"
    );
    assert_eq!(
        agent_routes(&left.ns).trim(),
        "",
        "routes left after SIGTERM"
    );
    let rules = netns::exec(&left.ns, &["ip", "rule"]).unwrap().stdout;
    assert!(!rules.contains("23040"), "rule left after SIGTERM: {rules}");
    assert_eq!(
        sysctl(&left.ns, "net.ipv4.ip_forward"),
        forwarding_before,
        "ip_forward restored"
    );
    drop(agent);

    // 2. charon initiates
    let agent = start(
        left,
        &yaml(left, right, &right.addr.to_string(), "respond", ""),
        &[],
    );
    charon
        .initiate(TUNNEL, "net", 30)
        .unwrap_or_else(|e| panic!("initiate: {e:#}\n{}", agent.log()));
    let t = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(30), up)
        .unwrap();
    assert_eq!(t["initiator"], false, "{t}");
    assert_kernel_spi(&t);
    // charon (MOBIKE) moved IKE to 4500, but there is no NAT: plain ESP on both sides
    assert_eq!(t["childSas"][0]["encapsulated"], false, "{t}");
    for (from, to) in [(left, right), (right, left)] {
        if let Err(e) = pair.topology.ping(from.node, Some(from.inner), to.inner, 3) {
            panic!(
                "ping {} -> {}: {e:#}\n{}\n--- agent:\n{}\n--- charon:\n{}",
                from.inner,
                to.inner,
                kernel_view(&[left, right]),
                agent.log(),
                charon.log()
            );
        }
    }
    let (bin, bout) = check_counters(&agent);
    assert_exact_objects(&agent);
    println!("charon->agent: ping both ways; bytes in {bin} out {bout} agree");
}

#[test]
fn b_agents_through_nat() {
    let _serial = netns::serial();
    let pair = SitePair::new(true).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    route(&pair, right, left.subnet, &left.public_addr.to_string());
    let r = start(
        right,
        &yaml(right, left, &left.public_addr.to_string(), "respond", ""),
        &[],
    );
    let l = start(
        left,
        &yaml(left, right, &right.addr.to_string(), "start", ""),
        &[],
    );
    let t = l
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- right:\n{}", r.log()));
    r.wait_tunnel(TUNNEL, Duration::from_secs(10), up).unwrap();
    assert_eq!(t["natDetected"], true, "{t}");
    assert_eq!(t["childSas"][0]["encapsulated"], true, "{t}");
    ping(&pair, left, right);
    ping(&pair, right, left);
    for a in [&l, &r] {
        check_counters(a);
        assert_exact_objects(a);
        assert!(
            xfrm_states(a.ns()).iter().all(|s| s.encap),
            "ESP in UDP 4500 expected"
        );
    }
    println!("agent<->agent through NAT: ESP in UDP, ping both ways, counters agree");
}

/// Rekeys on both sides (same lifetimes: collisions happen too) under a steady 50 packets/s.
/// A CHILD rekey refused because an IKE rekey is in flight used to wait 10-20 s to retry,
/// longer than the scaled rekey-to-hard margin (5 s): the kernel dropped the old SA first and a
/// burst of pings was lost in about half the runs. The retry now comes before the hard expiry.
#[test]
fn c_rekeys_lose_nothing() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    route(&pair, left, right.subnet, &right.addr.to_string());
    route(&pair, right, left.subnet, &left.addr.to_string());
    // API lifetimes 60 s (ESP) and 120 s (IKE), scaled by 0.15: CHILD rekeys every ~8-9 s,
    // IKE every ~16-18 s
    let lifetimes = "  ike: {proposals: [aes256gcm16-prfsha256-x25519], lifetime: 2m}\n  esp: {proposals: [aes256gcm16-x25519], lifetime: 1m}\n";
    let scale = ["--test-lifetime-scale", "0.15"];
    let cfg = |me: &Site, peer: &Site, init: &str| {
        yaml(me, peer, &peer.addr.to_string(), init, "")
            .replace("  ike: {proposals: [aes256gcm16-prfsha256-x25519]}\n  esp: {proposals: [aes256gcm16-x25519]}\n", lifetimes)
    };
    let r = start(right, &cfg(right, left, "respond"), &scale);
    let l = start(left, &cfg(left, right, "start"), &scale);
    l.wait_tunnel(TUNNEL, Duration::from_secs(60), up).unwrap();
    r.wait_tunnel(TUNNEL, Duration::from_secs(10), up).unwrap();
    let rekeys = |a: &Agent, kind: &str| {
        metric(
            &metrics(a.ns()),
            &format!("strait_rekeys_total{{kind=\"{kind}\",tunnel=\"{TUNNEL}\"}}"),
        )
        .unwrap_or(0.0) as u64
    };
    let t0 = Instant::now();
    let count = 3000; // 60 s at 50/s
    let p = ping_flood_timed(left, right, "0.02", count);
    let (sent, received, text) = ping_result(p);
    let elapsed = t0.elapsed();
    // when each lost packet was sent, in the agents' log time (UTC), to find the rekey it hit
    let lost: Vec<String> = lost_send_times(&text, count)
        .iter()
        .map(|(seq, t)| {
            let day = t.rem_euclid(86_400.0);
            format!(
                "icmp_seq={seq} at {:02}:{:02}:{:06.3}Z",
                (day / 3600.0).floor(),
                (day % 3600.0 / 60.0).floor(),
                day % 60.0
            )
        })
        .collect();
    let (child, ike) = (
        rekeys(&l, "child").max(rekeys(&r, "child")),
        rekeys(&l, "ike").max(rekeys(&r, "ike")),
    );
    println!(
        "rekeys under 50 pkt/s for {elapsed:?}: {child} CHILD SA rekeys, {ike} IKE SA rekeys; \
         ping sent {sent}, received {received}, lost {} {lost:?}",
        sent - received
    );
    assert!(child >= 5, "only {child} CHILD SA rekeys\n{}", l.log());
    assert!(ike >= 2, "only {ike} IKE SA rekeys\n{}", l.log());
    assert_eq!(
        sent,
        received,
        "packets lost across rekeys: {lost:?}\n--- left:\n{}\n--- right:\n{}",
        l.log(),
        r.log()
    );
    // afterwards: one CHILD SA, no leftovers, on both sides
    thread::sleep(Duration::from_secs(1));
    for a in [&l, &r] {
        let t = a.wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            up(t) && t["childSas"].as_array().is_some_and(|c| c.len() == 1)
        });
        t.unwrap();
    }
}

/// Byte limits (`spec.esp.rekeyBytes`, `lifeBytes`): the kernel counts each CHILD SA's bytes
/// and reports the soft limit, and the agent rekeys on it, long before the 1 h lifetime; the
/// hard limit, 50 kB later, is never reached, so nothing is lost.
#[test]
fn m_byte_limits_rekey_by_volume() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    route(&pair, left, right.subnet, &right.addr.to_string());
    route(&pair, right, left.subnet, &left.addr.to_string());
    let volume = "  esp: {proposals: [aes256gcm16-x25519], lifetime: 1h, rekeyBytes: 150000, lifeBytes: 200000}\n";
    let cfg = |me: &Site, peer: &Site, init: &str, esp: &str| {
        yaml(me, peer, &peer.addr.to_string(), init, "")
            .replace("  esp: {proposals: [aes256gcm16-x25519]}\n", esp)
    };
    let r = start(
        right,
        &cfg(
            right,
            left,
            "respond",
            "  esp: {proposals: [aes256gcm16-x25519]}\n",
        ),
        &[],
    );
    let l = start(left, &cfg(left, right, "start", volume), &[]);
    l.wait_tunnel(TUNNEL, Duration::from_secs(60), up).unwrap();
    r.wait_tunnel(TUNNEL, Duration::from_secs(10), up).unwrap();
    // the limits are in the kernel SAs the agent installed (ip xfrm prints them in bytes)
    let states = netns::exec(&left.ns, &["ip", "-s", "xfrm", "state"])
        .unwrap()
        .stdout;
    assert!(
        states.contains("hard 200000(bytes)"),
        "no byte limit in the kernel:\n{states}"
    );
    // 1000 echo requests of 1000 bytes at 100/s: about 1 MB through each SA
    let p = netns::exec_command(
        &left.ns,
        &[
            "ping",
            "-n",
            "-q",
            "-i",
            "0.01",
            "-s",
            "1000",
            "-c",
            "1000",
            "-W",
            "2",
            "-I",
            &left.inner.to_string(),
            &right.inner.to_string(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("ping");
    let (sent, received, _) = ping_result(p);
    let rekeys = metric(
        &metrics(l.ns()),
        &format!("strait_rekeys_total{{kind=\"child\",tunnel=\"{TUNNEL}\"}}"),
    )
    .unwrap_or(0.0) as u64;
    println!(
        "byte limits 150 kB soft / 200 kB hard: {rekeys} CHILD SA rekeys in 1000 pings of 1000 bytes, {} lost",
        sent - received
    );
    assert!(rekeys >= 4, "only {rekeys} rekeys\n{}", l.log());
    assert!(
        rekeys <= 12,
        "{rekeys} rekeys for ~1 MB: the jitter or the limit is off"
    );
    assert_eq!(sent, received, "lost across volume rekeys\n{}", l.log());
}

/// `kill -9` under traffic: the kernel SAs keep carrying it while no agent runs; the restarted
/// agent brings up new SAs, then sweeps the old ones.
///
/// The restarted agent's IKE_AUTH carries INITIAL_CONTACT, so charon deletes the old SAs as it
/// installs the new ones, one round trip (plus our processing) before our side can switch: the
/// packets in that window are lost on any IKEv2 implementation. The test measures where each
/// lost packet was sent: none while the agent was dead, the rest inside one short window at the
/// switch (issue #5 asks that traffic keep flowing on the kernel SAs; zero loss stays the target
/// for rekeys, where both ends can make before they break).
#[test]
fn d_kill9_restart_keeps_traffic_and_leaves_nothing() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let charon = charon_on_right(&pair);
    let cfg = yaml(left, right, &right.addr.to_string(), "start", "");
    let mut agent = start(left, &cfg, &[]);
    let before = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap();
    let old_spi = before["childSas"][0]["spiIn"].as_str().unwrap().to_owned();
    let count = 750; // 15 s at 50/s
    let p = ping_flood_timed(left, right, "0.02", count);
    thread::sleep(Duration::from_secs(3));
    agent.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    while agent.try_wait().unwrap().is_none() {
        thread::sleep(Duration::from_millis(10));
    }
    let killed = Instant::now();
    let killed_at = unix_now();
    drop(agent);
    // no agent for a while: the kernel SAs alone carry the traffic
    thread::sleep(Duration::from_secs(2));
    let restarted_at = unix_now();
    let agent = start(left, &cfg, &[]);
    let after = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), |t| {
            up(t) && t["childSas"][0]["spiIn"].as_str() != Some(old_spi.as_str())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon:\n{}", charon.log()));
    let reup = killed.elapsed();
    let up_at = unix_now();
    let (sent, received, text) = ping_result(p);
    let lost = lost_send_times(&text, count);
    let rel = |t: f64| format!("{:+.3}", t - killed_at);
    println!(
        "kill -9 under 50 pkt/s: restarted {} s and new SAs {} s after the kill ({reup:?}); \
         ping sent {sent}, received {received}, lost {} sent at {:?} s after the kill",
        rel(restarted_at),
        rel(up_at),
        sent - received,
        lost.iter().map(|(_, t)| rel(*t)).collect::<Vec<_>>()
    );
    // the sweep of the old run's objects happens ADOPT_SETTLE after the new SAs are up
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if xfrm_states(&left.ns).len() == 2 || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert_exact_objects(&agent);
    assert!(
        !xfrm_states(&left.ns).iter().any(|s| s.spi == old_spi),
        "old SA left"
    );
    ping(&pair, left, right);
    assert_eq!(
        lost.len() as u64,
        sent - received,
        "every lost packet located:\n{text}"
    );
    // a packet is "sent" between two received neighbours; 0.1 s covers that estimate
    let while_dead: Vec<_> = lost
        .iter()
        .filter(|(_, t)| *t < restarted_at - 0.1)
        .map(|(_, t)| rel(*t))
        .collect();
    assert!(
        while_dead.is_empty(),
        "packets lost while no agent ran (the kernel SAs must carry them), sent at {while_dead:?} s after the kill\n{after}"
    );
    // the rest are consecutive: ONE switch window, 0.26-0.45 s under TCG on a loaded host
    let seqs: Vec<u32> = lost.iter().map(|(seq, _)| *seq).collect();
    let window = lost
        .last()
        .zip(lost.first())
        .map_or(0.0, |(l, f)| l.1 - f.1);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1) && window <= 1.5,
        "lost {seqs:?} over {window:.3} s: not one short switch window\n{text}\n{after}"
    );
}

/// With `--state-dir` (#15): `kill -9` and a restart, then SIGTERM and a restart, under 50 pkt/s.
/// Each restarted agent resumes the saved IKE SA and keeps the kernel's SAs for its CHILD SA:
/// nothing lost, charon's IKE SA the same one (no new IKE_SA_INIT), our SPIs unchanged, and
/// charon's DPD and our status go on on the resumed SA.
#[test]
fn d_resumed_after_kill9_and_sigterm_loses_nothing() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let charon = charon_on_right(&pair);
    let cfg = yaml(left, right, &right.addr.to_string(), "start", "");
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let args = ["--state-dir", state_dir.to_str().unwrap()];
    let mut agent = start(left, &cfg, &args);
    let before = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap();
    let charon_sa = |c: &Charon| {
        let sas = c.list_sas().unwrap();
        let ids: Vec<u32> = sas.ike_sas.iter().map(|s| s.unique_id).collect();
        (ids, sas.raw)
    };
    charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap();
    let (charon_before, _) = charon_sa(&charon);
    assert_eq!(charon_before.len(), 1);
    let spis = |t: &Value| {
        (
            t["ikeSpis"].clone(),
            t["childSas"][0]["spiIn"].clone(),
            t["childSas"][0]["spiOut"].clone(),
        )
    };
    for sig in [
        nix::sys::signal::Signal::SIGKILL,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let count = 500; // 10 s at 50/s
        let p = ping_flood_timed(left, right, "0.02", count);
        thread::sleep(Duration::from_secs(3));
        agent.signal(sig).unwrap();
        while agent.try_wait().unwrap().is_none() {
            thread::sleep(Duration::from_millis(10));
        }
        let log = agent.log();
        drop(agent);
        thread::sleep(Duration::from_secs(2));
        agent = start(left, &cfg, &args);
        let after = agent
            .wait_tunnel(TUNNEL, Duration::from_secs(30), up)
            .unwrap_or_else(|e| panic!("{e:#}\n{}\n--- previous agent:\n{log}", agent.log()));
        assert_eq!(spis(&after), spis(&before), "not resumed:\n{}", agent.log());
        assert!(
            agent.log().contains("resumed saved IKE state"),
            "{}",
            agent.log()
        );
        let (sent, received, text) = ping_result(p);
        println!(
            "{sig:?} and restart with --state-dir under 50 pkt/s: sent {sent}, received {received}"
        );
        assert_eq!(
            sent - received,
            0,
            "{sig:?}: packets lost\n{text}\n{}",
            kernel_view(&[left])
        );
        let (charon_now, raw) = charon_sa(&charon);
        assert_eq!(
            charon_now, charon_before,
            "charon made another IKE SA:\n{raw}"
        );
    }
    // the previous run's objects are the resumed ones: the sweep keeps exactly them
    thread::sleep(Duration::from_secs(4));
    assert_exact_objects(&agent);
    // charon's liveness checks (every 5 s) are answered by the resumed SA, which carries on
    thread::sleep(Duration::from_secs(11));
    let (charon_now, raw) = charon_sa(&charon);
    assert_eq!(charon_now, charon_before, "charon dropped the SA:\n{raw}");
    ping(&pair, left, right);
    ping(&pair, right, left);
    check_counters(&agent);
    // the peer rekeys the resumed CHILD SA and then the IKE SA: both answered, traffic flows
    let child_before = agent.tunnel(TUNNEL).unwrap()["childSas"][0]["spiIn"].clone();
    charon
        .swanctl(&["--rekey", "--child", "net"])
        .expect("charon rekeys the CHILD SA");
    let t = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            up(t)
                && t["childSas"].as_array().is_some_and(|c| c.len() == 1)
                && t["childSas"][0]["spiIn"] != child_before
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", agent.log(), charon.log()));
    charon
        .swanctl(&["--rekey", "--ike", TUNNEL])
        .expect("charon rekeys the IKE SA");
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |x| {
            up(x) && x["ikeSpis"] != t["ikeSpis"]
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", agent.log(), charon.log()));
    ping(&pair, left, right);
    // and deletes the tunnel: every SA of ours that existed goes (the agent, a `start` tunnel,
    // negotiates a new one 2 s later, which is not what is looked at)
    let old: Vec<String> = xfrm_states(&left.ns).into_iter().map(|s| s.spi).collect();
    charon.terminate(TUNNEL, 10).expect("charon terminates");
    let left_over = || -> Vec<String> {
        xfrm_states(&left.ns)
            .into_iter()
            .map(|s| s.spi)
            .filter(|s| old.contains(s))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !left_over().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        left_over().is_empty(),
        "SAs left after the peer's delete:\n{}",
        kernel_view(&[left])
    );
}

/// A rotated PSK (#15): the peer learns the new key, then the agent's Secret changes and it is
/// SIGHUPed. The agent reauthenticates make-before-break: a new IKE SA and CHILD SA come up
/// beside the old ones (no INITIAL_CONTACT), traffic moves, then the old IKE SA is deleted.
/// Under 50 pkt/s at most the replies in charon's switch window are lost (below), and charon
/// ends with one IKE SA, authenticated anew.
#[test]
fn g_psk_rotation_reauthenticates_and_loses_nothing() {
    const ROTATED: &str = "strait-vm-rotated-psk-0c41e9";
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let charon = charon_on_right(&pair);
    let cfg = yaml(left, right, &right.addr.to_string(), "start", "");
    let agent = start(left, &cfg, &[]);
    let before = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap();
    charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap();
    let ike_ids = |c: &Charon| {
        let sas = c.list_sas().unwrap();
        let ids: Vec<u32> = sas.ike_sas.iter().map(|s| s.unique_id).collect();
        (ids, sas.raw)
    };
    let (ids_before, _) = ike_ids(&charon);
    assert_eq!(ids_before.len(), 1);
    let auths = |c: &Charon| {
        c.log()
            .lines()
            .filter(|l| l.contains("with pre-shared key successful"))
            .count()
    };
    let auths_before = auths(&charon);
    // charon takes the new PSK for its next authentication; its IKE SA stays
    let mut rotated = charon_config(right, left);
    for s in &mut rotated.secrets {
        let Secret::Ike { secret, .. } = s;
        *secret = ROTATED.into();
    }
    charon
        .reconfigure(&rotated)
        .expect("charon reloads its credentials");
    assert_eq!(
        ike_ids(&charon).0,
        ids_before,
        "charon's reload dropped the SA"
    );

    let count = 500; // 10 s at 50/s
    let p = ping_flood_timed(left, right, "0.02", count);
    thread::sleep(Duration::from_secs(3));
    std::fs::write(agent.dir().join("secrets/gw-psk/psk"), ROTATED).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP).unwrap();
    let after = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            up(t) && t["ikeSpis"] != before["ikeSpis"]
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", agent.log(), charon.log()));
    assert_ne!(
        after["childSas"][0]["spiIn"],
        before["childSas"][0]["spiIn"]
    );
    let (sent, received, text) = ping_result(p);
    let lost = lost_send_times(&text, count);
    println!(
        "PSK rotated under 50 pkt/s: sent {sent}, received {received}, lost {lost:?} (seq, sent at)"
    );
    // charon, answering IKE_AUTH, sends on the new CHILD SA at once; our inbound SA for it is
    // in once we have processed the answer (~30 ms for this debug build under TCG). A reply in
    // that window is lost: at most 2 at 50 pkt/s. A restart (what a changed Secret did before)
    // loses a whole renegotiation, and break-before-make a round trip and more.
    assert!(
        sent - received <= 2,
        "{} packets lost in the rotation\n{text}\n{}\n{}",
        sent - received,
        kernel_view(&[left]),
        agent.log()
    );
    // charon: one IKE SA, a new one, authenticated once more (with the key only the rotated
    // Secret holds: the old one is no longer in its credentials)
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ids_after, raw) = loop {
        let (ids, raw) = ike_ids(&charon);
        if ids.len() == 1 || Instant::now() > deadline {
            break (ids, raw);
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ids_after.len(), 1, "charon kept the old IKE SA:\n{raw}");
    assert_ne!(ids_after, ids_before, "no new IKE SA at charon:\n{raw}");
    assert!(auths(&charon) > auths_before, "{}", charon.log());
    assert!(
        !charon.log().contains("INITIAL_CONTACT"),
        "the reauthentication sent INITIAL_CONTACT:\n{}",
        charon.log()
    );
    thread::sleep(Duration::from_secs(2));
    assert_exact_objects(&agent);
    // (the traffic counters are the tunnel's, across both CHILD SAs: `check_counters`
    // compares them with the current SA's, which a rotation makes unequal)
    ping(&pair, left, right);
    ping(&pair, right, left);
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `ping -D` every packet, without `-q`: each reply line carries its arrival time.
fn ping_flood_timed(from: &Site, to: &Site, interval: &str, count: u32) -> Child {
    netns::exec_command(
        &from.ns,
        &[
            "ping",
            "-n",
            "-D",
            "-i",
            interval,
            "-c",
            &count.to_string(),
            "-W",
            "2",
            "-I",
            &from.inner.to_string(),
            &to.inner.to_string(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("ping")
}

/// Each unanswered echo request of a `ping -D` run: its sequence number and when it was sent
/// (unix seconds), interpolated between the answered requests on either side of it.
fn lost_send_times(text: &str, count: u32) -> Vec<(u32, f64)> {
    // (seq, reply time - rtt) = the send time of each answered request
    let mut sent: Vec<(u32, f64)> = text
        .lines()
        .filter_map(|l| {
            let ts: f64 = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq: u32 = l
                .split("icmp_seq=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            let rtt: f64 = l.split("time=").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((seq, ts - rtt / 1000.0))
        })
        .collect();
    sent.sort_by_key(|(seq, _)| *seq);
    sent.dedup_by_key(|(seq, _)| *seq);
    let mut lost = Vec::new();
    for seq in 1..=count {
        if sent.binary_search_by_key(&seq, |(s, _)| *s).is_ok() {
            continue;
        }
        let before = sent.iter().rev().find(|(s, _)| *s < seq);
        let after = sent.iter().find(|(s, _)| *s > seq);
        let t = match (before, after) {
            (Some((s0, t0)), Some((s1, t1))) => {
                t0 + (t1 - t0) * f64::from(seq - s0) / f64::from(s1 - s0)
            }
            (Some((s0, t0)), None) => t0 + 0.02 * f64::from(seq - s0),
            (None, Some((s1, t1))) => t1 - 0.02 * f64::from(s1 - seq),
            (None, None) => f64::NAN,
        };
        lost.push((seq, t));
    }
    lost
}

/// The peer killed: DPD marks the tunnel down within interval + timeout; the peer back: the
/// tunnel comes back by itself.
#[test]
fn e_dpd_peer_killed_and_back() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    route(&pair, left, right.subnet, &right.addr.to_string());
    route(&pair, right, left.subnet, &left.addr.to_string());
    let dpd = "  dpd: {interval: 2s, timeout: 6s}\n";
    let rcfg = yaml(right, left, &left.addr.to_string(), "respond", dpd);
    let mut r = start(right, &rcfg, &[]);
    let l = start(
        left,
        &yaml(left, right, &right.addr.to_string(), "start", dpd),
        &[],
    );
    l.wait_tunnel(TUNNEL, Duration::from_secs(60), up).unwrap();
    r.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    while r.try_wait().unwrap().is_none() {
        thread::sleep(Duration::from_millis(10));
    }
    let killed = Instant::now();
    drop(r);
    let down = l
        .wait_tunnel(TUNNEL, Duration::from_secs(30), |t| {
            t["ikeState"] != "Established"
        })
        .unwrap();
    let dpd_time = killed.elapsed();
    assert_eq!(down["lastError"]["reason"], "PeerUnreachable", "{down}");
    let m = metrics(l.ns());
    assert!(
        metric(&m, "strait_dpd_failures_total").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    println!("DPD (interval 2 s, timeout 6 s): tunnel down {dpd_time:?} after the peer was killed");
    assert!(
        dpd_time <= Duration::from_secs(8 + 3),
        "DPD took {dpd_time:?}"
    );
    // Fail closed: the CHILD SA is gone, its selectors are blocked again (not unprotected),
    // and pings to the remote subnet never reach the wire in clear while the tunnel is down.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !xfrm_states(&left.ns).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(xfrm_states(&left.ns).is_empty(), "SAs left after DPD");
    assert_eq!(blocked_policies(&left.ns), 3, "{}", kernel_view(&[left]));
    let clear = cleartext_on_wire(&pair, left, right, 10);
    println!(
        "fail closed: 10 pings while the tunnel was down, {clear} cleartext packets on the wire"
    );
    assert_eq!(
        clear, 0,
        "cleartext left the node while the tunnel was down"
    );
    let back_at = Instant::now();
    let r = start(right, &rcfg, &[]);
    l.wait_tunnel(TUNNEL, Duration::from_secs(60), up).unwrap();
    r.wait_tunnel(TUNNEL, Duration::from_secs(10), up).unwrap();
    println!(
        "peer back: tunnel up again {:?} after its restart",
        back_at.elapsed()
    );
    ping(&pair, left, right);
    ping(&pair, right, left);
    let deadline = Instant::now() + Duration::from_secs(15);
    while xfrm_states(&right.ns).len() != 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    for a in [&l, &r] {
        assert_exact_objects(a);
    }
}

/// How many of our policies in `ns` drop their traffic (`action block`).
fn blocked_policies(ns: &str) -> usize {
    netns::exec(ns, &["ip", "xfrm", "policy"])
        .unwrap()
        .stdout
        .matches("action block")
        .count()
}

/// Pings `to`'s inner address from `from`'s, `count` times, while tcpdump watches `from`'s
/// link to `to` for ICMP between the two inner addresses; returns how many such packets
/// crossed the wire in clear.
fn cleartext_on_wire(pair: &SitePair, from: &Site, to: &Site, count: u32) -> usize {
    let iface = pair.topology.interface(from.node, to.node).unwrap();
    let filter = format!("icmp and host {} and host {}", from.inner, to.inner);
    let dump = netns::exec_command(
        &from.ns,
        &[
            "timeout",
            "-s",
            "INT",
            &format!("{}", 3 + count / 5 + 2),
            "tcpdump",
            "-n",
            "-l",
            "--immediate-mode",
            "-i",
            &iface,
            &filter,
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("tcpdump");
    thread::sleep(Duration::from_secs(2));
    let (tx, _) = ping_some(from, to, count);
    assert_eq!(tx, u64::from(count), "ping did not run");
    let out = dump.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listening on"), "tcpdump did not start: {err}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ICMP"))
        .count()
}

/// Sends `count` pings, 0.2 s apart, and returns (transmitted, received).
fn ping_some(from: &Site, to: &Site, count: u32) -> (u64, u64) {
    let (tx, rx, _) = ping_result(ping_flood_timed(from, to, "0.2", count));
    (tx, rx)
}

/// `initiation: onTraffic` (strongSwan's `start_action = trap`): the agent installs trap
/// policies (out, in, fwd) and waits; the first packet makes the kernel ask for an SA and the agent
/// negotiates it; when the peer closes the IKE SA the policy goes back to waiting, and traffic
/// brings the tunnel up again.
#[test]
fn f_on_traffic_starts_on_the_first_packet_and_traps_again() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let charon = charon_on_right(&pair);
    let agent = start(
        left,
        &yaml(left, right, &right.addr.to_string(), "onTraffic", ""),
        &[],
    );
    let diag = |what: &str| {
        format!(
            "{what}\n{}\n--- agent:\n{}\n--- charon:\n{}",
            kernel_view(&[left, right]),
            agent.log(),
            charon.log()
        )
    };

    // Waiting: one trap policy, no SA, no IKE SA on either side.
    let trapped = |agent: &Agent, after: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = agent.tunnel(TUNNEL).unwrap_or(Value::Null);
            let waiting = t["ikeState"] == "Down"
                && xfrm_states(&left.ns).is_empty()
                && netns::xfrm_policies(&left.ns).unwrap().len() == 3;
            if waiting {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{}",
                diag(&format!("not trapped {after}: {t}"))
            );
            thread::sleep(Duration::from_millis(250));
        }
    };
    let t = trapped(&agent, "at start");
    assert_eq!(t["initiation"], "onTraffic", "{t}");
    assert!(
        t["notes"].as_array().is_none_or(|n| n.is_empty()),
        "no fallback note expected: {t}"
    );
    // out, and in and fwd for the way back: traps, not blocks
    let pols = netns::xfrm_policies(&left.ns).unwrap();
    let out = format!("src {} dst {}", left.subnet, right.subnet);
    let back = format!("src {} dst {}", right.subnet, left.subnet);
    assert_eq!(
        pols.iter().filter(|p| p.starts_with(&out)).count(),
        1,
        "{pols:?}"
    );
    assert_eq!(
        pols.iter().filter(|p| p.starts_with(&back)).count(),
        2,
        "{pols:?}"
    );
    assert_eq!(blocked_policies(&left.ns), 0, "{}", kernel_view(&[left]));
    thread::sleep(Duration::from_secs(2));
    assert!(
        charon.list_sas().unwrap().ike(TUNNEL).is_none(),
        "{}",
        diag("an IKE SA exists before any traffic")
    );

    for (n, round) in ["first packet", "after the peer closed the tunnel"]
        .into_iter()
        .enumerate()
    {
        let started = Instant::now();
        let (tx, rx) = ping_some(left, right, 20);
        let t = agent
            .wait_tunnel(TUNNEL, Duration::from_secs(10), up)
            .unwrap_or_else(|e| panic!("{}", diag(&format!("{round}: {e:#}"))));
        assert_eq!(t["initiator"], true, "{t}");
        assert!(
            rx > 0,
            "{}",
            diag(&format!("{round}: {rx} of {tx} pings answered"))
        );
        charon
            .wait_up(TUNNEL, "net", Duration::from_secs(10))
            .unwrap();
        if n == 0 {
            check_counters(&agent);
        } else {
            // /metrics now also holds the first CHILD SA's traffic: check the new SA itself
            let spi = t["childSas"][0]["spiIn"].as_str().unwrap().to_owned();
            let states = xfrm_states(&left.ns);
            let new = states.iter().find(|s| s.spi == spi);
            assert!(
                new.is_some_and(|s| s.packets > 0),
                "{}",
                diag(&format!(
                    "{round}: the new SA {spi} carried nothing: {states:?}"
                ))
            );
        }
        assert_exact_objects(&agent);
        println!(
            "onTraffic, {round}: up; {rx} of {tx} pings answered (the first ones wait for the \
             SA), {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // The peer closes the IKE SA: the CHILD SA goes, the trap stays.
        charon.terminate(TUNNEL, 20).unwrap();
        trapped(&agent, "after the peer's DELETE");
    }
}

/// Certificate authentication (ECDSA P-256, FQDN identities from the subjectAltName) with real
/// ESP: the agent initiates to charon, traffic flows both ways, and the counters agree.
#[test]
fn g_certificates_carry_traffic() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), KeyType::Ecdsa(256)).expect("test CA");
    let ours = pki
        .issue("left", left.id, KeyType::Ecdsa(256))
        .expect("our certificate");
    let theirs = pki
        .issue("right", right.id, KeyType::Ecdsa(256))
        .expect("charon's certificate");
    let mut conn = Connection::new(
        TUNNEL,
        Endpoint::pubkey(right.id, Some("own.crt")),
        Endpoint::pubkey(left.id, None),
    );
    conn.local_addrs = vec![right.addr.to_string()];
    conn.remote_addrs = vec![left.addr.to_string()];
    conn.children
        .push(ChildConfig::new("net", right.subnet, left.subnet));
    let mut cfg = CharonConfig {
        plugins: Plugins::KernelNetlink,
        connections: vec![conn],
        ..CharonConfig::default()
    };
    cfg.add_cert_auth(&pki, &theirs, "own");
    let charon = Charon::start(&right.ns, &cfg)
        .or_else(|_| Charon::start(&right.ns, &cfg))
        .expect("charon");
    route(&pair, left, right.subnet, &right.addr.to_string());
    let secrets = SecretFile::certificate(&ours, &pki.ca.cert).expect("certificate files");
    let config = yaml_auth(
        left,
        right,
        &right.addr.to_string(),
        "start",
        "",
        Auth::Certificate,
    );
    let agent = start_with(left, &config, &secrets, &[]);
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\n--- agent:\n{}\n--- charon:\n{}",
                agent.log(),
                charon.log()
            )
        });
    let (bin, bout) = carries_traffic(&pair, &agent, &charon);
    let theirs = xfrm_states(&right.ns);
    let their_in = theirs
        .iter()
        .find(|s| s.dst == right.addr.to_string())
        .unwrap();
    assert_eq!(their_in.bytes, bout, "what we sent is what charon received");
    let key = std::fs::read_to_string(&ours.key).unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let log: String = agent.log().split_whitespace().collect();
    assert!(!log.contains(&body[..40]), "key material in our log");
    let panels = prometheus_reads_the_kernel_series(left);
    println!(
        "certificates (ECDSA P-256): ping both ways; bytes in {bin} out {bout} agree with the kernel and charon; \
         Prometheus has every kernel and certificate series, {panels} dashboard queries on them answered"
    );
}

/// The series only a kernel data plane with a certificate tunnel feeds (the control-plane test,
/// `prometheus_live.rs`, runs `--dataplane none` with a PSK): a real Prometheus in `site`'s
/// namespace scrapes the agent there, and each series, and each dashboard query reading one,
/// must return data. Returns how many dashboard queries were checked.
fn prometheus_reads_the_kernel_series(site: &Site) -> usize {
    const KERNEL_SERIES: [&str; 5] = [
        "strait_certificate_expiry_timestamp_seconds",
        "strait_kernel_xfrm_errors_total",
        "strait_child_sa_bytes_total",
        "strait_child_sa_replay_drops_total",
        "strait_child_sa_integrity_failures_total",
    ];
    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(
        &site.ns,
        dir.path(),
        &format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n\
             - job_name: strait-agent\n  static_configs: [{{targets: ['{METRICS}']}}]\n"
        ),
    )
    .unwrap();
    // Prometheus starts slowly under TCG
    prom.wait("the agent scraped twice", Duration::from_secs(120), |p| {
        !p.query("count_over_time(strait_child_sa_bytes_total[1m]) >= 2")
            .is_empty()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    for name in KERNEL_SERIES {
        let got = prom.query(&format!("count({{__name__=\"{name}\"}})"));
        assert!(
            !got.is_empty(),
            "Prometheus has no {name}:\n{}",
            metrics(&site.ns)
        );
    }
    let mut checked = 0;
    for (title, expr) in dashboard_queries().unwrap() {
        if metric_names(&expr)
            .iter()
            .any(|n| KERNEL_SERIES.contains(&n.as_str()))
        {
            assert!(
                !prom.query(&expr).is_empty(),
                "panel {title}: no data for {expr}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "only {checked} dashboard queries read kernel series"
    );
    checked
}

/// Dual-stack selectors over an IPv4 outer path (review I-1): one CHILD SA carries IPv4 and
/// IPv6 (tunnel-mode SAs with `af-unspec`), with policies only for same-family pairs. Then a
/// GRE-only selector from charon (review I-3): the policies carry `proto gre`, and other traffic
/// between the subnets stays blocked (fail closed), not sent in clear and not encrypted.
#[test]
fn h_dual_stack_and_protocol_selectors() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let (l6, r6, l6net, r6net) = ("fd00:1::1", "fd00:2::1", "fd00:1::/64", "fd00:2::/64");
    for (site, addr, peer_net) in [(left, l6, r6net), (right, r6, l6net)] {
        netns::exec(
            &site.ns,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{addr}/128"),
                "dev",
                "lo",
            ],
        )
        .unwrap();
        let iface = pair
            .topology
            .interface(
                site.node,
                if site.node == "left" { "right" } else { "left" },
            )
            .unwrap();
        netns::exec(
            &site.ns,
            &[
                "ip", "-6", "route", "add", peer_net, "dev", &iface, "src", addr,
            ],
        )
        .unwrap();
    }
    route(&pair, left, right.subnet, &right.addr.to_string());
    route(&pair, right, left.subnet, &left.addr.to_string());
    let mut cfg = charon_config(right, left);
    cfg.connections[0].children[0].local_ts = vec![right.subnet.into(), r6net.into()];
    cfg.connections[0].children[0].remote_ts = vec![left.subnet.into(), l6net.into()];
    let charon = Charon::start(&right.ns, &cfg)
        .or_else(|_| Charon::start(&right.ns, &cfg))
        .expect("charon");
    let agent_yaml = yaml(left, right, &right.addr.to_string(), "respond", "")
        .replace(
            &format!("subnets: [{}]", left.subnet),
            &format!("subnets: [{}, {l6net}]", left.subnet),
        )
        .replace(
            &format!("subnets: [{}]", right.subnet),
            &format!("subnets: [{}, {r6net}]", right.subnet),
        );
    let agent = start(left, &agent_yaml, &[]);
    let diag = |what: &str| {
        format!(
            "{what}\n{}\n--- agent:\n{}\n--- charon:\n{}",
            kernel_view(&[left, right]),
            agent.log(),
            charon.log()
        )
    };
    charon
        .initiate(TUNNEL, "net", 30)
        .unwrap_or_else(|e| panic!("{}", diag(&format!("initiate: {e:#}"))));
    let t = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(30), up)
        .unwrap_or_else(|e| panic!("{}", diag(&format!("{e:#}"))));
    assert_eq!(
        t["childSas"][0]["localTs"].as_array().map(Vec::len),
        Some(2),
        "{t}"
    );
    let pols = netns::xfrm_policies(&left.ns).unwrap();
    assert_eq!(pols.len(), 6, "two same-family pairs, out/in/fwd: {pols:?}");
    assert!(
        !pols.iter().any(|p| p.contains(':') && p.contains('.')),
        "a cross-family policy: {pols:?}"
    );
    let states = netns::exec(&left.ns, &["ip", "xfrm", "state"])
        .unwrap()
        .stdout;
    assert_eq!(
        states.matches("af-unspec").count(),
        2,
        "both SAs carry either family: {states}"
    );
    ping(&pair, left, right);
    ping(&pair, right, left);
    for (from, src, dst) in [(left, l6, r6), (right, r6, l6)] {
        netns::exec(
            &from.ns,
            &["ping", "-6", "-c", "3", "-W", "2", "-I", src, dst],
        )
        .unwrap_or_else(|e| panic!("{}", diag(&format!("ping6 {src} -> {dst}: {e:#}"))));
    }
    let (bin, bout) = check_counters(&agent);
    println!(
        "dual stack over IPv4: one CHILD SA, 6 policies, ping and ping6 both ways; bytes in {bin} out {bout}"
    );
    // a clean exit: nothing of this agent is left for the next one to adopt
    let mut agent = agent;
    agent.terminate(Duration::from_secs(10)).unwrap();
    assert!(
        netns::xfrm_policies(&left.ns).unwrap().is_empty(),
        "policies left after SIGTERM"
    );
    drop(agent);
    drop(charon);

    // GRE only: charon proposes [gre] selectors, the agent narrows to them
    let mut cfg = charon_config(right, left);
    cfg.connections[0].children[0].local_ts = vec![format!("{}[gre]", right.subnet)];
    cfg.connections[0].children[0].remote_ts = vec![format!("{}[gre]", left.subnet)];
    let charon = Charon::start(&right.ns, &cfg)
        .or_else(|_| Charon::start(&right.ns, &cfg))
        .expect("charon");
    let agent = start(
        left,
        &yaml(left, right, &right.addr.to_string(), "respond", ""),
        &[],
    );
    charon
        .initiate(TUNNEL, "net", 30)
        .unwrap_or_else(|e| panic!("initiate: {e:#}\n{}", agent.log()));
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(30), up)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    let raw = netns::exec(&left.ns, &["ip", "xfrm", "policy"])
        .unwrap()
        .stdout;
    assert_eq!(raw.matches("proto gre").count(), 3, "{raw}");
    // everything else between the subnets hits the tunnel's block policies
    assert_eq!(blocked_policies(&left.ns), 3, "{raw}");
    let clear = cleartext_on_wire(&pair, left, right, 5);
    assert_eq!(
        clear, 0,
        "ICMP outside the GRE selectors left in clear:\n{raw}"
    );
    println!("GRE-only selectors: 3 proto-gre policies, ICMP blocked, {clear} cleartext packets");
}

/// Two CHILD SAs with different selectors in one IKE SA (review I-2), initiated by charon: each
/// has its own reqid, so each pair of hosts is carried by its own SA and charon counts no
/// `XfrmInTmplMismatch`; when charon closes one, its policies go and the tunnel's block covers
/// its hosts again (no cleartext) while the other keeps working. Then a CHILD SA whose
/// selector is an address range (no kernel form): our kernel refuses it and the agent deletes
/// it at charon instead of leaving it half-installed (review R-4).
#[test]
fn i_two_children_own_sas_and_a_refused_one_is_deleted() {
    let _serial = netns::serial();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let left_b = Site {
        inner: "198.51.100.129".parse().unwrap(),
        ..left.clone()
    };
    let right_b = Site {
        inner: "203.0.113.129".parse().unwrap(),
        ..right.clone()
    };
    for s in [&left_b, &right_b] {
        netns::exec(
            &s.ns,
            &["ip", "addr", "add", &format!("{}/32", s.inner), "dev", "lo"],
        )
        .unwrap();
    }
    let mut cfg = charon_config(right, left);
    cfg.connections[0].children = vec![
        ChildConfig::new("a", "203.0.113.0/25", "198.51.100.0/25"),
        ChildConfig::new("b", "203.0.113.128/25", "198.51.100.128/25"),
        ChildConfig::new("r", "203.0.113.64-203.0.113.70", "198.51.100.64/26"),
    ];
    let charon = Charon::start(&right.ns, &cfg)
        .or_else(|_| Charon::start(&right.ns, &cfg))
        .expect("charon");
    let agent = start(
        left,
        &yaml(left, right, &right.addr.to_string(), "respond", ""),
        &[],
    );
    let diag = |what: &str| {
        format!(
            "{what}\n{}\n--- agent:\n{}\n--- charon:\n{}",
            kernel_view(&[left, right]),
            agent.log(),
            charon.log()
        )
    };
    for child in ["a", "b"] {
        charon
            .initiate(TUNNEL, child, 30)
            .unwrap_or_else(|e| panic!("{}", diag(&format!("initiate {child}: {e:#}"))));
    }
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            t["childSas"].as_array().is_some_and(|c| c.len() == 2)
        })
        .unwrap_or_else(|e| panic!("{}", diag(&format!("{e:#}"))));
    // four SAs, two reqids: one per CHILD SA
    let states = netns::exec(&left.ns, &["ip", "xfrm", "state"])
        .unwrap()
        .stdout;
    let mut reqids: Vec<&str> = Vec::new();
    let words: Vec<&str> = states.split_whitespace().collect();
    for w in words.windows(2) {
        if w[0] == "reqid" {
            reqids.push(w[1]);
        }
    }
    let count = reqids.len();
    reqids.sort_unstable();
    reqids.dedup();
    assert_eq!((count, reqids.len()), (4, 2), "{states}");
    let mismatches = || {
        netns::exec(&right.ns, &["cat", "/proc/net/xfrm_stat"])
            .unwrap()
            .stdout
            .lines()
            .find(|l| l.starts_with("XfrmInTmplMismatch"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = mismatches();
    for (from, to) in [
        (left, right),
        (&left_b, &right_b),
        (right, left),
        (&right_b, &left_b),
    ] {
        pair.topology
            .ping(from.node, Some(from.inner), to.inner, 3)
            .unwrap_or_else(|e| {
                panic!(
                    "{}",
                    diag(&format!("ping {} -> {}: {e:#}", from.inner, to.inner))
                )
            });
    }
    assert_eq!(
        mismatches(),
        before,
        "charon's kernel took a packet on the wrong SA"
    );
    println!("two CHILD SAs, two reqids: both host pairs ping both ways, no template mismatch");

    // charon closes b: its hosts fall back to the block, a keeps working
    charon
        .swanctl(&["--terminate", "--child", "b", "--timeout", "10"])
        .unwrap_or_else(|e| panic!("{}", diag(&format!("terminate b: {e:#}"))));
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            t["childSas"].as_array().is_some_and(|c| c.len() == 1)
        })
        .unwrap_or_else(|e| panic!("{}", diag(&format!("{e:#}"))));
    let pols = netns::xfrm_policies(&left.ns).unwrap();
    assert!(
        !pols
            .iter()
            .any(|p| p.contains("/25") && p.contains(".128/")),
        "b's policies left: {pols:?}"
    );
    assert_eq!(blocked_policies(&left.ns), 3, "{}", kernel_view(&[left]));
    let clear = cleartext_on_wire(&pair, &left_b, &right_b, 5);
    assert_eq!(clear, 0, "{}", diag("b's hosts in clear after b closed"));
    ping(&pair, left, right);
    println!(
        "b closed by charon: its hosts blocked ({clear} cleartext packets), a still carries traffic"
    );

    // a range selector: refused by our kernel, deleted at charon
    let _ = charon.initiate(TUNNEL, "r", 10);
    let t = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            t["lastError"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not a prefix"))
        })
        .unwrap_or_else(|e| panic!("{}", diag(&format!("{e:#}"))));
    assert_eq!(t["childSas"].as_array().map(Vec::len), Some(1), "{t}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sas = charon.list_sas().unwrap();
        let r_up = sas
            .ike(TUNNEL)
            .is_some_and(|ike| ike.children.iter().any(|c| c.name == "r"));
        if !r_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            diag(&format!("charon still holds r:\n{}", sas.raw))
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        charon.list_sas().unwrap().is_up(TUNNEL, "a"),
        "{}",
        diag("a gone")
    );
    println!(
        "a range selector: refused by our kernel ({}), deleted at charon",
        t["lastError"]["message"]
    );
}

/// `ip -s link show DEV`: (rx packets, tx packets).
fn link_packets(ns: &str, dev: &str) -> (u64, u64) {
    let out = netns::exec(ns, &["ip", "-s", "link", "show", dev])
        .unwrap()
        .stdout;
    // "    RX:  bytes packets ..." then the numbers on the next line; the same for TX
    let mut lines = out.lines();
    let mut rx = None;
    let mut tx = None;
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        let slot = if t.starts_with("RX:") {
            &mut rx
        } else if t.starts_with("TX:") {
            &mut tx
        } else {
            continue;
        };
        *slot = lines
            .next()
            .and_then(|n| n.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
    }
    (rx.unwrap_or(0), tx.unwrap_or(0))
}

/// `spec.dataPlane.mode: routeBased`: the agent makes an XFRM interface for the tunnel, binds its
/// SAs and policies to it (`if_id`), routes the remote subnet through it (table 23042, with an
/// `unreachable` fallback at the highest metric) and installs no fail-closed policies; traffic
/// flows both ways, the interface's packet counters equal the SAs', and SIGTERM takes it all away.
#[test]
fn j_route_based_through_an_xfrm_interface() {
    let _serial = netns::serial();
    let pair = pair_with_a_host_behind_left();
    let (left, right) = (&pair.left, &pair.right);
    let charon = charon_on_right(&pair);
    let mut agent = start(
        left,
        &yaml(
            left,
            right,
            &right.addr.to_string(),
            "start",
            "  dataPlane: {mode: routeBased, routeMetric: 50}\n",
        ),
        &[],
    );
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- charon:\n{}", charon.log()));
    charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap();
    let links = netns::exec(&left.ns, &["ip", "-d", "link", "show", "type", "xfrm"])
        .unwrap()
        .stdout;
    let dev = links
        .lines()
        .find_map(|l| {
            let name = l.split(": ").nth(1)?.split('@').next()?;
            name.starts_with("strait-x").then(|| name.to_owned())
        })
        .unwrap_or_else(|| panic!("no strait-x interface:\n{links}\n{}", agent.log()));
    assert!(links.contains("if_id 0x5a00"), "{links}");
    let routes = netns::exec(&left.ns, &["ip", "route", "show", "table", "23042"])
        .unwrap()
        .stdout;
    assert!(
        routes.contains(&format!(
            "{} dev {dev} proto 90 scope link src {} metric 50",
            right.subnet, left.inner
        )),
        "{routes}"
    );
    assert!(
        routes.contains(&format!(
            "unreachable {} proto 90 metric 2147483647",
            right.subnet
        )),
        "{routes}"
    );
    let policy_routes = netns::exec_unchecked(&left.ns, &["ip", "route", "show", "table", "23040"])
        .map(|o| o.stdout)
        .unwrap_or_default();
    assert!(
        policy_routes.trim().is_empty(),
        "no policy-based route: {policy_routes}"
    );
    let policies = netns::exec(&left.ns, &["ip", "xfrm", "policy"])
        .unwrap()
        .stdout;
    assert_eq!(
        policies.matches("if_id 0x5a00").count(),
        3,
        "out/in/fwd bound to the interface, no block policies:\n{policies}"
    );
    let states = netns::exec(&left.ns, &["ip", "xfrm", "state"])
        .unwrap()
        .stdout;
    assert_eq!(states.matches("if_id 0x5a00").count(), 2, "{states}");

    ping(&pair, &pair.left, &pair.right);
    ping(&pair, &pair.right, &pair.left);
    let (sin, sout) = {
        let t = agent.tunnel(TUNNEL).unwrap();
        let c = &t["childSas"][0];
        let states = xfrm_states(&left.ns);
        let find = |k: &str| {
            let spi = c[k].as_str().unwrap();
            states.iter().find(|s| s.spi == spi).cloned().unwrap()
        };
        (find("spiIn"), find("spiOut"))
    };
    let (rx, tx) = link_packets(&left.ns, &dev);
    assert!(sin.packets >= 6 && sout.packets >= 6, "{sin:?} {sout:?}");
    assert_eq!(
        (rx, tx),
        (sin.packets, sout.packets),
        "{dev}'s counters vs ip -s xfrm state"
    );
    // /metrics shows the device's counters (read after the kernel's: pings are over)
    let body = metrics(left.ns.as_str());
    let series = |what: &str, dir: &str| {
        metric(
            &body,
            &format!(
                "strait_xfrm_interface_{what}_total{{direction=\"{dir}\",interface=\"{dev}\",tunnel=\"{TUNNEL}\"}}"
            ),
        )
        .map_or(u64::MAX, |v| v as u64)
    };
    assert_eq!(
        (series("packets", "in"), series("packets", "out")),
        (rx, tx),
        "{body}"
    );
    // errors and drops are exported too (the kernel counts, e.g., what the interface tried
    // to send before the CHILD SA was in)
    for what in ["errors", "dropped"] {
        assert_ne!(series(what, "out"), u64::MAX, "no {what} series:\n{body}");
    }
    println!(
        "route-based: ping both ways through {dev}; its rx/tx packets {rx}/{tx} equal the SAs' \
         and strait_xfrm_interface_packets_total"
    );

    // forwarded TCP (10 MiB with a checksum) from a host behind left, both ways, the second
    // connection opened by the remote side, over a 1400-byte path MTU with ICMP
    // "fragmentation needed" dropped: only left's MSS clamp for the interface's routes makes
    // it work (the remote side's own stack learns its MTU locally)
    let host = pair.topology.ns("lhost").unwrap();
    for (what, server_ns, server, client_ns, seed) in [
        (
            "host behind left -> right",
            right.ns.as_str(),
            right.inner,
            host,
            1,
        ),
        (
            "right -> host behind left",
            host,
            LEFT_HOST,
            right.ns.as_str(),
            2,
        ),
    ] {
        const LEN: u64 = 10 * 1024 * 1024;
        let t = strait_e2e::transfer::tcp(
            server_ns,
            server,
            client_ns,
            LEN,
            seed,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("TCP {what}: {e:#}\n{}", agent.log()));
        assert!(t.intact(LEN), "TCP {what}: {t:?}");
        println!(
            "route-based: TCP {what}: 10 MiB intact in {:.1} s through {dev}, path MTU 1400 \
             without ICMP",
            t.elapsed.as_secs_f64()
        );
    }

    agent.terminate(Duration::from_secs(10)).unwrap();
    assert!(xfrm_states(&left.ns).is_empty(), "SAs left after SIGTERM");
    assert!(netns::xfrm_policies(&left.ns).unwrap().is_empty());
    let left_links = netns::exec(&left.ns, &["ip", "link", "show", "type", "xfrm"])
        .unwrap()
        .stdout;
    assert!(!left_links.contains("strait-x"), "{left_links}");
    let rt = netns::exec_unchecked(&left.ns, &["ip", "route", "show", "table", "23042"])
        .map(|o| o.stdout)
        .unwrap_or_default();
    assert!(rt.trim().is_empty(), "routes left: {rt}");
    let rules = netns::exec(&left.ns, &["ip", "rule"]).unwrap().stdout;
    assert!(!rules.contains("23042"), "rule left after SIGTERM: {rules}");
}

/// A host behind `left`, forwarded by it (its /26 inside left's subnet).
const LEFT_HOST: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 51, 100, 66);

/// [`SitePair`] without NAT, plus a host `lhost` behind left, and a path MTU of 1400 between
/// the sites with ICMP "fragmentation needed" dropped everywhere.
fn pair_with_a_host_behind_left() -> SitePair {
    let pair = SitePair::with(|b| {
        b.node("lhost")
            .link(
                "lhost",
                &format!("{LEFT_HOST}/26"),
                "left",
                "198.51.100.65/26",
            )
            .route("lhost", &["default", "via", "198.51.100.65"])
            .router("left")
    })
    .expect("topology");
    let t = &pair.topology;
    for (node, peer) in [("left", "right"), ("right", "left")] {
        let iface = t.interface(node, peer).unwrap();
        t.exec(node, &["ip", "link", "set", "dev", &iface, "mtu", "1400"])
            .unwrap();
    }
    for node in ["left", "right", "lhost"] {
        netns::drop_frag_needed(t.ns(node).unwrap()).unwrap();
    }
    pair
}

/// Two route-based tunnels with the same subnets to two charon peers, which policy-based IPsec
/// cannot hold at once: the primary (metric 50) carries the traffic; when its peer dies, DPD
/// takes its CHILD SA, its route goes and the backup (metric 150) carries it; nothing leaves
/// in clear on either link meanwhile.
#[test]
fn k_route_based_primary_and_backup_with_identical_subnets() {
    let _serial = netns::serial();
    let topo = netns::Topology::builder()
        .node("left")
        .node("right")
        .node("backup")
        .subnet("left", "198.51.100.1/32")
        .subnet("right", "203.0.113.1/32")
        .subnet("backup", "203.0.113.1/32")
        .link("left", "192.0.2.1/24", "right", "192.0.2.2/24")
        .link("left", "198.18.0.1/24", "backup", "198.18.0.2/24")
        .build()
        .expect("topology");
    let site = |node: &'static str, addr: [u8; 4], inner: [u8; 4], subnet, id| Site {
        node,
        ns: topo.ns(node).unwrap().to_owned(),
        addr: addr.into(),
        public_addr: addr.into(),
        inner: inner.into(),
        subnet,
        id,
    };
    let left = site(
        "left",
        [192, 0, 2, 1],
        [198, 51, 100, 1],
        "198.51.100.0/24",
        "left.strait.example",
    );
    let left_b = Site {
        addr: [198, 18, 0, 1].into(),
        public_addr: [198, 18, 0, 1].into(),
        ..left.clone()
    };
    let right = site(
        "right",
        [192, 0, 2, 2],
        [203, 0, 113, 1],
        "203.0.113.0/24",
        "right.strait.example",
    );
    let backup = site(
        "backup",
        [198, 18, 0, 2],
        [203, 0, 113, 1],
        "203.0.113.0/24",
        "backup.strait.example",
    );
    let primary_charon = Charon::start(&right.ns, &charon_config(&right, &left))
        .or_else(|_| Charon::start(&right.ns, &charon_config(&right, &left)))
        .expect("primary charon");
    let backup_charon = Charon::start(&backup.ns, &charon_config(&backup, &left_b))
        .or_else(|_| Charon::start(&backup.ns, &charon_config(&backup, &left_b)))
        .expect("backup charon");
    // the peers answer on the remote host's address from their own route (charon's table 220)
    let tunnel = |name: &str, me: &Site, peer: &Site, metric: u32| {
        TunnelYaml {
            extra: format!("  dataPlane: {{mode: routeBased, routeMetric: {metric}}}\n"),
            ..TunnelYaml::new(
                name,
                End::new(me.id, me.addr, me.subnet),
                End::new(peer.id, peer.addr, peer.subnet),
            )
            .psk("gw-psk")
            .proposals("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519")
            .dpd("2s", "6s")
        }
        .render()
    };
    let config = format!(
        "{}---\n{}",
        tunnel("primary", &left, &right, 50),
        tunnel("backup", &left_b, &backup, 150)
    );
    let mut agent = start(&left, &config, &[]);
    for name in ["primary", "backup"] {
        agent
            .wait_tunnel(name, Duration::from_secs(60), up)
            .unwrap_or_else(|e| panic!("{name}: {e:#}\n{}", agent.log()));
    }
    primary_charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap();
    backup_charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap();
    let routes = netns::exec(&left.ns, &["ip", "route", "show", "table", "23042"])
        .unwrap()
        .stdout;
    assert!(
        routes.contains("metric 50") && routes.contains("metric 150"),
        "both tunnels route the same subnet: {routes}"
    );
    let policies = netns::exec(&left.ns, &["ip", "xfrm", "policy"])
        .unwrap()
        .stdout;
    assert_eq!(policies.matches("if_id 0x5a00").count(), 6, "{policies}");
    // which SA carried a ping: the outbound SA's packets, per peer
    let sent_to = |peer: &Site| {
        xfrm_states(&left.ns)
            .iter()
            .filter(|s| s.dst == peer.addr.to_string())
            .map(|s| s.packets)
            .sum::<u64>()
    };
    let (p0, b0) = (sent_to(&right), sent_to(&backup));
    pair_ping(&topo, &left, &right);
    let (p1, b1) = (sent_to(&right), sent_to(&backup));
    assert!(
        p1 >= p0 + 3 && b1 == b0,
        "primary carries it: {p0}->{p1}, backup {b0}->{b1}"
    );

    // the primary's peer dies: DPD (2 s / 6 s) takes its CHILD SA, the backup carries on
    let pid = primary_charon.pid().expect("charon pid");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    );
    let killed = Instant::now();
    let start = Instant::now();
    loop {
        let r = netns::exec(&left.ns, &["ip", "route", "show", "table", "23042"])
            .unwrap()
            .stdout;
        if !r.contains("metric 50") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the primary's route stayed after its peer died: {r}\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let moved = killed.elapsed();
    let (p2, b2) = (sent_to(&right), sent_to(&backup));
    pair_ping(&topo, &left, &backup);
    let b3 = sent_to(&backup);
    assert!(b3 >= b2 + 3, "the backup carries it now: {b2}->{b3}");
    assert_eq!(sent_to(&right), p2, "nothing for the dead primary");
    println!(
        "route-based primary/backup: the primary's peer killed; its route gone after {:.1} s (DPD \
         2 s / 6 s), pings then through the backup ({b2} -> {b3} packets on its SA)",
        moved.as_secs_f64()
    );
    agent.terminate(Duration::from_secs(10)).unwrap();
    let links = netns::exec(&left.ns, &["ip", "link", "show", "type", "xfrm"])
        .unwrap()
        .stdout;
    assert!(!links.contains("strait-x"), "{links}");
}

/// Three pings from `from`'s inner address to the remote host (the same address on both
/// remote sites), which must all be answered.
fn pair_ping(topo: &netns::Topology, from: &Site, to: &Site) {
    topo.ping(from.node, Some(from.inner), to.inner, 3)
        .unwrap_or_else(|e| panic!("ping {} -> {} ({}): {e:#}", from.inner, to.inner, to.node));
}

/// `kubectl strait peer-config --for libreswan --config FILE` for the agent's own config, as
/// the remote site's operator gets it, with the PSK placeholder filled in by running the
/// command the output names: returns (ipsec.conf, ipsec.secrets).
fn libreswan_peer_config(agent: &Agent) -> (String, String) {
    let plugin = strait_e2e::product::binary("kubectl-strait").expect("kubectl-strait");
    let config = agent.dir().join("tunnels.yaml");
    let secrets = agent.dir().join("secrets");
    let out = strait_e2e::cmd::check(std::process::Command::new(&plugin).args([
        "peer-config".as_ref(),
        TUNNEL.as_ref(),
        "--for".as_ref(),
        "libreswan".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--secrets-dir".as_ref(),
        secrets.as_os_str(),
    ]))
    .expect("kubectl strait peer-config");
    let text = out.stdout;
    eprintln!("---- kubectl strait peer-config {TUNNEL} --for libreswan\n{text}");
    let setup = "config setup\n";
    assert!(!text.contains(PSK), "the PSK is in peer-config's output");
    let Some((conf, secrets_part)) = text.split_once("# ---- /etc/ipsec.d/") else {
        // certificates: no secrets file
        return (format!("{setup}\n{text}"), String::new());
    };
    let command = secrets_part
        .lines()
        .find_map(|l| l.strip_prefix("#   "))
        .unwrap_or_else(|| panic!("no command for the key:\n{text}"));
    let key = strait_e2e::cmd::run("sh", &["-c", command]).expect("the key's command");
    let secrets: String = secrets_part
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" PSK "))
        .map(|l| l.replace(PSK_PLACEHOLDER, &format!("0s{}", key.stdout.trim())))
        .collect();
    assert!(secrets.contains(" : PSK "), "{secrets_part}");
    // a remote site's /etc/ipsec.conf has a `config setup` section and includes the file
    (format!("{setup}\n{conf}"), format!("{secrets}\n"))
}

/// The placeholder `peer-config` puts on the PSK line.
const PSK_PLACEHOLDER: &str = "PASTE-THE-0s-VALUE-HERE";

/// The agent against pluto, configured only by `peer-config`'s output: pluto initiates to a
/// responding agent with RSA certificates, then the agent initiates with a PSK and rekeys its
/// CHILD and IKE SAs under traffic.
fn libreswan_case(version: libreswan::Version) {
    let _serial = netns::serial();
    let peer = match version {
        libreswan::Version::V4 => Peer::Libreswan4,
        libreswan::Version::V5 => Peer::Libreswan5,
    };
    // RSA certificates against 4.10, ECDSA (P-256) against 5.2: each key type once, in the
    // same time
    let (key, auth) = match version {
        libreswan::Version::V4 => (KeyType::Rsa(2048), matrix::Auth::RsaPki),
        libreswan::Version::V5 => (KeyType::Ecdsa(256), matrix::Auth::EcdsaPki),
    };
    let certificates = matrix::judge(module_path!(), &[Cell::new(peer, Dir::They).auth(auth)]);
    let psk_cell = matrix::judge(module_path!(), &[Cell::new(peer, Dir::We)]);
    libreswan::require_installed(version).expect("the Libreswan root");
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let name = version.name();
    // a remote site has a default route: the config's `left=%defaultroute` finds its address
    // by it
    default_route(&pair, right, &left.addr.to_string());
    let cfg = |init: &str, lifetimes: Option<(&str, &str)>| {
        TunnelYaml {
            auth: Auth::Psk("gw-psk".into()),
            ike_lifetime: lifetimes.map(|l| l.0.to_owned()),
            esp_lifetime: lifetimes.map(|l| l.1.to_owned()),
            // short DPD: pluto must answer every liveness check through the rekeys, and its
            // death be noticed within seconds
            dpd: Some(("2s".into(), "6s".into())),
            ..TunnelYaml::new(
                TUNNEL,
                End::new(left.id, left.addr, left.subnet),
                End::new(right.id, right.addr, right.subnet),
            )
            .initiation(init)
        }
        .render()
    };
    let conn = format!("strait-{TUNNEL}");

    // 1. certificates (strongSwan's pki), the agent only responds: the config says auto=start
    // and how to fill pluto's NSS database; pluto initiates (default lifetimes: no rekey while
    // the counters are compared). With an ECDSA key pluto needs `leftauth=ecdsa`, which
    // peer-config only mentions (it does not know the site's key): added as a user would.
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), key).expect("test CA");
    let ours = pki.issue("left", left.id, key).expect("our certificate");
    let theirs = pki
        .issue("right", right.id, key)
        .expect("pluto's certificate");
    let secrets = SecretFile::certificate(&ours, &pki.ca.cert).expect("certificate files");
    let config = TunnelYaml {
        auth: Auth::Certificate,
        ..TunnelYaml::new(
            TUNNEL,
            End::new(left.id, left.addr, left.subnet),
            End::new(right.id, right.addr, right.subnet),
        )
        .initiation("respond")
    }
    .render();
    let agent = start_with(left, &config, &secrets, &[]);
    let (conf, psk) = libreswan_peer_config(&agent);
    assert!(
        psk.is_empty() && conf.contains("    auto=start\n"),
        "{conf}"
    );
    let conf = if matches!(key, KeyType::Ecdsa(_)) {
        assert!(conf.contains("add leftauth=ecdsa and rightauth="), "{conf}");
        conf.replacen(
            "    leftcert=",
            "    leftauth=ecdsa\n    rightauth=ecdsa\n    leftcert=",
            1,
        )
    } else {
        conf
    };
    let nickname = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("leftcert="))
        .unwrap_or_else(|| panic!("no leftcert=:\n{conf}"))
        .to_owned();
    let certs = libreswan::NssCerts {
        cert: theirs.cert.clone(),
        key: theirs.key.clone(),
        ca: pki.ca.cert.clone(),
        nickname,
    };
    let pluto = Pluto::start_with(&right.ns, version, &conf, "", Some(&certs)).expect("pluto");
    let t = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- pluto:\n{}", pluto.log()));
    assert_eq!(t["initiator"], false, "{t}");
    pluto
        .wait_up(&conn, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\n--- agent:\n{}", agent.log()));
    ping(&pair, left, right);
    ping(&pair, right, left);
    let (bin, bout) = check_counters(&agent);
    let theirs = pluto.traffic().unwrap();
    assert!(
        theirs
            .iter()
            .any(|t| t.conn == conn && t.in_bytes > 0 && t.out_bytes > 0),
        "{name} counted no traffic: {theirs:?}"
    );
    println!(
        "{name} -> agent, {key:?} certificates: ping both ways; our bytes in {bin} out {bout}; pluto's {theirs:?}"
    );
    certificates.pass();
    drop(pluto);
    drop(agent);

    // 2. PSK: the agent initiates (auto=add) and rekeys under 50 pkt/s: lifetimes 1 m (CHILD) and
    // 2 m (IKE), scaled by 0.1 on our side, so we rekey the CHILD SA every ~5-6 s and the IKE
    // SA every ~11-12 s; pluto keeps the unscaled ones (and rekeys the CHILD SA itself 0-30 s
    // after it is made: its margin is cut to half the lifetime, its fuzz is 100 %)
    let scale = ["--test-lifetime-scale", "0.1"];
    let agent = start(left, &cfg("start", Some(("2m", "1m"))), &scale);
    let (conf, secrets) = libreswan_peer_config(&agent);
    assert!(conf.contains("    auto=add\n"), "{conf}");
    let pluto = Pluto::start(&right.ns, version, &conf, &secrets).expect("pluto");
    let t = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- pluto:\n{}", pluto.log()));
    assert_eq!(t["initiator"], true, "{t}");
    pluto.wait_up(&conn, Duration::from_secs(20)).unwrap();
    let count = 900; // 18 s at 50/s
    let (sent, received, text) = ping_result(ping_flood_timed(left, right, "0.02", count));
    let rekeys = |kind: &str| {
        metric(
            &metrics(agent.ns()),
            &format!("strait_rekeys_total{{kind=\"{kind}\",tunnel=\"{TUNNEL}\"}}"),
        )
        .unwrap_or(0.0) as u64
    };
    let (child, ike) = (rekeys("child"), rekeys("ike"));
    let lost = lost_send_times(&text, count);
    println!(
        "agent -> {name}, 50 pkt/s for 18 s: {child} CHILD SA rekeys, {ike} IKE SA rekeys; \
         ping sent {sent}, received {received}, lost at {lost:?}"
    );
    assert!(child >= 2, "only {child} CHILD SA rekeys\n{}", agent.log());
    assert!(ike >= 1, "only {ike} IKE SA rekeys\n{}", agent.log());
    // pluto switches to a new CHILD SA before its answer reaches us (ENVIRONMENT.md): at most
    // the packets of that window, never a gap
    assert!(
        sent - received <= 2 * child,
        "{} of {sent} lost across {child} CHILD rekeys: {lost:?}\n--- agent:\n{}\n--- pluto:\n{}",
        sent - received,
        agent.log(),
        pluto.log()
    );
    // afterwards traffic flows both ways, and between rekeys (they go on every few seconds)
    // each side holds one CHILD SA: no SA is left behind
    ping(&pair, left, right);
    ping(&pair, right, left);
    let t = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            up(t) && t["childSas"].as_array().is_some_and(|c| c.len() == 1)
        })
        .unwrap();
    assert_eq!(t["initiator"], true, "{t}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let theirs: Vec<_> = pluto
            .traffic()
            .unwrap()
            .into_iter()
            .filter(|t| t.conn == conn)
            .collect();
        if theirs.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never held just one CHILD SA after the rekeys: {theirs:?}\n{}",
            pluto.log()
        );
        thread::sleep(Duration::from_millis(300));
    }
    psk_cell.pass();

    // 3. DPD, on a fresh agent with the default lifetimes (a scaled IKE SA's hard limit could
    // otherwise come before DPD once pluto is gone): liveness checks every 2 s are answered
    // (the tunnel stays up through three of them); pluto killed without a DELETE is declared
    // unreachable within interval + timeout (2 s + 6 s)
    drop(agent);
    let agent = start(left, &cfg("start", None), &[]);
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(30), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- pluto:\n{}", pluto.log()));
    thread::sleep(Duration::from_secs(7));
    let t = agent.tunnel(TUNNEL).unwrap();
    assert!(
        up(&t) && t.get("lastError").is_none(),
        "DPD against a live pluto: {t}"
    );
    let mut pluto = pluto;
    let killed = Instant::now();
    pluto.kill().unwrap();
    let t = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), |t| {
            t["lastError"]["reason"] == "PeerUnreachable" && t["ready"] == false
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_secs(4),
        "unreachable after {after:?}, sooner than DPD could tell: {t}"
    );
    println!("{name}: killed, PeerUnreachable after {after:.1?}");
}

#[test]
fn l_libreswan4_peer_config_certificates_psk_and_rekeys() {
    libreswan_case(libreswan::Version::V4);
}

#[test]
fn l_libreswan5_peer_config_certificates_psk_and_rekeys() {
    libreswan_case(libreswan::Version::V5);
}

/// A default route for `site` via `gw`: a remote site has one, and pluto's
/// `left=%defaultroute` finds its own address by it.
fn default_route(pair: &SitePair, site: &Site, gw: &str) {
    pair.topology
        .exec(site.node, &["ip", "route", "replace", "default", "via", gw])
        .expect("default route");
}

/// Stops the agent with SIGTERM while pluto still answers its DELETEs, then pluto.
fn stop(mut agent: Agent, pluto: Pluto) {
    agent.terminate(Duration::from_secs(10)).unwrap();
    drop(pluto);
}

/// `peer-config`'s ipsec.conf with `right=` (the cluster's address) set to `addr`: what its
/// comment tells the site's admin to do when the cluster's gateway is behind a NAT.
fn with_right(conf: &str, addr: &str) -> String {
    let line = conf
        .lines()
        .find(|l| l.trim_start().starts_with("right="))
        .unwrap_or_else(|| panic!("no right=:\n{conf}"));
    conf.replacen(line, &format!("    right={addr}"), 1)
}

/// Pluto's CHILD SA is up and carries the pings both ways, as do ours, all in UDP 4500 when
/// `encapsulated`.
fn libreswan_carries(pair: &SitePair, agent: &Agent, pluto: &Pluto, conn: &str, nat: bool) {
    let waited = Instant::now();
    let t = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- pluto:\n{}", pluto.log()));
    eprintln!("up {:.1?} after pluto started", waited.elapsed());
    assert_eq!(t["natDetected"], nat, "{t}");
    assert_eq!(t["childSas"][0]["encapsulated"], nat, "{t}");
    pluto
        .wait_up(conn, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\n--- agent:\n{}", agent.log()));
    ping(pair, &pair.left, &pair.right);
    ping(pair, &pair.right, &pair.left);
    check_counters(agent);
    assert_exact_objects(agent);
    assert!(
        xfrm_states(agent.ns()).iter().all(|s| s.encap == nat),
        "ESP in UDP expected: {nat}"
    );
    let theirs = pluto.traffic().unwrap();
    assert!(
        theirs
            .iter()
            .any(|t| t.conn == conn && t.in_bytes > 0 && t.out_bytes > 0),
        "pluto counted no traffic: {theirs:?}"
    );
}

/// The agent against pluto through a NAT (each side behind it once), and with `ipv6` through
/// a NAT66 (the agent behind it) and over IPv6 (each side initiating once), PSK, pluto
/// configured by `peer-config` as in [`libreswan_case`].
fn libreswan_nat_and_ipv6_case(version: libreswan::Version, ipv6: bool) {
    let _serial = netns::serial();
    let peer = match version {
        libreswan::Version::V4 => Peer::Libreswan4,
        libreswan::Version::V5 => Peer::Libreswan5,
    };
    libreswan::require_installed(version).expect("the Libreswan root");
    let name = version.name();
    let conn = format!("strait-{TUNNEL}");
    let began = Instant::now();

    // 1. through a NAT, the agent behind it initiating: pluto sees the NAT's address, so its
    // right= is that one, as peer-config's comment says
    let nat_we = matrix::judge(module_path!(), &[Cell::new(peer, Dir::We).nat()]);
    let pair = SitePair::new(true).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    default_route(&pair, right, &left.public_addr.to_string());
    let agent = start(
        left,
        &yaml(left, right, &right.addr.to_string(), "start", ""),
        &[],
    );
    let (conf, secrets) = libreswan_peer_config(&agent);
    let conf = with_right(&conf, &left.public_addr.to_string());
    let pluto = Pluto::start(&right.ns, version, &conf, &secrets).expect("pluto");
    libreswan_carries(&pair, &agent, &pluto, &conn, true);
    println!(
        "agent behind a NAT -> {name}: ESP in UDP, ping both ways ({:.1?})",
        began.elapsed()
    );
    nat_we.pass();
    // SIGTERM: the agent deletes its SAs and takes its policies and firewall with it, which
    // a SIGKILL would leave in the namespace for the next case
    stop(agent, pluto);

    // 2. through the NAT the other way: pluto behind it initiates (auto=start) to a responding
    // agent that knows the NAT's address
    let nat_they = matrix::judge(module_path!(), &[Cell::new(peer, Dir::They).nat()]);
    route(&pair, right, left.subnet, &left.public_addr.to_string());
    let agent = start(
        right,
        &yaml(right, left, &left.public_addr.to_string(), "respond", ""),
        &[],
    );
    let (conf, secrets) = libreswan_peer_config(&agent);
    assert!(conf.contains("    auto=start\n"), "{conf}");
    let pluto = Pluto::start(&left.ns, version, &conf, &secrets).expect("pluto");
    libreswan_carries(&pair, &agent, &pluto, &conn, true);
    let t = agent.tunnel(TUNNEL).unwrap();
    assert_eq!(t["initiator"], false, "{t}");
    println!(
        "{name} behind a NAT -> agent: ESP in UDP, ping both ways ({:.1?})",
        began.elapsed()
    );
    nat_they.pass();
    // SIGTERM: the agent deletes its SAs and takes its policies and firewall with it, which
    // a SIGKILL would leave in the namespace for the next case
    stop(agent, pluto);
    if !ipv6 {
        return;
    }

    // 3. IPv6 through the NAT (NAT66), the agent behind it initiating; pluto finds its own
    // address by its IPv6 default route
    let nat6 = matrix::judge(module_path!(), &[Cell::new(peer, Dir::We).nat().v6()]);
    let a6 = pair.add_ipv6_through_nat().unwrap();
    pair.topology
        .exec(
            right.node,
            &["ip", "-6", "route", "add", "default", "via", a6.nat_out],
        )
        .unwrap();
    let tunnel = TunnelYaml {
        auth: Auth::Psk("gw-psk".into()),
        ..TunnelYaml::new(
            TUNNEL,
            End::new(left.id, a6.inside, left.subnet),
            End::new(right.id, a6.outside, right.subnet),
        )
        .proposals("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519")
        .initiation("start")
    };
    let agent = start(left, &tunnel.render(), &[]);
    let (conf, secrets) = libreswan_peer_config(&agent);
    let conf = with_right(&conf, a6.nat_out);
    let pluto = Pluto::start(&right.ns, version, &conf, &secrets).expect("pluto");
    libreswan_carries(&pair, &agent, &pluto, &conn, true);
    assert!(
        xfrm_states(agent.ns()).iter().all(|s| s.src.contains(':')),
        "IPv6 outer addresses expected"
    );
    println!(
        "agent behind a NAT66 -> {name}: ESP in UDP over IPv6, ping both ways ({:.1?})",
        began.elapsed()
    );
    nat6.pass();
    // SIGTERM: the agent deletes its SAs and takes its policies and firewall with it, which
    // a SIGKILL would leave in the namespace for the next case
    stop(agent, pluto);
    drop(pair);

    // 4. and 5. over IPv6 (the inner subnets stay IPv4): the agent initiates, then pluto
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let (l6, r6) = ("2001:db8:12::1", "2001:db8:12::2");
    for (site, addr, peer_addr) in [(left, l6, r6), (right, r6, l6)] {
        let iface = pair
            .topology
            .interface(
                site.node,
                if site.node == "left" { "right" } else { "left" },
            )
            .unwrap();
        let cidr = format!("{addr}/64");
        pair.topology
            .exec(
                site.node,
                &["ip", "-6", "addr", "add", &cidr, "dev", &iface, "nodad"],
            )
            .unwrap();
        pair.topology
            .exec(
                site.node,
                &["ip", "-6", "route", "replace", "default", "via", peer_addr],
            )
            .unwrap();
    }
    // the inner (IPv4) routes over the IPv4 link, as in `h_dual_stack_and_protocol_selectors`:
    // the policies then carry the packets in IPv6
    route(&pair, left, right.subnet, &right.addr.to_string());
    route(&pair, right, left.subnet, &left.addr.to_string());
    let end = |site: &Site, addr: &str| End::new(site.id, addr, site.subnet);
    let v6_yaml = |me: &Site, my6: &str, peer: &Site, peer6: &str, initiation: &str| {
        TunnelYaml {
            auth: Auth::Psk("gw-psk".into()),
            ..TunnelYaml::new(TUNNEL, end(me, my6), end(peer, peer6))
                .proposals("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519")
                .initiation(initiation)
        }
        .render()
    };
    for (dir, initiation) in [(Dir::We, "start"), (Dir::They, "respond")] {
        let cell = matrix::judge(module_path!(), &[Cell::new(peer, dir).v6()]);
        let agent = start(left, &v6_yaml(left, l6, right, r6, initiation), &[]);
        let (conf, secrets) = libreswan_peer_config(&agent);
        assert!(conf.contains(&format!("    right={l6}\n")), "{conf}");
        let pluto = Pluto::start(&right.ns, version, &conf, &secrets).expect("pluto");
        libreswan_carries(&pair, &agent, &pluto, &conn, false);
        let t = agent.tunnel(TUNNEL).unwrap();
        assert_eq!(t["initiator"], dir == Dir::We, "{t}");
        assert!(
            xfrm_states(agent.ns()).iter().all(|s| s.src.contains(':')),
            "IPv6 outer addresses expected"
        );
        println!(
            "agent and {name} over IPv6, {dir:?} initiate: ping both ways ({:.1?})",
            began.elapsed()
        );
        cell.pass();
        stop(agent, pluto);
    }
}

/// NAT only: IPv6 runs against 5.2 (CI's time; the paths are the same code on our side).
#[test]
fn n_libreswan4_through_nat() {
    libreswan_nat_and_ipv6_case(libreswan::Version::V4, false);
}

#[test]
fn n_libreswan5_through_nat_and_over_ipv6() {
    libreswan_nat_and_ipv6_case(libreswan::Version::V5, true);
}

/// `childSas: perSubnetPair` against pluto, whose `leftsubnets={...}` (what peer-config writes
/// for several subnets) makes one CHILD SA per subnet pair: the agent initiating its two pairs,
/// then pluto initiating them to a responding agent. Each pair carries its own pings, on SAs of
/// its own at both ends.
fn libreswan_per_subnet_pair_case(version: libreswan::Version) {
    let _serial = netns::serial();
    libreswan::require_installed(version).expect("the Libreswan root");
    let name = version.name();
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    let (second, second_host) = ("198.18.7.0/24", std::net::Ipv4Addr::new(198, 18, 7, 1));
    for cmd in [
        vec!["ip", "route", "replace", "default", "via", "192.0.2.1"],
        vec!["ip", "addr", "add", "198.18.7.1/32", "dev", "lo"],
    ] {
        pair.topology.exec(right.node, &cmd).unwrap();
    }
    let conn = format!("strait-{TUNNEL}");
    for initiation in ["start", "respond"] {
        let began = Instant::now();
        let mut tunnel = TunnelYaml {
            auth: Auth::Psk("gw-psk".into()),
            ..TunnelYaml::new(
                TUNNEL,
                End::new(left.id, left.addr, left.subnet),
                End::new(right.id, right.addr, right.subnet),
            )
            .proposals("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519")
            .initiation(initiation)
        };
        tunnel.remote.subnets.push(second.to_owned());
        tunnel.extra.push_str("  childSas: perSubnetPair\n");
        let agent = start(left, &tunnel.render(), &[]);
        let (conf, secrets) = libreswan_peer_config(&agent);
        assert!(
            conf.contains(&format!("leftsubnets={{{} {second}}}", right.subnet)),
            "{conf}"
        );
        let pluto = Pluto::start(&right.ns, version, &conf, &secrets).expect("pluto");
        let t = agent
            .wait_tunnel(TUNNEL, Duration::from_secs(60), |t| {
                up(t) && t["childSas"].as_array().is_some_and(|c| c.len() == 2)
            })
            .unwrap_or_else(|e| panic!("{e:#}\n--- pluto:\n{}", pluto.log()));
        assert_eq!(t["initiator"], initiation == "start", "{t}");
        let remotes: Vec<String> = t["childSas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["remoteTs"].to_string())
            .collect();
        assert!(
            remotes.iter().any(|r| r.contains(right.subnet))
                && remotes.iter().any(|r| r.contains(second))
                && remotes
                    .iter()
                    .all(|r| !(r.contains(right.subnet) && r.contains(second))),
            "one pair each: {remotes:?}"
        );
        for dst in [right.inner, second_host] {
            pair.topology
                .ping(left.node, Some(left.inner), dst, 3)
                .unwrap_or_else(|e| panic!("ping {dst}: {e:#}\n--- pluto:\n{}", pluto.log()));
        }
        ping(&pair, right, left);
        let states = xfrm_states(agent.ns());
        assert_eq!(states.len(), 4, "two SAs per pair: {states:?}");
        assert!(
            states.iter().all(|s| s.packets > 0),
            "a pair's SA carried nothing: {states:?}"
        );
        // the tunnel's counters are the sum over both pairs' SAs
        let body = metrics(agent.ns());
        let ours = left.addr.to_string();
        let sum = |inbound: bool| -> u64 {
            states
                .iter()
                .filter(|s| (s.dst == ours) == inbound)
                .map(|s| s.bytes)
                .sum()
        };
        assert_eq!(
            traffic_metric(&body, "bytes", "in"),
            sum(true),
            "{states:?}"
        );
        assert_eq!(
            traffic_metric(&body, "bytes", "out"),
            sum(false),
            "{states:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let theirs = loop {
            let theirs: Vec<_> = pluto
                .traffic()
                .unwrap()
                .into_iter()
                .filter(|t| t.conn.starts_with(&conn))
                .collect();
            if theirs.len() == 2 && theirs.iter().all(|t| t.in_bytes > 0 && t.out_bytes > 0) {
                break theirs;
            }
            assert!(
                Instant::now() < deadline,
                "pluto's CHILD SAs: {theirs:?}\n{}",
                pluto.log()
            );
            thread::sleep(Duration::from_millis(300));
        };
        println!(
            "agent ({initiation}) and {name}, a CHILD SA per subnet pair: {theirs:?} ({:.1?})",
            began.elapsed()
        );
        stop(agent, pluto);
    }
}

#[test]
fn o_libreswan5_a_child_sa_per_subnet_pair() {
    libreswan_per_subnet_pair_case(libreswan::Version::V5);
}

/// `spec.ike.reauthTime` against pluto 5.2: every reauthentication (about 6 s under
/// `--test-lifetime-scale 0.1` for `reauthTime: 1m`) is a new IKE SA with its CHILD SA beside
/// the old ones (no INITIAL_CONTACT), then the old IKE SA is deleted; under 50 pkt/s the tunnel
/// is up in every sample and loses only the packets pluto sends on its new CHILD SA before our
/// answer arrives, and pluto ends with one IKE SA and one CHILD SA.
#[test]
fn p_libreswan5_reauthentication_is_make_before_break() {
    let _serial = netns::serial();
    let version = libreswan::Version::V5;
    libreswan::require_installed(version).expect("the Libreswan root");
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (&pair.left, &pair.right);
    default_route(&pair, right, &left.addr.to_string());
    let config = TunnelYaml {
        auth: Auth::Psk("gw-psk".into()),
        // an IKE lifetime neither side rekeys within the test: every new IKE SA is a
        // reauthentication
        ike_lifetime: Some("1h".into()),
        ..TunnelYaml::new(
            TUNNEL,
            End::new(left.id, left.addr, left.subnet),
            End::new(right.id, right.addr, right.subnet),
        )
        .initiation("start")
    }
    .render()
    .replace("lifetime: 1h", "lifetime: 1h, reauthTime: 1m");
    assert!(config.contains("reauthTime: 1m"), "{config}");
    let agent = start(left, &config, &["--test-lifetime-scale", "0.1"]);
    let (conf, secrets) = libreswan_peer_config(&agent);
    let pluto = Pluto::start(&right.ns, version, &conf, &secrets).expect("pluto");
    let conn = format!("strait-{TUNNEL}");
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap_or_else(|e| panic!("{e:#}\n--- pluto:\n{}", pluto.log()));
    pluto.wait_up(&conn, Duration::from_secs(20)).unwrap();
    let count = 700; // 14 s at 50/s
    let flood = ping_flood_timed(left, right, "0.02", count);
    let mut spis = std::collections::BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(14);
    while Instant::now() < end {
        let t = agent.tunnel(TUNNEL).unwrap();
        assert!(up(&t), "down during reauthentication: {t}\n{}", agent.log());
        spis.insert(t["ikeSpis"].to_string());
        thread::sleep(Duration::from_millis(200));
    }
    let (sent, received, text) = ping_result(flood);
    let lost = lost_send_times(&text, count);
    let reauths = spis.len() - 1;
    println!(
        "{}: {reauths} reauthentications in 14 s; ping sent {sent}, received {received}, lost at {lost:?}",
        version.name()
    );
    assert!(reauths >= 2, "IKE SAs seen: {spis:?}\n{}", agent.log());
    // pluto, answering, switches its traffic to the new CHILD SA before its answer reaches us
    // (as in its CHILD rekeys, `libreswan_case`): the packets of that window, 1-3 at 50 pkt/s
    // in the VM, measured
    assert!(
        sent - received <= 3 * reauths as u64,
        "{} of {sent} lost across {reauths} reauthentications: {lost:?}\n--- pluto:\n{}",
        sent - received,
        pluto.log()
    );
    // between reauthentications each side is back to one IKE SA and one CHILD SA
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ike = pluto.established_ike_sas().unwrap();
        let children = pluto
            .traffic()
            .unwrap()
            .into_iter()
            .filter(|t| t.conn == conn)
            .count();
        if ike == 1 && children == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pluto holds {ike} IKE SAs and {children} CHILD SAs\n{}",
            pluto.log()
        );
        thread::sleep(Duration::from_millis(300));
    }
    ping(&pair, left, right);
    stop(agent, pluto);
}
