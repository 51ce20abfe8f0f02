//! The client's home: everything one device keeps, in one SQLite file
//! (`DIR/state.db`, mode 0600, in a 0700 directory).
//!
//! - the account: server, user, session token, device;
//! - the user's private key (PKCS#8 DER) — unwrapped, as an SSH key is, so
//!   that commands need no password; `logout` deletes it;
//! - folders attached to local directories (for the sync daemon);
//! - uploads in progress, so that `put` run again resumes where it stopped.

use std::path::{Path, PathBuf};

use coffer_proto::types::{FileId, Token, VersionVector};
use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

/// Why the home could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// The directory or file could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("client state: {0}")]
    Db(#[from] rusqlite::Error),
    /// The sync index holds something it cannot use.
    #[error(transparent)]
    Index(#[from] crate::sync::index::IndexError),
}

/// The signed-in account of this home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The server (or balancer) it signed in through.
    pub server: String,
    /// The user.
    pub username: String,
    /// Session token.
    pub token: Token,
    /// The session's id.
    pub session_id: String,
    /// This device, once registered.
    pub device_id: Option<String>,
    /// This device's name.
    pub device_name: Option<String>,
}

/// An upload that `put` began and may resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The server's upload id.
    pub upload_id: String,
    /// Where it goes.
    pub folder_id: String,
    /// Its path there.
    pub path: String,
    /// The local file.
    pub local: PathBuf,
    /// The local file's size when the upload began.
    pub size: u64,
    /// Its modification time (ns) when the upload began.
    pub mtime_ns: i64,
    /// The file's identity.
    pub file_id: FileId,
    /// The file key (raw), to seal the chunks still missing.
    pub file_key: Zeroizing<[u8; 32]>,
    /// The file key wrapped under the folder key.
    pub wrapped_file_key: Vec<u8>,
    /// Folder key epoch.
    pub epoch: u64,
    /// Plaintext chunk size.
    pub chunk_size: u32,
    /// The version the upload started from.
    pub base: Option<VersionVector>,
}

/// A private key as PKCS#8 DER, wiped from memory when dropped.
pub type PrivateKeyDer = Zeroizing<Vec<u8>>;

/// The client's state on disk.
#[derive(Debug)]
pub struct Home {
    dir: PathBuf,
    db: Connection,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS account (
    one          INTEGER PRIMARY KEY CHECK (one = 1),
    server       TEXT NOT NULL,
    username     TEXT NOT NULL,
    token        TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    device_id    TEXT,
    device_name  TEXT,
    private_key  BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS attachments (
    folder_id TEXT PRIMARY KEY,
    path      TEXT NOT NULL UNIQUE
) STRICT;
CREATE TABLE IF NOT EXISTS uploads (
    folder_id        TEXT NOT NULL,
    path             TEXT NOT NULL,
    upload_id        TEXT NOT NULL,
    local            TEXT NOT NULL,
    size             INTEGER NOT NULL,
    mtime_ns         INTEGER NOT NULL,
    file_id          BLOB NOT NULL,
    file_key         BLOB NOT NULL,
    wrapped_file_key BLOB NOT NULL,
    epoch            INTEGER NOT NULL,
    chunk_size       INTEGER NOT NULL,
    base             TEXT,
    PRIMARY KEY (folder_id, path)
) STRICT;
"#;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs a statement, prepared once per connection and cached (the sync
/// daemon runs the same few for every file).
pub(crate) fn exec(
    db: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    db.prepare_cached(sql)?.execute(params)
}

/// Runs a query for one row, prepared once per connection and cached.
pub(crate) fn one<T>(
    db: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    db.prepare_cached(sql)?.query_row(params, f)
}

impl Home {
    /// Opens (creating) the home directory and its state.
    pub fn open(dir: &Path) -> Result<Home, HomeError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        let path = dir.join("state.db");
        let db = Connection::open(&path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&path))?;
        }
        db.pragma_update(None, "journal_mode", "WAL")?;
        // In WAL mode NORMAL syncs at checkpoints, not at every commit: a
        // commit survives the process being killed (it is in the OS's hands),
        // and only a power loss may take the last few — which the next scan
        // finds again, since the disk is compared with the index.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        // The daemon runs the same few dozen statements for every file.
        db.set_prepared_statement_cache_capacity(64);
        db.execute_batch(SCHEMA)?;
        db.execute_batch(crate::sync::queue::SCHEMA)?;
        db.execute_batch(crate::sync::index::SCHEMA)?;
        db.execute_batch(crate::sync::state::SCHEMA)?;
        Ok(Home {
            dir: dir.to_owned(),
            db,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A transaction over the home's state: the index, queue and state
    /// writes made until it is committed land together (one commit instead
    /// of one each); dropped uncommitted, none of them do.
    pub fn batch(&self) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        self.db.unchecked_transaction()
    }

    /// What the sync daemon last saw of each synced path.
    pub fn index(&self) -> crate::sync::index::Index<'_> {
        crate::sync::index::Index::new(&self.db)
    }

