//! Which policy the kernel holds for each selector and direction, when several want one.
//!
//! The kernel keeps one policy per (selector, direction, mark). Several of ours can want the
//! same one: a tunnel's fail-closed policy and the CHILD SA whose selectors equal it, two CHILD
//! SAs of one tunnel with an overlapping selector pair, two tunnels with identical subnets. Each
//! claims the policies it wants; the kernel holds the winning claim (a CHILD SA's over a
//! tunnel's fallback, the newest among equals) and falls back to the next one when a claim is
//! released, so releasing a CHILD SA puts the tunnel's block or trap policy back instead of
//! leaving the selector unprotected, and removing one tunnel never removes another's policy.
//!
//! Pure: the changes to make are returned, the kernel data plane applies them.

use std::collections::HashMap;

use strait_ike::ChildSaId;
use strait_xfrm::{Policy, PolicyId};

/// Who wants a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    /// A tunnel's fail-closed (block or trap) policies, by tunnel index.
    Tunnel(u32),
    /// A CHILD SA's policies.
    Child(ChildSaId),
}

impl Owner {
    fn rank(self) -> u8 {
        match self {
            Owner::Tunnel(_) => 0,
            Owner::Child(_) => 1,
        }
    }
}

/// A change the kernel's SPD needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Install or replace this policy.
    Put(Policy),
    /// Remove the policy with this id.
    Remove(PolicyId),
}

#[derive(Debug, Clone)]
struct Claim {
    owner: Owner,
    seq: u64,
    policy: Policy,
}

/// The claims on every policy id of ours.
#[derive(Debug, Default)]
pub(crate) struct PolicyTable {
    by_id: HashMap<PolicyId, Vec<Claim>>,
    seq: u64,
}

fn winner(claims: &[Claim]) -> Option<&Policy> {
    claims
        .iter()
        .max_by_key(|c| (c.owner.rank(), c.seq))
        .map(|c| &c.policy)
}

impl PolicyTable {
    /// `owner` wants `policies` (replacing what it claimed before): the changes to make.
    pub(crate) fn claim(&mut self, owner: Owner, policies: Vec<Policy>) -> Vec<Change> {
        let mut changes = self.release(owner);
        for policy in policies {
            self.seq += 1;
            let id = policy.id();
            let claims = self.by_id.entry(id).or_default();
            let before = winner(claims).cloned();
            claims.push(Claim {
                owner,
                seq: self.seq,
                policy,
            });
            let after = winner(claims).cloned();
            if after != before
                && let Some(p) = after
            {
                // a Put of the same id queued by the release above is superseded
                changes.retain(|c| !matches!(c, Change::Put(q) if q.id() == id));
                changes.retain(|c| !matches!(c, Change::Remove(r) if *r == id));
                changes.push(Change::Put(p));
            }
        }
        changes
    }

