//! Files and directories: listing, history, chunked uploads and downloads,
//! deletes, moves.

use std::sync::Arc;

use bytes::Bytes;
use coffer_proto::limits::{
    CHUNK_OVERHEAD, MAX_CHUNK_SIZE, MAX_CHUNKS_PER_FILE, MIN_CHUNK_SIZE, sends_inline,
};
use coffer_proto::request::{
    ChunkGet, Delete, List, Move, PathRef, Restore, Stat, UploadBegin, UploadChunk, UploadCommit,
    UploadRef,
};
use coffer_proto::response::{
    ChunkAck, ChunkInfo, History, Listing, Manifest, Upload, VersionInfo,
};
use coffer_proto::types::{EntryKind, FileEntry, Scope, Sha256};
use coffer_proto::{ErrorCode, Response, path as paths};
use md5::Md5;
use rusqlite::{OptionalExtension, params};
use sha2::Digest;

use super::{Answer, answer, unexpected, write_id};
use crate::Server;
use crate::chunks::ReadError;
use crate::dispatch::{Session, UploadInUse};
use crate::error::{Error, Result, bad_request, not_found};
use crate::store::change::{UploadRecord, UploadState, missing_chunks};
use crate::store::one;
use crate::store::{Applied, Change, query};
use coffer_net::blocking;

/// Entries per listing page unless the client asks for fewer.
const DEFAULT_PAGE: u32 = 1000;
/// Most entries per listing page.
const MAX_PAGE: u32 = 10_000;
/// Bytes of entries one listing page carries at most: the header limit less
/// room for the envelope and the cursor (a path).
const LISTING_BUDGET: usize =
    coffer_proto::limits::MAX_HEADER as usize - coffer_proto::limits::MAX_PATH_LEN - 4096;
/// Most bytes an `EntrySummary` takes besides its path, in JSON: its keys,
/// the kind, three 20-digit numbers, a boolean and punctuation (about 140,
/// with room to spare). A valid path needs no JSON escapes (no control
/// characters, quotes or backslashes), so `path.len() + SUMMARY_FIELDS`
/// bounds an entry without encoding it twice.
const SUMMARY_FIELDS: usize = 192;
/// Largest wrapped file key accepted.
const MAX_WRAPPED_FILE_KEY: usize = 1024;
/// Largest encrypted metadata accepted.
const MAX_META: usize = 8192;

fn path(raw: &str) -> Result<String> {
    paths::validate(raw).map_err(|e| bad_request(format!("{raw:?}: {e}")))?;
    Ok(raw.to_owned())
}

fn device(session: &Session) -> Option<String> {
    session.signed_in.as_ref().and_then(|s| s.device_id.clone())
}

pub(super) async fn list(server: &Server, r: List) -> Answer {
    let dir = r.dir.unwrap_or_default();
    paths::validate_dir(&dir).map_err(|e| bad_request(format!("{dir:?}: {e}")))?;
    let limit = r.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let after = r.cursor.unwrap_or_default();
    let (folder_id, recursive, deleted) = (r.folder_id, r.recursive, r.deleted);
    let (entries, more) = server
        .store
        .read(move |conn| {
            if !dir.is_empty() {
                match query::entry(conn, &folder_id, &dir)? {
                    Some(e) if !e.deleted && e.kind == EntryKind::Dir => {}
                    _ => return Err(not_found(format!("no directory {dir} in this folder"))),
                }
            }
            let scope = if recursive {
                "(?2 = '' OR (path > ?2 || '/' AND path < ?2 || '0'))"
            } else {
                "parent = ?2"
            };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {} FROM entries WHERE folder_id = ?1 AND {scope} AND path > ?3 \
                 AND (deleted = 0 OR ?4) ORDER BY path LIMIT ?5",
                query::ENTRY_COLUMNS
            ))?;
            let mut entries: Vec<FileEntry> = stmt
                .query_map(
                    params![folder_id, dir, after, deleted, limit as i64 + 1],
                    query::entry_from_row,
                )?
                .collect::<rusqlite::Result<_>>()?;
            let more = entries.len() > limit as usize;
            entries.truncate(limit as usize);
            Ok((entries, more))
        })
        .await?;
    // A page is also cut where its header would outgrow the frame limit
    // (long paths): the client follows the cursor for the rest.
    let mut summaries = Vec::with_capacity(entries.len());
    let mut bytes = 0usize;
    let mut cut = false;
    for e in &entries {
        let summary = query::summary(e);
        let len = summary.path.len() + SUMMARY_FIELDS;
        if !summaries.is_empty() && bytes + len > LISTING_BUDGET {
            cut = true;
            break;
        }
        bytes += len;
        summaries.push(summary);
    }
    let cursor = (more || cut)
        .then(|| summaries.last().map(|e| e.path.clone()))
        .flatten();
    answer(Response::Listing(Listing {
        entries: summaries,
        cursor,
    }))
}

