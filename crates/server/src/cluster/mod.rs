//! The cluster: servers with separate databases that act as one service
//! (DESIGN §5, docs/ARCHITECTURE.md "Cluster").
//!
//! - [`merge`]: how replicated state merges — last-writer-wins registers,
//!   file entries under version vectors, the hybrid logical clock. Sans I/O.
//! - [`membership`]: the static list of nodes, the owner of each username
//!   (rendezvous hashing) and the write quorum.
//! - `link`: peer links over TLS, on which each node follows every other
//!   node's change log.

pub(crate) mod link;
pub mod membership;
pub mod merge;

pub use membership::{Membership, MembershipError, default_write_quorum};
pub use merge::{Clock, ClockAhead, Entry, Lww, Stamp, Version};
