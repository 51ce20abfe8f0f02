//! The content-addressed chunk store: `DATA/chunks/ab/cdef…`, one file per
//! sealed chunk, named by the SHA-256 of its bytes.
//!
//! A chunk is written to a temporary file, fsynced, renamed into place, and its
//! directory fsynced: once `put` returns, the chunk survives a crash or a power
//! cut, and a half-written chunk is never visible under its name. Reads verify
//! the hash, so a chunk rotted on disk is reported, never served.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// The chunk files of one server.
#[derive(Debug)]
pub(crate) struct ChunkStore {
    root: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

/// Why a stored chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// No such chunk.
    #[error("chunk not stored")]
    Missing,
    /// The file's bytes no longer hash to its name.
    #[error("stored chunk is corrupt")]
    Corrupt,
    /// Reading failed.
    #[error(transparent)]
    Io(io::Error),
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl ChunkStore {
    /// Opens (creating) `dir`, and clears temporary files a crash left behind.
    pub(crate) fn open(dir: &Path) -> io::Result<ChunkStore> {
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp)?;
        for leftover in fs::read_dir(&tmp)? {
            fs::remove_file(leftover?.path())?;
        }
        Ok(ChunkStore {
            root: dir.to_owned(),
            tmp,
            counter: AtomicU64::new(0),
        })
    }

    fn path(&self, hash: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(hash);
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    /// Stores `bytes` under `hash` (the caller has verified it), durably.
    pub(crate) fn put(&self, hash: &[u8; 32], bytes: &[u8]) -> io::Result<()> {
        let target = self.path(hash);
        if target.is_file() {
            return Ok(());
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}.{n}", hex::encode(hash)));
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        let dir = target.parent().expect("chunk paths have a directory");
        if !dir.is_dir() {
            fs::create_dir_all(dir)?;
            sync_dir(&self.root)?;
        }
        fs::rename(&tmp, &target)?;
        sync_dir(dir)
    }

    /// Reads a chunk, verifying its hash.
    pub(crate) fn get(&self, hash: &[u8; 32]) -> Result<Vec<u8>, ReadError> {
        let bytes = match fs::read(self.path(hash)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
            Err(e) => return Err(ReadError::Io(e)),
        };
        if Sha256::digest(&bytes)[..] != hash[..] {
            return Err(ReadError::Corrupt);
        }
        Ok(bytes)
    }

    /// Deletes a chunk nothing refers to any more.
    pub(crate) fn remove(&self, hash: &[u8; 32]) -> io::Result<()> {
        match fs::remove_file(self.path(hash)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_verify_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let bytes = b"sealed chunk".to_vec();
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        assert!(!store.path(&hash).exists());
        assert!(matches!(store.get(&hash), Err(ReadError::Missing)));
        store.put(&hash, &bytes).unwrap();
        store.put(&hash, &bytes).unwrap();
        assert_eq!(store.get(&hash).unwrap(), bytes);
        // Rot on disk is caught at read.
        let path = store.path(&hash);
        let mut rotten = fs::read(&path).unwrap();
        rotten[0] ^= 1;
        fs::write(&path, rotten).unwrap();
        assert!(matches!(store.get(&hash), Err(ReadError::Corrupt)));
        store.remove(&hash).unwrap();
        store.remove(&hash).unwrap();
        assert!(!store.path(&hash).exists());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