/// The entry a `stat` or `download` names: a given version, or the live latest.
async fn find(server: &Server, r: Stat) -> Result<(FileEntry, Vec<u8>)> {
    let path = path(&r.path)?;
    server
        .store
        .read(move |conn| {
            let Some(version) = r.version else {
                return match query::entry(conn, &r.folder_id, &path)? {
                    Some(e) if !e.deleted => query::stored(conn, &r.folder_id, &path, &e.vv)?
                        .ok_or_else(|| not_found(format!("no {path} in this folder"))),
                    _ => Err(not_found(format!("no {path} in this folder"))),
                };
            };
            query::version(conn, &r.folder_id, &path, version)?
                .ok_or_else(|| not_found(format!("no version {version} of {path}")))
        })
        .await
}

pub(super) async fn stat(server: &Server, r: Stat) -> Answer {
    let (entry, _) = find(server, r).await?;
    answer(Response::Entry(entry))
}

pub(super) async fn download(server: &Server, r: Stat) -> Answer {
    let inline = r.inline;
    let (entry, mut chunks) = find(server, r).await?;
    if entry.deleted {
        return Err(not_found(format!(
            "version {} of {} is a deletion",
            entry.version, entry.path
        )));
    }
    if entry.kind != EntryKind::File {
        return Err(bad_request(format!("{} is a directory", entry.path)));
    }
    if inline && sends_inline(entry.chunk_count, entry.size) {
        // The chunk follows its address: a small file in one round trip.
        let address: [u8; 32] = chunks[..]
            .try_into()
            .map_err(|_| Error::Io(std::io::Error::other("a one-chunk file lists one address")))?;
        let (_, sealed) = read_chunk(server, Sha256(address)).await?;
        chunks.extend_from_slice(&sealed);
    }
    Ok((
        Response::Manifest(Manifest {
            entry,
            share_key: None,
        }),
        Bytes::from(chunks),
    ))
}

pub(super) async fn history(server: &Server, r: PathRef) -> Answer {
    let path = path(&r.path)?;
    let folder_id = r.folder_id;
    let versions = server
        .store
        .read(move |conn| {
            let versions = query::history(conn, &folder_id, &path)?;
            if versions.is_empty() {
                return Err(not_found(format!("no {path} in this folder")));
            }
            Ok(versions)
        })
        .await?;
    answer(Response::History(History {
        path: r.path,
        versions: versions
            .into_iter()
            .map(|e| VersionInfo {
                version: e.version,
                kind: e.kind,
                size: e.size,
                modified_ms: e.modified_ms,
                device_id: e.device_id,
                deleted: e.deleted,
            })
            .collect(),
    }))
}

async fn entry_answer(server: &Server, change: Change) -> Answer {
    match server.store.write(change).await? {
        Applied::Entry(entry) => answer(Response::Entry(entry)),
        other => Err(unexpected(other)),
    }
}

pub(super) async fn restore(server: &Server, session: &Session, r: Restore) -> Answer {
    let change = Change::Restore {
        username: session.user()?.username.clone(),
        device_id: device(session),
        folder_id: r.folder_id,
        path: path(&r.path)?,
        version: r.version,
        write_id: write_id(r.write_id)?,
    };
    entry_answer(server, change).await
}

