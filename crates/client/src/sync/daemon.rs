//! The daemon: one task that keeps attached folders in sync until told to
//! stop (or, with `once`, until there is nothing left to do).
//!
//! It holds one connection subscribed to the server's events (the client
//! connects out; the server never connects back), starting from the cursor
//! it last applied, so that after being offline it receives what it missed.
//! A folder never reconciled before is first compared with a full listing.
//! Local changes come from a `notify` watcher, debounced, and from a
//! periodic full rescan (watchers drop events). When the server cannot be
//! reached the daemon keeps its queue and tries again with backoff.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coffer_net::Net;
use coffer_proto::event::{Event, FileChanged, MemberChange};
use coffer_proto::request::Subscribe;
use coffer_proto::{ErrorCode, Request, Response};
use notify::Watcher as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::engine::{Engine, Folder, Round, side_by_side};
use super::state::AlertKind;
use crate::client::Client;
use crate::error::ClientError;
use crate::home::Home;
use crate::session::Session;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sync until idle, then return.
    pub once: bool,
    /// Quiet time after a file-system event before the folder is scanned.
    pub debounce: Duration,
    /// Full rescan period.
    pub rescan: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            once: false,
            debounce: Duration::from_millis(100),
            rescan: Duration::from_secs(60),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What a run did, in total.
pub type Summary = Round;

/// Rounds `once` runs before giving up on settling.
const MAX_ONCE_ROUNDS: usize = 50;
/// File-system events buffered between scans.
const WATCH_BUFFER: usize = 4096;

/// File-system events of the watched roots, as folder indices.
struct Watch {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<PathBuf>,
    overflow: Arc<AtomicBool>,
}

fn watch(folders: &[Folder]) -> Result<Watch, ClientError> {
    let (tx, events) = mpsc::channel(WATCH_BUFFER);
    let overflow = Arc::new(AtomicBool::new(false));
    let flag = overflow.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else {
            flag.store(true, Ordering::Relaxed);
            return;
        };
        if event.need_rescan() {
            flag.store(true, Ordering::Relaxed);
        }
        // Opening and reading change nothing — and the daemon's own scans
        // and uploads open every directory and file they look at: counting
        // those would make each scan schedule the next.
        if let notify::EventKind::Access(_) = event.kind {
            return;
        }
        for path in event.paths {
            // The daemon's own temporary files come and go with every download.
            let own = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(crate::transfer::TEMP_PREFIX));
            if !own && tx.try_send(path).is_err() {
                flag.store(true, Ordering::Relaxed);
            }
        }
    })
    .map_err(watch_err)?;
    for f in folders {
        watcher
            .watch(&f.root, notify::RecursiveMode::Recursive)
            .map_err(watch_err)?;
    }
    Ok(Watch {
        _watcher: watcher,
        events,
        overflow,
    })
}

