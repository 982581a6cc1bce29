//! Host preparation for a gateway: the sysctls it needs (recorded and restorable), and the MTU
//! and TCP MSS that fit through ESP for the negotiated transform.

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::sa::{Mode, Transform};
use crate::selector::Family;

/// Sysctls a site-to-site gateway needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewaySysctls {
    /// Also prepare IPv6 (forwarding, no redirects).
    pub ipv6: bool,
}

impl GatewaySysctls {
    /// The settings, as (sysctl name, value).
    pub fn settings(&self) -> Vec<(&'static str, &'static str)> {
        let mut s = vec![
            // Forward between the local subnets and the tunnel.
            ("net.ipv4.ip_forward", "1"),
            // A redirect would route a protected flow around the tunnel.
            ("net.ipv4.conf.all.accept_redirects", "0"),
            ("net.ipv4.conf.all.send_redirects", "0"),
        ];
        if self.ipv6 {
            s.push(("net.ipv6.conf.all.forwarding", "1"));
            s.push(("net.ipv6.conf.all.accept_redirects", "0"));
        }
        s
    }

    /// Applies the settings in the caller's network namespace, recording previous values.
    /// Already-correct values are left alone (and not recorded). On error, what was already
    /// changed is put back.
    ///
    /// The guard does **not** restore on drop: an agent that restarts must not disturb
    /// forwarding for the SAs that keep running. Call [`SysctlGuard::restore`] on a deliberate
    /// shutdown (e.g. the node no longer terminates any tunnel).
    pub fn apply(&self) -> Result<SysctlGuard> {
        let mut guard = SysctlGuard { saved: Vec::new() };
        for (name, value) in self.settings() {
            match set_sysctl(name, value) {
                Ok(Some(old)) => guard.saved.push((name, old)),
                Ok(None) => {}
                Err(e) => {
                    let _ = guard.restore();
                    return Err(e);
                }
            }
        }
        Ok(guard)
    }
}

