//! The primitives of the saved-state format: fixed-width big-endian integers, length-prefixed
//! byte strings, options and lists. Reading never panics and never allocates more than the
//! input could hold: every length is checked against what is left.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use zeroize::Zeroizing;

use super::ResumeError;

/// Where the saved bytes are built. Zeroized when dropped: they hold keys.
#[derive(Default)]
pub(crate) struct Out(pub Zeroizing<Vec<u8>>);

impl Out {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    pub fn raw(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }

    /// A byte string with a 32-bit length.
    pub fn bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.raw(v);
    }

    /// A length or count. Nothing we save comes near 2^32; saturating keeps this total.
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }

    pub fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.bool(false),
            Some(v) => {
                self.bool(true);
                f(self, v);
            }
        }
    }

    pub fn list<T>(
        &mut self,
        items: impl ExactSizeIterator<Item = T>,
        mut f: impl FnMut(&mut Self, T),
    ) {
        self.len(items.len());
        for i in items {
            f(self, i);
        }
    }

    pub fn addr(&mut self, a: SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.raw(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.raw(&ip.octets());
            }
        }
        self.u16(a.port());
    }

    /// An instant, as milliseconds from the moment of saving ([`Clock`]).
    pub fn time(&mut self, clock: &Clock, t: Instant) {
        self.i64(clock.offset_ms(t));
    }
}

/// The saved bytes being read. Each read names the field it is for, which is what a refused
/// file's error says.
pub(crate) struct In<'a> {
    buf: &'a [u8],
}

impl<'a> In<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn raw(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ResumeError> {
        if self.buf.len() < n {
            return Err(ResumeError::Malformed(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ResumeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.raw(N, what)?);
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, ResumeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, ResumeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ResumeError::Malformed(what)),
        }
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, ResumeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, ResumeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, ResumeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, ResumeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_item` octets long: never more than the rest of the
    /// input could hold, so a corrupted count cannot make us allocate.
    pub fn count(&mut self, min_item: usize, what: &'static str) -> Result<usize, ResumeError> {
        let n = usize::try_from(self.u32(what)?).map_err(|_| ResumeError::Malformed(what))?;
        if n.saturating_mul(min_item.max(1)) > self.buf.len() {
            return Err(ResumeError::Malformed(what));
        }
        Ok(n)
    }

    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], ResumeError> {
        let n = self.count(1, what)?;
        self.raw(n, what)
    }

    pub fn opt<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T, ResumeError>,
    ) -> Result<Option<T>, ResumeError> {
        if self.bool(what)? {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn list<T>(
        &mut self,
        min_item: usize,
        what: &'static str,
        mut f: impl FnMut(&mut Self) -> Result<T, ResumeError>,
    ) -> Result<Vec<T>, ResumeError> {
        let n = self.count(min_item, what)?;
        (0..n).map(|_| f(self)).collect()
    }

    pub fn addr(&mut self, what: &'static str) -> Result<SocketAddr, ResumeError> {
        let ip = match self.u8(what)? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(what)?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(what)?)),
            _ => return Err(ResumeError::Malformed(what)),
        };
        Ok(SocketAddr::new(ip, self.u16(what)?))
    }

    pub fn time(&mut self, clock: &Clock, what: &'static str) -> Result<Instant, ResumeError> {
        Ok(clock.instant(self.i64(what)?))
    }
}

/// Maps instants to and from the saved form: milliseconds relative to the moment the state
/// was saved, with the wall-clock time of that moment in the header. A loading process has
/// other instants, so the time that passed in between (by the wall clock) is taken off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// This process's instant for the saved moment (for a loader: where that moment falls on
    /// its own clock, possibly before `now`).
    now: Instant,
    /// Milliseconds the saved moment lies before `now` (0 when saving).
    behind_ms: u64,
}

impl Clock {
    pub fn saving(now: Instant) -> Self {
        Self { now, behind_ms: 0 }
    }

    /// For a state saved `elapsed_ms` ago by the wall clock.
    pub fn loading(now: Instant, elapsed_ms: u64) -> Self {
        Self {
            now,
            behind_ms: elapsed_ms,
        }
    }

    fn offset_ms(&self, t: Instant) -> i64 {
        let ms = |d: core::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if t >= self.now {
            ms(t - self.now)
        } else {
            ms(self.now - t).saturating_neg()
        }
    }

    /// The instant `offset_ms` after the saved moment. One that would fall before this
    /// process's clock can express is clamped to `now` minus what it can: a time in the past is
    /// only ever compared with later ones.
    fn instant(&self, offset_ms: i64) -> Instant {
        let behind = i128::from(self.behind_ms);
        let delta = i128::from(offset_ms) - behind;
        let d = |v: i128| {
            core::time::Duration::from_millis(u64::try_from(v.unsigned_abs()).unwrap_or(u64::MAX))
        };
        if delta >= 0 {
            self.now.checked_add(d(delta)).unwrap_or(self.now)
        } else {
            let back = d(delta);
            self.now
                .checked_sub(back)
                .or_else(|| {
                    self.now
                        .checked_sub(back.min(core::time::Duration::from_secs(3600)))
                })
                .unwrap_or(self.now)
        }
    }
}
