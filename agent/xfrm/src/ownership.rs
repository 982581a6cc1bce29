//! Which XFRM objects are ours.
//!
//! Strait shares the kernel's SAD and SPD with whatever else runs on the node (another IKE
//! daemon, a CNI's own IPsec, an admin's `ip xfrm`), so every object we install carries a tag,
//! and we only ever modify or delete tagged objects.
//!
//! The tag is the **reqid**, taken from a reserved range `0x5A00_0000..=0x5AFF_FFFF`:
//! - An SA's reqid has no effect on which packets it processes; it only links SAs to the policy
//!   templates that ask for them. Putting our tag there changes nothing about matching.
//! - A policy is ours when one of its templates carries a reqid in the range. Our IPsec
//!   policies have templates anyway (the template names the SA the policy wants).
//! - A `block` policy has no use for templates, and the kernel ignores them for `block` (it
//!   drops before resolving them, in and out), so we attach one template that carries the tag.
//! - A template-less `allow` policy (a global bypass) cannot be tagged without changing
//!   semantics (an outbound template makes the kernel look for an SA and send ACQUIREs), so we
//!   do not create those: IKE traffic is exempted per socket (`socket.rs`) instead.
//!
//! Alternatives we rejected: an XFRM mark (`XFRMA_MARK`) changes matching — a marked policy or
//! SA only applies to packets with that mark — so it cannot be a passive tag. Priority bands
//! change precedence, and an SPD index range is not under our control (the kernel picks a free
//! index when ours is taken). `XFRMA_SEC_CTX` needs an LSM. The reqid is also what other
//! daemons use to tell their objects apart (strongSwan counts up from 1, Libreswan from 16384),
//! so a range this far up does not collide with them in practice.
//!
//! 2^24 - 1 reqids are usable by the agent; the last one is reserved for preflight probes.

use std::collections::HashSet;
use std::fmt;

use crate::error::{Error, Result};
use crate::policy::PolicyId;
use crate::sa::SaId;

/// First reqid of the range Strait owns.
pub const REQID_BASE: u32 = 0x5A00_0000;
/// Last reqid of the range Strait owns (reserved for preflight probes).
pub const REQID_LAST: u32 = 0x5AFF_FFFF;
/// The reqid the preflight probe uses.
pub(crate) const PROBE_REQID: Reqid = Reqid(REQID_LAST);

/// An XFRM request id. Values in `REQID_BASE..=REQID_LAST` mark an object as Strait's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reqid(u32);

impl Reqid {
    /// Our reqid number `n` (0 ..= 0xFF_FFFE): `REQID_BASE + n`.
    pub fn ours(n: u32) -> Result<Self> {
        if n >= REQID_LAST - REQID_BASE {
            return Err(Error::invalid(
                "reqid",
                format!("{n} is outside 0..{}", REQID_LAST - REQID_BASE),
            ));
        }
        Ok(Reqid(REQID_BASE + n))
    }

    /// Any reqid as the kernel reports it.
    pub fn from_raw(raw: u32) -> Self {
        Reqid(raw)
    }

    /// The kernel's value.
    pub fn raw(self) -> u32 {
        self.0
    }

    /// Whether this reqid is in Strait's range.
    pub fn is_ours(self) -> bool {
        (REQID_BASE..=REQID_LAST).contains(&self.0)
    }

    /// For an owned reqid, its number within the range.
    pub fn index(self) -> Option<u32> {
        self.is_ours().then(|| self.0 - REQID_BASE)
    }
}

impl fmt::Debug for Reqid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reqid({:#x})", self.0)
    }
}

impl fmt::Display for Reqid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// What a sweep must leave in place: the objects the agent still wants.
#[derive(Debug, Clone, Default)]
pub struct KeepSet {
    /// SAs to keep.
    pub sas: HashSet<SaId>,
    /// Policies to keep.
    pub policies: HashSet<PolicyId>,
}

impl KeepSet {
    /// An empty set: a sweep removes everything of ours.
    pub fn new() -> Self {
        Self::default()
    }
}

/// What a sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// SAs deleted.
    pub sas_deleted: Vec<SaId>,
    /// Policies deleted.
    pub policies_deleted: Vec<PolicyId>,
    /// Objects that vanished between the listing and the delete (someone else removed them,
    /// or they expired): not an error.
    pub already_gone: usize,
}

impl crate::Xfrm {
    /// Deletes every object of ours that `keep` does not name: policies first (so traffic does
    /// not start asking for SAs that are about to vanish), then SAs. Foreign objects are never
    /// touched: the listing filters on the tag, and policies are deleted by index, so a
    /// look-alike installed in between is not hit. (An SA is deleted by destination and SPI;
    /// for a foreign SA to be hit, another daemon would have to reuse that exact SPI within the
    /// microseconds between our dump and our delete.)
    pub async fn sweep(&self, keep: &KeepSet) -> Result<SweepReport> {
        const OP: &str = "sweep";
        let mut report = SweepReport::default();
        for p in self.list_our_policies().await? {
            if keep.policies.contains(&p.id) {
                continue;
            }
            match self.delete_policy_by_index(OP, &p).await {
                Ok(()) => report.policies_deleted.push(p.id),
                Err(Error::NotFound { .. }) => report.already_gone += 1,
                Err(e) => return Err(e),
            }
        }
        for sa in self.list_our_sas().await? {
            if keep.sas.contains(&sa.id) {
                continue;
            }
            match self.delete_sa_unchecked(OP, &sa.id).await {
                Ok(()) => report.sas_deleted.push(sa.id),
                Err(Error::NotFound { .. }) => report.already_gone += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Deletes all of our objects (a sweep with nothing to keep).
    pub async fn flush_ours(&self) -> Result<SweepReport> {
        self.sweep(&KeepSet::new()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reqid_range() {
        assert!(Reqid::ours(0).unwrap().is_ours());
        assert_eq!(Reqid::ours(7).unwrap().raw(), 0x5A00_0007);
        assert_eq!(Reqid::ours(7).unwrap().index(), Some(7));
        assert!(
            Reqid::ours(0xFF_FFFF).is_err(),
            "the probe reqid is reserved"
        );
        assert!(!Reqid::from_raw(1).is_ours());
        assert!(!Reqid::from_raw(16384).is_ours());
        assert!(PROBE_REQID.is_ours());
    }
}
