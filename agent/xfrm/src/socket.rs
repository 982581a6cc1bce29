//! What the IKE sockets need from XFRM.
//!
//! - The UDP/4500 socket must be marked `UDP_ENCAP_ESPINUDP`, so the kernel hands ESP-in-UDP
//!   packets (non-zero first four bytes) to ESP and leaves IKE packets (the zero "non-ESP
//!   marker") to us.
//! - Both IKE sockets (500 and 4500) need per-socket bypass policies, in and out: otherwise an
//!   IKE packet that matches one of our host-to-host policies would itself be sent into (or
//!   required to come out of) the tunnel, and the outer UDP packet of ESP-in-UDP fails the
//!   inbound policy check (`XfrmInTmplMismatch`) before the decapsulation hook runs.
//!
//! Neither option has a safe wrapper in std, nix or socket2, so both go through
//! [`setsockopt_bytes`], the crate's only FFI call.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use netlink_packet_core::Emitable;
use netlink_packet_xfrm::UserPolicyInfo;
use netlink_packet_xfrm::constants::{UDP_ENCAP_ESPINUDP, XFRM_POLICY_ALLOW};

use crate::error::{Error, Result};
use crate::policy::Direction;
use crate::selector::Family;

/// `UDP_ENCAP` from `<linux/udp.h>` (not in the libc crate).
const UDP_ENCAP: libc::c_int = 100;
/// `sizeof(struct xfrm_userpolicy_info)`.
const USERPOLICY_INFO_LEN: usize = 168;

/// Marks a UDP socket (the IKE socket on port 4500) for ESP-in-UDP decapsulation.
pub fn set_udp_encap(sock: &impl AsFd) -> Result<()> {
    let val: libc::c_int = UDP_ENCAP_ESPINUDP.into();
    setsockopt_bytes(
        sock.as_fd(),
        libc::IPPROTO_UDP,
        UDP_ENCAP,
        &val.to_ne_bytes(),
    )
    .map_err(|e| Error::io("set UDP_ENCAP on the IKE socket", e))
}

/// Installs per-socket "allow, no IPsec" policies for both directions, so the socket's own
/// traffic (IKE) bypasses every SPD policy. `family` is the socket's address family (for a
/// dual-stack IPv6 socket, call it for both families).
pub fn bypass_policies(sock: &impl AsFd, family: Family) -> Result<()> {
    for dir in [Direction::In, Direction::Out] {
        bypass_policy(sock, family, dir)?;
    }
    Ok(())
}

/// One per-socket bypass policy.
pub fn bypass_policy(sock: &impl AsFd, family: Family, dir: Direction) -> Result<()> {
    let info = UserPolicyInfo {
        direction: dir.raw(),
        action: XFRM_POLICY_ALLOW,
        selector: netlink_packet_xfrm::Selector {
            family: family.raw(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut buf = [0u8; USERPOLICY_INFO_LEN];
    if info.buffer_len() != USERPOLICY_INFO_LEN {
        return Err(Error::protocol(
            "build socket bypass policy",
            "unexpected xfrm_userpolicy_info size",
        ));
    }
    info.emit(&mut buf);
    let (level, name) = match family {
        Family::V4 => (libc::IPPROTO_IP, libc::IP_XFRM_POLICY),
        Family::V6 => (libc::IPPROTO_IPV6, libc::IPV6_XFRM_POLICY),
    };
    setsockopt_bytes(sock.as_fd(), level, name, &buf)
        .map_err(|e| Error::io("set the IKE socket's bypass policy", e))
}

/// `setsockopt(2)` with a byte buffer: the FFI boundary of this crate.
#[allow(unsafe_code)]
pub(crate) fn setsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is a descriptor that stays open for the duration of the call (it is
    // borrowed); `value` points to `len` initialised bytes that outlive the call, and the
    // kernel only reads them. No memory is handed over or retained.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
