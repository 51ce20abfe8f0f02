//! The conformance suite's machinery: real `coffer-server`, `coffer-balancer`
//! and `coffer` binaries, driven from outside the way an operator and users
//! would, through one [`Cluster`] trait.
//!
//! - [`process`]: a binary as a child process — start and wait for its
//!   `listening on` line, signal it by PID (SIGSTOP/SIGCONT/SIGTERM/SIGKILL),
//!   restart it on the same data directory;
//! - [`cluster`]: the [`Cluster`] trait and its processes implementation on
//!   127.0.0.x addresses, and [`Probe`], a client's view.
//!
//! Scenarios live in `tests/conformance.rs`; `just conformance` runs them.

pub mod cluster;
pub mod process;

pub use cluster::{Cluster, Probe, Processes, Servers, free_port};
pub use process::{Process, ProcessError};
