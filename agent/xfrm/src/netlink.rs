//! The request/response transport over one `NETLINK_XFRM` socket.
//!
//! Why our own (small) transport instead of xfrmnetlink's builders over netlink-proto: SA
//! messages carry keys in both directions (the kernel returns them in every SA dump and GETSA
//! reply), and those crates copy them into plain `Vec`s and reusable buffers that are never
//! wiped. Here every byte buffer that can hold a key is a `Zeroizing` buffer, parsed messages
//! are scrubbed before they are dropped, and the socket asks the kernel (`NETLINK_CAP_ACK`) not
//! to echo our request back in error replies. The message types still come from
//! netlink-packet-xfrm.
//!
//! Requests are serialised by a mutex: XFRM operations are quick, and one outstanding request
//! keeps sequence matching trivial. A request abandoned midway (its future dropped) leaves
//! replies behind; they are skipped by sequence number.

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, ParseableParametrized};
use netlink_packet_core::{
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_xfrm::constants::{
    XFRM_MSG_ACQUIRE, XFRM_MSG_EXPIRE, XFRM_MSG_MAPPING, XFRM_MSG_NEWPOLICY, XFRM_MSG_NEWSA,
    XFRM_MSG_POLEXPIRE, XFRM_MSG_UPDPOLICY, XFRM_MSG_UPDSA,
};
use netlink_packet_xfrm::{XfrmAttrs, XfrmMessage};
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols::NETLINK_XFRM};
use tokio::sync::Mutex;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result, Unsupported};

/// Large enough for any datagram the kernel sends us (dump batches are at most 32 KiB).
pub(crate) const RECV_BUF: usize = 64 * 1024;

/// Opens a `NETLINK_XFRM` socket, subscribed to `groups` (a bit mask, 0 for none).
pub(crate) fn open_socket(op: &'static str, groups: u32) -> Result<TokioSocket> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::Unsupported(Unsupported::NoRuntime));
    }
    let mut sock = TokioSocket::new(NETLINK_XFRM).map_err(|e| Error::io(op, e))?;
    sock.socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .map_err(|e| Error::io(op, e))?;
    // Error replies then carry only our header, never the request (which may hold keys).
    sock.socket_ref()
        .set_cap_ack(true)
        .map_err(|e| Error::io(op, e))?;
    // Best effort: the kernel's own words in errors ("Invalid mode"), when it has any.
    let _ = sock.socket_ref().set_ext_ack(true);
    Ok(sock)
}

/// Replies to one request. Key material inside is wiped on drop.
#[derive(Debug, Default)]
pub(crate) struct Replies(pub(crate) Vec<XfrmMessage>);

impl Drop for Replies {
    fn drop(&mut self) {
        for m in &mut self.0 {
            scrub_message(m);
        }
    }
}

/// Overwrites every key in a message.
pub(crate) fn scrub_message(msg: &mut XfrmMessage) {
    if let XfrmMessage::AddSa(m) | XfrmMessage::UpdateSa(m) = msg {
        scrub_attrs(&mut m.nlas);
    }
}

fn scrub_attrs(nlas: &mut [XfrmAttrs]) {
    for a in nlas {
        match a {
            XfrmAttrs::AuthenticationAlg(alg)
            | XfrmAttrs::EncryptionAlg(alg)
            | XfrmAttrs::CompressionAlg(alg) => alg.alg_key.zeroize(),
            XfrmAttrs::AuthenticationAlgTrunc(alg) => alg.alg_key.zeroize(),
            XfrmAttrs::EncryptionAlgAead(alg) => alg.alg_key.zeroize(),
            _ => {}
        }
    }
}

/// One netlink message inside a received datagram.
#[derive(Debug)]
pub(crate) struct RawMsg<'a> {
    pub(crate) mtype: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    pub(crate) payload: &'a [u8],
}

/// Splits a datagram into netlink messages without copying.
pub(crate) fn split(mut data: &[u8]) -> impl Iterator<Item = Result<RawMsg<'_>>> {
    std::iter::from_fn(move || {
        if data.len() < 16 {
            return None;
        }
        let nb = match NetlinkBuffer::new_checked(data) {
            Ok(nb) => nb,
            Err(e) => {
                data = &[];
                return Some(Err(Error::protocol("netlink receive", e.to_string())));
            }
        };
        let len = nb.length() as usize;
        let msg = RawMsg {
            mtype: nb.message_type(),
            flags: nb.flags(),
            seq: nb.sequence_number(),
            payload: nb.payload(),
        };
        let next = len.div_ceil(4) * 4;
        data = data.get(next..).unwrap_or(&[]);
        Some(Ok(msg))
    })
}