    /// `owner` no longer wants its policies: the changes to make (the next claim on each id
    /// goes in, or the policy goes when none is left).
    pub(crate) fn release(&mut self, owner: Owner) -> Vec<Change> {
        let mut changes = Vec::new();
        let ids: Vec<PolicyId> = self
            .by_id
            .iter()
            .filter(|(_, cs)| cs.iter().any(|c| c.owner == owner))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(claims) = self.by_id.get_mut(&id) else {
                continue;
            };
            let before = winner(claims).cloned();
            claims.retain(|c| c.owner != owner);
            match winner(claims).cloned() {
                None => {
                    self.by_id.remove(&id);
                    changes.push(Change::Remove(id));
                }
                Some(p) if Some(&p) != before.as_ref() => changes.push(Change::Put(p)),
                Some(_) => {}
            }
        }
        changes
    }

    /// Whether `owner` holds any claim.
    pub(crate) fn has(&self, owner: Owner) -> bool {
        self.by_id
            .values()
            .any(|cs| cs.iter().any(|c| c.owner == owner))
    }

    /// The ids of every policy the kernel should hold.
    pub(crate) fn ids(&self) -> impl Iterator<Item = PolicyId> + '_ {
        self.by_id.keys().copied()
    }

    /// The policy the kernel should hold for `id`.
    pub(crate) fn effective(&self, id: &PolicyId) -> Option<&Policy> {
        self.by_id.get(id).and_then(|cs| winner(cs))
    }

    /// Forgets everything (after the kernel's objects were flushed).
    pub(crate) fn clear(&mut self) {
        self.by_id.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use strait_xfrm::{Direction, Mode, Reqid, Selector, Template};

    fn sel(s: &str, d: &str) -> Selector {
        Selector::between(s.parse().unwrap(), d.parse().unwrap())
    }

    fn block(s: &str, d: &str, n: u32) -> Policy {
        Policy::block(sel(s, d), Direction::Out, 10, Reqid::ours(n).unwrap())
    }

    fn protect(s: &str, d: &str, n: u32) -> Policy {
        let t = Template::esp(
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            Mode::Tunnel,
            Reqid::ours(n).unwrap(),
        );
        Policy::protect(sel(s, d), Direction::Out, 9, t)
    }

    #[test]
    fn a_child_sa_replaces_the_block_and_gives_it_back() {
        let mut t = PolicyTable::default();
        let b = block("10.1.0.0/16", "10.2.0.0/16", 0x100);
        assert_eq!(
            t.claim(Owner::Tunnel(1), vec![b.clone()]),
            vec![Change::Put(b.clone())]
        );
        let p = protect("10.1.0.0/16", "10.2.0.0/16", 0x101);
        let child = Owner::Child(ChildSaId(7));
        assert_eq!(
            t.claim(child, vec![p.clone()]),
            vec![Change::Put(p.clone())]
        );
        // a rekey's twin claims the same policy: nothing changes, and its release neither
        let twin = Owner::Child(ChildSaId(8));
        assert_eq!(t.claim(twin, vec![p.clone()]), vec![]);
        assert_eq!(t.release(child), vec![]);
        // the last CHILD SA goes: the block is back, never a gap without a policy
        assert_eq!(t.release(twin), vec![Change::Put(b.clone())]);
        assert_eq!(t.effective(&b.id()), Some(&b));
        assert!(t.has(Owner::Tunnel(1)));
        assert_eq!(t.release(Owner::Tunnel(1)), vec![Change::Remove(b.id())]);
        assert_eq!(t.ids().count(), 0);
    }

    #[test]
    fn a_narrowed_child_leaves_the_block_alone() {
        let mut t = PolicyTable::default();
        let b = block("10.1.0.0/16", "10.2.0.0/16", 0x100);
        t.claim(Owner::Tunnel(1), vec![b.clone()]);
        let p = protect("10.1.1.0/24", "10.2.0.0/16", 0x101);
        let child = Owner::Child(ChildSaId(1));
        assert_eq!(
            t.claim(child, vec![p.clone()]),
            vec![Change::Put(p.clone())]
        );
        assert_eq!(t.release(child), vec![Change::Remove(p.id())]);
        assert_eq!(t.effective(&b.id()), Some(&b));
    }

    #[test]
    fn tunnels_with_the_same_subnets_do_not_remove_each_others_policies() {
        let mut t = PolicyTable::default();
        let b1 = block("10.1.0.0/16", "10.2.0.0/16", 0x100);
        let b2 = block("10.1.0.0/16", "10.2.0.0/16", 0x200);
        t.claim(Owner::Tunnel(1), vec![b1.clone()]);
        let p1 = protect("10.1.0.0/16", "10.2.0.0/16", 0x101);
        t.claim(Owner::Child(ChildSaId(1)), vec![p1.clone()]);
        // the second tunnel's block does not displace the first tunnel's live CHILD SA
        assert_eq!(t.claim(Owner::Tunnel(2), vec![b2.clone()]), vec![]);
        assert_eq!(t.effective(&b1.id()), Some(&p1));
        // the first tunnel goes (CHILD SA, then its block): the second's block holds
        assert_eq!(
            t.release(Owner::Child(ChildSaId(1))),
            vec![Change::Put(b2.clone())]
        );
        assert_eq!(t.release(Owner::Tunnel(1)), vec![]);
        assert_eq!(t.effective(&b2.id()), Some(&b2));
    }

    #[test]
    fn claiming_again_replaces_the_owners_claims() {
        let mut t = PolicyTable::default();
        let a = block("10.1.0.0/16", "10.2.0.0/16", 0x100);
        let b = block("10.1.0.0/16", "10.3.0.0/16", 0x100);
        t.claim(Owner::Tunnel(1), vec![a.clone()]);
        let changes = t.claim(Owner::Tunnel(1), vec![b.clone()]);
        assert_eq!(
            changes,
            vec![Change::Remove(a.id()), Change::Put(b.clone())]
        );
        // the same policy claimed again: its Remove and Put cancel to one Put
        let changes = t.claim(Owner::Tunnel(1), vec![b.clone()]);
        assert_eq!(changes, vec![Change::Put(b)]);
    }
}
