//! The scanner: compares a synced folder on disk with the local index and
//! says what changed.
//!
//! The walk is an iterative pre-order traversal with an explicit stack (a
//! deep tree cannot overflow the thread's stack), visiting names in byte
//! order so that two scans of the same tree report the same changes in the
//! same order. A file is hashed only when its size, modification time or
//! inode differ from the index; a file whose metadata changed but whose
//! content did not is reported as [`Change::Touched`] (the index is updated,
//! nothing is sent). A file deleted in one place and created with the same
//! content elsewhere in the same scan is reported as one [`Change::Moved`].
//!
//! Symbolic links, special files, names that are not UTF-8 and paths the
//! protocol refuses are skipped and reported, never followed or sent. A file
//! that changes while it is hashed is left for the next scan.

use std::collections::BTreeMap;
use std::fs::{self, Metadata};
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ignore::Ignore;
use crate::transfer::chunk_size_for;

/// What the index knows of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// A directory.
    Dir,
    /// A file, as last hashed.
    File(FileState),
}

/// A file's metadata and content hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Inode number (0 where there is none).
    pub inode: u64,
    /// SHA-256 of the whole content.
    pub sha256: [u8; 32],
    /// The chunk size the hashes below are for.
    pub chunk_size: u32,
    /// SHA-256 of each plaintext chunk, in order.
    pub chunks: Vec<[u8; 32]>,
}

impl FileState {
    /// The state of a file with metadata `m` and the given content hashes.
    pub fn new(m: &Metadata, sha256: [u8; 32], chunk_size: u32, chunks: Vec<[u8; 32]>) -> Self {
        let Stat {
            size,
            mtime_ns,
            inode,
        } = stat(m);
        FileState {
            size,
            mtime_ns,
            inode,
            sha256,
            chunk_size,
            chunks,
        }
    }

    /// Whether a file with metadata `m` is, as far as its metadata tells,
    /// the file this state was taken of.
    pub fn matches(&self, m: &Metadata) -> bool {
        self.same_metadata(&stat(m))
    }

    fn same_metadata(&self, m: &Stat) -> bool {
        self.size == m.size && self.mtime_ns == m.mtime_ns && self.inode == m.inode
    }
}

/// One difference between the disk and the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A directory appeared.
    DirCreated(String),
    /// A directory went away (its contents are reported on their own).
    DirDeleted(String),
    /// A file appeared.
    Created(String, FileState),
    /// A file's content changed.
    Modified(String, FileState),
    /// A file's metadata changed but not its content.
    Touched(String, FileState),
    /// A file went away.
    Deleted(String),
    /// A file moved, content unchanged.
    Moved {
        /// Where it was.
        from: String,
        /// Where it is.
        to: String,
        /// Its state there.
        state: FileState,
    },
}

impl Change {
    /// The path it concerns (the destination for a move).
    pub fn path(&self) -> &str {
        match self {
            Change::DirCreated(p)
            | Change::DirDeleted(p)
            | Change::Created(p, _)
            | Change::Modified(p, _)
            | Change::Touched(p, _)
            | Change::Deleted(p) => p,
            Change::Moved { to, .. } => to,
        }
    }
}

/// The result of a scan.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Differences, in walk order (deletions and moves after the walk).
    pub changes: Vec<Change>,
    /// Paths left alone, and why.
    pub skipped: Vec<(String, String)>,
    /// Files hashed (their metadata differed from the index).
    pub hashed: usize,
    /// Temporary files of downloads (`.coffer-tmp-*.part`) nothing has
    /// written to for [`STALE_TEMP`]: left by a daemon or a `get` that was
    /// killed, since a live one writes, renames or removes its own.
    pub stale_temps: Vec<PathBuf>,
}

