//! Kernel notifications: SA expiry (soft: rekey now; hard: the SA is gone), acquires (a trap
//! policy saw traffic without an SA), NAT mapping changes and policy expiry. Only events about our objects are
//! delivered.
//!
//! The stream has its own socket subscribed to the `XFRMNLGRP_ACQUIRE`, `XFRMNLGRP_EXPIRE` and
//! `XFRMNLGRP_MAPPING` multicast groups, separate from the request socket, so replies and events never interleave.
//! We do not join `XFRMNLGRP_SA`: its messages would carry every SA's keys.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use netlink_packet_xfrm::XfrmMessage;
use netlink_packet_xfrm::constants::{
    XFRM_MSG_EXPIRE, XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE, XFRMNLGRP_MAPPING,
};
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket};

use crate::Xfrm;
use crate::error::{Error, Result};
use crate::netlink::{RECV_BUF, ne_u16, ne_u32, open_socket, parse_inner, split};
use crate::ownership::Reqid;
use crate::policy::{Direction, PolicyId, Template};
use crate::sa::{Mark, Proto, SaId};
use crate::selector::{Selector, ip_from_raw};

/// A kernel notification about one of our objects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An SA reached a soft limit (`hard == false`: rekey it) or a hard limit (`hard == true`:
    /// the kernel has deleted it).
    Expire {
        /// The SA.
        sa: SaId,
        /// Its reqid.
        reqid: Reqid,
        /// Hard (deleted) or soft (rekey due).
        hard: bool,
    },
    /// Traffic hit a policy of ours that has no SA yet: negotiate one.
    Acquire {
        /// The packet's flow, as a host-to-host selector.
        flow: Selector,
        /// The policy's selector, direction and mark.
        policy: PolicyId,
        /// The template that found no SA.
        template: Template,
        /// The kernel's sequence number for this acquire (it expires after 30 s).
        seq: u32,
    },
    /// An authentic ESP-in-UDP packet for one of our inbound SAs came from another address or
    /// port than the SA's (`XFRM_MSG_MAPPING`): the peer's NAT mapping changed. The kernel
    /// accepted the packet; our outbound SA still sends to `old`.
    Mapping {
        /// The inbound SA.
        sa: SaId,
        /// Its reqid.
        reqid: Reqid,
        /// Where the SA had the peer.
        old: SocketAddr,
        /// Where the packet came from.
        new: SocketAddr,
    },
    /// A policy of ours reached a lifetime limit.
    PolicyExpire {
        /// The policy.
        policy: PolicyId,
        /// Its kernel index.
        index: u32,
        /// Hard (deleted) or soft.
        hard: bool,
    },
}

/// The stream of [`Event`]s. An `Err` item means events were lost (the socket's queue
/// overflowed): resynchronise from a dump; the stream continues.
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<Event>> + Send>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream")
    }
}

impl Stream for EventStream {
    type Item = Result<Event>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct State {
    sock: TokioSocket,
    buf: Vec<u8>,
    queue: VecDeque<Result<Event>>,
}

impl Xfrm {
    /// Subscribes to expire, acquire and mapping events. Subscribe before installing the objects whose
    /// events matter: the kernel does not replay past events.
    pub fn events(&self) -> Result<EventStream> {
        Self::event_stream()
    }

    /// The same, without a request handle.
    pub fn event_stream() -> Result<EventStream> {
        const OP: &str = "subscribe to XFRM events";
        let groups = (1 << (XFRMNLGRP_ACQUIRE - 1))
            | (1 << (XFRMNLGRP_EXPIRE - 1))
            | (1 << (XFRMNLGRP_MAPPING - 1));
        let sock = open_socket(OP, groups)?;
        // A burst of expiries (many SAs added together expire together) must not overflow.
        let _ = sock.socket_ref().set_rx_buf_sz(1 << 20);
        let state = State {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
            queue: VecDeque::new(),
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(item) = st.queue.pop_front() {
                    return Some((item, st));
                }
                st.buf.clear();
                match st.sock.recv(&mut st.buf).await {
                    Ok(()) => decode(&st.buf, &mut st.queue),
                    Err(e) => st.queue.push_back(Err(match Error::io(OP, e) {
                        Error::Transient { op, .. } => Error::Transient {
                            op,
                            reason: "XFRM events were lost (queue overflow): resync from a dump"
                                .into(),
                        },
                        other => other,
                    })),
                }
            }
        });
        Ok(EventStream {
            inner: Box::pin(stream),
        })
    }
}

