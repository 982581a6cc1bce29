//! Hardening against a live attacker: the real `strait-agent` binary (standalone,
//! `--dataplane none`) with an established tunnel to strongSwan's charon in network namespaces,
//! while the test
//!
//! 1. sends malformed datagrams to UDP 500 and 4500 from the peer's namespace (mutated copies
//!    of the handshake captured on the wire, length lies, unknown SPIs, known SPIs with wrong
//!    message IDs, payload chains of thousands, random bytes),
//! 2. floods IKE_SA_INIT from a whole /16 of spoofed sources that never complete, and
//! 3. drops every fifth IKE datagram both ways (20 %) with nftables while the SAs rekey.
//!
//! Each test asserts the agent survives with bounded memory, the established SAs are untouched
//! (our status and charon's `--list-sas` show the same SPIs) and new work still succeeds, and
//! prints the figures (`eprintln!`, run with `--nocapture`).
//!
//! The default run is short enough for CI; `STRAIT_HARDENING_LONG=1` runs the long versions
//! for the recorded figures. Needs root, `e2e/setup/packages.sh` and a built agent. Run:
//! `cargo test -p strait-e2e --test hardening -- --test-threads=1 --nocapture`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use strait_e2e::agent::{Agent, SecretFile};
use strait_e2e::flood::{self, InitAnswer, Kind, Mutator, Pacer, Rng, UdpCounters};
use strait_e2e::netns::{self, Site, SitePair, Topology};
use strait_e2e::scenario::{TUNNEL, charon_for, dump_last, psk_config, up};
use strait_e2e::strongswan::{Charon, CharonConfig, ChildConfig, Connection, Endpoint};
use strait_e2e::tunnel::{End, TunnelYaml};

const PSK: &str = "strait-hardening-psk-5e0c7a12";

/// `STRAIT_HARDENING_LONG=1`: the long versions, for the recorded figures.
fn long() -> bool {
    std::env::var("STRAIT_HARDENING_LONG").is_ok_and(|v| v == "1")
}

/// `short`, or `long` under `STRAIT_HARDENING_LONG=1`.
fn by_length<T>(short: T, long_version: T) -> T {
    if long() { long_version } else { short }
}

/// A seed that differs per run unless `STRAIT_HARDENING_SEED` fixes it (printed, to replay).
fn seed() -> u64 {
    let s = std::env::var("STRAIT_HARDENING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {s} (STRAIT_HARDENING_SEED={s} replays it)");
    s
}

/// The agent's tunnel on `me` to `peer`, started by us.
fn site_tunnel(me: &Site, peer: &Site) -> TunnelYaml {
    TunnelYaml::new(
        TUNNEL,
        End::new(me.id, me.addr, me.subnet),
        End::new(peer.id, peer.addr, peer.subnet),
    )
    .proposals("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519")
    .initiation("start")
}

fn start_agent(ns: &str, yaml: &str, extra: &[&str]) -> Agent {
    Agent::start(
        ns,
        yaml,
        &[SecretFile {
            name: "gw-psk".into(),
            key: "psk".into(),
            value: PSK.into(),
        }],
        "none",
        extra,
    )
    .expect("start strait-agent")
}

/// The agent in `ns` with `yaml`, once it and `charon` have tunnel [`TUNNEL`] up.
fn agent_up(ns: &str, yaml: &str, charon: &Charon) -> Agent {
    let agent = start_agent(ns, yaml, &[]);
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(20), up)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, charon)));
    charon
        .wait_up(TUNNEL, "net", Duration::from_secs(10))
        .unwrap();
    agent
}

/// charon's connection `name` from `local` (`addr`, `id`, `net`) to the agent.
#[allow(clippy::too_many_arguments)]
fn charon_conn(
    name: &str,
    local_id: &str,
    local_addr: &str,
    local_net: &str,
    remote_id: &str,
    remote_net: &str,
    remote_addr: Option<&str>,
    dpd_delay: Option<&str>,
) -> Connection {
    let mut conn = Connection::new(name, Endpoint::psk(local_id), Endpoint::psk(remote_id));
    conn.local_addrs = vec![local_addr.to_owned()];
    conn.remote_addrs = remote_addr.map(str::to_owned).into_iter().collect();
    conn.encap = true;
    conn.dpd_delay = dpd_delay.map(str::to_owned);
    let mut child = ChildConfig::new("net", local_net, remote_net);
    child.esp_proposals = vec!["aes256gcm16-x25519".to_owned()];
    conn.children.push(child);
    conn
}

