//! Every scenario on every cluster implementation. Each prints one summary
//! line; the suite ends with `N passed, M failed`.

use std::future::Future;
use std::time::Instant;

use coffer_conformance::containers::{self, Engine};
use coffer_conformance::scenario::{Failure, Tally};
use coffer_conformance::scenarios::{self, authz, bad_input, balancing, crash, many_clients, sync};
use coffer_conformance::{Cluster, ClusterError, Containers, Processes, Spec};

/// The suite's running score.
#[derive(Debug, Default)]
struct Score {
    passed: usize,
    failed: Vec<String>,
}

impl Score {
    /// Runs one scenario and prints its summary line.
    async fn run(&mut self, name: String, scenario: impl Future<Output = Result<Tally, Failure>>) {
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
        "7 sync",
    ];
    match start(&scenarios::service()).await {
        Err(e) => score.not_started(&state, kind, &e),
        Ok(mut c) => {
            let n = |s: &str| format!("{s} [{kind}]");
            score
                .run(n(state[0]), many_clients::run(&mut c, &dir.join("1")))
                .await;
            score
                .run(n(state[1]), authz::run(&mut c, &dir.join("2")))
                .await;
            score
                .run(n(state[2]), crash::failover(&mut c, &dir.join("4")))
                .await;
            score
                .run(n(state[3]), crash::consistency(&mut c, &dir.join("5")))
                .await;
            score
                .run(n(state[4]), bad_input::run(&mut c, &dir.join("6")))
                .await;
            score
                .run(n(state[5]), sync::run(&mut c, &dir.join("7")))
                .await;
        }
    }
    for strategy in ["round-robin", "least-connections"] {
        let name = format!("3 balancing, {strategy}");
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
    let mut score = Score::default();
    let scratch = tempfile::tempdir().expect("scratch directory");
    let dir = scratch.path();
    Box::pin(all(
        &mut score,
        "processes",
        &dir.join("processes"),
        async |spec: &Spec| Processes::start(spec),
    ))
    .await;
    // The same scenarios in containers, where an engine is reachable.
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
    eprintln!("{} passed, {} failed", score.passed, score.failed.len());
    assert!(score.failed.is_empty(), "failed: {:?}", score.failed);
}
