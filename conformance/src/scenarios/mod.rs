//! The scenarios of the suite, each generic over [`crate::Cluster`] so that
//! every implementation runs the very same checks.
//!
//! Every scenario that needs users' state (1, 2, 4–11) runs on a *service*
//! cluster: the balancer in front of three replicated servers, write quorum
//! 2, what an operator would run. The balancing scenario (3) runs on three
//! replicated servers of its own per strategy.

pub mod authz;
pub mod bad_input;
pub mod balancing;
pub mod crash;
pub mod many_clients;
pub mod replication;
pub mod sync;

use crate::cluster::Spec;

/// The service cluster: three replicated servers (write quorum 2, quorum
/// timeout 2 s) behind a round-robin balancer; handshakes that say nothing
/// are closed after 2 s, and a user is locked out of a node after 5 failed
/// logins there (scenario 6 checks both).
pub fn service() -> Spec {
    Spec::new(3).server_toml("handshake_timeout = \"2s\"\nlogin_failures_per_user = 5")
}

/// The service cluster's configuration on one server alone: a node with no
/// peers to rebuild from (the suite's own tests use it).
pub fn single() -> Spec {
    Spec {
        servers: 1,
        ..service()
    }
}

/// The three-server clusters of the balancing scenario.
pub fn balanced(strategy: &str) -> Spec {
    Spec::new(3).strategy(strategy)
}
