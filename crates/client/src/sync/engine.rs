//! One synced folder: local changes scanned, queued and sent; remote changes
//! fetched and applied; conflicts kept side by side.
//!
//! Everything here runs in one task, one step at a time, so a remote change
//! and a local one to the same path are never applied at once. The index
//! records only what this device and the server agree on: a local change
//! stays "changed" (disk ≠ index) until the server has acknowledged it, so a
//! remote change arriving meanwhile is seen to collide with it.
//!
//! Rules:
//! - a remote change never overwrites a local file that changed since it was
//!   indexed: the server's version goes under the original name, the local
//!   one under `name.conflict-<device>-<yyyymmdd-hhmmss>.ext`, uploaded like
//!   any new file. Identical content on both sides is not a conflict;
//! - a delete racing a modify keeps the modified file (either side);
//! - an upload names the version it was derived from; the server refuses it
//!   if another came first, and the daemon then fetches that version and
//!   applies the rules above;
//! - a remote file is written to a temporary file in the folder, checked,
//!   fsynced and renamed into place, after checking once more that the local
//!   file did not change meanwhile;
//! - a viewer never uploads: a local edit is kept and reported, not reverted.

use std::path::{Path, PathBuf};

use coffer_net::{Net, blocking};
use coffer_proto::request::{Delete, List, Move, PathRef, Stat};
use coffer_proto::response::FolderInfo;
use coffer_proto::types::{EntryKind, FileEntry, Role};
use coffer_proto::{ErrorCode, Request, Response, path as paths};
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::ignore::Ignore;
use super::index::Synced;
use super::queue::{Entry, Op};
use super::scan::{self, Change, FileState, Known};
use super::state::AlertKind;
use crate::error::ClientError;
use crate::home::Home;
use crate::session::{Session, unexpected};
use crate::transfer::{self, Base, PutOptions, Quiet, Source};

/// Attempts before a change the server keeps refusing is given up (and
/// reported); transient failures (no server) do not count.
const MAX_ATTEMPTS: u32 = 5;
/// Queue entries taken at a time.
const BATCH: usize = 256;
/// Changes sent, or remote files fetched, at once: each is a few round
/// trips and a server fsync, so one at a time would leave both sides idle.
const IN_FLIGHT: usize = 16;

/// A synced folder.
#[derive(Debug, Clone)]
pub struct Folder {
    /// The folder as the server describes it (role, epoch).
    pub info: FolderInfo,
    /// Where it is on this device.
    pub root: PathBuf,
}

impl Folder {
    fn id(&self) -> &str {
        &self.info.folder_id
    }

    fn local(&self, path: &str) -> PathBuf {
        let mut out = self.root.clone();
        out.extend(path.split('/'));
        out
    }

    fn can_write(&self) -> bool {
        self.info.role != Role::Viewer
    }
}

/// What one round of work did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Local changes queued.
    pub queued: usize,
    /// Queue entries sent (or found to need nothing).
    pub sent: usize,
    /// Remote changes applied to the disk.
    pub applied: usize,
    /// Conflict copies made.
    pub conflicts: usize,
    /// Sealed chunk bytes uploaded.
    pub bytes_sent: u64,
}

/// The sync engine of one device.
#[derive(Debug)]
pub struct Engine<'a, N: Net> {
    home: &'a Home,
    session: &'a Session<N>,
    /// This device's name, as conflict copies carry it.
    device: String,
}

fn local_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Local {
        path: path.to_owned(),
        source,
    }
}

/// Runs `jobs`, at most `limit` at a time, handing each outcome to `done` as
/// it comes; once `done` answers `false`, what still runs is dropped and no
/// more are started.
pub(super) async fn side_by_side<F: std::future::Future>(
    mut jobs: impl Iterator<Item = F>,
    limit: usize,
    mut done: impl FnMut(F::Output) -> bool,
) {
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < limit
            && let Some(next) = jobs.next()
        {
            running.push(next);
        }
        let Some(outcome) = running.next().await else {
            return;
        };
        if !done(outcome) {
            return;
        }
    }
}

/// What a path most likely is on the server, as an event or a listing said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Likely {
    /// A live file.
    File,
    /// Anything.
    Unknown,
}

/// How the disk stands against the index for one path.
#[derive(Debug)]
enum Local {
    /// Nothing there.
    Absent,
    /// A directory.
    Dir,
    /// A file, with its metadata.
    File(std::fs::Metadata),
}

