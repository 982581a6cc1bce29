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
//! tshark gets no keys, so it cannot decrypt SK and SKF payloads: it checks the IKE header, the
//! cleartext payloads of IKE_SA_INIT, and the framing of every SK/SKF payload (lengths, IV,
//! integrity data, fragment numbers), which is what a malformed encoding would break first.

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
            "SKF {} (of {} IKE packets)",
            self.fragments(),
            self.packets.len()
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
        dissect(&self.pcap)
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
const FIELDS: [&str; 9] = [
    "frame.number",
    "ip.src",
    "ip.dst",
    "udp.dstport",
    "isakmp.exchangetype",
    "isakmp.flag_r",
    "isakmp.typepayload",
    "isakmp.frag.number",
    "isakmp.frag.total",
];

/// Dissects `pcap` with tshark: the IKE packets, and every malformed/expert-error line of the
/// full dissection (`tshark -V`).
///
/// # Errors
/// tshark is missing or failed, or printed a line this cannot read.
pub fn dissect(pcap: &Path) -> Result<Dissection> {
    cmd::require_program("tshark", "e2e/setup/packages.sh")?;
    let file = pcap.display().to_string();
    let mut args: Vec<&str> = vec!["-n", "-r", &file, "-Y", "isakmp", "-T", "fields"];
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
    let full = cmd::run("tshark", &["-n", "-r", &file, "-V"])?;
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
    let summary = cmd::run("tshark", &["-n", "-r", &file])?.stdout;
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_fragment_line() -> Result<()> {
        let p = parse_line("7\t192.0.2.2\t192.0.2.1\t4500\t35\t1\t53\t2\t5")?;
        assert_eq!(p.frame, 7);
        assert_eq!(p.exchange, Some(Exchange::IkeAuth));
        assert!(p.response);
        assert_eq!(p.payloads, vec![SKF]);
        assert_eq!(p.fragment, Some((2, 5)));
        Ok(())
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
