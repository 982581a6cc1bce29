//! Hostile traffic for the hardening tests: sockets opened inside a test namespace, realistic
//! IKE messages built with `strait-ike`'s codec, a mutator that turns captured or built messages
//! into malformed ones, a sender that spoofs source addresses (`IP_PKTINFO`), and readers for
//! what the target process costs (`/proc/<pid>`) and what its namespace dropped (`/proc/net/snmp`).
//!
//! Everything here only talks to namespaces a test created; nothing touches the root namespace.

use std::fs;
use std::io::{IoSlice, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrIn, sendmsg};
use strait_ike::codec::{
    DhId, EncrId, ExchangeType, Flags, HEADER_LEN, Header, KeyExchange, Message, Nonce, Notify,
    NotifyType, Payload, PayloadType, PrfId, Proposal, ProtocolId, Sa, Spi, Transform,
    with_non_esp_marker,
};

/// A small deterministic generator (SplitMix64): runs are repeatable from their seed, which the
/// tests print, and no randomness crate is needed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next_u64() % u64::try_from(n).unwrap_or(u64::MAX)).unwrap_or(0)
    }

    /// Fills `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            for (b, r) in chunk.iter_mut().zip(r) {
                *b = r;
            }
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }

    /// A random non-zero IKE SPI.
    pub fn spi(&mut self) -> Spi {
        Spi(self.next_u64().max(1).to_be_bytes())
    }
}

/// Runs `f` on a thread that has joined network namespace `ns` (`/run/netns/<ns>`): sockets it
/// opens stay in that namespace wherever they are used later. The calling thread is untouched.
///
/// # Errors
/// The namespace cannot be entered, or `f` failed.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {}", path.display()))?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("namespace thread panicked"))?
}

/// A UDP socket bound to `bind` inside `ns`.
///
/// # Errors
/// See [`in_netns`]; or the bind failed.
pub fn udp_socket_in(ns: &str, bind: SocketAddr) -> Result<UdpSocket> {
    in_netns(ns, move || {
        UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))
    })
}

/// `GET /metrics` from a Prometheus endpoint reachable only inside `ns`.
///
/// # Errors
/// No connection or no HTTP answer.
pub fn scrape_metrics(ns: &str, addr: SocketAddr) -> Result<String> {
    let mut stream = in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .with_context(|| format!("connecting to {addr}"))
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .ok_or_else(|| anyhow!("no HTTP body from {addr}: {out:?}"))?;
    Ok(body)
}

/// The value of the sample `name` (with its labels exactly as exposed, e.g.
/// `strait_rekeys_total{kind="child",tunnel="gw"}`) in a Prometheus exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok())?
    })
}

/// The resident set size of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
///
/// # Errors
/// The process is gone.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

/// CPU time used so far by process `pid` (user + system, all threads).
///
/// # Errors
/// The process is gone.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // the command name is in parentheses and may hold spaces: count fields after the last ')'
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 of stat(5) are the 12th and 13th after the name
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {i} in /proc/{pid}/stat"))
    };
    let ticks = tick(11)?.saturating_add(tick(12)?);
    // USER_HZ is 100 on every Linux architecture the project runs on
    Ok(Duration::from_millis(ticks.saturating_mul(10)))
}

/// UDP counters of a namespace (`Udp:` lines of `/proc/net/snmp` read inside it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams delivered to sockets.
    pub in_datagrams: u64,
    /// Datagrams dropped because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
    /// Datagrams to ports nobody listens on.
    pub no_ports: u64,
}

