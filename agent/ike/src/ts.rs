//! Traffic selector narrowing (RFC 7296 §2.9): the responder answers with the intersection of
//! what the initiator proposed and what it is configured for; the initiator checks that the
//! answer stays within what it proposed.

use crate::codec::{AddrRange, TrafficSelector, TrafficSelectors, TsRange};

/// The selectors of a TS payload we can reason about (address ranges); others are ignored.
pub fn ranges(ts: &TrafficSelectors) -> Vec<TsRange> {
    ts.selectors
        .iter()
        .filter_map(|s| match s {
            TrafficSelector::Range(r) => Some(*r),
            TrafficSelector::Other { .. } => None,
        })
        .collect()
}

/// A TS payload from ranges.
pub fn payload(ranges: &[TsRange]) -> TrafficSelectors {
    TrafficSelectors {
        selectors: ranges.iter().copied().map(TrafficSelector::Range).collect(),
    }
}

/// The intersection of two ranges, if not empty.
pub fn intersect(a: &TsRange, b: &TsRange) -> Option<TsRange> {
    let ip_protocol = match (a.ip_protocol, b.ip_protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    if start_port > end_port {
        return None;
    }
    let addrs = match (a.addrs, b.addrs) {
        (AddrRange::V4 { start: s1, end: e1 }, AddrRange::V4 { start: s2, end: e2 }) => {
            let (start, end) = (s1.max(s2), e1.min(e2));
            if start > end {
                return None;
            }
            AddrRange::V4 { start, end }
        }
        (AddrRange::V6 { start: s1, end: e1 }, AddrRange::V6 { start: s2, end: e2 }) => {
            let (start, end) = (s1.max(s2), e1.min(e2));
            if start > end {
                return None;
            }
            AddrRange::V6 { start, end }
        }
        _ => return None,
    };
    Some(TsRange {
        ip_protocol,
        start_port,
        end_port,
        addrs,
    })
}

/// Narrows the peer's proposal to our configuration: every non-empty pairwise intersection, in
/// the peer's order, without duplicates. Empty means TS_UNACCEPTABLE.
pub fn narrow(proposed: &[TsRange], configured: &[TsRange]) -> Vec<TsRange> {
    let mut out: Vec<TsRange> = Vec::new();
    for p in proposed {
        for c in configured {
            if let Some(i) = intersect(p, c)
                && !out.contains(&i)
            {
                out.push(i);
            }
        }
    }
    out
}

/// Whether `inner` lies entirely within `outer`.
pub fn within(inner: &TsRange, outer: &TsRange) -> bool {
    intersect(inner, outer).is_some_and(|i| i == *inner)
}

/// Whether every selector of `answer` lies within one of `proposed` (initiator's check).
pub fn all_within(answer: &[TsRange], proposed: &[TsRange]) -> bool {
    !answer.is_empty() && answer.iter().all(|a| proposed.iter().any(|p| within(a, p)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn net(s: &str) -> TsRange {
        let (a, p) = s.split_once('/').unwrap();
        TsRange::subnet(a.parse().unwrap(), p.parse().unwrap()).unwrap()
    }

    #[test]
    fn narrowing_is_the_intersection() {
        let wide = net("10.0.0.0/8");
        let mine = net("10.1.0.0/16");
        assert_eq!(narrow(&[wide], &[mine]), vec![mine]);
        assert_eq!(narrow(&[mine], &[wide]), vec![mine]);
        assert!(narrow(&[net("192.168.0.0/24")], &[mine]).is_empty());
        assert!(narrow(&[net("2001:db8::/32")], &[mine]).is_empty());
        let tcp = TsRange {
            ip_protocol: 6,
            start_port: 80,
            end_port: 443,
            ..mine
        };
        let got = narrow(&[tcp], &[wide]);
        assert_eq!(got, vec![tcp]);
        let udp = TsRange {
            ip_protocol: 17,
            ..tcp
        };
        assert!(intersect(&tcp, &udp).is_none());
        assert!(all_within(&[mine], &[wide]));
        assert!(!all_within(&[wide], &[mine]));
        assert!(!all_within(&[], &[mine]));
        assert_eq!(ranges(&payload(&[mine, wide])), vec![mine, wide]);
    }

    /// A small generator for the property tests: ranges drawn from a small space so that
    /// they overlap often.
    struct Gen(crate::crypto::rng::DeterministicRng);

    impl Gen {
        fn below(&mut self, n: u64) -> u64 {
            use crate::crypto::rng::Rng;
            let mut b = [0u8; 8];
            self.0.fill(&mut b);
            u64::from_be_bytes(b) % n
        }

        fn range(&mut self) -> TsRange {
            let (a, b) = (self.below(64) as u8, self.below(64) as u8);
            let addrs = if self.below(8) == 0 {
                let v6 = |x: u8| core::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, x.into());
                AddrRange::V6 {
                    start: v6(a.min(b)),
                    end: v6(a.max(b)),
                }
            } else {
                let v4 = |x: u8| core::net::Ipv4Addr::new(10, 0, 0, x);
                AddrRange::V4 {
                    start: v4(a.min(b)),
                    end: v4(a.max(b)),
                }
            };
            let (p, q) = (self.below(100) as u16, self.below(100) as u16);
            let any_port = self.below(2) == 0;
            TsRange {
                ip_protocol: [0, 0, 6, 17][self.below(4) as usize],
                start_port: if any_port { 0 } else { p.min(q) },
                end_port: if any_port { u16::MAX } else { p.max(q) },
                addrs,
            }
        }

        fn ranges(&mut self) -> Vec<TsRange> {
            (0..1 + self.below(3)).map(|_| self.range()).collect()
        }
    }

    #[test]
    fn narrowing_is_sound_complete_and_accepted_for_random_selectors() {
        let mut g = Gen(crate::crypto::rng::DeterministicRng::new(7));
        let mut nonempty = 0;
        for _ in 0..20_000 {
            let (proposed, configured) = (g.ranges(), g.ranges());
            let got = narrow(&proposed, &configured);
            // sound: every selector is within one proposed and one configured
            for s in &got {
                assert!(proposed.iter().any(|p| within(s, p)), "{s:?} not proposed");
                assert!(
                    configured.iter().any(|c| within(s, c)),
                    "{s:?} not configured"
                );
            }
            // complete: whatever both allow is covered; intersection commutes
            for p in &proposed {
                for c in &configured {
                    assert_eq!(intersect(p, c), intersect(c, p));
                    if let Some(i) = intersect(p, c) {
                        assert!(got.iter().any(|s| within(&i, s)), "{i:?} lost");
                    }
                }
            }
            // no duplicates, and the initiator's check takes the answer
            for (k, s) in got.iter().enumerate() {
                assert!(!got[..k].contains(s));
            }
            if !got.is_empty() {
                nonempty += 1;
                assert!(all_within(&got, &proposed));
            }
        }
        // the generator overlaps often enough to test something
        assert!(nonempty > 5_000, "{nonempty}");
    }
}
