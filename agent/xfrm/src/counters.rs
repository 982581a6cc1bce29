//! Per-SA counters for metrics: one SA dump answers for all of our SAs, so polling hundreds of
//! SAs every few seconds costs one netlink round trip (plus the kernel walking its SAD).

use netlink_packet_xfrm::UserSaInfo;

use crate::Xfrm;
use crate::error::Result;
use crate::sa::SaId;

/// Counters of one SA, as the kernel keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaCounters {
    /// The SA.
    pub id: SaId,
    /// Bytes processed (`lifetime current` bytes in `ip -s xfrm state`).
    pub bytes: u64,
    /// Packets processed.
    pub packets: u64,
    /// Packets dropped as outside the anti-replay window (`stats replay-window`).
    pub replay_window_drops: u32,
    /// Packets dropped as replayed (`stats replay`).
    pub replayed: u32,
    /// Packets that failed the integrity check (`stats failed`).
    pub integrity_failures: u32,
    /// When the SA was added (seconds since the epoch).
    pub add_time: u64,
    /// When the SA was first used (seconds since the epoch), `None` before the first packet.
    pub use_time: Option<u64>,
}

impl SaCounters {
    pub(crate) fn from_info(id: SaId, info: &UserSaInfo) -> Self {
        SaCounters {
            id,
            bytes: info.lifetime_cur.bytes,
            packets: info.lifetime_cur.packets,
            replay_window_drops: info.stats.replay_window,
            replayed: info.stats.replay,
            integrity_failures: info.stats.integrity_failed,
            add_time: info.lifetime_cur.add_time,
            use_time: (info.lifetime_cur.use_time != 0).then_some(info.lifetime_cur.use_time),
        }
    }
}

impl Xfrm {
    /// Counters of all our SAs, read by one dump.
    pub async fn counters(&self) -> Result<Vec<SaCounters>> {
        Ok(self
            .list_our_sas()
            .await?
            .into_iter()
            .map(|sa| sa.counters)
            .collect())
    }
}
