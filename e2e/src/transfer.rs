//! A TCP transfer between two network namespaces with a checksum on both ends: the sockets
//! are made inside their namespaces (a socket stays in the namespace it was created in) and
//! the bytes are moved by ordinary threads. No netcat or iperf needed on the machine.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
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
    let listener = within(server_ns, || TcpListener::bind((server_addr, 0)))?
        .with_context(|| format!("listening on {server_addr} in {server_ns}"))?;
    let addr: SocketAddr = listener.local_addr()?;
    let server = thread::spawn(move || -> Result<(u64, u64)> {
        let (mut s, _) = listener.accept().context("accept")?;
        s.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 64 * 1024];
        let (mut n, mut h) = (0u64, FNV_START);
        loop {
            let k = s.read(&mut buf).context("reading the stream")?;
            if k == 0 {
                break;
            }
            h = fnv(h, buf.get(..k).unwrap_or_default());
            n += k as u64;
        }
        Ok((n, h))
    });
    let start = Instant::now();
    let mut c = within(client_ns, || TcpStream::connect_timeout(&addr, timeout))?
        .with_context(|| format!("connecting to {addr} from {client_ns}"))?;
    c.set_write_timeout(Some(timeout))?;
    let mut rng = Rng::new(seed);
    let mut left = len;
    let mut sent = FNV_START;
    let mut chunk = vec![0u8; 64 * 1024];
    while left > 0 {
        let k = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        let part = chunk.get_mut(..k).unwrap_or_default();
        for w in part.chunks_mut(8) {
            let r = rng.next_u64().to_le_bytes();
            w.copy_from_slice(r.get(..w.len()).unwrap_or_default());
        }
        c.write_all(part).context("writing the stream")?;
        sent = fnv(sent, part);
        left -= k as u64;
    }
    c.shutdown(Shutdown::Write)?;
    let (bytes, received) = server
        .join()
        .map_err(|_| anyhow!("the receiving thread panicked"))??;
    Ok(Transferred {
        bytes,
        sent,
        received,
        elapsed: start.elapsed(),
    })
}
