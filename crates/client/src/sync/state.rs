//! What the daemon remembers between runs besides the index and the queue,
//! in the home's SQLite: the event cursor it has applied up to, which
//! folders it has reconciled in full at least once, and the alerts a user
//! should see (conflicts, invitations, errors) — logged as they happen and
//! kept for `coffer status` and the dashboard.

use rusqlite::{Connection, OptionalExtension, params};

use crate::home::{exec, one};

/// The tables, created with the home's state.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sync_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS sync_folders (
    folder_id TEXT PRIMARY KEY,
    listed    INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS sync_alerts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    folder_id  TEXT,
    kind       TEXT NOT NULL CHECK (kind IN ('conflict', 'viewer_edit', 'invite', 'error')),
    path       TEXT,
    message    TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
"#;

/// Now, in Unix milliseconds (an alert's time).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Alerts kept; older ones are dropped as new ones come.
const MAX_ALERTS: i64 = 10_000;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Both sides changed a file; the local version was kept beside it.
    Conflict,
    /// A viewer changed a file locally; it is kept and not uploaded.
    ViewerEdit,
    /// An invitation to a folder arrived.
    Invite,
    /// Something failed and will be retried.
    Error,
}

impl AlertKind {
    fn as_str(self) -> &'static str {
        match self {
            AlertKind::Conflict => "conflict",
            AlertKind::ViewerEdit => "viewer_edit",
            AlertKind::Invite => "invite",
            AlertKind::Error => "error",
        }
    }

    fn parse(s: &str) -> AlertKind {
        match s {
            "conflict" => AlertKind::Conflict,
            "viewer_edit" => AlertKind::ViewerEdit,
            "invite" => AlertKind::Invite,
            _ => AlertKind::Error,
        }
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Alert {
    /// Its number.
    pub id: i64,
    /// The folder, when it concerns one.
    pub folder_id: Option<String>,
    /// What it is.
    pub kind: AlertKind,
    /// The path, when it concerns one.
    pub path: Option<String>,
    /// What happened.
    pub message: String,
    /// When.
    pub created_ms: i64,
}

/// The daemon's memory, over the home's database.
#[derive(Debug)]
pub struct State<'a> {
    db: &'a Connection,
}

impl<'a> State<'a> {
    pub(crate) fn new(db: &'a Connection) -> Self {
        State { db }
    }

    /// The last event cursor applied.
    pub fn cursor(&self) -> rusqlite::Result<Option<String>> {
        one(
            self.db,
            "SELECT value FROM sync_state WHERE key = 'cursor'",
            [],
            |r| r.get(0),
        )
        .optional()
    }

    /// Remembers the last event cursor applied.
    pub fn set_cursor(&self, cursor: &str) -> rusqlite::Result<()> {
        exec(
            self.db,
            "INSERT INTO sync_state (key, value) VALUES ('cursor', ?1)
             ON CONFLICT (key) DO UPDATE SET value = ?1",
            [cursor],
        )?;
        Ok(())
    }

    /// Whether `folder_id` was reconciled with a full listing.
    pub fn listed(&self, folder_id: &str) -> rusqlite::Result<bool> {
        Ok(one(
            self.db,
            "SELECT listed FROM sync_folders WHERE folder_id = ?1",
            [folder_id],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(false))
    }

    /// Records that `folder_id` was reconciled with a full listing.
    pub fn set_listed(&self, folder_id: &str) -> rusqlite::Result<()> {
        exec(
            self.db,
            "INSERT INTO sync_folders (folder_id, listed) VALUES (?1, 1)
             ON CONFLICT (folder_id) DO UPDATE SET listed = 1",
            [folder_id],
        )?;
        Ok(())
    }

    /// Forgets every folder's full reconciliation (the cursor they were
    /// followed from is no longer valid).
    pub fn forget_listed(&self) -> rusqlite::Result<()> {
        exec(self.db, "DELETE FROM sync_folders", []).map(drop)
    }

    /// Records an alert, dropping the oldest beyond the bound.
    pub fn alert(
        &self,
        folder_id: Option<&str>,
        kind: AlertKind,
        path: Option<&str>,
        message: &str,
        now_ms: i64,
    ) -> rusqlite::Result<()> {
        exec(
            self.db,
            "INSERT INTO sync_alerts (folder_id, kind, path, message, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![folder_id, kind.as_str(), path, message, now_ms],
        )?;
        exec(
            self.db,
            "DELETE FROM sync_alerts WHERE id <= (SELECT MAX(id) FROM sync_alerts) - ?1",
            [MAX_ALERTS],
        )?;
        Ok(())
    }

    /// The newest `limit` alerts, newest first.
    pub fn alerts(&self, limit: usize) -> rusqlite::Result<Vec<Alert>> {
        let mut statement = self.db.prepare(
            "SELECT id, folder_id, kind, path, message, created_ms FROM sync_alerts
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = statement.query_map([limit as i64], |r| {
            Ok(Alert {
                id: r.get(0)?,
                folder_id: r.get(1)?,
                kind: AlertKind::parse(&r.get::<_, String>(2)?),
                path: r.get(3)?,
                message: r.get(4)?,
                created_ms: r.get(5)?,
            })
        })?;
        rows.collect()
    }

    /// Whether an alert of `kind` about `path` in `folder_id` is kept.
    pub fn has_alert(
        &self,
        folder_id: &str,
        kind: AlertKind,
        path: &str,
    ) -> rusqlite::Result<bool> {
        one(
            self.db,
            "SELECT EXISTS (SELECT 1 FROM sync_alerts WHERE folder_id = ?1 AND kind = ?2 AND path = ?3)",
            params![folder_id, kind.as_str(), path],
            |r| r.get(0),
        )
    }

    /// Alerts of `kind` for `folder_id`.
    pub fn count(&self, folder_id: &str, kind: AlertKind) -> rusqlite::Result<u64> {
        one(
            self.db,
            "SELECT COUNT(*) FROM sync_alerts WHERE folder_id = ?1 AND kind = ?2",
            params![folder_id, kind.as_str()],
            |r| r.get::<_, i64>(0).map(|n| n.max(0) as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_listing_and_alerts_persist() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        let state = State::new(&db);
        assert_eq!(state.cursor().unwrap(), None);
        state.set_cursor("e5").unwrap();
        state.set_cursor("e9").unwrap();
        assert_eq!(state.cursor().unwrap().as_deref(), Some("e9"));
        assert!(!state.listed("f").unwrap());
        state.set_listed("f").unwrap();
        state.set_listed("f").unwrap();
        assert!(state.listed("f").unwrap());
        state
            .alert(
                Some("f"),
                AlertKind::Conflict,
                Some("a.txt"),
                "both changed",
                1,
            )
            .unwrap();
        state
            .alert(None, AlertKind::Invite, None, "bob invites you", 2)
            .unwrap();
        assert_eq!(state.count("f", AlertKind::Conflict).unwrap(), 1);
        assert_eq!(state.count("f", AlertKind::Error).unwrap(), 0);
        let alerts = state.alerts(10).unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].kind, AlertKind::Invite);
        assert_eq!(alerts[1].path.as_deref(), Some("a.txt"));
    }

    #[test]
    fn alerts_are_bounded() {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        let state = State::new(&db);
        for i in 0..(MAX_ALERTS + 5) {
            state
                .alert(Some("f"), AlertKind::Error, None, "retrying", i)
                .unwrap();
        }
        assert_eq!(
            state.count("f", AlertKind::Error).unwrap(),
            MAX_ALERTS as u64
        );
        assert_eq!(state.alerts(1).unwrap()[0].created_ms, MAX_ALERTS + 4);
    }
}
