//! Reading the state: row shapes and the queries handlers and the writer share.

use super::one;
use coffer_proto::response::{DeviceInfo, FolderInfo, Invite, Member, SessionSummary, UserSummary};
use coffer_proto::types::{
    Blob, EntryKind, EntrySummary, EpochKey, FileEntry, FileId, MemberStatus, Role, UserRole,
    VersionVector,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::Result;

pub(crate) fn role_str(role: Role) -> &'static str {
    match role {
        Role::Owner => "owner",
        Role::Editor => "editor",
        Role::Viewer => "viewer",
    }
}

pub(crate) fn parse_role(s: &str) -> Role {
    match s {
        "owner" => Role::Owner,
        "editor" => Role::Editor,
        // The schema's CHECK admits nothing else.
        _ => Role::Viewer,
    }
}

pub(crate) fn user_role_str(role: UserRole) -> &'static str {
    match role {
        UserRole::Admin => "admin",
        UserRole::User => "user",
    }
}

fn parse_user_role(s: &str) -> UserRole {
    if s == "admin" {
        UserRole::Admin
    } else {
        UserRole::User
    }
}

pub(crate) fn kind_str(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
    }
}

fn parse_kind(s: &str) -> EntryKind {
    if s == "dir" {
        EntryKind::Dir
    } else {
        EntryKind::File
    }
}

pub(crate) fn vv_json(vv: &VersionVector) -> String {
    serde_json::to_string(vv).expect("a version vector serializes")
}

fn parse_vv(s: &str) -> VersionVector {
    // Written by this store only; an unreadable vector would be a bug, and the
    // empty vector makes the next base check fail safely.
    serde_json::from_str(s).unwrap_or_default()
}

fn file_id(bytes: Vec<u8>) -> FileId {
    FileId(bytes.try_into().unwrap_or_default())
}

/// The columns of `entries` and `versions` that make a [`FileEntry`], in order.
pub(crate) const ENTRY_COLUMNS: &str = "folder_id, path, kind, file_id, version, vv, size, chunk_size, chunk_count, \
     epoch, wrapped_file_key, meta, modified_ms, device_id, deleted";

pub(crate) fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<FileEntry> {
    Ok(FileEntry {
        folder_id: row.get(0)?,
        path: row.get(1)?,
        kind: parse_kind(&row.get::<_, String>(2)?),
        file_id: file_id(row.get(3)?),
        version: row.get::<_, i64>(4)? as u64,
        vv: parse_vv(&row.get::<_, String>(5)?),
        size: row.get::<_, i64>(6)? as u64,
        chunk_size: row.get::<_, i64>(7)? as u32,
        chunk_count: row.get::<_, i64>(8)? as u32,
        epoch: row.get::<_, i64>(9)? as u64,
        wrapped_file_key: Blob(row.get(10)?),
        meta: Blob(row.get(11)?),
        modified_ms: row.get::<_, i64>(12)? as u64,
        device_id: row.get(13)?,
        deleted: row.get::<_, i64>(14)? != 0,
    })
}

pub(crate) fn summary(entry: &FileEntry) -> EntrySummary {
    EntrySummary {
        path: entry.path.clone(),
        kind: entry.kind,
        size: entry.size,
        version: entry.version,
        modified_ms: entry.modified_ms,
        deleted: entry.deleted,
    }
}

/// The latest version of `path`, tombstone or not.
pub(crate) fn entry(conn: &Connection, folder_id: &str, path: &str) -> Result<Option<FileEntry>> {
    Ok(one(
        conn,
        &format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE folder_id = ?1 AND path = ?2"),
        params![folder_id, path],
        entry_from_row,
    )
    .optional()?)
}

/// The kept version of `path` written under `vv`, with its chunk list: a
/// version is named by its vector, which no other write of the path shares.
pub(crate) fn stored(
    conn: &Connection,
    folder_id: &str,
    path: &str,
    vv: &VersionVector,
) -> Result<Option<(FileEntry, Vec<u8>)>> {
    Ok(one(
        conn,
        &format!(
            "SELECT {ENTRY_COLUMNS}, chunks FROM versions \
             WHERE folder_id = ?1 AND path = ?2 AND vv = ?3"
        ),
        params![folder_id, path, vv_json(vv)],
        |row| Ok((entry_from_row(row)?, row.get::<_, Vec<u8>>(15)?)),
    )
    .optional()?)
}

