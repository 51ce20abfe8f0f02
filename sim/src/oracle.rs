//! The oracle: what the simulated clients saw, and the invariants it must satisfy.

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
}
