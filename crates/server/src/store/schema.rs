//! The database schema and its versioned migrations.
//!
//! `user_version` holds the schema version. Opening a database applies every
//! migration above its version, each in its own transaction; a database
//! written by a newer build (a version above [`CURRENT`]) is refused rather
//! than misread.

use rusqlite::Connection;

use super::StoreError;

/// The schema version this build writes.
pub(crate) const CURRENT: i64 = 7;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: the first schema.
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE users (
    username            TEXT PRIMARY KEY,
    login_hash          TEXT NOT NULL,
    role                TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    disabled            INTEGER NOT NULL DEFAULT 0,
    public_key          BLOB NOT NULL,
    wrapped_private_key BLOB NOT NULL,
    kdf                 TEXT NOT NULL,
    created_ms          INTEGER NOT NULL
) STRICT;

CREATE TABLE devices (
    device_id  TEXT PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(username),
    name       TEXT NOT NULL,
    mac        TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (username, name),
    UNIQUE (username, mac)
) STRICT;

CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(username),
    device_id  TEXT,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX sessions_by_user ON sessions(username);

CREATE TABLE folders (
    folder_id  TEXT PRIMARY KEY,
    label      TEXT NOT NULL,
    owner      TEXT NOT NULL REFERENCES users(username),
    epoch      INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (owner, label)
) STRICT;

CREATE TABLE members (
    folder_id  TEXT NOT NULL REFERENCES folders(folder_id),
    username   TEXT NOT NULL REFERENCES users(username),
    role       TEXT NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    status     TEXT NOT NULL CHECK (status IN ('invited', 'active')),
    invited_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (folder_id, username)
) STRICT, WITHOUT ROWID;
CREATE INDEX members_by_user ON members(username);

CREATE TABLE folder_keys (
    folder_id   TEXT NOT NULL REFERENCES folders(folder_id),
    username    TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    wrapped_key BLOB NOT NULL,
    PRIMARY KEY (folder_id, username, epoch)
) STRICT, WITHOUT ROWID;

-- The latest version of every path.
CREATE TABLE entries (
    folder_id        TEXT NOT NULL REFERENCES folders(folder_id),
    path             TEXT NOT NULL,
    parent           TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('file', 'dir')),
    file_id          BLOB NOT NULL,
    version          INTEGER NOT NULL,
    vv               TEXT NOT NULL,
    size             INTEGER NOT NULL,
    chunk_size       INTEGER NOT NULL,
    chunk_count      INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    wrapped_file_key BLOB NOT NULL,
    meta             BLOB NOT NULL,
    modified_ms      INTEGER NOT NULL,
    device_id        TEXT,
    deleted          INTEGER NOT NULL,
    PRIMARY KEY (folder_id, path)
) STRICT, WITHOUT ROWID;
CREATE INDEX entries_by_parent ON entries(folder_id, parent, path);

-- Every kept version of every path, with its chunk list (32 bytes per chunk).
CREATE TABLE versions (
    folder_id        TEXT NOT NULL,
    path             TEXT NOT NULL,
    version          INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    file_id          BLOB NOT NULL,
    vv               TEXT NOT NULL,
    size             INTEGER NOT NULL,
    chunk_size       INTEGER NOT NULL,
    chunk_count      INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    wrapped_file_key BLOB NOT NULL,
    meta             BLOB NOT NULL,
    modified_ms      INTEGER NOT NULL,
    device_id        TEXT,
    deleted          INTEGER NOT NULL,
    chunks           BLOB NOT NULL,
    PRIMARY KEY (folder_id, path, version)
) STRICT, WITHOUT ROWID;