fn look(path: &Path) -> Result<Local, ClientError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(Local::Dir),
        Ok(m) if m.is_file() => Ok(Local::File(m)),
        // A link or special file is never synced; it counts as something
        // there, which nothing may overwrite.
        Ok(m) => Ok(Local::File(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Local::Absent),
        Err(e) => Err(local_err(path)(e)),
    }
}

/// Whether the disk differs from what the index says was synced.
fn changed(known: Option<&Known>, local: &Local) -> bool {
    match (known, local) {
        (None, Local::Absent) => false,
        (Some(Known::Dir), Local::Dir) => false,
        (Some(Known::File(state)), Local::File(m)) => !state.matches(m),
        _ => true,
    }
}

impl Round {
    /// Adds another round's counts to these.
    pub fn add(&mut self, r: &Round) {
        self.queued += r.queued;
        self.sent += r.sent;
        self.applied += r.applied;
        self.conflicts += r.conflicts;
        self.bytes_sent += r.bytes_sent;
    }
}

impl<'a, N: Net> Engine<'a, N> {
    /// An engine over this device's home and session.
    pub fn new(home: &'a Home, session: &'a Session<N>, device: &str) -> Self {
        Engine {
            home,
            session,
            device: device.to_owned(),
        }
    }

    /// Logs an alert and keeps it for `coffer status` (a failure to keep it
    /// is logged, never fatal).
    pub fn alert(
        &self,
        folder: Option<&Folder>,
        kind: AlertKind,
        path: Option<&str>,
        message: &str,
    ) {
        let label = folder.map(|f| f.info.label.as_str());
        match kind {
            AlertKind::Error => tracing::warn!(folder = label, path, "{message}"),
            _ => tracing::info!(folder = label, path, "{message}"),
        }
        if let Err(e) = self.home.sync_state().alert(
            folder.map(Folder::id),
            kind,
            path,
            message,
            super::state::now_ms(),
        ) {
            tracing::warn!("could not record an alert: {e}");
        }
    }

    // ---- local → server -------------------------------------------------

    /// Scans the folder's directory `scope` (`""`: all of it) and queues what
    /// changed; a viewer's changes are reported instead. The number of
    /// changes queued.
    pub async fn scan(&self, folder: &Folder, scope: &str) -> Result<usize, ClientError> {
        // Narrowed to a directory both the index and the disk hold (a new or
        // vanished one is seen from its parent); the whole folder at worst.
        let mut scope = scope;
        while !scope.is_empty() {
            let held = self.home.index().get(folder.id(), scope)? == Some(Known::Dir)
                && folder.local(scope).is_dir();
            if held {
                break;
            }
            scope = scope.rsplit_once('/').map_or("", |(parent, _)| parent);
        }
        let started = std::time::Instant::now();
        let known = self.home.index().load_under(folder.id(), scope)?;
        let (root, under) = (folder.root.clone(), scope.to_owned());
        let found = blocking(move || {
            let ignore = Ignore::load(&root)?;
            let found = scan::scan_under(&root, &under, &known, &ignore)?;
            for temp in &found.stale_temps {
                match std::fs::remove_file(temp) {
                    Ok(()) => tracing::info!(path = %temp.display(), "removed an abandoned download"),
                    Err(e) => tracing::debug!(path = %temp.display(), error = %e, "abandoned download left"),
                }
            }
            Ok::<_, std::io::Error>(found)
        })
        .await
        .map_err(local_err(&folder.root))?;
        tracing::debug!(
            folder = %folder.info.label,
            scope,
            changes = found.changes.len(),
            hashed = found.hashed,
            took = ?started.elapsed(),
            "scanned"
        );
        let index = self.home.index();
        let queue = self.home.queue();
        let state = self.home.sync_state();
        let mut queued = 0;
        for change in found.changes {
            if let Change::Touched(path, file) = &change {
                index.put(folder.id(), path, &Known::File(file.clone()))?;
                continue;
            }
            if !folder.can_write() {
                let path = change.path();
                let already = state.has_alert(folder.id(), AlertKind::ViewerEdit, path)?;
                if !already {
                    self.alert(
            Some(folder),
                        AlertKind::ViewerEdit,
                        Some(path),
                        &format!(
                            "{path} changed here, but you are a viewer of \"{}\": kept, not uploaded",
                            folder.info.label
                        ),
                    );
                }
                continue;
            }
            let op = match change {
                Change::DirCreated(p) => Op::Mkdir(p),
                Change::DirDeleted(p) => Op::Rmdir(p),
                Change::Created(p, _) | Change::Modified(p, _) => Op::Put(p),
                Change::Deleted(p) => Op::Delete(p),
                Change::Moved { from, to, .. } => Op::Move { from, to },
                Change::Touched(..) => continue,
            };
            queue.push(folder.id(), &op)?;
            queued += 1;
        }
        for (path, why) in found.skipped {
            tracing::debug!(folder = %folder.info.label, path, "not synced: {why}");
        }
        Ok(queued)
    }

