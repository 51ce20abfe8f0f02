//! Local changes waiting to be sent, in the home's SQLite (the design's
//! `sync_queue.json`, made transactional): every change is committed before
//! the daemon acts on it, so a crash or `kill -9` loses none, and an entry
//! leaves the queue only once the server has acknowledged it.
//!
//! Entering a change coalesces it with what waits for the same path:
//! - a delete cancels waiting creates and modifies of that path (their
//!   content is gone; sending it would only be undone);
//! - a create or modify while one already waits for the path adds nothing
//!   (the sender reads the file as it is when it sends);
//! - a change identical to the last one waiting for its paths adds nothing
//!   (a rescan reporting again what was not sent yet);
//! - everything else is appended. Entries leave in the order they came, and
//!   [`Queue::ready`] never hands out an entry while an earlier one for the
//!   same path (or, for a move, either path) waits — so the events for one
//!   path are applied in order.

use rusqlite::{Connection, OptionalExtension, params};

use crate::home::{exec, one};

/// The tables, created with the home's state.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sync_queue (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    folder_id  TEXT NOT NULL,
    op         TEXT NOT NULL CHECK (op IN ('put', 'delete', 'move', 'mkdir', 'rmdir')),
    path       TEXT NOT NULL,
    to_path    TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
) STRICT;
-- One index per path column, so that "path = ? OR to_path = ?" is two
-- index searches (SQLite's multi-index OR), not a scan of the whole queue
-- per change entered.
CREATE INDEX IF NOT EXISTS sync_queue_by_path ON sync_queue (path);
CREATE INDEX IF NOT EXISTS sync_queue_by_to ON sync_queue (to_path);
"#;

/// A change to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Upload the file at the path as it is now (created or modified).
    Put(String),
    /// Delete the file at the path.
    Delete(String),
    /// Move a file.
    Move {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Create a directory.
    Mkdir(String),
    /// Remove a directory.
    Rmdir(String),
}

impl Op {
    fn columns(&self) -> (&'static str, &str, Option<&str>) {
        match self {
            Op::Put(p) => ("put", p, None),
            Op::Delete(p) => ("delete", p, None),
            Op::Move { from, to } => ("move", from, Some(to)),
            Op::Mkdir(p) => ("mkdir", p, None),
            Op::Rmdir(p) => ("rmdir", p, None),
        }
    }

    fn from_columns(op: &str, path: String, to: Option<String>) -> rusqlite::Result<Op> {
        Ok(match (op, to) {
            ("put", _) => Op::Put(path),
            ("delete", _) => Op::Delete(path),
            ("move", Some(to)) => Op::Move { from: path, to },
            ("mkdir", _) => Op::Mkdir(path),
            ("rmdir", _) => Op::Rmdir(path),
            (other, _) => {
                return Err(rusqlite::Error::InvalidColumnType(
                    2,
                    format!("queue op {other:?}"),
                    rusqlite::types::Type::Text,
                ));
            }
        })
    }

    /// The paths it touches.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Op::Move { from, to } => vec![from, to],
            Op::Put(p) | Op::Delete(p) | Op::Mkdir(p) | Op::Rmdir(p) => vec![p],
        }
    }
}

/// One waiting change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the queue.
    pub seq: i64,
    /// The folder.
    pub folder_id: String,
    /// The change.
    pub op: Op,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// The queue, over the home's database.
#[derive(Debug)]
pub struct Queue<'a> {
    db: &'a Connection,
}

impl<'a> Queue<'a> {
    pub(crate) fn new(db: &'a Connection) -> Self {
        Queue { db }
    }