-- Content-addressed chunks, and who holds them: versions of a folder
-- (chunk_refs), or uploads in progress (upload_chunks). A chunk with neither
-- is garbage.
CREATE TABLE chunks (
    hash       BLOB PRIMARY KEY,
    size       INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE chunk_refs (
    hash      BLOB NOT NULL,
    folder_id TEXT NOT NULL,
    refs      INTEGER NOT NULL CHECK (refs > 0),
    PRIMARY KEY (hash, folder_id)
) STRICT, WITHOUT ROWID;
-- The chunks of each upload in progress, by index: announced (a listed
-- upload's begin) or received.
CREATE TABLE upload_chunks (
    upload_id TEXT NOT NULL,
    idx       INTEGER NOT NULL,
    hash      BLOB NOT NULL,
    received  INTEGER NOT NULL,
    PRIMARY KEY (upload_id, idx)
) STRICT, WITHOUT ROWID;
CREATE INDEX upload_chunks_by_hash ON upload_chunks(hash);

CREATE TABLE uploads (
    upload_id        TEXT PRIMARY KEY,
    upload_key       BLOB NOT NULL UNIQUE,
    username         TEXT NOT NULL,
    device_id        TEXT,
    folder_id        TEXT NOT NULL,
    path             TEXT NOT NULL,
    file_id          BLOB NOT NULL,
    size             INTEGER NOT NULL,
    chunk_size       INTEGER NOT NULL,
    chunk_count      INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    wrapped_file_key BLOB NOT NULL,
    meta             BLOB NOT NULL,
    base             TEXT,
    created_ms       INTEGER NOT NULL,
    expires_ms       INTEGER NOT NULL,
    committed_version INTEGER
) STRICT;
CREATE INDEX uploads_by_expiry ON uploads(expires_ms);

CREATE TABLE file_shares (
    share_id    TEXT PRIMARY KEY,
    folder_id   TEXT NOT NULL,
    path        TEXT NOT NULL,
    file_id     BLOB NOT NULL,
    owner       TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    created_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX file_shares_by_recipient ON file_shares(recipient);

-- The change log: every state change, appended in the transaction that makes
-- it. Replication will ship it.
CREATE TABLE changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    origin      TEXT NOT NULL,
    hlc_wall    INTEGER NOT NULL,
    hlc_logical INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL
) STRICT;

-- What subscribers are told about each change, and who is told: the active
-- members of `folder_id`, and `username`. An event's id is its cursor.
CREATE TABLE events (
    event_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    seq       INTEGER NOT NULL REFERENCES changes(seq),
    folder_id TEXT,
    username  TEXT,
    body      TEXT NOT NULL
) STRICT;
CREATE INDEX events_by_folder ON events(folder_id, event_id);
CREATE INDEX events_by_user ON events(username, event_id);
"#,
    // 1 → 2: replication. Records are numbered per origin and carry the rows
    // their change wrote; every replicated row keeps the stamp of the write
    // that set it, also once deleted.
    r#"
ALTER TABLE changes ADD COLUMN origin_seq INTEGER;
UPDATE changes SET origin_seq = seq;
ALTER TABLE changes ADD COLUMN rows TEXT NOT NULL DEFAULT '[]';
CREATE UNIQUE INDEX changes_by_origin ON changes(origin, origin_seq);

-- Device names and MACs per user, and folder labels per owner, are unique
-- where they are made, not across the cluster: two nodes may each accept one
-- at the same moment, and merging keeps both rather than drop one.
CREATE TABLE devices_v2 (
    device_id  TEXT PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(username),
    name       TEXT NOT NULL,
    mac        TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
INSERT INTO devices_v2 SELECT device_id, username, name, mac, created_ms FROM devices;
DROP TABLE devices;
ALTER TABLE devices_v2 RENAME TO devices;
CREATE INDEX devices_by_user ON devices(username, name);

CREATE TABLE folders_v2 (
    folder_id  TEXT PRIMARY KEY,
    label      TEXT NOT NULL,
    owner      TEXT NOT NULL REFERENCES users(username),
    epoch      INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
INSERT INTO folders_v2 SELECT folder_id, label, owner, epoch, created_ms FROM folders;
DROP TABLE folders;
ALTER TABLE folders_v2 RENAME TO folders;
CREATE INDEX folders_by_owner ON folders(owner, label);
CREATE INDEX changes_by_hlc ON changes(hlc_wall, hlc_logical);

-- The newest write of each replicated row's existence (col '') and of each
-- of its columns.
CREATE TABLE row_stamps (
    tbl         TEXT NOT NULL,
    key         TEXT NOT NULL,
    col         TEXT NOT NULL,
    hlc_wall    INTEGER NOT NULL,
    hlc_logical INTEGER NOT NULL,
    origin      TEXT NOT NULL,
    PRIMARY KEY (tbl, key, col)
) STRICT, WITHOUT ROWID;
"#,
    // 2 → 3: the upload a version was committed from, so that a commit
    // retried through another node finds the version it already made.
    r#"
ALTER TABLE versions ADD COLUMN upload_id TEXT;

-- Chunks a peer pushed while their upload was still arriving there: kept from
-- collection until `until_ms`, by when the version that holds them has come.
CREATE TABLE held_chunks (
    hash     BLOB PRIMARY KEY,
    until_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
"#,
    // 3 → 4: a version found by its upload whatever its path, for a commit
    // retried after its version lost to a concurrent one and became a
    // conflict copy.
    r#"
CREATE INDEX versions_by_upload ON versions(upload_id) WHERE upload_id IS NOT NULL;
"#,
    // 4 → 5: the records taken from peers whose versions refer to chunks this
    // node lacks, written with the records themselves, so that a node that
    // restarts still acknowledges them as unheld until the chunks come.
    r#"
CREATE TABLE unheld (
    origin TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (origin, seq, hash)
) STRICT, WITHOUT ROWID;
"#,
    // 5 → 6: the vector of a write committed through two nodes that every
    // node merged into its twin (the same upload or named write, ranked
    // higher), and the vector kept in its stead: a client answered with it
    // still edits on. Derived by each node as it merges, not replicated.
    r#"
CREATE TABLE twins (
    upload_id TEXT NOT NULL,
    vv        TEXT NOT NULL,
    kept      TEXT NOT NULL,
    PRIMARY KEY (upload_id, vv)
) STRICT, WITHOUT ROWID;
"#,
    // 6 → 7: versions named by their vector, not by their number. Two
    // concurrent chains of a path number their versions alike; a node now
    // keeps every version it meets, each under its own vector, and every
    // node derives the same history from the same set (`query::history`).
    r#"
CREATE TABLE versions_v7 (
    folder_id        TEXT NOT NULL,
    path             TEXT NOT NULL,
    version          INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    file_id          BLOB NOT NULL,
    vv               TEXT NOT NULL,
    size             INTEGER NOT NULL,
    chunk_size       INTEGER NOT NULL,
    chunk_count      INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    wrapped_file_key BLOB NOT NULL,
    meta             BLOB NOT NULL,
    modified_ms      INTEGER NOT NULL,
    device_id        TEXT,
    deleted          INTEGER NOT NULL,
    chunks           BLOB NOT NULL,
    upload_id        TEXT,
    PRIMARY KEY (folder_id, path, vv)
) STRICT, WITHOUT ROWID;
INSERT OR IGNORE INTO versions_v7
    SELECT folder_id, path, version, kind, file_id, vv, size, chunk_size, chunk_count, epoch,
           wrapped_file_key, meta, modified_ms, device_id, deleted, chunks, upload_id
    FROM versions;
DROP TABLE versions;
ALTER TABLE versions_v7 RENAME TO versions;
CREATE INDEX versions_by_upload ON versions(upload_id) WHERE upload_id IS NOT NULL;
"#,
];

const _: () = assert!(MIGRATIONS.len() as i64 == CURRENT);

/// Brings the database to [`CURRENT`], refusing one from a newer build.
/// Foreign keys must be off (migrations rebuild tables others refer to).
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > CURRENT {
        return Err(StoreError::NewerSchema {
            found,
            supported: CURRENT,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: &str = "INSERT INTO versions (folder_id, path, version, kind, file_id, vv, \
        size, chunk_size, chunk_count, epoch, wrapped_file_key, meta, modified_ms, device_id, \
        deleted, chunks, upload_id) \
        VALUES ('f1', 'a.txt', ?1, 'file', x'00', ?2, 0, 65536, 0, 1, x'00', x'00', ?1, NULL, 0, x'', NULL)";

    #[test]
    fn versions_named_by_number_come_through_named_by_vector() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..6] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 6).unwrap();
        conn.execute(VERSION, rusqlite::params![1, r#"{"a":1}"#])
            .unwrap();
        conn.execute(VERSION, rusqlite::params![2, r#"{"a":2}"#])
            .unwrap();
        // Before: one version per number.
        assert!(
            conn.execute(VERSION, rusqlite::params![2, r#"{"b":1}"#])
                .is_err()
        );
        migrate(&mut conn).unwrap();
        let kept: Vec<(i64, String)> = conn
            .prepare("SELECT version, vv FROM versions ORDER BY version")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            kept,
            [(1, r#"{"a":1}"#.to_owned()), (2, r#"{"a":2}"#.to_owned())]
        );
        // After: one per vector, concurrent versions numbered alike side by side.
        conn.execute(VERSION, rusqlite::params![2, r#"{"b":1}"#])
            .unwrap();
        assert!(
            conn.execute(VERSION, rusqlite::params![3, r#"{"a":2}"#])
                .is_err()
        );
    }
}