    /// Sends what the queue holds for these folders. Stops at the first
    /// failure that says the server cannot be reached (it is kept for the
    /// next round); a change the server refuses is retried a few times,
    /// then dropped and reported.
    pub async fn send(&self, folders: &[Folder]) -> Result<Round, ClientError> {
        let mut round = Round::default();
        let mut tried = std::collections::HashSet::new();
        loop {
            let ready = self.home.queue().ready(BATCH)?;
            let fresh: Vec<Entry> = ready
                .into_iter()
                .filter(|e| !tried.contains(&e.seq))
                .collect();
            if fresh.is_empty() {
                return Ok(round);
            }
            // The entries `ready` hands out touch disjoint paths: they go
            // out together, a bounded number at a time.
            let mut running = FuturesUnordered::new();
            let mut outcomes = Vec::new();
            for entry in fresh {
                tried.insert(entry.seq);
                let Some(folder) = folders.iter().find(|f| f.id() == entry.folder_id) else {
                    continue;
                };
                if !folder.can_write() {
                    // Queued before the role changed: nothing may be sent.
                    self.home.queue().done(entry.seq)?;
                    continue;
                }
                if running.len() >= IN_FLIGHT
                    && let Some(done) = running.next().await
                {
                    outcomes.push(done);
                }
                running.push(async move {
                    let mut r = Round::default();
                    let result = self.send_one(folder, &entry.op, &mut r).await;
                    (folder, entry, result, r)
                });
            }
            while let Some(done) = running.next().await {
                outcomes.push(done);
            }
            let mut transient = None;
            // The queue's answers land in one commit.
            let batch = self.home.batch()?;
            for (folder, entry, result, r) in outcomes {
                round.add(&r);
                match result {
                    Ok(()) => {
                        self.home.queue().done(entry.seq)?;
                        round.sent += 1;
                    }
                    Err(e) if e.is_transient() || matches!(e, ClientError::Local { .. }) => {
                        self.home.queue().failed(entry.seq, &e.to_string())?;
                        if e.is_transient() {
                            transient = Some(e);
                        }
                    }
                    Err(e) if entry.attempts + 1 >= MAX_ATTEMPTS => {
                        self.home.queue().done(entry.seq)?;
                        self.alert(
                            Some(folder),
                            AlertKind::Error,
                            entry.op.paths().first().copied(),
                            &format!("gave up sending {:?}: {e}", entry.op),
                        );
                    }
                    Err(e) => {
                        self.home.queue().failed(entry.seq, &e.to_string())?;
                    }
                }
            }
            batch.commit()?;
            if let Some(e) = transient {
                return Err(e);
            }
        }
    }

    async fn send_one(
        &self,
        folder: &Folder,
        op: &Op,
        round: &mut Round,
    ) -> Result<(), ClientError> {
        match op {
            Op::Put(path) => self.upload(folder, path, round).await,
            Op::Delete(path) | Op::Rmdir(path) => self.delete(folder, path, round).await,
            Op::Move { from, to } => self.move_(folder, from, to, round).await,
            Op::Mkdir(path) => self.mkdir(folder, path).await,
        }
    }

