//! The scenarios of the suite, each generic over [`crate::Cluster`] so that
//! every implementation runs the very same checks.
//!
//! Until the servers replicate, a user's state lives on one server, so the
//! scenarios that need it (1, 2, 4, 5, 6, 7) run on a *service* cluster — the
//! balancer in front of one server — and the balancing scenario (3) on three.

pub mod authz;
pub mod bad_input;
pub mod balancing;
pub mod crash;
pub mod many_clients;
pub mod sync;

use crate::cluster::Spec;

/// The one-server cluster the state-sharing scenarios run on: handshakes
/// that say nothing are closed after 2 s, and a user is locked out after 5
/// failed logins (scenario 6 checks both).
pub fn service() -> Spec {
    Spec::new(1).server_toml("handshake_timeout = \"2s\"\nlogin_failures_per_user = 5")
}

/// The three-server clusters of the balancing scenario.
pub fn balanced(strategy: &str) -> Spec {
    Spec::new(3).strategy(strategy)
}
