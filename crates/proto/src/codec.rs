//! From raw frames to typed messages and back.
//!
//! A header is a JSON object with at least `id` (u64) and `type` (string); the
//! other keys are the message's fields. [`Header::parse`] checks the envelope —
//! UTF-8, one JSON object, `id`, `type` — each failure its own [`DecodeError`]
//! variant. [`Frame::decode`] then picks the message family's variant by `type`
//! and checks its fields and whether it may carry a body.
//!
//! Unknown keys are ignored, so a newer peer may add fields; an unknown `type` is
//! an error, so nobody mistakes a request it cannot serve for one it can.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{DecodeError, EncodeError};
use crate::frame::RawFrame;
use crate::limits::Limits;

/// A family of messages sharing one `type` namespace: requests, responses,
/// pushed events, peer messages.
pub trait Message: Serialize + DeserializeOwned + Clone + std::fmt::Debug {
    /// Every `type` this family defines.
    const KINDS: &'static [&'static str];

    /// This message's `type`.
    fn kind(&self) -> &'static str;

    /// Whether messages of `kind` may carry a body. Those that may not are
    /// refused when one arrives.
    fn takes_body(kind: &str) -> bool;

    /// Checks the frame id against the family's rule, returning the rule broken.
    fn check_id(id: u64) -> Result<(), &'static str>;
}

/// The envelope of a header: its `id`, its `type`, and the remaining fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Request id; responses echo it, pushes use 0.
    pub id: u64,
    /// The message type.
    pub kind: String,
    /// Every other key of the header object.
    pub fields: Map<String, Value>,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl Header {
    /// Parses header bytes: UTF-8, exactly one JSON object, with `id` and `type`.
    pub fn parse(bytes: &[u8]) -> Result<Header, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::HeaderNotUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        // serde_json rejects anything after the value (save white space) and
        // nests at most 128 levels, so neither trailing garbage nor a deep
        // structure gets through.
        let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::HeaderNotJson {
            line: e.line(),
            column: e.column(),
        })?;
        let mut fields = match value {
            Value::Object(map) => map,
            other => {
                return Err(DecodeError::HeaderNotObject {
                    found: json_type(&other),
                });
            }
        };
        let id = match fields.remove("id") {
            None => return Err(DecodeError::MissingId),
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or(DecodeError::InvalidId { found: "number" })?,
            Some(other) => {
                return Err(DecodeError::InvalidId {
                    found: json_type(&other),
                });
            }
        };
        let kind = match fields.remove("type") {
            None => return Err(DecodeError::MissingType),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(DecodeError::InvalidType {
                    found: json_type(&other),
                });
            }
        };
        Ok(Header { id, kind, fields })
    }
}

/// A typed frame: id, message, body.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<M> {
    /// Request id (echoed by the response; 0 for pushes).
    pub id: u64,
    /// The message.
    pub msg: M,
    /// The body: chunk bytes, chunk lists, record batches; empty otherwise.
    pub body: Bytes,
}

impl<M: Message> Frame<M> {
    /// A frame without a body.
    pub fn new(id: u64, msg: M) -> Self {
        Frame {
            id,
            msg,
            body: Bytes::new(),
        }
    }

    /// A frame with a body.
    pub fn with_body(id: u64, msg: M, body: Bytes) -> Self {
        Frame { id, msg, body }
    }

    /// Decodes a raw frame as a message of family `M`.
    pub fn decode(raw: &RawFrame) -> Result<Self, DecodeError> {
        Self::from_header(Header::parse(&raw.header)?, raw.body.clone())
    }

    /// Finishes decoding once the header envelope has been parsed — for
    /// receivers that look at `type` first to pick the family.
    pub fn from_header(header: Header, body: Bytes) -> Result<Self, DecodeError> {
        M::check_id(header.id).map_err(|rule| DecodeError::UnexpectedId {
            id: header.id,
            rule,
        })?;
        let Some(&kind) = M::KINDS.iter().find(|k| **k == header.kind) else {
            return Err(DecodeError::UnknownType {
                kind: truncated(header.kind, 64),
            });
        };
        if !body.is_empty() && !M::takes_body(kind) {
            return Err(DecodeError::UnexpectedBody {
                kind,
                len: body.len(),
            });
        }
        let mut fields = header.fields;
        fields.insert("type".to_owned(), Value::String(header.kind));
        let msg =
            M::deserialize(Value::Object(fields)).map_err(|e| DecodeError::InvalidFields {
                kind,
                reason: truncated(e.to_string(), 200),
            })?;
        Ok(Frame {
            id: header.id,
            msg,
            body,
        })
    }

