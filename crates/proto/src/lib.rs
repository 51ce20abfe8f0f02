//! The Coffer wire protocol, without any IO.
//!
//! Everything a Coffer client, server or cluster peer says travels as a
//! **frame**: `u32 header_len | u32 body_len | header | body`, big-endian. The
//! header is a UTF-8 JSON object with an `id` and a `type`; the body carries raw
//! bytes (sealed chunks, chunk lists, record batches) and is empty for most
//! messages. This crate turns bytes into typed messages and back:
//!
//! ```
//! use coffer_proto::{Frame, Request, Response, frame, Limits};
//! use coffer_proto::request::Hello;
//!
//! let hello = Frame::new(1, Request::Hello(Hello { protocol: 1, agent: "doc".into() }));
//! let bytes = hello.encode().unwrap().to_vec();
//!
//! // A receiver may get the bytes in any number of pieces; until the whole
//! // frame is there, `decode` says "need more" and consumes nothing.
//! assert!(frame::decode(&bytes[..5], &Limits::default()).unwrap().is_none());
//! let (raw, used) = frame::decode(&bytes, &Limits::default()).unwrap().unwrap();
//! assert_eq!(used, bytes.len());
//! assert_eq!(Frame::<Request>::decode(&raw).unwrap(), hello);
//!
//! // A request for a type the family does not define is a typed error.
//! let bogus = br#"{"id":2,"type":"launch_missiles"}"#;
//! let raw = coffer_proto::RawFrame { header: bogus[..].into(), body: Default::default() };
//! assert!(Frame::<Response>::decode(&raw).is_err());
//! ```
//!
//! What it is not: it opens no socket, reads no clock and spawns nothing —
//! `coffer-net` pumps frames over connections, the server and client decide what
//! to do with them.
//!
//! Modules:
//! - [`frame`] — raw framing and limits checks on partial input;
//! - [`codec`] — header envelope parsing and the [`Message`] families;
//! - [`request`], [`response`], [`event`], [`peer`] — the four families;
//! - [`types`] — shared value types (hashes, blobs, version vectors, entries);
//! - [`path`], [`name`] — validation of paths, usernames, labels and MACs;
//! - [`error`] — [`DecodeError`], [`EncodeError`] and the stable [`ErrorCode`]s;
//! - [`limits`] — protocol constants.

pub mod codec;
pub mod error;
pub mod event;
pub mod frame;
pub mod limits;
pub mod name;
pub mod path;
pub mod peer;
pub mod request;
pub mod response;
pub mod types;

#[cfg(test)]
mod tests;

pub use codec::{Frame, Header, Message};
pub use error::{DecodeError, EncodeError, ErrorCode};
pub use event::Event;
pub use frame::RawFrame;
pub use limits::{Limits, PROTOCOL_VERSION};
pub use peer::PeerMessage;
pub use request::Request;
pub use response::{ErrorBody, Response};
