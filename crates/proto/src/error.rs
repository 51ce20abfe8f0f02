//! Errors: what can go wrong decoding a frame, and the stable error codes peers
//! send each other.

use serde::{Deserialize, Serialize};

/// Why bytes from a peer could not be turned into a frame or a message.
///
/// Every variant carries the facts needed to understand the failure without
/// echoing the peer's input back (which could hold a secret). [`DecodeError::code`]
/// maps each to the [`ErrorCode`] the receiver answers with before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The prefix announces a header longer than the limit.
    #[error("frame header of {len} bytes exceeds the {max}-byte limit")]
    HeaderTooLarge {
        /// Announced header length.
        len: u32,
        /// Limit in force.
        max: u32,
    },
    /// The prefix announces a body longer than the limit.
    #[error("frame body of {len} bytes exceeds the {max}-byte limit")]
    BodyTooLarge {
        /// Announced body length.
        len: u32,
        /// Limit in force.
        max: u32,
    },
    /// The input ends before the frame it announces does.
    #[error("frame is truncated: {needed} more bytes are needed")]
    Truncated {
        /// How many more bytes the frame needs.
        needed: usize,
    },
    /// Bytes remain after a frame that was expected to be the whole input.
    #[error("{extra} unexpected bytes follow the frame")]
    TrailingBytes {
        /// How many bytes follow the frame.
        extra: usize,
    },
    /// The header is not UTF-8.
    #[error("frame header is not valid UTF-8 (valid up to byte {valid_up_to})")]
    HeaderNotUtf8 {
        /// Offset of the first invalid byte.
        valid_up_to: usize,
    },
    /// The header is UTF-8 but not one JSON value (or has bytes after it).
    #[error("frame header is not valid JSON (line {line}, column {column})")]
    HeaderNotJson {
        /// Line of the syntax error, 1-based.
        line: usize,
        /// Column of the syntax error, 1-based.
        column: usize,
    },
    /// The header is JSON but not an object.
    #[error("frame header is a JSON {found}, not an object")]
    HeaderNotObject {
        /// The JSON type that was found instead.
        found: &'static str,
    },
    /// The header has no `id`.
    #[error("frame header has no `id`")]
    MissingId,
    /// `id` is present but is not an unsigned 64-bit integer.
    #[error("frame `id` is a JSON {found}, not an unsigned 64-bit integer")]
    InvalidId {
        /// What the `id` was instead.
        found: &'static str,
    },
    /// `id` is valid JSON but not allowed for this message family
    /// (requests may not use 0; pushes must use 0).
    #[error("frame `id` {id} is not allowed here: {rule}")]
    UnexpectedId {
        /// The offending id.
        id: u64,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The header has no `type`.
    #[error("frame header has no `type`")]
    MissingType,
    /// `type` is present but not a string.
    #[error("frame `type` is a JSON {found}, not a string")]
    InvalidType {
        /// What the `type` was instead.
        found: &'static str,
    },
    /// `type` names no message of the family being decoded.
    #[error("unknown message type `{kind}`")]
    UnknownType {
        /// The unknown type, cut to 64 bytes.
        kind: String,
    },
    /// The type is known but its fields are missing, of the wrong JSON type or out of range.
    #[error("message `{kind}` has invalid fields: {reason}")]
    InvalidFields {
        /// The message type.
        kind: &'static str,
        /// What is wrong, cut to 200 bytes.
        reason: String,
    },
    /// A message that takes no body arrived with one.
    #[error("message `{kind}` takes no body, got {len} bytes")]
    UnexpectedBody {
        /// The message type.
        kind: &'static str,
        /// Length of the body received.
        len: usize,
    },
}

impl DecodeError {
    /// The code a receiver answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::HeaderTooLarge { .. } | DecodeError::BodyTooLarge { .. } => {
                ErrorCode::TooLarge
            }
            _ => ErrorCode::BadRequest,
        }
    }
}

/// Why a message could not be turned into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded header would exceed the protocol limit.
    #[error("encoded header of {len} bytes exceeds the {max}-byte limit")]
    HeaderTooLarge {
        /// Encoded header length.
        len: usize,
        /// Limit in force.
        max: u32,
    },
    /// The body exceeds the protocol limit.
    #[error("body of {len} bytes exceeds the {max}-byte limit")]
    BodyTooLarge {
        /// Body length.
        len: usize,
        /// Limit in force.
        max: u32,
    },
    /// The message carries a body although its type takes none.
    #[error("message `{kind}` takes no body, got {len} bytes")]
    UnexpectedBody {
        /// The message type.
        kind: &'static str,
        /// Length of the body.
        len: usize,
    },
    /// The id breaks the family's rule (see [`DecodeError::UnexpectedId`]).
    #[error("frame `id` {id} is not allowed here: {rule}")]
    UnexpectedId {
        /// The offending id.
        id: u64,
        /// The rule it breaks.
        rule: &'static str,
    },
}

/// The stable error codes of the protocol.
///
/// Clients branch on these, so they never change meaning; the human message
/// beside them may change freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed or breaks a protocol rule.
    BadRequest,
    /// No valid session: missing, expired, revoked or forged token, or wrong login secret.
    Unauthorized,
    /// The session is valid but may not do this.
    Forbidden,
    /// The user, folder, file, device, invite or upload does not exist (for this caller).
    NotFound,
    /// The state moved on (a stale base version, a name already taken).
    Conflict,
    /// A frame, file or field exceeds a limit.
    TooLarge,
    /// Received bytes do not match their announced SHA-256.
    ChecksumMismatch,
    /// The service cannot do this now (not ready, quorum not reached); retry later or elsewhere.
    Unavailable,
    /// Too many attempts; retry later.
    RateLimited,
    /// A fault inside the server; the request may be retried.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::ChecksumMismatch,
        ErrorCode::Unavailable,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ];

    /// The HTTP-style status number that accompanies the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::ChecksumMismatch => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The code as it appears on the wire (`"not_found"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether retrying the same request later (or on another server) may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::Internal
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn statuses_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.status()), "{code} shares its status");
        }
    }
}