fn charon_config(conn: Connection, ids: [&str; 2]) -> CharonConfig {
    psk_config(conn, &ids, PSK)
}

fn dump(agent: &Agent, charon: &Charon) -> String {
    dump_last(agent, charon, 200)
}

/// The established tunnel as both sides see it: our IKE SPIs and CHILD SPIs, and charon's IKE
/// SA unique id with the CHILD SPIs it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    ike_spis: String,
    child_spis: Vec<(String, String)>,
    charon_ike_id: u32,
    charon_child_ids: Vec<u32>,
}

fn snapshot(agent: &Agent, charon: &Charon, name: &str) -> Snapshot {
    let t = agent.tunnel(name).unwrap();
    assert!(
        up(&t),
        "tunnel {name} is not up: {t}\n{}",
        dump(agent, charon)
    );
    let child_spis: Vec<(String, String)> = t["childSas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["spiIn"].as_str().unwrap_or_default().to_owned(),
                c["spiOut"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let sas = charon.list_sas().unwrap();
    let ike = sas
        .ike(name)
        .unwrap_or_else(|| panic!("charon has no IKE SA {name}:\n{}", sas.raw));
    assert_eq!(ike.state, "ESTABLISHED", "{}", sas.raw);
    // charon lists our inbound SPI as its outbound and the other way round
    for (spi_in, spi_out) in &child_spis {
        assert!(
            sas.raw.contains(&format!("out {spi_in}"))
                && sas.raw.contains(&format!("in  {spi_out}")),
            "charon does not list our CHILD SPIs {spi_in}/{spi_out}:\n{}",
            sas.raw
        );
    }
    Snapshot {
        ike_spis: t["ikeSpis"].as_str().unwrap_or_default().to_owned(),
        child_spis,
        charon_ike_id: ike.unique_id,
        charon_child_ids: ike.children.iter().map(|c| c.unique_id).collect(),
    }
}

/// Waits until `pattern` occurs in charon's log more often than `before` times.
fn wait_log_count(charon: &Charon, pattern: &str, before: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if charon.log().matches(pattern).count() > before {
            return true;
        }
        thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Starts tcpdump on `iface` of `node` writing `pcap`, and waits until it captures.
fn start_capture(topo: &mut Topology, node: &str, iface: &str, dir: &std::path::Path) -> u32 {
    let pcap = dir.join("wire.pcap");
    let log = dir.join("tcpdump.log");
    let pid = topo
        .spawn(
            node,
            &[
                "tcpdump",
                "-i",
                iface,
                "-U",
                "--immediate-mode",
                "-n",
                "-w",
                pcap.to_str().unwrap(),
                "udp",
            ],
            &log,
        )
        .expect("tcpdump");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening on")
    {
        assert!(Instant::now() < deadline, "tcpdump did not start");
        thread::sleep(Duration::from_millis(50));
    }
    pid
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), sig);
}

/// Datagrams the flooder's socket got back, by what they are.
#[derive(Debug, Default)]
struct Received {
    /// Answers to replayed requests (the agent's cached responses) and other responses.
    responses: AtomicU64,
    /// Requests the agent started itself (DPD, rekeys): these belong to charon, so any here
    /// means the agent moved the established SA to the attacker's address.
    agent_requests: AtomicU64,
    /// IKE_SA_INIT answers (to mutated IKE_SA_INIT requests).
    init_answers: AtomicU64,
    other: AtomicU64,
}

/// Reads `sock` until `stop`, sorting what arrives into `rx`.
fn receive(sock: UdpSocket, stop: Arc<AtomicBool>, rx: Arc<Received>) -> thread::JoinHandle<()> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let mut d = &buf[..n];
            if from.port() == 4500 {
                match d.strip_prefix(&[0u8; 4]) {
                    Some(rest) => d = rest,
                    None => {
                        rx.other.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            let Ok(w) = strait_ike::codec::Header::peek(d) else {
                rx.other.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let h = w.header;
            let counter = if h.exchange_type == strait_ike::codec::ExchangeType::IKE_SA_INIT {
                &rx.init_answers
            } else if h.flags.is_response() {
                &rx.responses
            } else {
                &rx.agent_requests
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// 1: malformed datagrams against an established tunnel.
#[test]
fn malformed_datagrams_leave_the_tunnel_and_the_agent_intact() {
    let _serial = netns::serial();
    let (count, rate) = by_length((20_000u64, 5_000u64), (200_000, 5_000));
    let seed = seed();
    let mut pair = SitePair::new(false).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let iface = pair.topology.interface("left", "right").unwrap();
    let tcpdump = start_capture(&mut pair.topology, "left", &iface, dir.path());
    let (left, right) = (pair.left.clone(), pair.right.clone());
    let mut cfg = charon_for(&right, &left, PSK, None);
    cfg.connections[0].dpd_delay = Some("2s".into());
    let charon = Charon::start(&right.ns, &cfg).expect("start charon");
    let yaml = site_tunnel(&left, &right).dpd("1s", "30s").render();
    let agent = agent_up(&left.ns, &yaml, &charon);
    // let both sides' DPD exchanges go by, so the capture holds protected requests and
    // responses of the live SA too
    let informational = "parsed INFORMATIONAL";
    assert!(
        wait_log_count(&charon, informational, 1, Duration::from_secs(15)),
        "no DPD exchange:\n{}",
        dump(&agent, &charon)
    );
    thread::sleep(Duration::from_millis(500));
    signal(tcpdump, nix::sys::signal::Signal::SIGTERM);
    thread::sleep(Duration::from_millis(500));
    let captured = flood::read_pcap(&dir.path().join("wire.pcap")).unwrap();
    // the corpus: every IKE message seen in either direction, markers removed
    let corpus: Vec<Vec<u8>> = captured
        .iter()
        .filter_map(|c| {
            let natt = c.src.port() == 4500 || c.dst.port() == 4500;
            let ike = if natt {
                c.payload.strip_prefix(&[0u8; 4])?
            } else {
                &c.payload[..]
            };
            strait_ike::codec::Header::peek(ike).ok()?;
            Some(ike.to_vec())
        })
        .collect();
    let protected = corpus.iter().filter(|m| matches!(m[16], 46 | 53)).count();
    eprintln!(
        "captured {} UDP datagrams, {} IKE messages ({protected} protected) as the corpus",
        captured.len(),
        corpus.len()
    );
    assert!(corpus.len() >= 6 && protected >= 4, "capture too small");

    let before = snapshot(&agent, &charon, TUNNEL);
    let pid = agent.pid().unwrap();
    let rss_before = flood::rss_kib(pid).unwrap();
    let cpu_before = flood::cpu_time(pid).unwrap();
    let udp_before = UdpCounters::read(&left.ns).unwrap();
    let charon_info_before = charon.log().matches(informational).count();

    // the attacker speaks from the peer's own address, other ports
    let sock = flood::udp_socket_in(&right.ns, SocketAddr::new(right.addr.into(), 0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(Received::default());
    let reader = receive(sock.try_clone().unwrap(), stop.clone(), received.clone());
    let t500 = SocketAddr::new(left.addr.into(), 500);
    let t4500 = SocketAddr::new(left.addr.into(), 4500);
    let mut mutator = Mutator::new(seed, corpus);
    let mut pacer = Pacer::new(rate);
    let mut kinds: BTreeMap<Kind, u64> = BTreeMap::new();
    let (mut to500, mut marked, mut unmarked, mut send_errors) = (0u64, 0u64, 0u64, 0u64);
    let mut rss_max = rss_before;
    let mut error_kinds = BTreeMap::new();
    let started = Instant::now();
    for i in 0..count {
        let (kind, d) = mutator.random();
        *kinds.entry(kind).or_default() += 1;
        let (target, payload) = match mutator.rng().below(5) {
            0 | 1 => {
                to500 += 1;
                (t500, d)
            }
            2 | 3 => {
                marked += 1;
                (t4500, flood::marked(&d))
            }
            _ => {
                unmarked += 1;
                (t4500, d)
            }
        };
        if let Err(e) = sock.send_to(&payload, target) {
            send_errors += 1;
            let size = payload.len() / 10_000 * 10_000;
            *error_kinds
                .entry(format!("{e}, {size}+ bytes"))
                .or_insert(0u64) += 1;
        }
        pacer.tick();
        if i % 2000 == 0 {
            rss_max = rss_max.max(flood::rss_kib(pid).unwrap_or(0));
        }
    }
    let (sent, sent_rate) = pacer.rate();
    let took = started.elapsed();
    // let the agent drain its queue
    thread::sleep(Duration::from_secs(1));
    let cpu = flood::cpu_time(pid).unwrap() - cpu_before;
    let udp = UdpCounters::read(&left.ns).unwrap().since(&udp_before);

    let mut agent = agent;
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent died:\n{}",
        agent.log()
    );
    let rss_after = flood::rss_kib(pid).unwrap();
    rss_max = rss_max.max(rss_after);

    // the tunnel is untouched, and liveness checks still pass: a DPD exchange (ours every
    // second of quiet, charon's every 2 s; whichever comes first) is parsed by charon as a
    // request it answers or a response it waited for
    let after = snapshot(&agent, &charon, TUNNEL);
    let n = charon.log().matches(informational).count();
    assert!(
        wait_log_count(&charon, informational, n + 1, Duration::from_secs(10)),
        "no DPD exchange after the flood:\n{}",
        dump(&agent, &charon)
    );
    let again = snapshot(&agent, &charon, TUNNEL);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();

    // and a new, legitimate IKE_SA_INIT is still answered
    let probe = flood::udp_socket_in(&right.ns, SocketAddr::new(right.addr.into(), 0)).unwrap();
    let answers = flood::init_exchange(
        &probe,
        t500,
        &mut Rng::new(seed ^ 1),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));

    // and charon can still start a new exchange on the IKE SA: a CHILD rekey
    charon
        .swanctl(&["--rekey", "--child", "net"])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    let rekeyed = agent
        .wait_tunnel(TUNNEL, Duration::from_secs(15), |t| {
            up(t)
                && t["childSas"].as_array().is_some_and(|cs| {
                    cs.len() == 1 && cs[0]["spiIn"] != before.child_spis[0].0.as_str()
                })
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    let rekeyed_snapshot = snapshot(&agent, &charon, TUNNEL);
    assert_eq!(rekeyed_snapshot.ike_spis, before.ike_spis);
    let agent_requests = received.agent_requests.load(Ordering::Relaxed);
    eprintln!(
        "\nmalformed: {sent} datagrams in {took:.1?} ({sent_rate:.0}/s; {to500} to 500, {marked} to \
         4500 with the non-ESP marker, {unmarked} to 4500 without; {send_errors} send errors \
         {error_kinds:?}); \
         kinds {kinds:?}\n  agent namespace UDP: {} delivered, {} dropped (receive buffer full)\n  \
         agent RSS {rss_before} KiB before, {rss_after} KiB after, {rss_max} KiB peak; CPU {cpu:?} \
         ({:.0} % of one core during the flood)\n  back to the attacker: {} responses (to \
         replayed requests), {} IKE_SA_INIT answers, {agent_requests} requests of the agent's \
         own, {} other\n  tunnel before {before:?}\n  after {after:?}\n  charon DPD exchanges \
         {} -> {}; new IKE_SA_INIT answered {answers:?}; CHILD rekey by charon afterwards: {}",
        udp.in_datagrams,
        udp.rcvbuf_errors,
        cpu.as_secs_f64() * 100.0 / took.as_secs_f64(),
        received.responses.load(Ordering::Relaxed),
        received.init_answers.load(Ordering::Relaxed),
        received.other.load(Ordering::Relaxed),
        charon_info_before,
        charon.log().matches(informational).count(),
        rekeyed["childSas"],
    );
    assert!(sent >= count, "sent only {sent}");
    assert_eq!(before, after, "the tunnel changed during the flood");
    assert_eq!(before, again, "the tunnel changed after the flood");
    assert!(
        rss_max <= rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_max} KiB"
    );
    assert_eq!(
        agent_requests,
        0,
        "the agent sent its own requests to the attacker's port: a replayed message moved the \
         IKE SA's peer address\n{}",
        dump(&agent, &charon)
    );
    assert!(
        matches!(answers.last(), Some(InitAnswer::Full)),
        "{answers:?}"
    );
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

/// 2: IKE_SA_INIT from a /16 of spoofed sources that never complete.
#[test]
fn half_open_flood_engages_cookies_and_spares_the_tunnels() {
    let _serial = netns::serial();
    let (secs, rate) = by_length((20u64, 3_000u64), (75, 5_000));
    let seed = seed();
    // agent ── peer (charon1: the established tunnel)
    //       ── peer2 (charon2: a new tunnel during the flood)
    //       ── flood (198.18.0.0/16, RFC 2544's benchmarking range, all local there)
    let topo = Topology::builder()
        .node("agent")
        .node("peer")
        .node("peer2")
        .node("flood")
        .link("agent", "192.0.2.1/26", "peer", "192.0.2.2/26")
        .link("agent", "192.0.2.65/26", "peer2", "192.0.2.66/26")
        .link("agent", "192.0.2.129/26", "flood", "192.0.2.130/26")
        .route("agent", &["198.18.0.0/16", "via", "192.0.2.130"])
        // charon (libipsec) wants an address of its own inside its traffic selector
        .subnet("peer", "203.0.113.1/32")
        .subnet("peer2", "203.0.113.129/32")
        .build()
        .expect("topology");
    topo.exec(
        "flood",
        &["ip", "route", "add", "local", "198.18.0.0/16", "dev", "lo"],
    )
    .unwrap();
    let (agent_ns, peer_ns, peer2_ns, flood_ns) = (
        topo.ns("agent").unwrap().to_owned(),
        topo.ns("peer").unwrap().to_owned(),
        topo.ns("peer2").unwrap().to_owned(),
        topo.ns("flood").unwrap().to_owned(),
    );
    let tunnel = |name: &str, local: End, remote: End, initiation: &str| {
        TunnelYaml::new(name, local, remote)
            .proposals("aes256gcm16-prfsha256-x25519", "aes256gcm16-x25519")
            .initiation(initiation)
    };
    let gw = tunnel(
        TUNNEL,
        End::new("left.strait.example", "192.0.2.1", "198.51.100.0/25"),
        End::new("right.strait.example", "192.0.2.2", "203.0.113.0/25"),
        "start",
    );
    let gw2 = tunnel(
        "gw2",
        End::new("left2.strait.example", "192.0.2.65", "198.51.100.128/25"),
        End::new("right2.strait.example", "192.0.2.66", "203.0.113.128/25"),
        "respond",
    );
    // accepts IKE_SA_INIT from anyone (a road-warrior style responder): what the flood hits
    let any = tunnel(
        "any",
        End::new("any.strait.example", "192.0.2.129", "192.0.2.240/28"),
        End::new("client.strait.example", "0.0.0.0", "192.0.2.224/28"),
        "respond",
    );
    let yaml = format!("{}---\n{}---\n{}", gw.render(), gw2.render(), any.render());
    let charon = Charon::start(
        &peer_ns,
        &charon_config(
            charon_conn(
                TUNNEL,
                "right.strait.example",
                "192.0.2.2",
                "203.0.113.0/25",
                "left.strait.example",
                "198.51.100.0/25",
                None,
                None,
            ),
            ["right.strait.example", "left.strait.example"],
        ),
    )
    .expect("start charon");
    let agent = agent_up(&agent_ns, &yaml, &charon);
    let charon2 = Charon::start(
        &peer2_ns,
        &charon_config(
            charon_conn(
                "gw2",
                "right2.strait.example",
                "192.0.2.66",
                "203.0.113.128/25",
                "left2.strait.example",
                "198.51.100.128/25",
                Some("192.0.2.65"),
                None,
            ),
            ["right2.strait.example", "left2.strait.example"],
        ),
    )
    .expect("start charon2");
    let before = snapshot(&agent, &charon, TUNNEL);
    let pid = agent.pid().unwrap();
    let rss_before = flood::rss_kib(pid).unwrap();

    // the flooder: one socket on 0.0.0.0:500 speaks for all of 198.18.0.0/16
    let sock = flood::udp_socket_in(&flood_ns, "0.0.0.0:500".parse().unwrap()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (cookies, full, errors, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let reader = {
        let sock = sock.try_clone().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (stop, cookies, full, errors, other) = (
            stop.clone(),
            cookies.clone(),
            full.clone(),
            errors.clone(),
            other.clone(),
        );
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let c = match flood::classify_init_answer(&buf[..n], false, None) {
                    InitAnswer::Cookie(_) => &cookies,
                    InitAnswer::Full => &full,
                    InitAnswer::Error(_) => &errors,
                    InitAnswer::Other => &other,
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let flooder = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let spi = rng.spi();
            let template = flood::init_request(&mut rng, spi, None).unwrap();
            let target = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 129), 500);
            let mut pacer = Pacer::new(rate);
            let mut errors = 0u64;
            let deadline = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let mut req = template.clone();
                req[..8].copy_from_slice(&rng.spi().0);
                let host = rng.below(65536) as u16;
                let src = Ipv4Addr::new(198, 18, (host >> 8) as u8, host as u8);
                if flood::send_from(&sock, src, target, &req).is_err() {
                    errors += 1;
                }
                pacer.tick();
            }
            let (n, r) = pacer.rate();
            (n, r, errors)
        })
    };
    let cpu_before = flood::cpu_time(pid).unwrap();
    let t0 = Instant::now();
    // a few seconds in, the half-open table is full and cookies are on: charon2 comes up now
    thread::sleep(Duration::from_secs(4));
    let cookies_at_initiate = cookies.load(Ordering::Relaxed);
    let initiated = Instant::now();
    charon2.initiate("gw2", "net", 30).unwrap_or_else(|e| {
        panic!(
            "charon2 initiate during the flood: {e:#}\n{}",
            dump(&agent, &charon2)
        )
    });
    let gw2_took = initiated.elapsed();
    let gw2 = agent
        .wait_tunnel("gw2", Duration::from_secs(10), up)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon2)));
    let during = snapshot(&agent, &charon, TUNNEL);
    let (sent, sent_rate, send_errors) = flooder.join().unwrap();
    let flood_time = t0.elapsed();
    let cpu = flood::cpu_time(pid).unwrap() - cpu_before;
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let mut agent = agent;
    assert!(agent.try_wait().unwrap().is_none(), "the agent died");
    let rss_after = flood::rss_kib(pid).unwrap();
    let after = snapshot(&agent, &charon, TUNNEL);
    let (cookies, full, errors, other) = (
        cookies.load(Ordering::Relaxed),
        full.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    let answered = cookies + full + errors;
    let charon2_log = charon2.log();
    eprintln!(
        "\nhalf-open flood: {sent} IKE_SA_INIT from 198.18.0.0/16 in {flood_time:.1?} \
         ({sent_rate:.0}/s sent, {send_errors} send errors); answered {answered} \
         ({:.0}/s): {cookies} N(COOKIE), {full} full answers (state created), {errors} errors, \
         {other} other\n  agent CPU {cpu:?} ({:.0} % of one core), RSS {rss_before} -> \
         {rss_after} KiB\n  charon2 initiated {:.1?} into the flood ({cookies_at_initiate} \
         cookies sent by then), up after {gw2_took:.1?}: {} N(COOKIE) in its log; gw2 {}\n  \
         gw before {before:?}\n  after {after:?}",
        answered as f64 / flood_time.as_secs_f64(),
        cpu.as_secs_f64() * 100.0 / flood_time.as_secs_f64(),
        initiated - t0,
        charon2_log.matches("N(COOKIE)").count(),
        gw2["ikeSpis"],
    );
    assert_eq!(
        before, during,
        "the established tunnel changed during the flood"
    );
    assert_eq!(
        before, after,
        "the established tunnel changed after the flood"
    );
    assert!(
        cookies_at_initiate > 0 && cookies * 2 > sent,
        "cookies did not engage: {cookies} of {sent}"
    );
    // 30 half-open SAs (the threshold) at a time, each held for 30 s: the rest is cookies
    let windows = flood_time.as_secs() / 30 + 2;
    assert!(
        full <= 30 * windows,
        "{full} requests created state in {flood_time:?}"
    );
    assert!(
        charon2_log.contains("N(COOKIE)"),
        "charon2 was not asked for a cookie:\n{charon2_log}"
    );
    assert!(
        rss_after <= rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// nftables in the agent's namespace drops every `nth` UDP 500/4500 datagram each way (the 1st,
/// the (nth+1)-th, …), counted. A fixed pattern, not a random one: a short run sees only a few
/// dozen datagrams, and random loss then sometimes dropped none (issue #18).
fn periodic_loss(ns: &str, nth: u32) {
    let rules = format!(
        "table inet strait_loss {{
  chain input {{
    type filter hook input priority 0; policy accept;
    udp dport {{ 500, 4500 }} counter
    udp dport {{ 500, 4500 }} numgen inc mod {nth} 0 counter drop
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    udp sport {{ 500, 4500 }} counter
    udp sport {{ 500, 4500 }} numgen inc mod {nth} 0 counter drop
  }}
}}
"
    );
    let path = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(path.path(), rules).unwrap();
    netns::exec(ns, &["nft", "-f", path.path().to_str().unwrap()]).unwrap();
}

/// IKE datagrams seen and dropped by the loss rules: ((seen, dropped) in, (seen, dropped) out).
fn loss_counters(ns: &str) -> ((u64, u64), (u64, u64)) {
    let out = netns::exec(ns, &["nft", "list", "table", "inet", "strait_loss"]).unwrap();
    let counts: Vec<u64> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let at = l.find("counter packets ")?;
            l[at + 16..].split_whitespace().next()?.parse().ok()
        })
        .collect();
    let c = |i: usize| counts.get(i).copied().unwrap_or(0);
    ((c(0), c(1)), (c(2), c(3)))
}

/// 3: 20 % loss (every fifth datagram) on the IKE path both ways; tunnels still establish and
/// rekey.
#[test]
fn twenty_percent_loss_still_establishes_and_rekeys() {
    let _serial = netns::serial();
    // The short version stops once both sides have seen enough rekeys (usually 30-45 s); an
    // unlucky run where one request is lost three times waits 4 + 7.2 + 13 s for it, so the
    // ceiling is generous. The long version watches for its whole time.
    let (watch, stop_early) = if long() {
        (Duration::from_secs(300), false)
    } else {
        (Duration::from_secs(150), true)
    };
    const CHILD_REKEYS: u32 = 3;
    const IKE_REKEYS: u32 = 1;
    let pair = SitePair::new(false).expect("topology");
    let (left, right) = (pair.left.clone(), pair.right.clone());
    // every fifth datagram: 20 % loss
    periodic_loss(&left.ns, 5);
    let charon =
        Charon::start(&right.ns, &charon_for(&right, &left, PSK, None)).expect("start charon");

    // 60 s × 0.05: CHILD rekeys due every 2.7-3 s; 240 s × 0.05: IKE rekeys every 10.8-12 s.
    // Under loss each exchange (and the DELETE after each rekey) waits 4 s, 7.2 s, ... for
    // its retransmissions, one exchange at a time, so far fewer complete than are due.
    let yaml = TunnelYaml {
        esp_lifetime: Some("60s".into()),
        ike_lifetime: Some("240s".into()),
        ..site_tunnel(&left, &right).dpd("60s", "150s")
    }
    .render();
    let t0 = Instant::now();
    let agent = start_agent(&left.ns, &yaml, &["--test-lifetime-scale", "0.05"]);
    agent
        .wait_tunnel(TUNNEL, Duration::from_secs(60), up)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    charon
        .wait_up(TUNNEL, "net", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", dump(&agent, &charon)));
    let established_after = t0.elapsed();

    let (mut child_spis, mut ike_spis) = (BTreeSet::new(), BTreeSet::new());
    let (mut charon_ike, mut charon_child) = (BTreeSet::new(), BTreeSet::new());
    let (mut not_ready, mut samples) = (Vec::new(), 0usize);
    let metrics_addr: SocketAddr = "127.0.0.1:9470".parse().unwrap();
    // charon hands out unique ids in sequence to every SA it creates, so their span counts
    // the SAs created even when one lived between two samples
    let span = |ids: &BTreeSet<u32>| match (ids.first(), ids.last()) {
        (Some(a), Some(b)) => b - a,
        _ => 0,
    };
    let t_watch = Instant::now();
    let end = t_watch + watch;
    let mut next_charon = Instant::now();
    while Instant::now() < end {
        let t = agent.tunnel(TUNNEL).unwrap();
        samples += 1;
        if up(&t) {
            for c in t["childSas"].as_array().into_iter().flatten() {
                child_spis.insert(c["spiIn"].as_str().unwrap_or_default().to_owned());
            }
            ike_spis.insert(t["ikeSpis"].as_str().unwrap_or_default().to_owned());
        } else {
            not_ready.push(t.to_string());
        }
        if Instant::now() >= next_charon {
            next_charon = Instant::now() + Duration::from_millis(700);
            let sas = charon.list_sas().unwrap();
            for ike in &sas.ike_sas {
                charon_ike.insert(ike.unique_id);
                for c in &ike.children {
                    charon_child.insert(c.unique_id);
                }
            }
            let metrics = flood::scrape_metrics(&left.ns, metrics_addr).unwrap_or_default();
            let count = |n: &str| flood::metric(&metrics, n).unwrap_or(0.0);
            let enough = count("strait_rekeys_total{kind=\"child\",tunnel=\"gw\"}") >= f64::from(CHILD_REKEYS)
                && count("strait_rekeys_total{kind=\"ike\",tunnel=\"gw\"}") >= f64::from(IKE_REKEYS)
                && span(&charon_child) >= CHILD_REKEYS
                && span(&charon_ike) >= IKE_REKEYS
                // and our status was sampled after them too
                && child_spis.len() >= 2
                && ike_spis.len() >= 2;
            if stop_early && enough {
                break;
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    let watched = t_watch.elapsed();
    // at rest the two agree again: the same IKE SPIs, our newest CHILD SA INSTALLED there
    let deadline = Instant::now() + Duration::from_secs(30);
    let agreed = loop {
        let t = agent.tunnel(TUNNEL).unwrap();
        let sas = charon.list_sas().unwrap();
        let ours = t["ikeSpis"]
            .as_str()
            .unwrap_or_default()
            .replace(['_', 'i', 'r'], "");
        // charon may list a second IKE SA while a rekey's last message is still retried
        let ike_match = sas
            .raw
            .lines()
            .filter(|l| l.starts_with(&format!("{TUNNEL}: #")) && l.contains("ESTABLISHED"))
            .map(|l| l.replace('*', ""))
            .any(|l| ours.split_whitespace().all(|s| l.contains(s)));
        let child_match = t["childSas"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                sas.raw
                    .contains(&format!("out {}", c["spiIn"].as_str().unwrap_or("-")))
                    && sas
                        .raw
                        .contains(&format!("in  {}", c["spiOut"].as_str().unwrap_or("-")))
            })
        });
        if up(&t) && ike_match && child_match {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(300));
    };
    let metrics =
        flood::scrape_metrics(&left.ns, "127.0.0.1:9470".parse().unwrap()).unwrap_or_default();
    let m = |n: &str| flood::metric(&metrics, n).unwrap_or(-1.0);
    let ((seen_in, dropped_in), (seen_out, dropped_out)) = loss_counters(&left.ns);
    let log = agent.log();
    let charon_log = charon.log();
    eprintln!(
        "\n20 % loss: established after {established_after:.1?}; watched {watched:.1?}: our CHILD SPIs \
         {}, our IKE SPIs {}, charon CHILD ids {}, charon IKE ids {}; not-ready samples {}/{}\n  \
         metrics: rekeys child {} ike {}, retransmissions {}; our log: {} CHILD installs, {} IKE \
         rekeys; charon: {} retransmits\n  nft dropped {dropped_in} of {seen_in} inbound and \
         {dropped_out} of {seen_out} outbound IKE datagrams",
        child_spis.len(),
        ike_spis.len(),
        charon_child.len(),
        charon_ike.len(),
        not_ready.len(),
        samples,
        m("strait_rekeys_total{kind=\"child\",tunnel=\"gw\"}"),
        m("strait_rekeys_total{kind=\"ike\",tunnel=\"gw\"}"),
        m("strait_retransmissions_total"),
        log.matches("CHILD SA installed").count(),
        log.matches("IKE SA rekeyed").count(),
        charon_log.matches("retransmit").count(),
    );
    assert!(
        agreed,
        "the two sides do not agree at rest\n{}",
        dump(&agent, &charon)
    );
    // the first datagram each way is dropped, so both counters move once anything went by
    assert!(
        dropped_in > 0 && dropped_out > 0,
        "nothing was dropped one way: {dropped_in} of {seen_in} in, {dropped_out} of {seen_out} out"
    );
    // several CHILD rekeys and at least one IKE rekey, on both sides. Samples can miss an SA
    // that lived less than a sampling period (a rekey queued behind another runs at once), so
    // count our completed rekeys (metrics) and the span of charon's unique ids.
    let (our_child, our_ike) = (
        m("strait_rekeys_total{kind=\"child\",tunnel=\"gw\"}"),
        m("strait_rekeys_total{kind=\"ike\",tunnel=\"gw\"}"),
    );
    assert!(
        our_child >= f64::from(CHILD_REKEYS) && child_spis.len() >= 2,
        "too few CHILD rekeys on our side: {our_child}, {child_spis:?}\n{}",
        dump(&agent, &charon)
    );
    assert!(
        span(&charon_child) >= CHILD_REKEYS,
        "too few CHILD SAs on charon's side: {charon_child:?}\n{}",
        dump(&agent, &charon)
    );
    assert!(
        our_ike >= f64::from(IKE_REKEYS) && ike_spis.len() >= 2,
        "no IKE rekey on our side: {our_ike}, {ike_spis:?}\n{}",
        dump(&agent, &charon)
    );
    assert!(
        span(&charon_ike) >= IKE_REKEYS,
        "no IKE rekey on charon's side: {charon_ike:?}\n{}",
        dump(&agent, &charon)
    );
    // An exchange whose request or answer is lost six times in a row exhausts the
    // retransmissions (rare with every fifth datagram dropped, but exchanges interleave): the
    // IKE SA is then rightly declared unreachable and set up again. That is the only way down
    // allowed, and only then may the tunnel have been not ready.
    let downs: Vec<&str> = log.lines().filter(|l| l.contains("IKE SA down")).collect();
    assert!(
        downs.iter().all(|l| l.contains("reason=PeerUnreachable")),
        "the IKE SA went down under loss for another reason: {downs:?}\n{}",
        dump(&agent, &charon)
    );
    assert!(
        not_ready.is_empty() || !downs.is_empty(),
        "the tunnel stopped being ready under loss: {:?}\n{}",
        not_ready.first(),
        dump(&agent, &charon)
    );
    if !downs.is_empty() {
        eprintln!(
            "retransmissions ran out {} time(s): {downs:?}; not ready in {} samples",
            downs.len(),
            not_ready.len()
        );
    }
}
