//! Traffic selectors: which packets a policy (or an SA's inner check) applies to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use netlink_packet_xfrm::constants::{AF_INET, AF_INET6};
use netlink_packet_xfrm::{Address, Selector as RawSelector};

use crate::error::{Error, Result};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub(crate) fn raw(self) -> u16 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }

    pub(crate) fn from_raw(raw: u16) -> Option<Self> {
        match raw {
            AF_INET => Some(Family::V4),
            AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }

    fn max_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The unspecified address.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

/// An address prefix such as `198.51.100.0/24`. Host bits are cleared on construction, as the
/// kernel compares prefixes byte for byte when it looks a policy up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix; fails when `len` is longer than the address.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        let fam = Family::of(&addr);
        if len > fam.max_len() {
            return Err(Error::invalid(
                "prefix",
                format!("/{len} is longer than a {fam:?} address"),
            ));
        }
        Ok(Prefix {
            addr: mask(addr, len),
            len,
        })
    }

    /// A single host (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        let len = Family::of(&addr).max_len();
        Prefix { addr, len }
    }

    /// Everything of one family (`0.0.0.0/0`, `::/0`).
    pub fn any(family: Family) -> Self {
        Prefix {
            addr: family.unspecified(),
            len: 0,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    #[allow(clippy::len_without_is_empty)] // a prefix length, not a container
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is a /0.
    pub fn is_any(&self) -> bool {
        self.len == 0
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| Error::invalid("prefix", format!("{s:?} is not an address")))?;
        match l {
            None => Ok(Prefix::host(addr)),
            Some(l) => {
                let len = l
                    .parse()
                    .map_err(|_| Error::invalid("prefix", format!("{s:?}: bad length")))?;
                Prefix::new(addr, len)
            }
        }
    }
}

/// A port (or, for ICMP, a type or code) under a mask, as the kernel matches it:
/// `packet_port & mask == port & mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMatch {
    /// The port (host order).
    pub port: u16,
    /// Which bits of it must match (`u16::MAX`: exactly this port).
    pub mask: u16,
}

impl PortMatch {
    /// Exactly one port.
    pub fn exact(port: u16) -> Self {
        PortMatch {
            port,
            mask: u16::MAX,
        }
    }

    /// The inclusive range `from..=to` as the kernel can express it: one port under a mask of
    /// leading ones, so a range that is not an aligned power-of-two block is widened to the
    /// smallest block that holds it (what strongSwan installs too). `None`: every port (the
    /// full range, or a range that only the whole space holds, or an "opaque" `from > to`).
    pub fn range(from: u16, to: u16) -> Option<Self> {
        if from > to {
            return None;
        }
        let differing = from ^ to;
        let mask = if differing == 0 {
            u16::MAX
        } else {
            // ones down to (not including) the highest bit where from and to differ
            u16::MAX
                .checked_shl(16 - differing.leading_zeros())
                .unwrap_or(0)
        };
        (mask != 0).then_some(PortMatch {
            port: from & mask,
            mask,
        })
    }

    /// How many leading bits the mask fixes (0..=16), as strongSwan counts them for the
    /// policy priority.
    pub fn mask_bits(&self) -> u32 {
        self.mask.leading_ones()
    }
}

/// Packets from `src` to `dst`, optionally narrowed to an IP protocol and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Selector {
    /// Source prefix.
    pub src: Prefix,
    /// Destination prefix.
    pub dst: Prefix,
    /// IP protocol number (6 TCP, 17 UDP, ...), `None` for any.
    pub proto: Option<u8>,
    /// Source port, `None` for any (only meaningful with a protocol that has ports; for ICMP
    /// the kernel matches the type here).
    pub src_port: Option<PortMatch>,
    /// Destination port, `None` for any (for ICMP: the code).
    pub dst_port: Option<PortMatch>,
}

impl Selector {
    /// All traffic between two prefixes.
    pub fn between(src: Prefix, dst: Prefix) -> Self {
        Selector {
            src,
            dst,
            proto: None,
            src_port: None,
            dst_port: None,
        }
    }

    /// The address family; fails when source and destination differ.
    pub fn family(&self) -> Result<Family> {
        if self.src.family() != self.dst.family() {
            return Err(Error::invalid(
                "selector",
                format!("{} and {} are of different families", self.src, self.dst),
            ));
        }
        Ok(self.src.family())
    }

