//! A fixed block of seeds, the determinism guard, and proof that the oracle
//! catches a broken system.

use coffer_sim::{Options, Report, Sabotage, run};

/// Seeds every `cargo test` runs; `just sim` runs many more.
const SEEDS: std::ops::Range<u64> = 0..6;

fn passing(seed: u64, options: &Options) -> Report {
    let report = run(seed, options).expect("the simulation runs");
    assert!(
        report.violations.is_empty(),
        "seed {seed} violated invariants:\n{}\n{}\ntrace:\n{}",
        report.violations.join("\n"),
        report.replay(),
        report.trace.join("\n")
    );
    report
}

#[test]
fn a_block_of_seeds_holds_every_invariant() {
    for seed in SEEDS {
        let report = passing(seed, &Options::default());
        // Faults must really fire, and operations really run, in every seed.
        assert!(
            report.faults.total() >= 5,
            "seed {seed}: only {:?}",
            report.faults
        );
        assert!(
            report.ops.len() >= 20,
            "seed {seed}: only {} operations",
            report.ops.len()
        );
        let failed = report
            .ops
            .iter()
            .filter(|op| !matches!(op.outcome, coffer_sim::oracle::Outcome::Ok { .. }))
            .count();
        eprintln!(
            "seed {seed}: {} ops ({failed} failed under faults), {:?}",
            report.ops.len(),
            report.faults
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let first = passing(42, &Options::default());
    let second = passing(42, &Options::default());
    assert_eq!(first.trace, second.trace);
    let other = passing(43, &Options::default());
    assert_ne!(first.trace, other.trace, "different seeds should differ");
}

#[test]
fn the_oracle_catches_a_client_left_partitioned() {
    let options = Options {
        sabotage: Some(Sabotage::NeverHeal),
        ..Options::default()
    };
    let report = run(7, &options).unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("client-1 failed after heal")),
        "{:?}",
        report.violations
    );
}

#[test]
fn the_oracle_catches_a_hang() {
    let options = Options {
        sabotage: Some(Sabotage::NoClientTimeouts),
        ..Options::default()
    };
    let report = run(7, &options).unwrap();
    assert!(
        report.violations.iter().any(|v| v.contains("hung")),
        "{:?}",
        report.violations
    );
}

#[test]
fn without_faults_round_robin_is_exact_and_everything_succeeds() {
    let options = Options {
        faults: false,
        ..Options::default()
    };
    let report = passing(1, &options);
    assert!(
        report
            .ops
            .iter()
            .all(|op| matches!(op.outcome, coffer_sim::oracle::Outcome::Ok { .. }))
    );
}
