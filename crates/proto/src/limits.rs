//! Protocol constants and the size limits every peer enforces.
//!
//! The limits are checked against the 8-byte length prefix *before* anything is
//! allocated, so a peer that announces a 4 GiB header costs us eight bytes of
//! reading, not four gigabytes of memory.

/// Version of the protocol spoken by this crate; sent in `hello` and `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Length of the frame prefix: `u32 header_len | u32 body_len`, big-endian.
pub const PREFIX_LEN: usize = 8;

/// Largest header (UTF-8 JSON object) a peer may send: 64 KiB.
pub const MAX_HEADER: u32 = 64 * 1024;

/// Plaintext size of a content chunk unless the client chooses otherwise: 1 MiB.
///
/// Small enough that a one-byte edit of a large file re-sends one MiB, large
/// enough that a chunk's per-frame and per-row costs vanish next to its bytes.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// Smallest plaintext chunk size a client may declare for a file.
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;

/// Largest plaintext chunk size a client may declare for a file: 4 MiB.
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;

/// Bytes the chunk envelope adds to a chunk: format version (1), IV (16), HMAC tag (32).
pub const CHUNK_OVERHEAD: u32 = 1 + 16 + 32;

/// Largest file whose one chunk `download` sends inline when asked (`inline`).
pub const MAX_INLINE_FILE: u32 = 64 * 1024;

/// Whether `download` with `inline` sends the chunk of a file of `size` bytes
/// in `chunk_count` chunks after its address: a file of one chunk of at most
/// [`MAX_INLINE_FILE`] bytes. The server decides by it, and the client reads
/// the answer's body by it.
pub fn sends_inline(chunk_count: u32, size: u64) -> bool {
    chunk_count == 1 && size <= u64::from(MAX_INLINE_FILE)
}

/// Largest body a peer may send: one sealed maximum-size chunk with room to spare
/// (4 MiB + 4 KiB).
pub const MAX_BODY: u32 = MAX_CHUNK_SIZE + 4096;

/// Most chunks one file may have. A file's chunk list (32 bytes per chunk) travels
/// in one body, so `MAX_CHUNKS_PER_FILE * 32` must fit in [`MAX_BODY`]: with the
/// default chunk size that caps a file at 128 GiB, with the largest at 512 GiB.
pub const MAX_CHUNKS_PER_FILE: u32 = 128 * 1024;

/// Longest path (in bytes) inside a folder.
pub const MAX_PATH_LEN: usize = 4096;

/// Longest single path component (in bytes); what common file systems hold.
pub const MAX_NAME_LEN: usize = 255;

/// Longest folder label, device name or other human-chosen name (in bytes).
pub const MAX_LABEL_LEN: usize = 128;

/// Most records one replication batch may carry.
pub const MAX_RECORDS_PER_BATCH: u32 = 4096;

/// The limits one side of a connection enforces on what it reads.
///
/// [`Limits::default`] is the protocol's limits; tests use smaller ones to reach
/// the edges cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted header, in bytes.
    pub max_header: u32,
    /// Largest accepted body, in bytes.
    pub max_body: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header: MAX_HEADER,
            max_body: MAX_BODY,
        }
    }
}

impl Limits {
    /// The most bytes one buffered frame can occupy under these limits.
    pub fn max_frame(&self) -> usize {
        PREFIX_LEN + self.max_header as usize + self.max_body as usize
    }
}

// A full chunk list and a sealed maximum-size chunk must each fit in one body.
const _: () = assert!(MAX_CHUNKS_PER_FILE as u64 * 32 <= MAX_BODY as u64);
const _: () = assert!(MAX_CHUNK_SIZE + CHUNK_OVERHEAD <= MAX_BODY);
const _: () = assert!(MIN_CHUNK_SIZE <= DEFAULT_CHUNK_SIZE && DEFAULT_CHUNK_SIZE <= MAX_CHUNK_SIZE);
