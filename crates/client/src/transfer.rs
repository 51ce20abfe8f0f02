//! Moving files: `put` seals and streams a file, `get` fetches, verifies and
//! writes one.
//!
//! **put** reads the file once, in order: each chunk is hashed into the file's
//! plaintext SHA-256, sealed (AES-256-CFB + HMAC, a fresh random IV) on the
//! blocking pool — several at once, on every core — and sent as a *streamed*
//! upload over several connections, a bounded number in flight. The file key
//! and upload id are kept in a [`Journal`] until the commit, so running `put`
//! again on an unchanged file resumes: the server says which chunks it lacks
//! and only those are sealed and sent. The commit carries the sealed
//! metadata (plaintext SHA-256, size, mtime, mode) and the version the upload
//! started from. A file of one chunk or none goes in a single request instead,
//! begun, sent and committed at once.
//!
//! **get** fetches chunks over several connections, verifies each chunk's tag
//! and decrypts it on the blocking pool, writes them in order to a temporary
//! file beside the destination while hashing, and renames it into place only if
//! the whole file's SHA-256 and size match the sealed metadata. Whatever the
//! server sends, nothing is written but that temporary file and the
//! destination the caller named.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use coffer_crypto::envelope::{HEADER_LEN, TAG_LEN};
use coffer_crypto::{ChunkCipher, FileKey, FileKeyContext, FileMeta, SecretKey, wrap_file_key};
use coffer_net::{Net, blocking};
use coffer_proto::limits::{
    CHUNK_OVERHEAD, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_CHUNKS_PER_FILE, MIN_CHUNK_SIZE,
    sends_inline,
};
use coffer_proto::request::{
    ChunkGet, ShareRef, Stat, UploadBegin, UploadChunk, UploadCommit, UploadRef,
};
use coffer_proto::response::FolderInfo;
use coffer_proto::types::{Blob, EntryKind, FileEntry, FileId, Scope, Sha256, VersionVector};
use coffer_proto::{ErrorBody, ErrorCode, Request, Response, path as paths};
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use rand::{Rng, RngExt};
use sha2::Digest;
use zeroize::Zeroizing;

use crate::error::ClientError;
use crate::home::{Home, PendingUpload};
use crate::session::{Session, unexpected};

/// Connections a transfer spreads its chunks over.
pub const CONNECTIONS: usize = 4;
/// Bytes of chunks `put` reads, seals and sends at once.
const PUT_IN_FLIGHT: usize = 16 << 20;
/// Bytes of chunks `get` fetches and opens at once: more than `put`, since
/// each chunk waits on a round trip rather than on this machine's cores.
const GET_IN_FLIGHT: usize = 32 << 20;

/// How often `get` hands what it wrote to the disk and the page cache back.
const UNCACHE_EVERY: u64 = 8 << 20;

/// Tells the kernel that `len` bytes of `file` from `offset` will not be
/// needed again: it starts writing back those that are dirty and drops
/// those that are clean. A transfer streams through gigabytes it touches
/// once; without this it would push everything else out of the page cache
/// (what backup tools such as Borg do for the files they read), and the
/// final fsync of a download would wait for all of it at once. Advice only:
/// failure changes nothing.
fn uncache(file: &std::fs::File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let _ = nix::fcntl::posix_fadvise(
        file,
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// Where `put` keeps what it needs to resume an upload.
pub trait Journal {
    /// The upload in progress to `folder_id:path`.
    fn pending(&self, folder_id: &str, path: &str) -> Result<Option<PendingUpload>, ClientError>;
    /// Remembers an upload.
    fn save(&self, upload: &PendingUpload) -> Result<(), ClientError>;
    /// Forgets an upload.
    fn forget(&self, folder_id: &str, path: &str) -> Result<(), ClientError>;
}

impl Journal for Home {
    fn pending(&self, folder_id: &str, path: &str) -> Result<Option<PendingUpload>, ClientError> {
        Ok(self.pending_upload(folder_id, path)?)
    }
    fn save(&self, upload: &PendingUpload) -> Result<(), ClientError> {
        Ok(self.save_upload(upload)?)
    }
    fn forget(&self, folder_id: &str, path: &str) -> Result<(), ClientError> {
        Ok(self.forget_upload(folder_id, path)?)
    }
}

/// A journal that keeps nothing: uploads do not resume across runs.
#[derive(Debug, Default)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn pending(&self, _: &str, _: &str) -> Result<Option<PendingUpload>, ClientError> {
        Ok(None)
    }
    fn save(&self, _: &PendingUpload) -> Result<(), ClientError> {
        Ok(())
    }
    fn forget(&self, _: &str, _: &str) -> Result<(), ClientError> {
        Ok(())
    }
}

/// Told how a transfer advances (a progress bar, or nothing).
pub trait Progress {
    /// The transfer's total size in bytes.
    fn start(&self, total: u64);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
}

/// Progress nobody watches.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// What `put` did.
#[derive(Debug, Clone)]
pub struct PutReport {
    /// The committed version.
    pub entry: FileEntry,
    /// Plaintext SHA-256.
    pub sha256: [u8; 32],
    /// Whether an earlier, interrupted upload was resumed.
    pub resumed: bool,
    /// Chunks sent in this run.
    pub chunks_sent: u32,
    /// Bytes sent in this run (sealed chunk bytes).
    pub bytes_sent: u64,
    /// Chunks named by the address of an earlier version's identical chunk
    /// instead of being sealed and sent again.
    pub chunks_reused: u32,
    /// The file as it was read: modification time (ns) and inode.
    pub mtime_ns: i64,
    /// Inode number (0 where there is none).
    pub inode: u64,
    /// The chunk size used.
    pub chunk_size: u32,
    /// With [`PutOptions::hash_chunks`] and every chunk handled in this run:
    /// each chunk's plaintext SHA-256 and the content address it is stored
    /// under, in order — what a later delta upload reuses.
    pub chunks: Vec<StoredChunk>,
}

/// A plaintext chunk's SHA-256 and the content address (SHA-256 of the
/// sealed chunk) it is stored under.
pub type StoredChunk = ([u8; 32], [u8; 32]);

