//! The content-addressed chunk store: `DATA/chunks/ab/cdef…`, one file per
//! sealed chunk, named by the SHA-256 of its bytes.
//!
//! A chunk is written to a temporary file, fsynced, renamed into place, and its
//! directory fsynced: once `put` returns, the chunk survives a crash or a power
//! cut, and a half-written chunk is never visible under its name.
//!
//! Each file is the chunk's bytes followed by their CRC32C (4 bytes, little
//! endian). The SHA-256 is checked once, when a chunk arrives; reads check the
//! CRC, which catches rot on disk at a twentieth of the cost, so a rotten
//! chunk is reported, never served. (Deliberate alteration is not the CRC's
//! business: the client's MAC over every chunk catches that.)

use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of the checksum after a chunk's bytes.
const CRC_LEN: usize = 4;

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
    /// The file's bytes no longer match their checksum.
    #[error("stored chunk is corrupt")]
    Corrupt,
    /// Reading failed.
    #[error(transparent)]
    Io(io::Error),
}

/// Drops a chunk file's pages from the page cache. Chunk data streams
/// through the server (written once, read once per device that fetches it);
/// left in the cache, a few large transfers would evict everything else,
/// the database's pages first. Storage servers bypass the cache for bulk
/// data for the same reason (direct I/O in Ceph's BlueStore and in MinIO);
/// this is the portable form. Advice only: failure changes nothing.
fn uncache(file: &File) {
    let _ = nix::fcntl::posix_fadvise(
        file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
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
        file.write_all(&crc32c::crc32c(bytes).to_le_bytes())?;
        file.sync_all()?;
        uncache(&file);
        drop(file);
        let dir = target.parent().expect("chunk paths have a directory");
        if !dir.is_dir() {
            fs::create_dir_all(dir)?;
            sync_dir(&self.root)?;
        }
        fs::rename(&tmp, &target)?;
        sync_dir(dir)
    }

    /// Whether a chunk is stored here (not whether it reads back sound).
    pub(crate) fn has(&self, hash: &[u8; 32]) -> bool {
        self.path(hash).is_file()
    }

    /// Reads a chunk, verifying its checksum.
    pub(crate) fn get(&self, hash: &[u8; 32]) -> Result<Vec<u8>, ReadError> {
        let mut file = match File::open(self.path(hash)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
            Err(e) => return Err(ReadError::Io(e)),
        };
        let mut bytes = Vec::with_capacity(file.metadata().map_or(0, |m| m.len() as usize));
        file.read_to_end(&mut bytes).map_err(ReadError::Io)?;
        uncache(&file);
        let Some(len) = bytes.len().checked_sub(CRC_LEN) else {
            return Err(ReadError::Corrupt);
        };
        let stored = u32::from_le_bytes(bytes[len..].try_into().expect("four bytes"));
        if crc32c::crc32c(&bytes[..len]) != stored {
            return Err(ReadError::Corrupt);
        }
        bytes.truncate(len);
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
    use sha2::{Digest, Sha256};

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
        // Rot on disk is caught at read: in the bytes, in the checksum, or a
        // file cut short.
        let path = store.path(&hash);
        let good = fs::read(&path).unwrap();
        assert_eq!(good.len(), bytes.len() + CRC_LEN);
        for at in [0, bytes.len() - 1, bytes.len(), good.len() - 1] {
            let mut rotten = good.clone();
            rotten[at] ^= 0x10;
            fs::write(&path, rotten).unwrap();
            assert!(
                matches!(store.get(&hash), Err(ReadError::Corrupt)),
                "flipped byte {at}"
            );
        }
        for len in [0, 3, good.len() - 1] {
            fs::write(&path, &good[..len]).unwrap();
            assert!(
                matches!(store.get(&hash), Err(ReadError::Corrupt)),
                "cut to {len}"
            );
        }
        fs::write(&path, &good).unwrap();
        assert_eq!(store.get(&hash).unwrap(), bytes);
        store.remove(&hash).unwrap();
        store.remove(&hash).unwrap();
        assert!(!store.path(&hash).exists());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
