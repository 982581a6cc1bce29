//! NAT detection (RFC 7296 §2.23): `SHA-1(SPIi | SPIr | IP | port)` in the
//! NAT_DETECTION_SOURCE_IP / NAT_DETECTION_DESTINATION_IP notifications.
//!
//! SHA-1 is fixed by the RFC for this purpose only (a change detector, not a security
//! function); it is never negotiated.

use core::net::{IpAddr, SocketAddr};

use aws_lc_rs::digest;

use crate::codec::{Notify, NotifyType, Spi};

/// The NAT-D hash of one address under the SPIs of the message that carries it (the
/// responder SPI is zero in an IKE_SA_INIT request).
pub fn natd_hash(spi_i: Spi, spi_r: Spi, addr: SocketAddr) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&spi_i.0);
    ctx.update(&spi_r.0);
    match addr.ip() {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    ctx.finish().as_ref().to_vec()
}

/// The two NAT-D notifications for a message from `local` to `remote`. With `fake_source`
/// (forced encapsulation) the source hash is replaced by `fake` so the peer sees us behind a
/// NAT, as strongSwan does.
pub fn natd_notifies(
    spi_i: Spi,
    spi_r: Spi,
    local: SocketAddr,
    remote: SocketAddr,
    fake_source: Option<[u8; 20]>,
) -> [Notify; 2] {
    let src = match fake_source {
        Some(f) => f.to_vec(),
        None => natd_hash(spi_i, spi_r, local),
    };
    [
        Notify::new(NotifyType::NAT_DETECTION_SOURCE_IP, src),
        Notify::new(
            NotifyType::NAT_DETECTION_DESTINATION_IP,
            natd_hash(spi_i, spi_r, remote),
        ),
    ]
}

/// What the NAT-D notifications of a received message say: `None` when the peer sent none
/// (no NAT-T support), else (we are behind a NAT, the peer is behind a NAT).
pub fn check<'a>(
    notifies: impl IntoIterator<Item = &'a Notify>,
    spi_i: Spi,
    spi_r: Spi,
    local: SocketAddr,
    remote: SocketAddr,
) -> Option<(bool, bool)> {
    let all: Vec<&Notify> = notifies.into_iter().collect();
    let src: Vec<&&Notify> = all
        .iter()
        .filter(|n| n.ty == NotifyType::NAT_DETECTION_SOURCE_IP)
        .collect();
    let dst: Vec<&&Notify> = all
        .iter()
        .filter(|n| n.ty == NotifyType::NAT_DETECTION_DESTINATION_IP)
        .collect();
    if src.is_empty() || dst.is_empty() {
        return None;
    }
    let want_src = natd_hash(spi_i, spi_r, remote);
    let want_dst = natd_hash(spi_i, spi_r, local);
    let remote_nat = !src.iter().any(|n| n.data == want_src);
    let local_nat = !dst.iter().any(|n| n.data == want_dst);
    Some((local_nat, remote_nat))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_spis_address_and_port() {
        let a: SocketAddr = "192.0.2.1:500".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:4500".parse().unwrap();
        let si = Spi([1; 8]);
        let h = natd_hash(si, Spi::ZERO, a);
        assert_eq!(h.len(), 20);
        // Known answer: SHA-1 of 0101..01 | 00..00 | c0000201 | 01f4.
        let mut input = vec![1u8; 8];
        input.extend_from_slice(&[0; 8]);
        input.extend_from_slice(&[192, 0, 2, 1, 0x01, 0xf4]);
        let want = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
        assert_eq!(h, want.as_ref());
        assert_ne!(h, natd_hash(si, Spi::ZERO, b));
        assert_ne!(h, natd_hash(si, Spi([2; 8]), a));
    }

    #[test]
    fn detects_which_side_is_natted() {
        let (si, sr) = (Spi([1; 8]), Spi([2; 8]));
        let us: SocketAddr = "10.0.0.1:500".parse().unwrap();
        let them: SocketAddr = "198.51.100.2:500".parse().unwrap();
        // The peer saw us as `us` and sent from `them`: no NAT.
        let n = natd_notifies(si, sr, them, us, None);
        assert_eq!(check(n.iter(), si, sr, us, them), Some((false, false)));
        // The peer saw us at a mapped address: we are behind a NAT.
        let mapped: SocketAddr = "203.0.113.9:1024".parse().unwrap();
        let n = natd_notifies(si, sr, them, mapped, None);
        assert_eq!(check(n.iter(), si, sr, us, them), Some((true, false)));
        // The peer faked its source: it looks NATed.
        let n = natd_notifies(si, sr, them, us, Some([7; 20]));
        assert_eq!(check(n.iter(), si, sr, us, them), Some((false, true)));
        assert_eq!(check([].iter(), si, sr, us, them), None);
    }
}