/// A version as the merge rules rank it ([`crate::cluster::Version`]): its
/// vector, its commit time as its stamp (a version row keeps no other),
/// whether it is a tombstone. Two versions rank alike on every node, and a
/// version ranks above every version it saw.
pub(crate) fn ranked(v: &FileEntry) -> crate::cluster::Version<()> {
    crate::cluster::Version {
        vv: v.vv.clone(),
        stamp: crate::cluster::Stamp {
            hlc: coffer_proto::types::Hlc {
                wall_ms: v.modified_ms,
                logical: 0,
            },
            origin: String::new(),
        },
        deleted: v.deleted,
        content: (),
    }
}

/// The history of `path`, newest first: its latest version, then, number by
/// number, the version each came after — of the kept versions numbered one
/// less that it saw, the one that ranks highest (the one its writer showed
/// when it wrote, unless a stranger numbered alike is known to it too).
/// A node keeps every version of a path it met, the losers of concurrent
/// chains included, so two concurrent chains leave versions of the same
/// number side by side; this picks one chain through them, from the kept
/// set alone, and so the same one on every node that keeps the same set.
/// Empty when the path has no entry.
pub(crate) fn history(conn: &Connection, folder_id: &str, path: &str) -> Result<Vec<FileEntry>> {
    let Some(head) = entry(conn, folder_id, path)? else {
        return Ok(Vec::new());
    };
    let kept: Vec<FileEntry> = conn
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM versions WHERE folder_id = ?1 AND path = ?2"
        ))?
        .query_map(params![folder_id, path], entry_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let mut chain = vec![head];
    while let Some(at) = chain.last() {
        let before = kept
            .iter()
            .filter(|v| {
                v.version + 1 == at.version
                    && v.vv.compare(&at.vv) == coffer_proto::types::Causality::Before
            })
            .max_by(|a, b| ranked(a).rank(&ranked(b)));
        match before {
            Some(v) => chain.push(v.clone()),
            None => break,
        }
    }
    Ok(chain)
}

/// Version `number` of `path`'s [`history`], with its chunk list.
pub(crate) fn version(
    conn: &Connection,
    folder_id: &str,
    path: &str,
    number: u64,
) -> Result<Option<(FileEntry, Vec<u8>)>> {
    match history(conn, folder_id, path)?
        .into_iter()
        .find(|v| v.version == number)
    {
        Some(v) => stored(conn, folder_id, path, &v.vv),
        None => Ok(None),
    }
}

/// A user's account row.
#[derive(Debug, Clone)]
pub(crate) struct UserRow {
    pub(crate) username: String,
    pub(crate) login_hash: String,
    pub(crate) role: UserRole,
    pub(crate) disabled: bool,
    pub(crate) public_key: Vec<u8>,
    pub(crate) wrapped_private_key: Vec<u8>,
    pub(crate) kdf: String,
}

pub(crate) fn user(conn: &Connection, username: &str) -> Result<Option<UserRow>> {
    Ok(one(
        conn,
        "SELECT username, login_hash, role, disabled, public_key, wrapped_private_key, kdf \
             FROM users WHERE username = ?1",
        [username],
        |row| {
            Ok(UserRow {
                username: row.get(0)?,
                login_hash: row.get(1)?,
                role: parse_user_role(&row.get::<_, String>(2)?),
                disabled: row.get::<_, i64>(3)? != 0,
                public_key: row.get(4)?,
                wrapped_private_key: row.get(5)?,
                kdf: row.get(6)?,
            })
        },
    )
    .optional()?)
}

pub(crate) fn users(conn: &Connection) -> Result<Vec<UserSummary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT username, role, disabled, created_ms FROM users ORDER BY username",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(UserSummary {
            username: row.get(0)?,
            role: parse_user_role(&row.get::<_, String>(1)?),
            disabled: row.get::<_, i64>(2)? != 0,
            created_ms: row.get::<_, i64>(3)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A session row.
#[derive(Debug, Clone)]
pub(crate) struct SessionRow {
    pub(crate) session_id: String,
    pub(crate) username: String,
    pub(crate) device_id: Option<String>,
    pub(crate) expires_ms: u64,
    pub(crate) revoked: bool,
}

pub(crate) fn session(conn: &Connection, session_id: &str) -> Result<Option<SessionRow>> {
    Ok(one(conn,
            "SELECT session_id, username, device_id, expires_ms, revoked FROM sessions WHERE session_id = ?1",
            [session_id],
            |row| {
                Ok(SessionRow {
                    session_id: row.get(0)?,
                    username: row.get(1)?,
                    device_id: row.get(2)?,
                    expires_ms: row.get::<_, i64>(3)? as u64,
                    revoked: row.get::<_, i64>(4)? != 0,
                })
            },
        )
        .optional()?)
}