    /// Enters a change (coalesced as the module says), committed when this returns.
    pub fn push(&self, folder_id: &str, op: &Op) -> rusqlite::Result<()> {
        let tx = self.db.unchecked_transaction()?;
        let (kind, path, to) = op.columns();
        match op {
            Op::Delete(_) => {
                // Only puts since the last move to or from the path: an
                // earlier put may be what that move carries.
                exec(
                    &tx,
                    "DELETE FROM sync_queue WHERE folder_id = ?1 AND path = ?2 AND op = 'put'
                     AND seq > COALESCE((SELECT MAX(seq) FROM sync_queue WHERE folder_id = ?1
                         AND op = 'move' AND (path = ?2 OR to_path = ?2)), 0)",
                    params![folder_id, path],
                )?;
            }
            Op::Put(_) => {
                let waiting: Option<i64> = one(
                    &tx,
                    "SELECT seq FROM sync_queue WHERE folder_id = ?1 AND path = ?2 AND op = 'put'
                         AND seq > COALESCE((SELECT MAX(seq) FROM sync_queue WHERE folder_id = ?1
                             AND (path = ?2 OR to_path = ?2) AND op != 'put'), 0)",
                    params![folder_id, path],
                    |r| r.get(0),
                )
                .optional()?;
                if waiting.is_some() {
                    return tx.commit();
                }
            }
            Op::Move { .. } | Op::Mkdir(_) | Op::Rmdir(_) => {}
        }
        // The same change reported again (a rescan before it was sent) is
        // already waiting: the last entry for its paths is this very one.
        let last: Option<(String, String, Option<String>)> = one(
            &tx,
            "SELECT op, path, to_path FROM sync_queue WHERE folder_id = ?1
                 AND (path IN (?2, ?3) OR to_path IN (?2, ?3)) ORDER BY seq DESC LIMIT 1",
            params![folder_id, path, to.unwrap_or(path)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
        if last.is_some_and(|(k, p, t)| k == kind && p == path && t.as_deref() == to) {
            return tx.commit();
        }
        exec(
            &tx,
            "INSERT INTO sync_queue (folder_id, op, path, to_path) VALUES (?1, ?2, ?3, ?4)",
            params![folder_id, kind, path, to],
        )?;
        tx.commit()
    }

    /// Up to `limit` entries that may be sent now, oldest first: none has an
    /// earlier entry waiting for any of its paths.
    pub fn ready(&self, limit: usize) -> rusqlite::Result<Vec<Entry>> {
        let mut statement = self.db.prepare(
            "SELECT seq, folder_id, op, path, to_path, attempts, last_error FROM sync_queue ORDER BY seq",
        )?;
        let mut rows = statement.query([])?;
        let mut busy: std::collections::HashSet<(String, String)> =
            std::collections::HashSet::new();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let entry = Entry {
                seq: row.get(0)?,
                folder_id: row.get(1)?,
                op: Op::from_columns(&row.get::<_, String>(2)?, row.get(3)?, row.get(4)?)?,
                attempts: row.get(5)?,
                last_error: row.get(6)?,
            };
            let keys: Vec<(String, String)> = entry
                .op
                .paths()
                .into_iter()
                .map(|p| (entry.folder_id.clone(), p.to_owned()))
                .collect();
            let free = keys.iter().all(|k| !busy.contains(k));
            busy.extend(keys);
            if free {
                out.push(entry);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The server acknowledged it: it leaves the queue.
    pub fn done(&self, seq: i64) -> rusqlite::Result<()> {
        exec(self.db, "DELETE FROM sync_queue WHERE seq = ?1", [seq]).map(drop)
    }

    /// An attempt failed: it stays, with the reason.
    pub fn failed(&self, seq: i64, why: &str) -> rusqlite::Result<()> {
        exec(
            self.db,
            "UPDATE sync_queue SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
            params![seq, why],
        )
        .map(drop)
    }

    /// Entries waiting for `folder_id` that failed at least once.
    pub fn failing(&self, folder_id: &str) -> rusqlite::Result<u64> {
        one(
            self.db,
            "SELECT COUNT(*) FROM sync_queue WHERE folder_id = ?1 AND attempts > 0",
            [folder_id],
            |r| r.get::<_, i64>(0).map(|n| n.max(0) as u64),
        )
    }

    /// Entries waiting for `folder_id`.
    pub fn pending(&self, folder_id: &str) -> rusqlite::Result<u64> {
        one(
            self.db,
            "SELECT COUNT(*) FROM sync_queue WHERE folder_id = ?1",
            [folder_id],
            |r| r.get::<_, i64>(0).map(|n| n.max(0) as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn db() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        db
    }

    fn ops(q: &Queue<'_>) -> Vec<Op> {
        let mut statement =
            q.db.prepare("SELECT op, path, to_path FROM sync_queue ORDER BY seq")
                .unwrap();
        statement
            .query_map([], |r| {
                Op::from_columns(&r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn put(p: &str) -> Op {
        Op::Put(p.into())
    }

    fn mv(from: &str, to: &str) -> Op {
        Op::Move {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn a_delete_cancels_waiting_puts_and_puts_coalesce() {
        let db = db();
        let q = Queue::new(&db);
        q.push("f", &put("a")).unwrap();
        q.push("f", &put("a")).unwrap();
        q.push("f", &put("b")).unwrap();
        assert_eq!(ops(&q), [put("a"), put("b")]);
        q.push("f", &Op::Delete("a".into())).unwrap();
        assert_eq!(ops(&q), [put("b"), Op::Delete("a".into())]);
        // Created again after the delete: a new put, after it.
        q.push("f", &put("a")).unwrap();
        assert_eq!(ops(&q), [put("b"), Op::Delete("a".into()), put("a")]);
        // Other folders are other paths.
        q.push("g", &Op::Delete("b".into())).unwrap();
        assert_eq!(q.pending("f").unwrap(), 3);
        assert_eq!(q.pending("g").unwrap(), 1);
    }

    #[test]
    fn a_delete_keeps_the_put_a_move_carries() {
        let db = db();
        let q = Queue::new(&db);
        q.push("f", &put("a")).unwrap();
        q.push("f", &mv("a", "b")).unwrap();
        q.push("f", &put("a")).unwrap();
        q.push("f", &Op::Delete("a".into())).unwrap();
        assert_eq!(ops(&q), [put("a"), mv("a", "b"), Op::Delete("a".into())]);
    }

    #[test]
    fn entries_for_one_path_leave_in_order() {
        let db = db();
        let q = Queue::new(&db);
        q.push("f", &put("a")).unwrap();
        q.push("f", &mv("a", "b")).unwrap();
        q.push("f", &put("b")).unwrap();
        q.push("f", &put("c")).unwrap();
        let ready: Vec<Op> = q.ready(10).unwrap().into_iter().map(|e| e.op).collect();
        assert_eq!(
            ready,
            [put("a"), put("c")],
            "the move waits for the put of a"
        );
        let first = q.ready(1).unwrap().remove(0);
        q.failed(first.seq, "unavailable").unwrap();
        let again = q.ready(1).unwrap().remove(0);
        assert_eq!(
            (again.seq, again.attempts, again.last_error.as_deref()),
            (first.seq, 1, Some("unavailable"))
        );
        q.done(first.seq).unwrap();
        let ready: Vec<Op> = q.ready(10).unwrap().into_iter().map(|e| e.op).collect();
        assert_eq!(ready, [mv("a", "b"), put("c")]);
    }

    #[test]
    fn the_queue_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(SCHEMA).unwrap();
            Queue::new(&db).push("f", &put("a")).unwrap();
        }
        let db = Connection::open(&path).unwrap();
        db.execute_batch(SCHEMA).unwrap();
        assert_eq!(ops(&Queue::new(&db)), [put("a")]);
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        let path = prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned);
        prop_oneof![
            path.clone().prop_map(Op::Put),
            path.clone().prop_map(Op::Delete),
            (path.clone(), path).prop_map(|(from, to)| Op::Move { from, to }),
        ]
    }

    proptest! {
        /// Whatever the changes, draining the queue leaves each path as the
        /// changes in order would: the last thing entered for a path wins
        /// (a put after a delete is sent, a delete after a put is sent), and
        /// every entry handed out by `ready` is the oldest for its paths.
        #[test]
        fn draining_keeps_the_last_word_per_path(ops_in in proptest::collection::vec(arb_op(), 0..30)) {
            let db = db();
            let q = Queue::new(&db);
            for op in &ops_in {
                q.push("f", op).unwrap();
            }
            let mut sent = Vec::new();
            loop {
                let ready = q.ready(3).unwrap();
                if ready.is_empty() { break; }
                for e in ready {
                    // No earlier entry waits for its paths.
                    for p in e.op.paths() {
                        let earlier: i64 = db.query_row(
                            "SELECT COUNT(*) FROM sync_queue WHERE seq < ?1 AND (path = ?2 OR to_path = ?2)",
                            params![e.seq, p], |r| r.get(0)).unwrap();
                        prop_assert_eq!(earlier, 0);
                    }
                    q.done(e.seq).unwrap();
                    sent.push(e.op);
                }
            }
            // The last put/delete entered for a path is the last one sent for it.
            for path in ["a", "b", "c"] {
                let last_in = ops_in.iter().rev().find_map(|op| match op {
                    Op::Put(p) | Op::Delete(p) if p == path => Some(op.clone()),
                    _ => None,
                });
                let last_out = sent.iter().rev().find_map(|op| match op {
                    Op::Put(p) | Op::Delete(p) if p == path => Some(op.clone()),
                    _ => None,
                });
                prop_assert_eq!(last_in, last_out, "{}", path);
            }
        }
    }
}