    /// Encodes the frame, refusing one the protocol limits would not let through.
    pub fn encode(&self) -> Result<RawFrame, EncodeError> {
        self.encode_with(&Limits::default())
    }

    /// Encodes the frame under explicit limits.
    pub fn encode_with(&self, limits: &Limits) -> Result<RawFrame, EncodeError> {
        let kind = self.msg.kind();
        M::check_id(self.id).map_err(|rule| EncodeError::UnexpectedId { id: self.id, rule })?;
        if !self.body.is_empty() && !M::takes_body(kind) {
            return Err(EncodeError::UnexpectedBody {
                kind,
                len: self.body.len(),
            });
        }
        let mut header = match serde_json::to_value(&self.msg) {
            Ok(Value::Object(map)) => map,
            // Every family is an internally tagged enum of structs: always an object.
            Ok(other) => unreachable!("message serialized as {}", json_type(&other)),
            Err(e) => unreachable!("message failed to serialize: {e}"),
        };
        header.insert("id".to_owned(), Value::from(self.id));
        let header = serde_json::to_vec(&header).expect("a JSON map always serializes");
        RawFrame::new(Bytes::from(header), self.body.clone(), limits)
    }
}

/// Defines a message family: the enum (internally tagged by `type`), its list of
/// kinds, and which kinds take a body.
macro_rules! message_family {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident $( ($payload:ty) )? = $kind:literal $( + $body:ident )?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(any(test, feature = "arbitrary"), derive(proptest_derive::Arbitrary))]
        #[serde(tag = "type")]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[serde(rename = $kind)]
                $variant $( ($payload) )?,
            )*
        }

        impl $crate::codec::Message for $name {
            const KINDS: &'static [&'static str] = &[$($kind),*];

            fn kind(&self) -> &'static str {
                match self {
                    $( $name::$variant { .. } => $kind, )*
                }
            }

            fn takes_body(kind: &str) -> bool {
                match kind {
                    $( $kind => message_family!(@body $($body)?), )*
                    _ => false,
                }
            }

            fn check_id(id: u64) -> Result<(), &'static str> {
                <$name>::id_rule(id)
            }
        }
    };
    (@body) => { false };
    (@body body) => { true };
}

pub(crate) use message_family;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors_are_distinct() {
        assert_eq!(
            Header::parse(b"\xff{}"),
            Err(DecodeError::HeaderNotUtf8 { valid_up_to: 0 })
        );
        assert!(matches!(
            Header::parse(b"{\"id\":1"),
            Err(DecodeError::HeaderNotJson { .. })
        ));
        assert!(matches!(
            Header::parse(b"{\"id\":1,\"type\":\"ping\"} x"),
            Err(DecodeError::HeaderNotJson { .. })
        ));
        assert_eq!(
            Header::parse(b"[1,2]"),
            Err(DecodeError::HeaderNotObject { found: "array" })
        );
        assert_eq!(
            Header::parse(b"{\"type\":\"ping\"}"),
            Err(DecodeError::MissingId)
        );
        assert_eq!(
            Header::parse(b"{\"id\":-1,\"type\":\"ping\"}"),
            Err(DecodeError::InvalidId { found: "number" })
        );
        assert_eq!(
            Header::parse(b"{\"id\":\"1\",\"type\":\"ping\"}"),
            Err(DecodeError::InvalidId { found: "string" })
        );
        assert_eq!(Header::parse(b"{\"id\":1}"), Err(DecodeError::MissingType));
        assert_eq!(
            Header::parse(b"{\"id\":1,\"type\":7}"),
            Err(DecodeError::InvalidType { found: "number" })
        );
        let h = Header::parse(b" {\"id\":18446744073709551615,\"type\":\"x\",\"k\":1}\n").unwrap();
        assert_eq!((h.id, h.kind.as_str(), h.fields.len()), (u64::MAX, "x", 1));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            "{{\"id\":1,\"type\":\"x\",\"a\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(matches!(
            Header::parse(deep.as_bytes()),
            Err(DecodeError::HeaderNotJson { .. })
        ));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncated("ééé".to_owned(), 3), "é…");
        assert_eq!(truncated("abc".to_owned(), 3), "abc");
    }
}
