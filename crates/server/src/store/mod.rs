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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coffer_net::SharedClock;
use coffer_proto::Event;
use coffer_proto::peer::Record;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::warn;

use crate::error::{Error, Result};
use coffer_net::blocking;

pub(crate) mod change;
pub(crate) mod query;
pub(crate) mod replica;
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
    /// The origin of this node's change-log records, and the writer it counts
    /// in version vectors. Given for a new database; an existing one keeps
    /// the origin it was created with. A node whose data directory is wiped
    /// so starts a new origin, and can never number a record, or count a
    /// write, as one of its earlier life that peers still hold.
    pub(crate) origin: String,
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

/// Work for the writer: a local change, or records from a peer.
enum Job {
    Local {
        change: Box<Change>,
        reply: oneshot::Sender<Result<change::Logged>>,
    },
    Remote {
        records: Vec<Record>,
        reply: oneshot::Sender<Result<replica::Replicated>>,
    },
}

/// Handle to the database. Cheap to share behind an `Arc`.
pub(crate) struct Store {
    db_path: PathBuf,
    /// The origin of this node's records.
    origin: String,
    /// Peers that must acknowledge a write before it is; `None` alone.
    quorum: Option<crate::cluster::link::Quorum>,
    /// The position of the newest record in the log, as each commit leaves it.
    committed: watch::Receiver<u64>,
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
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        schema::migrate(&mut conn)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        replica::install_capture(&conn)?;
        let mut ctx = ctx;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('origin', ?1)",
            [&ctx.origin],
        )?;
        ctx.origin = conn.query_row("SELECT value FROM meta WHERE key = 'origin'", [], |r| {
            r.get(0)
        })?;
        let origin = ctx.origin.clone();
        let (committed_tx, committed) = watch::channel(replica::log_end(&conn)?);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (writer, jobs) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_loop(conn, jobs, ctx, events.clone(), committed_tx));
        Ok(Store {
            db_path,
            origin,
            quorum: None,
            committed,
            readers: Arc::new(Mutex::new(Vec::new())),
            writer,
            events,
        })
    }

    /// Applies one change and returns what it produced. Durable when this
    /// returns `Ok`: committed here, and in a cluster acknowledged by enough
    /// peers to make the write quorum ([`Store::require_quorum`]).
    pub(crate) async fn write(&self, change: Change) -> Result<Applied> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job::Local {
                change: Box::new(change),
                reply,
            })
            .await
            .map_err(|_| writer_stopped())?;
        let (applied, logged) = answer.await.map_err(|_| writer_stopped())??;
        if let (Some(quorum), Some(seq)) = (&self.quorum, logged) {
            quorum.wait(&self.origin, seq).await?;
        }
        Ok(applied)
    }

    /// From now on, a write is acknowledged only once `quorum.needed` peers
    /// have acknowledged its record too.
    pub(crate) fn require_quorum(&mut self, quorum: crate::cluster::link::Quorum) {
        self.quorum = Some(quorum);
    }

    /// Applies records from a peer, in order, each at most once; durable when
    /// this returns. Stops at the first record that cannot be applied yet
    /// ([`replica::Replicated::stopped`]).
    pub(crate) async fn replicate(&self, records: Vec<Record>) -> Result<replica::Replicated> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job::Remote { records, reply })
            .await
            .map_err(|_| writer_stopped())?;
        answer.await.map_err(|_| writer_stopped())?
    }

    /// `origin`'s records after `after`, at most `limit`, oldest first.
    #[cfg(test)]
    pub(crate) async fn records_after(
        &self,
        origin: String,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Record>> {
        self.read(move |conn| Ok(replica::records_after(conn, &origin, after, limit)?))
            .await
    }

    /// The newest record held from each origin.
    pub(crate) async fn cursors(&self) -> Result<BTreeMap<String, u64>> {
        self.read(|conn| Ok(replica::cursors(conn)?)).await
    }

    /// A digest of every replicated row and stamp: equal on two nodes exactly
    /// when they hold the same replicated state.
    pub(crate) async fn digest(&self) -> Result<[u8; 32]> {
        self.read(|conn| Ok(replica::digest(conn)?)).await
    }

    /// Every record after position `after` of this node's log, in the order
    /// they were applied here, at most `limit`, each with its position.
    pub(crate) async fn log_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Record)>> {
        self.read(move |conn| Ok(replica::log_after(conn, after, limit)?))
            .await
    }

    /// The position in this node's log just before the first record a
    /// follower holding `cursors` lacks (the end of the log if it lacks none).
    pub(crate) async fn log_start(&self, cursors: BTreeMap<String, u64>) -> Result<u64> {
        self.read(move |conn| {
            let mut first: Option<i64> = None;
            for origin in replica::cursors(conn)?.into_keys() {
                let held = cursors.get(&origin).copied().unwrap_or(0) as i64;
                let seq: Option<i64> = conn.query_row(
                    "SELECT MIN(seq) FROM changes WHERE origin = ?1 AND origin_seq > ?2",
                    rusqlite::params![origin, held],
                    |r| r.get(0),
                )?;
                first = match (first, seq) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let start = match first {
                Some(seq) => seq - 1,
                None => replica::log_end(conn)? as i64,
            };
            Ok(start as u64)
        })
        .await
    }

    /// The origin of this node's records: this database's name.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// The position of the newest record in the log, changing as commits
    /// add records.
    pub(crate) fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
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

fn writer_stopped() -> Error {
    Error::Io(std::io::Error::other("the store's writer has stopped"))
}

async fn write_loop(
    mut conn: Connection,
    mut jobs: mpsc::Receiver<Job>,
    ctx: WriterContext,
    events: broadcast::Sender<std::sync::Arc<StoredEvent>>,
    committed: watch::Sender<u64>,
) {
    // Tells followers of the log how far it goes after each commit.
    let tell = |conn: &Connection| {
        if let Ok(last) = replica::log_end(conn) {
            committed.send_if_modified(|held| std::mem::replace(held, last) != last);
        }
    };
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let (change, reply) = match first {
            Job::Local { change, reply } => (*change, reply),
            Job::Remote { records, reply } => {
                let now = ctx.clock.now_ms();
                let ctx = ctx.clone();
                let (returned, outcome) = blocking(move || {
                    let outcome = replica::apply_records(&mut conn, &ctx, now, &records);
                    (conn, outcome)
                })
                .await;
                conn = returned;
                tell(&conn);
                match outcome {
                    Ok(mut done) => {
                        for event in std::mem::take(&mut done.events) {
                            let _ = events.send(std::sync::Arc::new(event));
                        }
                        let _ = reply.send(Ok(done));
                    }
                    Err(e) => {
                        warn!(error = %e, "records from a peer failed to commit");
                        let _ = reply.send(Err(Error::Io(std::io::Error::other(e.to_string()))));
                    }
                }
                continue;
            }
        };
        let mut batch = vec![(change, reply)];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(Job::Local { change, reply }) => batch.push((*change, reply)),
                Ok(remote) => {
                    next = Some(remote);
                    break;
                }
                Err(_) => break,
            }
        }
        let (changes, replies): (Vec<Change>, Vec<_>) = batch.into_iter().unzip();
        let ctx_for_batch = ctx.clone();
        let (returned, outcome) = blocking(move || {
            let outcome = change::apply_batch(&mut conn, &ctx_for_batch, &changes);
            (conn, outcome)
        })
        .await;
        conn = returned;
        tell(&conn);
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
