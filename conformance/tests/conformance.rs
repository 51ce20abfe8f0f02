//! Every scenario on every cluster implementation. Each prints one summary
//! line; the suite ends with `N passed, M failed`.
//!
//! `CONFORMANCE_ONLY` (comma-separated) runs only the scenarios whose full
//! name (`10 rebuild [processes]`) contains one of its parts, and starts only
//! the clusters they need: `CONFORMANCE_ONLY=processes`, `=rebuild,partition`.

use std::future::Future;
use std::time::Instant;

use coffer_conformance::containers::{self, Engine};
use coffer_conformance::scenario::{Failure, Tally};
use coffer_conformance::scenarios::{
    self, authz, bad_input, balancing, crash, many_clients, replication, sync,
};
use coffer_conformance::{Cluster, ClusterError, Containers, Processes, Spec};

/// The suite's running score.
#[derive(Debug, Default)]
struct Score {
    passed: usize,
    failed: Vec<String>,
    /// `CONFORMANCE_ONLY`, split; empty: everything.
    only: Vec<String>,
}

impl Score {
    fn from_env() -> Score {
        let only = std::env::var("CONFORMANCE_ONLY").unwrap_or_default();
        Score {
            only: only
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            ..Score::default()
        }
    }

    /// Whether the scenario named `name` is to run.
    fn wanted(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|part| name.contains(part.as_str()))
    }

    /// Runs one scenario (unless `CONFORMANCE_ONLY` leaves it out) and prints
    /// its summary line.
    async fn run(&mut self, name: String, scenario: impl Future<Output = Result<Tally, Failure>>) {
        if !self.wanted(&name) {
            return;
        }
        let started = Instant::now();
        let outcome = scenario.await;
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(t) => {
                self.passed += 1;
                eprintln!(
                    "{name}: passed — {} operations, {} faults injected, {} checks passed ({secs:.1} s)",
                    t.operations, t.faults, t.checks
                );
            }
            Err(e) => {
                eprintln!("{name}: FAILED after {secs:.1} s — {e}");
                self.failed.push(name);
            }
        }
    }

    /// A cluster that would not start fails the scenarios meant for it.
    fn not_started(&mut self, names: &[&str], kind: &str, e: &ClusterError) {
        for name in names {
            eprintln!("{name} [{kind}]: FAILED — the cluster did not start: {e}");
            self.failed.push(format!("{name} [{kind}]"));
        }
    }
}

/// The scenarios, in order, on clusters that `start` makes.
async fn all<C: Cluster>(
    score: &mut Score,
    kind: &str,
    dir: &std::path::Path,
    start: impl AsyncFn(&Spec) -> Result<C, ClusterError>,
) {
    let state = [
        "1 many clients",
        "2 authorization",
        "4 failover",
        "5 crash consistency",
        "6 bad input",
        "8 landing",
        "9 read anywhere",
        "10 rebuild",
        "11 partition",
    ];
    let wanted = |score: &Score, name: &str| score.wanted(&format!("{name} [{kind}]"));
    if state.iter().any(|s| wanted(score, s)) {
        match start(&scenarios::service()).await {
            Err(e) => score.not_started(&state, kind, &e),
            Ok(mut c) => {
                let n = |s: &str| format!("{s} [{kind}]");
                let d = |k: usize| dir.join(k.to_string());
                let c = &mut c;
                score.run(n(state[0]), many_clients::run(c, &d(1))).await;
                score.run(n(state[1]), authz::run(c, &d(2))).await;
                score.run(n(state[2]), crash::failover(c, &d(4))).await;
                score.run(n(state[3]), crash::consistency(c, &d(5))).await;
                score.run(n(state[4]), bad_input::run(c, &d(6))).await;
                score.run(n(state[5]), replication::landing(c, &d(8))).await;
                let nine = d(9);
                score
                    .run(n(state[6]), replication::read_anywhere(c, &nine))
                    .await;
                score
                    .run(n(state[7]), replication::rebuild(c, &d(10)))
                    .await;
                let eleven = d(11);
                score
                    .run(n(state[8]), replication::partition(c, &eleven))
                    .await;
            }
        }
    }
    // Sync on the replicated service, across the loss of one node.
    let sync_name = "7 sync";
    if wanted(score, sync_name) {
        match start(&scenarios::service()).await {
            Err(e) => score.not_started(&[sync_name], kind, &e),
            Ok(mut c) => {
                score
                    .run(
                        format!("{sync_name} [{kind}]"),
                        sync::run(&mut c, &dir.join("7")),
                    )
                    .await;
            }
        }
    }
    for strategy in ["round-robin", "least-connections"] {
        let name = format!("3 balancing, {strategy}");
        if !wanted(score, &name) {
            continue;
        }
        match start(&scenarios::balanced(strategy)).await {
            Err(e) => score.not_started(&[&name], kind, &e),
            Ok(mut c) => {
                let scenario = async {
                    match strategy {
                        "round-robin" => balancing::round_robin(&mut c).await,
                        _ => balancing::least_connections(&mut c).await,
                    }
                };
                score.run(format!("{name} [{kind}]"), scenario).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let mut score = Score::from_env();
    let scratch = tempfile::tempdir().expect("scratch directory");
    let dir = scratch.path();
    Box::pin(all(
        &mut score,
        "processes",
        &dir.join("processes"),
        Processes::start,
    ))
    .await;
    // The same scenarios in containers, where an engine is reachable (and
    // unless CONFORMANCE_ONLY names processes alone).
    let containers_wanted =
        score.only.is_empty() || score.only.iter().any(|o| !o.contains("processes"));
    if containers_wanted {
        match tokio::task::block_in_place(containers::engine) {
            Engine::Ready => {
                Box::pin(all(
                    &mut score,
                    "containers",
                    &dir.join("containers"),
                    Containers::start,
                ))
                .await
            }
            Engine::ImagesFailed(reason) => {
                eprintln!("containers: FAILED — the images did not build: {reason}");
                score.failed.push("containers: images".into());
            }
            Engine::Unreachable(reason) => eprintln!("containers: skipped — {reason}"),
        }
    }
    eprintln!("{} passed, {} failed", score.passed, score.failed.len());
    assert!(score.failed.is_empty(), "failed: {:?}", score.failed);
}
