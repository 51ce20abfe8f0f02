//! What can go wrong talking to a server.

use std::net::SocketAddr;
use std::time::Duration;

use coffer_net::ConnError;
use coffer_net::tls::HandshakeError;
use coffer_proto::{ErrorBody, ErrorCode};

/// Why a request did not get a successful answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No TCP connection could be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The server's address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// Connecting took too long.
    #[error("no connection to {addr} within {after:?}")]
    ConnectTimeout {
        /// The server's address.
        addr: SocketAddr,
        /// The deadline.
        after: Duration,
    },
    /// The server's certificate is not signed by the configured CA.
    #[error("the server's certificate is not signed by CA {ca}")]
    Untrusted {
        /// Which CA was trusted (its file, or a description).
        ca: String,
    },
    /// The server's certificate is signed by the CA but refused for another
    /// reason: issued for other names, expired, not yet valid.
    #[error("the server's certificate is {problem}")]
    Certificate {
        /// What is wrong with it.
        problem: coffer_net::tls::CertProblem,
    },
    /// The TLS handshake failed otherwise.
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// The server's address.
        addr: SocketAddr,
        /// The failure.
        source: HandshakeError,
    },
    /// The connection failed or the server sent something unreadable.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The connection failed or closed before the answer came.
    #[error("connection lost: {0}")]
    Lost(String),
    /// No answer within the request deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error.
    #[error("{0}")]
    Server(ErrorBody),
    /// The server answered something that does not fit the request.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// Key material failed to open (a wrong password, or keys not for us).
    #[error(transparent)]
    Key(#[from] coffer_crypto::KeyError),
    /// Downloaded content failed its integrity check; nothing was written.
    #[error("{0}")]
    Integrity(String),
    /// Something named locally does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The command cannot be carried out as given.
    #[error("{0}")]
    Usage(String),
    /// A local file or directory could not be used.
    #[error("{path}: {source}")]
    Local {
        /// The path.
        path: std::path::PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The client's own state could not be used.
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        ClientError::Home(e.into())
    }
}

impl From<crate::sync::index::IndexError> for ClientError {
    fn from(e: crate::sync::index::IndexError) -> Self {
        ClientError::Home(e.into())
    }
}

impl ClientError {
    /// The protocol error code that best describes the failure, for the
    /// one-line `error: <code>: <what>` report.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Server(body) => body.code,
            ClientError::Untrusted { .. } | ClientError::Certificate { .. } => {
                ErrorCode::Unauthorized
            }
            ClientError::Protocol(_) | ClientError::Home(_) => ErrorCode::Internal,
            ClientError::Key(coffer_crypto::KeyError::WrongPassword) => ErrorCode::Unauthorized,
            ClientError::Key(_) | ClientError::Integrity(_) => ErrorCode::ChecksumMismatch,
            ClientError::NotFound(_) => ErrorCode::NotFound,
            ClientError::Usage(_) | ClientError::Local { .. } => ErrorCode::BadRequest,
            ClientError::Conn(ConnError::Decode(e)) => e.code(),
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Handshake { .. }
            | ClientError::Conn(_)
            | ClientError::Lost(_)
            | ClientError::Timeout(_) => ErrorCode::Unavailable,
        }
    }

    /// Whether retrying (after a pause, or on another server) may succeed.
    pub fn is_transient(&self) -> bool {
        self.code().is_transient()
    }

    /// Whether the request may have reached the server (as opposed to failing
    /// before it was sent: no connection at all).
    pub fn was_sent(&self) -> bool {
        !matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::ConnectTimeout { .. }
                | ClientError::Handshake { .. }
        )
    }
}
