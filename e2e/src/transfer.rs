//! A TCP transfer between two network namespaces with a checksum on both ends: the sockets
//! are made inside their namespaces (a socket stays in the namespace it was created in) and
//! the bytes are moved by ordinary threads. No netcat or iperf needed on the machine. A
//! [`Stream`] keeps a connection busy at a steady pace across an event (a failover).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};

use crate::flood::Rng;

/// Runs `f` with this thread inside the network namespace `ns`, then returns to where it was.
///
/// # Errors
/// The namespace could not be entered or left.
pub fn within<T>(ns: &str, f: impl FnOnce() -> T) -> Result<T> {
    let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    let there = File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening network namespace {ns}"))?;
    setns(&there, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {ns}"))?;
    let out = f();
    setns(&home, CloneFlags::CLONE_NEWNET).context("returning to the original namespace")?;
    Ok(out)
}

/// FNV-1a, 64 bits: enough to tell a corrupted or truncated stream from the sent one.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// What one transfer moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes the receiver read.
    pub bytes: u64,
    /// The sender's checksum of what it wrote.
    pub sent: u64,
    /// The receiver's checksum of what it read.
    pub received: u64,
    /// From connect to the receiver's end of stream.
    pub elapsed: Duration,
}

impl Transferred {
    /// Every byte arrived, unchanged.
    pub fn intact(&self, len: u64) -> bool {
        self.bytes == len && self.sent == self.received
    }
}

/// Reads `s` to its end: (bytes, checksum, the longest pause between two reads).
fn receive(mut s: TcpStream, timeout: Duration) -> Result<(u64, u64, Duration)> {
    s.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut n, mut h, mut pause) = (0u64, FNV_START, Duration::ZERO);
    let mut last: Option<Instant> = None;
    loop {
        let k = s.read(&mut buf).context("reading the stream")?;
        if k == 0 {
            break;
        }
        let now = Instant::now();
        if let Some(l) = last {
            pause = pause.max(now - l);
        }
        last = Some(now);
        h = fnv(h, buf.get(..k).unwrap_or_default());
        n += k as u64;
    }
    Ok((n, h, pause))
}

/// Fills `part` with the next bytes of `rng`.
fn fill(rng: &mut Rng, part: &mut [u8]) {
    for w in part.chunks_mut(8) {
        let r = rng.next_u64().to_le_bytes();
        w.copy_from_slice(r.get(..w.len()).unwrap_or_default());
    }
}

/// A listener in `server_ns` on `server_addr` whose first connection is read to its end on a
/// thread, and a client socket connected to it from `client_ns`.
type Receiver = thread::JoinHandle<Result<(u64, u64, Duration)>>;
fn connect(
    server_ns: &str,
    server_addr: Ipv4Addr,
    client_ns: &str,
    timeout: Duration,
) -> Result<(Receiver, TcpStream)> {
    let listener = within(server_ns, || TcpListener::bind((server_addr, 0)))?
        .with_context(|| format!("listening on {server_addr} in {server_ns}"))?;
    let addr: SocketAddr = listener.local_addr()?;
    let server = thread::spawn(move || -> Result<(u64, u64, Duration)> {
        let (s, _) = listener.accept().context("accept")?;
        receive(s, timeout)
    });
    let c = within(client_ns, || TcpStream::connect_timeout(&addr, timeout))?
        .with_context(|| format!("connecting to {addr} from {client_ns}"))?;
    c.set_write_timeout(Some(timeout))?;
    Ok((server, c))
}

fn join(server: Receiver) -> Result<(u64, u64, Duration)> {
    server
        .join()
        .map_err(|_| anyhow!("the receiving thread panicked"))?
}