/// What version an upload replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Base {
    /// Whatever the server holds now (the command line's `put`).
    #[default]
    Latest,
    /// The version the local content was derived from (`None`: the path was
    /// not known to hold anything). Anything else on the server now is a
    /// conflict, refused before a byte is sent.
    Known(Option<VersionVector>),
}

/// How `put` uploads.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// The version replaced.
    pub base: Base,
    /// Hash each plaintext chunk and report where each is stored.
    pub hash_chunks: bool,
    /// For the version replaced: its chunks' plaintext hashes and content
    /// addresses. A chunk whose plaintext is unchanged at the same index is
    /// named by its address, not sealed and sent again — the file keeps its
    /// key while the folder's epoch is the same.
    pub reuse: Vec<StoredChunk>,
}

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Local {
        path: path.to_owned(),
        source,
    }
}

/// Chunks a file is cut into before its chunks grow: up to this many, chunks
/// are the default size.
const CHUNKS_BEFORE_GROWING: u64 = 256;

/// The chunk size for a file of `size` bytes: the default (1 MiB) up to
/// 256 MiB, then doubling to keep a file near 256 chunks, up to the largest
/// chunk (4 MiB, from 512 MiB on) — and larger only if needed to stay within
/// the chunks a file may have. Every chunk costs the server two fsyncs and a
/// receipt, and both sides a round of task hand-offs, so a large file in
/// 4 MiB chunks moves faster than in 1 MiB ones (measured by
/// `cargo bench -p coffer-client --bench transfer`); small and medium files
/// keep small chunks, so that an edit re-sends little. (Chunks are sealed
/// with random IVs, so there is no cross-file deduplication for a smaller
/// chunk to improve.)
pub fn chunk_size_for(size: u64) -> Result<u32, ClientError> {
    let mut chunk = DEFAULT_CHUNK_SIZE;
    while chunk < MAX_CHUNK_SIZE && size.div_ceil(u64::from(chunk)) > CHUNKS_BEFORE_GROWING {
        chunk *= 2;
    }
    if size.div_ceil(u64::from(chunk)) > u64::from(MAX_CHUNKS_PER_FILE) {
        return Err(ClientError::Usage(format!(
            "a file of {size} bytes is over the largest this version stores ({} bytes)",
            u64::from(MAX_CHUNK_SIZE) * u64::from(MAX_CHUNKS_PER_FILE)
        )));
    }
    debug_assert!(chunk >= MIN_CHUNK_SIZE);
    Ok(chunk)
}

/// Chunks of `chunk_size` a transfer keeps in flight to have about `bytes`
/// in flight, which bounds the memory it holds.
fn in_flight(bytes: usize, chunk_size: u32) -> usize {
    (bytes / chunk_size as usize).clamp(2, 16)
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
    }
    #[cfg(not(unix))]
    {
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64)
    }
}

fn inode(meta: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0
    }
}

fn mode(meta: &std::fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o777
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0
    }
}

/// Whether an interrupted upload goes on where it stopped or begins again.
enum Resume {
    /// The server has the upload, and lacks these chunks.
    Continue(Box<PendingUpload>, HashSet<u32>),
    /// Begin again under this upload id: the same one when the server does
    /// not know the upload (it expired, or this is another node of the
    /// cluster, which may hold the version that upload made), a new one when
    /// the file changed and this is another write.
    Restart {
        upload_id: String,
        /// The id is the interrupted upload's: the server decides whether
        /// it was committed, even where the path moved on since.
        again: bool,
    },
}

/// A new upload id, random.
fn new_upload_id<N: Net>(s: &Session<N>) -> String {
    s.write_id()
}

/// Finds what an unchanged upload still lacks, or how it must start over.
async fn resumable<N: Net>(
    s: &Session<N>,
    node: &str,
    journal: &dyn Journal,
    pending: PendingUpload,
    expect: (&Path, u64, i64, u32, u64),
) -> Result<Resume, ClientError> {
    let (local_path, size, mtime, chunk_size, epoch) = expect;
    let unchanged = pending.local == local_path
        && pending.size == size
        && pending.mtime_ns == mtime
        && pending.chunk_size == chunk_size
        && pending.epoch == epoch;
    if unchanged {
        let answer = s
            .call_at(
                Some(node),
                Request::UploadResume(UploadRef {
                    upload_id: pending.upload_id.clone(),
                }),
                Bytes::new(),
            )
            .await;
        match answer {
            Ok(frame) => {
                if let Response::Upload(upload) = &frame.msg {
                    let missing = (0..upload.chunk_count)
                        .filter(|i| {
                            frame
                                .body
                                .get(*i as usize / 8)
                                .is_some_and(|b| b & (1 << (i % 8)) != 0)
                        })
                        .collect();
                    return Ok(Resume::Continue(Box::new(pending), missing));
                }
            }
            // Kept in the journal until the begin under the same id is
            // answered: should that fail too (the node that made the
            // version cannot reach a quorum), the next run must still name
            // the same write, or it makes a second one.
            Err(ClientError::Server(e)) if e.code == ErrorCode::NotFound => {
                return Ok(Resume::Restart {
                    upload_id: pending.upload_id,
                    again: true,
                });
            }
            Err(e) => return Err(e),
        }
    } else {
        // The file changed: its half-sent upload is of no use.
        let _ = s
            .call(Request::UploadAbort(UploadRef {
                upload_id: pending.upload_id.clone(),
            }))
            .await;
    }
    journal.forget(&pending.folder_id, &pending.path)?;
    Ok(Resume::Restart {
        upload_id: new_upload_id(s),
        again: false,
    })
}

/// Begins a streamed upload of a new version of `path`: the pending upload,
/// the chunks to send, and whether the chunks of the version replaced may be
/// named by address (the file keeps its key).
/// What an upload is sealed under and replaces.
struct Prepared {
    file_id: FileId,
    file_key: FileKey,
    wrapped: Vec<u8>,
    base: Option<VersionVector>,
    /// The file key is the replaced version's, so its chunks may be reused.
    reusing: bool,
}

