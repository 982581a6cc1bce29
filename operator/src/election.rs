//! Gateway election: which node terminates a tunnel.

use std::collections::BTreeSet;

/// Picks the active gateway among `candidates` (matching nodes whose agent is alive).
///
/// Stability first: the current gateway keeps the tunnel while it stays a candidate, because a
/// move tears the tunnel down. Otherwise the first candidate by name, so that every replica and
/// every run makes the same choice.
pub fn elect(current: Option<&str>, candidates: &BTreeSet<String>) -> Option<String> {
    match current {
        Some(node) if candidates.contains(node) => Some(node.to_owned()),
        _ => candidates.first().cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn keeps_the_current_gateway_while_it_is_a_candidate() {
        assert_eq!(elect(Some("b"), &set(&["a", "b"])).as_deref(), Some("b"));
    }

    #[test]
    fn picks_the_first_by_name_otherwise() {
        assert_eq!(elect(None, &set(&["c", "a", "b"])).as_deref(), Some("a"));
        assert_eq!(elect(Some("x"), &set(&["c", "b"])).as_deref(), Some("b"));
        assert_eq!(elect(Some("x"), &set(&[])), None);
    }
}
