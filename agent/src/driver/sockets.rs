//! The IKE sockets: one UDP socket per local address on the IKE port and one on the NAT-T port,
//! each read by a task of its own into one queue that the driver drains, and the choice of
//! socket to send each datagram from. In a simulation ([`SimNetwork`]) the same queue is fed by
//! the simulator and sends go to it instead: nothing is bound.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use strait_crds::contract::StatusReason;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::dataplane::Dataplane;
use crate::error::TunnelError;

/// Datagrams waiting for the driver, across all sockets. Bounded so a flood cannot grow the
/// agent's memory without limit; the readers wait while it is full.
const QUEUE: usize = 1024;

/// One received datagram.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// The address it was sent to (ours).
    pub local: SocketAddr,
    /// Where it came from.
    pub remote: SocketAddr,
    /// The UDP payload.
    pub data: Vec<u8>,
}

/// A driver's network in a simulation (`Driver::simulated`): the simulator delivers datagrams
/// on `deliver` and takes what the driver sends from `sent`.
#[derive(Debug)]
pub struct SimNetwork {
    /// Datagrams for the driver, as if received on a socket.
    pub deliver: mpsc::Sender<Datagram>,
    /// What the driver sent, in order.
    pub sent: mpsc::UnboundedReceiver<strait_ike::Transmit>,
}

#[derive(Debug)]
struct Socket {
    local: SocketAddr,
    sock: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

/// Every bound IKE socket and the queue their readers fill.
#[derive(Debug)]
pub(crate) struct Sockets {
    ike_port: u16,
    natt_port: u16,
    bound: Vec<Socket>,
    /// In a simulation: where sends go (and nothing is bound).
    simulated: Option<mpsc::UnboundedSender<strait_ike::Transmit>>,
    tx: mpsc::Sender<Datagram>,
    rx: mpsc::Receiver<Datagram>,
}

impl Sockets {
    pub(crate) fn new(ike_port: u16, natt_port: u16) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            ike_port,
            natt_port,
            bound: Vec::new(),
            simulated: None,
            tx,
            rx,
        }
    }

    /// Sockets that bind nothing: the simulator behind the returned [`SimNetwork`] carries
    /// every datagram.
    pub(crate) fn simulated(ike_port: u16, natt_port: u16) -> (Self, SimNetwork) {
        let mut s = Self::new(ike_port, natt_port);
        let (sent_tx, sent) = mpsc::unbounded_channel();
        s.simulated = Some(sent_tx);
        let net = SimNetwork {
            deliver: s.tx.clone(),
            sent,
        };
        (s, net)
    }

    /// The next received datagram.
    pub(crate) async fn recv(&mut self) -> Option<Datagram> {
        self.rx.recv().await
    }

    /// Binds the IKE and NAT-T sockets on `ip` unless they are bound already, and lets the data
    /// plane prepare them (ESP-in-UDP, bypass policies).
    pub(crate) fn ensure(&mut self, ip: IpAddr, dp: &impl Dataplane) -> Result<(), TunnelError> {
        if self.simulated.is_some() {
            return Ok(());
        }
        let err = |m: String| TunnelError::new(StatusReason::SocketError, m);
        for (port, natt) in [(self.ike_port, false), (self.natt_port, true)] {
            let want = SocketAddr::new(ip, port);
            if self.bound.iter().any(|s| s.local == want) {
                continue;
            }
            let std_sock = std::net::UdpSocket::bind(want)
                .map_err(|e| err(format!("cannot bind UDP {want}: {e}")))?;
            std_sock
                .set_nonblocking(true)
                .map_err(|e| err(format!("UDP {want}: {e}")))?;
            let sock =
                UdpSocket::from_std(std_sock).map_err(|e| err(format!("UDP {want}: {e}")))?;
            // a kernel refusal keeps its own reason (a missing CAP_NET_ADMIN says so)
            dp.prepare_socket(&sock, natt)?;
            let sock = Arc::new(sock);
            let reader = tokio::spawn(read_loop(Arc::clone(&sock), want, self.tx.clone()));
            tracing::info!(local = %want, "listening");
            self.bound.push(Socket {
                local: want,
                sock,
                reader,
            });
        }
        Ok(())
    }

    /// Sends from the socket bound to `t.local`, or else from one on the same port and family.
    pub(crate) async fn send(&self, t: &strait_ike::Transmit) {
        if let Some(net) = &self.simulated {
            // the simulator gone means the simulation is over
            let _ = net.send(t.clone());
            return;
        }
        let sock = self.bound.iter().find(|s| s.local == t.local).or_else(|| {
            self.bound.iter().find(|s| {
                s.local.port() == t.local.port() && s.local.is_ipv4() == t.remote.is_ipv4()
            })
        });
        let Some(s) = sock else {
            tracing::warn!(local = %t.local, remote = %t.remote, "no socket to send from");
            return;
        };
        if let Err(e) = s.sock.send_to(&t.payload, t.remote).await {
            tracing::warn!(local = %t.local, remote = %t.remote, error = %e, "send failed");
        }
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for s in &self.bound {
            s.reader.abort();
        }
    }
}

async fn read_loop(sock: Arc<UdpSocket>, local: SocketAddr, tx: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, remote)) => {
                let data = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                if tx
                    .send(Datagram {
                        local,
                        remote,
                        data,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(%local, error = %e, "receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
