//! Replicated rows: which tables replicate, what a change wrote to them, and
//! how rows from peers are merged in.
//!
//! A change-log record carries the **rows** its change wrote, each whole (or
//! as deleted), not the operation: a peer merges rows without validating them
//! again, so that nodes cannot decide differently (see "Cluster" in
//! docs/ARCHITECTURE.md). Which rows a change wrote is captured by temporary
//! triggers on the writer's connection, so no write site can forget one; the
//! rows are then read back whole in [`TABLES`]' column order.
//!
//! Each replicated row has a stamp in `row_stamps`: the (HLC, origin) of the
//! write that set it, kept after the row is deleted. A row from a peer is
//! taken only when its stamp is greater ([`crate::cluster::Lww`]). No
//! replicated table has a unique constraint besides its key: two devices of
//! one user named alike, made on two nodes at once, are both kept.

use std::collections::BTreeMap;

use coffer_proto::peer::Record;
use coffer_proto::types::{Blob, EntryKind, FileEntry, FileId, Hlc};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, params, params_from_iter};
use serde::{Deserialize, Serialize};

use super::{exec, one};
use crate::cluster::Stamp;

/// A replicated table: its name, its key columns and every column (key
/// first, in schema order). None has a unique constraint besides its key:
/// merging could not honour one without dropping a row some node accepted.
pub(crate) struct Table {
    pub(crate) name: &'static str,
    pub(crate) key: &'static [&'static str],
    pub(crate) columns: &'static [&'static str],
}

/// Every table whose rows replicate as registers. File entries and their
/// versions merge under version vectors and are not here; uploads in
/// progress, chunk bookkeeping and the logs themselves are local to a node.
pub(crate) const TABLES: &[Table] = &[
    Table {
        name: "users",
        key: &["username"],
        columns: &[
            "username",
            "login_hash",
            "role",
            "disabled",
            "public_key",
            "wrapped_private_key",
            "kdf",
            "created_ms",
        ],
    },
    Table {
        name: "devices",
        key: &["device_id"],
        columns: &["device_id", "username", "name", "mac", "created_ms"],
    },
    Table {
        name: "sessions",
        key: &["session_id"],
        columns: &[
            "session_id",
            "username",
            "device_id",
            "created_ms",
            "expires_ms",
            "revoked",
        ],
    },
    Table {
        name: "folders",
        key: &["folder_id"],
        columns: &["folder_id", "label", "owner", "epoch", "created_ms"],
    },
    Table {
        name: "members",
        key: &["folder_id", "username"],
        columns: &[
            "folder_id",
            "username",
            "role",
            "status",
            "invited_by",
            "created_ms",
        ],
    },
    Table {
        name: "folder_keys",
        key: &["folder_id", "username", "epoch"],
        columns: &["folder_id", "username", "epoch", "wrapped_key"],
    },
    Table {
        name: "file_shares",
        key: &["share_id"],
        columns: &[
            "share_id",
            "folder_id",
            "path",
            "file_id",
            "owner",
            "recipient",
            "wrapped_key",
            "created_ms",
        ],
    },
];

/// The versions of file entries. They replicate as versions — immutable,
/// ordered by their version vectors, concurrent ones kept as conflict copies
/// (`change::merge_version`) — not as registers; this describes their rows.
pub(crate) const VERSIONS: Table = Table {
    name: "versions",
    key: &["folder_id", "path", "vv"],
    columns: &[
        "folder_id",
        "path",
        "version",
        "kind",
        "file_id",
        "vv",
        "size",
        "chunk_size",
        "chunk_count",
        "epoch",
        "wrapped_file_key",
        "meta",
        "modified_ms",
        "device_id",
        "deleted",
        "chunks",
        "upload_id",
    ],
};

fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

/// A version row from a peer, checked: every column of the right type, a
/// valid path, a file id of 16 bytes, a vector, a chunk list of 32 bytes per
/// chunk, an upload id of the one form. `None` when anything is off.
fn version_from_cells(cells: &[Cell]) -> Option<(FileEntry, Vec<u8>, Option<String>)> {
    let [
        Cell::Text(folder_id),
        Cell::Text(path),
        Cell::Int(version),
        Cell::Text(kind),
        Cell::Blob(file_id),
        Cell::Text(vv),
        Cell::Int(size),
        Cell::Int(chunk_size),
        Cell::Int(chunk_count),
        Cell::Int(epoch),
        Cell::Blob(wrapped_file_key),
        Cell::Blob(meta),
        Cell::Int(modified_ms),
        device_id,
        Cell::Int(deleted),
        Cell::Blob(chunks),
        upload,
    ] = cells
    else {
        return None;
    };
    let upload = match upload {
        Cell::Null => None,
        Cell::Text(id) if coffer_proto::request::is_upload_id(id) => Some(id.clone()),
        _ => return None,
    };
    let device_id = match device_id {
        Cell::Null => None,
        Cell::Text(d) => Some(d.clone()),
        _ => return None,
    };
    let kind = match kind.as_str() {
        "file" => EntryKind::File,
        "dir" => EntryKind::Dir,
        _ => return None,
    };
    coffer_proto::path::validate(path).ok()?;
    let nonnegative = |n: &i64| u64::try_from(*n).ok();
    let chunk_count = u32::try_from(*chunk_count).ok()?;
    if chunks.0.len() != chunk_count as usize * 32 && !chunks.0.is_empty() {
        return None;
    }
    Some((
        FileEntry {
            folder_id: folder_id.clone(),
            path: path.clone(),
            kind,
            file_id: FileId(file_id.0.clone().try_into().ok()?),
            version: nonnegative(version).filter(|v| *v > 0)?,
            vv: serde_json::from_str(vv).ok()?,
            size: nonnegative(size)?,
            chunk_size: u32::try_from(*chunk_size).ok()?,
            chunk_count,
            epoch: nonnegative(epoch)?,
            wrapped_file_key: wrapped_file_key.clone(),
            meta: meta.clone(),
            modified_ms: nonnegative(modified_ms)?,
            device_id,
            deleted: *deleted != 0,
        },
        chunks.0.clone(),
        upload,
    ))
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob(Blob),
}

impl ToSql for Cell {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Cell::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Cell::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Cell::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Cell::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b.as_bytes())),
        })
    }
}

fn cell(value: ValueRef<'_>) -> rusqlite::Result<Cell> {
    Ok(match value {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(n) => Cell::Int(n),
        ValueRef::Text(t) => Cell::Text(
            std::str::from_utf8(t)
                .map_err(|e| rusqlite::Error::Utf8Error(0, e))?
                .to_owned(),
        ),
        ValueRef::Blob(b) => Cell::Blob(Blob(b.to_vec())),
        // No replicated column is REAL (the tables are STRICT).
        ValueRef::Real(_) => {
            return Err(rusqlite::Error::InvalidColumnType(
                0,
                "real".into(),
                rusqlite::types::Type::Real,
            ));
        }
    })
}

/// What a change did to one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RowOp {
    /// Created (or created again): every column, in [`Table::columns`] order.
    Inserted(Vec<Cell>),
    /// Some columns set, each by name with its new value, in the row's
    /// incarnation `of`: the write that created it (its existence stamp).
    Updated {
        of: Option<Stamp>,
        set: Vec<(String, Cell)>,
    },
    /// Deleted.
    Deleted,
}

/// A row as a change left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RowWrite {
    pub(crate) table: String,
    /// The key columns' values.
    pub(crate) key: Vec<Cell>,
    pub(crate) op: RowOp,
    /// Inserted by a named creation: stamped [`NAMED`], not with its record's
    /// stamp.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) named: bool,
}

/// The stamp of every row a named creation inserts (a folder or a device
/// whose id derives from the client's write id, and the rows made with it).
/// Each node that does the creation — the client sent it again through
/// another node after `unavailable`, before either heard of the other —
/// inserts the same rows under the same stamp, so the row merge meets one
/// incarnation, not two: updates made to it on either node apply on every
/// node, where two incarnations would have the later one reset the row and
/// drop the earlier one's updates (a key rotation, a rename). It is the
/// lowest stamp there is, so every update and every deletion is newer than
/// the creation, and a creation sent again after its row was deleted does
/// not bring it back. What the nodes' inserts differ in (the time each
/// made it) is settled column by column, the least value kept.
pub(crate) const NAMED: Stamp = Stamp {
    hlc: Hlc {
        wall_ms: 0,
        logical: 0,
    },
    origin: String::new(),
};

/// Why a peer's row was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RowError {
    #[error("rows of table {0} do not replicate")]
    UnknownTable(String),
    #[error("a row of {0} does not have the table's shape")]
    Shape(&'static str),
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
}

/// The `row_stamps` column that stamps a row's existence (its creation or
/// deletion); the others stamp one column each.
const EXISTENCE: &str = "";

