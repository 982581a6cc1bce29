//! Traffic Selector payload (§3.13): TSi and TSr.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::codec::enums::TsType;
use crate::codec::error::{DecodeError, EncodeError};
use crate::codec::reader::Reader;
use crate::codec::writer::Writer;

/// The body of TSi or TSr.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrafficSelectors {
    /// The selectors; their union is the traffic described.
    pub selectors: Vec<TrafficSelector>,
}

/// One traffic selector (§3.13.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficSelector {
    /// An IPv4 or IPv6 address range with protocol and port range.
    Range(TsRange),
    /// A selector type this codec does not interpret (e.g. RFC 9478 security labels); kept so
    /// the negotiation can ignore or refuse it.
    Other {
        /// The selector type.
        ts_type: TsType,
        /// Everything after the type and length fields.
        data: Vec<u8>,
    },
}

/// An address range selector (TS_IPV4_ADDR_RANGE / TS_IPV6_ADDR_RANGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TsRange {
    /// IP protocol number, 0 for any.
    pub ip_protocol: u8,
    /// First port (ICMP: type and code).
    pub start_port: u16,
    /// Last port; 0..=65535 is any, 65535..=0 is OPAQUE.
    pub end_port: u16,
    /// First and last address, inclusive.
    pub addrs: AddrRange,
}

/// Inclusive address range of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrRange {
    /// IPv4.
    V4 {
        /// First address.
        start: Ipv4Addr,
        /// Last address.
        end: Ipv4Addr,
    },
    /// IPv6.
    V6 {
        /// First address.
        start: Ipv6Addr,
        /// Last address.
        end: Ipv6Addr,
    },
}

impl core::fmt::Display for TsRange {
    /// strongSwan's notation: `198.51.100.0/24` when the range is a prefix, else `a-b`, then
    /// `[proto]` or `[proto/port]` / `[proto/lo-hi]` when restricted.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.prefix(), self.addrs) {
            (Some((a, len)), _) => write!(f, "{a}/{len}")?,
            (None, AddrRange::V4 { start, end }) => write!(f, "{start}-{end}")?,
            (None, AddrRange::V6 { start, end }) => write!(f, "{start}-{end}")?,
        }
        let any_port = self.start_port == 0 && self.end_port == u16::MAX;
        match (self.ip_protocol, any_port) {
            (0, true) => Ok(()),
            (p, true) => write!(f, "[{p}]"),
            (p, false) if self.start_port == self.end_port => {
                write!(f, "[{p}/{}]", self.start_port)
            }
            (p, false) => write!(f, "[{p}/{}-{}]", self.start_port, self.end_port),
        }
    }
}

impl TsRange {
    /// The range as a prefix (address, length), if it is one.
    pub fn prefix(&self) -> Option<(IpAddr, u8)> {
        let (start, end, bits) = match self.addrs {
            AddrRange::V4 { start, end } => (
                u128::from(u32::from(start)),
                u128::from(u32::from(end)),
                32u32,
            ),
            AddrRange::V6 { start, end } => (u128::from(start), u128::from(end), 128u32),
        };
        let host = start ^ end;
        // host bits must be a run of ones at the bottom, and start must have them clear
        if host & host.wrapping_add(1) != 0 || start & host != 0 {
            return None;
        }
        let len = bits - (128 - host.leading_zeros()).min(bits);
        let addr = match self.addrs {
            AddrRange::V4 { start, .. } => IpAddr::V4(start),
            AddrRange::V6 { start, .. } => IpAddr::V6(start),
        };
        u8::try_from(len).ok().map(|l| (addr, l))
    }

    /// All traffic of a subnet (any protocol and port). `None` if `prefix_len` is too long for
    /// the address family.
    pub fn subnet(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let addrs = match addr {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
                if prefix_len > 32 {
                    return None;
                }
                let base = u32::from(a) & !host;
                AddrRange::V4 {
                    start: Ipv4Addr::from(base),
                    end: Ipv4Addr::from(base | host),
                }
            }
            IpAddr::V6(a) => {
                let host = u128::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
                if prefix_len > 128 {
                    return None;
                }
                let base = u128::from(a) & !host;
                AddrRange::V6 {
                    start: Ipv6Addr::from(base),
                    end: Ipv6Addr::from(base | host),
                }
            }
        };
        Some(Self {
            ip_protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
            addrs,
        })
    }
}

