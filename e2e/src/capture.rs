//! Packet captures of IKE traffic and their dissection by tshark: the independent judge of our
//! wire format.
//!
//! A [`Capture`] runs `tcpdump` inside a namespace on one interface, filtered to the IKE ports
//! (UDP 500 and 4500), writing a pcap file. [`Capture::stop`] ends it cleanly; dropping it (also
//! when a test panics) kills it.
//!
//! Not dumpcap: it has no immediate mode, so the packets of its last ring block (up to 250 ms)
//! are lost when it is stopped, which dropped our final IKE_AUTH fragments in a test.
//! `tcpdump --immediate-mode -U` hands over and writes every packet as it comes. [`dissect`] runs tshark over the file and returns what was on
//! the wire per exchange type and direction, whether SKF payloads (RFC 7383 fragments) were seen,
//! and every line where tshark found something malformed.
//!
//! Without keys tshark cannot decrypt SK and SKF payloads: it checks the IKE header, the
//! cleartext payloads of IKE_SA_INIT, and the framing of every SK/SKF payload (lengths, IV,
//! integrity data, fragment numbers). [`Capture::stop_decrypting`] hands it the IKE SA keys that
//! charon logs at `ike = 4` ([`charon_ike_keys`]): then it also dissects every payload inside
//! (and reassembles SKF fragments), which is where our encoder could go wrong unseen.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;

use crate::cmd;
use crate::netns;

/// Only IKE: UDP 500 and 4500 (NAT-T, where IKE follows the non-ESP marker).
const FILTER: &str = "udp port 500 or udp port 4500";
/// How long tcpdump may take to open the interface.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long tcpdump gets to flush and exit after SIGINT before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// IKEv2 exchange types (RFC 7296 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exchange {
    /// 34
    IkeSaInit,
    /// 35
    IkeAuth,
    /// 36
    CreateChildSa,
    /// 37
    Informational,
}

impl Exchange {
    /// All four, in numeric order.
    pub const ALL: [Self; 4] = [
        Self::IkeSaInit,
        Self::IkeAuth,
        Self::CreateChildSa,
        Self::Informational,
    ];

    /// The exchange with wire value `v`.
    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            34 => Some(Self::IkeSaInit),
            35 => Some(Self::IkeAuth),
            36 => Some(Self::CreateChildSa),
            37 => Some(Self::Informational),
            _ => None,
        }
    }

    /// The RFC's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::IkeSaInit => "IKE_SA_INIT",
            Self::IkeAuth => "IKE_AUTH",
            Self::CreateChildSa => "CREATE_CHILD_SA",
            Self::Informational => "INFORMATIONAL",
        }
    }
}

/// The payload type of an Encrypted and Authenticated Fragment (RFC 7383 §2.5).
pub const SKF: u8 = 53;
/// The payload type of an Encrypted and Authenticated payload (RFC 7296 §3.14).
pub const SK: u8 = 46;

/// One IKE message on the wire, as tshark read it.
#[derive(Debug, Clone)]
pub struct Packet {
    /// tshark's frame number.
    pub frame: u32,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// UDP destination port (500 or 4500).
    pub dport: u16,
    /// The header's exchange type (`None`: not IKEv2 or unknown).
    pub exchange: Option<Exchange>,
    /// The header's R flag.
    pub response: bool,
    /// The type of every payload tshark found, in order (for SK/SKF: only the outer one).
    pub payloads: Vec<u8>,
    /// `(number, total)` of an SKF payload.
    pub fragment: Option<(u16, u16)>,
    /// The header's SPIs (hex), initiator's and responder's.
    pub spis: (String, String),
    /// tshark decrypted its SK/SKF payload (only with keys).
    pub decrypted: bool,
}

impl Packet {
    /// Whether it carries an SK or SKF payload.
    pub fn encrypted(&self) -> bool {
        self.payloads.first().is_some_and(|&t| t == SK || t == SKF)
    }

    /// Whether payload type `t` is in it (inside SK only when decrypted).
    pub fn has(&self, t: u8) -> bool {
        self.payloads.contains(&t)
    }
}

/// The Key Exchange payload type (RFC 7296 §3.4): in CREATE_CHILD_SA it means PFS or an IKE
/// rekey.
pub const KE: u8 = 34;
/// The Security Association payload type (RFC 7296 §3.3).
pub const SA: u8 = 33;