/// Decides the version an upload replaces and the file key it is sealed
/// under. With `look` false and a path the caller believes new (`Known(None)`,
/// nothing to reuse), the server is not asked first: the commit itself refuses
/// a path that exists after all. With `again` (an interrupted upload begun
/// anew under its id), a known base the path moved on from is left for the
/// server to judge: the version it moved on to may be this very upload's.
async fn prepare<N: Net>(
    s: &Session<N>,
    folder: &FolderInfo,
    path: &str,
    chunk_size: u32,
    options: &PutOptions,
    (look, again): (bool, bool),
) -> Result<Prepared, ClientError> {
    let believed_new = matches!(options.base, Base::Known(None)) && options.reuse.is_empty();
    // The version this upload replaces: its version vector is the base, and
    // the file keeps its identity.
    let current = if !look && believed_new {
        None
    } else {
        match s
            .call(Request::Stat(Stat {
                folder_id: folder.folder_id.clone(),
                path: path.to_owned(),
                version: None,
                inline: false,
            }))
            .await
        {
            Ok(Response::Entry(e)) if e.kind == EntryKind::Dir && !e.deleted => {
                return Err(ClientError::Usage(format!(
                    "{path} is a directory in \"{}\"",
                    folder.label
                )));
            }
            Ok(Response::Entry(e)) => Some(e),
            Ok(other) => return Err(unexpected("stat", &other)),
            Err(ClientError::Server(e)) if e.code == ErrorCode::NotFound => None,
            Err(e) => return Err(e),
        }
    };
    let live = current.as_ref().filter(|c| !c.deleted);
    let base = match &options.base {
        Base::Latest => current.as_ref().map(|c| c.vv.clone()),
        Base::Known(known) => {
            if live.map(|c| &c.vv) != known.as_ref() && !again {
                return Err(ClientError::Server(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("{path} changed on the server since this device last synced it"),
                )));
            }
            known.clone()
        }
    };
    let folder_key = s.folder_key(&folder.folder_id, folder.epoch).await?;
    // The replaced version's key, when its chunks may be reused: same
    // folder epoch (after a rotation everything is sealed anew) and chunk size.
    let kept = match live {
        Some(c)
            if !options.reuse.is_empty()
                && c.kind == EntryKind::File
                && c.epoch == folder.epoch
                && c.chunk_size == chunk_size =>
        {
            let ctx = FileKeyContext {
                folder_id: &folder.folder_id,
                epoch: c.epoch,
                file_id: c.file_id.0,
            };
            coffer_crypto::unwrap_file_key(&folder_key, ctx, c.wrapped_file_key.as_bytes())
                .ok()
                .map(|key| (c.file_id, key, c.wrapped_file_key.as_bytes().to_vec()))
        }
        _ => None,
    };
    let reusing = kept.is_some();
    let (file_id, file_key, wrapped) = match kept {
        Some(kept) => kept,
        None => {
            let mut rng = s.rng();
            let file_id = current
                .as_ref()
                .map_or_else(|| FileId(rng.random()), |c| c.file_id);
            let file_key = FileKey::generate(&mut *rng);
            let ctx = FileKeyContext {
                folder_id: &folder.folder_id,
                epoch: folder.epoch,
                file_id: file_id.0,
            };
            let wrapped = wrap_file_key(&mut *rng, &folder_key, ctx, &file_key);
            (file_id, file_key, wrapped)
        }
    };
    Ok(Prepared {
        file_id,
        file_key,
        wrapped,
        base,
        reusing,
    })
}

/// A streamed upload begun: what to send, and whether the chunks of the
/// version replaced may be named by address (the file keeps its key).
struct Begun {
    pending: PendingUpload,
    missing: HashSet<u32>,
    reusing: bool,
    /// The version this upload made already (begun again under its id after
    /// it was committed, perhaps through another node): nothing to send.
    committed: Option<FileEntry>,
}

#[allow(clippy::too_many_arguments)]
async fn begin<N: Net>(
    s: &Session<N>,
    node: &str,
    (upload_id, again): (String, bool),
    folder: &FolderInfo,
    path: &str,
    local_path: &Path,
    size: u64,
    mtime: i64,
    chunk_size: u32,
    options: &PutOptions,
) -> Result<Begun, ClientError> {
    let Prepared {
        file_id,
        file_key,
        wrapped,
        base,
        reusing,
    } = prepare(s, folder, path, chunk_size, options, (true, again)).await?;
    let chunk_count = size.div_ceil(u64::from(chunk_size)) as u32;
    let request = Request::UploadBegin(UploadBegin {
        folder_id: folder.folder_id.clone(),
        path: path.to_owned(),
        file_id,
        size,
        chunk_size,
        chunk_count,
        epoch: folder.epoch,
        wrapped_file_key: Blob(wrapped.clone()),
        meta: Blob::default(),
        base: base.clone(),
        commit: false,
        upload_id: Some(upload_id.clone()),
    });
    let frame = s.call_at(Some(node), request, Bytes::new()).await?;
    let committed = match frame.msg {
        Response::Upload(upload) if upload.upload_id == upload_id => None,
        Response::Entry(entry) => Some(entry),
        other => return Err(unexpected("upload_begin", &other)),
    };
    let pending = PendingUpload {
        upload_id,
        folder_id: folder.folder_id.clone(),
        path: path.to_owned(),
        local: local_path.to_owned(),
        size,
        mtime_ns: mtime,
        file_id,
        file_key: Zeroizing::new(*file_key.0.expose()),
        wrapped_file_key: wrapped,
        epoch: folder.epoch,
        chunk_size,
        base,
    };
    let missing = match committed {
        Some(_) => HashSet::new(),
        None => (0..chunk_count).collect(),
    };
    Ok(Begun {
        pending,
        missing,
        reusing,
        committed,
    })
}

/// A chunk on its way: sealed and sent, or named by an earlier address.
struct Sent {
    index: u32,
    address: [u8; 32],
    sealed_len: u64,
    plain_len: u64,
    reused: bool,
}