    async fn upload(
        &self,
        folder: &Folder,
        path: &str,
        round: &mut Round,
    ) -> Result<(), ClientError> {
        let local = folder.local(path);
        let index = self.home.index();
        let known = index.get(folder.id(), path)?;
        let synced = index.synced(folder.id(), path)?;
        let meta = match look(&local)? {
            Local::File(m) if m.is_file() => m,
            // Gone or no longer a file: the scanner reports what it is now.
            _ => return Ok(()),
        };
        if synced.is_some() && !changed(known.as_ref(), &Local::File(meta)) {
            // Already what the server holds (a remote change applied since).
            return Ok(());
        }
        let options = PutOptions {
            base: Base::Known(synced.map(|s| s.vv)),
            hash_chunks: true,
            reuse: index.stored(folder.id(), path)?,
        };
        let put = transfer::put(
            self.session,
            self.home,
            &local,
            &folder.info,
            path,
            &Quiet,
            &options,
        )
        .await;
        let report = match put {
            Ok(report) => report,
            Err(ClientError::Server(e)) if e.code == ErrorCode::Conflict => {
                // Someone else's version came first: take it, keeping ours beside it.
                return self.reconcile(folder, path, round).await;
            }
            Err(e) => return Err(e),
        };
        round.bytes_sent += report.bytes_sent;
        tracing::info!(
            folder = %folder.info.label,
            path,
            version = report.entry.version,
            sent = report.bytes_sent,
            reused = report.chunks_reused,
            "uploaded"
        );
        let state = if report.chunks.is_empty() {
            // Resumed: the chunks sent before are not known here; hash them.
            let at = local.clone();
            blocking(move || scan::hash_file(&at))
                .await
                .map_err(local_err(&local))?
        } else {
            Some(FileState {
                size: report.entry.size,
                mtime_ns: report.mtime_ns,
                inode: report.inode,
                sha256: report.sha256,
                chunk_size: report.chunk_size,
                chunks: report.chunks.iter().map(|c| c.0).collect(),
            })
        };
        let Some(state) = state else {
            return Ok(());
        };
        let batch = self.home.batch()?;
        index.put(folder.id(), path, &Known::File(state))?;
        if !report.chunks.is_empty() {
            let stored: Vec<[u8; 32]> = report.chunks.iter().map(|c| c.1).collect();
            index.set_stored(folder.id(), path, &stored)?;
        }
        self.record(folder, path, &report.entry)?;
        batch.commit()?;
        Ok(())
    }

    fn record(&self, folder: &Folder, path: &str, entry: &FileEntry) -> Result<(), ClientError> {
        self.home.index().set_synced(
            folder.id(),
            path,
            &Synced {
                version: entry.version,
                vv: entry.vv.clone(),
            },
        )?;
        Ok(())
    }

    async fn delete(
        &self,
        folder: &Folder,
        path: &str,
        round: &mut Round,
    ) -> Result<(), ClientError> {
        if !matches!(look(&folder.local(path))?, Local::Absent) {
            // Back again: the scanner reports it as it is.
            return Ok(());
        }
        let index = self.home.index();
        let Some(synced) = index.synced(folder.id(), path)? else {
            index.remove_tree(folder.id(), path)?;
            return Ok(());
        };
        if let Some(Known::Dir) = index.get(folder.id(), path)? {
            // The server deletes a directory with everything in it: only if
            // everything in it is something this device knew and deleted.
            if self.unseen_below(folder, path).await? {
                return self.reconcile_tree(folder, path, round).await;
            }
        }
        let answer = self
            .session
            .call(Request::Delete(Delete {
                folder_id: folder.id().to_owned(),
                path: path.to_owned(),
                base: Some(synced.vv),
                write_id: Some(self.session.write_id()),
            }))
            .await;
        match answer {
            Ok(Response::Entry(_)) => {}
            Ok(other) => return Err(unexpected("delete", &other)),
            Err(ClientError::Server(e)) if e.code == ErrorCode::NotFound => {}
            Err(ClientError::Server(e)) if e.code == ErrorCode::Conflict => {
                // Changed there since: the changed version wins over our delete.
                return self.reconcile(folder, path, round).await;
            }
            Err(e) => return Err(e),
        }
        tracing::info!(folder = %folder.info.label, path, "deleted");
        index.remove_tree(folder.id(), path)?;
        Ok(())
    }

    /// Whether the server holds anything live below `dir` that this device
    /// has not synced.
    async fn unseen_below(&self, folder: &Folder, dir: &str) -> Result<bool, ClientError> {
        let versions = self.home.index().versions(folder.id())?;
        let below = self.listing(folder, Some(dir), false).await?;
        Ok(below
            .iter()
            .any(|e| versions.get(&e.path) != Some(&e.version)))
    }

