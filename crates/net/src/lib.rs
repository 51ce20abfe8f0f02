//! The seam between Coffer's logic and the network.
//!
//! - [`net`]: the [`Net`] / [`Listener`] traits and [`TokioNet`], the real
//!   implementation. The simulation plugs turmoil in behind the same traits.
//! - [`clock`]: the [`Clock`] trait for wall-clock time (token expiry,
//!   certificate validity), [`SystemClock`], and the adapter that gives rustls
//!   the same clock.
//! - [`tls`]: rustls server and client configurations built with the `ring`
//!   provider explicitly, PEM loading, and handshakes with a deadline and typed
//!   failures ("not trusted", "timed out", …).
//! - [`tickets`]: TLS session tickets every server of a cluster can open, so
//!   that a connection the balancer sends elsewhere still resumes.
//! - [`blocking`]: the one way to run blocking work (SQLite, fsync, hashing
//!   large buffers): on tokio's blocking pool, or in place under the
//!   simulation's single-threaded runtime.
//! - [`conn`]: [`Connection`], the framed connection pump: `read_frame` /
//!   `write_frame` over any `AsyncRead + AsyncWrite`, with the protocol's size
//!   limits and idle, per-frame and write deadlines.
//!
//! What it is not: it knows nothing of what messages mean — that is the
//! server's and client's business.

pub mod blocking;
pub mod clock;
pub mod conn;
pub mod net;
pub mod tickets;
pub mod tls;

pub use blocking::blocking;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use conn::{ConnError, Connection, FrameReader, FrameWriter, Timeouts};
pub use net::{Listener, Net, Stream, TokioListener, TokioNet};