    /// The sync daemon's cursor, reconciled folders and alerts.
    pub fn sync_state(&self) -> crate::sync::state::State<'_> {
        crate::sync::state::State::new(&self.db)
    }

    /// Local changes waiting to be sent by the sync daemon.
    pub fn queue(&self) -> crate::sync::queue::Queue<'_> {
        crate::sync::queue::Queue::new(&self.db)
    }

    /// The account and private key, if signed in.
    pub fn account(&self) -> Result<Option<(Account, PrivateKeyDer)>, HomeError> {
        Ok(self
            .db
            .query_row(
                "SELECT server, username, token, session_id, device_id, device_name, private_key FROM account",
                [],
                |r| {
                    Ok((
                        Account {
                            server: r.get(0)?,
                            username: r.get(1)?,
                            token: Token(r.get(2)?),
                            session_id: r.get(3)?,
                            device_id: r.get(4)?,
                            device_name: r.get(5)?,
                        },
                        Zeroizing::new(r.get::<_, Vec<u8>>(6)?),
                    ))
                },
            )
            .optional()?)
    }

    /// Records the signed-in account (replacing any other).
    pub fn set_account(&self, account: &Account, private_key_der: &[u8]) -> Result<(), HomeError> {
        self.db.execute(
            "INSERT OR REPLACE INTO account (one, server, username, token, session_id, device_id, device_name, \
             private_key) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                account.server,
                account.username,
                account.token.expose(),
                account.session_id,
                account.device_id,
                account.device_name,
                private_key_der
            ],
        )?;
        Ok(())
    }

    /// Replaces the session token (after `refresh`).
    pub fn set_token(&self, token: &Token) -> Result<(), HomeError> {
        self.db
            .execute("UPDATE account SET token = ?1", [token.expose()])?;
        Ok(())
    }

    /// Records this device.
    pub fn set_device(&self, device_id: &str, name: &str) -> Result<(), HomeError> {
        self.db.execute(
            "UPDATE account SET device_id = ?1, device_name = ?2",
            params![device_id, name],
        )?;
        Ok(())
    }

    /// Forgets the account, its token, its private key and uploads in
    /// progress. Attachments stay; the next login finds this device again by
    /// its MAC.
    pub fn sign_out(&self) -> Result<(), HomeError> {
        self.db
            .execute_batch("DELETE FROM account; DELETE FROM uploads;")?;
        // Overwrite freed pages so that the private key does not linger on disk.
        self.db.execute_batch("VACUUM")?;
        Ok(())
    }

    /// Attaches a folder to a local directory.
    pub fn attach(&self, folder_id: &str, path: &Path) -> Result<(), HomeError> {
        self.db.execute(
            "INSERT OR REPLACE INTO attachments (folder_id, path) VALUES (?1, ?2)",
            params![folder_id, path.to_string_lossy()],
        )?;
        Ok(())
    }

    /// Detaches a folder; whether it was attached.
    pub fn detach(&self, folder_id: &str) -> Result<bool, HomeError> {
        Ok(self
            .db
            .execute("DELETE FROM attachments WHERE folder_id = ?1", [folder_id])?
            > 0)
    }

    /// Every attached folder and its directory.
    pub fn attachments(&self) -> Result<Vec<(String, PathBuf)>, HomeError> {
        let mut statement = self
            .db
            .prepare("SELECT folder_id, path FROM attachments ORDER BY folder_id")?;
        let rows = statement.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                PathBuf::from(r.get::<_, String>(1)?),
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Where a folder is attached.
    pub fn attachment(&self, folder_id: &str) -> Result<Option<PathBuf>, HomeError> {
        Ok(self
            .db
            .query_row(
                "SELECT path FROM attachments WHERE folder_id = ?1",
                [folder_id],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(PathBuf::from))
    }

    /// The upload in progress to `folder_id:path`, if any.
    pub fn pending_upload(
        &self,
        folder_id: &str,
        path: &str,
    ) -> Result<Option<PendingUpload>, HomeError> {
        // Asked before every `put`, the daemon's included.
        Ok(one(
                &self.db,
                "SELECT upload_id, folder_id, path, local, size, mtime_ns, file_id, file_key, wrapped_file_key, \
                 epoch, chunk_size, base FROM uploads WHERE folder_id = ?1 AND path = ?2",
                [folder_id, path],
                |r| {
                    Ok(PendingUpload {
                        upload_id: r.get(0)?,
                        folder_id: r.get(1)?,
                        path: r.get(2)?,
                        local: PathBuf::from(r.get::<_, String>(3)?),
                        size: r.get::<_, i64>(4)? as u64,
                        mtime_ns: r.get(5)?,
                        file_id: FileId(r.get::<_, Vec<u8>>(6)?.try_into().unwrap_or_default()),
                        file_key: Zeroizing::new(r.get::<_, Vec<u8>>(7)?.try_into().unwrap_or_default()),
                        wrapped_file_key: r.get(8)?,
                        epoch: r.get::<_, i64>(9)? as u64,
                        chunk_size: r.get::<_, i64>(10)? as u32,
                        base: r
                            .get::<_, Option<String>>(11)?
                            .and_then(|b| serde_json::from_str(&b).ok()),
                    })
                },
            )
            .optional()?)
    }

    /// Remembers an upload in progress.
    pub fn save_upload(&self, u: &PendingUpload) -> Result<(), HomeError> {
        self.db.execute(
            "INSERT OR REPLACE INTO uploads (folder_id, path, upload_id, local, size, mtime_ns, file_id, file_key, \
             wrapped_file_key, epoch, chunk_size, base) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                u.folder_id,
                u.path,
                u.upload_id,
                u.local.to_string_lossy(),
                u.size as i64,
                u.mtime_ns,
                &u.file_id.0[..],
                &u.file_key[..],
                u.wrapped_file_key,
                u.epoch as i64,
                u.chunk_size as i64,
                u.base.as_ref().map(|b| serde_json::to_string(b).expect("a version vector serializes"))
            ],
        )?;
        Ok(())
    }

    /// Forgets an upload (committed, or abandoned).
    pub fn forget_upload(&self, folder_id: &str, path: &str) -> Result<(), HomeError> {
        self.db.execute(
            "DELETE FROM uploads WHERE folder_id = ?1 AND path = ?2",
            [folder_id, path],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(&dir.path().join("h")).unwrap();
        assert!(home.account().unwrap().is_none());
        let account = Account {
            server: "127.0.0.1:8000".into(),
            username: "alice".into(),
            token: Token("t".into()),
            session_id: "s".into(),
            device_id: None,
            device_name: None,
        };
        home.set_account(&account, b"der").unwrap();
        home.set_device("d1", "laptop").unwrap();
        let (got, key) = home.account().unwrap().unwrap();
        assert_eq!(
            (got.device_id.as_deref(), &key[..]),
            (Some("d1"), &b"der"[..])
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("h/state.db"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        home.attach("f1", Path::new("/tmp/x")).unwrap();
        assert_eq!(
            home.attachment("f1").unwrap(),
            Some(PathBuf::from("/tmp/x"))
        );
        assert!(home.detach("f1").unwrap());
        home.sign_out().unwrap();
        assert!(home.account().unwrap().is_none());
    }
}
