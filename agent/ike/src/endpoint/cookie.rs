//! Stateless COOKIEs (RFC 7296 §2.6): under load, an IKE_SA_INIT request is answered only once
//! it returns a cookie we made from its own contents, which proves the initiator can receive at
//! its address before we keep any state for it.

use std::time::{Duration, Instant};

use core::net::SocketAddr;

use crate::codec::{Message, NotifyType, Payload};
use crate::crypto::alg::Prf;
use crate::crypto::kdf;
use crate::crypto::rng::Rng;

#[derive(Debug)]
struct CookieSecret {
    version: u8,
    secret: [u8; 32],
}

/// The secret cookies are made with, and the one before it: a cookie made just before a
/// rotation is still accepted after it.
#[derive(Debug, Default)]
pub(super) struct Cookies {
    current: Option<CookieSecret>,
    previous: Option<CookieSecret>,
    rotated_at: Option<Instant>,
}

impl Cookies {
    /// Draws a new secret when the current one is `lifetime` old (or there is none yet).
    fn rotate(&mut self, now: Instant, lifetime: Duration, rng: &mut dyn Rng) {
        let due = match self.rotated_at {
            None => true,
            Some(t) => now >= t + lifetime,
        };
        if !due {
            return;
        }
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        let version = self
            .current
            .as_ref()
            .map_or(0, |c| c.version.wrapping_add(1));
        self.previous = self.current.take();
        self.current = Some(CookieSecret { version, secret });
        self.rotated_at = Some(now);
    }

    /// The cookie for the IKE_SA_INIT request `msg` from `remote`, under the current secret.
    pub(super) fn make(
        &mut self,
        now: Instant,
        lifetime: Duration,
        rng: &mut dyn Rng,
        msg: &Message,
        remote: SocketAddr,
    ) -> Option<Vec<u8>> {
        self.rotate(now, lifetime, rng);
        cookie_for(self.current.as_ref()?, msg, remote)
    }

    /// Whether `msg` starts with a cookie we made for it (under either secret).
    pub(super) fn valid(
        &mut self,
        now: Instant,
        lifetime: Duration,
        rng: &mut dyn Rng,
        msg: &Message,
        remote: SocketAddr,
    ) -> bool {
        // RFC 7296 §2.6: the cookie must be the first payload.
        let Some(Payload::Notify(n)) = msg.payloads.first() else {
            return false;
        };
        if n.ty != NotifyType::COOKIE {
            return false;
        }
        self.rotate(now, lifetime, rng);
        [self.current.as_ref(), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| cookie_for(s, msg, remote))
            .any(|c| aws_lc_rs::constant_time::verify_slices_are_equal(&c, &n.data).is_ok())
    }
}

/// `Cookie = VersionIDofSecret | prf(secret, Ni | IPi | SPIi)` (RFC 7296 §2.6), with
/// HMAC-SHA-256 as the PRF.
fn cookie_for(s: &CookieSecret, msg: &Message, remote: SocketAddr) -> Option<Vec<u8>> {
    let ni = msg.payloads.iter().find_map(|p| match p {
        Payload::Nonce(n) => Some(n.as_bytes()),
        _ => None,
    })?;
    let mut data = ni.to_vec();
    match remote.ip() {
        core::net::IpAddr::V4(a) => data.extend_from_slice(&a.octets()),
        core::net::IpAddr::V6(a) => data.extend_from_slice(&a.octets()),
    }
    data.extend_from_slice(&msg.header.initiator_spi.0);
    let mac = kdf::prf(Prf::HmacSha256, &s.secret, &data);
    let mut out = vec![s.version];
    out.extend_from_slice(mac.as_bytes());
    Some(out)
}