/// One IKE SA's keys as charon derived them (RFC 7296 §2.14).
#[derive(Clone, Default)]
pub struct IkeKeys {
    /// SK_ai (empty for an AEAD cipher).
    pub sk_ai: Vec<u8>,
    /// SK_ar (empty for an AEAD cipher).
    pub sk_ar: Vec<u8>,
    /// SK_ei (with the salt for AEAD).
    pub sk_ei: Vec<u8>,
    /// SK_er (with the salt for AEAD).
    pub sk_er: Vec<u8>,
}

impl std::fmt::Debug for IkeKeys {
    // test keys, but keys: their sizes are enough in a failure message
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IkeKeys(ai {}, ar {}, ei {}, er {} bytes)",
            self.sk_ai.len(),
            self.sk_ar.len(),
            self.sk_ei.len(),
            self.sk_er.len()
        )
    }
}

/// The names Wireshark's `ikev2_decryption_table` gives an IKE SA's algorithms.
#[derive(Debug, Clone, Copy)]
pub struct Cipher {
    /// Encryption algorithm.
    pub encr: &'static str,
    /// Integrity algorithm.
    pub integ: &'static str,
}

/// `aes256gcm16` (ENCR_AES_GCM_16, 256-bit key).
pub const AES256GCM16: Cipher = Cipher {
    encr: "AES-GCM-256 with 16 octet ICV [RFC5282]",
    integ: "NONE [RFC4306]",
};

/// The IKE SA keys in a charon log written at `ike = 4`, in the order charon derived them
/// (first IKE SA, then each rekeyed one).
pub fn charon_ike_keys(log: &str) -> Vec<IkeKeys> {
    let mut all: Vec<IkeKeys> = Vec::new();
    let mut lines = log.lines();
    while let Some(line) = lines.next() {
        // `HH:MM:SS TT[IKE] Sk_ei secret => 36 bytes @ 0x...`, then hex dump lines of thread TT
        let Some((head, rest)) = line.split_once("[IKE] ") else {
            continue;
        };
        let Some((name, len)) = rest.split_once(" secret => ") else {
            continue;
        };
        let Some(len) = len
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let thread = head.rsplit(' ').next().unwrap_or("");
        let mut bytes = Vec::with_capacity(len);
        for dump in lines.by_ref() {
            let Some((h, r)) = dump.split_once("[IKE] ") else {
                continue;
            };
            if h.rsplit(' ').next() != Some(thread) {
                // another thread's line in between
                continue;
            }
            let Some((_, hex)) = r.trim_start().split_once(": ") else {
                break;
            };
            // 16 bytes per line, then two spaces and the ASCII column
            let hex = hex.get(..48).unwrap_or(hex);
            bytes.extend(
                hex.split_whitespace()
                    .filter_map(|b| u8::from_str_radix(b, 16).ok()),
            );
            if bytes.len() >= len {
                break;
            }
        }
        bytes.truncate(len);
        match name.trim() {
            // Sk_d comes first in each derivation
            "Sk_d" => all.push(IkeKeys::default()),
            n => {
                if let Some(k) = all.last_mut() {
                    match n {
                        "Sk_ai" => k.sk_ai = bytes,
                        "Sk_ar" => k.sk_ar = bytes,
                        "Sk_ei" => k.sk_ei = bytes,
                        "Sk_er" => k.sk_er = bytes,
                        _ => {}
                    }
                }
            }
        }
    }
    all.retain(|k| !k.sk_ei.is_empty());
    all
}

/// What tshark made of a capture.
#[derive(Debug, Clone)]
pub struct Dissection {
    /// Every IKE packet, in capture order.
    pub packets: Vec<Packet>,
    /// Lines of `tshark -V` that say malformed or carry an expert error.
    pub errors: Vec<String>,
    /// Lines of `tshark -V` with an expert warning (reported, not judged).
    pub warnings: Vec<String>,
    /// tshark's one-line-per-packet summary, for messages.
    pub summary: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

impl Dissection {
    /// Packets of `exchange`, both directions, requests and responses.
    pub fn count(&self, exchange: Exchange) -> usize {
        self.packets
            .iter()
            .filter(|p| p.exchange == Some(exchange))
            .count()
    }

    /// Packets of `exchange` sent by `src`.
    pub fn count_from(&self, src: IpAddr, exchange: Exchange) -> usize {
        self.packets
            .iter()
            .filter(|p| p.src == src && p.exchange == Some(exchange))
            .count()
    }