pub(super) async fn delete(server: &Server, session: &Session, r: Delete) -> Answer {
    let change = Change::Delete {
        username: session.user()?.username.clone(),
        device_id: device(session),
        folder_id: r.folder_id,
        path: path(&r.path)?,
        base: r.base,
        write_id: write_id(r.write_id)?,
    };
    entry_answer(server, change).await
}

pub(super) async fn move_path(server: &Server, session: &Session, r: Move) -> Answer {
    let change = Change::Move {
        username: session.user()?.username.clone(),
        device_id: device(session),
        folder_id: r.folder_id,
        from: path(&r.from)?,
        to: path(&r.to)?,
        base: r.base,
        write_id: write_id(r.write_id)?,
    };
    entry_answer(server, change).await
}

pub(super) async fn mkdir(server: &Server, session: &Session, r: PathRef) -> Answer {
    let change = Change::Mkdir {
        username: session.user()?.username.clone(),
        device_id: device(session),
        folder_id: r.folder_id,
        path: path(&r.path)?,
    };
    entry_answer(server, change).await
}

/// The sealed size of each chunk of a file: its plaintext share plus the envelope.
fn sealed_sizes(size: u64, chunk_size: u32, chunk_count: u32) -> Vec<u64> {
    (0..u64::from(chunk_count))
        .map(|i| {
            (size - i * u64::from(chunk_size)).min(u64::from(chunk_size))
                + u64::from(CHUNK_OVERHEAD)
        })
        .collect()
}

/// The bitmap of missing chunks an `upload` answer carries.
fn missing_bitmap(chunk_count: u32, missing: &[u32]) -> Bytes {
    let mut bits = vec![0u8; (chunk_count as usize).div_ceil(8)];
    for &i in missing {
        bits[i as usize / 8] |= 1 << (i % 8);
    }
    Bytes::from(bits)
}

fn upload_answer(state: UploadState) -> Answer {
    Ok((
        Response::Upload(Upload {
            upload_id: state.upload_id,
            chunk_count: state.chunk_count,
            missing: state.missing.len() as u32,
            expires_ms: state.expires_ms,
        }),
        missing_bitmap(state.chunk_count, &state.missing),
    ))
}

