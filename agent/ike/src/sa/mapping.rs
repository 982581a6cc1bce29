//! Following the peer when its NAT mapping changes (RFC 7296 §2.23, RFC 3948; review R-2).
//!
//! An authentic new message, or an authentic ESP packet the kernel reports from a new source
//! ([`crate::Endpoint::esp_mapping`], XFRM_MSG_MAPPING), may move the IKE SA to where it came from. As charon
//! judges it: only a peer behind a NAT moves, and we follow it only when we are not behind one
//! ourselves, or are behind one as the responder (a static NAT or a port forward). A host
//! behind a NAT that is the original initiator does not follow (§2.23 "SHOULD NOT"): its peer
//! has a fixed address, and a changed one is someone else's datagram. Apart from that, the
//! first move to the NAT-T port (a MOBIKE peer floats without a NAT) is followed.
//!
//! The CHILD SAs of an SA that moved are rekeyed at once: their kernel SAs carry the old outer
//! address and port, so our ESP would go to the dead mapping until their next rekey (up to the
//! CHILD lifetime) while DPD says all is well. A rekey installs the new pair with the new
//! addresses, make before break, and changes no kernel SA in place (charon updates them in
//! place instead, which needs their keys again).

use core::net::SocketAddr;

use super::child::ChildState;
use super::established::Next;
use super::{Common, Ctx, IkeSa, rekey};
use crate::config::EndpointConfig;

/// Whether an authentic datagram that arrived on `local` from `remote` may move the SA there.
pub(crate) fn may_follow(
    c: &Common,
    cfg: &EndpointConfig,
    local: SocketAddr,
    remote: SocketAddr,
) -> bool {
    if (local, remote) == (c.local, c.remote) {
        return false;
    }
    let float = local.port() == cfg.natt_port
        && c.local.port() != cfg.natt_port
        && local.ip() == c.local.ip()
        && remote.ip() == c.remote.ip();
    let peer_natted = c.nat.remote_behind_nat || c.nat.forced;
    float || (peer_natted && (!c.nat.local_behind_nat || !c.initiator))
}

/// Moves the SA to `local`/`remote`. Returns whether the peer's address or port changed:
/// then the caller, once it has handled the datagram, calls [`rekey_children`].
pub(crate) fn follow(c: &mut Common, local: SocketAddr, remote: SocketAddr) -> bool {
    let remote_changed = remote != c.remote;
    c.local = local;
    c.remote = remote;
    remote_changed
}

/// Starts a rekey of each CHILD SA in use of an established SA whose peer moved (nothing is
/// queued twice: a CHILD SA already being rekeyed gets its new pair at the new address).
pub(crate) fn rekey_children(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    sa.with_established(ctx, |e, c, ctx| {
        let stale: Vec<[u8; 4]> = e
            .children
            .iter()
            .filter(|ch| ch.state == ChildState::Installed)
            .map(|ch| ch.spi_in)
            .collect();
        for spi in stale {
            let next = rekey::soft_expire(e, c, ctx, spi);
            if next != Next::Stay {
                return next;
            }
        }
        Next::Stay
    });
}