    async fn move_(
        &self,
        folder: &Folder,
        from: &str,
        to: &str,
        round: &mut Round,
    ) -> Result<(), ClientError> {
        let index = self.home.index();
        let synced = index.synced(folder.id(), from)?;
        let arrived = matches!(look(&folder.local(to))?, Local::File(_));
        let gone = matches!(look(&folder.local(from))?, Local::Absent);
        if let (Some(synced), true, true) = (synced, arrived, gone) {
            let answer = self
                .session
                .call(Request::Move(Move {
                    folder_id: folder.id().to_owned(),
                    from: from.to_owned(),
                    to: to.to_owned(),
                    base: Some(synced.vv),
                    write_id: Some(self.session.write_id()),
                }))
                .await;
            match answer {
                Ok(Response::Entry(entry)) => {
                    tracing::info!(folder = %folder.info.label, from, to, "moved");
                    index.rename(folder.id(), from, to)?;
                    return self.record(folder, to, &entry);
                }
                Ok(other) => return Err(unexpected("move", &other)),
                // The source changed there, or the destination is taken.
                Err(ClientError::Server(e))
                    if matches!(e.code, ErrorCode::Conflict | ErrorCode::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        // Not a plain move (any more): the destination goes up as a file of
        // its own, and the source follows the delete rules.
        self.upload(folder, to, round).await?;
        self.delete(folder, from, round).await
    }

    async fn mkdir(&self, folder: &Folder, path: &str) -> Result<(), ClientError> {
        if !matches!(look(&folder.local(path))?, Local::Dir) {
            return Ok(());
        }
        let answer = self
            .session
            .call(Request::Mkdir(PathRef {
                folder_id: folder.id().to_owned(),
                path: path.to_owned(),
            }))
            .await;
        let entry = match answer {
            Ok(Response::Entry(entry)) => entry,
            Ok(other) => return Err(unexpected("mkdir", &other)),
            Err(ClientError::Server(e)) if e.code == ErrorCode::Conflict => {
                match self.stat(folder, path).await? {
                    Some(entry) if entry.kind == EntryKind::Dir && !entry.deleted => entry,
                    _ => return Err(ClientError::Server(e)),
                }
            }
            Err(e) => return Err(e),
        };
        let index = self.home.index();
        index.put(folder.id(), path, &Known::Dir)?;
        self.record(folder, path, &entry)
    }

    // ---- server → local -------------------------------------------------

    async fn stat(&self, folder: &Folder, path: &str) -> Result<Option<FileEntry>, ClientError> {
        match self
            .session
            .call(Request::Stat(Stat {
                folder_id: folder.id().to_owned(),
                path: path.to_owned(),
                version: None,
                inline: false,
            }))
            .await
        {
            Ok(Response::Entry(e)) => Ok(Some(e)),
            Ok(other) => Err(unexpected("stat", &other)),
            Err(ClientError::Server(e)) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every entry of the folder (below `dir`), tombstones too when asked.
    async fn listing(
        &self,
        folder: &Folder,
        dir: Option<&str>,
        deleted: bool,
    ) -> Result<Vec<coffer_proto::types::EntrySummary>, ClientError> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let answer = self
                .session
                .call(Request::List(List {
                    folder_id: folder.id().to_owned(),
                    dir: dir.map(str::to_owned),
                    recursive: true,
                    deleted,
                    cursor: cursor.take(),
                    limit: None,
                }))
                .await;
            let listing = match answer {
                Ok(Response::Listing(l)) => l,
                Ok(other) => return Err(unexpected("list", &other)),
                Err(ClientError::Server(e)) if e.code == ErrorCode::NotFound => return Ok(out),
                Err(e) => return Err(e),
            };
            out.extend(listing.entries);
            match listing.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Brings the whole folder up to the server's state: everything whose
    /// version differs from the index is fetched and applied — live entries
    /// parents first, deletions children first.
    pub async fn reconcile_all(&self, folder: &Folder) -> Result<Round, ClientError> {
        let mut round = Round::default();
        let listed = self.listing(folder, None, true).await?;
        let mut versions = self.home.index().versions(folder.id())?;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for e in &listed {
            let known = versions.remove(&e.path);
            if known == Some(e.version) || (e.deleted && known.is_none()) {
                continue;
            }
            if e.deleted {
                dead.push(e.path.clone());
            } else {
                live.push((e.path.clone(), e.kind));
            }
        }
        // Synced here, unknown there (a server that lost it, or never had it).
        dead.extend(versions.into_keys());
        dead.sort();
        // Directories in path order (parents first), then files, several at once.
        for (path, _) in live.iter().filter(|(_, k)| *k == EntryKind::Dir) {
            self.reconcile(folder, path, &mut round).await?;
        }
        let files =
            live.iter()
                .filter(|(_, k)| *k == EntryKind::File)
                .map(|(path, _)| async move {
                    let mut r = Round::default();
                    let result = self.reconcile_as(folder, path, Likely::File, &mut r).await;
                    (path, result, r)
                });
        let mut transient = None;
        side_by_side(files, IN_FLIGHT, |(path, result, r)| {
            round.add(&r);
            match result {
                Ok(()) => {}
                Err(e) if e.is_transient() => transient = Some(e),
                Err(e) => self.alert(
                    Some(folder),
                    AlertKind::Error,
                    Some(path),
                    &format!("could not apply {path}: {e}"),
                ),
            }
            transient.is_none()
        })
        .await;
        if let Some(e) = transient {
            return Err(e);
        }
        for path in dead.iter().rev() {
            self.reconcile(folder, path, &mut round).await?;
        }
        Ok(round)
    }

    /// [`Engine::reconcile_all`] below `dir`.
    async fn reconcile_tree(
        &self,
        folder: &Folder,
        dir: &str,
        round: &mut Round,
    ) -> Result<(), ClientError> {
        let versions = self.home.index().versions(folder.id())?;
        self.reconcile(folder, dir, round).await?;
        for e in self.listing(folder, Some(dir), false).await? {
            if versions.get(&e.path) != Some(&e.version) {
                self.reconcile(folder, &e.path, round).await?;
            }
        }
        Ok(())
    }

    /// Applies a remote change event.
    pub async fn remote_change(
        &self,
        folder: &Folder,
        change: &coffer_proto::event::FileChanged,
    ) -> Result<Round, ClientError> {
        let mut round = Round::default();
        if let Some(from) = &change.from {
            self.remote_move(folder, from, &change.path, &mut round)
                .await?;
        } else if self
            .home
            .index()
            .synced(folder.id(), &change.path)?
            .is_none_or(|s| s.version != change.entry.version)
        {
            // Not this device's own change coming back, nor one applied already.
            let likely = if change.entry.kind == EntryKind::File && !change.entry.deleted {
                Likely::File
            } else {
                Likely::Unknown
            };
            self.reconcile_as(folder, &change.path, likely, &mut round)
                .await?;
        }
        Ok(round)
    }

    async fn remote_move(
        &self,
        folder: &Folder,
        from: &str,
        to: &str,
        round: &mut Round,
    ) -> Result<(), ClientError> {
        let index = self.home.index();
        let from_known = index.get(folder.id(), from)?;
        let from_local = look(&folder.local(from))?;
        let to_known = index.get(folder.id(), to)?;
        let to_local = look(&folder.local(to))?;
        let remote = self.stat(folder, to).await?;
        let Some(remote) = remote.filter(|e| !e.deleted) else {
            return self.reconcile(folder, from, round).await;
        };
        if let Some(s) = index.synced(folder.id(), to)?
            && s.vv == remote.vv
        {
            return Ok(()); // this device's own move
        }
        if from_known.is_some()
            && !changed(from_known.as_ref(), &from_local)
            && matches!(to_local, Local::Absent)
        {
            // Move what is here, as it is.
            let (src, dst) = (folder.local(from), folder.local(to));
            self.make_parents(folder, to)?;
            std::fs::rename(&src, &dst).map_err(local_err(&dst))?;
            index.rename(folder.id(), from, to)?;
            self.record(folder, to, &remote)?;
            round.applied += 1;
            // The source's tombstone is what the index now says of it.
            return Ok(());
        }
        if to_known.is_some() && !changed(to_known.as_ref(), &to_local) {
            // Below a directory already moved here: only the version is new.
            self.record(folder, to, &remote)?;
            return Ok(());
        }
        self.reconcile(folder, to, round).await?;
        self.reconcile(folder, from, round).await
    }

    /// Creates the parent directories of `path` on disk, recording them.
    fn make_parents(&self, folder: &Folder, path: &str) -> Result<(), ClientError> {
        let index = self.home.index();
        let mut at = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            let local = folder.local(&at);
            match look(&local)? {
                Local::Dir => {}
                Local::Absent => {
                    std::fs::create_dir(&local).map_err(local_err(&local))?;
                    index.put(folder.id(), &at, &Known::Dir)?;
                }
                Local::File(_) => {
                    return Err(ClientError::Local {
                        path: local,
                        source: std::io::Error::other("a file where a directory should be"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Fetches the server's latest state of `path` and applies it by the
    /// module's rules.
    pub async fn reconcile(
        &self,
        folder: &Folder,
        path: &str,
        round: &mut Round,
    ) -> Result<(), ClientError> {
        self.reconcile_as(folder, path, Likely::Unknown, round)
            .await
    }

    /// [`Engine::reconcile`], told what the path most likely is on the
    /// server: for a live file, its manifest is asked for at once (it holds
    /// the entry `stat` would return, and the download then starts from it),
    /// one round trip fewer per file; anything else falls back to `stat`.
    async fn reconcile_as(
        &self,
        folder: &Folder,
        path: &str,
        likely: Likely,
        round: &mut Round,
    ) -> Result<(), ClientError> {
        if paths::validate(path).is_err() {
            return Err(ClientError::Protocol(format!(
                "the server named {path:?}, which is not a valid path"
            )));
        }
        let mut manifest = None;
        let remote = match likely {
            Likely::File => match transfer::manifest(self.session, folder.id(), path).await {
                Ok(m) => {
                    let entry = m.entry().clone();
                    manifest = Some(m);
                    Some(entry)
                }
                // Deleted, a directory or gone since: as `stat` says.
                Err(ClientError::Server(e))
                    if matches!(e.code, ErrorCode::NotFound | ErrorCode::BadRequest) =>
                {
                    self.stat(folder, path).await?
                }
                Err(e) => return Err(e),
            },
            Likely::Unknown => self.stat(folder, path).await?,
        };
        let index = self.home.index();
        let synced = index.synced(folder.id(), path)?;
        if let (Some(r), Some(s)) = (&remote, &synced)
            && r.vv == s.vv
        {
            return Ok(());
        }
        let known = index.get(folder.id(), path)?;
        let target = folder.local(path);
        let here = look(&target)?;
        let local_changed = changed(known.as_ref(), &here);
        match remote.filter(|r| !r.deleted) {
            None => self.apply_deletion(
                folder,
                path,
                &target,
                &here,
                known.is_some(),
                local_changed,
                round,
            ),
            Some(r) if r.kind == EntryKind::Dir => {
                if !matches!(here, Local::Dir) {
                    if let Local::File(_) = here {
                        self.set_aside(folder, path, round)?;
                    } else {
                        self.make_parents(folder, path)?;
                    }
                    std::fs::create_dir(&target).map_err(local_err(&target))?;
                    round.applied += 1;
                }
                index.put(folder.id(), path, &Known::Dir)?;
                self.record(folder, path, &r)
            }
            Some(r) => {
                self.apply_file(folder, path, &target, local_changed, (r, manifest), round)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_deletion(
        &self,
        folder: &Folder,
        path: &str,
        target: &Path,
        here: &Local,
        was_known: bool,
        local_changed: bool,
        round: &mut Round,
    ) -> Result<(), ClientError> {
        let index = self.home.index();
        if matches!(here, Local::Absent) || !was_known {
            index.remove_tree(folder.id(), path)?;
            return Ok(());
        }
        if local_changed {
            // Changed here, deleted there: the change wins; it goes up as
            // new. Nothing is lost, so nothing for the user to resolve.
            tracing::info!(folder = %folder.info.label, path, "deleted elsewhere but changed here: kept");
            index.remove_tree(folder.id(), path)?;
            return Ok(());
        }
        match here {
            Local::Dir => {
                // Its contents were deleted first (children before parents);
                // what is left is new here and keeps the directory.
                if std::fs::remove_dir(target).is_ok() {
                    round.applied += 1;
                    index.remove_tree(folder.id(), path)?;
                } else {
                    index.remove(folder.id(), path)?;
                }
            }
            _ => {
                std::fs::remove_file(target).map_err(local_err(target))?;
                round.applied += 1;
                index.remove_tree(folder.id(), path)?;
            }
        }
        tracing::info!(folder = %folder.info.label, path, "deleted (remote)");
        Ok(())
    }

    /// Renames the local file at `path` to a conflict copy beside it.
    fn set_aside(
        &self,
        folder: &Folder,
        path: &str,
        round: &mut Round,
    ) -> Result<String, ClientError> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut name = paths::conflict_name(path, &self.device, secs);
        let mut n = 2;
        while !matches!(look(&folder.local(&name))?, Local::Absent) {
            name = paths::conflict_name(path, &format!("{}-{n}", self.device), secs);
            n += 1;
        }
        let (from, to) = (folder.local(path), folder.local(&name));
        std::fs::rename(&from, &to).map_err(local_err(&to))?;
        round.conflicts += 1;
        let kind = if folder.can_write() {
            AlertKind::Conflict
        } else {
            AlertKind::ViewerEdit
        };
        self.alert(
            Some(folder),
            kind,
            Some(path),
            &format!("{path} changed here and elsewhere: the other version is at {path}, this one at {name}"),
        );
        Ok(name)
    }

    async fn apply_file(
        &self,
        folder: &Folder,
        path: &str,
        target: &Path,
        local_changed: bool,
        (remote, manifest): (FileEntry, Option<transfer::Manifest>),
        round: &mut Round,
    ) -> Result<(), ClientError> {
        self.make_parents(folder, path)?;
        let parent = target.parent().unwrap_or(&folder.root);
        // Fetched beside the target, checked and fsynced, then put in place
        // below once nothing here changed meanwhile.
        let (mut report, temp) = transfer::fetch(
            self.session,
            Source::Folder {
                folder_id: folder.id(),
                path,
                version: Some(remote.version),
            },
            manifest,
            parent,
            &Quiet,
            true,
        )
        .await?;
        let written = std::fs::metadata(&temp.path).map_err(local_err(&temp.path))?;
        let state = FileState::new(
            &written,
            report.sha256,
            report.entry.chunk_size,
            std::mem::take(&mut report.plain_chunks),
        );
        // Look again, right before replacing anything.
        let known = self.home.index().get(folder.id(), path)?;
        let here = look(target)?;
        if local_changed || changed(known.as_ref(), &here) {
            match &here {
                Local::File(_) => {
                    let at = target.to_owned();
                    let mine = blocking(move || scan::hash_file(&at))
                        .await
                        .map_err(local_err(target))?;
                    if let Some(mine) = mine.filter(|m| m.sha256 == report.sha256) {
                        // The same content on both sides: no conflict.
                        return self.settle(folder, path, mine, &report);
                    }
                    self.set_aside(folder, path, round)?;
                }
                Local::Dir => {
                    return Err(ClientError::Local {
                        path: target.to_owned(),
                        source: std::io::Error::other(
                            "a directory here, a file on the server: left as it is",
                        ),
                    });
                }
                // Deleted here, changed there: the change wins.
                Local::Absent => {}
            }
        }
        let placed = target.to_owned();
        blocking(move || {
            let mut temp = temp;
            temp.place(&placed)
        })
        .await
        .map_err(local_err(target))?;
        round.applied += 1;
        tracing::info!(folder = %folder.info.label, path, version = remote.version, "downloaded");
        self.settle(folder, path, state, &report)
    }

    /// Records that `path` now holds the version `report` fetched, as `state`.
    fn settle(
        &self,
        folder: &Folder,
        path: &str,
        state: FileState,
        report: &transfer::GetReport,
    ) -> Result<(), ClientError> {
        let index = self.home.index();
        // The chunk hashes pair with the stored addresses only if they were
        // cut alike.
        let paired = state.chunk_size == report.entry.chunk_size
            && state.chunks.len() == report.chunks.len();
        let batch = self.home.batch()?;
        index.put(folder.id(), path, &Known::File(state))?;
        if paired {
            index.set_stored(folder.id(), path, &report.chunks)?;
        }
        self.record(folder, path, &report.entry)?;
        batch.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_counts_as_changed_unless_the_disk_matches_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let state = scan::hash_file(&file).unwrap().unwrap();
        let here = look(&file).unwrap();
        assert!(!changed(Some(&Known::File(state.clone())), &here));
        assert!(changed(None, &here));
        assert!(changed(Some(&Known::Dir), &here));
        assert!(changed(Some(&Known::File(state.clone())), &Local::Absent));
        assert!(!changed(None, &Local::Absent));
        std::fs::write(&file, b"yy").unwrap();
        assert!(changed(Some(&Known::File(state)), &look(&file).unwrap()));
    }
}
