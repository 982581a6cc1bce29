//! Inbound SPIs from the kernel (`XFRM_MSG_ALLOCSPI`), synchronously.
//!
//! The IKE endpoint picks a CHILD SA's inbound SPI while it builds a message, inside a
//! synchronous call; asking the kernel then needs a blocking request. It is one short netlink
//! round trip (the kernel answers from memory), on a socket of its own with a receive timeout,
//! so it cannot stall the caller for long. The kernel keeps a larval SA with the SPI (state
//! `acquire`, no keys) until the keyed SA replaces it ([`crate::Xfrm::update_sa`]) or its
//! acquire timeout (30 s by default) ends it; the SPI is unique among every SA of the
//! destination on the node, ours or another daemon's, which a random draw is not.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_xfrm::XfrmMessage;
use netlink_packet_xfrm::constants::IPPROTO_ESP;
use netlink_packet_xfrm::state::AllocSpiMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_XFRM};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::netlink::{Kind, RECV_BUF, Replies, absorb, encode};
use crate::ownership::Reqid;
use crate::sa::Mode;

/// How long one allocation may wait for the kernel's answer.
const TIMEOUT: Duration = Duration::from_millis(500);

/// A blocking `NETLINK_XFRM` socket for SPI allocation only.
pub struct SpiAllocator {
    sock: Socket,
    seq: u32,
}

impl std::fmt::Debug for SpiAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpiAllocator(NETLINK_XFRM)")
    }
}

impl SpiAllocator {
    /// Opens the socket (no tokio needed).
    pub fn open() -> Result<Self> {
        const OP: &str = "open SPI socket";
        let mut sock = Socket::new(NETLINK_XFRM).map_err(|e| Error::io(OP, e))?;
        sock.bind(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io(OP, e))?;
        sock.set_cap_ack(true).map_err(|e| Error::io(OP, e))?;
        let _ = sock.set_ext_ack(true);
        // SO_RCVTIMEO: a struct timeval (seconds, then microseconds), native layout
        let usec = libc::suseconds_t::try_from(TIMEOUT.as_micros()).unwrap_or(500_000);
        let mut tv = Vec::new();
        tv.extend_from_slice(&libc::time_t::default().to_ne_bytes());
        tv.extend_from_slice(&usec.to_ne_bytes());
        crate::socket::setsockopt_bytes(sock.as_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
            .map_err(|e| Error::io(OP, e))?;
        Ok(Self { sock, seq: 0 })
    }

    /// Reserves a free SPI in `range` for an inbound ESP SA from `src` to `dst` tagged with
    /// `reqid` (which must be ours), as [`crate::Xfrm::alloc_spi`] does, blocking.
    pub fn alloc(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        reqid: Reqid,
        mode: Mode,
        range: RangeInclusive<u32>,
    ) -> Result<u32> {
        const OP: &str = "allocate SPI";
        if !reqid.is_ours() {
            return Err(Error::invalid("reqid", "use Reqid::ours"));
        }
        if *range.start() < 256 || range.start() > range.end() {
            return Err(Error::invalid("SPI range", format!("{range:?}")));
        }
        let mut m = AllocSpiMessage::default();
        m.spi_info.info.source(&src);
        m.spi_info.info.destination(&dst);
        m.spi_info.info.reqid = reqid.raw();
        m.spi_info.info.mode = mode.raw()?;
        m.spi_info.protocol(IPPROTO_ESP);
        m.spi_info.spi_range(*range.start(), *range.end());
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let out = encode(XfrmMessage::AllocSpi(m), NLM_F_REQUEST | NLM_F_ACK, seq);
        self.sock.send(&out, 0).map_err(|e| Error::io(OP, e))?;
        let mut replies = Replies::default();
        let mut interrupted = false;
        let mut buf = Zeroizing::new(Vec::with_capacity(RECV_BUF));
        loop {
            buf.clear();
            self.sock.recv(&mut *buf, 0).map_err(|e| Error::io(OP, e))?;
            let done = absorb(
                OP,
                Kind::Ack,
                seq,
                None,
                &buf,
                &mut replies,
                &mut interrupted,
            );
            buf.as_mut_slice().zeroize();
            if done? {
                break;
            }
        }
        replies
            .0
            .iter()
            .find_map(|r| match r {
                XfrmMessage::AddSa(sa) => Some(sa.user_sa_info.id.spi),
                _ => None,
            })
            .ok_or_else(|| Error::protocol(OP, "no SA in the ALLOCSPI reply"))
    }
}