/// Sets up the capture of written rows on the writer's connection: a
/// temporary table of touched keys and columns, and triggers per table that
/// fill it — every column on insert, each column that changed on update, the
/// row's existence on delete.
pub(crate) fn install_capture(conn: &Connection) -> rusqlite::Result<()> {
    let mut sql = String::from(
        "CREATE TEMP TABLE IF NOT EXISTS touched (n INTEGER PRIMARY KEY, tbl TEXT NOT NULL, \
         key TEXT NOT NULL, col TEXT NOT NULL, UNIQUE (tbl, key, col));\n",
    );
    for t in TABLES {
        let key = |row: &str| {
            t.key
                .iter()
                .map(|c| format!("{row}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let touch = |row: &str, col: &str| {
            format!(
                "INSERT OR IGNORE INTO touched (tbl, key, col) VALUES ('{}', json_array({}), '{col}');",
                t.name,
                key(row)
            )
        };
        let name = t.name;
        sql.push_str(&format!(
            "CREATE TEMP TRIGGER IF NOT EXISTS touched_{name}_insert AFTER INSERT ON main.{name} BEGIN {} END;\n",
            touch("NEW", "*")
        ));
        sql.push_str(&format!(
            "CREATE TEMP TRIGGER IF NOT EXISTS touched_{name}_delete AFTER DELETE ON main.{name} BEGIN {} END;\n",
            touch("OLD", EXISTENCE)
        ));
        for column in &t.columns[t.key.len()..] {
            sql.push_str(&format!(
                "CREATE TEMP TRIGGER IF NOT EXISTS touched_{name}_{column} AFTER UPDATE OF {column} ON main.{name} \
                 WHEN OLD.{column} IS NOT NEW.{column} BEGIN {} END;\n",
                touch("NEW", column)
            ));
        }
    }
    // A new version of a file entry (pruning old ones is each node's own).
    sql.push_str(
        "CREATE TEMP TRIGGER IF NOT EXISTS touched_versions_insert AFTER INSERT ON main.versions \
         BEGIN INSERT OR IGNORE INTO touched (tbl, key, col) \
         VALUES ('versions', json_array(NEW.folder_id, NEW.path, NEW.vv), '*'); END;\n",
    );
    conn.execute_batch(&sql)
}

/// Forgets what was touched (a refused change's writes were rolled back).
pub(crate) fn clear_touched(conn: &Connection) -> rusqlite::Result<()> {
    exec(conn, "DELETE FROM touched", []).map(drop)
}

/// The key text `row_stamps` files a row under: SQLite's `json_array` of the
/// key values, the same text the triggers write.
fn key_text(conn: &Connection, key: &[Cell]) -> rusqlite::Result<String> {
    let marks = (1..=key.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    one(
        conn,
        &format!("SELECT json_array({marks})"),
        params_from_iter(key),
        |r| r.get(0),
    )
}

/// Whether the row of `table` under `key` (its text columns) was here once
/// and is gone: a deleted row's existence stamp outlives it — the row merge
/// needs it to keep an older insert from bringing the row back. A removal
/// sent again finds its own work by it.
pub(crate) fn deleted(conn: &Connection, table_name: &str, key: &[&str]) -> rusqlite::Result<bool> {
    let t = table(table_name).expect("a replicated table");
    let cells: Vec<Cell> = key.iter().map(|k| Cell::Text((*k).to_owned())).collect();
    Ok(read_row(conn, t, &cells)?.is_none() && known(conn, table_name, key)?)
}

/// Whether the row of `table` under `key` (its text columns) is here or
/// was here once: it has an existence stamp, which outlives the row.
pub(crate) fn known(conn: &Connection, table_name: &str, key: &[&str]) -> rusqlite::Result<bool> {
    let cells: Vec<Cell> = key.iter().map(|k| Cell::Text((*k).to_owned())).collect();
    let key = key_text(conn, &cells)?;
    Ok(stamp_of(conn, table_name, &key, EXISTENCE)?.is_some())
}

fn where_key(t: &Table) -> String {
    t.key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The row of `t` under `key`, whole, if present.
fn read_row(conn: &Connection, t: &Table, key: &[Cell]) -> rusqlite::Result<Option<Vec<Cell>>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        t.columns.join(", "),
        t.name,
        where_key(t)
    );
    conn.prepare_cached(&sql)?
        .query_row(params_from_iter(key), |r| {
            (0..t.columns.len()).map(|i| cell(r.get_ref(i)?)).collect()
        })
        .optional()
}

fn stamp_of(
    conn: &Connection,
    table: &str,
    key: &str,
    col: &str,
) -> rusqlite::Result<Option<Stamp>> {
    one(
        conn,
        "SELECT hlc_wall, hlc_logical, origin FROM row_stamps WHERE tbl = ?1 AND key = ?2 AND col = ?3",
        params![table, key, col],
        |r| {
            Ok(Stamp {
                hlc: Hlc {
                    wall_ms: r.get::<_, i64>(0)? as u64,
                    logical: r.get::<_, i64>(1)? as u32,
                },
                origin: r.get(2)?,
            })
        },
    )
    .optional()
}

fn set_stamp(
    conn: &Connection,
    table: &str,
    key: &str,
    col: &str,
    stamp: &Stamp,
) -> rusqlite::Result<()> {
    exec(
        conn,
        "INSERT INTO row_stamps (tbl, key, col, hlc_wall, hlc_logical, origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (tbl, key, col) DO UPDATE SET hlc_wall = excluded.hlc_wall, \
         hlc_logical = excluded.hlc_logical, origin = excluded.origin",
        params![
            table,
            key,
            col,
            stamp.hlc.wall_ms as i64,
            stamp.hlc.logical as i64,
            stamp.origin
        ],
    )
    .map(drop)
}

fn key_error(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

/// What the current change did to each row it touched, every write now
/// stamped with `stamp`; clears the capture for the next change.
///
/// `named`: the change is a named creation, and the rows it inserted are
/// stamped [`NAMED`].
pub(crate) fn take_written(
    conn: &Connection,
    stamp: &Stamp,
    named: bool,
) -> rusqlite::Result<Vec<RowWrite>> {
    // Rows in the order they were first written, which the origin's foreign
    // keys allowed (a folder before its members); a row's columns together.
    let touched: Vec<(String, String, String)> = conn
        .prepare_cached(
            "SELECT t.tbl, t.key, t.col FROM touched t \
             JOIN (SELECT tbl, key, MIN(n) AS first FROM touched GROUP BY tbl, key) f \
             ON f.tbl = t.tbl AND f.key = t.key ORDER BY f.first, t.col",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut written = Vec::new();
    let mut rows = touched.chunk_by(|a, b| (&a.0, &a.1) == (&b.0, &b.1));
    for group in &mut rows {
        let (name, key_json) = (&group[0].0, &group[0].1);
        let key = parse_key(key_json).map_err(key_error)?;
        if name == VERSIONS.name {
            // A version inserted and gone within one change (pruned at once)
            // is nothing to replicate.
            if let Some(row) = read_row(conn, &VERSIONS, &key)? {
                written.push(RowWrite {
                    table: VERSIONS.name.to_owned(),
                    key,
                    op: RowOp::Inserted(row),
                    named: false,
                });
            }
            continue;
        }
        let t = table(name).expect("triggers exist only on replicated tables");
        let inserted = group.iter().any(|(_, _, col)| col == "*");
        let row = read_row(conn, t, &key)?;
        let named = named && inserted && row.is_some();
        let op = match row {
            None => {
                set_stamp(conn, t.name, key_json, EXISTENCE, stamp)?;
                RowOp::Deleted
            }
            Some(row) if inserted => {
                let stamp = if named { &NAMED } else { stamp };
                set_stamp(conn, t.name, key_json, EXISTENCE, stamp)?;
                for column in &t.columns[t.key.len()..] {
                    set_stamp(conn, t.name, key_json, column, stamp)?;
                }
                RowOp::Inserted(row)
            }
            Some(row) => {
                let of = stamp_of(conn, t.name, key_json, EXISTENCE)?;
                let mut set = Vec::new();
                for (_, _, col) in group.iter().filter(|(_, _, col)| !col.is_empty()) {
                    let i = t
                        .columns
                        .iter()
                        .position(|c| c == col)
                        .expect("triggers name columns of their table");
                    set_stamp(conn, t.name, key_json, col, stamp)?;
                    set.push((col.clone(), row[i].clone()));
                }
                RowOp::Updated { of, set }
            }
        };
        written.push(RowWrite {
            table: t.name.to_owned(),
            key,
            op,
            named,
        });
    }
    clear_touched(conn)?;
    Ok(written)
}

/// A key as the triggers wrote it: a JSON array of text and integers.
fn parse_key(json: &str) -> Result<Vec<Cell>, serde_json::Error> {
    let values: Vec<serde_json::Value> = serde_json::from_str(json)?;
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(Cell::Text(s)),
            serde_json::Value::Number(n) if n.is_i64() => Ok(Cell::Int(n.as_i64().unwrap_or(0))),
            serde_json::Value::Null => Ok(Cell::Null),
            other => Err(serde::de::Error::custom(format!(
                "a key value cannot be {other}"
            ))),
        })
        .collect()
}

/// What merging one peer row did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Merged {
    /// The write was taken, wholly or for the columns where it is newest.
    Taken,
    /// Newer writes were already here.
    Older,
    /// It updates a row this node has not seen created: to be tried again
    /// once the creating record has arrived.
    Waiting,
}

/// Merges one row written by a peer at `stamp`, column by column: each
/// column, and the row's existence, keeps its newest write.
pub(crate) fn merge_row(
    conn: &Connection,
    write: &RowWrite,
    stamp: &Stamp,
) -> Result<Merged, RowError> {
    if write.table == VERSIONS.name {
        return Err(RowError::Shape(VERSIONS.name));
    }
    let t = table(&write.table).ok_or_else(|| RowError::UnknownTable(write.table.clone()))?;
    if write.key.len() != t.key.len() {
        return Err(RowError::Shape(t.name));
    }
    let key = key_text(conn, &write.key)?;
    let stamp = match (&write.op, write.named) {
        (_, false) => stamp,
        (RowOp::Inserted(_), true) => &NAMED,
        (_, true) => return Err(RowError::Shape(t.name)),
    };
    let existence = stamp_of(conn, t.name, &key, EXISTENCE)?;
    match &write.op {
        RowOp::Deleted => {
            if existence.is_some_and(|held| held >= *stamp) {
                return Ok(Merged::Older);
            }
            delete(conn, t, &write.key)?;
            set_stamp(conn, t.name, &key, EXISTENCE, stamp)?;
            Ok(Merged::Taken)
        }
        RowOp::Inserted(row) => {
            if row.len() != t.columns.len() || row[..t.key.len()] != write.key[..] {
                return Err(RowError::Shape(t.name));
            }
            if existence.as_ref() == Some(stamp) {
                return same_creation(conn, t, &key, row, stamp);
            }
            if existence.as_ref().is_some_and(|held| held >= stamp) {
                return Ok(Merged::Older);
            }
            // A new incarnation: every column starts from it. Updates of an
            // earlier incarnation are dead, and updates of this one come
            // after it (they wait for it otherwise).
            let row = row.clone();
            set_stamp(conn, t.name, &key, EXISTENCE, stamp)?;
            for column in &t.columns[t.key.len()..] {
                set_stamp(conn, t.name, &key, column, stamp)?;
            }
            upsert(conn, t, &row)?;
            Ok(Merged::Taken)
        }
        RowOp::Updated { of, set } => {
            if set
                .iter()
                .any(|(column, _)| !t.columns[t.key.len()..].contains(&column.as_str()))
            {
                return Err(RowError::Shape(t.name));
            }
            // An update belongs to one incarnation of the row: it waits for
            // that incarnation to arrive, and dies with it.
            if existence != *of {
                return Ok(if *of > existence {
                    Merged::Waiting
                } else {
                    Merged::Older
                });
            }
            let Some(mut row) = read_row(conn, t, &write.key)? else {
                // Deleted at this very stamp.
                return Ok(Merged::Older);
            };
            let mut taken = false;
            for (column, value) in set {
                let i = t.columns[t.key.len()..]
                    .iter()
                    .position(|c| c == column)
                    .map(|i| i + t.key.len())
                    .ok_or(RowError::Shape(t.name))?;
                if stamp_of(conn, t.name, &key, column)?.is_some_and(|held| held >= *stamp) {
                    continue;
                }
                set_stamp(conn, t.name, &key, column, stamp)?;
                row[i] = value.clone();
                taken = true;
            }
            if !taken {
                return Ok(Merged::Older);
            }
            upsert(conn, t, &row)?;
            Ok(Merged::Taken)
        }
    }
}

/// A named creation done on another node too, met where its row is: each
/// column no update has written since keeps the least of the two values,
/// whichever came first. A row deleted since stays deleted.
fn same_creation(
    conn: &Connection,
    t: &Table,
    key: &str,
    incoming: &[Cell],
    stamp: &Stamp,
) -> Result<Merged, RowError> {
    let Some(mut row) = read_row(conn, t, &incoming[..t.key.len()])? else {
        return Ok(Merged::Older);
    };
    let mut taken = false;
    for (i, column) in t.columns.iter().enumerate().skip(t.key.len()) {
        let created = stamp_of(conn, t.name, key, column)?.as_ref() == Some(stamp);
        if created && least(&incoming[i], &row[i]) {
            row[i] = incoming[i].clone();
            taken = true;
        }
    }
    if !taken {
        return Ok(Merged::Older);
    }
    upsert(conn, t, &row)?;
    Ok(Merged::Taken)
}

/// Whether `a` sorts before `b`: a total order on cells, the same on every
/// node (SQLite's: null, integers, text, blobs).
fn least(a: &Cell, b: &Cell) -> bool {
    fn rank(c: &Cell) -> u8 {
        match c {
            Cell::Null => 0,
            Cell::Int(_) => 1,
            Cell::Text(_) => 2,
            Cell::Blob(_) => 3,
        }
    }
    match (a, b) {
        (Cell::Int(x), Cell::Int(y)) => x < y,
        (Cell::Text(x), Cell::Text(y)) => x < y,
        (Cell::Blob(x), Cell::Blob(y)) => x.as_bytes() < y.as_bytes(),
        _ => rank(a) < rank(b),
    }
}

fn delete(conn: &Connection, t: &Table, key: &[Cell]) -> rusqlite::Result<()> {
    exec(
        conn,
        &format!("DELETE FROM {} WHERE {}", t.name, where_key(t)),
        params_from_iter(key),
    )
    .map(drop)
}

fn upsert(conn: &Connection, t: &Table, row: &[Cell]) -> rusqlite::Result<()> {
    let marks = (1..=t.columns.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let set = t.columns[t.key.len()..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO {name} ({columns}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {set}",
        name = t.name,
        columns = t.columns.join(", "),
        key = t.key.join(", "),
    );
    exec(conn, &sql, params_from_iter(row)).map(drop)
}

/// The newest HLC in the change log, local or from peers.
pub(crate) fn last_hlc(conn: &Connection) -> rusqlite::Result<Hlc> {
    one(
        conn,
        "SELECT hlc_wall, hlc_logical FROM changes ORDER BY hlc_wall DESC, hlc_logical DESC LIMIT 1",
        [],
        |r| {
            Ok(Hlc {
                wall_ms: r.get::<_, i64>(0)? as u64,
                logical: r.get::<_, i64>(1)? as u32,
            })
        },
    )
    .optional()
    .map(Option::unwrap_or_default)
}

/// The position of the newest record in this node's log (0: empty).
pub(crate) fn log_end(conn: &Connection) -> rusqlite::Result<u64> {
    one(conn, "SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
}

/// The newest record held from each origin.
pub(crate) fn cursors(conn: &Connection) -> rusqlite::Result<BTreeMap<String, u64>> {
    // One index step per origin rather than a scan of the log.
    conn.prepare_cached(
        "WITH RECURSIVE o(origin) AS ( \
           SELECT MIN(origin) FROM changes \
           UNION ALL \
           SELECT (SELECT MIN(origin) FROM changes WHERE origin > o.origin) FROM o \
           WHERE o.origin IS NOT NULL) \
         SELECT origin, (SELECT MAX(origin_seq) FROM changes c WHERE c.origin = o.origin) \
         FROM o WHERE origin IS NOT NULL",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
    .collect()
}

/// The sequence number of `origin`'s newest record held here (0: none).
pub(crate) fn last_seq(conn: &Connection, origin: &str) -> rusqlite::Result<u64> {
    one(
        conn,
        "SELECT COALESCE(MAX(origin_seq), 0) FROM changes WHERE origin = ?1",
        [origin],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

/// An event as a record carries it: its audience and body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RecordEvent {
    pub(crate) folder_id: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) event: coffer_proto::Event,
}

/// What a replicated record carries: the change's kind, the rows it wrote
/// and the events its subscribers were told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Payload {
    pub(crate) kind: String,
    pub(crate) rows: Vec<RowWrite>,
    pub(crate) events: Vec<RecordEvent>,
}

/// `origin`'s records after `after`, at most `limit`, oldest first.
#[cfg(test)]
pub(crate) fn records_after(
    conn: &Connection,
    origin: &str,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<Record>> {
    let found = read_records(
        conn,
        "WHERE origin = ?1 AND origin_seq > ?2 ORDER BY origin_seq LIMIT ?3",
        params![origin, after as i64, limit as i64],
    )?;
    Ok(found.into_iter().map(|(_, record)| record).collect())
}

/// Every record after position `after` of this node's log, in the order this
/// node applied them (which respects what each record depends on), at most
/// `limit`, each with its position.
pub(crate) fn log_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<(u64, Record)>> {
    read_records(
        conn,
        "WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        params![after as i64, limit as i64],
    )
}

fn read_records(
    conn: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<(u64, Record)>> {
    let sql = format!(
        "SELECT seq, origin, origin_seq, hlc_wall, hlc_logical, kind, rows FROM changes {filter}"
    );
    let found: Vec<(i64, String, i64, i64, i64, String, String)> = conn
        .prepare_cached(&sql)?
        .query_map(params, |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut records = Vec::with_capacity(found.len());
    for (seq, origin, origin_seq, wall, logical, kind, rows) in found {
        let rows: Vec<RowWrite> = serde_json::from_str(&rows).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
        })?;
        let events = conn
            .prepare_cached(
                "SELECT folder_id, username, body FROM events WHERE seq = ?1 ORDER BY event_id",
            )?
            .query_map([seq], |r| {
                let body: String = r.get(2)?;
                Ok(RecordEvent {
                    folder_id: r.get(0)?,
                    username: r.get(1)?,
                    event: serde_json::from_str(&body).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            2,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        records.push((
            seq as u64,
            Record {
                origin,
                seq: origin_seq as u64,
                hlc: Hlc {
                    wall_ms: wall as u64,
                    logical: logical as u32,
                },
                payload: serde_json::to_value(Payload { kind, rows, events })
                    .expect("payloads serialize"),
            },
        ));
    }
    Ok(records)
}

/// How far applying a batch of peer records got.
#[derive(Debug, Default)]
pub(crate) struct Replicated {
    /// Records applied now.
    pub(crate) applied: usize,
    /// Records already held, skipped.
    pub(crate) duplicates: usize,
    /// Events recorded, to tell subscribers once committed.
    pub(crate) events: Vec<super::StoredEvent>,
    /// Why the rest of the batch was not applied, if it was not.
    pub(crate) stopped: Option<Stopped>,
    /// Chunks the versions taken now refer to that this node does not hold,
    /// each with the records (origin, seq) that need it: to fetch before
    /// acknowledging the batch, and those records not acknowledged while
    /// one is still lacking.
    pub(crate) chunks_needed: BTreeMap<[u8; 32], Vec<(String, u64)>>,
}

/// Why applying peer records stopped before the end of a batch.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stopped {
    /// A record of `origin` after `held` is missing; pull from there.
    #[error("records of {origin} after {held} are missing")]
    Gap { origin: String, held: u64 },
    /// A record refers to a row not yet here; try again after other records.
    #[error("record {seq} of {origin} refers to a row not yet here")]
    Waiting { origin: String, seq: u64 },
    /// A record was refused; the peer sent something this node cannot take.
    #[error("record {seq} of {origin} refused: {why}")]
    Refused {
        origin: String,
        seq: u64,
        why: String,
    },
}

/// Applies peer records in one transaction, in order, each at most once;
/// stops at the first that cannot be applied yet.
pub(crate) fn apply_records(
    conn: &mut Connection,
    ctx: &super::WriterContext,
    now_ms: u64,
    records: &[Record],
) -> rusqlite::Result<Replicated> {
    let mut tx = conn.transaction()?;
    let mut clock = crate::cluster::Clock::new(last_hlc(&tx)?);
    let mut out = Replicated::default();
    for record in records {
        let held = last_seq(&tx, &record.origin)?;
        if record.seq <= held {
            out.duplicates += 1;
            continue;
        }
        let refused = |why: String| Stopped::Refused {
            origin: record.origin.clone(),
            seq: record.seq,
            why,
        };
        if record.seq != held + 1 {
            out.stopped = Some(Stopped::Gap {
                origin: record.origin.clone(),
                held,
            });
            break;
        }
        if let Err(ahead) = clock.observe(record.hlc, now_ms) {
            out.stopped = Some(refused(ahead.to_string()));
            break;
        }
        let payload: Payload = match serde_json::from_value(record.payload.clone()) {
            Ok(p) => p,
            Err(e) => {
                // The category only: serde's message can quote a value.
                out.stopped = Some(refused(format!(
                    "the payload is not a record's ({:?} error)",
                    e.classify()
                )));
                break;
            }
        };
        let stamp = Stamp {
            hlc: record.hlc,
            origin: record.origin.clone(),
        };
        let sp = tx.savepoint()?;
        clear_touched(&sp)?;
        let mut failed = None;
        let mut copies = Vec::new();
        let mut referenced: Vec<[u8; 32]> = Vec::new();
        for row in &payload.rows {
            if row.table == VERSIONS.name {
                let version = match &row.op {
                    RowOp::Inserted(cells) => version_from_cells(cells),
                    _ => None,
                };
                let Some((entry, chunks, upload)) = version else {
                    failed = Some(refused("a version row of the wrong shape".into()));
                    break;
                };
                referenced.extend(super::change::distinct(&chunks));
                match super::change::merge_version(&sp, ctx, entry, chunks, upload.as_deref()) {
                    Ok(copy) => copies.extend(copy),
                    Err(crate::error::Error::Db(rusqlite::Error::SqliteFailure(e, _)))
                        if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
                    {
                        failed = Some(Stopped::Waiting {
                            origin: record.origin.clone(),
                            seq: record.seq,
                        });
                        break;
                    }
                    Err(crate::error::Error::Db(e)) => return Err(e),
                    Err(e) => {
                        failed = Some(refused(e.to_string()));
                        break;
                    }
                }
                continue;
            }
            match merge_row(&sp, row, &stamp) {
                Ok(Merged::Waiting) => {
                    failed = Some(Stopped::Waiting {
                        origin: record.origin.clone(),
                        seq: record.seq,
                    });
                    break;
                }
                Ok(_) => {}
                // A row refers to one not yet here (a member of a folder whose
                // record has not arrived).
                Err(RowError::Db(rusqlite::Error::SqliteFailure(e, _)))
                    if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
                {
                    failed = Some(Stopped::Waiting {
                        origin: record.origin.clone(),
                        seq: record.seq,
                    });
                    break;
                }
                Err(RowError::Db(e)) if !matches!(e, rusqlite::Error::SqliteFailure(..)) => {
                    return Err(e);
                }
                Err(e) => {
                    failed = Some(refused(e.to_string()));
                    break;
                }
            }
        }
        if let Some(stopped) = failed {
            drop(sp);
            out.stopped = Some(stopped);
            break;
        }
        exec(
            &sp,
            "INSERT INTO changes (origin, origin_seq, hlc_wall, hlc_logical, kind, payload, rows) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'null', ?6)",
            params![
                record.origin,
                record.seq as i64,
                record.hlc.wall_ms as i64,
                record.hlc.logical as i64,
                payload.kind,
                serde_json::to_string(&payload.rows).expect("rows serialize")
            ],
        )?;
        let seq = sp.last_insert_rowid();
        let told = payload
            .events
            .into_iter()
            .map(|e| (e.folder_id, e.username, e.event));
        out.events.extend(record_events(&sp, seq, told)?);
        if !copies.is_empty() {
            keep_copies(&sp, ctx, &mut clock, now_ms, copies, &mut out)?;
        }
        // What a version kept here refers to but this node lacks: noted
        // with the record, so that the note outlives a restart.
        for hash in referenced {
            if super::query::lacks(&sp, &hash)? {
                exec(
                    &sp,
                    "INSERT OR IGNORE INTO unheld (origin, seq, hash) VALUES (?1, ?2, ?3)",
                    params![record.origin, record.seq as i64, &hash[..]],
                )?;
                out.chunks_needed
                    .entry(hash)
                    .or_default()
                    .push((record.origin.clone(), record.seq));
            }
        }
        sp.commit()?;
        out.applied += 1;
    }
    clear_touched(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// The chunks the versions among `records` refer to, of the records a node
/// holding `applied` (origin → newest record) has yet to apply: what a
/// follower fetches before it takes them. A record that does not parse is
/// left for [`apply_records`] to refuse.
pub(crate) fn chunks_of(
    records: &[Record],
    applied: &BTreeMap<String, u64>,
) -> std::collections::BTreeSet<[u8; 32]> {
    records
        .iter()
        .filter(|r| r.seq > applied.get(&r.origin).copied().unwrap_or(0))
        .filter_map(|r| Payload::deserialize(&r.payload).ok())
        .flat_map(|payload| payload.rows)
        .filter(|row| row.table == VERSIONS.name)
        .filter_map(|row| match &row.op {
            RowOp::Inserted(cells) => version_from_cells(cells).map(|(_, chunks, _)| chunks),
            _ => None,
        })
        .flat_map(|chunks| super::change::distinct(&chunks))
        .collect()
}

/// Records `events` as told by log position `seq`, for subscribers to read
/// back; what was recorded, with the ids that are their cursors.
pub(crate) fn record_events(
    conn: &Connection,
    seq: i64,
    events: impl IntoIterator<Item = super::change::Told>,
) -> rusqlite::Result<Vec<super::StoredEvent>> {
    let mut recorded = Vec::new();
    for (folder_id, username, event) in events {
        exec(
            conn,
            "INSERT INTO events (seq, folder_id, username, body) VALUES (?1, ?2, ?3, ?4)",
            params![
                seq,
                folder_id,
                username,
                serde_json::to_string(&event).expect("events serialize")
            ],
        )?;
        recorded.push(super::StoredEvent {
            id: conn.last_insert_rowid(),
            folder_id,
            username,
            event,
        });
    }
    Ok(recorded)
}

/// Keeps the losers of concurrent versions as conflict copies, in a record of
/// this node's own: a node that never held both versions at once learns of
/// the copy from it.
fn keep_copies(
    conn: &Connection,
    ctx: &super::WriterContext,
    clock: &mut crate::cluster::Clock,
    now_ms: u64,
    copies: Vec<super::change::Lost>,
    out: &mut Replicated,
) -> rusqlite::Result<()> {
    clear_touched(conn)?;
    let mut events = Vec::new();
    for lost in copies {
        match super::change::keep_copy(conn, ctx, lost) {
            Ok(told) => events.extend(told),
            Err(crate::error::Error::Db(e)) => return Err(e),
            // Making a copy refuses nothing; anything else is the database's.
            Err(e) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(
                    std::io::Error::other(e.to_string()),
                )));
            }
        }
    }
    let stamp = Stamp {
        hlc: clock.tick(now_ms),
        origin: ctx.origin.clone(),
    };
    let rows = take_written(conn, &stamp, false)?;
    if rows.is_empty() {
        return Ok(());
    }
    exec(
        conn,
        "INSERT INTO changes (origin, origin_seq, hlc_wall, hlc_logical, kind, payload, rows) \
         VALUES (?1, ?2, ?3, ?4, 'conflict_copy', 'null', ?5)",
        params![
            ctx.origin,
            (last_seq(conn, &ctx.origin)? + 1) as i64,
            stamp.hlc.wall_ms as i64,
            stamp.hlc.logical as i64,
            serde_json::to_string(&rows).expect("rows serialize")
        ],
    )?;
    let seq = conn.last_insert_rowid();
    out.events.extend(record_events(conn, seq, events)?);
    Ok(())
}

/// SHA-256 over every replicated row and the stamp of its existence, in key
/// order: equal on two nodes exactly when they hold the same replicated
/// state. (Column stamps of a deleted row may differ: a node that saw an
/// update only after the delete never took it.)
pub(crate) fn digest(conn: &Connection) -> rusqlite::Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    // Every replicated register table, then every kept version of every
    // path (a node keeps every version it met, pruned alike everywhere), then
    // file entries, each row whole, in key order.
    let whole = TABLES
        .iter()
        .chain([&VERSIONS])
        .map(|t| (t.name.to_owned(), t.columns.join(", "), t.key.join(", ")))
        .chain([(
            "entries".to_owned(),
            format!("{}, parent", super::query::ENTRY_COLUMNS),
            "folder_id, path".to_owned(),
        )]);
    for (name, columns, key) in whole {
        let sql = format!("SELECT {columns} FROM {name} ORDER BY {key}");
        let mut statement = conn.prepare_cached(&sql)?;
        let width = statement.column_count();
        let mut rows = statement.query([])?;
        hash.update(name.as_bytes());
        while let Some(r) = rows.next()? {
            let cells = (0..width)
                .map(|i| cell(r.get_ref(i)?))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            hash.update(serde_json::to_vec(&cells).expect("cells serialize"));
        }
    }
    let mut statement = conn.prepare_cached(
        "SELECT tbl, key, hlc_wall, hlc_logical, origin FROM row_stamps WHERE col = '' ORDER BY tbl, key",
    )?;
    let mut rows = statement.query([])?;
    while let Some(r) = rows.next()? {
        let line: (String, String, i64, i64, String) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        hash.update(serde_json::to_vec(&line).expect("stamps serialize"));
    }
    Ok(hash.finalize().into())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use coffer_net::SystemClock;
    use coffer_proto::types::{Kdf, Role, VersionVector};

    use super::super::{Change, Store, WriterContext};
    use super::*;
    use crate::chunks::ChunkStore;

    /// The column lists above are the schema's: a column added to a
    /// replicated table without adding it here would silently not replicate.
    #[test]
    fn the_replicated_columns_are_the_schemas() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        for t in TABLES {
            let mut statement = conn
                .prepare(&format!(
                    "SELECT name, pk FROM pragma_table_info('{}') ORDER BY cid",
                    t.name
                ))
                .unwrap();
            let info: Vec<(String, i64)> = statement
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let columns: Vec<&str> = info.iter().map(|(c, _)| c.as_str()).collect();
            let mut by_position: Vec<_> = info.iter().filter(|(_, pk)| *pk > 0).collect();
            by_position.sort_by_key(|(_, pk)| *pk);
            let key: Vec<&str> = by_position.iter().map(|(c, _)| c.as_str()).collect();
            assert_eq!(columns, t.columns, "columns of {}", t.name);
            assert_eq!(key, t.key, "key of {}", t.name);
            assert_eq!(
                &t.columns[..t.key.len()],
                t.key,
                "{}: the key comes first",
                t.name
            );
            // A unique index besides the key would make merging drop rows.
            let unique: Vec<String> = conn
                .prepare(&format!(
                    "SELECT name FROM pragma_index_list('{}') WHERE \"unique\" AND origin <> 'pk'",
                    t.name
                ))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(unique.is_empty(), "{}: {unique:?}", t.name);
        }
    }

    fn node(dir: &Path, id: &str) -> Store {
        node_on(dir, id, Arc::new(SystemClock))
    }

    fn node_on(dir: &Path, id: &str, clock: coffer_net::SharedClock) -> Store {
        let dir = dir.join(id);
        let chunks = Arc::new(ChunkStore::open(&dir.join("chunks")).unwrap());
        Store::open(
            &dir,
            WriterContext {
                origin: id.to_owned(),
                clock,
                keep_versions: 10,
                chunks,
            },
        )
        .unwrap()
    }

    /// Sends `to` every record `from` holds that `to` lacks, origin by origin.
    async fn ship(from: &Store, to: &Store) -> Replicated {
        let mut total = Replicated::default();
        for origin in from.cursors().await.unwrap().into_keys() {
            let held = to
                .cursors()
                .await
                .unwrap()
                .get(&origin)
                .copied()
                .unwrap_or(0);
            let records = from.records_after(origin, held, 10_000).await.unwrap();
            let done = to.replicate(records).await.unwrap();
            total.applied += done.applied;
            total.duplicates += done.duplicates;
            total.stopped = total.stopped.or(done.stopped);
        }
        total
    }

    async fn write(store: &Store, change: Change) {
        store.write(change).await.unwrap();
    }

    fn register(username: &str) -> Change {
        Change::Register {
            username: username.to_owned(),
            login_hash: "$2b$04$hash".to_owned(),
            public_key: Blob(vec![1; 8]),
            wrapped_private_key: Blob(vec![2; 8]),
            kdf: Kdf {
                alg: "argon2id".to_owned(),
                m_cost_kib: 8,
                t_cost: 1,
                p_cost: 1,
                salt: Blob(vec![3; 16]),
            },
            admin: None,
        }
    }

    fn session(username: &str, session_id: &str) -> Change {
        Change::SessionOpen {
            session_id: session_id.to_owned(),
            username: username.to_owned(),
            device_id: None,
            expires_ms: 4_000_000_000_000,
        }
    }

    fn device(username: &str, session_id: &str, device_id: &str, name: &str, mac: &str) -> Change {
        Change::DeviceRegister {
            username: username.to_owned(),
            session_id: session_id.to_owned(),
            device_id: device_id.to_owned(),
            named: false,
            name: name.to_owned(),
            mac: mac.to_owned(),
        }
    }

    async fn column(store: &Store, sql: &'static str) -> Vec<String> {
        store
            .read(move |conn| {
                let mut statement = conn.prepare(sql)?;
                let values = statement
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(values)
            })
            .await
            .unwrap()
    }

    fn rows(record: &Record) -> Vec<RowWrite> {
        serde_json::from_value::<Payload>(record.payload.clone())
            .unwrap()
            .rows
    }

    #[tokio::test]
    async fn records_carry_the_rows_their_change_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let a = node(dir.path(), "a");
        write(&a, register("alice")).await;
        write(
            &a,
            Change::UserDisable {
                username: "alice".into(),
                disabled: true,
            },
        )
        .await;
        let records = a.records_after("a".into(), 0, 10).await.unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        let created = rows(&records[0]);
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].table, "users");
        assert_eq!(created[0].key, [Cell::Text("alice".into())]);
        assert!(matches!(&created[0].op, RowOp::Inserted(cells) if cells.len() == 8));
        // An update carries the columns it changed, and only those.
        let disabled = rows(&records[1]);
        assert!(matches!(
            &disabled[0].op,
            RowOp::Updated { of: Some(of), set }
                if of.origin == "a" && *set == [("disabled".to_owned(), Cell::Int(1))]
        ));
        // A refused change leaves nothing behind for the next one.
        assert!(a.write(register("alice")).await.is_err());
        write(&a, register("bob")).await;
        let records = a.records_after("a".into(), 2, 10).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(rows(&records[0]).len(), 1);
        assert_eq!(rows(&records[0])[0].key, [Cell::Text("bob".into())]);
    }

    #[tokio::test]
    async fn nodes_converge_and_records_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (node(dir.path(), "a"), node(dir.path(), "b"));
        write(&a, register("alice")).await;
        write(&a, session("alice", "s1")).await;
        write(
            &a,
            device("alice", "s1", "d1", "laptop", "02:00:00:00:00:01"),
        )
        .await;
        write(&a, folder("f1")).await;
        write(&b, register("bob")).await;
        assert_ne!(a.digest().await.unwrap(), b.digest().await.unwrap());
        let done = ship(&a, &b).await;
        assert!(done.stopped.is_none(), "{:?}", done.stopped);
        assert_eq!(done.applied, 4);
        assert_eq!(ship(&b, &a).await.applied, 1);
        assert_eq!(a.digest().await.unwrap(), b.digest().await.unwrap());
        assert_eq!(
            column(&b, "SELECT username FROM users ORDER BY 1").await,
            ["alice", "bob"]
        );
        // The same records again change nothing.
        let again = a.records_after("a".into(), 0, 100).await.unwrap();
        let done = b.replicate(again).await.unwrap();
        assert_eq!((done.applied, done.duplicates), (0, 4));
        // A record after a gap is not applied.
        write(&a, register("carol")).await;
        write(&a, register("dave")).await;
        let last = a.records_after("a".into(), 5, 100).await.unwrap();
        let done = b.replicate(last).await.unwrap();
        assert_eq!(done.applied, 0);
        assert!(matches!(done.stopped, Some(Stopped::Gap { held: 4, .. })));
        // What b learnt is passed on: c hears of a's users through b.
        let c = node(dir.path(), "c");
        ship(&a, &b).await;
        ship(&b, &c).await;
        assert_eq!(c.digest().await.unwrap(), a.digest().await.unwrap());
        // Subscribers on b were told of what a's changes told: the folder's
        // creation is not an event, but records carry their events.
        assert_eq!(
            column(&c, "SELECT username FROM users ORDER BY 1").await,
            ["alice", "bob", "carol", "dave"]
        );
    }

    #[tokio::test]
    async fn a_revocation_is_not_lost_to_a_concurrent_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (node(dir.path(), "a"), node(dir.path(), "b"));
        write(&a, register("alice")).await;
        write(&a, session("alice", "s1")).await;
        ship(&a, &b).await;
        // At once: a refreshes the session, b revokes it. Whatever the
        // stamps, both columns keep their own newest write.
        write(
            &b,
            Change::SessionRevoke {
                username: "alice".into(),
                session_id: "s1".into(),
            },
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(
            &a,
            Change::SessionExtend {
                session_id: "s1".into(),
                expires_ms: 4_100_000_000_000,
            },
        )
        .await;
        ship(&a, &b).await;
        ship(&b, &a).await;
        for node in [&a, &b] {
            assert_eq!(
                column(node, "SELECT revoked || ',' || expires_ms FROM sessions").await,
                ["1,4100000000000"]
            );
        }
        assert_eq!(a.digest().await.unwrap(), b.digest().await.unwrap());
    }

    #[tokio::test]
    async fn devices_named_alike_on_two_nodes_are_both_kept_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (node(dir.path(), "a"), node(dir.path(), "b"));
        write(&a, register("alice")).await;
        write(&a, session("alice", "s1")).await;
        write(&a, session("alice", "s2")).await;
        ship(&a, &b).await;
        write(
            &a,
            device("alice", "s1", "d1", "laptop", "02:00:00:00:00:01"),
        )
        .await;
        write(
            &b,
            device("alice", "s2", "d2", "laptop", "02:00:00:00:00:02"),
        )
        .await;
        // One node still refuses a second "laptop" of its own.
        assert!(
            a.write(device("alice", "s2", "d3", "laptop", "02:00:00:00:00:03"))
                .await
                .is_err()
        );
        ship(&a, &b).await;
        ship(&b, &a).await;
        // Likewise two folders labelled alike, each with its members, and
        // replication goes on after them.
        write(&a, folder("f1")).await;
        write(&b, folder("f2")).await;
        write(&b, register("bob")).await;
        write(&b, share("f2", "bob", 1)).await;
        ship(&a, &b).await;
        ship(&b, &a).await;
        write(&a, share("f1", "bob", 1)).await;
        ship(&a, &b).await;
        for node in [&a, &b] {
            assert_eq!(
                column(node, "SELECT device_id FROM devices ORDER BY 1").await,
                ["d1", "d2"]
            );
            assert_eq!(
                column(
                    node,
                    "SELECT folder_id || ':' || username FROM members ORDER BY 1"
                )
                .await,
                ["f1:alice", "f1:bob", "f2:alice", "f2:bob"]
            );
        }
        same(&[&a, &b]).await;
    }

    /// A creation sent through a node that could tell no one (its answer
    /// `unavailable`), then through another before either heard of the
    /// other, made the same rows twice. Named, they are one incarnation:
    /// what is done to the folder and the device through the second node
    /// holds on every node, though the first node's creation, its clock
    /// ahead, carries the later stamp.
    #[tokio::test]
    async fn a_creation_sent_again_through_another_node_makes_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let ahead = Arc::new(coffer_net::ManualClock::at_ms(1_000_000));
        let behind = Arc::new(coffer_net::ManualClock::at_ms(1_000_000));
        let a = node_on(dir.path(), "a", ahead.clone());
        let b = node_on(dir.path(), "b", behind.clone());
        let c = node_on(dir.path(), "c", behind);
        write(&a, register("alice")).await;
        write(&a, register("bob")).await;
        write(&a, session("alice", "s1")).await;
        ship(&a, &b).await;
        ship(&a, &c).await;
        ahead.advance(std::time::Duration::from_secs(30));
        let laptop = || named_device("s1");
        for node in [&a, &b] {
            write(node, named_folder("fn")).await;
            write(node, laptop()).await;
        }
        // Sent a third time through b: b's own, answered again.
        write(&b, laptop()).await;
        // Through b: bob invited and removed (the key rotated to epoch 2),
        // the device renamed.
        write(&b, share("fn", "bob", 1)).await;
        write(&b, unshare_bob("fn")).await;
        write(
            &b,
            Change::DeviceRename {
                username: "alice".into(),
                device_id: "dn".into(),
                name: "desk".into(),
            },
        )
        .await;
        both_ways(&a, &b).await;
        for node in [&a, &b] {
            assert_eq!(
                column(
                    node,
                    "SELECT folder_id || ':' || epoch || ':' || created_ms FROM folders"
                )
                .await,
                ["fn:2:1000000"],
                "the rotation made through b holds, and b's creation time"
            );
            assert_eq!(
                column(node, "SELECT device_id || ':' || name FROM devices").await,
                ["dn:desk"]
            );
            assert_eq!(members(node).await, ["alice:active"]);
        }
        // Removed through a; then made again through c, which had heard of
        // none of it: the removal wins there too once c hears of it, and c's
        // late creation brings nothing back anywhere.
        write(
            &a,
            Change::DeviceRemove {
                username: "alice".into(),
                device_id: "dn".into(),
            },
        )
        .await;
        write(&c, laptop()).await;
        both_ways(&a, &c).await;
        both_ways(&a, &b).await;
        same(&[&a, &b, &c]).await;
        assert!(column(&c, "SELECT device_id FROM devices").await.is_empty());
        // Sent once more now, the registration is refused: its device is gone.
        assert!(b.write(laptop()).await.is_err());
    }

    #[tokio::test]
    async fn a_record_that_needs_another_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = three(dir.path());
        write(&a, register("alice")).await;
        ship(&a, &b).await;
        write(&b, folder("f1")).await;
        write(&b, register("bob")).await;
        write(
            &b,
            Change::FolderShare {
                username: "alice".into(),
                folder_id: "f1".into(),
                invitee: "bob".into(),
                role: Role::Viewer,
                keys: vec![coffer_proto::types::EpochKey {
                    epoch: 1,
                    wrapped_key: Blob(vec![5; 8]),
                }],
            },
        )
        .await;
        // c hears from b first: b's folder names a's user, not yet on c.
        let from_b = b.records_after("b".into(), 0, 100).await.unwrap();
        let done = c.replicate(from_b.clone()).await.unwrap();
        assert_eq!(done.applied, 0);
        assert!(matches!(
            done.stopped,
            Some(Stopped::Waiting { seq: 1, .. })
        ));
        ship(&a, &c).await;
        let done = c.replicate(from_b).await.unwrap();
        assert_eq!(done.applied, 3);
        assert!(done.stopped.is_none());
        // The invitation reached c's subscribers as an event.
        assert_eq!(
            column(
                &c,
                "SELECT username FROM events WHERE body LIKE '%\"invited\"%'"
            )
            .await,
            ["bob"]
        );
        assert_eq!(c.digest().await.unwrap(), b.digest().await.unwrap());
    }

    /// alice's folder `folder_id`, labelled "docs".
    fn folder(folder_id: &str) -> Change {
        Change::FolderCreate {
            username: "alice".into(),
            folder_id: folder_id.into(),
            named: false,
            label: "docs".into(),
            wrapped_key: Blob(vec![4; 8]),
        }
    }

    /// alice removes bob from `folder_id`, at key epoch 2.
    fn unshare_bob(folder_id: &str) -> Change {
        Change::FolderUnshare {
            username: "alice".into(),
            folder_id: folder_id.into(),
            member: "bob".into(),
            epoch: 2,
            keys: vec![coffer_proto::types::MemberKey {
                username: "alice".into(),
                wrapped_key: Blob(vec![6; 8]),
            }],
        }
    }

    /// alice and bob registered, and alice's folder f1.
    async fn alice_bob_and_f1(node: &Store) {
        write(node, register("alice")).await;
        write(node, register("bob")).await;
        write(node, folder("f1")).await;
    }

    /// A folder's members as `user:status`.
    async fn members(node: &Store) -> Vec<String> {
        column(
            node,
            "SELECT username || ':' || status FROM members ORDER BY 1",
        )
        .await
    }

    /// Asserts that every node holds the same replicated state.
    async fn same(nodes: &[&Store]) {
        let first = nodes[0].digest().await.unwrap();
        for node in &nodes[1..] {
            assert_eq!(node.digest().await.unwrap(), first);
        }
    }

    /// alice deletes `path` in f1 on top of `base`, naming the write `write_id`.
    fn delete(path: &str, base: Option<VersionVector>, write_id: Option<String>) -> Change {
        Change::Delete {
            username: "alice".into(),
            device_id: None,
            folder_id: "f1".into(),
            path: path.into(),
            base,
            write_id,
        }
    }

    /// `store` now holds the chunk whose address is `byte` repeated, fetched
    /// from a peer.
    async fn fetched(store: &Store, byte: u8) {
        store
            .write(Change::ChunkFetched {
                hash: coffer_proto::types::Sha256([byte; 32]),
                size: 100,
                hold_until: None,
            })
            .await
            .unwrap();
    }

    /// Ships a's records to b and b's to a, then asserts they agree.
    async fn both_ways(a: &Store, b: &Store) {
        ship(a, b).await;
        ship(b, a).await;
        same(&[a, b]).await;
    }

    /// Nodes a and b, both holding alice and her folder f1.
    async fn alice_f1_on_two(dir: &Path) -> (Store, Store) {
        let (a, b) = (node(dir, "a"), node(dir, "b"));
        write(&a, register("alice")).await;
        write(&a, folder("f1")).await;
        ship(&a, &b).await;
        (a, b)
    }

    /// Three empty nodes a, b and c.
    fn three(dir: &Path) -> (Store, Store, Store) {
        (node(dir, "a"), node(dir, "b"), node(dir, "c"))
    }

    fn share(folder_id: &str, invitee: &str, epochs: u64) -> Change {
        Change::FolderShare {
            username: "alice".into(),
            folder_id: folder_id.into(),
            invitee: invitee.into(),
            role: Role::Viewer,
            keys: (1..=epochs)
                .map(|epoch| coffer_proto::types::EpochKey {
                    epoch,
                    wrapped_key: Blob(vec![5; 8]),
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn an_old_delete_arriving_late_does_not_undo_a_newer_write() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = three(dir.path());
        alice_bob_and_f1(&a).await;
        write(&a, share("f1", "bob", 1)).await;
        let shared = ship(&a, &c).await;
        assert_eq!(shared.applied, 4);
        // a removes bob; b, having heard, invites him again.
        write(&a, unshare_bob("f1")).await;
        ship(&a, &b).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(&b, share("f1", "bob", 2)).await;
        // c hears of the new invitation first, and of the removal after it.
        let from_b = b.records_after("b".into(), 0, 100).await.unwrap();
        assert!(c.replicate(from_b).await.unwrap().stopped.is_none());
        ship(&a, &c).await;
        ship(&b, &a).await;
        for node in [&a, &b, &c] {
            assert_eq!(members(node).await, ["alice:active", "bob:invited"]);
        }
        same(&[&a, &b, &c]).await;
    }

    #[tokio::test]
    async fn an_old_write_arriving_after_a_newer_delete_stays_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = three(dir.path());
        alice_bob_and_f1(&a).await;
        ship(&a, &b).await;
        // b invites bob; a hears of it and removes him.
        write(&b, share("f1", "bob", 1)).await;
        ship(&b, &a).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(&a, unshare_bob("f1")).await;
        // c hears of the removal before the invitation it removes.
        let from_a = a.records_after("a".into(), 0, 100).await.unwrap();
        assert!(c.replicate(from_a).await.unwrap().stopped.is_none());
        ship(&b, &c).await;
        ship(&a, &b).await;
        for node in [&a, &b, &c] {
            assert_eq!(
                column(node, "SELECT username FROM members").await,
                ["alice"]
            );
        }
        same(&[&a, &b, &c]).await;
    }

    #[tokio::test]
    async fn an_update_dies_with_the_incarnation_of_the_row_it_updated() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = three(dir.path());
        alice_bob_and_f1(&a).await;
        write(&a, share("f1", "bob", 1)).await;
        ship(&a, &b).await;
        ship(&a, &c).await;
        // a removes bob; c, having heard, invites him again; later, b, having
        // heard of neither, has bob accept the first invitation.
        write(&a, unshare_bob("f1")).await;
        ship(&a, &c).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(&c, share("f1", "bob", 2)).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(
            &b,
            Change::InviteAccept {
                username: "bob".into(),
                folder_id: "f1".into(),
            },
        )
        .await;
        // a hears of the acceptance before the new invitation; b and c the
        // other way round.
        ship(&b, &a).await;
        ship(&c, &a).await;
        ship(&c, &b).await;
        ship(&b, &c).await;
        ship(&a, &b).await;
        ship(&a, &c).await;
        for node in [&a, &b, &c] {
            // The acceptance was of an invitation that no longer exists.
            assert_eq!(members(node).await, ["alice:active", "bob:invited"]);
        }
        same(&[&a, &b, &c]).await;
    }

    #[tokio::test]
    async fn a_database_keeps_its_origin_and_a_new_one_takes_a_new_origin() {
        let dir = tempfile::tempdir().unwrap();
        let open = |origin: &str| {
            let chunks = Arc::new(ChunkStore::open(&dir.path().join("chunks")).unwrap());
            Store::open(
                dir.path(),
                WriterContext {
                    origin: origin.into(),
                    clock: Arc::new(SystemClock),
                    keep_versions: 10,
                    chunks,
                },
            )
            .unwrap()
        };
        let first = open("n.1111");
        write(&first, register("alice")).await;
        assert_eq!(
            first.cursors().await.unwrap().keys().collect::<Vec<_>>(),
            ["n.1111"]
        );
        drop(first);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Reopened: the same origin, whatever the candidate.
        assert_eq!(open("n.2222").origin(), "n.1111");
        std::fs::remove_file(dir.path().join("coffer.db")).unwrap();
        let _ = std::fs::remove_file(dir.path().join("coffer.db-wal"));
        let _ = std::fs::remove_file(dir.path().join("coffer.db-shm"));
        // Wiped: a new origin, so no record number of the old one is reused.
        assert_eq!(open("n.3333").origin(), "n.3333");
    }

    /// alice writes `path` in f1 as a one-chunk file whose metadata is
    /// `content` repeated, on top of `base`.
    fn put(path: &str, content: u8, base: Option<&VersionVector>) -> Change {
        put_as(path, content, base, [content; 16])
    }

    /// [`put`] under the upload id made of `id`.
    fn put_as(path: &str, content: u8, base: Option<&VersionVector>, id: [u8; 16]) -> Change {
        use coffer_proto::types::Sha256;
        Change::UploadInline {
            upload: super::super::change::UploadRecord {
                upload_id: coffer_proto::request::upload_id(id),
                upload_key: Sha256([content; 32]),
                username: "alice".into(),
                device_id: Some(format!("dev{content}")),
                folder_id: "f1".into(),
                path: path.into(),
                file_id: FileId([content; 16]),
                size: 10,
                chunk_size: 65_536,
                chunk_count: 1,
                epoch: 1,
                wrapped_file_key: Blob(vec![1; 8]),
                meta: Blob(vec![content; 4]),
                base: base.cloned(),
                chunks: Blob(vec![content; 32]),
                expires_ms: 4_000_000_000_000,
            },
            sizes: vec![100],
        }
    }

    async fn vv_of(store: &Store, path: &'static str) -> VersionVector {
        store
            .read(move |conn| Ok(super::super::query::entry(conn, "f1", path)?.unwrap().vv))
            .await
            .unwrap()
    }

    /// Live entries of f1 as `path=meta in hex`.
    async fn files(store: &Store) -> Vec<String> {
        column(
            store,
            "SELECT path || '=' || hex(meta) FROM entries WHERE deleted = 0 ORDER BY path",
        )
        .await
    }

    #[tokio::test]
    async fn file_versions_follow_their_vectors_and_concurrent_ones_leave_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = three(dir.path());
        write(&a, register("alice")).await;
        write(&a, folder("f1")).await;
        write(&a, put("docs/a.txt", 1, None)).await;
        ship(&a, &b).await;
        ship(&a, &c).await;
        // One after another: b's edit follows a's version everywhere.
        let v1 = vv_of(&b, "docs/a.txt").await;
        write(&b, put("docs/a.txt", 2, Some(&v1))).await;
        // A new version alone tells the digests apart.
        assert_ne!(a.digest().await.unwrap(), b.digest().await.unwrap());
        ship(&b, &a).await;
        ship(&b, &c).await;
        same(&[&a, &b, &c]).await;
        assert_eq!(files(&a).await, ["docs=", "docs/a.txt=02020202"]);
        // At once: a and c both edit version 2; c's is the later.
        let v2 = vv_of(&a, "docs/a.txt").await;
        write(&a, put("docs/a.txt", 3, Some(&v2))).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(&c, put("docs/a.txt", 4, Some(&v2))).await;
        // b hears of a's first, a and c of the other's; every node ends the
        // same: c's edit under the path, a's beside it as one copy.
        ship(&a, &b).await;
        ship(&c, &b).await;
        ship(&c, &a).await;
        ship(&a, &c).await;
        ship(&b, &a).await;
        ship(&b, &c).await;
        ship(&a, &b).await;
        ship(&c, &b).await;
        same(&[&a, &b, &c]).await;
        let listed = files(&b).await;
        assert_eq!(listed.len(), 3, "{listed:?}");
        // The directory, the copy, the file.
        assert_eq!(listed[2], "docs/a.txt=04040404");
        assert!(
            listed[1].starts_with("docs/a.conflict-dev3-") && listed[1].ends_with(".txt=03030303"),
            "{listed:?}"
        );
        // A delete racing an edit: the later of the two wins, as any write.
        // An edit that lost is kept as a copy; a tombstone needs none.
        let v3 = vv_of(&a, "docs/a.txt").await;
        write(&a, delete("docs/a.txt", Some(v3.clone()), None)).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(&b, put("docs/a.txt", 5, Some(&v3))).await;
        ship(&a, &b).await;
        ship(&b, &a).await;
        ship(&a, &c).await;
        ship(&b, &c).await;
        same(&[&a, &b, &c]).await;
        let listed = files(&c).await;
        assert_eq!(listed.len(), 3, "{listed:?}");
        assert_eq!(listed[2], "docs/a.txt=05050505");
        let v5 = vv_of(&a, "docs/a.txt").await;
        write(&b, put("docs/a.txt", 6, Some(&v5))).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(&a, delete("docs/a.txt", Some(v5), None)).await;
        for (from, to) in [(&a, &b), (&b, &a), (&a, &c), (&b, &c), (&a, &b), (&a, &c)] {
            ship(from, to).await;
        }
        same(&[&a, &b, &c]).await;
        let listed = files(&c).await;
        assert_eq!(listed.len(), 3, "the edit, kept as a copy: {listed:?}");
        assert!(
            listed[2].starts_with("docs/a.conflict-dev6-") && listed[2].ends_with(".txt=06060606"),
            "{listed:?}"
        );
        assert!(!listed.iter().any(|f| f.starts_with("docs/a.txt=")));
    }

    #[tokio::test]
    async fn a_losing_chain_is_kept_as_copies_whatever_order_its_versions_arrive_in() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = three(dir.path());
        write(&a, register("alice")).await;
        write(&a, folder("f1")).await;
        ship(&a, &b).await;
        ship(&a, &c).await;
        // A chain of two versions made on a and c, and a version of the same
        // new path made on b meanwhile, later than both: b's wins.
        write(&a, put("x.txt", 1, None)).await;
        ship(&a, &c).await;
        let v1 = vv_of(&c, "x.txt").await;
        write(&c, put("x.txt", 2, Some(&v1))).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(&b, put("x.txt", 3, None)).await;
        // a holds the chain when b's version comes: the chain's first
        // version, under b's number in the history, is kept as a copy too,
        // as b keeps it, meeting it alone before the version after it.
        ship(&c, &a).await;
        ship(&b, &a).await;
        let on_a = files(&a).await;
        assert!(on_a.iter().any(|f| f.ends_with("=01010101")), "{on_a:?}");
        assert!(on_a.iter().any(|f| f.ends_with("=02020202")), "{on_a:?}");
        let chunk_of_1 = column(
            &a,
            "SELECT CAST(refs AS TEXT) FROM chunk_refs WHERE hash = x'0101010101010101010101010101010101010101010101010101010101010101'",
        )
        .await;
        assert_eq!(
            chunk_of_1,
            ["2"],
            "the first version's chunk is referenced by its copy and by the \
             version itself, kept among the path's versions"
        );
        ship(&a, &b).await;
        ship(&c, &b).await;
        ship(&b, &a).await;
        ship(&b, &c).await;
        ship(&a, &c).await;
        same(&[&a, &b, &c]).await;
        let listed = files(&b).await;
        assert_eq!(listed.len(), 3, "two copies and the file: {listed:?}");
        assert_eq!(listed[2], "x.txt=03030303");
    }

    /// `path`'s history on `store`: `version:meta in hex`, newest first.
    async fn history(store: &Store, path: &'static str) -> Vec<String> {
        store
            .read(move |conn| {
                Ok(super::super::query::history(conn, "f1", path)?
                    .iter()
                    .map(|v| format!("{}:{}", v.version, hex::encode(v.meta.as_bytes())))
                    .collect())
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_chain_that_won_in_the_end_has_the_same_history_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = alice_f1_on_two(dir.path()).await;
        // a writes x.txt twice; b writes it once, between the two: b's
        // version beats a's first and loses to a's second.
        write(&a, put("x.txt", 1, None)).await;
        let a1 = vv_of(&a, "x.txt").await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(&b, put("x.txt", 2, None)).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(&a, put("x.txt", 3, Some(&a1))).await;
        // b meets a's first version while its own is shown, and keeps it as
        // a copy; a never shows b's. Both show a's second, after its first.
        both_ways(&a, &b).await;
        let expected = ["2:03030303", "1:01010101"];
        assert_eq!(history(&a, "x.txt").await, expected);
        assert_eq!(history(&b, "x.txt").await, expected);
        let listed = files(&b).await;
        assert_eq!(listed.len(), 3, "the file and two copies: {listed:?}");
        // Numbers are the history's: version 1 is a's first on both.
        for node in [&a, &b] {
            let first = node
                .read(|conn| super::super::query::version(conn, "f1", "x.txt", 1))
                .await
                .unwrap()
                .expect("version 1 is in the history");
            assert_eq!(first.0.meta.as_bytes(), [1; 4]);
        }
    }

    #[tokio::test]
    async fn two_versions_of_one_chain_that_lost_in_one_second_are_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(coffer_net::ManualClock::default());
        let (a, b) = (
            node_on(dir.path(), "a", clock.clone()),
            node_on(dir.path(), "b", clock.clone()),
        );
        let second = 1_900_000_000_000;
        clock.set_ms(second);
        write(&a, register("alice")).await;
        write(&a, folder("f1")).await;
        ship(&a, &b).await;
        // a writes x.txt twice within one second (one file, one file id);
        // b writes it once after both, unaware: b's version beats both.
        clock.set_ms(second + 100);
        write(&a, put("x.txt", 1, None)).await;
        let first = vv_of(&a, "x.txt").await;
        clock.set_ms(second + 200);
        let mut edit = put("x.txt", 2, Some(&first));
        if let Change::UploadInline { upload, .. } = &mut edit {
            upload.file_id = FileId([1; 16]);
            upload.device_id = Some("dev1".into());
        }
        write(&a, edit).await;
        clock.set_ms(second + 300);
        write(&b, put("x.txt", 3, None)).await;
        // b meets a's versions first to last, each losing as it comes; a
        // meets b's once its own second version is shown, and finds both
        // its versions beaten at once, the second first.
        both_ways(&a, &b).await;
        for node in [&a, &b] {
            let listed = files(node).await;
            assert_eq!(listed.len(), 2, "the file and one copy: {listed:?}");
            assert!(listed[0].ends_with("=02020202"), "{listed:?}");
            assert_eq!(listed[1], "x.txt=03030303");
        }
    }

    /// xorshift64: a test's own dice, the same every run of `seed`; `n`
    /// faces.
    fn dice(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        }
    }

    /// Every node hears from every other, and again (what one heard
    /// second-hand reaches the rest).
    async fn ship_everywhere(nodes: &[Store]) {
        for _ in 0..2 {
            for from in nodes {
                for to in nodes {
                    ship(from, to).await;
                }
            }
        }
    }

    /// Three nodes edit and delete one file at random, on a clock that
    /// often gives two writes the same millisecond, and ship their records
    /// to each other at random between writes; then every node hears from
    /// every other. Whatever the order, every node keeps the same versions
    /// (the digest covers them all), pruned alike, and shows the same
    /// history. More writes than the kept ten, so pruning runs throughout.
    #[tokio::test]
    async fn versions_shipped_in_any_order_leave_the_same_history_everywhere() {
        for seed in 1..=12u64 {
            let dir = tempfile::tempdir().unwrap();
            let clock = Arc::new(coffer_net::ManualClock::default());
            let nodes = [
                node_on(dir.path(), "a", clock.clone()),
                node_on(dir.path(), "b", clock.clone()),
                node_on(dir.path(), "c", clock.clone()),
            ];
            let mut now = 1_900_000_000_000;
            clock.set_ms(now);
            write(&nodes[0], register("alice")).await;
            write(&nodes[0], folder("f1")).await;
            ship(&nodes[0], &nodes[1]).await;
            ship(&nodes[0], &nodes[2]).await;
            let mut dice = dice(seed);
            for step in 0..40u8 {
                now += dice(3);
                clock.set_ms(now);
                let at = &nodes[dice(3) as usize];
                if dice(3) == 0 {
                    let to = &nodes[dice(3) as usize];
                    ship(at, to).await;
                    continue;
                }
                let shown = at
                    .read(|conn| super::super::query::entry(conn, "f1", "x.txt"))
                    .await
                    .unwrap();
                match shown {
                    Some(e) if !e.deleted && dice(4) == 0 => {
                        write(at, delete("x.txt", Some(e.vv), None)).await;
                    }
                    Some(e) if !e.deleted => {
                        write(at, put("x.txt", step + 1, Some(&e.vv))).await;
                    }
                    _ => write(at, put("x.txt", step + 1, None)).await,
                }
            }
            ship_everywhere(&nodes).await;
            same(&[&nodes[0], &nodes[1], &nodes[2]]).await;
            let first = history(&nodes[0], "x.txt").await;
            assert!(!first.is_empty(), "seed {seed}");
            for node in &nodes[1..] {
                assert_eq!(history(node, "x.txt").await, first, "seed {seed}");
            }
            let kept = column(
                &nodes[0],
                "SELECT CAST(count(*) AS TEXT) FROM versions WHERE path = 'x.txt'",
            )
            .await;
            assert_eq!(kept, ["10"], "seed {seed}: pruned to the ten kept");
        }
    }

    /// Three nodes, their clocks apart, each do one folder's and one
    /// device's named creations (as if the client sent them again through
    /// each), rename and remove the device, invite bob and remove him again
    /// (rotating the folder key), and ship their records to each other at
    /// random in between; then every node hears from every other. Whatever
    /// the order, every node holds the same state, and no rotation is lost:
    /// the folder's epoch is its owner's newest key's.
    #[tokio::test]
    async fn named_creations_done_anywhere_in_any_order_converge() {
        for seed in 1..=12u64 {
            let dir = tempfile::tempdir().unwrap();
            let clocks: Vec<_> = (0..3)
                .map(|_| Arc::new(coffer_net::ManualClock::at_ms(1_900_000_000_000)))
                .collect();
            let nodes = [
                node_on(dir.path(), "a", clocks[0].clone()),
                node_on(dir.path(), "b", clocks[1].clone()),
                node_on(dir.path(), "c", clocks[2].clone()),
            ];
            write(&nodes[0], register("alice")).await;
            write(&nodes[0], register("bob")).await;
            for session_id in ["s0", "s1", "s2"] {
                write(&nodes[0], session("alice", session_id)).await;
            }
            ship(&nodes[0], &nodes[1]).await;
            ship(&nodes[0], &nodes[2]).await;
            let mut dice = dice(seed);
            for _ in 0..60 {
                let n = dice(3) as usize;
                clocks[n].advance(std::time::Duration::from_millis(dice(2_000)));
                let at = &nodes[n];
                let epoch = column(
                    at,
                    "SELECT CAST(epoch AS TEXT) FROM folders WHERE folder_id = 'fn'",
                )
                .await
                .first()
                .map_or(1, |e| e.parse::<u64>().unwrap());
                // Refusals (a device gone, bob not a member) are part of it.
                let _ = match dice(8) {
                    0 => at.write(named_folder("fn")).await,
                    1 => {
                        let session_id = ["s0", "s1", "s2"][n];
                        at.write(named_device(session_id)).await
                    }
                    2 => {
                        at.write(Change::DeviceRename {
                            username: "alice".into(),
                            device_id: "dn".into(),
                            name: ["desk", "work", "home"][dice(3) as usize].into(),
                        })
                        .await
                    }
                    3 if dice(4) == 0 => {
                        at.write(Change::DeviceRemove {
                            username: "alice".into(),
                            device_id: "dn".into(),
                        })
                        .await
                    }
                    4 => at.write(share("fn", "bob", epoch)).await,
                    5 => {
                        let mut unshare = unshare_bob("fn");
                        if let Change::FolderUnshare { epoch: next, .. } = &mut unshare {
                            *next = epoch + 1;
                        }
                        at.write(unshare).await
                    }
                    _ => {
                        ship(at, &nodes[dice(3) as usize]).await;
                        continue;
                    }
                };
            }
            ship_everywhere(&nodes).await;
            same(&[&nodes[0], &nodes[1], &nodes[2]]).await;
            for node in &nodes {
                let epochs = column(
                    node,
                    "SELECT CAST(f.epoch AS TEXT) || ':' || CAST(max(k.epoch) AS TEXT) \
                     FROM folders f JOIN folder_keys k ON k.folder_id = f.folder_id \
                     AND k.username = f.owner GROUP BY f.folder_id",
                )
                .await;
                for pair in &epochs {
                    let (folder, key) = pair.split_once(':').unwrap();
                    assert_eq!(
                        folder, key,
                        "seed {seed}: the folder's epoch, its newest key's"
                    );
                }
            }
        }
    }

    /// alice's folder `folder_id`, made by a named creation.
    fn named_folder(folder_id: &str) -> Change {
        let mut change = folder(folder_id);
        if let Change::FolderCreate { named, .. } = &mut change {
            *named = true;
        }
        change
    }

    /// alice's laptop `dn`, registered by a named creation on `session_id`.
    fn named_device(session_id: &str) -> Change {
        Change::DeviceRegister {
            username: "alice".into(),
            session_id: session_id.into(),
            device_id: "dn".into(),
            named: true,
            name: "laptop".into(),
            mac: "02:00:00:00:00:01".into(),
        }
    }

    #[tokio::test]
    async fn two_chains_ending_in_deletes_show_one_head_whatever_order_they_arrive_in() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = three(dir.path());
        let d = node(dir.path(), "d");
        write(&a, register("alice")).await;
        write(&a, folder("f1")).await;
        for other in [&b, &c, &d] {
            ship(&a, other).await;
        }
        // a and b each create e.txt and delete it again, without hearing of
        // each other; b's delete is the last write of the four.
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(5));
        write(&a, put("e.txt", 1, None)).await;
        pause().await;
        write(&b, put("e.txt", 2, None)).await;
        pause().await;
        write(&a, delete("e.txt", Some(vv_of(&a, "e.txt").await), None)).await;
        pause().await;
        write(&b, delete("e.txt", Some(vv_of(&b, "e.txt").await), None)).await;
        // c hears of a's chain first and d of b's; a and b of the other's.
        ship(&a, &c).await;
        ship(&b, &c).await;
        ship(&b, &d).await;
        ship(&a, &d).await;
        ship(&a, &b).await;
        ship(&b, &a).await;
        // Then everyone hears of everything, the copies made meanwhile too.
        for _ in 0..2 {
            for from in [&a, &b, &c, &d] {
                for to in [&a, &b, &c, &d] {
                    if !std::ptr::eq(from, to) {
                        ship(from, to).await;
                    }
                }
            }
        }
        same(&[&a, &b, &c, &d]).await;
        let shown = column(
            &c,
            "SELECT CAST(deleted AS TEXT) || ':' || COALESCE(device_id, '') FROM entries \
             WHERE path = 'e.txt'",
        )
        .await;
        assert_eq!(shown, ["1:"], "the later delete is shown");
    }

    #[tokio::test]
    async fn a_named_move_or_delete_sent_again_through_either_node_is_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = alice_f1_on_two(dir.path()).await;
        write(&a, put("x.txt", 1, None)).await;
        write(&a, put("y.txt", 2, None)).await;
        ship(&a, &b).await;
        let id = coffer_proto::request::upload_id([7; 16]);
        let mv = |write_id: &Option<String>| Change::Move {
            username: "alice".into(),
            device_id: None,
            folder_id: "f1".into(),
            from: "x.txt".into(),
            to: "z.txt".into(),
            base: None,
            write_id: write_id.clone(),
        };
        let named = Some(id.clone());
        let first = format!("{:?}", a.write(mv(&named)).await.unwrap());
        // Sent again through the same node (its answer was lost): the same
        // answer, not `not_found` for a path that has moved.
        assert_eq!(format!("{:?}", a.write(mv(&named)).await.unwrap()), first);
        // Sent again through b before a's move reached it: b moves too, and
        // the two moves merge as one, with no conflict copy of z.txt.
        write(&b, mv(&named)).await;
        both_ways(&a, &b).await;
        assert_eq!(files(&a).await, ["y.txt=02020202", "z.txt=01010101"]);
        // Once both moves are everywhere, either node answers the one kept.
        let kept = format!("{:?}", a.write(mv(&named)).await.unwrap());
        assert!(kept.starts_with("Entry("), "{kept}");
        assert_eq!(format!("{:?}", b.write(mv(&named)).await.unwrap()), kept);
        // Unnamed, a move sent again is a new write, refused here.
        assert!(a.write(mv(&None)).await.is_err());
        // A named delete, likewise.
        let rm = |write_id: Option<String>| delete("y.txt", None, write_id);
        let id = Some(coffer_proto::request::upload_id([8; 16]));
        let gone = format!("{:?}", b.write(rm(id.clone())).await.unwrap());
        assert_eq!(
            format!("{:?}", b.write(rm(id.clone())).await.unwrap()),
            gone
        );
        write(&a, rm(id.clone())).await;
        both_ways(&a, &b).await;
        assert_eq!(files(&a).await, ["z.txt=01010101"]);
    }

    #[tokio::test]
    async fn a_record_taken_without_its_chunks_stays_noted_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = alice_f1_on_two(dir.path()).await;
        write(&a, put("x.txt", 1, None)).await;
        ship(&a, &b).await;
        let noted = |store: Store| async move {
            let notes = store.read(super::super::query::unheld).await.unwrap();
            (store, notes)
        };
        let (b, notes) = noted(b).await;
        let seq = a.cursors().await.unwrap()["a"];
        assert_eq!(notes, [("a".to_owned(), seq, [1; 32])]);
        // b restarts before the chunk comes: the note is still there, for
        // its links to acknowledge the record as unheld.
        drop(b);
        let (b, notes) = noted(node(dir.path(), "b")).await;
        assert_eq!(notes.len(), 1);
        fetched(&b, 1).await;
        let (b, notes) = noted(b).await;
        assert!(notes.is_empty(), "{notes:?}");
        // A note whose chunk no version refers to any more goes with
        // collection: the version was superseded, the chunk may never come.
        write(&a, put("y.txt", 2, None)).await;
        ship(&a, &b).await;
        for n in 3..=13 {
            write(&a, put("y.txt", n, Some(&vv_of(&a, "y.txt").await))).await;
        }
        // Eleven versions later the first has left the history (ten kept).
        ship(&a, &b).await;
        let (b, notes) = noted(b).await;
        assert!(
            notes.iter().any(|(_, _, hash)| *hash == [2; 32]),
            "{notes:?}"
        );
        b.write(Change::Collect).await.unwrap();
        let (_, notes) = noted(b).await;
        assert!(
            notes.iter().all(|(_, _, hash)| *hash != [2; 32]),
            "{notes:?}"
        );
    }

    #[tokio::test]
    async fn a_wiped_node_never_counts_a_write_as_one_of_its_earlier_life() {
        let dir = tempfile::tempdir().unwrap();
        // Node a's first database, and b and c.
        let (old, b, c) = (
            node(dir.path(), "a.1111"),
            node(dir.path(), "b"),
            node(dir.path(), "c"),
        );
        write(&old, register("alice")).await;
        write(&old, folder("f1")).await;
        write(&old, put("x.txt", 1, None)).await;
        ship(&old, &b).await;
        ship(&old, &c).await;
        // A second version only c hears of; then a's disk dies.
        let v1 = vv_of(&old, "x.txt").await;
        write(&old, put("x.txt", 2, Some(&v1))).await;
        ship(&old, &c).await;
        drop(old);
        // Rebuilt from b, a writes on top of the first version again.
        let new = node(dir.path(), "a.2222");
        ship(&b, &new).await;
        write(&new, put("x.txt", 3, Some(&v1))).await;
        // Two different writes: concurrent, not one vector for both.
        assert_ne!(vv_of(&new, "x.txt").await, vv_of(&c, "x.txt").await);
        ship(&new, &c).await;
        ship(&c, &new).await;
        ship(&c, &b).await;
        ship(&new, &b).await;
        same(&[&new, &b, &c]).await;
        let listed = files(&c).await;
        assert_eq!(listed.len(), 2, "the file and one copy: {listed:?}");
    }

    #[tokio::test]
    async fn a_node_never_counts_two_writes_of_a_path_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (a, c) = (node(dir.path(), "a"), node(dir.path(), "c"));
        write(&a, register("alice")).await;
        write(&a, folder("f1")).await;
        write(&a, put("x.txt", 1, None)).await;
        ship(&a, &c).await;
        let v1 = vv_of(&a, "x.txt").await;
        // a writes on top of the first version, c after it, at once: c's wins.
        write(&a, put("x.txt", 2, Some(&v1))).await;
        let lost = vv_of(&a, "x.txt").await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        write(&c, put("x.txt", 3, Some(&v1))).await;
        ship(&c, &a).await;
        assert_eq!(files(&a).await.last().unwrap(), "x.txt=03030303");
        // a writes again, on the winner: a counter a never gave before, or
        // the write could carry the vector of another one of a's (the lost
        // one's, once c writes on it in turn).
        let winner = vv_of(&a, "x.txt").await;
        write(&a, put("x.txt", 4, Some(&winner))).await;
        let next = vv_of(&a, "x.txt").await;
        assert!(next.get("a") > lost.get("a"), "{next:?} after {lost:?}");
    }

    #[tokio::test]
    async fn one_upload_committed_through_two_nodes_is_one_version() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = alice_f1_on_two(dir.path()).await;
        let id = [9; 16];
        let first = a.write(put_as("a.txt", 1, None, id)).await.unwrap();
        // Committed again through the same node (its answer was lost): the
        // same version, not a conflict and not a second one.
        let again = a.write(put_as("a.txt", 1, None, id)).await.unwrap();
        assert_eq!(format!("{first:?}"), format!("{again:?}"));
        // The client heard nothing and began the write again through b,
        // sealed anew, before a's version reached b.
        write(&b, put_as("a.txt", 2, None, id)).await;
        let (va, vb) = (vv_of(&a, "a.txt").await, vv_of(&b, "a.txt").await);
        both_ways(&a, &b).await;
        let listed = files(&a).await;
        assert_eq!(listed.len(), 1, "one version, no conflict copy: {listed:?}");
        // Begun once more through either node, it answers that version.
        let settled = format!("{:?}", b.write(put_as("a.txt", 3, None, id)).await.unwrap());
        assert!(settled.starts_with("Entry("), "{settled}");
        assert_eq!(
            settled,
            format!("{:?}", a.write(put_as("a.txt", 4, None, id)).await.unwrap())
        );
        assert_eq!(files(&b).await, listed);
        // A client answered with the vector both nodes dropped for its twin
        // edits on, through either node, as if it had been answered with the
        // one they kept.
        let kept = vv_of(&a, "a.txt").await;
        let twin = if kept == va { vb } else { va };
        assert_ne!(twin, kept);
        write(&a, put("a.txt", 7, Some(&twin))).await;
        both_ways(&a, &b).await;
        assert_eq!(files(&b).await.len(), 1);
        // Another upload made at once still keeps both.
        let v = vv_of(&a, "a.txt").await;
        write(&a, put("a.txt", 5, Some(&v))).await;
        write(&b, put("a.txt", 6, Some(&v))).await;
        both_ways(&a, &b).await;
        assert_eq!(files(&a).await.len(), 2);
    }

    #[tokio::test]
    async fn a_follower_knows_the_chunks_of_records_before_taking_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (node(dir.path(), "a"), node(dir.path(), "b"));
        write(&a, register("alice")).await;
        write(&a, folder("f1")).await;
        write(&a, put("x.txt", 1, None)).await;
        write(&a, put("y.txt", 2, None)).await;
        let origin = a.cursors().await.unwrap().into_keys().next().unwrap();
        let records = a.records_after(origin, 0, 100).await.unwrap();
        let wanted = |held| chunks_of(&records, &held);
        assert_eq!(
            wanted(b.cursors().await.unwrap()),
            [[1; 32], [2; 32]].into()
        );
        // Taken: nothing left to fetch ahead, but both lacking here.
        let done = ship(&a, &b).await;
        assert!(wanted(b.cursors().await.unwrap()).is_empty());
        assert_eq!(done.applied, records.len());
        let settled =
            |hashes: Vec<[u8; 32]>| b.read(move |conn| super::super::query::settled(conn, hashes));
        assert_eq!(
            settled(vec![[1; 32], [2; 32], [9; 32]]).await.unwrap(),
            [[9; 32]].into(),
            "a chunk no version refers to is not missing"
        );
        // One comes: it is no longer missing.
        fetched(&b, 1).await;
        assert_eq!(
            settled(vec![[1; 32], [2; 32]]).await.unwrap(),
            [[1; 32]].into()
        );
    }

    #[tokio::test]
    async fn a_commit_retried_after_its_version_lost_answers_its_conflict_copy() {
        use super::super::change::Applied;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = alice_f1_on_two(dir.path()).await;
        let id = [7; 16];
        write(&b, put_as("a.txt", 2, None, id)).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        // Concurrent and later: a's takes the path, b's becomes a copy.
        write(&a, put("a.txt", 1, None)).await;
        both_ways(&a, &b).await;
        let listed = files(&b).await;
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(listed[1], "a.txt=01010101");
        let copy = |applied: Applied| match applied {
            Applied::Entry(e) => (e.path, e.meta.as_bytes().to_vec()),
            other => panic!("{other:?}"),
        };
        // Its commit retried (its answer was lost) answers the copy, not the
        // version that took its number; begun again, through either node,
        // the same, and no second write.
        let retried = b
            .write(Change::UploadCommit {
                username: "alice".into(),
                upload_id: coffer_proto::request::upload_id(id),
                meta: None,
            })
            .await
            .unwrap();
        let (path, meta) = copy(retried);
        assert!(path.starts_with("a.conflict-"), "{path}");
        assert_eq!(meta, [2; 4]);
        for node in [&a, &b] {
            let again = copy(node.write(put_as("a.txt", 3, None, id)).await.unwrap());
            assert_eq!(again, (path.clone(), vec![2; 4]));
        }
        assert_eq!(files(&a).await, listed);
        assert_eq!(files(&b).await, listed);
    }

    #[tokio::test]
    async fn a_directory_made_on_two_nodes_at_once_is_one_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = alice_f1_on_two(dir.path()).await;
        let mkdir = || Change::Mkdir {
            username: "alice".into(),
            device_id: None,
            folder_id: "f1".into(),
            path: "photos".into(),
        };
        write(&a, mkdir()).await;
        write(&b, mkdir()).await;
        both_ways(&a, &b).await;
        assert_eq!(files(&a).await, ["photos="]);
    }

    #[tokio::test]
    async fn a_peer_row_of_the_wrong_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = node(dir.path(), "a");
        let bad_named = |table: &str, key: Vec<Cell>, op: RowOp, named: bool| Record {
            origin: "b".into(),
            seq: 1,
            hlc: Hlc {
                wall_ms: 1,
                logical: 0,
            },
            payload: serde_json::to_value(Payload {
                kind: "register".into(),
                rows: vec![RowWrite {
                    table: table.into(),
                    key,
                    op,
                    named,
                }],
                events: vec![],
            })
            .unwrap(),
        };
        let bad = |table: &str, key: Vec<Cell>, op: RowOp| bad_named(table, key, op, false);
        for record in [
            // Only an insert is a named creation's.
            bad_named("users", vec![Cell::Text("x".into())], RowOp::Deleted, true),
            bad("changes", vec![Cell::Int(1)], RowOp::Deleted),
            bad("users", vec![], RowOp::Deleted),
            bad(
                "users",
                vec![Cell::Text("x".into())],
                RowOp::Inserted(vec![]),
            ),
            bad(
                "users",
                vec![Cell::Text("x".into())],
                RowOp::Updated {
                    of: None,
                    set: vec![("username".into(), Cell::Text("y".into()))],
                },
            ),
        ] {
            let done = a.replicate(vec![record]).await.unwrap();
            assert!(
                matches!(done.stopped, Some(Stopped::Refused { .. })),
                "{:?}",
                done.stopped
            );
        }
        assert_eq!(a.cursors().await.unwrap().get("b"), None);
    }
}