impl UdpCounters {
    /// Reads them in `ns`.
    ///
    /// # Errors
    /// See [`in_netns`].
    pub fn read(ns: &str) -> Result<Self> {
        // `/proc/net` follows the process's namespace; the thread's own is under thread-self
        let text = in_netns(ns, || Ok(fs::read_to_string("/proc/thread-self/net/snmp")?))?;
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (
            lines.next().ok_or_else(|| anyhow!("no Udp: header"))?,
            lines.next().ok_or_else(|| anyhow!("no Udp: values"))?,
        );
        let get = |want: &str| -> u64 {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == want)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            in_datagrams: get("InDatagrams"),
            rcvbuf_errors: get("RcvbufErrors"),
            no_ports: get("NoPorts"),
        })
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            in_datagrams: self.in_datagrams.saturating_sub(earlier.in_datagrams),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(earlier.rcvbuf_errors),
            no_ports: self.no_ports.saturating_sub(earlier.no_ports),
        }
    }
}

/// An IKE_SA_INIT request shaped like charon's first message: one IKE proposal
/// (`aes256gcm16-prfsha256-x25519` plus alternatives), an X25519 KE, a 32-byte nonce, NAT-D
/// notifies and fragmentation support. `cookie` goes first, as RFC 7296 §2.6 wants.
///
/// # Errors
/// Only if the codec refuses the message (a bug).
pub fn init_request(rng: &mut Rng, spi: Spi, cookie: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut payloads = Vec::new();
    if let Some(c) = cookie {
        payloads.push(Payload::Notify(Notify::new(NotifyType::COOKIE, c.to_vec())));
    }
    let ike = |number: u8, encr: Transform, dh: DhId| Proposal {
        number,
        protocol: ProtocolId::IKE,
        spi: Vec::new(),
        transforms: vec![
            encr,
            Transform::prf(PrfId::HMAC_SHA2_256),
            Transform::dh(dh),
        ],
    };
    payloads.push(Payload::Sa(Sa {
        proposals: vec![
            ike(
                1,
                Transform::encr(EncrId::AES_GCM_16, Some(256)),
                DhId::CURVE25519,
            ),
            ike(
                2,
                Transform::encr(EncrId::AES_GCM_16, Some(128)),
                DhId::ECP256,
            ),
        ],
    }));
    payloads.push(Payload::KeyExchange(KeyExchange {
        group: DhId::CURVE25519,
        data: rng.bytes(32),
    }));
    payloads.push(Payload::Nonce(
        Nonce::new(rng.bytes(32)).ok_or_else(|| anyhow!("nonce size"))?,
    ));
    for ty in [
        NotifyType::NAT_DETECTION_SOURCE_IP,
        NotifyType::NAT_DETECTION_DESTINATION_IP,
    ] {
        payloads.push(Payload::Notify(Notify::new(ty, rng.bytes(20))));
    }
    payloads.push(Payload::Notify(Notify::empty(
        NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
    )));
    let msg = Message {
        header: Header {
            initiator_spi: spi,
            responder_spi: Spi::ZERO,
            exchange_type: ExchangeType::IKE_SA_INIT,
            flags: Flags::INITIATOR,
            message_id: 0,
        },
        payloads,
    };
    msg.encode()
        .map_err(|e| anyhow!("encoding IKE_SA_INIT: {e}"))
}

/// What a target answered to an IKE_SA_INIT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitAnswer {
    /// A full answer: SA, KE and Nr (state was created).
    Full,
    /// N(COOKIE) with this cookie (stateless).
    Cookie(Vec<u8>),
    /// Some other error notify (INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN, ...).
    Error(u16),
    /// Not an IKE_SA_INIT response to us.
    Other,
}