/// How long a download's temporary file goes unwritten before it counts as
/// abandoned. A live transfer writes its file as the chunks arrive, each
/// chunk within a request deadline of a minute; an hour leaves a wide margin.
pub const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Whether the file `name` with `meta` is an abandoned download temporary.
fn stale_temp(name: &str, meta: &Metadata) -> bool {
    name.starts_with(crate::transfer::TEMP_PREFIX)
        && name.ends_with(".part")
        && meta.is_file()
        && meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= STALE_TEMP)
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    size: u64,
    mtime_ns: i64,
    inode: u64,
}

fn stat(m: &Metadata) -> Stat {
    #[cfg(unix)]
    let (mtime_ns, inode) = {
        use std::os::unix::fs::MetadataExt;
        (m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.ino())
    };
    #[cfg(not(unix))]
    let (mtime_ns, inode) = (
        m.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64),
        0,
    );
    Stat {
        size: m.len(),
        mtime_ns,
        inode,
    }
}

/// Reads `path` once: the whole file's SHA-256 and each chunk's. `None` when
/// the file changed while it was read (its metadata moved, or its length
/// disagrees), so that a half-written file is never reported.
pub fn hash_file(path: &Path) -> std::io::Result<Option<FileState>> {
    let mut file = fs::File::open(path)?;
    let before = stat(&file.metadata()?);
    let chunk_size = chunk_size_for(before.size).map_err(std::io::Error::other)?;
    let mut whole = Sha256::new();
    let mut chunks = Vec::with_capacity(before.size.div_ceil(u64::from(chunk_size)) as usize);
    let mut buf = vec![0u8; 256 * 1024];
    let mut chunk = Sha256::new();
    let (mut in_chunk, mut total) = (0u64, 0u64);
    loop {
        let want = buf.len().min((u64::from(chunk_size) - in_chunk) as usize);
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        chunk.update(&buf[..n]);
        in_chunk += n as u64;
        total += n as u64;
        if in_chunk == u64::from(chunk_size) {
            chunks.push(std::mem::take(&mut chunk).finalize().into());
            in_chunk = 0;
        }
    }
    if in_chunk > 0 {
        chunks.push(chunk.finalize().into());
    }
    let after = stat(&fs::symlink_metadata(path)?);
    if total != before.size
        || after.size != before.size
        || after.mtime_ns != before.mtime_ns
        || after.inode != before.inode
    {
        return Ok(None);
    }
    Ok(Some(FileState {
        size: before.size,
        mtime_ns: before.mtime_ns,
        inode: before.inode,
        sha256: whole.finalize().into(),
        chunk_size,
        chunks,
    }))
}

/// Walks the folder at `root` and compares it with `index` (path → what was
/// known). Paths the ignore rules cover are neither reported nor deleted.
pub fn scan(
    root: &Path,
    index: &BTreeMap<String, Known>,
    ignore: &Ignore,
) -> std::io::Result<Scan> {
    scan_under(root, "", index, ignore)
}

