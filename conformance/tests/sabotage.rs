//! The scenarios' checks bite: each test breaks the system on purpose, from
//! outside, and expects the scenario that guards against it to fail.

use std::path::{Path, PathBuf};

use coffer_conformance::scenarios::{self, authz, bad_input, balancing, crash, replication};
use coffer_conformance::{Cluster, ClusterError, Member, Processes};

/// What a sabotaged cluster does instead of starting a server again.
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// Loses the server's data directory first: a server without durable
    /// storage.
    Forgetting,
    /// Starts it without `--peer`: a node that never rebuilds from its peers
    /// and says it is ready at once.
    Unpeered,
}

/// A processes cluster whose servers start again the wrong way.
struct Sabotaged(Processes, Restart);

impl Cluster for Sabotaged {
    fn kind(&self) -> &'static str {
        "sabotaged processes"
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
    fn replicated(&self) -> bool {
        self.0.replicated()
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
        match (member, self.1) {
            (Member::Server(i), Restart::Forgetting) => {
                let _ = std::fs::remove_dir_all(self.0.data_dir(i));
                self.0.start(member).await
            }
            (Member::Server(i), Restart::Unpeered) => self.0.restart_unpeered(i),
            _ => self.0.start(member).await,
        }
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
    // One server alone: in a cluster a node that forgets is a wiped node,
    // which its peers rebuild (scenario 10); alone, nothing can.
    let dir = tempfile::tempdir().unwrap();
    let c = Processes::start(&scenarios::single()).await.unwrap();
    let mut c = Sabotaged(c, Restart::Forgetting);
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
    let mut c = Processes::start(&spec).await.unwrap();
    let outcome = authz::run(&mut c, dir.path()).await;
    expect_failure("authorization", outcome, &["forged may not"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_catches_a_balancer_that_never_marks_a_backend_down() {
    let spec = scenarios::balanced("round-robin").balancer_args(&["--fall", "100000"]);
    let mut c = Processes::start(&spec).await.unwrap();
    let outcome = balancing::round_robin(&mut c).await;
    expect_failure("balancing", outcome, &["marked down"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_catches_a_server_that_waits_forever_for_a_handshake() {
    // One server, but with a handshake deadline far beyond the scenario's
    // patience: slowloris connections stay open.
    let dir = tempfile::tempdir().unwrap();
    let spec = coffer_conformance::Spec::new(1)
        .server_toml("handshake_timeout = \"10m\"\nlogin_failures_per_user = 5");
    let mut c = Processes::start(&spec).await.unwrap();
    let outcome = bad_input::run(&mut c, dir.path()).await;
    expect_failure("bad input", outcome, &["slowloris connections were closed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_catches_a_minority_that_acknowledges() {
    // Write quorum 1: every node acknowledges what it alone holds, the node
    // cut off from the others included.
    let dir = tempfile::tempdir().unwrap();
    let mut c = Processes::start(&scenarios::service().write_quorum(1))
        .await
        .unwrap();
    let outcome = replication::partition(&mut c, dir.path()).await;
    expect_failure("partition", outcome, &["on the minority side"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_catches_a_wiped_node_that_does_not_catch_up() {
    // The wiped node comes back without its peers: ready at once, empty.
    let dir = tempfile::tempdir().unwrap();
    let c = Processes::start(&scenarios::service()).await.unwrap();
    let mut c = Sabotaged(c, Restart::Unpeered);
    let outcome = replication::rebuild(&mut c, dir.path()).await;
    expect_failure("rebuild", outcome, &["the rebuilt node"]);
}
