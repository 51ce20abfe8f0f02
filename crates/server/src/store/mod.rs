//! The server's state: one SQLite database (WAL) and the change log in it.
//!
//! Every state change is a [`Change`] sent to **one writer** task, which
//! applies it inside a transaction together with the change-log record that
//! describes it — the one place through which all state flows, and what
//! replication will ship. The writer takes whatever changes are waiting (up to
//! [`MAX_BATCH`]) and commits them in one transaction, one fsync: group commit.
//! Each change runs in its own savepoint, so one refused change does not undo
//! its neighbours. Reads use a small pool of read-only connections, which WAL
//! lets run beside the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coffer_net::SharedClock;
use coffer_proto::Event;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::warn;

use crate::error::{Error, Result};
use coffer_net::blocking;

pub(crate) mod change;
pub(crate) mod query;
mod schema;

pub(crate) use change::{Applied, Change};

/// Most changes committed in one transaction.
pub(crate) const MAX_BATCH: usize = 256;

/// Most idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory was written by a newer build.
    #[error(
        "the data directory holds schema version {found}, newer than the {supported} this build understands; \
         run the newer coffer-server or restore a backup"
    )]
    NewerSchema {
        /// The schema version found.
        found: i64,
        /// The newest this build reads.
        supported: i64,
    },
    /// SQLite failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The directory could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// What the writer needs besides the changes.
#[derive(Debug, Clone)]
pub(crate) struct WriterContext {
    /// This node, the origin of its change-log records.
    pub(crate) node_id: String,
    /// Calendar time.
    pub(crate) clock: SharedClock,
    /// How many versions of each path to keep.
    pub(crate) keep_versions: u32,
    /// The chunk files, which collection deletes.
    pub(crate) chunks: Arc<crate::chunks::ChunkStore>,
}

/// An event as recorded: its id (the subscriber's cursor), its audience, and
/// what subscribers are told.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredEvent {
    pub(crate) id: i64,
    /// Told to the folder's active members.
    pub(crate) folder_id: Option<String>,
    /// Told to this user.
    pub(crate) username: Option<String>,
    pub(crate) event: Event,
}

/// Events kept for connections that fall behind before they must catch up
/// from the database.
const EVENT_BUFFER: usize = 4096;

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Applied>>,
}

/// Handle to the database. Cheap to share behind an `Arc`.
pub(crate) struct Store {
    db_path: PathBuf,
    readers: Arc<Mutex<Vec<Connection>>>,
    writer: mpsc::Sender<Job>,
    events: broadcast::Sender<std::sync::Arc<StoredEvent>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db_path", &self.db_path)
            .finish_non_exhaustive()
    }
}

/// Runs a statement, prepared once per connection and cached.
pub(crate) fn exec(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Runs a query for one row, prepared once per connection and cached.
pub(crate) fn one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// Statements each connection keeps prepared.
const STATEMENT_CACHE: usize = 128;

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // WAL: readers never block the writer. synchronous=FULL: a commit is on
    // disk when it returns, so an acknowledged write survives power loss too.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

impl Store {
    /// Opens (creating and migrating as needed) `dir/coffer.db` and starts the
    /// writer task. Must be called inside a tokio runtime.
    pub(crate) fn open(dir: &Path, ctx: WriterContext) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let db_path = dir.join("coffer.db");
        let mut conn = Connection::open(&db_path)?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (writer, jobs) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_loop(conn, jobs, ctx, events.clone()));
        Ok(Store {
            db_path,
            readers: Arc::new(Mutex::new(Vec::new())),
            writer,
            events,
        })
    }

    /// Applies one change and returns what it produced. Durable when this returns `Ok`.
    pub(crate) async fn write(&self, change: Change) -> Result<Applied> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job { change, reply })
            .await
            .map_err(|_| Error::Io(std::io::Error::other("the store's writer has stopped")))?;
        answer
            .await
            .map_err(|_| Error::Io(std::io::Error::other("the store's writer dropped a change")))?
    }

    /// Runs a read-only query on a pooled connection.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let pooled = self.readers.lock().expect("reader pool lock").pop();
        let path = self.db_path.clone();
        let pool = self.readers.clone();
        blocking(move || {
            let conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&path)?,
            };
            let result = f(&conn);
            let mut pool = pool.lock().expect("reader pool lock");
            if pool.len() < MAX_IDLE_READERS {
                pool.push(conn);
            }
            result
        })
        .await
    }

    /// Every event as it commits. A receiver that falls more than
    /// [`EVENT_BUFFER`] events behind is told it lagged and must catch up from
    /// the database.
    pub(crate) fn events(&self) -> broadcast::Receiver<std::sync::Arc<StoredEvent>> {
        self.events.subscribe()
    }
}

async fn write_loop(
    mut conn: Connection,
    mut jobs: mpsc::Receiver<Job>,
    ctx: WriterContext,
    events: broadcast::Sender<std::sync::Arc<StoredEvent>>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (changes, replies): (Vec<Change>, Vec<_>) =
            batch.into_iter().map(|j| (j.change, j.reply)).unzip();
        let ctx_for_batch = ctx.clone();
        let (returned, outcome) = blocking(move || {
            let outcome = change::apply_batch(&mut conn, &ctx_for_batch, &changes);
            (conn, outcome)
        })
        .await;
        conn = returned;
        match outcome {
            Ok((results, recorded)) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                for event in recorded {
                    // Nobody listening is fine.
                    let _ = events.send(std::sync::Arc::new(event));
                }
            }
            Err(e) => {
                warn!(error = %e, "a batch of changes failed to commit");
                let text = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(Error::Io(std::io::Error::other(text.clone()))));
                }
            }
        }
    }
}
