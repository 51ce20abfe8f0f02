//! The Coffer balancer: a layer-4 proxy in front of Coffer servers.
//!
//! TLS passes through untouched — the balancer holds no server key and never
//! sees plaintext. The parts, from the pure to the effectful:
//!
//! - [`select`]: the choice of a backend (round-robin, least-connections with
//!   ties in turn, power of two choices), pure and synchronous;
//! - [`health`]: rise/fall counting (pure) and the active check, which speaks
//!   the protocol (TLS verified against the deployment CA, hello, ping ready);
//! - [`config`]: the TOML configuration and its validation;
//! - [`copy`]: the two-way copy, which holds no large buffer while idle;
//! - [`Balancer`]: backends, their checkers, the accept loop, passive
//!   detection, draining and reload; [`admin`]: the HTTP admin endpoint.

pub mod admin;
mod backend;
mod balancer;
pub mod config;
pub mod copy;
pub mod health;
mod proxy;
pub mod select;

pub use backend::{Backend, BackendStats};
pub use balancer::Balancer;
pub use config::{BackendSpec, Config, ConfigError, HealthConfig};
pub use health::Verifier;
pub use select::{Selector, State, Strategy};