/// Classifies a datagram received from the target (`natt`: it came from port 4500 and carries
/// the non-ESP marker) as an answer to our IKE_SA_INIT with initiator SPI `spi` (any SPI when
/// `None`).
pub fn classify_init_answer(datagram: &[u8], natt: bool, spi: Option<Spi>) -> InitAnswer {
    let ike = if natt {
        match datagram.strip_prefix(&[0u8; 4]) {
            Some(b) => b,
            None => return InitAnswer::Other,
        }
    } else {
        datagram
    };
    let Ok(msg) = Message::parse(ike) else {
        return InitAnswer::Other;
    };
    let h = msg.header;
    if h.exchange_type != ExchangeType::IKE_SA_INIT
        || !h.flags.is_response()
        || spi.is_some_and(|s| s != h.initiator_spi)
    {
        return InitAnswer::Other;
    }
    if let Some(c) = msg.notify(NotifyType::COOKIE) {
        return InitAnswer::Cookie(c.data.clone());
    }
    let has = |t: PayloadType| msg.payloads.iter().any(|p| p.payload_type() == t);
    if has(PayloadType::SA) && has(PayloadType::KE) && has(PayloadType::NONCE) {
        return InitAnswer::Full;
    }
    msg.notifies()
        .find(|n| n.ty.0 < 16384)
        .map_or(InitAnswer::Other, |n| InitAnswer::Error(n.ty.0))
}

/// A legitimate IKE_SA_INIT exchange from `sock` to `target` (port 500): request, and when the
/// target asks for a cookie, the request again with it. Returns the answers in order; the
/// last one is the target's final word.
///
/// # Errors
/// The target did not answer within `timeout` per attempt.
pub fn init_exchange(
    sock: &UdpSocket,
    target: SocketAddr,
    rng: &mut Rng,
    timeout: Duration,
) -> Result<Vec<InitAnswer>> {
    let spi = rng.spi();
    // the retry with the cookie must repeat the first request (the cookie covers Ni)
    let payload_rng = Rng::new(rng.next_u64());
    let mut answers = Vec::new();
    let mut cookie: Option<Vec<u8>> = None;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    for _ in 0..3 {
        let req = init_request(&mut payload_rng.clone(), spi, cookie.as_deref())?;
        let deadline = Instant::now() + timeout;
        let mut next_send = Instant::now();
        let answer = loop {
            if Instant::now() >= next_send {
                sock.send_to(&req, target)?;
                next_send = Instant::now() + Duration::from_secs(1);
            }
            let mut buf = [0u8; 4096];
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == target => {
                    let a =
                        classify_init_answer(buf.get(..n).unwrap_or_default(), false, Some(spi));
                    if a != InitAnswer::Other {
                        break a;
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            if Instant::now() > deadline {
                bail!(
                    "{target} did not answer IKE_SA_INIT within {timeout:?} (so far: {answers:?})"
                );
            }
        };
        answers.push(answer.clone());
        match answer {
            InitAnswer::Cookie(c) => cookie = Some(c),
            _ => return Ok(answers),
        }
    }
    Ok(answers)
}

/// How a [`Mutator`] spoiled a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A real message cut short.
    Truncated,
    /// The header's length field lies.
    HeaderLengthLie,
    /// A payload's length field lies.
    PayloadLengthLie,
    /// Random bits flipped in a real message.
    BitFlips,
    /// A real message with random SPIs.
    UnknownSpi,
    /// A real protected message (known SPIs) with another message ID.
    WrongMessageId,
    /// A real message sent again unchanged.
    Replay,
    /// A header followed by thousands of small payloads.
    PayloadChain,
    /// An SA payload with hundreds of proposals and transforms.
    ProposalBomb,
    /// Random bytes (sometimes behind a plausible header).
    RandomBytes,
    /// A fresh, valid-looking IKE_SA_INIT with one field spoiled.
    MutatedInit,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 11] = [
        Kind::Truncated,
        Kind::HeaderLengthLie,
        Kind::PayloadLengthLie,
        Kind::BitFlips,
        Kind::UnknownSpi,
        Kind::WrongMessageId,
        Kind::Replay,
        Kind::PayloadChain,
        Kind::ProposalBomb,
        Kind::RandomBytes,
        Kind::MutatedInit,
    ];
}

/// Turns a corpus of real IKE messages (without non-ESP markers) into malformed datagrams.
#[derive(Debug)]
pub struct Mutator {
    rng: Rng,
    corpus: Vec<Vec<u8>>,
}

fn set_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

