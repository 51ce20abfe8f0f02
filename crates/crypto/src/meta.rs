//! Encrypted per-file metadata: what the server must not read about a file.
//!
//! The plaintext SHA-256 of the file travels here, sealed under the file key and
//! bound to the file id; a client checks it after every download. So does the
//! modification time and mode a sync client restores, and — for a later version
//! with encrypted names — the file's real name.
//!
//! ```text
//! format (1) = 1 ‖ sha256 (32) ‖ u64 size ‖ i64 mtime_ms ‖ u32 mode ‖ u16 name_len ‖ name
//! ```

use rand_core::CryptoRng;

use crate::envelope::{Purpose, Sealer};
use crate::error::MetaError;
use crate::keys::FileKey;

const FORMAT: u8 = 1;
const FIXED_LEN: usize = 1 + 32 + 8 + 8 + 4 + 2;

/// Longest name the metadata may carry, in bytes.
pub const MAX_META_NAME: usize = 4096;

/// What is known about a file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// SHA-256 of the whole plaintext.
    pub sha256: [u8; 32],
    /// Plaintext size.
    pub size: u64,
    /// Modification time on the writing device, Unix milliseconds.
    pub mtime_ms: i64,
    /// Unix permission bits; 0 when unknown.
    pub mode: u32,
    /// The file's name, when names are encrypted; empty otherwise.
    pub name: String,
}

impl FileMeta {
    fn encode(&self) -> Vec<u8> {
        assert!(self.name.len() <= MAX_META_NAME, "name over MAX_META_NAME");
        let mut out = Vec::with_capacity(FIXED_LEN + self.name.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.mtime_ms.to_be_bytes());
        out.extend_from_slice(&self.mode.to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<FileMeta, MetaError> {
        let malformed = |reason| MetaError::Malformed { reason };
        if bytes.len() < FIXED_LEN {
            return Err(malformed("shorter than its fixed fields"));
        }
        if bytes[0] != FORMAT {
            return Err(malformed("unknown format"));
        }
        let take = |at: usize, n: usize| &bytes[at..at + n];
        let name_len = u16::from_be_bytes(take(53, 2).try_into().expect("2 bytes")) as usize;
        if name_len > MAX_META_NAME {
            return Err(malformed("name too long"));
        }
        if bytes.len() != FIXED_LEN + name_len {
            return Err(malformed("length does not match its name length"));
        }
        let name = std::str::from_utf8(&bytes[FIXED_LEN..])
            .map_err(|_| malformed("name is not UTF-8"))?
            .to_owned();
        Ok(FileMeta {
            sha256: take(1, 32).try_into().expect("32 bytes"),
            size: u64::from_be_bytes(take(33, 8).try_into().expect("8 bytes")),
            mtime_ms: i64::from_be_bytes(take(41, 8).try_into().expect("8 bytes")),
            mode: u32::from_be_bytes(take(49, 4).try_into().expect("4 bytes")),
            name,
        })
    }

    /// Seals the metadata of file `file_id` under its key.
    pub fn seal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        key: &FileKey,
        file_id: [u8; 16],
    ) -> Vec<u8> {
        Sealer::new(&key.0, Purpose::Meta).seal(rng, &file_id, &self.encode())
    }

    /// Opens the metadata of file `file_id`.
    pub fn open(key: &FileKey, file_id: [u8; 16], sealed: &[u8]) -> Result<FileMeta, MetaError> {
        let plain = Sealer::new(&key.0, Purpose::Meta).open(&file_id, sealed)?;
        FileMeta::decode(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn key() -> FileKey {
        FileKey(SecretKey::from_bytes([4; 32]))
    }

    proptest! {
        #[test]
        fn round_trip(sha256: [u8; 32], size: u64, mtime_ms: i64, mode: u32, name in ".{0,40}", seed: u64) {
            let meta = FileMeta { sha256, size, mtime_ms, mode, name };
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let sealed = meta.seal(&mut rng, &key(), [1; 16]);
            prop_assert_eq!(FileMeta::open(&key(), [1; 16], &sealed)?, meta);
        }

        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = FileMeta::decode(&bytes);
        }
    }

    #[test]
    fn bound_to_its_file() {
        let meta = FileMeta {
            sha256: [0; 32],
            size: 1,
            mtime_ms: 0,
            mode: 0o644,
            name: String::new(),
        };
        let sealed = meta.seal(&mut ChaCha20Rng::seed_from_u64(1), &key(), [1; 16]);
        assert!(matches!(
            FileMeta::open(&key(), [2; 16], &sealed),
            Err(MetaError::Open(_))
        ));
    }

    #[test]
    fn malformed_plaintexts_are_refused() {
        let good = FileMeta {
            sha256: [0; 32],
            size: 1,
            mtime_ms: 0,
            mode: 0,
            name: "a".into(),
        }
        .encode();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(FileMeta::decode(&trailing).is_err());
        assert!(FileMeta::decode(&good[..good.len() - 1]).is_err());
        let mut bad_utf8 = good.clone();
        *bad_utf8.last_mut().unwrap() = 0xff;
        assert!(FileMeta::decode(&bad_utf8).is_err());
        let mut bad_format = good;
        bad_format[0] = 9;
        assert!(FileMeta::decode(&bad_format).is_err());
    }
}