/// Uploads `local_path` to `path` in `folder`, resuming an interrupted upload
/// of the same unchanged file; the base version and chunk reuse as `options`
/// say.
pub async fn put<N: Net>(
    s: &Session<N>,
    journal: &dyn Journal,
    local_path: &Path,
    folder: &FolderInfo,
    path: &str,
    progress: &dyn Progress,
    options: &PutOptions,
) -> Result<PutReport, ClientError> {
    match put_attempt(s, journal, local_path, folder, path, progress, options).await {
        // The upload vanished under us: its server went away (no connection
        // reaches it, or the pool's retry reached another, which does not
        // know it). Once more, under the same id: another server finishes
        // it, or answers with the version the first one made if it has
        // arrived. Safe whatever the cause: the id makes it the same write.
        Err(ClientError::Server(e))
            if matches!(e.code, ErrorCode::NotFound | ErrorCode::Unavailable)
                && journal.pending(&folder.folder_id, path)?.is_some() =>
        {
            put_attempt(s, journal, local_path, folder, path, progress, options).await
        }
        done => done,
    }
}

async fn put_attempt<N: Net>(
    s: &Session<N>,
    journal: &dyn Journal,
    local_path: &Path,
    folder: &FolderInfo,
    path: &str,
    progress: &dyn Progress,
    options: &PutOptions,
) -> Result<PutReport, ClientError> {
    paths::validate(path).map_err(|e| ClientError::Usage(format!("{path:?}: {e}")))?;
    let local_path = std::fs::canonicalize(local_path).map_err(local(local_path))?;
    let file = std::fs::File::open(&local_path).map_err(local(&local_path))?;
    let meta = file.metadata().map_err(local(&local_path))?;
    if !meta.is_file() {
        return Err(ClientError::Usage(format!(
            "{} is not a regular file",
            local_path.display()
        )));
    }
    let (size, mtime) = (meta.len(), mtime_ns(&meta));
    let chunk_size = chunk_size_for(size)?;
    let chunk_count = size.div_ceil(u64::from(chunk_size)) as u32;

    let pending = journal.pending(&folder.folder_id, path)?;
    if chunk_count <= 1 && pending.is_none() {
        return put_whole(
            s,
            journal,
            folder,
            path,
            (&local_path, file, &meta),
            chunk_size,
            progress,
            options,
        )
        .await;
    }
    // An upload in progress lives on the node it began on: in a cluster
    // behind a balancer every request of this one goes to that node, over
    // the connections that reach it.
    let node = s.upload_node().await?;
    let resumed = match pending {
        Some(p) => {
            resumable(
                s,
                &node,
                journal,
                p,
                (&local_path, size, mtime, chunk_size, folder.epoch),
            )
            .await?
        }
        None => Resume::Restart {
            upload_id: new_upload_id(s),
            again: false,
        },
    };
    let was_resumed = matches!(resumed, Resume::Continue(..));
    let Begun {
        pending,
        missing,
        reusing,
        committed,
    } = match resumed {
        Resume::Continue(pending, missing) => Begun {
            pending: *pending,
            missing,
            reusing: false,
            committed: None,
        },
        Resume::Restart { upload_id, again } => {
            let fresh = begin(
                s,
                &node,
                (upload_id, again),
                folder,
                path,
                &local_path,
                size,
                mtime,
                chunk_size,
                options,
            )
            .await?;
            if fresh.committed.is_none() {
                journal.save(&fresh.pending)?;
            }
            fresh
        }
    };
    let reuse: &[StoredChunk] = if reusing { &options.reuse } else { &[] };
    let hash_chunks = options.hash_chunks || !reuse.is_empty();
    progress.start(size);
    let file_key = FileKey(SecretKey::from_bytes(*pending.file_key));
    let cipher = Arc::new(ChunkCipher::new(&file_key, pending.file_id.0));
    // Open the connections the chunks are spread over.
    s.pool().links(CONNECTIONS).await?;

    let mut reader = Some((file, sha2::Sha256::new()));
    let mut sending = FuturesUnordered::new();
    let (mut chunks_sent, mut chunks_reused, mut bytes_sent) = (0u32, 0u32, 0u64);
    let mut plain_hashes: Vec<[u8; 32]> = Vec::new();
    let mut addresses: Vec<Option<[u8; 32]>> = if hash_chunks {
        vec![None; chunk_count as usize]
    } else {
        Vec::new()
    };
    let mut settle = |sent: Sent, addresses: &mut Vec<Option<[u8; 32]>>| {
        if sent.reused {
            chunks_reused += 1;
        } else {
            bytes_sent += sent.sealed_len;
            chunks_sent += 1;
        }
        if let Some(slot) = addresses.get_mut(sent.index as usize) {
            *slot = Some(sent.address);
        }
        progress.advance(sent.plain_len);
    };
    for index in 0..chunk_count {
        let len =
            (size - u64::from(index) * u64::from(chunk_size)).min(u64::from(chunk_size)) as usize;
        let (mut file, mut hasher) = reader
            .take()
            .expect("the reader is returned after each chunk");
        // Read the plaintext where it will be sealed: after room for the
        // envelope's header, with room for its tag.
        let offset = u64::from(index) * u64::from(chunk_size);
        let (file, hasher, buf, plain_hash) = blocking(move || {
            let mut buf = Vec::with_capacity(HEADER_LEN + len + TAG_LEN);
            buf.resize(HEADER_LEN + len, 0);
            let read = file.read_exact(&mut buf[HEADER_LEN..]);
            hasher.update(&buf[HEADER_LEN..]);
            let plain_hash: Option<[u8; 32]> =
                hash_chunks.then(|| sha2::Sha256::digest(&buf[HEADER_LEN..]).into());
            uncache(&file, offset, len as u64);
            read.map(|()| (file, hasher, buf, plain_hash))
        })
        .await
        .map_err(local(&local_path))?;
        reader = Some((file, hasher));
        plain_hashes.extend(plain_hash);
        if !missing.contains(&index) {
            progress.advance(len as u64);
            continue;
        }
        while sending.len() >= in_flight(PUT_IN_FLIGHT, chunk_size) {
            let sent = sending.next().await.expect("not empty")?;
            settle(sent, &mut addresses);
        }
        // The same plaintext at the same index, under the same key: the
        // earlier version's sealed chunk serves.
        let earlier = reuse
            .get(index as usize)
            .filter(|(plain, _)| plain_hash.as_ref() == Some(plain))
            .map(|(_, address)| *address);
        let iv: [u8; 16] = s.rng().random();
        let cipher = cipher.clone();
        let upload_id = pending.upload_id.clone();
        let node = node.as_str();
        sending.push(async move {
            let plain_len = len as u64;
            if let Some(address) = earlier {
                let request = Request::UploadChunk(UploadChunk {
                    upload_id: upload_id.clone(),
                    index,
                    sha256: Sha256(address),
                    md5: None,
                });
                match s.call_at(Some(node), request, Bytes::new()).await {
                    Ok(frame) => match frame.msg {
                        Response::ChunkAck(_) => {
                            return Ok(Sent {
                                index,
                                address,
                                sealed_len: 0,
                                plain_len,
                                reused: true,
                            });
                        }
                        other => return Err(unexpected("upload_chunk", &other)),
                    },
                    // No longer held by the folder: send the bytes after all.
                    Err(ClientError::Server(e)) if e.code == ErrorCode::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let (sealed, hash) = blocking(move || {
                let mut buf = buf;
                cipher.seal_in_place(iv, index, &mut buf);
                let hash = Sha256(coffer_crypto::content_address(&buf));
                (buf, hash)
            })
            .await;
            let sealed_len = sealed.len() as u64;
            let request = Request::UploadChunk(UploadChunk {
                upload_id,
                index,
                sha256: hash,
                md5: None,
            });
            match s
                .call_at(Some(node), request, Bytes::from(sealed))
                .await?
                .msg
            {
                Response::ChunkAck(_) => Ok(Sent {
                    index,
                    address: hash.0,
                    sealed_len,
                    plain_len,
                    reused: false,
                }),
                other => Err(unexpected("upload_chunk", &other)),
            }
        });
    }
    while let Some(done) = sending.next().await {
        settle(done?, &mut addresses);
    }
    let (_, hasher) = reader
        .take()
        .expect("the reader is returned after each chunk");
    let sha256: [u8; 32] = hasher.finalize().into();
    let sealed_meta = sealed_meta(s, &local_path, &meta, sha256, &file_key, pending.file_id)?;
    let entry = match committed {
        Some(entry) => entry,
        None => {
            let commit = Request::UploadCommit(UploadCommit {
                upload_id: pending.upload_id.clone(),
                meta: Some(Blob(sealed_meta)),
            });
            match s.call_at(Some(&node), commit, Bytes::new()).await?.msg {
                Response::Entry(entry) => entry,
                other => return Err(unexpected("upload_commit", &other)),
            }
        }
    };
    journal.forget(&folder.folder_id, path)?;
    // Where each chunk is stored, when every one passed through this run.
    let chunks = addresses
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .filter(|a| a.len() == plain_hashes.len())
        .map(|a| plain_hashes.into_iter().zip(a).collect())
        .unwrap_or_default();
    Ok(PutReport {
        entry,
        sha256,
        resumed: was_resumed,
        chunks_sent,
        bytes_sent,
        chunks_reused,
        mtime_ns: mtime,
        inode: inode(&meta),
        chunk_size,
        chunks,
    })
}

/// The file's metadata sealed under its key, once the whole file was read:
/// refused if it changed meanwhile, which would commit a mix of contents.
fn sealed_meta<N: Net>(
    s: &Session<N>,
    local_path: &Path,
    meta: &std::fs::Metadata,
    sha256: [u8; 32],
    file_key: &FileKey,
    file_id: FileId,
) -> Result<Vec<u8>, ClientError> {
    let (size, mtime) = (meta.len(), mtime_ns(meta));
    let after = std::fs::metadata(local_path).map_err(local(local_path))?;
    if after.len() != size || mtime_ns(&after) != mtime {
        return Err(ClientError::Usage(format!(
            "{} changed while it was uploaded; run put again",
            local_path.display()
        )));
    }
    Ok(FileMeta {
        sha256,
        size,
        mtime_ms: mtime / 1_000_000,
        mode: mode(meta),
        name: String::new(),
    }
    .seal(&mut *s.rng(), file_key, file_id.0))
}

/// A file of at most one chunk, in one request: begun with its sealed chunk
/// and committed at once (`upload_begin` with `commit`). There is nothing to
/// resume, so nothing is journaled; a path believed new costs no `stat`
/// either. One round trip instead of four, which is what a folder of many
/// small files waits on.
#[allow(clippy::too_many_arguments)]
async fn put_whole<N: Net>(
    s: &Session<N>,
    journal: &dyn Journal,
    folder: &FolderInfo,
    path: &str,
    (local_path, mut file, meta): (&Path, std::fs::File, &std::fs::Metadata),
    chunk_size: u32,
    progress: &dyn Progress,
    options: &PutOptions,
) -> Result<PutReport, ClientError> {
    let (size, mtime) = (meta.len(), mtime_ns(meta));
    let prepared = prepare(s, folder, path, chunk_size, options, (false, false)).await?;
    let upload_id = new_upload_id(s);
    progress.start(size);
    let cipher = ChunkCipher::new(&prepared.file_key, prepared.file_id.0);
    let iv: [u8; 16] = s.rng().random();
    let len = usize::try_from(size).expect("one chunk fits in memory");
    // Read where it is sealed: after room for the envelope's header, with
    // room for its tag.
    let (sealed, sha256) = blocking(move || {
        let mut buf = Vec::with_capacity(HEADER_LEN + len + TAG_LEN);
        buf.resize(HEADER_LEN + len, 0);
        file.read_exact(&mut buf[HEADER_LEN..])?;
        let sha256: [u8; 32] = sha2::Sha256::digest(&buf[HEADER_LEN..]).into();
        if len > 0 {
            cipher.seal_in_place(iv, 0, &mut buf);
        } else {
            buf.clear();
        }
        Ok::<_, std::io::Error>((buf, sha256))
    })
    .await
    .map_err(local(local_path))?;
    let address = (len > 0).then(|| coffer_crypto::content_address(&sealed));
    let sealed_meta = sealed_meta(
        s,
        local_path,
        meta,
        sha256,
        &prepared.file_key,
        prepared.file_id,
    )?;
    let request = Request::UploadBegin(UploadBegin {
        folder_id: folder.folder_id.clone(),
        path: path.to_owned(),
        file_id: prepared.file_id,
        size,
        chunk_size,
        chunk_count: u32::from(address.is_some()),
        epoch: folder.epoch,
        wrapped_file_key: Blob(prepared.wrapped.clone()),
        meta: Blob(sealed_meta),
        base: prepared.base.clone(),
        commit: true,
        // Its own id makes the request safe to send again.
        upload_id: Some(upload_id.clone()),
    });
    let sealed_len = sealed.len() as u64;
    let mut body = BytesMut::with_capacity(32 + sealed.len());
    body.extend_from_slice(address.as_ref().map_or(&[][..], |a| &a[..]));
    body.extend_from_slice(&sealed);
    let entry = match s.call_with_body(request, body.freeze()).await {
        Ok(frame) => match frame.msg {
            Response::Entry(entry) => entry,
            other => return Err(unexpected("upload_begin", &other)),
        },
        // Perhaps written, perhaps not (a server that could not reach its
        // quorum keeps the write): remembered, so that `put` run again
        // begins the same write under the same id — and finds it done if it
        // was — rather than make a second version.
        Err(e) if e.is_transient() => {
            journal.save(&PendingUpload {
                upload_id,
                folder_id: folder.folder_id.clone(),
                path: path.to_owned(),
                local: local_path.to_owned(),
                size,
                mtime_ns: mtime,
                file_id: prepared.file_id,
                file_key: Zeroizing::new(*prepared.file_key.0.expose()),
                wrapped_file_key: prepared.wrapped.clone(),
                epoch: folder.epoch,
                chunk_size,
                base: prepared.base,
            })?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    progress.advance(size);
    Ok(PutReport {
        entry,
        sha256,
        resumed: false,
        chunks_sent: u32::from(address.is_some()),
        bytes_sent: sealed_len,
        chunks_reused: 0,
        mtime_ns: mtime,
        inode: inode(meta),
        chunk_size,
        chunks: match address {
            Some(address) if options.hash_chunks => vec![(sha256, address)],
            _ => Vec::new(),
        },
    })
}

/// What to download.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A path in a folder, latest or a given version.
    Folder {
        /// The folder.
        folder_id: &'a str,
        /// The path.
        path: &'a str,
        /// A version from the history; the latest when absent.
        version: Option<u64>,
    },
    /// A file shared with the user.
    Share(&'a str),
}

/// What `get` wrote.
#[derive(Debug, Clone)]
pub struct GetReport {
    /// The file written.
    pub written: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its plaintext SHA-256, checked against the sealed metadata.
    pub sha256: [u8; 32],
    /// The version read.
    pub entry: FileEntry,
    /// Its chunks' content addresses, in order (from the manifest).
    pub chunks: Vec<[u8; 32]>,
    /// With `hash_chunks`: each plaintext chunk's SHA-256, in order.
    pub plain_chunks: Vec<[u8; 32]>,
}

/// A temporary file, removed when dropped unless it was put in place.
#[derive(Debug)]
pub struct TempFile {
    /// Where it is.
    pub path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// Renames it to `target`, in the same directory, then fsyncs that
    /// directory so that the rename survives a crash; from then on it is kept.
    pub fn place(&mut self, target: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, target)?;
        self.keep = true;
        if let Ok(d) = std::fs::File::open(dir_of(target)) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The directory `path` is in (`.` for a bare name).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Prefix of the temporary files `get` writes (and a sync daemon ignores).
pub const TEMP_PREFIX: &str = ".coffer-tmp-";

fn integrity(message: String) -> ClientError {
    ClientError::Integrity(message)
}

/// Downloads and verifies a file to `dest` (a file path, or an existing
/// directory to put it in under its own name).
/// With `hash_chunks`, each plaintext chunk's SHA-256 is reported too
/// (computed where the chunk is decrypted, so the file is not read again).
pub async fn get<N: Net>(
    s: &Session<N>,
    source: Source<'_>,
    dest: &Path,
    progress: &dyn Progress,
    hash_chunks: bool,
) -> Result<GetReport, ClientError> {
    download(s, source, None, Place::Dest(dest), progress, hash_chunks)
        .await
        .map(|(report, _)| report)
}

/// A file's manifest — its entry and chunk addresses, and for a small file
/// its chunk — as the server answered `download`; what [`fetch`] would ask
/// for first.
#[derive(Debug)]
pub struct Manifest {
    answer: coffer_proto::response::Manifest,
    body: Bytes,
}

impl Manifest {
    /// The entry it describes.
    pub fn entry(&self) -> &FileEntry {
        &self.answer.entry
    }
}

/// The request that asks for `source`'s manifest (a small file's chunk inline).
fn manifest_request(source: Source<'_>) -> Request {
    match source {
        Source::Folder {
            folder_id,
            path,
            version,
        } => Request::Download(Stat {
            folder_id: folder_id.to_owned(),
            path: path.to_owned(),
            version,
            inline: true,
        }),
        Source::Share(share_id) => Request::SharedDownload(ShareRef {
            share_id: share_id.to_owned(),
        }),
    }
}

async fn ask_manifest<N: Net>(s: &Session<N>, source: Source<'_>) -> Result<Manifest, ClientError> {
    let frame = s
        .call_with_body(manifest_request(source), Bytes::new())
        .await?;
    match frame.msg {
        Response::Manifest(answer) => Ok(Manifest {
            answer,
            body: frame.body,
        }),
        other => Err(unexpected("download", &other)),
    }
}

/// Asks for the latest manifest of a file in a folder. A path that is a
/// directory, deleted or unknown is the server's error.
pub async fn manifest<N: Net>(
    s: &Session<N>,
    folder_id: &str,
    path: &str,
) -> Result<Manifest, ClientError> {
    paths::validate(path).map_err(|e| ClientError::Usage(format!("{path:?}: {e}")))?;
    let source = Source::Folder {
        folder_id,
        path,
        version: None,
    };
    ask_manifest(s, source).await
}

/// Like [`get`], but leaves the file, checked and fsynced, in a temporary
/// file in `dir` (removed when dropped unless kept), for a caller that
/// decides itself whether and where to put it. With `manifest`, already
/// asked for, the file it describes is fetched (`source` then only names it).
pub async fn fetch<N: Net>(
    s: &Session<N>,
    source: Source<'_>,
    manifest: Option<Manifest>,
    dir: &Path,
    progress: &dyn Progress,
    hash_chunks: bool,
) -> Result<(GetReport, TempFile), ClientError> {
    download(
        s,
        source,
        manifest,
        Place::TempIn(dir),
        progress,
        hash_chunks,
    )
    .await
}

/// Where [`download`] leaves what it fetched.
#[derive(Clone, Copy)]
enum Place<'a> {
    /// Renamed into place, as [`get`] does.
    Dest(&'a Path),
    /// In a temporary file in this directory.
    TempIn(&'a Path),
}

async fn download<N: Net>(
    s: &Session<N>,
    source: Source<'_>,
    manifest: Option<Manifest>,
    place: Place<'_>,
    progress: &dyn Progress,
    hash_chunks: bool,
) -> Result<(GetReport, TempFile), ClientError> {
    let (scope, name) = match source {
        Source::Folder {
            folder_id, path, ..
        } => {
            paths::validate(path).map_err(|e| ClientError::Usage(format!("{path:?}: {e}")))?;
            (
                Scope::Folder(folder_id.to_owned()),
                Some(paths::file_name(path).to_owned()),
            )
        }
        Source::Share(share_id) => (Scope::Share(share_id.to_owned()), None),
    };
    let Manifest {
        answer: manifest,
        body,
    } = match manifest {
        Some(m) => m,
        None => ask_manifest(s, source).await?,
    };
    let entry = manifest.entry;
    // Nothing the server says is trusted further than it can be checked.
    if entry.kind != EntryKind::File || entry.deleted {
        return Err(ClientError::Protocol(
            "the manifest is not of a file".into(),
        ));
    }
    // The addresses, then — for a small file asked for inline — its one chunk.
    let list_len = entry.chunk_count as usize * 32;
    let inline_len = if sends_inline(entry.chunk_count, entry.size) {
        entry.size as usize + CHUNK_OVERHEAD as usize
    } else {
        0
    };
    let body_fits =
        body.len() == list_len || (inline_len > 0 && body.len() == list_len + inline_len);
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&entry.chunk_size)
        || u64::from(entry.chunk_count) != entry.size.div_ceil(u64::from(entry.chunk_size))
        || !body_fits
    {
        return Err(ClientError::Protocol(
            "the manifest's sizes do not add up".into(),
        ));
    }
    let file_key = match (&manifest.share_key, source) {
        (Some(key), Source::Share(_)) => s.keys().unwrap_file_key(&mut *s.rng(), key.as_bytes())?,
        (_, Source::Folder { folder_id, .. }) => {
            let folder_key = s.folder_key(folder_id, entry.epoch).await?;
            let ctx = FileKeyContext {
                folder_id,
                epoch: entry.epoch,
                file_id: entry.file_id.0,
            };
            coffer_crypto::unwrap_file_key(&folder_key, ctx, entry.wrapped_file_key.as_bytes())
                .map_err(|e| {
                    integrity(format!(
                        "the file key of {} does not unwrap: {e}",
                        entry.path
                    ))
                })?
        }
        (None, Source::Share(_)) => {
            return Err(ClientError::Protocol(
                "a shared file without its key".into(),
            ));
        }
    };
    let meta = FileMeta::open(&file_key, entry.file_id.0, entry.meta.as_bytes()).map_err(|e| {
        integrity(format!(
            "the metadata of {} fails its check: {e}",
            entry.path
        ))
    })?;
    if meta.size != entry.size {
        return Err(integrity(format!(
            "the metadata of {} does not match its size",
            entry.path
        )));
    }

    let (target, dir) = match place {
        Place::Dest(dest) => {
            let target = destination(dest, name.as_deref().unwrap_or(&entry.path))?;
            let dir = dir_of(&target).to_owned();
            (Some(target), dir)
        }
        Place::TempIn(dir) => (None, dir.to_owned()),
    };
    let mut suffix = [0u8; 8];
    s.rng().fill_bytes(&mut suffix);
    let temp = TempFile {
        path: dir.join(format!("{TEMP_PREFIX}{}.part", hex::encode(suffix))),
        keep: false,
    };
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.path)
        .map_err(local(&temp.path))?;

    progress.start(entry.size);
    s.pool().links(CONNECTIONS).await?;
    let cipher = Arc::new(ChunkCipher::new(&file_key, entry.file_id.0));
    let hashes: Vec<Sha256> = body[..list_len]
        .chunks_exact(32)
        .map(|h| Sha256(h.try_into().expect("32 bytes")))
        .collect();
    let mut inline = (body.len() > list_len).then(|| body.slice(list_len..));
    let mut fetching = FuturesOrdered::new();
    let mut next = 0usize;
    let mut writer = Some((out, sha2::Sha256::new()));
    let mut written = 0u64;
    let mut plain_chunks = Vec::new();
    while next < hashes.len() || !fetching.is_empty() {
        while next < hashes.len() && fetching.len() < in_flight(GET_IN_FLIGHT, entry.chunk_size) {
            let index = next as u32;
            let expected_len = (entry.size - u64::from(index) * u64::from(entry.chunk_size))
                .min(u64::from(entry.chunk_size));
            let request = Request::ChunkGet(ChunkGet {
                scope: scope.clone(),
                hash: hashes[next],
            });
            let cipher = cipher.clone();
            let path = entry.path.clone();
            let given = if index == 0 { inline.take() } else { None };
            fetching.push_back(async move {
                let body = match given {
                    Some(body) => body,
                    None => {
                        s.call_with_body(request, Bytes::new())
                            .await
                            .map_err(|e| match e {
                                ClientError::Server(body)
                                    if body.code == ErrorCode::ChecksumMismatch =>
                                {
                                    integrity(format!("chunk {index} of {path}: {}", body.message))
                                }
                                other => other,
                            })?
                            .body
                    }
                };
                if body.len() as u64 != expected_len + u64::from(CHUNK_OVERHEAD) {
                    return Err(integrity(format!(
                        "chunk {index} of {path} has the wrong size"
                    )));
                }
                // Decrypted where it lies (copied first only if the buffer is shared).
                let mut sealed = body
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                blocking(move || {
                    cipher.open_in_place(index, &mut sealed)?;
                    sealed.truncate(sealed.len() - TAG_LEN);
                    let plain = sealed.split_off(HEADER_LEN);
                    let digest: Option<[u8; 32]> =
                        hash_chunks.then(|| sha2::Sha256::digest(&plain).into());
                    Ok((plain, digest))
                })
                .await
                .map_err(|e: coffer_crypto::OpenError| {
                    integrity(format!("chunk {index} of {path}: {e}"))
                })
            });
            next += 1;
        }
        let (plain, digest) = fetching.next().await.expect("not empty")?;
        plain_chunks.extend(digest);
        let (mut out, mut hasher) = writer
            .take()
            .expect("the writer is returned after each chunk");
        let len = plain.len() as u64;
        let before = written;
        let (out, hasher) = blocking(move || {
            hasher.update(&plain);
            out.write_all(&plain)?;
            // Every few MiB: start writing back what was written, and drop
            // what has been written back.
            if before / UNCACHE_EVERY != (before + len) / UNCACHE_EVERY {
                uncache(&out, 0, before + len);
            }
            Ok((out, hasher))
        })
        .await
        .map_err(local(&temp.path))?;
        writer = Some((out, hasher));
        written += len;
        progress.advance(len);
    }
    let (out, hasher) = writer
        .take()
        .expect("the writer is returned after each chunk");
    let sha256: [u8; 32] = hasher.finalize().into();
    if sha256 != meta.sha256 || written != meta.size {
        return Err(integrity(format!(
            "{} does not match its checksum; nothing was written",
            entry.path
        )));
    }
    // Made durable (and put in place) off the async threads: a daemon
    // fetching many small files at once waits on these fsyncs side by side.
    let mode = meta.mode;
    let mtime =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(meta.mtime_ms.max(0) as u64);
    let (temp, written_to) = blocking(move || {
        let mut temp = temp;
        out.sync_all().map_err(local(&temp.path))?;
        uncache(&out, 0, written);
        #[cfg(unix)]
        if mode != 0 {
            use std::os::unix::fs::PermissionsExt;
            let _ =
                std::fs::set_permissions(&temp.path, std::fs::Permissions::from_mode(mode & 0o777));
        }
        let _ = out.set_modified(mtime);
        drop(out);
        let Some(target) = target else {
            let at = temp.path.clone();
            return Ok((temp, at));
        };
        temp.place(&target).map_err(local(&target))?;
        Ok::<_, ClientError>((temp, target))
    })
    .await?;
    let report = GetReport {
        written: written_to,
        size: written,
        sha256,
        entry,
        chunks: hashes.into_iter().map(|h| h.0).collect(),
        plain_chunks,
    };
    Ok((report, temp))
}

/// Where `get` writes a file the server calls `server_path`: `dest` itself,
/// or, when `dest` is a directory, the last component of `server_path` in it
/// — refused unless it is a plain name, so nothing the server says can put the
/// file anywhere else.
fn destination(dest: &Path, server_path: &str) -> Result<PathBuf, ClientError> {
    if !dest.is_dir() {
        return Ok(dest.to_owned());
    }
    let name = paths::file_name(server_path);
    if paths::validate(name).is_err() {
        return Err(ClientError::Protocol(format!(
            "the server named the file {server_path:?}, which is not a valid name"
        )));
    }
    Ok(dest.join(name))
}

/// Abandons an upload in progress (best effort) and forgets it.
pub async fn abandon<N: Net>(
    s: &Session<N>,
    journal: &dyn Journal,
    folder_id: &str,
    path: &str,
) -> Result<(), ClientError> {
    if let Some(p) = journal.pending(folder_id, path)? {
        let _ = s
            .call(Request::UploadAbort(UploadRef {
                upload_id: p.upload_id,
            }))
            .await;
        journal.forget(folder_id, path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_grow_with_large_files_only() {
        const MIB: u64 = 1 << 20;
        for (size, chunk) in [
            (0, MIB),
            (1, MIB),
            (256 * MIB, MIB),
            (256 * MIB + 1, 2 * MIB),
            (512 * MIB, 2 * MIB),
            (512 * MIB + 1, 4 * MIB),
            (1 << 38, 4 * MIB),
        ] {
            assert_eq!(u64::from(chunk_size_for(size).unwrap()), chunk, "{size}");
        }
        let largest = u64::from(MAX_CHUNK_SIZE) * u64::from(MAX_CHUNKS_PER_FILE);
        assert!(chunk_size_for(largest).is_ok());
        assert!(matches!(
            chunk_size_for(largest + 1),
            Err(ClientError::Usage(_))
        ));
        // What is in flight stays near its budget whatever the chunk size.
        assert_eq!(in_flight(16 << 20, MIB as u32), 16);
        assert_eq!(in_flight(16 << 20, 4 * MIB as u32), 4);
        assert_eq!(in_flight(1 << 20, 4 * MIB as u32), 2);
    }

    #[test]
    fn a_file_lands_only_where_it_was_asked_to() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path();
        // A directory: the server's last component, if it is a plain name.
        assert_eq!(
            destination(dest, "a/b/report.pdf").unwrap(),
            dest.join("report.pdf")
        );
        assert_eq!(
            destination(dest, "/etc/passwd").unwrap(),
            dest.join("passwd")
        );
        for hostile in [
            "..",
            "a/..",
            "",
            "a/",
            ".",
            "x/.",
            "con",
            "a\\..\\..\\b",
            "a\u{0}b",
        ] {
            let err = destination(dest, hostile).unwrap_err();
            assert!(
                matches!(err, ClientError::Protocol(_)),
                "{hostile:?}: {err}"
            );
        }
        // A file name: exactly that, whatever the server calls it.
        let file = dest.join("mine.txt");
        assert_eq!(destination(&file, "../../../etc/passwd").unwrap(), file);
    }
}
