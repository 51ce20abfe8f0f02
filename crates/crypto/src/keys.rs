//! Symmetric keys and the wrapping of file keys under folder keys.
//!
//! Every folder has a random 256-bit [`FolderKey`] per key epoch; every file a
//! random 256-bit [`FileKey`], wrapped under the folder key of the epoch it was
//! written in. The wrapping binds the file key to its folder, epoch and file id,
//! so a server that hands a client the wrong wrapped key is caught at unwrap.

use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::envelope::{Purpose, Sealer};
use crate::error::KeyError;

/// 256 secret bits. Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    /// A fresh random key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> SecretKey {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut key[..]);
        SecretKey(key)
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(Zeroizing::new(bytes))
    }

    /// A key from a slice that must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8], what: &'static str) -> Result<SecretKey, KeyError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed { what })?;
        Ok(SecretKey::from_bytes(array))
    }

    /// The key bytes. Named so that every use is visible in review.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0[..].ct_eq(&other.0[..]).into()
    }
}

impl Eq for SecretKey {}

/// A folder's key for one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderKey(pub SecretKey);

/// A file's key; chunk and metadata keys derive from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileKey(pub SecretKey);

impl FolderKey {
    /// A fresh random folder key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> FolderKey {
        FolderKey(SecretKey::generate(rng))
    }
}

impl FileKey {
    /// A fresh random file key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> FileKey {
        FileKey(SecretKey::generate(rng))
    }
}

/// Where a wrapped file key belongs: its folder, key epoch and file.
#[derive(Debug, Clone, Copy)]
pub struct FileKeyContext<'a> {
    /// The folder's id.
    pub folder_id: &'a str,
    /// The folder key epoch.
    pub epoch: u64,
    /// The file's id.
    pub file_id: [u8; 16],
}

impl FileKeyContext<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(4 + self.folder_id.len() + 8 + 16);
        let id_len = u32::try_from(self.folder_id.len()).expect("folder ids are short");
        aad.extend_from_slice(&id_len.to_be_bytes());
        aad.extend_from_slice(self.folder_id.as_bytes());
        aad.extend_from_slice(&self.epoch.to_be_bytes());
        aad.extend_from_slice(&self.file_id);
        aad
    }
}

/// Wraps a file key under a folder key (an envelope of 81 bytes).
pub fn wrap_file_key<R: CryptoRng + ?Sized>(
    rng: &mut R,
    folder_key: &FolderKey,
    ctx: FileKeyContext<'_>,
    file_key: &FileKey,
) -> Vec<u8> {
    Sealer::new(&folder_key.0, Purpose::FileKey).seal(rng, &ctx.aad(), file_key.0.expose())
}

/// Unwraps a file key, checking that it was wrapped for exactly this context.
pub fn unwrap_file_key(
    folder_key: &FolderKey,
    ctx: FileKeyContext<'_>,
    wrapped: &[u8],
) -> Result<FileKey, KeyError> {
    let bytes =
        Zeroizing::new(Sealer::new(&folder_key.0, Purpose::FileKey).open(&ctx.aad(), wrapped)?);
    Ok(FileKey(SecretKey::from_slice(&bytes, "file key")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn file_keys_unwrap_only_in_their_context() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let folder = FolderKey::generate(&mut rng);
        let file = FileKey::generate(&mut rng);
        let ctx = FileKeyContext {
            folder_id: "f1",
            epoch: 2,
            file_id: [9; 16],
        };
        let wrapped = wrap_file_key(&mut rng, &folder, ctx, &file);
        assert_eq!(unwrap_file_key(&folder, ctx, &wrapped).unwrap(), file);
        for other in [
            FileKeyContext {
                folder_id: "f2",
                ..ctx
            },
            FileKeyContext { epoch: 1, ..ctx },
            FileKeyContext {
                file_id: [8; 16],
                ..ctx
            },
        ] {
            assert!(matches!(
                unwrap_file_key(&folder, other, &wrapped),
                Err(KeyError::Open(_))
            ));
        }
        let stranger = FolderKey::generate(&mut rng);
        assert!(unwrap_file_key(&stranger, ctx, &wrapped).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let key = SecretKey::from_bytes([0xaa; 32]);
        assert!(!format!("{key:?}").contains("170"));
        assert!(!format!("{:?}", FileKey(key)).to_lowercase().contains("aa"));
    }
}