pub(super) async fn upload_begin(
    server: &Server,
    session: &mut Session,
    r: UploadBegin,
    body: Bytes,
) -> Answer {
    let me = session.user()?.clone();
    let path = path(&r.path)?;
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&r.chunk_size) {
        return Err(bad_request(format!(
            "chunk size {} is outside {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}",
            r.chunk_size
        )));
    }
    let expected = r.size.div_ceil(u64::from(r.chunk_size));
    if u64::from(r.chunk_count) != expected {
        return Err(bad_request(format!(
            "{} bytes in chunks of {} make {expected} chunks, not {}",
            r.size, r.chunk_size, r.chunk_count
        )));
    }
    if r.chunk_count > MAX_CHUNKS_PER_FILE {
        return Err(Error::refused(
            ErrorCode::TooLarge,
            format!("a file has at most {MAX_CHUNKS_PER_FILE} chunks"),
        ));
    }
    let list_len = r.chunk_count as usize * 32;
    let sizes = sealed_sizes(r.size, r.chunk_size, r.chunk_count);
    let expected_body = if r.commit {
        list_len + sizes.iter().sum::<u64>() as usize
    } else {
        list_len
    };
    // An empty body begins a streamed upload: hashes come with the chunks.
    let streamed = body.is_empty() && !r.commit && r.chunk_count > 0;
    if body.len() != expected_body && !streamed {
        return Err(bad_request(format!(
            "the body has {} bytes; {} chunks need {expected_body}{}",
            body.len(),
            r.chunk_count,
            if r.commit {
                " (list and sealed chunks)"
            } else {
                ""
            }
        )));
    }
    if r.wrapped_file_key.0.is_empty() || r.wrapped_file_key.0.len() > MAX_WRAPPED_FILE_KEY {
        return Err(bad_request(format!(
            "a wrapped file key has 1 to {MAX_WRAPPED_FILE_KEY} bytes"
        )));
    }
    if r.meta.0.len() > MAX_META {
        return Err(bad_request(format!(
            "encrypted metadata has at most {MAX_META} bytes"
        )));
    }
    if let Some(id) = &r.upload_id
        && !coffer_proto::request::is_upload_id(id)
    {
        return Err(bad_request(
            "an upload id is `u` and 32 lowercase hex digits",
        ));
    }
    // The same file, path, content and base begun again is the same upload;
    // with the client's id, the same write.
    let mut key = sha2::Sha256::new();
    for part in [
        me.username.as_bytes(),
        r.folder_id.as_bytes(),
        path.as_bytes(),
        &r.file_id.0,
    ] {
        key.update((part.len() as u32).to_be_bytes());
        key.update(part);
    }
    key.update(r.size.to_be_bytes());
    key.update(r.chunk_size.to_be_bytes());
    key.update(&body);
    key.update(serde_json::to_vec(&r.base).expect("a version vector serializes"));
    key.update(r.upload_id.as_deref().unwrap_or_default());
    let record = UploadRecord {
        upload_id: r.upload_id.unwrap_or_else(|| server.new_id("u")),
        upload_key: Sha256(key.finalize().into()),
        username: me.username,
        device_id: me.device_id,
        folder_id: r.folder_id,
        path,
        file_id: r.file_id,
        size: r.size,
        chunk_size: r.chunk_size,
        chunk_count: r.chunk_count,
        epoch: r.epoch,
        wrapped_file_key: r.wrapped_file_key,
        meta: r.meta,
        base: r.base,
        chunks: body[..if streamed { 0 } else { list_len }].to_vec().into(),
        expires_ms: server.clock.now_ms() + server.config.upload_ttl.as_millis() as u64,
    };
    if r.commit {
        // Every chunk is checked and stored before the change that commits them.
        let (list, chunks) = (body.slice(..list_len), body.slice(list_len..));
        let store = server.chunks.clone();
        let sizes_for_check = sizes.clone();
        blocking(move || {
            let mut at = 0;
            for (i, (hash, size)) in list.chunks_exact(32).zip(&sizes_for_check).enumerate() {
                let chunk = &chunks[at..at + *size as usize];
                at += *size as usize;
                if sha2::Sha256::digest(chunk)[..] != *hash {
                    return Err(checksum(format!(
                        "chunk {i}: the bytes do not match their SHA-256"
                    )));
                }
                store.put(hash.try_into().expect("32 bytes"), chunk)?;
            }
            Ok(())
        })
        .await?;
        return entry_answer(
            server,
            Change::UploadInline {
                upload: record,
                sizes,
            },
        )
        .await;
    }
    match server.store.write(Change::UploadBegin(record)).await? {
        Applied::Upload(state) => {
            session.uploads.insert(
                state.upload_id.clone(),
                Arc::new(UploadInUse {
                    chunk_count: r.chunk_count,
                    chunk_size: r.chunk_size,
                    announced: (!streamed).then(|| body.slice(..list_len)),
                }),
            );
            upload_answer(state)
        }
        // This write was committed already, here or on another node.
        Applied::Entry(entry) => answer(Response::Entry(entry)),
        other => Err(unexpected(other)),
    }
}

/// An upload of the caller's in progress, from the connection's cache or the
/// database.
async fn upload_in_use(
    server: &Server,
    session: &mut Session,
    upload_id: &str,
) -> Result<Arc<UploadInUse>> {
    if let Some(known) = session.uploads.get(upload_id) {
        return Ok(known.clone());
    }
    let me = session.user()?.username.clone();
    let id = upload_id.to_owned();
    let (chunk_count, chunk_size) = server
        .store
        .read(move |conn| {
            Ok(one(
                conn,
                "SELECT chunk_count, chunk_size FROM uploads WHERE upload_id = ?1 AND username = ?2 \
                 AND committed_version IS NULL",
                params![id, me],
                |r| Ok((r.get::<_, i64>(0)? as u32, r.get::<_, i64>(1)? as u32)),
            )
            .optional()?)
        })
        .await?
        .ok_or_else(|| not_found(format!("no upload {upload_id} in progress")))?;
    let upload = Arc::new(UploadInUse {
        chunk_count,
        chunk_size,
        announced: None,
    });
    session.uploads.insert(upload_id.to_owned(), upload.clone());
    Ok(upload)
}

