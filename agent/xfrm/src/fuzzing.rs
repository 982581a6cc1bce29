//! What the fuzz targets feed received netlink bytes to (`--features fuzzing`): the paths a
//! datagram from the kernel takes, whatever it holds.

use std::collections::VecDeque;

use netlink_packet_xfrm::XfrmMessage;

use crate::netlink::{self, Kind, Replies};
use crate::policy::PolicyInfo;
use crate::sa::SaInfo;

/// What one datagram came to.
#[derive(Debug)]
pub struct Parsed {
    /// Events decoded from it, as the event socket reads them (errors included).
    pub events: usize,
    /// SAs and policies a dump answer with it would list.
    pub listed: usize,
    /// Whether it ended the answer, or the error it was.
    pub answer: Result<bool, String>,
}

/// Runs `data` through the event decoder, and through the dump reader as an answer to request
/// `seq` (the answer's SA and policy entries converted as a dump converts them).
pub fn parse(data: &[u8], seq: u32) -> Parsed {
    let mut events = VecDeque::new();
    crate::events::decode(data, &mut events);
    let mut replies = Replies(Vec::new());
    let mut interrupted = false;
    let answer = netlink::absorb(
        "fuzz",
        Kind::Dump,
        seq,
        None,
        data,
        &mut replies,
        &mut interrupted,
    )
    .map_err(|e| e.to_string());
    let listed = replies
        .0
        .iter()
        .filter(|m| match m {
            XfrmMessage::AddSa(sa) => SaInfo::from_message(sa).is_some(),
            XfrmMessage::AddPolicy(p) => PolicyInfo::from_message(p).is_some(),
            _ => false,
        })
        .count();
    Parsed {
        events: events.len(),
        listed,
        answer,
    }
}