/// [`scan`] of the directory `scope` only (`""`: the whole folder), which the
/// index must know as a directory: only what is below it is walked, and only
/// index entries below it can be reported gone.
pub fn scan_under(
    root: &Path,
    scope: &str,
    index: &BTreeMap<String, Known>,
    ignore: &Ignore,
) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    let (top, start) = if scope.is_empty() {
        (String::new(), root.to_owned())
    } else {
        let mut dir = root.to_owned();
        dir.extend(scope.split('/'));
        (format!("{scope}/"), dir)
    };
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // Each level: its path prefix and its entries not yet visited, in name
    // order. A directory is listed when it is reached and its entries are
    // visited before its next sibling: pre-order, depth first.
    let mut stack: Vec<(String, std::vec::IntoIter<(std::ffi::OsString, PathBuf)>)> =
        vec![(top.clone(), list(&start)?.into_iter())];
    while let Some((prefix, entries)) = stack.last_mut() {
        let Some((name, full)) = entries.next() else {
            stack.pop();
            continue;
        };
        let prefix = prefix.clone();
        let Some(name) = name.to_str() else {
            let shown = name.to_string_lossy();
            out.skipped
                .push((format!("{prefix}{shown}"), "name is not UTF-8".into()));
            continue;
        };
        let path = format!("{prefix}{name}");
        let Ok(meta) = fs::symlink_metadata(&full) else {
            continue; // gone since the listing
        };
        let is_dir = meta.is_dir();
        if ignore.ignores(&path, is_dir) {
            if stale_temp(name, &meta) {
                out.stale_temps.push(full);
            }
            mark_subtree(index, &path, &mut seen);
            continue;
        }
        if let Err(e) = coffer_proto::path::validate(&path) {
            out.skipped.push((path, e.to_string()));
            continue;
        }
        if meta.file_type().is_symlink() {
            out.skipped
                .push((path, "symbolic links are not synced".into()));
            continue;
        }
        if is_dir {
            match index.get_key_value(path.as_str()) {
                Some((key, Known::Dir)) => {
                    seen.insert(key);
                }
                Some((key, Known::File(_))) => {
                    // A file became a directory.
                    seen.insert(key);
                    out.changes.push(Change::Deleted(path.clone()));
                    out.changes.push(Change::DirCreated(path.clone()));
                }
                None => out.changes.push(Change::DirCreated(path.clone())),
            }
            match list(&full) {
                Ok(children) => stack.push((format!("{path}/"), children.into_iter())),
                Err(e) => {
                    // Unreadable or gone since it was listed: what the index
                    // holds below it stays until a later scan can say.
                    out.skipped.push((path.clone(), e.to_string()));
                    mark_subtree(index, &path, &mut seen);
                }
            }
            continue;
        }
        if !meta.is_file() {
            out.skipped.push((path, "not a regular file".into()));
            continue;
        }
        let known = index.get_key_value(path.as_str());
        if let Some((key, _)) = known {
            seen.insert(key);
        }
        let now = stat(&meta);
        let previous = match known.map(|(_, k)| k) {
            Some(Known::File(state)) if state.same_metadata(&now) => continue,
            Some(Known::File(state)) => Some(state),
            Some(Known::Dir) => {
                out.changes.push(Change::DirDeleted(path.clone()));
                None
            }
            None => None,
        };
        out.hashed += 1;
        let state = match hash_file(&full) {
            Ok(Some(state)) => state,
            Ok(None) => {
                out.skipped
                    .push((path, "changed while it was read; next scan".into()));
                continue;
            }
            Err(e) => {
                out.skipped.push((path, e.to_string()));
                continue;
            }
        };
        out.changes.push(match previous {
            Some(old) if old.sha256 == state.sha256 && old.size == state.size => {
                Change::Touched(path, state)
            }
            Some(_) => Change::Modified(path, state),
            None => Change::Created(path, state),
        });
    }
    let gone: Vec<(&String, &Known)> = index
        .iter()
        .filter(|(p, _)| p.starts_with(&top) && !seen.contains(p.as_str()))
        .collect();
    // Deepest first, so a directory is deleted after what it held.
    for (path, known) in gone.into_iter().rev() {
        out.changes.push(match known {
            Known::Dir => Change::DirDeleted(path.clone()),
            Known::File(_) => Change::Deleted(path.clone()),
        });
    }
    out.changes = pair_moves(std::mem::take(&mut out.changes), index);
    Ok(out)
}

/// A directory's entries (name and full path), sorted by name; the listing
/// is closed before its entries are visited.
fn list(dir: &Path) -> std::io::Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let mut entries: Vec<(std::ffi::OsString, PathBuf)> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| (e.file_name(), e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

/// Marks `path` and everything the index holds below it as seen.
fn mark_subtree<'a>(
    index: &'a BTreeMap<String, Known>,
    path: &str,
    seen: &mut std::collections::HashSet<&'a str>,
) {
    if let Some((key, _)) = index.get_key_value(path) {
        seen.insert(key);
    }
    let below = format!("{path}/");
    for (key, _) in index
        .range(below.clone()..)
        .take_while(|(k, _)| k.starts_with(&below))
    {
        seen.insert(key);
    }
}

