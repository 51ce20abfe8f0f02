//! The local index, in the home's SQLite: per synced path, what the scanner
//! last saw (kind, size, modification time, inode, SHA-256 of the content and
//! of each plaintext chunk) and, once uploaded, the content address each
//! chunk was stored under — so an unchanged chunk is never sealed or sent
//! again.
//!
//! A path this device and the server agree on also carries the server
//! version it matches (number and version vector): the base of the next
//! upload, and how an echo of this device's own change is told from news.
//!
//! Rows are bounded when read back: a hash column that is not a whole number
//! of 32-byte hashes, or a chunk list longer than the protocol allows, is an
//! error, not a panic.

use std::collections::BTreeMap;

use coffer_proto::types::VersionVector;
use rusqlite::{Connection, OptionalExtension, params};

use super::scan::{FileState, Known};
use crate::home::{exec, one};

/// The table, created with the home's state.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sync_index (
    folder_id  TEXT NOT NULL,
    path       TEXT NOT NULL,
    is_dir     INTEGER NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    mtime_ns   INTEGER NOT NULL DEFAULT 0,
    inode      INTEGER NOT NULL DEFAULT 0,
    sha256     BLOB,
    chunk_size INTEGER NOT NULL DEFAULT 0,
    chunks     BLOB,
    stored     BLOB,
    version    INTEGER,
    vv         TEXT,
    PRIMARY KEY (folder_id, path)
) STRICT;
"#;

/// Why an index row could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// SQLite failed.
    #[error("sync index: {0}")]
    Db(#[from] rusqlite::Error),
    /// A row does not hold what the index writes.
    #[error("sync index: {path}: {what}")]
    Corrupt {
        /// The row's path.
        path: String,
        /// What is wrong.
        what: &'static str,
    },
}

/// The index of one home, over its database.
#[derive(Debug)]
pub struct Index<'a> {
    db: &'a Connection,
}

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A plaintext chunk's hash and the content address it was stored under.
pub type StoredChunk = (Hash, Hash);

/// The server version a path on disk matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The server's version number of the path.
    pub version: u64,
    /// Its version vector.
    pub vv: VersionVector,
}

/// Two optional BLOB columns.
type Blobs = (Option<Vec<u8>>, Option<Vec<u8>>);

fn hashes(path: &str, blob: &[u8]) -> Result<Vec<[u8; 32]>, IndexError> {
    let corrupt = |what| IndexError::Corrupt {
        path: path.to_owned(),
        what,
    };
    if !blob.len().is_multiple_of(32) {
        return Err(corrupt("chunk hashes are not whole"));
    }
    if blob.len() / 32 > coffer_proto::limits::MAX_CHUNKS_PER_FILE as usize {
        return Err(corrupt("more chunks than a file may have"));
    }
    Ok(blob
        .chunks_exact(32)
        .map(|h| h.try_into().expect("32 bytes"))
        .collect())
}

const COLUMNS: &str = "path, is_dir, size, mtime_ns, inode, sha256, chunk_size, chunks";

fn known_from_row(row: &rusqlite::Row<'_>) -> Result<(String, Known), IndexError> {
    let path: String = row.get(0)?;
    let known = if row.get::<_, bool>(1)? {
        Known::Dir
    } else {
        let sha256: Vec<u8> = row.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default();
        let sha256: [u8; 32] = sha256.try_into().map_err(|_| IndexError::Corrupt {
            path: path.clone(),
            what: "content hash is not 32 bytes",
        })?;
        let chunks = hashes(
            &path,
            &row.get::<_, Option<Vec<u8>>>(7)?.unwrap_or_default(),
        )?;
        Known::File(FileState {
            size: row.get::<_, i64>(2)?.max(0) as u64,
            mtime_ns: row.get(3)?,
            inode: row.get::<_, i64>(4)? as u64,
            sha256,
            chunk_size: row.get::<_, i64>(6)?.clamp(0, i64::from(u32::MAX)) as u32,
            chunks,
        })
    };
    Ok((path, known))
}

