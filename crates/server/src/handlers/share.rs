//! Single-file, read-only shares: the file key wrapped for one recipient.

use bytes::Bytes;
use coffer_proto::request::{FileShare, ShareRef};
use coffer_proto::response::{FileShared, Manifest, Shared, SharedFile};
use coffer_proto::types::{Blob, FileEntry};
use coffer_proto::{Response, name};
use rusqlite::{OptionalExtension, params};

use super::{Answer, answer, unexpected};
use crate::Server;
use crate::dispatch::Session;
use crate::error::{Result, bad_request, not_found};
use crate::store::one;
use crate::store::{Applied, Change, query};

pub(super) async fn create(server: &Server, session: &Session, r: FileShare) -> Answer {
    let me = session.user()?.username.clone();
    coffer_proto::path::validate(&r.path).map_err(|e| bad_request(format!("{:?}: {e}", r.path)))?;
    if r.wrapped_key.0.is_empty() || r.wrapped_key.0.len() > 1024 {
        return Err(bad_request("a wrapped key has 1 to 1024 bytes"));
    }
    let change = Change::FileShare {
        username: me,
        share_id: server.new_id("h"),
        folder_id: r.folder_id,
        path: r.path,
        recipient: name::normalize_username(&r.username).map_err(|e| bad_request(e.to_string()))?,
        wrapped_key: r.wrapped_key,
    };
    match server.store.write(change).await? {
        Applied::Share(share_id) => answer(Response::FileShared(FileShared { share_id })),
        other => Err(unexpected(other)),
    }
}

pub(super) async fn revoke(server: &Server, session: &Session, r: ShareRef) -> Answer {
    let me = session.user()?.username.clone();
    server
        .store
        .write(Change::FileShareRevoke {
            username: me,
            share_id: r.share_id,
        })
        .await?;
    answer(Response::Ok)
}

pub(super) async fn list(server: &Server, session: &Session) -> Answer {
    let me = session.user()?.username.clone();
    let shares = server
        .store
        .read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT s.share_id, s.owner, s.path, COALESCE(e.size, 0), s.created_ms FROM file_shares s \
                 LEFT JOIN entries e ON e.folder_id = s.folder_id AND e.path = s.path AND e.file_id = s.file_id \
                 AND e.deleted = 0 WHERE s.recipient = ?1 ORDER BY s.created_ms DESC, s.share_id",
            )?;
            let rows = stmt.query_map([me], |r| {
                Ok(SharedFile {
                    share_id: r.get(0)?,
                    from: r.get(1)?,
                    path: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    created_ms: r.get::<_, i64>(4)? as u64,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await?;
    answer(Response::Shared(Shared { shares }))
}

/// The shared file as it is now — its latest version, if still the same file —
/// with its chunk list and the key wrapped for the recipient.
async fn shared_file(
    server: &Server,
    me: &str,
    share_id: &str,
) -> Result<(FileEntry, Vec<u8>, Blob)> {
    let (me, id) = (me.to_owned(), share_id.to_owned());
    server
        .store
        .read(move |conn| {
            let share: Option<(String, String, Vec<u8>, Vec<u8>)> = one(conn,
                    "SELECT folder_id, path, file_id, wrapped_key FROM file_shares WHERE share_id = ?1 AND recipient = ?2",
                    params![id, me],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let (folder_id, path, file_id, key) =
                share.ok_or_else(|| not_found(format!("no file shared with you as {id}")))?;
            let gone = || not_found(format!("the file shared as {id} no longer exists"));
            let entry = query::entry(conn, &folder_id, &path)?
                .filter(|e| !e.deleted && e.file_id.0[..] == file_id[..])
                .ok_or_else(gone)?;
            let (entry, chunks) = query::stored(conn, &folder_id, &path, &entry.vv)?.ok_or_else(gone)?;
            Ok((entry, chunks, Blob(key)))
        })
        .await
}

pub(super) async fn shared_chunks(server: &Server, me: &str, share_id: &str) -> Result<Vec<u8>> {
    Ok(shared_file(server, me, share_id).await?.1)
}

pub(super) async fn download(server: &Server, session: &Session, r: ShareRef) -> Answer {
    let me = session.user()?.username.clone();
    let (entry, chunks, key) = shared_file(server, &me, &r.share_id).await?;
    Ok((
        Response::Manifest(Manifest {
            entry,
            share_key: Some(key),
        }),
        Bytes::from(chunks),
    ))
}
