//! The responder's side of IKE_SA_INIT (RFC 7296 §1.2): which tunnel a request is for, when to
//! ask for a COOKIE, retransmissions of a request we answered, and the new half-open SA.

use std::sync::Arc;
use std::time::Instant;

use core::net::{IpAddr, SocketAddr};

use super::Endpoint;
use crate::codec::{DecodeError, Header, Message, Notify, NotifyType, Payload};
use crate::config::PeerConfig;
use crate::event::PeerId;
use crate::sa::ike_init::{InitRefused, InitReplied};
use crate::sa::{Side, State, init_error_response};

impl Endpoint {
    /// The tunnels a request from `remote` to `local` may be for, in the order they are tried:
    /// those for exactly this address, then those for any address. The first answers
    /// IKE_SA_INIT; IKE_AUTH may pick another by the peer's identity.
    pub(super) fn responder_configs(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Vec<(PeerId, Arc<PeerConfig>)> {
        let fits = |c: &PeerConfig| {
            (c.local_addr.ip().is_unspecified() || c.local_addr.ip() == local.ip())
                && c.local_addr.is_ipv4() == remote.is_ipv4()
        };
        [Some(remote.ip()), None::<IpAddr>]
            .iter()
            .flat_map(|key| self.peers_by_remote.get(key).into_iter().flatten())
            .filter_map(|id| {
                let p = self.peers.get(id)?;
                fits(&p.cfg).then(|| (*id, Arc::clone(&p.cfg)))
            })
            .collect()
    }

    pub(super) fn on_init_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        raw: &[u8],
    ) {
        let msg = match Message::parse(raw) {
            Ok(m) => m,
            Err(DecodeError::UnsupportedCriticalPayload(ty)) => {
                // §2.5: a critical payload we do not know is answered, with its type as data
                // (review M-1c); the header parsed, or the payload would not have been reached.
                self.shared.stats.malformed += 1;
                if let Ok(w) = Header::peek(raw) {
                    let answer = init_error_response(
                        &w.header,
                        Notify::new(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD, vec![ty.0]),
                    );
                    self.send_stateless(local, remote, &answer);
                }
                return;
            }
            Err(_) => {
                self.shared.stats.malformed += 1;
                self.shared
                    .dropped(remote, "IKE_SA_INIT request does not parse");
                return;
            }
        };
        let key = (remote, msg.header.initiator_spi);
        if let Some(id) = self.by_init.get(&key).copied() {
            // A retransmission (or a retry with a cookie that crossed our answer): resend ours.
            if let Some(sa) = self.sas.get_mut(&id)
                && let State::InitReplied(replied) = &mut sa.state
                && same_request(&replied.init.request, raw, &msg)
                && let Some(cached) = sa.common.win.cached_response()
            {
                // The initiator signs the request it sent last (RFC 7296 §2.15): after a cookie
                // retry that is the one with the COOKIE, whichever of its requests we answered.
                if replied.init.request != raw {
                    replied.init.request = raw.to_vec();
                }
                let cached = cached.to_vec();
                self.dirty.push(id);
                let mut ctx = self.shared.ctx(now, &self.by_spi);
                sa.common.transmit(&mut ctx, &cached);
                ctx.stats.retransmits_answered += 1;
            } else {
                self.shared.stats.unexpected += 1;
            }
            return;
        }
        let mut candidates = self.responder_configs(local, remote).into_iter();
        let Some((peer, cfg)) = candidates.next() else {
            self.shared.stats.no_peer_config += 1;
            self.shared
                .dropped(remote, "IKE_SA_INIT from an address no tunnel accepts");
            return;
        };
        if let Some(why) = self.blocked(remote) {
            // before any cookie or key exchange: a blocked source costs us nothing (S-1)
            self.shared.stats.init_blocked += 1;
            self.shared.dropped(remote, why);
            return;
        }
        let lifetime = self.shared.config.cookie_secret_lifetime;
        if self.cookie_required(remote)
            && !self
                .cookies
                .valid(now, lifetime, &mut *self.shared.rng, &msg, remote)
        {
            let cookie = self
                .cookies
                .make(now, lifetime, &mut *self.shared.rng, &msg, remote);
            if let Some(cookie) = cookie {
                let answer =
                    init_error_response(&msg.header, Notify::new(NotifyType::COOKIE, cookie));
                self.send_stateless(local, remote, &answer);
                self.shared.stats.cookies_sent += 1;
            }
            return;
        }
        let mut ctx = self.shared.ctx(now, &self.by_spi);
        let spi_r = ctx.ike_spi(Side::Responder);
        match InitReplied::respond(&mut ctx, peer, cfg, &msg, raw, local, remote, spi_r) {
            Ok(mut sa) => {
                if let State::InitReplied(r) = &mut sa.state {
                    r.alternatives = candidates.collect();
                }
                let id = self.insert_sa(sa);
                self.by_init.insert(key, id);
                // Indexed now, so that the key is remembered with it.
                self.settle(now);
                self.index.set_init_key(id, key);
            }
            Err(InitRefused::Answer(m)) => self.send_stateless(local, remote, &m),
            Err(InitRefused::Drop) => self.shared.stats.unexpected += 1,
        }
    }

    /// Why a new IKE_SA_INIT from `remote` is dropped unanswered: too many half-open SAs from
    /// its address, or in all.
    fn blocked(&self, remote: SocketAddr) -> Option<&'static str> {
        let (all, from_ip) = self.index.half_open(remote.ip());
        let c = &self.shared.config;
        if from_ip >= c.block_threshold_per_ip {
            Some("IKE_SA_INIT blocked: too many half-open IKE SAs from this address")
        } else if c.half_open_limit.is_some_and(|limit| all >= limit) {
            Some("IKE_SA_INIT blocked: too many half-open IKE SAs")
        } else {
            None
        }
    }

    fn cookie_required(&self, remote: SocketAddr) -> bool {
        let (all, from_ip) = self.index.half_open(remote.ip());
        debug_assert_eq!(
            all,
            self.sas.values().filter(|s| s.half_open()).count(),
            "the half-open count is out of date"
        );
        all >= self.shared.config.cookie_threshold
            || from_ip >= self.shared.config.cookie_threshold_per_ip
    }
}

/// Whether `raw` (parsed: `msg`) is the IKE_SA_INIT request we answered (`answered`) again:
/// byte for byte, or the same request with a COOKIE added in front, which an initiator sends when
/// our answer to its first request crossed a cookie challenge (§2.6: all other payloads
/// unchanged).
fn same_request(answered: &[u8], raw: &[u8], msg: &Message) -> bool {
    if answered == raw {
        return true;
    }
    let Ok(before) = Message::parse(answered) else {
        return false;
    };
    let without_cookie = |m: &Message| -> Vec<Payload> {
        m.payloads
            .iter()
            .filter(|p| !matches!(p, Payload::Notify(n) if n.ty == NotifyType::COOKIE))
            .cloned()
            .collect()
    };
    msg.notify(NotifyType::COOKIE).is_some()
        && before.header == msg.header
        && without_cookie(&before) == without_cookie(msg)
}