impl<'a> Index<'a> {
    pub(crate) fn new(db: &'a Connection) -> Self {
        Index { db }
    }

    /// Everything known of `folder_id`, by path.
    pub fn load(&self, folder_id: &str) -> Result<BTreeMap<String, Known>, IndexError> {
        self.load_under(folder_id, "")
    }

    /// What is known below the directory `dir` (everything for `""`).
    pub fn load_under(
        &self,
        folder_id: &str,
        dir: &str,
    ) -> Result<BTreeMap<String, Known>, IndexError> {
        // Every path below "a" sorts between "a/" and "a0" ('0' follows '/').
        let (low, high) = if dir.is_empty() {
            (String::new(), None)
        } else {
            (format!("{dir}/"), Some(format!("{dir}0")))
        };
        let mut statement = self.db.prepare(&format!(
            "SELECT {COLUMNS} FROM sync_index WHERE folder_id = ?1 AND path > ?2
             AND (?3 IS NULL OR path < ?3)"
        ))?;
        let mut rows = statement.query(params![folder_id, low, high])?;
        let mut out = BTreeMap::new();
        while let Some(row) = rows.next()? {
            let (path, known) = known_from_row(row)?;
            out.insert(path, known);
        }
        Ok(out)
    }

    /// What is known of one path.
    pub fn get(&self, folder_id: &str, path: &str) -> Result<Option<Known>, IndexError> {
        let mut statement = self.db.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM sync_index WHERE folder_id = ?1 AND path = ?2"
        ))?;
        let mut rows = statement.query(params![folder_id, path])?;
        match rows.next()? {
            Some(row) => Ok(Some(known_from_row(row)?.1)),
            None => Ok(None),
        }
    }

    /// Records what is now at `path`. A file's stored chunk addresses are
    /// kept while its chunk hashes are the same, and forgotten otherwise.
    pub fn put(&self, folder_id: &str, path: &str, known: &Known) -> Result<(), IndexError> {
        match known {
            Known::Dir => {
                exec(
                    self.db,
                    "INSERT OR REPLACE INTO sync_index (folder_id, path, is_dir) VALUES (?1, ?2, 1)",
                    params![folder_id, path],
                )?;
            }
            Known::File(f) => {
                let chunks: Vec<u8> = f.chunks.concat();
                exec(
                    self.db,
                    "INSERT INTO sync_index (folder_id, path, is_dir, size, mtime_ns, inode, sha256, chunk_size, chunks)
                     VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (folder_id, path) DO UPDATE SET is_dir = 0, size = ?3, mtime_ns = ?4,
                         inode = ?5, sha256 = ?6, chunk_size = ?7,
                         stored = CASE WHEN chunks IS ?8 THEN stored ELSE NULL END, chunks = ?8",
                    params![
                        folder_id,
                        path,
                        f.size as i64,
                        f.mtime_ns,
                        f.inode as i64,
                        &f.sha256[..],
                        i64::from(f.chunk_size),
                        chunks
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Forgets `path`.
    pub fn remove(&self, folder_id: &str, path: &str) -> Result<(), IndexError> {
        exec(
            self.db,
            "DELETE FROM sync_index WHERE folder_id = ?1 AND path = ?2",
            params![folder_id, path],
        )?;
        Ok(())
    }

    /// Records the server version `path` now matches.
    pub fn set_synced(
        &self,
        folder_id: &str,
        path: &str,
        synced: &Synced,
    ) -> Result<(), IndexError> {
        let vv = serde_json::to_string(&synced.vv).expect("a version vector serializes");
        exec(
            self.db,
            "UPDATE sync_index SET version = ?3, vv = ?4 WHERE folder_id = ?1 AND path = ?2",
            params![folder_id, path, synced.version as i64, vv],
        )?;
        Ok(())
    }

    /// The server version `path` matches, if it was ever synced.
    pub fn synced(&self, folder_id: &str, path: &str) -> Result<Option<Synced>, IndexError> {
        let row: Option<(Option<i64>, Option<String>)> = one(
            self.db,
            "SELECT version, vv FROM sync_index WHERE folder_id = ?1 AND path = ?2",
            params![folder_id, path],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
        let Some((Some(version), Some(vv))) = row else {
            return Ok(None);
        };
        if vv.len() > 64 * 1024 {
            return Err(IndexError::Corrupt {
                path: path.to_owned(),
                what: "version vector too long",
            });
        }
        let vv = serde_json::from_str(&vv).map_err(|_| IndexError::Corrupt {
            path: path.to_owned(),
            what: "version vector unreadable",
        })?;
        Ok(Some(Synced {
            version: version.max(0) as u64,
            vv,
        }))
    }

    /// Every synced path's server version number.
    pub fn versions(&self, folder_id: &str) -> Result<BTreeMap<String, u64>, IndexError> {
        let mut statement = self.db.prepare(
            "SELECT path, version FROM sync_index WHERE folder_id = ?1 AND version IS NOT NULL",
        )?;
        let rows = statement.query_map([folder_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Moves what is known of `from` (and, for a directory, everything
    /// below it) to `to`, replacing what was known there.
    pub fn rename(&self, folder_id: &str, from: &str, to: &str) -> Result<(), IndexError> {
        let tx = self.db.unchecked_transaction()?;
        exec(
            &tx,
            "DELETE FROM sync_index WHERE folder_id = ?1 AND (path = ?2 OR (path > ?3 AND path < ?4))",
            params![folder_id, to, format!("{to}/"), format!("{to}0")],
        )?;
        exec(
            &tx,
            "UPDATE sync_index SET path = ?5 || substr(path, ?6)
             WHERE folder_id = ?1 AND (path = ?2 OR (path > ?3 AND path < ?4))",
            params![
                folder_id,
                from,
                format!("{from}/"),
                format!("{from}0"),
                to,
                from.len() as i64 + 1
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets `path` and everything below it.
    pub fn remove_tree(&self, folder_id: &str, path: &str) -> Result<(), IndexError> {
        exec(
            self.db,
            "DELETE FROM sync_index WHERE folder_id = ?1 AND (path = ?2 OR (path > ?3 AND path < ?4))",
            params![folder_id, path, format!("{path}/"), format!("{path}0")],
        )?;
        Ok(())
    }

    /// Records where each chunk of the file at `path` was stored (content
    /// addresses, in chunk order), once the server acknowledged the upload.
    pub fn set_stored(
        &self,
        folder_id: &str,
        path: &str,
        stored: &[[u8; 32]],
    ) -> Result<(), IndexError> {
        exec(
            self.db,
            "UPDATE sync_index SET stored = ?3 WHERE folder_id = ?1 AND path = ?2",
            params![folder_id, path, stored.concat()],
        )?;
        Ok(())
    }

    /// For the file at `path`: each plaintext chunk hash with the content
    /// address it was stored under, when the upload of that content is known.
    pub fn stored(&self, folder_id: &str, path: &str) -> Result<Vec<StoredChunk>, IndexError> {
        let row: Option<Blobs> = one(
            self.db,
            "SELECT chunks, stored FROM sync_index WHERE folder_id = ?1 AND path = ?2",
            params![folder_id, path],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
        let Some((Some(chunks), Some(stored))) = row else {
            return Ok(Vec::new());
        };
        let (chunks, stored) = (hashes(path, &chunks)?, hashes(path, &stored)?);
        if chunks.len() != stored.len() {
            return Err(IndexError::Corrupt {
                path: path.to_owned(),
                what: "stored chunks do not match the chunk hashes",
            });
        }
        Ok(chunks.into_iter().zip(stored).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        db
    }

    fn file(n: u8, chunks: usize) -> FileState {
        FileState {
            size: 10 + u64::from(n),
            mtime_ns: 1_700_000_000_000_000_000 + i64::from(n),
            inode: 42,
            sha256: [n; 32],
            chunk_size: 1 << 20,
            chunks: (0..chunks).map(|i| [n ^ i as u8; 32]).collect(),
        }
    }

    #[test]
    fn entries_round_trip_per_folder() {
        let db = db();
        let index = Index::new(&db);
        index.put("f", "docs", &Known::Dir).unwrap();
        index.put("f", "docs/a", &Known::File(file(1, 3))).unwrap();
        index.put("g", "other", &Known::File(file(2, 0))).unwrap();
        let f = index.load("f").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f["docs"], Known::Dir);
        assert_eq!(f["docs/a"], Known::File(file(1, 3)));
        index.remove("f", "docs/a").unwrap();
        assert_eq!(index.load("f").unwrap().len(), 1);
        assert_eq!(index.load("g").unwrap()["other"], Known::File(file(2, 0)));
    }

    #[test]
    fn stored_addresses_last_while_the_chunks_do() {
        let db = db();
        let index = Index::new(&db);
        let state = file(1, 2);
        index.put("f", "a", &Known::File(state.clone())).unwrap();
        assert!(index.stored("f", "a").unwrap().is_empty());
        index.set_stored("f", "a", &[[7; 32], [8; 32]]).unwrap();
        let pairs = index.stored("f", "a").unwrap();
        assert_eq!(
            pairs,
            [(state.chunks[0], [7; 32]), (state.chunks[1], [8; 32])]
        );
        // Touched: same chunks, new metadata — the addresses stay.
        index
            .put(
                "f",
                "a",
                &Known::File(FileState {
                    mtime_ns: 5,
                    ..state.clone()
                }),
            )
            .unwrap();
        assert_eq!(index.stored("f", "a").unwrap().len(), 2);
        // New content: they go.
        index.put("f", "a", &Known::File(file(3, 2))).unwrap();
        assert!(index.stored("f", "a").unwrap().is_empty());
    }

    #[test]
    fn synced_versions_follow_renames_of_whole_trees() {
        let db = db();
        let index = Index::new(&db);
        let vv: VersionVector = [("n1".to_owned(), 3)]
            .into_iter()
            .collect::<BTreeMap<_, _>>()
            .into();
        index.put("f", "d", &Known::Dir).unwrap();
        index.put("f", "d/a", &Known::File(file(1, 1))).unwrap();
        index.put("f", "d0", &Known::File(file(2, 1))).unwrap();
        index.put("f", "e/old", &Known::File(file(3, 1))).unwrap();
        let synced = Synced { version: 4, vv };
        index.set_synced("f", "d/a", &synced).unwrap();
        assert_eq!(index.synced("f", "d/a").unwrap(), Some(synced.clone()));
        assert_eq!(index.synced("f", "d0").unwrap(), None);
        index.put("f", "e", &Known::Dir).unwrap();
        index.rename("f", "d", "e").unwrap();
        let known = index.load("f").unwrap();
        assert_eq!(known.keys().collect::<Vec<_>>(), ["d0", "e", "e/a"]);
        assert_eq!(index.synced("f", "e/a").unwrap(), Some(synced));
        assert_eq!(
            index.versions("f").unwrap().into_iter().collect::<Vec<_>>(),
            [("e/a".to_owned(), 4)]
        );
        assert_eq!(
            index
                .load_under("f", "e")
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["e/a"]
        );
        assert_eq!(index.load_under("f", "").unwrap().len(), 3);
        index.remove_tree("f", "e").unwrap();
        assert_eq!(index.load("f").unwrap().keys().collect::<Vec<_>>(), ["d0"]);
    }

    #[test]
    fn damaged_rows_are_errors_not_panics() {
        let db = db();
        let index = Index::new(&db);
        index.put("f", "a", &Known::File(file(1, 2))).unwrap();
        db.execute("UPDATE sync_index SET chunks = x'0102'", [])
            .unwrap();
        assert!(matches!(index.load("f"), Err(IndexError::Corrupt { .. })));
        db.execute("UPDATE sync_index SET chunks = NULL, sha256 = x'00'", [])
            .unwrap();
        assert!(matches!(index.load("f"), Err(IndexError::Corrupt { .. })));
    }
}