fn fix_length(b: &mut [u8]) {
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    set_u32(b, 24, len);
}

/// Offsets of the generic payload headers of a message's outer chain.
fn payload_offsets(msg: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    let mut next = msg.get(16).copied().unwrap_or(0);
    while next != 0 && at + 4 <= msg.len() && out.len() < 64 {
        out.push(at);
        let len = msg
            .get(at + 2..at + 4)
            .and_then(|s| s.try_into().ok())
            .map_or(0, |s: [u8; 2]| usize::from(u16::from_be_bytes(s)));
        next = msg.get(at).copied().unwrap_or(0);
        if len < 4 {
            break;
        }
        at += len;
    }
    out
}

impl Mutator {
    /// A mutator over `corpus` (real messages; empty ones are ignored), seeded with `seed`.
    pub fn new(seed: u64, corpus: Vec<Vec<u8>>) -> Self {
        Self {
            rng: Rng::new(seed),
            corpus: corpus
                .into_iter()
                .filter(|m| m.len() >= HEADER_LEN)
                .collect(),
        }
    }

    fn pick(&mut self) -> Vec<u8> {
        let i = self.rng.below(self.corpus.len());
        self.corpus
            .get(i)
            .cloned()
            .unwrap_or_else(|| init_request(&mut self.rng, Spi([1; 8]), None).unwrap_or_default())
    }

    /// A protected (SK/SKF) message from the corpus, if there is one.
    fn pick_protected(&mut self) -> Vec<u8> {
        for _ in 0..16 {
            let m = self.pick();
            if matches!(m.get(16).copied(), Some(46 | 53)) {
                return m;
            }
        }
        self.pick()
    }