/// Decodes the XFRM message types we consume; `None` for everything else. The length guard
/// keeps netlink-packet-xfrm's parsers (which slice without checking) from ever panicking.
pub(crate) fn parse_inner(op: &'static str, raw: &RawMsg<'_>) -> Result<Option<XfrmMessage>> {
    let min = match raw.mtype {
        XFRM_MSG_NEWSA | XFRM_MSG_UPDSA => 224,
        XFRM_MSG_NEWPOLICY | XFRM_MSG_UPDPOLICY => 168,
        XFRM_MSG_EXPIRE => 232,
        XFRM_MSG_ACQUIRE => 280,
        XFRM_MSG_POLEXPIRE => 176,
        XFRM_MSG_MAPPING => 64,
        _ => return Ok(None),
    };
    if raw.payload.len() < min {
        return Err(Error::protocol(
            op,
            format!(
                "message type {} is {} bytes, expected at least {min}",
                raw.mtype,
                raw.payload.len()
            ),
        ));
    }
    XfrmMessage::parse_with_param(raw.payload, raw.mtype)
        .map(Some)
        .map_err(|e| Error::protocol(op, e.to_string()))
}

/// Reads the errno and the extended-ack message of an `NLMSG_ERROR` payload.
fn parse_error(raw: &RawMsg<'_>) -> (i32, Option<String>) {
    let code = ne_u32(raw.payload, 0)
        .map(|c| c as i32)
        .unwrap_or(-libc::EIO);
    let mut detail = None;
    if raw.flags & NLM_F_ACK_TLVS != 0 {
        // Our echoed request follows the code: only its 16-byte header when capped.
        let echoed = if raw.flags & NLM_F_CAPPED != 0 {
            16
        } else {
            ne_u32(raw.payload, 4).map_or(usize::MAX, |l| l as usize)
        };
        let mut tlvs = raw
            .payload
            .get(4usize.saturating_add(echoed)..)
            .unwrap_or(&[]);
        while let (Some(len), Some(typ)) = (ne_u16(tlvs, 0), ne_u16(tlvs, 2)) {
            let len = usize::from(len);
            if len < 4 {
                break;
            }
            // NLMSGERR_ATTR_MSG: a NUL-terminated string.
            if typ == 1
                && let Some(v) = tlvs.get(4..len)
            {
                detail = Some(
                    String::from_utf8_lossy(v)
                        .trim_end_matches('\0')
                        .to_string(),
                );
            }
            tlvs = tlvs.get(len.div_ceil(4) * 4..).unwrap_or(&[]);
        }
    }
    // i32::MIN has no negation: an answer no kernel sends, read as an I/O error (the fuzz
    // target found the overflow)
    (code.checked_neg().unwrap_or(libc::EIO), detail)
}

/// A native-endian u16 at `at`, if the bytes are there.
pub(crate) fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    let b = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(b.try_into().ok()?))
}

/// A native-endian u32 at `at`, if the bytes are there.
pub(crate) fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    let b = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

struct Inner {
    sock: TokioSocket,
    seq: u32,
    buf: Zeroizing<Vec<u8>>,
}

/// One request socket.
pub(crate) struct Conn {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn(NETLINK_XFRM)")
    }
}

/// How the kernel ends its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Zero or more replies, then an ACK (or an error).
    Ack,
    /// A multi-part dump ending in `NLMSG_DONE`.
    Dump,
}

impl Conn {
    pub(crate) fn open() -> Result<Self> {
        let sock = open_socket("open netlink socket", 0)?;
        Ok(Conn {
            inner: Mutex::new(Inner {
                sock,
                seq: 0,
                buf: Zeroizing::new(Vec::with_capacity(RECV_BUF)),
            }),
        })
    }

