//! What a request can fail with, and how each failure is answered.

use coffer_proto::{ErrorBody, ErrorCode};

/// A failed request: refused for a reason the client can act on, or a fault
/// inside the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The request was refused; the code and message go back to the client.
    #[error("{code}: {message}")]
    Refused {
        /// Stable code.
        code: ErrorCode,
        /// Human explanation.
        message: String,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The chunk store failed.
    #[error("chunk store: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::Refused {
            code,
            message: message.into(),
        }
    }

    /// What the client is told. Internal faults are not described to it.
    pub(crate) fn to_body(&self) -> ErrorBody {
        match self {
            Error::Refused { code, message } => ErrorBody::new(*code, message.clone()),
            Error::Db(_) | Error::Io(_) => {
                ErrorBody::new(ErrorCode::Internal, "internal server error")
            }
        }
    }

    /// Whether this is a fault of the server (worth a warning in the log).
    pub(crate) fn is_internal(&self) -> bool {
        !matches!(self, Error::Refused { .. })
    }
}

pub(crate) fn bad_request(message: impl Into<String>) -> Error {
    Error::refused(ErrorCode::BadRequest, message)
}

pub(crate) fn unauthorized(message: impl Into<String>) -> Error {
    Error::refused(ErrorCode::Unauthorized, message)
}

pub(crate) fn forbidden(message: impl Into<String>) -> Error {
    Error::refused(ErrorCode::Forbidden, message)
}

pub(crate) fn not_found(message: impl Into<String>) -> Error {
    Error::refused(ErrorCode::NotFound, message)
}

pub(crate) fn conflict(message: impl Into<String>) -> Error {
    Error::refused(ErrorCode::Conflict, message)
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
