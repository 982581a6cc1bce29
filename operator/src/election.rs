//! Gateway election: which node terminates a tunnel.

use std::collections::BTreeMap;

/// What the election knows of one matching node whose agent is alive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Candidate {
    /// Cordoned (`spec.unschedulable`: `kubectl cordon`, or a drain in progress).
    pub cordoned: bool,
    /// How many other tunnels this node is the active gateway of.
    pub load: usize,
}

/// Picks the active gateway among `candidates`.
///
/// - Cordoned nodes are a last resort: they are elected only when every candidate is, so a
///   drain moves tunnels off its node while a single-gateway site keeps its tunnel.
/// - Stability next: the current gateway keeps the tunnel while it stays an eligible candidate,
///   because a move tears the tunnel down.
/// - Otherwise the least loaded eligible node, then the first by name, so that tunnels sharing
///   a selector spread over its nodes and every replica and run makes the same choice.
pub fn elect(current: Option<&str>, candidates: &BTreeMap<String, Candidate>) -> Option<String> {
    let all_cordoned = candidates.values().all(|c| c.cordoned);
    let eligible = |c: &Candidate| !c.cordoned || all_cordoned;
    if let Some(node) = current
        && candidates.get(node).is_some_and(eligible)
    {
        return Some(node.to_owned());
    }
    candidates
        .iter()
        .filter(|(_, c)| eligible(c))
        .min_by_key(|(name, c)| (c.load, *name))
        .map(|(name, _)| name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidates by name: (cordoned, load).
    fn set(nodes: &[(&str, bool, usize)]) -> BTreeMap<String, Candidate> {
        nodes
            .iter()
            .map(|(n, cordoned, load)| {
                (
                    (*n).to_owned(),
                    Candidate {
                        cordoned: *cordoned,
                        load: *load,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn keeps_the_current_gateway_while_it_is_a_candidate() {
        let c = set(&[("a", false, 0), ("b", false, 5)]);
        assert_eq!(elect(Some("b"), &c).as_deref(), Some("b"));
    }

    #[test]
    fn picks_the_least_loaded_then_the_first_by_name() {
        let idle = set(&[("c", false, 0), ("a", false, 0), ("b", false, 0)]);
        assert_eq!(elect(None, &idle).as_deref(), Some("a"));
        let busy = set(&[("a", false, 2), ("b", false, 1), ("c", false, 1)]);
        assert_eq!(elect(None, &busy).as_deref(), Some("b"));
        assert_eq!(elect(Some("x"), &busy).as_deref(), Some("b"));
        assert_eq!(elect(Some("x"), &set(&[])), None);
    }

    #[test]
    fn tunnels_sharing_a_selector_spread_over_its_nodes() {
        let mut load: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..9 {
            let c: BTreeMap<String, Candidate> = ["n1", "n2", "n3"]
                .iter()
                .map(|n| {
                    let load = load.get(*n).copied().unwrap_or(0);
                    (
                        (*n).to_owned(),
                        Candidate {
                            cordoned: false,
                            load,
                        },
                    )
                })
                .collect();
            let won = elect(None, &c).unwrap();
            *load.entry(won).or_default() += 1;
        }
        assert_eq!(load.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);
    }

    #[test]
    fn a_cordoned_node_is_left_unless_every_candidate_is_cordoned() {
        let c = set(&[("a", true, 0), ("b", false, 4)]);
        // the current gateway is cordoned: the tunnel moves to the open node
        assert_eq!(elect(Some("a"), &c).as_deref(), Some("b"));
        assert_eq!(elect(None, &c).as_deref(), Some("b"));
        // all cordoned: a single-gateway site keeps its tunnel, and a new one still gets one
        let all = set(&[("a", true, 0), ("b", true, 0)]);
        assert_eq!(elect(Some("b"), &all).as_deref(), Some("b"));
        assert_eq!(elect(None, &all).as_deref(), Some("a"));
    }
}