/// Sends `len` pseudo-random bytes (from `seed`) from namespace `client_ns` to a listener in
/// `server_ns` on `server_addr`, over TCP; every socket operation times out after `timeout`.
///
/// # Errors
/// A namespace, the listener, the connection or the stream failed (a timeout included).
pub fn tcp(
    server_ns: &str,
    server_addr: Ipv4Addr,
    client_ns: &str,
    len: u64,
    seed: u64,
    timeout: Duration,
) -> Result<Transferred> {
    let start = Instant::now();
    let (server, mut c) = connect(server_ns, server_addr, client_ns, timeout)?;
    let mut rng = Rng::new(seed);
    let mut left = len;
    let mut sent = FNV_START;
    let mut chunk = vec![0u8; 64 * 1024];
    while left > 0 {
        let k = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        let part = chunk.get_mut(..k).unwrap_or_default();
        fill(&mut rng, part);
        c.write_all(part).context("writing the stream")?;
        sent = fnv(sent, part);
        left -= k as u64;
    }
    c.shutdown(Shutdown::Write)?;
    let (bytes, received, _) = join(server)?;
    Ok(Transferred {
        bytes,
        sent,
        received,
        elapsed: start.elapsed(),
    })
}

/// A TCP connection kept busy at a steady pace, `chunk` bytes every `interval`, until
/// [`Stream::finish`]: one that must survive what happens meanwhile (a gateway failover).
#[derive(Debug)]
pub struct Stream {
    stop: Arc<AtomicBool>,
    sender: thread::JoinHandle<Result<(u64, u64)>>,
    receiver: Receiver,
    start: Instant,
}

/// What a [`Stream`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streamed {
    /// Bytes and checksums on both ends.
    pub transferred: Transferred,
    /// Bytes the sender wrote.
    pub sent_bytes: u64,
    /// The longest time the receiver waited between two reads.
    pub longest_pause: Duration,
}

impl Streamed {
    /// Every byte written arrived, unchanged.
    pub fn intact(&self) -> bool {
        self.transferred.intact(self.sent_bytes)
    }
}

impl Stream {
    /// Connects from `client_ns` to a listener in `server_ns` on `server_addr` and starts
    /// writing; every socket operation times out after `timeout`.
    ///
    /// # Errors
    /// A namespace, the listener or the connection failed.
    pub fn start(
        server_ns: &str,
        server_addr: Ipv4Addr,
        client_ns: &str,
        chunk: usize,
        interval: Duration,
        seed: u64,
        timeout: Duration,
    ) -> Result<Self> {
        let start = Instant::now();
        let (receiver, mut c) = connect(server_ns, server_addr, client_ns, timeout)?;
        let stop = Arc::new(AtomicBool::new(false));
        let halt = Arc::clone(&stop);
        let sender = thread::spawn(move || -> Result<(u64, u64)> {
            let mut rng = Rng::new(seed);
            let (mut n, mut sent) = (0u64, FNV_START);
            let mut part = vec![0u8; chunk];
            while !halt.load(Ordering::Relaxed) {
                fill(&mut rng, &mut part);
                c.write_all(&part).context("writing the stream")?;
                sent = fnv(sent, &part);
                n += part.len() as u64;
                thread::sleep(interval);
            }
            c.shutdown(Shutdown::Write)?;
            Ok((n, sent))
        });
        Ok(Self {
            stop,
            sender,
            receiver,
            start,
        })
    }

    /// Stops writing, closes the stream and waits for the receiver to read it to its end.
    ///
    /// # Errors
    /// Writing or reading failed (a timeout included), or a thread panicked.
    pub fn finish(self) -> Result<Streamed> {
        self.stop.store(true, Ordering::Relaxed);
        let (sent_bytes, sent) = self
            .sender
            .join()
            .map_err(|_| anyhow!("the sending thread panicked"))??;
        let (bytes, received, longest_pause) = join(self.receiver)?;
        Ok(Streamed {
            transferred: Transferred {
                bytes,
                sent,
                received,
                elapsed: self.start.elapsed(),
            },
            sent_bytes,
            longest_pause,
        })
    }
}