    /// One malformed datagram of kind `kind`.
    pub fn make(&mut self, kind: Kind) -> Vec<u8> {
        match kind {
            Kind::Truncated => {
                let mut m = self.pick();
                let n = self.rng.below(m.len());
                m.truncate(n);
                if self.rng.below(2) == 0 {
                    // make the header agree, so the payload parser gets the cut
                    fix_length(&mut m);
                }
                m
            }
            Kind::HeaderLengthLie => {
                let mut m = self.pick();
                let len = u32::try_from(m.len()).unwrap_or(0);
                let lie = match self.rng.below(6) {
                    0 => 0,
                    1 => len.wrapping_add(1),
                    2 => len.wrapping_sub(1),
                    3 => u32::MAX,
                    4 => 28,
                    _ => u32::try_from(self.rng.below(70_000)).unwrap_or(0),
                };
                set_u32(&mut m, 24, lie);
                m
            }
            Kind::PayloadLengthLie => {
                let mut m = self.pick();
                let offs = payload_offsets(&m);
                let at = offs
                    .get(self.rng.below(offs.len()))
                    .copied()
                    .unwrap_or(HEADER_LEN);
                let lie = match self.rng.below(5) {
                    0 => 0,
                    1 => 3,
                    2 => u16::MAX,
                    3 => 4,
                    _ => u16::try_from(self.rng.below(2000)).unwrap_or(0),
                };
                set_u16(&mut m, at + 2, lie);
                m
            }
            Kind::BitFlips => {
                let mut m = self.pick();
                for _ in 0..=self.rng.below(8) {
                    let i = self.rng.below(m.len());
                    let bit = 1u8 << self.rng.below(8);
                    if let Some(b) = m.get_mut(i) {
                        *b ^= bit;
                    }
                }
                m
            }
            Kind::UnknownSpi => {
                let mut m = self.pick();
                let (i, s) = (self.rng.spi(), self.rng.spi());
                if let Some(h) = m.get_mut(0..8) {
                    h.copy_from_slice(&i.0);
                }
                if self.rng.below(2) == 0
                    && let Some(h) = m.get_mut(8..16)
                {
                    h.copy_from_slice(&s.0);
                }
                m
            }
            Kind::WrongMessageId => {
                let mut m = self.pick_protected();
                let mid = m
                    .get(20..24)
                    .and_then(|s| s.try_into().ok())
                    .map_or(0, u32::from_be_bytes);
                let new = match self.rng.below(5) {
                    0 => mid.wrapping_add(1),
                    1 => mid.wrapping_add(2),
                    2 => 0,
                    3 => u32::MAX,
                    _ => u32::try_from(self.rng.next_u64() >> 32).unwrap_or(0),
                };
                set_u32(&mut m, 20, new);
                // sometimes also the response flag turned around
                if self.rng.below(4) == 0
                    && let Some(f) = m.get_mut(19)
                {
                    *f ^= 0x20;
                }
                m
            }
            Kind::Replay => self.pick(),
            Kind::PayloadChain => {
                let base = self.pick();
                let mut m = base
                    .get(..HEADER_LEN)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                m.resize(HEADER_LEN, 0);
                // a chain of tiny payloads: Notify (41), Vendor ID (43) or an unknown
                // non-critical type (200), in a datagram of up to 64,000 bytes (UDP over
                // IPv4 carries at most 65,507)
                let ty = [41u8, 43, 200]
                    .get(self.rng.below(3))
                    .copied()
                    .unwrap_or(41);
                let size = if ty == 41 { 8 } else { 4 };
                let count = 1000 + self.rng.below((64_000 - HEADER_LEN) / size - 1000);
                if let Some(b) = m.get_mut(16) {
                    *b = ty;
                }
                if self.rng.below(2) == 0 {
                    // an IKE_SA_INIT request, which reaches the full parser without keys
                    if let Some(b) = m.get_mut(8..16) {
                        b.fill(0);
                    }
                    if let Some(b) = m.get_mut(18..24) {
                        b.copy_from_slice(&[34, 0x08, 0, 0, 0, 0]);
                    }
                }
                for k in 0..count {
                    let next = if k + 1 == count { 0 } else { ty };
                    match ty {
                        41 => m.extend_from_slice(&[next, 0, 0, 8, 0, 0, 0x40, 0x0e]),
                        _ => m.extend_from_slice(&[next, 0, 0, 4]),
                    }
                }
                fix_length(&mut m);
                m
            }
            Kind::ProposalBomb => {
                let spi = self.rng.spi();
                let mut m = Vec::with_capacity(60_000);
                m.extend_from_slice(&spi.0);
                m.extend_from_slice(&[0; 8]);
                m.extend_from_slice(&[33, 0x20, 34, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]);
                let proposals = 1 + self.rng.below(255);
                let transforms = 1 + self.rng.below(255);
                let prop_len = 8 + transforms * 8;
                let sa_len = 4 + proposals * prop_len;
                let sa_len = u16::try_from(sa_len.min(65_000)).unwrap_or(u16::MAX);
                m.extend_from_slice(&[0, 0]);
                m.extend_from_slice(&sa_len.to_be_bytes());
                'outer: for p in 0..proposals {
                    let more = if p + 1 == proposals { 0 } else { 2 };
                    let plen = u16::try_from(prop_len).unwrap_or(u16::MAX);
                    m.extend_from_slice(&[more, 0]);
                    m.extend_from_slice(&plen.to_be_bytes());
                    let n = u8::try_from(transforms).unwrap_or(u8::MAX);
                    m.extend_from_slice(&[u8::try_from(p + 1).unwrap_or(u8::MAX), 1, 0, n]);
                    for t in 0..transforms {
                        let more = if t + 1 == transforms { 0 } else { 3 };
                        let id = u16::try_from(self.rng.below(40)).unwrap_or(0);
                        let ty = u8::try_from(1 + self.rng.below(5)).unwrap_or(1);
                        m.extend_from_slice(&[more, 0, 0, 8, ty, 0]);
                        m.extend_from_slice(&id.to_be_bytes());
                        if m.len() > 60_000 {
                            break 'outer;
                        }
                    }
                }
                fix_length(&mut m);
                m
            }
            Kind::RandomBytes => {
                let n = self.rng.below(1500);
                let mut m = self.rng.bytes(n);
                if self.rng.below(2) == 0 && m.len() >= HEADER_LEN {
                    // a plausible header: version 2.0, a known exchange, the right length
                    if let Some(b) = m.get_mut(17..19) {
                        b.copy_from_slice(&[0x20, 34 + (self.rng.below(4) as u8)]);
                    }
                    fix_length(&mut m);
                }
                m
            }
            Kind::MutatedInit => {
                let spi = self.rng.spi();
                let mut m = init_request(&mut self.rng, spi, None).unwrap_or_default();
                let offs = payload_offsets(&m);
                match self.rng.below(4) {
                    0 => {
                        // one byte of a payload body replaced
                        let i = HEADER_LEN + self.rng.below(m.len().saturating_sub(HEADER_LEN));
                        let v = self.rng.next_u64() as u8;
                        if let Some(b) = m.get_mut(i) {
                            *b = v;
                        }
                    }
                    1 => {
                        // a payload marked critical with an unknown type
                        let at = offs.get(self.rng.below(offs.len())).copied().unwrap_or(0);
                        if let Some(b) = m.get_mut(at..at + 2) {
                            b.copy_from_slice(&[200, 0x80]);
                        }
                    }
                    2 => {
                        // KE of another group than proposed, or an empty KE
                        let ke = offs.get(1).copied().unwrap_or(0);
                        let group = [0u16, 14, 19, 31, 999]
                            .get(self.rng.below(5))
                            .copied()
                            .unwrap_or(0);
                        set_u16(&mut m, ke + 4, group);
                    }
                    _ => {
                        // a response flag, a non-zero message ID or responder SPI
                        let which = self.rng.below(3);
                        match which {
                            0 => {
                                if let Some(f) = m.get_mut(19) {
                                    *f |= 0x20;
                                }
                            }
                            1 => set_u32(&mut m, 20, 1),
                            _ => {
                                if let Some(b) = m.get_mut(8..16) {
                                    b.fill(0x5a);
                                }
                            }
                        }
                    }
                }
                m
            }
        }
    }

    /// A random kind and its datagram.
    pub fn random(&mut self) -> (Kind, Vec<u8>) {
        let kind = Kind::ALL
            .get(self.rng.below(Kind::ALL.len()))
            .copied()
            .unwrap_or(Kind::RandomBytes);
        (kind, self.make(kind))
    }

    /// The generator, for the caller's other choices.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// Adds the non-ESP marker (for port 4500).