    /// The same selector seen from the other side (for the inbound half of a pair).
    pub fn reversed(&self) -> Self {
        Selector {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    pub(crate) fn to_raw(self) -> Result<RawSelector> {
        let family = self.family()?;
        if (self.src_port.is_some() || self.dst_port.is_some()) && self.proto.is_none() {
            return Err(Error::invalid(
                "selector",
                "ports need a protocol (e.g. proto 6 for TCP)",
            ));
        }
        let mut raw = RawSelector {
            family: family.raw(),
            saddr: Address::from_ip(&self.src.addr),
            daddr: Address::from_ip(&self.dst.addr),
            prefixlen_s: self.src.len,
            prefixlen_d: self.dst.len,
            proto: self.proto.unwrap_or(0),
            ..RawSelector::default()
        };
        if let Some(p) = self.src_port {
            raw.sport = p.port & p.mask;
            raw.sport_mask = p.mask;
        }
        if let Some(p) = self.dst_port {
            raw.dport = p.port & p.mask;
            raw.dport_mask = p.mask;
        }
        Ok(raw)
    }

    /// `None` for the all-zero selector of family AF_UNSPEC (an SA without one).
    pub(crate) fn from_raw(raw: &RawSelector) -> Option<Self> {
        let family = Family::from_raw(raw.family)?;
        let addr = |a: &Address| match family {
            Family::V4 => IpAddr::V4(a.to_ipv4()),
            Family::V6 => IpAddr::V6(a.to_ipv6()),
        };
        let src = Prefix::new(addr(&raw.saddr), raw.prefixlen_s.min(family.max_len())).ok()?;
        let dst = Prefix::new(addr(&raw.daddr), raw.prefixlen_d.min(family.max_len())).ok()?;
        Some(Selector {
            src,
            dst,
            proto: (raw.proto != 0).then_some(raw.proto),
            src_port: (raw.sport_mask != 0).then_some(PortMatch {
                port: raw.sport,
                mask: raw.sport_mask,
            }),
            dst_port: (raw.dport_mask != 0).then_some(PortMatch {
                port: raw.dport,
                mask: raw.dport_mask,
            }),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.src, self.dst)?;
        if let Some(p) = self.proto {
            write!(f, " proto {p}")?;
        }
        for (name, p) in [("sport", self.src_port), ("dport", self.dst_port)] {
            match p {
                Some(p) if p.mask == u16::MAX => write!(f, " {name} {}", p.port)?,
                Some(p) => write!(f, " {name} {}/{:#06x}", p.port, p.mask)?,
                None => {}
            }
        }
        Ok(())
    }
}

pub(crate) fn ip_from_raw(a: &Address, family: u16) -> Option<IpAddr> {
    match Family::from_raw(family)? {
        Family::V4 => Some(IpAddr::V4(a.to_ipv4())),
        Family::V6 => Some(IpAddr::V6(a.to_ipv6())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_mask() {
        let p: Prefix = "198.51.100.7/24".parse().unwrap();
        assert_eq!(p.to_string(), "198.51.100.0/24");
        let p: Prefix = "2001:db8::1/32".parse().unwrap();
        assert_eq!(p.to_string(), "2001:db8::/32");
        assert_eq!(
            "0.0.0.0/0".parse::<Prefix>().unwrap(),
            Prefix::any(Family::V4)
        );
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert_eq!("192.0.2.1".parse::<Prefix>().unwrap().len(), 32);
    }

    #[test]
    fn selector_round_trips_through_kernel_layout() {
        let s = Selector {
            src: "10.1.0.0/16".parse().unwrap(),
            dst: "10.2.3.0/24".parse().unwrap(),
            proto: Some(6),
            src_port: None,
            dst_port: Some(PortMatch::exact(443)),
        };
        let raw = s.to_raw().unwrap();
        assert_eq!(Selector::from_raw(&raw), Some(s));
        let mixed = Selector::between(
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        );
        assert!(mixed.to_raw().is_err());
        let ranged = Selector {
            src_port: PortMatch::range(1024, 2047),
            ..s
        };
        assert_eq!(Selector::from_raw(&ranged.to_raw().unwrap()), Some(ranged));
    }

    #[test]
    fn port_ranges_as_the_kernel_masks_them() {
        assert_eq!(PortMatch::range(443, 443), Some(PortMatch::exact(443)));
        assert_eq!(PortMatch::range(0, 65535), None);
        assert_eq!(PortMatch::range(65535, 0), None, "opaque");
        let block = PortMatch::range(1024, 2047).unwrap();
        assert_eq!(
            (block.port, block.mask, block.mask_bits()),
            (1024, 0xFC00, 6)
        );
        // not an aligned block: widened to the smallest one that holds it
        let wide = PortMatch::range(1000, 1030).unwrap();
        assert_eq!((wide.port, wide.mask), (0, 0xF800));
        assert!(wide.port <= 1000 && wide.port | !wide.mask >= 1030);
        // 1024-65535 needs the upper half and the quarter below it: the whole space
        assert_eq!(PortMatch::range(1024, 65535), None);
        assert_eq!(PortMatch::exact(5).mask_bits(), 16);
    }
}
