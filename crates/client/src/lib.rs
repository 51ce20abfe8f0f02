//! The Coffer client as a library, and the `coffer` command line built on it.
//!
//! - [`Client`]: one TLS connection that has said `hello`; many requests in
//!   flight, answers matched by id, pushed events on their own channel.
//! - [`Pool`]: a few signed-in connections, replaced when they fail, with
//!   retries for what may safely run twice.
//! - [`account`]: sign-up and sign-in — key pairs made and unwrapped here; the
//!   password never leaves the device.
//! - [`Session`]: a signed-in user: connections, keys, unwrapped folder keys.
//! - [`folders`]: folders and members — keys made, wrapped and rotated here.
//! - [`transfer`]: `put` (read once, seal on every core, stream, resume) and
//!   `get` (fetch, verify, write atomically).
//! - [`home`]: the device's state on disk.
//! - [`sync`]: the sync daemon's parts (ignore rules, scanner, queue).
//!
//! Everything is generic over the `Net` seam, so the simulation drives the
//! same code over simulated sockets. Failures are typed ([`ClientError`]) and
//! each maps to a protocol error code for the one-line `error: <code>: <what>`.

pub mod account;
mod client;
mod error;
pub mod folders;
pub mod home;
pub mod pool;
pub mod session;
pub mod sync;
pub mod transfer;

pub use client::{Client, ClientTimeouts, Endpoint};
pub use error::ClientError;
pub use home::Home;
pub use pool::Pool;
pub use session::Session;
