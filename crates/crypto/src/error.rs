//! Errors of the cryptographic operations, one enum per kind of operation.

/// Why sealed bytes could not be opened.
///
/// Deliberately coarse: an attacker who flips bits learns only "rejected", never
/// which check failed beyond the framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Fewer bytes than the envelope's fixed overhead.
    #[error("sealed {what} is {len} bytes, shorter than the {min}-byte envelope")]
    TooShort {
        /// What was being opened.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The envelope overhead.
        min: usize,
    },
    /// A format version this build does not know.
    #[error("sealed {what} has format version {found}, this build reads {expected}")]
    UnsupportedVersion {
        /// What was being opened.
        what: &'static str,
        /// The version byte found.
        found: u8,
        /// The version this build writes and reads.
        expected: u8,
    },
    /// The authentication tag does not match: the bytes were altered, belong to
    /// another file, chunk index or context, or the key is wrong.
    #[error("{what} failed its integrity check (tampered, misplaced, or the wrong key)")]
    Integrity {
        /// What was being opened.
        what: &'static str,
    },
}

/// Why a key operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The password does not unwrap the private key.
    #[error("wrong password: the private key does not decrypt")]
    WrongPassword,
    /// The KDF parameters are outside what this build accepts.
    #[error("KDF parameters refused: {reason}")]
    KdfParams {
        /// Which bound was broken.
        reason: String,
    },
    /// Key bytes that do not parse (DER, length).
    #[error("malformed {what}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
    },
    /// An RSA key of a size this build refuses.
    #[error("RSA key of {bits} bits refused, {expected} bits are required")]
    KeySize {
        /// The key's size.
        bits: usize,
        /// The required size.
        expected: usize,
    },
    /// RSA-OAEP decryption failed: not wrapped for this key, or with another label.
    #[error("the wrapped {what} is not for this key")]
    Unwrap {
        /// What was being unwrapped.
        what: &'static str,
    },
    /// Sealed key bytes failed to open.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Why encrypted file metadata could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The sealed metadata failed to open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// It opened, but the plaintext is not metadata this build understands.
    #[error("file metadata is malformed: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
}
