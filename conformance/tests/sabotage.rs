//! The scenarios' checks bite: each test breaks the system on purpose, from
//! outside, and expects the scenario that guards against it to fail.

use std::path::{Path, PathBuf};

use coffer_conformance::scenarios::{self, authz, bad_input, balancing, crash};
use coffer_conformance::{Cluster, ClusterError, Member, Processes};

/// A cluster whose servers lose their data directory whenever they start
/// again: a server without durable storage.
struct Amnesiac(Processes);

impl Cluster for Amnesiac {
    fn kind(&self) -> &'static str {
        "amnesiac processes"
    }
    fn front(&self) -> std::net::SocketAddr {
        self.0.front()
    }
    fn server(&self, i: usize) -> std::net::SocketAddr {
        self.0.server(i)
    }
    fn servers(&self) -> usize {
        self.0.servers()
    }
    fn admin(&self) -> std::net::SocketAddr {
        self.0.admin()
    }
    fn backend(&self, i: usize) -> std::net::SocketAddr {
        self.0.backend(i)
    }
    fn ca(&self) -> &Path {
        self.0.ca()
    }
    fn data_dir(&self, i: usize) -> PathBuf {
        self.0.data_dir(i)
    }
    fn secret(&self) -> &[u8] {
        self.0.secret()
    }
    async fn kill(&mut self, member: Member) -> Result<(), ClusterError> {
        self.0.kill(member).await
    }
    async fn stop(&mut self, member: Member) -> Result<(), ClusterError> {
        self.0.stop(member).await
    }
    async fn start(&mut self, member: Member) -> Result<(), ClusterError> {
        if let Member::Server(i) = member {
            let _ = std::fs::remove_dir_all(self.0.data_dir(i));
        }
        self.0.start(member).await
    }
    async fn pause(&mut self, member: Member) -> Result<(), ClusterError> {
        self.0.pause(member).await
    }
    async fn resume(&mut self, member: Member) -> Result<(), ClusterError> {
        self.0.resume(member).await
    }
    async fn partition(&mut self, a: Member, b: Member) -> Result<(), ClusterError> {
        self.0.partition(a, b).await
    }
    async fn heal(&mut self, a: Member, b: Member) -> Result<(), ClusterError> {
        self.0.heal(a, b).await
    }
}

/// The scenario must fail, with a message holding one of `needles` (so that
/// it failed for the sabotage, not for something else).
fn expect_failure(scenario: &str, outcome: Result<impl std::fmt::Debug, String>, needles: &[&str]) {
    match outcome {
        Ok(t) => panic!("{scenario} passed on a sabotaged system: {t:?}"),
        Err(e) => {
            eprintln!("{scenario} caught the sabotage: {e}");
            assert!(
                needles.iter().any(|n| e.contains(n)),
                "{scenario} failed for another reason: {e}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_consistency_catches_a_server_that_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Amnesiac(Processes::start(&scenarios::service()).unwrap());
    let outcome = crash::consistency(&mut c, dir.path()).await;
    // Everything, the account included, is gone after the restart: the
    // commits after it fail, and what was acknowledged before cannot be read.
    expect_failure(
        "crash consistency",
        outcome,
        &["after the crash", "commits acknowledged"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_catches_a_leaked_signing_key() {
    // The cluster signs with the very key the scenario forges tokens with.
    let dir = tempfile::tempdir().unwrap();
    let spec = scenarios::service().secret(&[0x5a; 32]);
    let mut c = Processes::start(&spec).unwrap();
    let outcome = authz::run(&mut c, dir.path()).await;
    expect_failure("authorization", outcome, &["forged may not"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_catches_a_balancer_that_never_marks_a_backend_down() {
    let spec = scenarios::balanced("round-robin").balancer_args(&["--fall", "100000"]);
    let mut c = Processes::start(&spec).unwrap();
    let outcome = balancing::round_robin(&mut c).await;
    expect_failure("balancing", outcome, &["marked down"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_catches_a_server_that_waits_forever_for_a_handshake() {
    // The service cluster, but with a handshake deadline far beyond the
    // scenario's patience: slowloris connections stay open.
    let dir = tempfile::tempdir().unwrap();
    let spec = coffer_conformance::Spec::new(1)
        .server_toml("handshake_timeout = \"10m\"\nlogin_failures_per_user = 5");
    let mut c = Processes::start(&spec).unwrap();
    let outcome = bad_input::run(&mut c, dir.path()).await;
    expect_failure("bad input", outcome, &["slowloris connections were closed"]);
}
