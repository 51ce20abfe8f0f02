//! The conformance suite's machinery: real `coffer-server`, `coffer-balancer`
//! and `coffer` binaries, driven from outside the way an operator and users
//! would, through one [`Cluster`] trait.
//!
//! - [`process`]: a binary as a child process — start and wait for its
//!   `listening on` line, signal it by PID (SIGSTOP/SIGCONT/SIGTERM/SIGKILL),
//!   restart it on the same data directory;
//! - [`proxy`]: the fault proxy on every link of the processes implementation
//!   (refuse, black-hole, reset, delay, bandwidth limit), peer links included;
//! - [`cluster`]: the [`Cluster`] trait, [`Spec`] (by default several servers
//!   make a replicated cluster: peer certificates, `--peer`, write quorum),
//!   its processes implementation on 127.0.0.x addresses, [`Probe`], a
//!   client's view, and the waits every scenario builds on: [`settle`] (every
//!   node ready and linked, every backend up) and [`converged`] (every node
//!   holds every write);
//! - [`containers`]: the containers implementation (testcontainers, images
//!   `FROM scratch`, private Docker networks: a front one, one per pair of
//!   servers), skipped with a printed reason where no engine is reachable;
//! - [`device`]: a user's device — the `coffer` binary with a home of its own;
//! - [`scenario`] and [`scenarios`]: the checks, generic over [`Cluster`].
//!
//! `tests/conformance.rs` runs every scenario on every implementation;
//! `just conformance` runs it.

pub mod cluster;
pub mod containers;
pub mod device;
pub mod process;
pub mod proxy;
pub mod scenario;
pub mod scenarios;

pub use cluster::{
    ADMIN, Cluster, ClusterError, Member, Probe, Processes, Servers, Spec, converged, free_port,
    node_id, settle,
};
pub use containers::Containers;
pub use device::{CommandError, Device};
pub use process::{Process, ProcessError};
pub use proxy::{Fault, FaultProxy, ProxyStats};