impl TrafficSelector {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let ts_type = TsType(r.u8()?);
        let ip_protocol = r.u8()?;
        let len = usize::from(r.u16()?);
        let mut body = r.sub(
            len.checked_sub(4).ok_or(DecodeError::BadLength {
                what: "traffic selector",
                declared: len,
                available: r.remaining().saturating_add(4),
            })?,
            "traffic selector",
        )?;
        let ts = match ts_type {
            TsType::IPV4_ADDR_RANGE | TsType::IPV6_ADDR_RANGE => {
                let start_port = body.u16()?;
                let end_port = body.u16()?;
                let addrs = if ts_type == TsType::IPV4_ADDR_RANGE {
                    AddrRange::V4 {
                        start: Ipv4Addr::from(body.array::<4>()?),
                        end: Ipv4Addr::from(body.array::<4>()?),
                    }
                } else {
                    AddrRange::V6 {
                        start: Ipv6Addr::from(body.array::<16>()?),
                        end: Ipv6Addr::from(body.array::<16>()?),
                    }
                };
                body.finish()?;
                Self::Range(TsRange {
                    ip_protocol,
                    start_port,
                    end_port,
                    addrs,
                })
            }
            _ => {
                // The protocol byte belongs to the opaque part for unknown types.
                let mut data = vec![ip_protocol];
                data.extend_from_slice(body.rest());
                Self::Other { ts_type, data }
            }
        };
        Ok(ts)
    }

    fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        let start = w.len();
        match self {
            Self::Range(t) => {
                let ts_type = match t.addrs {
                    AddrRange::V4 { .. } => TsType::IPV4_ADDR_RANGE,
                    AddrRange::V6 { .. } => TsType::IPV6_ADDR_RANGE,
                };
                w.put_u8(ts_type.0);
                w.put_u8(t.ip_protocol);
                let mark = w.begin_len16(start, "traffic selector");
                w.put_u16(t.start_port);
                w.put_u16(t.end_port);
                match t.addrs {
                    AddrRange::V4 { start, end } => {
                        w.put_bytes(&start.octets());
                        w.put_bytes(&end.octets());
                    }
                    AddrRange::V6 { start, end } => {
                        w.put_bytes(&start.octets());
                        w.put_bytes(&end.octets());
                    }
                }
                w.end_len16(mark)
            }
            Self::Other { ts_type, data } => {
                let (proto, rest) = data.split_first().ok_or(EncodeError::InvalidField {
                    what: "traffic selector data",
                })?;
                w.put_u8(ts_type.0);
                w.put_u8(*proto);
                let mark = w.begin_len16(start, "traffic selector");
                w.put_bytes(rest);
                w.end_len16(mark)
            }
        }
    }
}

impl TrafficSelectors {
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = usize::from(r.u8()?);
        let _reserved = r.take(3)?;
        let mut selectors = Vec::with_capacity(count);
        for _ in 0..count {
            if r.is_empty() {
                return Err(DecodeError::CountMismatch {
                    what: "traffic selectors",
                    declared: count,
                    found: selectors.len(),
                });
            }
            selectors.push(TrafficSelector::read(r)?);
        }
        Ok(Self { selectors })
    }

    pub(crate) fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        let count = u8::try_from(self.selectors.len()).map_err(|_| EncodeError::TooLong {
            what: "traffic selector count",
        })?;
        w.put_u8(count);
        w.put_bytes(&[0, 0, 0]);
        for s in &self.selectors {
            s.write(w)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn subnets_become_ranges() {
        let r = TsRange::subnet("198.51.100.77".parse().unwrap(), 24).unwrap();
        assert_eq!(
            r.addrs,
            AddrRange::V4 {
                start: Ipv4Addr::new(198, 51, 100, 0),
                end: Ipv4Addr::new(198, 51, 100, 255)
            }
        );
        assert_eq!((r.start_port, r.end_port, r.ip_protocol), (0, 65535, 0));
        let all = TsRange::subnet("10.0.0.1".parse().unwrap(), 0).unwrap();
        assert_eq!(
            all.addrs,
            AddrRange::V4 {
                start: Ipv4Addr::UNSPECIFIED,
                end: Ipv4Addr::BROADCAST
            }
        );
        let host = TsRange::subnet("10.0.0.1".parse().unwrap(), 32).unwrap();
        assert_eq!(
            host.addrs,
            AddrRange::V4 {
                start: Ipv4Addr::new(10, 0, 0, 1),
                end: Ipv4Addr::new(10, 0, 0, 1)
            }
        );
        assert!(TsRange::subnet("10.0.0.1".parse().unwrap(), 33).is_none());
        let v6 = TsRange::subnet("2001:db8::1".parse().unwrap(), 64).unwrap();
        assert_eq!(
            v6.addrs,
            AddrRange::V6 {
                start: "2001:db8::".parse().unwrap(),
                end: "2001:db8::ffff:ffff:ffff:ffff".parse().unwrap()
            }
        );
        assert!(TsRange::subnet("::".parse().unwrap(), 128).is_some());
        assert!(TsRange::subnet("::".parse().unwrap(), 129).is_none());
    }
}
