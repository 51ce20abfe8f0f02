//! The Coffer client as a library, and the `coffer` command line built on it.
//!
//! [`Client`] is one TLS connection to a server that has said `hello`; it sends
//! requests and matches answers, turning `error` answers into
//! [`ClientError::Server`]. It is generic over the `Net` seam, so the
//! simulation drives the same code over simulated sockets.
//!
//! Connection failures are typed so the command line can say exactly what is
//! wrong — in particular a server whose certificate is not signed by the CA
//! the user trusts ([`ClientError::Untrusted`]).

mod client;
mod error;

pub use client::{Client, ClientTimeouts, Endpoint};
pub use error::ClientError;