pub fn marked(ike: &[u8]) -> Vec<u8> {
    with_non_esp_marker(ike)
}

/// Sends `payload` from `src` (any address local to the socket's namespace, e.g. one of an
/// `ip route add local ... dev lo` range) to `dst`, through `sock` (bound to `0.0.0.0:port`):
/// `IP_PKTINFO` picks the source address per datagram, so one socket speaks for a whole /16.
///
/// # Errors
/// `sendmsg` failed (e.g. `ENOBUFS` when the queue is full).
pub fn send_from(sock: &UdpSocket, src: Ipv4Addr, dst: SocketAddrV4, payload: &[u8]) -> Result<()> {
    let info = nix::libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: nix::libc::in_addr {
            s_addr: u32::from(src).to_be(),
        },
        ipi_addr: nix::libc::in_addr { s_addr: 0 },
    };
    let dst = SockaddrIn::from(dst);
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(payload)],
        &[ControlMessage::Ipv4PacketInfo(&info)],
        MsgFlags::empty(),
        Some(&dst),
    )?;
    Ok(())
}

/// One UDP datagram of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Sender.
    pub src: SocketAddrV4,
    /// Receiver.
    pub dst: SocketAddrV4,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// The IPv4 UDP datagrams of a classic pcap file written by tcpdump on an Ethernet (veth)