pub(crate) fn sessions(
    conn: &Connection,
    username: &str,
    now_ms: u64,
    current: &str,
) -> Result<Vec<SessionSummary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT session_id, device_id, created_ms, expires_ms FROM sessions \
         WHERE username = ?1 AND revoked = 0 AND expires_ms > ?2 ORDER BY created_ms, session_id",
    )?;
    let rows = stmt.query_map(params![username, now_ms as i64], |row| {
        let session_id: String = row.get(0)?;
        Ok(SessionSummary {
            current: session_id == current,
            session_id,
            device_id: row.get(1)?,
            created_ms: row.get::<_, i64>(2)? as u64,
            expires_ms: row.get::<_, i64>(3)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceInfo> {
    Ok(DeviceInfo {
        device_id: row.get(0)?,
        name: row.get(1)?,
        mac: row.get(2)?,
        created_ms: row.get::<_, i64>(3)? as u64,
    })
}

pub(crate) fn device(
    conn: &Connection,
    username: &str,
    device_id: &str,
) -> Result<Option<DeviceInfo>> {
    Ok(one(conn,
            "SELECT device_id, name, mac, created_ms FROM devices WHERE username = ?1 AND device_id = ?2",
            [username, device_id],
            device_from_row,
        )
        .optional()?)
}

pub(crate) fn devices(conn: &Connection, username: &str) -> Result<Vec<DeviceInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT device_id, name, mac, created_ms FROM devices WHERE username = ?1 ORDER BY name",
    )?;
    let rows = stmt.query_map([username], device_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A folder row.
#[derive(Debug, Clone)]
pub(crate) struct FolderRow {
    pub(crate) folder_id: String,
    pub(crate) label: String,
    pub(crate) owner: String,
    pub(crate) epoch: u64,
    pub(crate) created_ms: u64,
}

pub(crate) fn folder(conn: &Connection, folder_id: &str) -> Result<Option<FolderRow>> {
    Ok(one(
        conn,
        "SELECT folder_id, label, owner, epoch, created_ms FROM folders WHERE folder_id = ?1",
        [folder_id],
        |row| {
            Ok(FolderRow {
                folder_id: row.get(0)?,
                label: row.get(1)?,
                owner: row.get(2)?,
                epoch: row.get::<_, i64>(3)? as u64,
                created_ms: row.get::<_, i64>(4)? as u64,
            })
        },
    )
    .optional()?)
}

/// A membership: role and whether the invitation was accepted.
pub(crate) fn membership(
    conn: &Connection,
    folder_id: &str,
    username: &str,
) -> Result<Option<(Role, MemberStatus)>> {
    Ok(one(
        conn,
        "SELECT role, status FROM members WHERE folder_id = ?1 AND username = ?2",
        [folder_id, username],
        |row| {
            let status = if row.get::<_, String>(1)? == "active" {
                MemberStatus::Active
            } else {
                MemberStatus::Invited
            };
            Ok((parse_role(&row.get::<_, String>(0)?), status))
        },
    )
    .optional()?)
}

pub(crate) fn folder_info(row: &FolderRow, role: Role) -> FolderInfo {
    FolderInfo {
        folder_id: row.folder_id.clone(),
        label: row.label.clone(),
        owner: row.owner.clone(),
        role,
        epoch: row.epoch,
        created_ms: row.created_ms,
    }
}

pub(crate) fn folders(conn: &Connection, username: &str) -> Result<Vec<FolderInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT f.folder_id, f.label, f.owner, f.epoch, f.created_ms, m.role FROM folders f \
         JOIN members m ON m.folder_id = f.folder_id \
         WHERE m.username = ?1 AND m.status = 'active' ORDER BY f.label, f.folder_id",
    )?;
    let rows = stmt.query_map([username], |row| {
        Ok(FolderInfo {
            folder_id: row.get(0)?,
            label: row.get(1)?,
            owner: row.get(2)?,
            epoch: row.get::<_, i64>(3)? as u64,
            created_ms: row.get::<_, i64>(4)? as u64,
            role: parse_role(&row.get::<_, String>(5)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn members(conn: &Connection, folder_id: &str) -> Result<Vec<Member>> {
    let mut stmt = conn.prepare_cached(
        "SELECT username, role, status FROM members WHERE folder_id = ?1 ORDER BY username",
    )?;
    let rows = stmt.query_map([folder_id], |row| {
        Ok(Member {
            username: row.get(0)?,
            role: parse_role(&row.get::<_, String>(1)?),
            status: if row.get::<_, String>(2)? == "active" {
                MemberStatus::Active
            } else {
                MemberStatus::Invited
            },
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn folder_keys(
    conn: &Connection,
    folder_id: &str,
    username: &str,
) -> Result<Vec<EpochKey>> {
    let mut stmt = conn.prepare_cached(
        "SELECT epoch, wrapped_key FROM folder_keys WHERE folder_id = ?1 AND username = ?2 ORDER BY epoch",
    )?;
    let rows = stmt.query_map([folder_id, username], |row| {
        Ok(EpochKey {
            epoch: row.get::<_, i64>(0)? as u64,
            wrapped_key: Blob(row.get(1)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn invites(conn: &Connection, username: &str) -> Result<Vec<Invite>> {
    let mut stmt = conn.prepare_cached(
        "SELECT f.folder_id, f.label, m.invited_by, m.role, m.created_ms FROM members m \
         JOIN folders f ON f.folder_id = m.folder_id \
         WHERE m.username = ?1 AND m.status = 'invited' ORDER BY m.created_ms, f.folder_id",
    )?;
    let rows = stmt.query_map([username], |row| {
        Ok(Invite {
            folder_id: row.get(0)?,
            label: row.get(1)?,
            from: row.get(2)?,
            role: parse_role(&row.get::<_, String>(3)?),
            created_ms: row.get::<_, i64>(4)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Events after `after` for `username`: addressed to them, or to a folder they
/// are an active member of now. At most `limit`, oldest first.
pub(crate) fn events_after(
    conn: &Connection,
    username: &str,
    after: i64,
    limit: u32,
) -> Result<Vec<super::StoredEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT event_id, folder_id, username, body FROM events WHERE event_id > ?1 AND (username = ?2 \
         OR folder_id IN (SELECT folder_id FROM members WHERE username = ?2 AND status = 'active')) \
         ORDER BY event_id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after, username, limit as i64], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get::<_, String>(3)?,
        ))
    })?;
    let mut events = Vec::new();
    for row in rows {
        let (id, folder_id, username, body) = row?;
        // Written by this store; an unreadable body would be a bug, skipped rather than fatal.
        if let Ok(event) = serde_json::from_str(&body) {
            events.push(super::StoredEvent {
                id,
                folder_id,
                username,
                event,
            });
        }
    }
    Ok(events)
}

/// The newest event id.
pub(crate) fn last_event(conn: &Connection) -> Result<i64> {
    Ok(one(
        conn,
        "SELECT COALESCE(MAX(event_id), 0) FROM events",
        [],
        |r| r.get(0),
    )?)
}

/// Folders `username` is an active member of.
pub(crate) fn member_folders(conn: &Connection, username: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT folder_id FROM members WHERE username = ?1 AND status = 'active'",
    )?;
    let rows = stmt.query_map([username], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Up to `limit` chunks that versions held here refer to but this node does
/// not hold.
pub(crate) fn chunks_missing(conn: &Connection, limit: usize) -> Result<Vec<[u8; 32]>> {
    let hashes: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT DISTINCT r.hash FROM chunk_refs r \
             WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.hash = r.hash) LIMIT ?1",
        )?
        .query_map([limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(hashes
        .into_iter()
        .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
        .collect())
}

/// The records taken from peers noted as needing chunks this node lacked
/// (origin, seq, chunk), as written with them; some may be settled since.
pub(crate) fn unheld(conn: &Connection) -> Result<Vec<(String, u64, [u8; 32])>> {
    let rows: Vec<(String, i64, Vec<u8>)> = conn
        .prepare_cached("SELECT origin, seq, hash FROM unheld ORDER BY origin, seq")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(origin, seq, hash)| Some((origin, seq as u64, hash.try_into().ok()?)))
        .collect())
}

/// Whether a version held here refers to chunk `hash` while this node does
/// not hold it.
pub(crate) fn lacks(conn: &Connection, hash: &[u8; 32]) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM chunk_refs WHERE hash = ?1) \
         AND NOT EXISTS (SELECT 1 FROM chunks WHERE hash = ?1)",
    )?
    .query_row([&hash[..]], |r| r.get(0))
}

/// Those of `hashes` this node no longer [`lacks`]: held now, or referred to
/// by no version any more, whether or not they ever came.
pub(crate) fn settled(
    conn: &Connection,
    hashes: Vec<[u8; 32]>,
) -> Result<std::collections::BTreeSet<[u8; 32]>> {
    let mut settled = std::collections::BTreeSet::new();
    for hash in hashes {
        if !lacks(conn, &hash)? {
            settled.insert(hash);
        }
    }
    Ok(settled)
}
