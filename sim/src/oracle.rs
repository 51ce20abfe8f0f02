//! The oracle: what the simulated clients saw, and the invariants it must satisfy.

use std::collections::BTreeSet;
use std::time::Duration;

/// How one client operation (a ping through the balancer, or a step of the
/// files workload) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: answered by a node (a ping), or what a workload step did.
    Ok {
        /// The node that answered, or what was done.
        detail: String,
    },
    /// Failed with a typed error (its code).
    Failed {
        /// The protocol error code of the failure.
        code: String,
    },
    /// Did not finish within the operation bound: a hang.
    Hung,
}

/// One operation as the oracle records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The client host.
    pub client: String,
    /// Simulated time at start.
    pub start: Duration,
    /// Simulated time at end.
    pub end: Duration,
    /// Whether the operation started after every fault was healed (plus a settle delay).
    pub after_heal: bool,
    /// How it ended.
    pub outcome: Outcome,
}

/// Balancer counters at the end of the fault-free warm-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmupSpread {
    /// Connections per backend.
    pub totals: Vec<u64>,
    /// Failed connects per backend.
    pub failures: Vec<u64>,
}

/// Checks every invariant; returns one line per violation.
pub fn check(ops: &[Op], op_bound: Duration, warmup: Option<&WarmupSpread>) -> Vec<String> {
    let mut violations = Vec::new();
    for op in ops {
        // 1. No operation hangs: each completes or fails, within its bound.
        if op.outcome == Outcome::Hung || op.end - op.start > op_bound {
            violations.push(format!(
                "{} hung: started at {:?}, ended at {:?} ({:?})",
                op.client, op.start, op.end, op.outcome
            ));
        }
        // 2. Liveness after heal: once faults stop, every operation succeeds.
        if op.after_heal && !matches!(op.outcome, Outcome::Ok { .. }) {
            violations.push(format!(
                "{} failed after heal at {:?}: {:?}",
                op.client, op.start, op.outcome
            ));
        }
    }
    // 3. With every backend healthy, round-robin spreads connections exactly.
    if let Some(spread) = warmup {
        let (min, max) = (spread.totals.iter().min(), spread.totals.iter().max());
        if min != max || spread.failures.iter().any(|&f| f > 0) {
            violations.push(format!(
                "round-robin uneven with all backends healthy: totals {:?}, failures {:?}",
                spread.totals, spread.failures
            ));
        }
    }
    violations
}

/// What one server holds at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdings {
    /// The server.
    pub node: String,
    /// The digest of its replicated state, or why there is none.
    pub digest: Result<[u8; 32], String>,
    /// The chunks the versions it keeps reference.
    pub referenced: BTreeSet<[u8; 32]>,
    /// The chunks its store holds.
    pub held: BTreeSet<[u8; 32]>,
}

/// After the heal, every node holds the same: the same replicated state
/// (equal digests, hence the same versions and the same referenced chunks)
/// and every chunk those versions reference. Chunks nothing references (an
/// upload abandoned on one node, not yet collected) are the node's own
/// business. One line per difference.
pub fn replicas(nodes: &[Holdings]) -> Vec<String> {
    let mut violations = Vec::new();
    for node in nodes {
        if let Err(why) = &node.digest {
            violations.push(format!("{} did not converge: {why}", node.node));
        }
        let missing = node.referenced.difference(&node.held).count();
        if missing > 0 {
            violations.push(format!(
                "{} did not converge: it lacks {missing} of the {} chunks its versions reference",
                node.node,
                node.referenced.len()
            ));
        }
    }
    let digests: Vec<(&str, &[u8; 32])> = nodes
        .iter()
        .filter_map(|n| n.digest.as_ref().ok().map(|d| (n.node.as_str(), d)))
        .collect();
    if let Some((first, d)) = digests.first()
        && let Some((other, _)) = digests.iter().find(|(_, e)| e != d)
    {
        violations.push(format!(
            "{first} and {other} did not converge: their replicated state differs (digests)"
        ));
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(outcome: Outcome, after_heal: bool, secs: u64) -> Op {
        Op {
            client: "c".into(),
            start: Duration::ZERO,
            end: Duration::from_secs(secs),
            after_heal,
            outcome,
        }
    }

    #[test]
    fn each_invariant_can_fail() {
        let bound = Duration::from_secs(10);
        let ok = Outcome::Ok { detail: "n".into() };
        let failed = Outcome::Failed {
            code: "unavailable".into(),
        };
        assert!(
            check(
                &[op(ok.clone(), true, 1), op(failed.clone(), false, 1)],
                bound,
                None
            )
            .is_empty()
        );
        assert_eq!(check(&[op(Outcome::Hung, false, 1)], bound, None).len(), 1);
        assert_eq!(check(&[op(failed, false, 11)], bound, None).len(), 1);
        assert_eq!(
            check(
                &[op(Outcome::Failed { code: "x".into() }, true, 1)],
                bound,
                None
            )
            .len(),
            1
        );
        let even = WarmupSpread {
            totals: vec![4, 4, 4],
            failures: vec![0; 3],
        };
        assert!(check(&[], bound, Some(&even)).is_empty());
        let uneven = WarmupSpread {
            totals: vec![5, 4, 3],
            failures: vec![0; 3],
        };
        assert_eq!(check(&[], bound, Some(&uneven)).len(), 1);
    }

    #[test]
    fn replicas_must_agree_and_hold_their_chunks() {
        let node = |name: &str, digest: u8, held: &[u8]| Holdings {
            node: name.into(),
            digest: Ok([digest; 32]),
            referenced: [[1u8; 32], [2u8; 32]].into(),
            held: held.iter().map(|&b| [b; 32]).collect(),
        };
        let same = [node("a", 7, &[1, 2]), node("b", 7, &[1, 2, 3])];
        assert!(replicas(&same).is_empty());
        let differ = [node("a", 7, &[1, 2]), node("b", 8, &[1, 2])];
        assert_eq!(replicas(&differ).len(), 1);
        let lacking = [node("a", 7, &[1, 2]), node("b", 7, &[1])];
        assert_eq!(replicas(&lacking).len(), 1);
        let down = [
            node("a", 7, &[1, 2]),
            Holdings {
                digest: Err("it is not running".into()),
                ..node("b", 7, &[1, 2])
            },
        ];
        assert_eq!(replicas(&down).len(), 1);
    }
}
