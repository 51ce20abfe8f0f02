//! The Coffer balancer: a layer-4 proxy in front of Coffer servers.
//!
//! TLS passes through untouched — the balancer holds no server key and never
//! sees plaintext. [`select`] is the pure choice of a backend (round-robin, or
//! least-connections with ties in turn); [`proxy`] is the data path that
//! accepts clients over any `Net`, connects them to the chosen backend
//! (retrying another when a connect fails) and copies bytes both ways.

pub mod proxy;
pub mod select;

pub use proxy::{BackendStats, Balancer, BalancerError, Options};
pub use select::{Selector, State, Strategy};