pub(super) async fn upload_resume(server: &Server, session: &mut Session, r: UploadRef) -> Answer {
    let me = session.user()?.username.clone();
    let now = server.clock.now_ms();
    let state = server
        .store
        .read(move |conn| {
            let row: Option<(i64, i64)> = one(
                conn,
                "SELECT chunk_count, expires_ms FROM uploads \
                 WHERE upload_id = ?1 AND username = ?2 AND committed_version IS NULL AND expires_ms > ?3",
                params![r.upload_id, me, now as i64],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
            let (chunk_count, expires_ms) =
                row.ok_or_else(|| not_found(format!("no upload {} in progress", r.upload_id)))?;
            Ok(UploadState {
                missing: missing_chunks(conn, &r.upload_id, chunk_count as u32)?,
                upload_id: r.upload_id,
                chunk_count: chunk_count as u32,
                expires_ms: expires_ms as u64,
            })
        })
        .await?;
    upload_answer(state)
}

fn checksum(message: String) -> Error {
    Error::refused(ErrorCode::ChecksumMismatch, message)
}

/// A checked chunk, ready to be hashed and stored — by any task: chunks of
/// one connection are stored concurrently.
#[derive(Debug)]
pub(crate) struct ChunkJob {
    username: String,
    upload_id: String,
    index: u32,
    hash: Sha256,
    md5: Option<String>,
    body: Bytes,
}

/// The checks a chunk passes before its bytes are touched: the upload is the
/// caller's, the index is in range, the size fits, and the announced hash is
/// the one the upload's chunk list holds at that index.
pub(crate) async fn prepare_chunk(
    server: &Server,
    session: &mut Session,
    r: UploadChunk,
    body: Bytes,
) -> Result<ChunkJob> {
    let username = session.user()?.username.clone();
    let upload = upload_in_use(server, session, &r.upload_id).await?;
    let index = r.index;
    if index >= upload.chunk_count {
        return Err(bad_request(format!(
            "chunk index {index} is past the upload's {} chunks",
            upload.chunk_count
        )));
    }
    if body.len() > (upload.chunk_size + CHUNK_OVERHEAD) as usize {
        return Err(Error::refused(
            ErrorCode::TooLarge,
            format!(
                "chunk {index} has {} bytes; this upload's chunks have at most {}",
                body.len(),
                upload.chunk_size + CHUNK_OVERHEAD
            ),
        ));
    }
    // Refuse a chunk that is not the announced one before storing its bytes.
    // (The store checks again when recording the receipt, for uploads this
    // connection did not begin.)
    if let Some(list) = &upload.announced
        && list[index as usize * 32..index as usize * 32 + 32] != r.sha256.0
    {
        return Err(checksum(format!(
            "chunk {index} is not the chunk the upload announced"
        )));
    }
    Ok(ChunkJob {
        username,
        upload_id: r.upload_id,
        index,
        hash: r.sha256,
        md5: r.md5,
        body,
    })
}

/// Verifies a chunk's bytes, stores them durably and records their receipt.
pub(crate) async fn store_chunk(server: &Server, job: ChunkJob) -> Answer {
    let ChunkJob {
        username,
        upload_id,
        index,
        hash,
        md5,
        body,
    } = job;
    // An empty body names a chunk the folder already holds: nothing to store.
    let size = (!body.is_empty()).then_some(body.len() as u64);
    // New bytes, in a cluster: offered to the followers once stored here.
    let pushed = (size.is_some() && server.membership.len() > 1).then(|| body.clone());
    if size.is_some() {
        let chunks = server.chunks.clone();
        // Hash the bytes, then store them durably: both off the async threads.
        blocking(move || {
            if sha2::Sha256::digest(&body)[..] != hash.0[..] {
                return Err(checksum(format!(
                    "chunk {index}: the bytes do not match their SHA-256"
                )));
            }
            if let Some(md5) = md5
                && !hex::encode(Md5::digest(&body)).eq_ignore_ascii_case(&md5)
            {
                return Err(checksum(format!(
                    "chunk {index}: the bytes do not match their MD5"
                )));
            }
            chunks.put(&hash.0, &body)?;
            Ok(())
        })
        .await?;
    }
    server
        .store
        .write(Change::ChunkReceived {
            username,
            upload_id: upload_id.clone(),
            index,
            hash,
            size,
        })
        .await?;
    if let Some(bytes) = pushed {
        server.outbox.push_chunk(hash, bytes);
    }
    answer(Response::ChunkAck(ChunkAck { upload_id, index }))
}

pub(super) async fn upload_commit(
    server: &Server,
    session: &mut Session,
    r: UploadCommit,
) -> Answer {
    if let Some(meta) = &r.meta
        && (meta.0.is_empty() || meta.0.len() > MAX_META)
    {
        return Err(bad_request(format!(
            "encrypted metadata has 1 to {MAX_META} bytes"
        )));
    }
    let change = Change::UploadCommit {
        username: session.user()?.username.clone(),
        upload_id: r.upload_id.clone(),
        meta: r.meta,
    };
    let answer = entry_answer(server, change).await;
    if answer.is_ok() {
        session.uploads.remove(&r.upload_id);
    }
    answer
}

pub(super) async fn upload_abort(server: &Server, session: &mut Session, r: UploadRef) -> Answer {
    let change = Change::UploadAbort {
        username: session.user()?.username.clone(),
        upload_id: r.upload_id.clone(),
    };
    server.store.write(change).await?;
    session.uploads.remove(&r.upload_id);
    answer(Response::Ok)
}

/// Reads a stored chunk, reporting rot as `checksum_mismatch`.
pub(super) async fn read_chunk(server: &Server, hash: Sha256) -> Answer {
    let chunks = server.chunks.clone();
    match blocking(move || chunks.get(&hash.0)).await {
        Ok(bytes) => Ok((Response::Chunk(ChunkInfo { hash }), Bytes::from(bytes))),
        Err(ReadError::Corrupt) => Err(checksum(format!("stored chunk {hash} is corrupt"))),
        // Written through a peer, which has it: fetched on first read.
        Err(ReadError::Missing) => match crate::cluster::link::fetch_chunk(server, hash).await {
            Some(bytes) => Ok((Response::Chunk(ChunkInfo { hash }), Bytes::from(bytes))),
            None => Err(Error::refused(
                ErrorCode::Unavailable,
                format!("chunk {hash} is not here yet and no peer could send it"),
            )),
        },
        Err(ReadError::Io(e)) => Err(Error::Io(e)),
    }
}

pub(super) async fn chunk_get(server: &Server, session: &Session, r: ChunkGet) -> Answer {
    let hash = r.hash;
    match r.scope {
        Scope::Folder(folder_id) => {
            // Only chunks of this folder's kept versions: membership of one
            // folder never reads another's chunks.
            let held = server
                .store
                .read(move |conn| {
                    Ok(one(conn,
                        "SELECT EXISTS (SELECT 1 FROM chunk_refs WHERE hash = ?1 AND folder_id = ?2)",
                        params![&hash.0[..], folder_id],
                        |r| r.get::<_, bool>(0),
                    )?)
                })
                .await?;
            if !held {
                return Err(not_found(format!("no chunk {hash} in this folder")));
            }
            read_chunk(server, hash).await
        }
        Scope::Share(share_id) => {
            let me = session.user()?.username.clone();
            let chunks = super::share::shared_chunks(server, &me, &share_id).await?;
            if !chunks.chunks_exact(32).any(|c| c == hash.0) {
                return Err(not_found(format!("no chunk {hash} in this shared file")));
            }
            read_chunk(server, hash).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_proto::types::EntrySummary;

    #[test]
    fn a_summary_fits_its_path_and_the_field_allowance() {
        let summary = EntrySummary {
            path: "ü/日本/a b.txt".into(),
            kind: EntryKind::File,
            size: u64::MAX,
            version: u64::MAX,
            modified_ms: u64::MAX,
            deleted: false,
        };
        let encoded = serde_json::to_vec(&summary).unwrap();
        // Strictly less: the comma between entries counts too.
        assert!(
            encoded.len() < summary.path.len() + SUMMARY_FIELDS,
            "{} bytes",
            encoded.len()
        );
    }
}
