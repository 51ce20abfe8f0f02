//! Deterministic simulation of Coffer: the real balancer, servers and client
//! library inside a turmoil world, under a seeded schedule of faults, checked
//! by an oracle.
//!
//! The seam is coffer-net's: [`TurmoilNet`] hands the unmodified server,
//! balancer and client code simulated sockets, and [`SimClock`] gives them (and
//! rustls) simulated calendar time from a fixed epoch. Everything random is
//! drawn from the seed, so a seed replays the same run:
//! `TURMOIL_SEED=<seed> just sim`.
//!
//! - [`world`]: topology, timeline (warm-up, faults, heal) and the driver;
//! - [`oracle`]: what clients saw and the invariants it must satisfy;
//! - [`workload`]: the files workload's devices and the ledger of what the
//!   system acknowledged;
//! - [`net`]: the turmoil implementations of the seam.

pub mod net;
pub mod oracle;
mod replicas;
pub mod workload;
pub mod world;

pub use net::{SimClock, TurmoilNet};
pub use world::{FaultCounts, Options, Report, Sabotage, run, seed_from_env};