/// The values [`GatewaySysctls::apply`] replaced.
#[derive(Debug)]
#[must_use = "keep the guard to restore the previous values"]
pub struct SysctlGuard {
    saved: Vec<(&'static str, String)>,
}

impl SysctlGuard {
    /// What was changed: (name, previous value).
    pub fn changed(&self) -> &[(&'static str, String)] {
        &self.saved
    }

    /// Writes the previous values back (all of them, even if one fails; the first error is
    /// returned).
    pub fn restore(mut self) -> Result<()> {
        let mut first = None;
        while let Some((name, old)) = self.saved.pop() {
            if let Err(e) = set_sysctl(name, &old) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn sysctl_path(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

/// Reads a sysctl of the caller's network namespace.
pub fn get_sysctl(name: &str) -> Result<String> {
    fs::read_to_string(sysctl_path(name))
        .map(|s| s.trim().to_owned())
        .map_err(|e| sysctl_error("read sysctl", name, e))
}

/// Sets a sysctl; returns the previous value when it changed.
fn set_sysctl(name: &'static str, value: &str) -> Result<Option<String>> {
    let old = get_sysctl(name)?;
    if old == value {
        return Ok(None);
    }
    fs::write(sysctl_path(name), value).map_err(|e| sysctl_error("write sysctl", name, e))?;
    Ok(Some(old))
}

fn sysctl_error(op: &'static str, name: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => Error::InvalidInput {
            what: "host sysctl",
            reason: format!(
                "{name} cannot be written ({e}): the agent needs a writable /proc/sys in its \
                 network namespace (privileged pod), or set it on the node beforehand"
            ),
        },
        _ => Error::Io { op, source: e },
    }
}

/// The shape of an ESP path, for MTU arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspPath {
    /// The negotiated transform.
    pub transform: Transform,
    /// Tunnel mode adds an outer IP header; transport mode keeps the original one.
    pub mode: Mode,
    /// Family of the outer header (the tunnel endpoints).
    pub outer: Family,
    /// Family of the protected packets (equal to `outer` in transport mode).
    pub inner: Family,
    /// ESP in UDP (NAT traversal) adds 8 bytes.
    pub nat_t: bool,
}

fn ip_header(f: Family) -> u32 {
    match f {
        Family::V4 => 20,
        Family::V6 => 40,
    }
}

/// ESP header: SPI + sequence number.
const ESP_HEADER: u32 = 8;
/// ESP trailer: pad length + next header.
const ESP_TRAILER: u32 = 2;
const UDP_HEADER: u32 = 8;
const TCP_HEADER: u32 = 20;

impl EspPath {
    /// The largest inner packet (IP header included) that leaves as one outer packet of at
    /// most `path_mtu` bytes; `None` when nothing fits.
    pub fn max_inner_mtu(&self, path_mtu: u32) -> Option<u32> {
        let t = &self.transform;
        let udp = if self.nat_t { UDP_HEADER } else { 0 };
        // In tunnel mode the whole inner packet is encrypted behind a new outer header; in
        // transport mode the original header stays in front and only its payload is.
        let (outer_hdr, kept_hdr) = match self.mode {
            Mode::Transport => (ip_header(self.outer), ip_header(self.outer)),
            _ => (ip_header(self.outer), 0),
        };
        let avail =
            path_mtu.checked_sub(outer_hdr + udp + ESP_HEADER + t.iv_len() + t.icv_len())?;
        // payload + padding + trailer is a whole number of cipher blocks.
        let encrypted = avail / t.block_len() * t.block_len();
        let inner = encrypted.checked_sub(ESP_TRAILER)? + kept_hdr;
        (inner > ip_header(self.inner)).then_some(inner)
    }

    /// The TCP MSS to clamp to for this path (inner MTU minus inner IP and TCP headers).
    pub fn tcp_mss(&self, path_mtu: u32) -> Option<u32> {
        self.max_inner_mtu(path_mtu)?
            .checked_sub(ip_header(self.inner) + TCP_HEADER)
            .filter(|m| *m > 0)
    }

    /// Bytes ESP adds to a packet of `inner_len` bytes (headers, IV, padding, trailer, ICV).
    pub fn overhead(&self, inner_len: u32) -> u32 {
        let t = &self.transform;
        let udp = if self.nat_t { UDP_HEADER } else { 0 };
        let (outer_hdr, payload) = match self.mode {
            Mode::Transport => (0, inner_len.saturating_sub(ip_header(self.outer))),
            _ => (ip_header(self.outer), inner_len),
        };
        let padded = (payload + ESP_TRAILER).div_ceil(t.block_len()) * t.block_len();
        outer_hdr + udp + ESP_HEADER + t.iv_len() + (padded - payload) + t.icv_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa::Integrity;

    fn path(transform: Transform, mode: Mode, outer: Family, nat_t: bool) -> EspPath {
        EspPath {
            transform,
            mode,
            outer,
            inner: outer,
            nat_t,
        }
    }

    const GCM: Transform = Transform::AesGcm16 { key_bits: 256 };
    const CBC256: Transform = Transform::AesCbc {
        key_bits: 128,
        integrity: Integrity::HmacSha256,
    };

    #[test]
    fn known_mtus() {
        // GCM tunnel over IPv4: 20 + 8 + 8 + 16 + 2 = 54 bytes, 1446 inner.
        let p = path(GCM, Mode::Tunnel, Family::V4, false);
        assert_eq!(p.max_inner_mtu(1500), Some(1446));
        assert_eq!(p.tcp_mss(1500), Some(1406));
        // NAT-T costs 8 more.
        let p = path(GCM, Mode::Tunnel, Family::V4, true);
        assert_eq!(p.max_inner_mtu(1500), Some(1438));
        // CBC + SHA256-128 tunnel: 1500-20-8-16-16 = 1440 (a multiple of 16) - 2 = 1438.
        let p = path(CBC256, Mode::Tunnel, Family::V4, false);
        assert_eq!(p.max_inner_mtu(1500), Some(1438));
        // IPv6 outer header is 20 bytes longer.
        let p = path(GCM, Mode::Tunnel, Family::V6, false);
        assert_eq!(p.max_inner_mtu(1500), Some(1426));
        assert_eq!(p.tcp_mss(1500), Some(1366));
        // Transport mode keeps the IP header: 1500-20-8-8-16 = 1448 - 2 + 20.
        let p = path(GCM, Mode::Transport, Family::V4, false);
        assert_eq!(p.max_inner_mtu(1500), Some(1466));
        assert_eq!(
            path(GCM, Mode::Tunnel, Family::V4, false).max_inner_mtu(40),
            None
        );
    }

    #[test]
    fn the_max_inner_packet_fits_and_one_more_byte_may_not() {
        for t in [
            GCM,
            CBC256,
            Transform::AesCbc {
                key_bits: 256,
                integrity: Integrity::HmacSha512,
            },
        ] {
            for mode in [Mode::Tunnel, Mode::Transport] {
                for nat_t in [false, true] {
                    for pmtu in [576, 1280, 1400, 1500, 9000] {
                        let p = path(t, mode, Family::V4, nat_t);
                        let m = p.max_inner_mtu(pmtu).unwrap();
                        let outer = |l: u32| l + p.overhead(l);
                        assert!(outer(m) <= pmtu, "{p:?} {pmtu}: {m} -> {}", outer(m));
                        // The next size that needs another block does not fit.
                        let next = (m + 1..m + 20).find(|&l| outer(l) > outer(m)).unwrap();
                        assert!(outer(next) > pmtu, "{p:?} {pmtu}: {next} fits too");
                    }
                }
            }
        }
    }
}