/// Turns a deletion and a creation of the same content (same size and
/// SHA-256, and the same inode when the file system has them) into one move.
/// Each deletion pairs with at most one creation, the first in path order.
fn pair_moves(changes: Vec<Change>, index: &BTreeMap<String, Known>) -> Vec<Change> {
    use std::collections::{HashMap, VecDeque};
    // Creations by content, and by content and inode, in walk order; each
    // is taken at most once, so pairing is linear however many files share
    // a content (empty files, copies).
    let mut by_content: HashMap<([u8; 32], u64), VecDeque<usize>> = HashMap::new();
    let mut by_inode: HashMap<([u8; 32], u64, u64), VecDeque<usize>> = HashMap::new();
    for (i, change) in changes.iter().enumerate() {
        if let Change::Created(_, s) = change {
            by_content
                .entry((s.sha256, s.size))
                .or_default()
                .push_back(i);
            by_inode
                .entry((s.sha256, s.size, s.inode))
                .or_default()
                .push_back(i);
        }
    }
    if by_content.is_empty() {
        return changes;
    }
    let mut taken = vec![false; changes.len()];
    let mut pairs = Vec::new();
    for (d, change) in changes.iter().enumerate() {
        let Change::Deleted(from) = change else {
            continue;
        };
        let Some(Known::File(old)) = index.get(from) else {
            continue;
        };
        let queue = if old.inode == 0 {
            by_content.get_mut(&(old.sha256, old.size))
        } else {
            by_inode.get_mut(&(old.sha256, old.size, old.inode))
        };
        let Some(queue) = queue else {
            continue;
        };
        while let Some(c) = queue.pop_front() {
            if !std::mem::replace(&mut taken[c], true) {
                pairs.push((d, c));
                break;
            }
        }
    }
    let mut slots: Vec<Option<Change>> = changes.into_iter().map(Some).collect();
    for (d, c) in pairs {
        let (Some(Change::Deleted(from)), Some(Change::Created(to, state))) =
            (slots[d].take(), slots[c].take())
        else {
            unreachable!("paired above")
        };
        slots[c] = Some(Change::Moved { from, to, state });
    }
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a scan to an index, as the daemon does once changes are sent.
    fn apply(index: &mut BTreeMap<String, Known>, scan: &Scan) {
        for change in &scan.changes {
            match change {
                Change::DirCreated(p) => {
                    index.insert(p.clone(), Known::Dir);
                }
                Change::DirDeleted(p) | Change::Deleted(p) => {
                    index.remove(p);
                }
                Change::Created(p, s) | Change::Modified(p, s) | Change::Touched(p, s) => {
                    index.insert(p.clone(), Known::File(s.clone()));
                }
                Change::Moved { from, to, state } => {
                    index.remove(from);
                    index.insert(to.clone(), Known::File(state.clone()));
                }
            }
        }
    }

    fn kinds(scan: &Scan) -> Vec<String> {
        scan.changes
            .iter()
            .map(|c| match c {
                Change::DirCreated(p) => format!("+dir {p}"),
                Change::DirDeleted(p) => format!("-dir {p}"),
                Change::Created(p, _) => format!("+ {p}"),
                Change::Modified(p, _) => format!("~ {p}"),
                Change::Touched(p, _) => format!("= {p}"),
                Change::Deleted(p) => format!("- {p}"),
                Change::Moved { from, to, .. } => format!("{from} -> {to}"),
            })
            .collect()
    }

    #[test]
    fn a_tree_is_reported_in_order_then_only_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b/deep")).unwrap();
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("b/deep/x.txt"), b"x").unwrap();
        fs::write(root.join("a/one.txt"), b"one").unwrap();
        fs::write(root.join("top.txt"), b"top").unwrap();
        fs::write(root.join("a/.one.txt.swp"), b"editor").unwrap();
        let ignore = Ignore::default();
        let mut index = BTreeMap::new();
        let first = scan(root, &index, &ignore).unwrap();
        assert_eq!(
            kinds(&first),
            [
                "+dir a",
                "+ a/one.txt",
                "+dir b",
                "+dir b/deep",
                "+ b/deep/x.txt",
                "+ top.txt"
            ]
        );
        apply(&mut index, &first);
        // Nothing changed: nothing hashed, nothing reported.
        let again = scan(root, &index, &ignore).unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(again.hashed, 0);

        fs::write(root.join("top.txt"), b"TOP, longer").unwrap();
        fs::rename(root.join("a/one.txt"), root.join("b/one.txt")).unwrap();
        fs::remove_dir_all(root.join("b/deep")).unwrap();
        let changed = scan(root, &index, &ignore).unwrap();
        assert_eq!(
            kinds(&changed),
            [
                "a/one.txt -> b/one.txt",
                "~ top.txt",
                "- b/deep/x.txt",
                "-dir b/deep"
            ]
        );
        apply(&mut index, &changed);
        assert!(scan(root, &index, &ignore).unwrap().changes.is_empty());
    }

    #[test]
    fn a_scoped_scan_sees_only_below_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/sub")).unwrap();
        fs::create_dir_all(root.join("ab")).unwrap();
        fs::write(root.join("a/x.txt"), b"x").unwrap();
        fs::write(root.join("ab/y.txt"), b"y").unwrap();
        let ignore = Ignore::default();
        let mut index = BTreeMap::new();
        let first = scan(root, &index, &ignore).unwrap();
        apply(&mut index, &first);

        fs::write(root.join("a/sub/new.txt"), b"new").unwrap();
        fs::remove_file(root.join("a/x.txt")).unwrap();
        fs::remove_file(root.join("ab/y.txt")).unwrap();
        fs::write(root.join("top.txt"), b"top").unwrap();
        let scoped = scan_under(root, "a", &index, &ignore).unwrap();
        // "ab" sorts right after "a/": its deleted file is outside the scope.
        assert_eq!(kinds(&scoped), ["+ a/sub/new.txt", "- a/x.txt"]);
        let whole = scan(root, &index, &ignore).unwrap();
        assert_eq!(
            kinds(&whole),
            ["+ a/sub/new.txt", "+ top.txt", "- ab/y.txt", "- a/x.txt"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn files_with_the_same_content_move_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in ["a1", "a2", "a3"] {
            fs::write(root.join(name), b"same").unwrap();
        }
        let ignore = Ignore::default();
        let mut index = BTreeMap::new();
        let first = scan(root, &index, &ignore).unwrap();
        apply(&mut index, &first);
        // Crossed renames: each file must pair with itself, not the first copy.
        fs::rename(root.join("a1"), root.join("z1")).unwrap();
        fs::rename(root.join("a2"), root.join("b2")).unwrap();
        fs::write(root.join("c"), b"same").unwrap();
        let moved = scan(root, &index, &ignore).unwrap();
        assert_eq!(kinds(&moved), ["a2 -> b2", "+ c", "a1 -> z1"]);
    }

    #[test]
    fn same_content_with_new_metadata_is_only_touched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"same").unwrap();
        let ignore = Ignore::default();
        let mut index = BTreeMap::new();
        let first = scan(dir.path(), &index, &ignore).unwrap();
        apply(&mut index, &first);
        let Known::File(state) = index["f"].clone() else {
            panic!()
        };
        index.insert(
            "f".into(),
            Known::File(FileState {
                mtime_ns: state.mtime_ns - 5_000_000_000,
                ..state
            }),
        );
        assert_eq!(kinds(&scan(dir.path(), &index, &ignore).unwrap()), ["= f"]);
    }

    #[test]
    fn ignored_paths_are_neither_reported_nor_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("build/out")).unwrap();
        fs::write(root.join("build/out/bin"), b"1").unwrap();
        fs::write(root.join("keep.txt"), b"k").unwrap();
        let mut index = BTreeMap::new();
        let first = scan(root, &index, &Ignore::default()).unwrap();
        apply(&mut index, &first);
        assert!(index.contains_key("build/out/bin"));
        // Ignoring what was synced stops syncing it; it does not delete it.
        fs::write(root.join(".cofferignore"), "build/\n").unwrap();
        let ignore = Ignore::load(root).unwrap();
        let scan = scan(root, &index, &ignore).unwrap();
        assert!(scan.changes.is_empty(), "{:?}", scan.changes);
    }

    #[cfg(unix)]
    #[test]
    fn links_and_strange_names_are_skipped_not_followed() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        fs::write(root.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"x").unwrap();
        fs::write(root.join("ok"), b"x").unwrap();
        let scan = scan(root, &BTreeMap::new(), &Ignore::default()).unwrap();
        assert_eq!(kinds(&scan), ["+ ok"]);
        let skipped: Vec<&str> = scan.skipped.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(skipped, ["bad\u{fffd}name", "link"]);
    }

    #[test]
    fn only_download_temporaries_unwritten_for_an_hour_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let old = std::time::SystemTime::now() - STALE_TEMP - std::time::Duration::from_secs(60);
        let temp = |name: &str| format!("{}{name}.part", crate::transfer::TEMP_PREFIX);
        let age = |path: &Path| {
            fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        };
        fs::create_dir(root.join("sub")).unwrap();
        for stale in [temp("aa"), format!("sub/{}", temp("bb"))] {
            fs::write(root.join(&stale), b"half").unwrap();
            age(&root.join(&stale));
        }
        // Written to a moment ago: a download under way.
        fs::write(root.join(temp("cc")), b"half").unwrap();
        // Ignored, and old, but not ours.
        fs::write(root.join("notes.tmp"), b"x").unwrap();
        age(&root.join("notes.tmp"));
        fs::write(
            root.join(format!("{}dd", crate::transfer::TEMP_PREFIX)),
            b"x",
        )
        .unwrap();
        age(&root.join(format!("{}dd", crate::transfer::TEMP_PREFIX)));
        let scan = scan(root, &BTreeMap::new(), &Ignore::default()).unwrap();
        let mut stale = scan.stale_temps.clone();
        stale.sort();
        assert_eq!(
            stale,
            [root.join(temp("aa")), root.join("sub").join(temp("bb"))]
        );
        assert_eq!(kinds(&scan), ["+dir sub"], "temporaries are never synced");
    }

    #[test]
    fn chunk_hashes_cover_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..(2 * 1024 * 1024 + 10) as u32)
            .map(|i| (i % 253) as u8)
            .collect();
        fs::write(&path, &content).unwrap();
        let state = hash_file(&path).unwrap().unwrap();
        assert_eq!(state.chunk_size, 1024 * 1024);
        let expect: Vec<[u8; 32]> = content
            .chunks(1024 * 1024)
            .map(|c| Sha256::digest(c).into())
            .collect();
        assert_eq!(state.chunks, expect);
        assert_eq!(state.sha256, <[u8; 32]>::from(Sha256::digest(&content)));
        fs::write(&path, b"").unwrap();
        let empty = hash_file(&path).unwrap().unwrap();
        assert!(empty.chunks.is_empty());
    }

    /// 2,000 levels: a walker that recursed per level would need a frame per
    /// level on the test thread's 2 MiB stack; this one keeps its own stack.
    #[test]
    fn a_deep_tree_is_walked_to_its_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let mut path = dir.path().to_owned();
        for _ in 0..2000 {
            path.push("d");
        }
        fs::create_dir_all(&path).unwrap();
        fs::write(path.join("leaf"), b"x").unwrap();
        let scan = scan(dir.path(), &BTreeMap::new(), &Ignore::default()).unwrap();
        assert!(scan.skipped.is_empty(), "{:?}", scan.skipped.first());
        assert_eq!(scan.changes.len(), 2001);
        let leaf = format!("{}leaf", "d/".repeat(2000));
        assert!(matches!(scan.changes.last(), Some(Change::Created(p, _)) if *p == leaf));
    }
}