    /// Sends `msg` and collects the replies. `alg` names the algorithm the request carries,
    /// for a precise "unsupported algorithm" error.
    pub(crate) async fn request(
        &self,
        op: &'static str,
        msg: XfrmMessage,
        kind: Kind,
        alg: Option<&str>,
    ) -> Result<Replies> {
        let flags = match kind {
            Kind::Ack => NLM_F_REQUEST | NLM_F_ACK,
            Kind::Dump => NLM_F_REQUEST | NLM_F_DUMP,
        };
        // Encode (and scrub the message's keys) before waiting for the lock, so a future
        // dropped while it waits leaves no unwiped copy behind.
        let mut out = encode(msg, flags, 0);
        let mut guard = self.inner.lock().await;
        let Inner { sock, seq, buf } = &mut *guard;
        *seq = seq.wrapping_add(1).max(1);
        let seq = *seq;
        NetlinkBuffer::new(&mut out[..]).set_sequence_number(seq);
        sock.send_to(&out, &SocketAddr::new(0, 0))
            .await
            .map_err(|e| Error::io(op, e))?;
        drop(out);

        let mut replies = Replies::default();
        let mut interrupted = false;
        loop {
            buf.clear();
            let recv = sock.recv(&mut **buf).await;
            let result = match recv {
                Ok(()) => absorb(op, kind, seq, alg, buf, &mut replies, &mut interrupted),
                Err(e) => Err(Error::io(op, e)),
            };
            // Wipe what we read (it may hold keys) before anything else happens.
            buf.as_mut_slice().zeroize();
            match result {
                Ok(true) if interrupted => {
                    return Err(Error::Transient {
                        op,
                        reason: "the dump was interrupted by a concurrent change".into(),
                    });
                }
                Ok(true) => return Ok(replies),
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Consumes one datagram; `Ok(true)` when the answer is complete.
pub(crate) fn absorb(
    op: &'static str,
    kind: Kind,
    seq: u32,
    alg: Option<&str>,
    data: &[u8],
    replies: &mut Replies,
    interrupted: &mut bool,
) -> Result<bool> {
    for raw in split(data) {
        let raw = raw?;
        if raw.seq != seq {
            continue; // left over from an abandoned request
        }
        match raw.mtype {
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => return Err(Error::protocol(op, "netlink overrun")),
            NLMSG_ERROR => {
                let (errno, detail) = parse_error(&raw);
                if errno == 0 {
                    if kind == Kind::Ack {
                        return Ok(true);
                    }
                } else {
                    return Err(Error::from_errno(op, errno, detail, alg));
                }
            }
            NLMSG_DONE => {
                let (errno, detail) = parse_error(&raw);
                if errno > 0 {
                    return Err(Error::from_errno(op, errno, detail, alg));
                }
                return Ok(true);
            }
            _ => {
                if raw.flags & NLM_F_DUMP_INTR != 0 {
                    *interrupted = true;
                }
                if let Some(m) = parse_inner(op, &raw)? {
                    replies.0.push(m);
                }
            }
        }
    }
    Ok(false)
}

/// Serialises a request into a wiped-on-drop buffer and scrubs the message's keys.
pub(crate) fn encode(msg: XfrmMessage, flags: u16, seq: u32) -> Zeroizing<Vec<u8>> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut buf = Zeroizing::new(vec![0u8; nl.buffer_len()]);
    nl.serialize(&mut buf);
    if let NetlinkPayload::InnerMessage(m) = &mut nl.payload {
        scrub_message(m);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_payload_with_extack() {
        // code -22, capped echo (16 bytes), then NLMSGERR_ATTR_MSG "Invalid mode\0".
        let mut p = Vec::new();
        p.extend_from_slice(&(-22i32).to_ne_bytes());
        p.extend_from_slice(&[0u8; 16]);
        let msg = b"Invalid mode\0";
        p.extend_from_slice(&((4 + msg.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(msg);
        let raw = RawMsg {
            mtype: NLMSG_ERROR,
            flags: NLM_F_CAPPED | NLM_F_ACK_TLVS,
            seq: 1,
            payload: &p,
        };
        assert_eq!(parse_error(&raw), (22, Some("Invalid mode".into())));
    }

    #[test]
    fn short_messages_are_errors_not_panics() {
        let raw = RawMsg {
            mtype: XFRM_MSG_NEWSA,
            flags: 0,
            seq: 1,
            payload: &[0u8; 10],
        };
        assert!(parse_inner("t", &raw).is_err());
        // A datagram with a lying length field.
        let mut d = vec![0u8; 20];
        d[0] = 200;
        assert!(split(&d).next().is_some_and(|r| r.is_err()));
    }
    #[test]
    fn an_error_code_without_a_negation_is_an_io_error() {
        let payload = i32::MIN.to_ne_bytes();
        let raw = RawMsg {
            mtype: NLMSG_ERROR,
            flags: 0,
            seq: 1,
            payload: &payload,
        };
        assert_eq!(parse_error(&raw), (libc::EIO, None));
    }
}