    /// Packets carrying an SKF payload (fragments), both directions.
    pub fn fragments(&self) -> usize {
        self.packets
            .iter()
            .filter(|p| p.payloads.contains(&SKF))
            .count()
    }

    /// Packets carrying an SKF payload sent by `src`.
    pub fn fragments_from(&self, src: IpAddr) -> usize {
        self.packets
            .iter()
            .filter(|p| p.src == src && p.payloads.contains(&SKF))
            .count()
    }

    /// Packets with an SK or SKF payload tshark did not decrypt.
    pub fn undecrypted(&self) -> Vec<&Packet> {
        self.packets
            .iter()
            .filter(|p| p.encrypted() && !p.decrypted)
            .collect()
    }

    /// Decrypted packets of `exchange` sent by `src`.
    pub fn decrypted_from(&self, src: IpAddr, exchange: Exchange) -> Vec<&Packet> {
        self.packets
            .iter()
            .filter(|p| p.src == src && p.exchange == Some(exchange) && p.decrypted)
            .collect()
    }

    /// Whether any SKF payload was seen.
    pub fn saw_skf(&self) -> bool {
        self.fragments() > 0
    }

    /// `IKE_SA_INIT 2, IKE_AUTH 2, ...; SKF 7`, for logs and notes.
    pub fn counts(&self) -> String {
        let mut s = String::new();
        for e in Exchange::ALL {
            let _ = write!(s, "{} {}, ", e.name(), self.count(e));
        }
        let _ = write!(
            s,
            "SKF {} (of {} IKE packets, {} decrypted)",
            self.fragments(),
            self.packets.len(),
            self.packets.iter().filter(|p| p.decrypted).count()
        );
        s
    }