fn watch_err(e: notify::Error) -> ClientError {
    ClientError::Local {
        path: e.paths.first().cloned().unwrap_or_default(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// What to scan next: per folder, the directory that holds every change
/// seen since the last scan (`""`: the whole folder).
#[derive(Debug, Default)]
struct Dirty(BTreeMap<usize, String>);

impl Dirty {
    fn everything(folders: usize) -> Dirty {
        Dirty((0..folders).map(|i| (i, String::new())).collect())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Marks `dir` of folder `i`: the scope widens to what it and the
    /// directory already marked have in common.
    fn mark(&mut self, i: usize, dir: &str) {
        let scope = match self.0.get(&i) {
            None => dir.to_owned(),
            Some(marked) => common_dir(marked, dir).to_owned(),
        };
        self.0.insert(i, scope);
    }

    fn take(&mut self) -> BTreeMap<usize, String> {
        std::mem::take(&mut self.0)
    }
}

/// The deepest directory holding both `a` and `b` (`""`: the root).
fn common_dir<'p>(a: &'p str, b: &str) -> &'p str {
    let (mut end, mut at) = (0, 0);
    for (x, y) in a.split('/').zip(b.split('/')) {
        if x != y || x.is_empty() {
            break;
        }
        end = at + x.len();
        at = end + 1;
    }
    &a[..end]
}

/// The folder directory holding the changed path `rel` (relative to the
/// root), `/`-separated; the root for anything not plain UTF-8.
fn parent_dir(rel: &std::path::Path) -> String {
    let parts: Option<Vec<&str>> = rel.parent().map_or(Some(Vec::new()), |p| {
        p.components()
            .map(|c| match c {
                std::path::Component::Normal(n) => n.to_str(),
                _ => None,
            })
            .collect()
    });
    parts.map(|p| p.join("/")).unwrap_or_default()
}

/// A subscribed connection.
struct Link {
    _client: Client,
    events: mpsc::Receiver<Event>,
}

/// Runs the daemon over `folders` until `shutdown` completes (or, with
/// `once`, until idle).
pub async fn run<N: Net>(
    home: &Home,
    session: &Session<N>,
    device: &str,
    mut folders: Vec<Folder>,
    options: &Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Summary, ClientError> {
    tokio::pin!(shutdown);
    let engine = Engine::new(home, session, device);
    let mut summary = Summary::default();
    let mut watch = if options.once {
        None
    } else {
        Some(watch(&folders)?)
    };
    let mut link: Option<Link> = None;
    let mut caught_up = false;
    // Whether the subscription delivered anything since it was opened: one
    // that ends at once is retried with backoff, not in a tight loop.
    let mut delivered = false;
    let mut dirty = Dirty::everything(folders.len());
    let mut backoff = Duration::from_millis(250);
    let mut retry_at = Instant::now();
    let mut rescan = tokio::time::interval_at(Instant::now() + options.rescan, options.rescan);
    let mut rounds = 0;
    loop {
        if link.is_none() && Instant::now() >= retry_at {
            match connect(home, session, &engine, &folders, &mut summary).await {
                Ok(l) => {
                    link = Some(l);
                    caught_up = false;
                    delivered = false;
                    dirty = Dirty::everything(folders.len());
                }
                Err(e) if options.once || !e.is_transient() => return Err(e),
                Err(e) => {
                    tracing::warn!("server unreachable, retrying in {backoff:?}: {e}");
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(options.max_backoff);
                }
            }
        }
        if link.is_some() && !dirty.is_empty() {
            let mut queued = 0;
            for (i, scope) in dirty.take() {
                queued += engine.scan(&folders[i], &scope).await?;
            }
            summary.queued += queued;
            match engine.send(&folders).await {
                Ok(round) => summary.add(&round),
                Err(e) if e.is_transient() && !options.once => {
                    tracing::warn!("sending paused: {e}");
                    link = None;
                    retry_at = Instant::now() + backoff;
                }
                Err(e) => return Err(e),
            }
            if options.once && caught_up {
                rounds += 1;
                let waiting: u64 = folders
                    .iter()
                    .map(|f| home.queue().pending(&f.info.folder_id))
                    .sum::<Result<u64, _>>()?;
                if queued == 0 && waiting == 0 {
                    return Ok(summary);
                }
                if rounds >= MAX_ONCE_ROUNDS {
                    return Err(ClientError::Usage(format!(
                        "{waiting} changes still waiting after {rounds} rounds; see `coffer status`"
                    )));
                }
                // Sending may have made conflict copies to send in turn.
                dirty = Dirty::everything(folders.len());
            }
        }
        tokio::select! {
            event = next_event(&mut link) => {
                match event {
                    None => {
                        // The connection ended, or this daemon fell behind
                        // the events: resubscribe from the last cursor applied.
                        tracing::info!("event stream ended; resubscribing from the last cursor");
                        link = None;
                        if !delivered {
                            retry_at = Instant::now() + backoff;
                            backoff = (backoff * 2).min(options.max_backoff);
                        }
                    }
                    Some(event) => {
                        delivered = true;
                        backoff = Duration::from_millis(250);
                        // What else has arrived goes with it: changes to
                        // unrelated paths are applied side by side.
                        let mut events = vec![event];
                        if let Some(l) = link.as_mut() {
                            while events.len() < EVENT_BATCH {
                                match l.events.try_recv() {
                                    Ok(e) => events.push(e),
                                    Err(_) => break,
                                }
                            }
                        }
                        let outcome = handle_all(&engine, home, session, &mut folders, events, &mut summary).await;
                        match outcome {
                            Ok(Handled::CaughtUp) => {
                                caught_up = true;
                                if options.once {
                                    dirty = Dirty::everything(folders.len());
                                }
                            }
                            Ok(Handled::Applied) => {}
                            Err(e) if e.is_transient() && !options.once => {
                                tracing::warn!("applying a remote change paused: {e}");
                                link = None;
                                retry_at = Instant::now() + backoff;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            Some(path) = next_path(&mut watch) => {
                // Debounce: let a burst of events settle, then scan once.
                tokio::time::sleep(options.debounce).await;
                let mut paths = vec![path];
                if let Some(w) = watch.as_mut() {
                    while let Ok(p) = w.events.try_recv() {
                        paths.push(p);
                    }
                    if w.overflow.swap(false, Ordering::Relaxed) {
                        dirty = Dirty::everything(folders.len());
                    }
                }
                for p in paths {
                    for (i, f) in folders.iter().enumerate() {
                        if let Ok(rel) = p.strip_prefix(&f.root) {
                            dirty.mark(i, &parent_dir(rel));
                        }
                    }
                }
            }
            _ = rescan.tick() => dirty = Dirty::everything(folders.len()),
            () = tokio::time::sleep_until(retry_at), if link.is_none() => {}
            () = &mut shutdown => {
                tracing::info!("stopping");
                return Ok(summary);
            }
        }
    }
}

async fn next_event(link: &mut Option<Link>) -> Option<Event> {
    match link {
        Some(l) => l.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_path(watch: &mut Option<Watch>) -> Option<PathBuf> {
    match watch {
        Some(w) => w.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Opens the subscription from the last cursor applied and reconciles, with
/// a full listing, the folders never reconciled before.
async fn connect<N: Net>(
    home: &Home,
    session: &Session<N>,
    engine: &Engine<'_, N>,
    folders: &[Folder],
    summary: &mut Summary,
) -> Result<Link, ClientError> {
    let client = session.pool().dedicated().await?;
    // Everything the daemon reads goes where its events come from, so that
    // a read made for an event finds what the event told of, and a listing
    // after a refused cursor holds everything before the subscription's
    // "now" (on a replicated cluster another node may not have it yet).
    session
        .pool()
        .set_home(Some(client.welcome().node_id.clone()));
    let events = client
        .events()
        .ok_or_else(|| ClientError::Protocol("a new connection without its events".into()))?;
    let state = home.sync_state();
    let cursor = state.cursor()?;
    let answer = client
        .call(Request::Subscribe(Subscribe {
            cursor: cursor.clone(),
        }))
        .await;
    let subscribed = match answer {
        Ok(frame) => frame.msg,
        Err(ClientError::Server(e)) if e.code == ErrorCode::BadRequest && cursor.is_some() => {
            // A cursor this server does not know (its state was reset, or it
            // is another server): start from now, after a full listing.
            tracing::warn!("the server does not know cursor {cursor:?}; listing everything");
            state.forget_listed()?;
            client
                .call(Request::Subscribe(Subscribe { cursor: None }))
                .await?
                .msg
        }
        Err(e) => return Err(e),
    };
    let Response::Subscribed(subscribed) = subscribed else {
        return Err(crate::session::unexpected("subscribe", &subscribed));
    };
    if cursor.is_none() {
        state.set_cursor(&subscribed.cursor)?;
    }
    for folder in folders {
        if !state.listed(&folder.info.folder_id)? {
            let round = engine.reconcile_all(folder).await?;
            summary.add(&round);
            state.set_listed(&folder.info.folder_id)?;
        }
    }
    Ok(Link {
        _client: client,
        events,
    })
}

enum Handled {
    Applied,
    CaughtUp,
}

/// Connections the daemon's requests are spread over. The server answers
/// each connection's requests in order, so the uploads and fetches the
/// engine runs side by side only overlap there, and the server's writer only
/// commits them together, on connections of their own. Opened as the load
/// asks for them.
pub const CONNECTIONS: usize = 8;

/// Events taken off the subscription at a time.
const EVENT_BATCH: usize = 256;
/// Remote changes applied at once: each is a few round trips and an fsync,
/// so one at a time would leave both sides idle.
const APPLY_IN_FLIGHT: usize = 16;

/// Whether changes `a` and `b` must keep their order: to the same path of a
/// folder, or one inside the other. Unrelated changes are applied together.
fn related(a: &FileChanged, b: &FileChanged) -> bool {
    let inside = |x: &str, y: &str| x.strip_prefix(y).is_some_and(|rest| rest.starts_with('/'));
    a.folder_id == b.folder_id
        && (a.path == b.path || inside(&a.path, &b.path) || inside(&b.path, &a.path))
}

/// Applies events in order, as [`handle`] would one by one, except that
/// consecutive file changes to unrelated paths are applied together. The
/// cursor moves past a group only once all of it is applied, so a daemon
/// stopped meanwhile applies the group again (applying is idempotent).
async fn handle_all<N: Net>(
    engine: &Engine<'_, N>,
    home: &Home,
    session: &Session<N>,
    folders: &mut Vec<Folder>,
    events: Vec<Event>,
    summary: &mut Summary,
) -> Result<Handled, ClientError> {
    let mut outcome = Handled::Applied;
    let mut group: Vec<FileChanged> = Vec::new();
    for event in events {
        match event {
            Event::FileChanged(c) if c.from.is_none() => {
                if group.iter().any(|g| related(g, &c)) {
                    apply_group(engine, home, folders, std::mem::take(&mut group), summary).await?;
                }
                group.push(c);
            }
            other => {
                apply_group(engine, home, folders, std::mem::take(&mut group), summary).await?;
                if let Handled::CaughtUp =
                    handle(engine, home, session, folders, other, summary).await?
                {
                    outcome = Handled::CaughtUp;
                }
            }
        }
    }
    apply_group(engine, home, folders, group, summary).await?;
    Ok(outcome)
}

/// Applies file changes to unrelated paths side by side, then moves the
/// cursor past the last of them.
async fn apply_group<N: Net>(
    engine: &Engine<'_, N>,
    home: &Home,
    folders: &[Folder],
    group: Vec<FileChanged>,
    summary: &mut Summary,
) -> Result<(), ClientError> {
    let Some(last) = group.last().map(|c| c.cursor.clone()) else {
        return Ok(());
    };
    let changes = group.iter().filter_map(|c| {
        let folder = folders.iter().find(|f| f.info.folder_id == c.folder_id)?;
        Some(async move { (folder, c, engine.remote_change(folder, c).await) })
    });
    let mut transient = None;
    side_by_side(changes, APPLY_IN_FLIGHT, |(folder, c, result)| {
        match result {
            Ok(round) => summary.add(&round),
            Err(e) if e.is_transient() => transient = Some(e),
            Err(e) => engine.alert(
                Some(folder),
                AlertKind::Error,
                Some(&c.path),
                &format!("could not apply the change to {}: {e}", c.path),
            ),
        }
        // Every change of the group is tried: the cursor only moves past
        // all of them, and each one applied now is one less to apply again.
        true
    })
    .await;
    if let Some(e) = transient {
        return Err(e);
    }
    home.sync_state().set_cursor(&last)?;
    Ok(())
}

/// Applies one event, then remembers its cursor.
async fn handle<N: Net>(
    engine: &Engine<'_, N>,
    home: &Home,
    session: &Session<N>,
    folders: &mut Vec<Folder>,
    event: Event,
    summary: &mut Summary,
) -> Result<Handled, ClientError> {
    let state = home.sync_state();
    let cursor = match &event {
        Event::FileChanged(c) => {
            if let Some(folder) = folders.iter().find(|f| f.info.folder_id == c.folder_id) {
                match engine.remote_change(folder, c).await {
                    Ok(round) => summary.add(&round),
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => engine.alert(
                        Some(folder),
                        AlertKind::Error,
                        Some(&c.path),
                        &format!("could not apply the change to {}: {e}", c.path),
                    ),
                }
            }
            Some(c.cursor.clone())
        }
        Event::MemberChanged(m) => {
            if m.username == session.username() {
                match m.change {
                    MemberChange::Removed | MemberChange::Left => {
                        if let Some(i) =
                            folders.iter().position(|f| f.info.folder_id == m.folder_id)
                        {
                            let folder = folders.remove(i);
                            engine.alert(
                                Some(&folder),
                                AlertKind::Error,
                                None,
                                &format!(
                                    "no longer a member of \"{}\": it is no longer synced",
                                    folder.info.label
                                ),
                            );
                        }
                    }
                    MemberChange::RoleChanged | MemberChange::Joined => {
                        if let Some(f) =
                            folders.iter_mut().find(|f| f.info.folder_id == m.folder_id)
                        {
                            tracing::info!(folder = %f.info.label, role = ?m.role, "role changed");
                            f.info.role = m.role;
                        }
                    }
                }
            }
            Some(m.cursor.clone())
        }
        Event::KeyRotated(k) => {
            if let Some(f) = folders.iter_mut().find(|f| f.info.folder_id == k.folder_id) {
                f.info.epoch = f.info.epoch.max(k.epoch);
            }
            Some(k.cursor.clone())
        }
        Event::Invited(i) => {
            engine.alert(
                None,
                AlertKind::Invite,
                None,
                &format!(
                    "{} invites you to \"{}\" as {:?}: `coffer invite accept {}`",
                    i.invite.from, i.invite.label, i.invite.role, i.invite.folder_id
                ),
            );
            Some(i.cursor.clone())
        }
        Event::SessionEnded(e) => {
            return Err(ClientError::Server(coffer_proto::ErrorBody::new(
                ErrorCode::Unauthorized,
                format!("the session ended ({:?}): run `coffer login`", e.reason),
            )));
        }
        Event::CaughtUp(c) => {
            state.set_cursor(&c.cursor)?;
            return Ok(Handled::CaughtUp);
        }
    };
    if let Some(cursor) = cursor {
        state.set_cursor(&cursor)?;
    }
    Ok(Handled::Applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(folder: &str, path: &str) -> FileChanged {
        FileChanged {
            cursor: "1".into(),
            folder_id: folder.into(),
            change: coffer_proto::event::Change::Modified,
            path: path.into(),
            from: None,
            entry: coffer_proto::types::EntrySummary {
                path: path.into(),
                kind: coffer_proto::types::EntryKind::File,
                size: 1,
                version: 1,
                modified_ms: 0,
                deleted: false,
            },
            device_id: None,
        }
    }

    #[test]
    fn changes_are_applied_together_only_when_their_paths_are_unrelated() {
        let at = change("f", "a/b");
        // The path itself, what is above it and what is below it.
        for other in ["a/b", "a", "a/b/c", "a/b/c/d"] {
            assert!(related(&at, &change("f", other)), "{other}");
            assert!(related(&change("f", other), &at), "{other}");
        }
        // Siblings, names that only share a prefix, other folders.
        for other in ["a/c", "a/bc", "a/b.txt", "a/b0", "b", "ab", "a/"] {
            assert!(!related(&at, &change("f", other)), "{other}");
            assert!(!related(&change("f", other), &at), "{other}");
        }
        for other in ["a/b", "a", "a/b/c"] {
            assert!(!related(&at, &change("g", other)), "{other}");
        }
    }

    #[test]
    fn changes_widen_the_scan_to_their_common_directory() {
        assert_eq!(common_dir("a/b/c", "a/b/d"), "a/b");
        assert_eq!(common_dir("a/b", "a/b/c"), "a/b");
        assert_eq!(common_dir("a/bc", "a/b"), "a");
        assert_eq!(common_dir("a", "b"), "");
        assert_eq!(common_dir("", "a/b"), "");
        let mut dirty = Dirty::default();
        dirty.mark(0, "docs/2026/nov");
        dirty.mark(0, "docs/2026/oct");
        dirty.mark(1, "x");
        let marked: Vec<_> = dirty.take().into_iter().collect();
        assert_eq!(marked, [(0, "docs/2026".to_owned()), (1, "x".to_owned())]);
        assert!(dirty.is_empty());
        assert_eq!(parent_dir(std::path::Path::new("a/b/c.txt")), "a/b");
        assert_eq!(parent_dir(std::path::Path::new("c.txt")), "");
    }
}