/// interface; other frames are skipped.
///
/// # Errors
/// The file cannot be read or is not a pcap file.
pub fn read_pcap(path: &Path) -> Result<Vec<Captured>> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let magic = data.get(..4).ok_or_else(|| anyhow!("empty pcap"))?;
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("{} is not a pcap file", path.display()),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let linktype = u32_at(20).ok_or_else(|| anyhow!("short pcap header"))?;
    if linktype != 1 {
        bail!("pcap link type {linktype}, want Ethernet (1)");
    }
    let mut out = Vec::new();
    let mut at = 24;
    while let Some(incl) = u32_at(at + 8) {
        let incl = usize::try_from(incl).unwrap_or(usize::MAX);
        let Some(frame) = data.get(at + 16..(at + 16).saturating_add(incl)) else {
            break;
        };
        at += 16 + incl;
        if let Some(c) = udp_of_ethernet(frame) {
            out.push(c);
        }
    }
    Ok(out)
}

fn udp_of_ethernet(frame: &[u8]) -> Option<Captured> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.first()? >> 4 != 4 || ip.get(9)? != &17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let addr = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    let (src, dst) = (addr(12)?, addr(16)?);
    let udp = ip.get(ihl..total)?;
    let port =
        |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*udp.get(at)?, *udp.get(at + 1)?])) };
    Some(Captured {
        src: SocketAddrV4::new(src, port(0)?),
        dst: SocketAddrV4::new(dst, port(2)?),
        payload: udp.get(8..)?.to_vec(),
    })
}

/// Paces a loop to `rate` iterations per second (0: as fast as possible).
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    rate: u64,
    done: u64,
}

impl Pacer {
    /// Starts now.
    pub fn new(rate: u64) -> Self {
        Self {
            start: Instant::now(),
            rate,
            done: 0,
        }
    }

    /// Counts one iteration, sleeping when ahead of the schedule.
    pub fn tick(&mut self) {
        self.done += 1;
        if self.rate == 0 || !self.done.is_multiple_of(64) {
            return;
        }
        let due = Duration::from_secs_f64(self.done as f64 / self.rate as f64);
        let spent = self.start.elapsed();
        if due > spent {
            std::thread::sleep(due - spent);
        }
    }

    /// Iterations so far and their rate per second.
    pub fn rate(&self) -> (u64, f64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        (self.done, self.done as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_request_parses_and_mutations_do_not_panic() {
        let mut rng = Rng::new(7);
        let spi = rng.spi();
        let m = init_request(&mut rng, spi, Some(&[1, 2, 3])).unwrap_or_default();
        let parsed = Message::parse(&m);
        assert!(parsed.is_ok(), "{parsed:?}");
        let mut mu = Mutator::new(1, vec![m]);
        for kind in Kind::ALL {
            for _ in 0..50 {
                let d = mu.make(kind);
                assert!(d.len() <= 65_507, "{kind:?}: {}", d.len());
            }
        }
    }

    #[test]
    fn classify_answers() {
        let mut rng = Rng::new(3);
        let spi = rng.spi();
        let req = Message::parse(&init_request(&mut rng, spi, None).unwrap_or_default());
        let Ok(req) = req else { return };
        let answer = Message {
            header: Header {
                flags: Flags::RESPONSE,
                responder_spi: Spi::ZERO,
                ..req.header
            },
            payloads: vec![Payload::Notify(Notify::new(
                NotifyType::COOKIE,
                vec![9; 33],
            ))],
        }
        .encode()
        .unwrap_or_default();
        assert_eq!(
            classify_init_answer(&answer, false, Some(spi)),
            InitAnswer::Cookie(vec![9; 33])
        );
        assert_eq!(
            classify_init_answer(&marked(&answer), true, Some(spi)),
            InitAnswer::Cookie(vec![9; 33])
        );
        assert_eq!(
            classify_init_answer(&answer, false, Some(Spi([2; 8]))),
            InitAnswer::Other
        );
    }
}
