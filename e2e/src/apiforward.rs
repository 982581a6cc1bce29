//! A TCP port of the root namespace made reachable inside a network namespace, at the same
//! `127.0.0.1:PORT`: how agents running in namespaces-as-nodes reach the API server, which the
//! control plane binds to the root namespace's loopback (a namespace cannot reach another's
//! loopback). Nothing is configured in either namespace: one thread of this process enters the
//! node's namespace just long enough to bind the listener there, then accepts in the root
//! namespace and connects each accepted connection to the target. The same kubeconfig (server
//! `https://127.0.0.1:PORT`, certificate SAN 127.0.0.1) then works inside and outside.

use std::fs::File;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use nix::sched::{CloneFlags, setns};

/// Forwards `127.0.0.1:PORT` inside one namespace to `target` in the root namespace; stops
/// (listener closed) on drop.
#[derive(Debug)]
pub struct PortForward {
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    ns: String,
}

fn bind_in(ns: &str, port: u16) -> Result<TcpListener> {
    let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    let there = File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening network namespace {ns}"))?;
    setns(&there, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {ns}"))?;
    let bound = TcpListener::bind(("127.0.0.1", port));
    // back home before anything else, whatever bind did
    setns(&home, CloneFlags::CLONE_NEWNET).context("returning to the root namespace")?;
    bound.with_context(|| format!("binding 127.0.0.1:{port} in {ns}"))
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

impl PortForward {
    /// Starts forwarding `127.0.0.1:<target port>` in namespace `ns` to `target`.
    ///
    /// # Errors
    /// The namespace does not exist, or the port cannot be bound there.
    pub fn start(ns: &str, target: SocketAddr) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, ns2) = (Arc::clone(&stop), ns.to_owned());
        let acceptor = thread::Builder::new()
            .name(format!("fwd-{ns}"))
            .spawn(move || {
                let listener = match bind_in(&ns2, target.port())
                    .and_then(|l| l.set_nonblocking(true).map(|()| l).map_err(Into::into))
                {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                while !stop2.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((inside, _)) => {
                            let _ = inside.set_nonblocking(false);
                            let Ok(outside) = TcpStream::connect(target) else {
                                continue;
                            };
                            let (Ok(i2), Ok(o2)) = (inside.try_clone(), outside.try_clone()) else {
                                continue;
                            };
                            thread::spawn(move || pipe(inside, outside));
                            thread::spawn(move || pipe(o2, i2));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .context("spawning the forwarding thread")?;
        rx.recv()
            .map_err(|_| anyhow!("the forwarding thread for {ns} died"))??;
        Ok(Self {
            stop,
            acceptor: Some(acceptor),
            ns: ns.to_owned(),
        })
    }

    /// The namespace it serves.
    pub fn ns(&self) -> &str {
        &self.ns
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}