pub(crate) fn decode(data: &[u8], out: &mut VecDeque<Result<Event>>) {
    const OP: &str = "decode XFRM event";
    for raw in split(data) {
        let raw = match raw {
            Ok(r) => r,
            Err(e) => {
                out.push_back(Err(e));
                return;
            }
        };
        let msg = match parse_inner(OP, &raw) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                out.push_back(Err(e));
                continue;
            }
        };
        let ev = match msg {
            XfrmMessage::Expire(m) => {
                let s = &m.expire.state;
                let reqid = Reqid::from_raw(s.reqid);
                let Some(dst) = ip_from_raw(&s.id.daddr, s.family) else {
                    continue;
                };
                // netlink-packet-xfrm does not parse the attributes after the fixed part.
                let mark = if raw.mtype == XFRM_MSG_EXPIRE {
                    mark_after(raw.payload, 232)
                } else {
                    None
                };
                reqid.is_ours().then_some(Event::Expire {
                    sa: SaId {
                        dst,
                        spi: s.id.spi,
                        proto: Proto(s.id.proto),
                        mark,
                    },
                    reqid,
                    hard: m.expire.hard != 0,
                })
            }
            XfrmMessage::Acquire(m) => {
                let a = &m.acquire;
                let fam = a.policy.selector.family;
                let templates: Vec<Template> = m
                    .nlas
                    .iter()
                    .find_map(|n| match n {
                        netlink_packet_xfrm::XfrmAttrs::Template(t) => Some(t),
                        _ => None,
                    })
                    .map(|ts| {
                        ts.iter()
                            .filter_map(|t| Template::from_raw(t, fam))
                            .collect()
                    })
                    .unwrap_or_default();
                let want_dst = ip_from_raw(&a.id.daddr, a.selector.family.max(fam));
                let template = templates
                    .iter()
                    .find(|t| Some(t.dst) == want_dst && t.proto.0 == a.id.proto)
                    .or_else(|| templates.first())
                    .copied();
                let (Some(template), Some(flow), Some(psel), Some(dir)) = (
                    template,
                    Selector::from_raw(&a.selector),
                    Selector::from_raw(&a.policy.selector),
                    Direction::from_raw(a.policy.direction),
                ) else {
                    continue;
                };
                let ours = templates.iter().any(|t| t.reqid.is_ours());
                ours.then_some(Event::Acquire {
                    flow,
                    policy: PolicyId {
                        selector: psel,
                        dir,
                        mark: Mark::find(&m.nlas),
                        if_id: crate::sa::if_id_of(&m.nlas),
                    },
                    template,
                    seq: a.seq,
                })
            }
            XfrmMessage::Mapping(m) => {
                let map = &m.map;
                let reqid = Reqid::from_raw(map.reqid);
                let fam = map.id.family;
                let (Some(dst), Some(old), Some(new)) = (
                    ip_from_raw(&map.id.daddr, fam),
                    ip_from_raw(&map.old_saddr, fam),
                    ip_from_raw(&map.new_saddr, fam),
                ) else {
                    continue;
                };
                reqid.is_ours().then_some(Event::Mapping {
                    sa: SaId {
                        dst,
                        spi: map.id.spi,
                        proto: Proto(map.id.proto),
                        mark: None,
                    },
                    reqid,
                    old: SocketAddr::new(old, map.old_sport),
                    new: SocketAddr::new(new, map.new_sport),
                })
            }
            XfrmMessage::PolicyExpire(m) => {
                let p = &m.expire.pol;
                let templates: Vec<Template> = m
                    .nlas
                    .iter()
                    .find_map(|n| match n {
                        netlink_packet_xfrm::XfrmAttrs::Template(t) => Some(t),
                        _ => None,
                    })
                    .map(|ts| {
                        ts.iter()
                            .filter_map(|t| Template::from_raw(t, p.selector.family))
                            .collect()
                    })
                    .unwrap_or_default();
                let (Some(selector), Some(dir)) = (
                    Selector::from_raw(&p.selector),
                    Direction::from_raw(p.direction),
                ) else {
                    continue;
                };
                templates
                    .iter()
                    .any(|t| t.reqid.is_ours())
                    .then_some(Event::PolicyExpire {
                        policy: PolicyId {
                            selector,
                            dir,
                            mark: Mark::find(&m.nlas),
                            if_id: crate::sa::if_id_of(&m.nlas),
                        },
                        index: p.index,
                        hard: m.expire.hard != 0,
                    })
            }
            _ => None,
        };
        if let Some(ev) = ev {
            out.push_back(Ok(ev));
        }
    }
}

/// Finds `XFRMA_MARK` among the attributes that follow `fixed` bytes of a payload.
fn mark_after(payload: &[u8], fixed: usize) -> Option<Mark> {
    let mut rest = payload.get(fixed..)?;
    while let (Some(len), Some(typ)) = (ne_u16(rest, 0), ne_u16(rest, 2)) {
        let len = usize::from(len);
        let typ = typ & 0x3fff;
        if len < 4 {
            return None;
        }
        if typ == netlink_packet_xfrm::constants::XFRMA_MARK {
            let value = ne_u32(rest, 4)?;
            let mask = ne_u32(rest, 8)?;
            return (value != 0 || mask != 0).then_some(Mark { value, mask });
        }
        rest = rest.get(len.div_ceil(4) * 4..)?;
    }
    None
}