    /// [`Self::counts`] split by sender.
    pub fn counts_from(&self, src: IpAddr) -> String {
        let mut s = format!("from {src}: ");
        for e in Exchange::ALL {
            let _ = write!(s, "{} {}, ", e.name(), self.count_from(src, e));
        }
        let _ = write!(s, "SKF {}", self.fragments_from(src));
        s
    }
}

/// A running `tcpdump` in a namespace; killed on drop.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    pcap: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Capture {
    /// Starts `tcpdump` on `iface` inside `ns`, capturing IKE (UDP 500/4500) into a pcap file,
    /// and waits until it captures.
    ///
    /// # Errors
    /// tcpdump is missing, exited, or did not start capturing within 10 s.
    pub fn start(ns: &str, iface: &str) -> Result<Self> {
        cmd::require_program("tcpdump", "e2e/setup/packages.sh")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("strait-capture-{}-", std::process::id()))
            .tempdir()
            .context("creating capture directory")?;
        let pcap = dir.path().join("ike.pcap");
        let log = dir.path().join("tcpdump.log");
        let file = std::fs::File::create(&log)?;
        let pcap_arg = pcap.display().to_string();
        // tcpdump says "listening on" once the interface is open
        let args = [
            "tcpdump",
            "-i",
            iface,
            "-n",
            "-U",
            "--immediate-mode",
            "-w",
            &pcap_arg,
            FILTER,
        ];
        let mut c = netns::exec_command(ns, &args);
        c.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = c
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::display(&c)))?;
        let mut capture = Self {
            child: Some(child),
            pcap,
            log,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !capture.log().contains("listening on") {
            if let Some(child) = capture.child.as_mut()
                && let Some(st) = child.try_wait()?
            {
                capture.child = None;
                bail!("tcpdump exited at start ({st}):\n{}", capture.log());
            }
            if Instant::now() > deadline {
                bail!("tcpdump did not start capturing:\n{}", capture.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(capture)
    }

    /// The pcap file (complete once [`Self::stop`] returned).
    pub fn path(&self) -> &Path {
        &self.pcap
    }

    /// tcpdump's output.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the capture (SIGINT: tcpdump writes what it has and closes the file) and dissects
    /// it. Keeps the file for [`Self::path`] until the capture is dropped.
    ///
    /// # Errors
    /// tcpdump did not exit in time, or tshark failed.
    pub fn stop(&mut self) -> Result<Dissection> {
        self.halt()?;
        dissect(&self.pcap)
    }

    /// [`Self::stop`], with tshark decrypting: `keys` in the order the IKE SAs were made (as
    /// [`charon_ike_keys`] returns them), all using `cipher`.
    ///
    /// # Errors
    /// As [`Self::stop`].
    pub fn stop_decrypting(&mut self, keys: &[IkeKeys], cipher: Cipher) -> Result<Dissection> {
        self.halt()?;
        dissect_decrypting(&self.pcap, keys, cipher)
    }

    fn halt(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).context("pid")?;
            // `ip netns exec` execs tcpdump: the child is tcpdump itself
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
            let deadline = Instant::now() + STOP_GRACE;
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("tcpdump ignored SIGINT:\n{}", self.log());
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("STRAIT_KEEP_LOGS").is_some() {
            eprintln!("capture: keeping {}", self.dir.path().display());
            self.dir.disable_cleanup(true);
        }
    }
}

/// The tshark fields read per packet, in this order.
const FIELDS: [&str; 11] = [
    "frame.number",
    "ip.src",
    "ip.dst",
    "udp.dstport",
    "isakmp.exchangetype",
    "isakmp.flag_r",
    "isakmp.typepayload",
    "isakmp.frag.number",
    "isakmp.frag.total",
    "isakmp.ispi",
    "isakmp.rspi",
];

/// Dissects `pcap` with tshark: the IKE packets, and every malformed/expert-error line of the
/// full dissection (`tshark -V`).
///
/// # Errors
/// tshark is missing or failed, or printed a line this cannot read.
pub fn dissect(pcap: &Path) -> Result<Dissection> {
    run_dissection(pcap, &[])
}

/// [`dissect`] with tshark decrypting SK/SKF payloads: `keys[i]` belongs to the i-th IKE SA to
/// appear in the capture (its SPI pair first seen with a responder SPI), as IKE SAs appear in the
/// order they are made.
///
/// # Errors
/// As [`dissect`].
pub fn dissect_decrypting(pcap: &Path, keys: &[IkeKeys], cipher: Cipher) -> Result<Dissection> {
    let plain = run_dissection(pcap, &[])?;
    let mut order: Vec<&(String, String)> = Vec::new();
    for p in &plain.packets {
        if p.spis.1.chars().any(|c| c != '0') && !order.contains(&&p.spis) {
            order.push(&p.spis);
        }
    }
    let prefs: Vec<String> = order
        .iter()
        .zip(keys)
        .map(|((i, r), k)| {
            // hex fields unquoted, enum names quoted
            format!(
                "uat:ikev2_decryption_table:{i},{r},{},{},\"{}\",{},{},\"{}\"",
                hex(&k.sk_ei),
                hex(&k.sk_er),
                cipher.encr,
                hex(&k.sk_ai),
                hex(&k.sk_ar),
                cipher.integ
            )
        })
        .collect();
    run_dissection(pcap, &prefs)
}

fn run_dissection(pcap: &Path, prefs: &[String]) -> Result<Dissection> {
    cmd::require_program("tshark", "e2e/setup/packages.sh")?;
    let file = pcap.display().to_string();
    let mut base: Vec<&str> = vec!["-n", "-r", &file];
    for p in prefs {
        base.extend(["-o", p]);
    }
    let mut args = base.clone();
    args.extend(["-Y", "isakmp", "-T", "fields"]);
    args.extend([
        "-E",
        "separator=/t",
        "-E",
        "aggregator=,",
        "-E",
        "occurrence=a",
    ]);
    for f in FIELDS {
        args.extend(["-e", f]);
    }
    let fields = cmd::run("tshark", &args)?;
    let mut packets = Vec::new();
    for line in fields.stdout.lines().filter(|l| !l.trim().is_empty()) {
        packets.push(parse_line(line).with_context(|| format!("tshark printed {line:?}"))?);
    }
    if !prefs.is_empty() {
        let mut a = base.clone();
        a.extend([
            "-Y",
            "isakmp.enc.decrypted",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ]);
        let decrypted: Vec<u32> = cmd::run("tshark", &a)?
            .stdout
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for p in &mut packets {
            p.decrypted = decrypted.contains(&p.frame);
        }
    }
    let mut a = base.clone();
    a.push("-V");
    let full = cmd::run("tshark", &a)?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut frame = "";
    for line in full.stdout.lines() {
        if line.starts_with("Frame ") {
            frame = line;
        }
        let l = line.trim();
        if l.contains("Malformed") || l.contains("Expert Info (Error") {
            errors.push(format!("{frame}: {l}"));
        } else if l.contains("Expert Info (Warning") {
            warnings.push(format!("{frame}: {l}"));
        }
    }
    let summary = cmd::run("tshark", &base)?.stdout;
    Ok(Dissection {
        packets,
        errors,
        warnings,
        summary,
    })
}

fn parse_line(line: &str) -> Result<Packet> {
    let cols: Vec<&str> = line.split('\t').collect();
    let col = |i: usize| cols.get(i).copied().unwrap_or("").trim();
    let ints = |s: &str| -> Result<Vec<u16>> {
        s.split(',')
            .filter(|v| !v.is_empty())
            .map(|v| v.parse().with_context(|| format!("not a number: {v:?}")))
            .collect()
    };
    // a message can hold several IKE headers only when tshark mis-splits; the first one counts
    let exchange: Option<u8> = col(4).split(',').next().and_then(|v| v.parse().ok());
    let payloads = ints(col(6))?
        .into_iter()
        .map(u8::try_from)
        .collect::<Result<Vec<u8>, _>>()?;
    let fragment = match (ints(col(7))?.first(), ints(col(8))?.first()) {
        (Some(&n), Some(&t)) => Some((n, t)),
        _ => None,
    };
    Ok(Packet {
        frame: col(0).parse().context("frame number")?,
        src: col(1).parse().context("ip.src")?,
        dst: col(2).parse().context("ip.dst")?,
        dport: col(3)
            .split(',')
            .next()
            .unwrap_or("")
            .parse()
            .context("udp.dstport")?,
        exchange: exchange.and_then(Exchange::from_wire),
        response: matches!(col(5).split(',').next(), Some("1" | "True" | "true")),
        payloads,
        fragment,
        spis: (
            col(9).split(',').next().unwrap_or("").to_owned(),
            col(10).split(',').next().unwrap_or("").to_owned(),
        ),
        decrypted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_fragment_line() -> Result<()> {
        let p = parse_line("7\t192.0.2.2\t192.0.2.1\t4500\t35\t1\t53\t2\t5\tab\tcd")?;
        assert_eq!(p.spis, ("ab".to_owned(), "cd".to_owned()));
        assert!(p.encrypted());
        assert_eq!(p.frame, 7);
        assert_eq!(p.exchange, Some(Exchange::IkeAuth));
        assert!(p.response);
        assert_eq!(p.payloads, vec![SKF]);
        assert_eq!(p.fragment, Some((2, 5)));
        Ok(())
    }

    #[test]
    fn reads_keys_from_a_charon_log() {
        let log = "\
12:00:00 14[IKE] Sk_d secret => 4 bytes @ 0x1
12:00:00 14[IKE]    0: 01 02 03 04                                      ....
12:00:00 14[IKE] Sk_ei secret => 20 bytes @ 0x2
12:00:00 09[NET] received packet: from 192.0.2.1[500] to 192.0.2.2[500] (80 bytes)
12:00:00 14[IKE]    0: 29 27 9B 2A A5 83 91 D0 6E 58 03 C3 5B E0 62 6E  )'.*....nX..[.bn
12:00:00 14[IKE]   16: DD 15 94 1B                                      ....
12:00:00 14[IKE] Sk_er secret => 2 bytes @ 0x3
12:00:00 14[IKE]    0: FF 02                                            ..
12:00:09 11[IKE] Sk_d secret => 1 bytes @ 0x4
12:00:09 11[IKE]    0: 00                                               .
12:00:09 11[IKE] Sk_ei secret => 1 bytes @ 0x5
12:00:09 11[IKE]    0: 0A                                               .
";
        let keys = charon_ike_keys(log);
        assert_eq!(keys.len(), 2);
        assert_eq!(
            hex(&keys[0].sk_ei),
            "29279b2aa58391d06e5803c35be0626edd15941b"
        );
        assert_eq!(keys[0].sk_er, vec![0xff, 0x02]);
        assert!(keys[0].sk_ai.is_empty());
        assert_eq!(keys[1].sk_ei, vec![0x0a]);
    }

    #[test]
    fn parses_a_cleartext_line() -> Result<()> {
        let p = parse_line("1\t192.0.2.1\t192.0.2.2\t500\t34\t0\t33,34,40,41,41,41\t\t")?;
        assert_eq!(p.exchange, Some(Exchange::IkeSaInit));
        assert!(!p.response);
        assert_eq!(p.payloads, vec![33, 34, 40, 41, 41, 41]);
        assert_eq!(p.fragment, None);
        Ok(())
    }
}
