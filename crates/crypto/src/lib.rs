//! Coffer's cryptography: the key hierarchy and the chunk envelope. No IO.
//!
//! The server only ever holds ciphertext. What the client does:
//!
//! ```text
//! password ──Argon2id(salt)──▶ password key ──seals──▶ RSA-2048 private key   (identity)
//! password ──SHA-256("coffer-auth-v1"‖user‖":"‖pw)──▶ login secret             (identity)
//! RSA public key ──OAEP-SHA256 wraps──▶ folder key (per member, per epoch)     (identity)
//! folder key ──seals (bound to folder, epoch, file)──▶ file key                (keys)
//! file key ──HKDF──▶ chunk keys ──seal──▶ chunk i (bound to file id and i)     (chunk)
//! file key ──HKDF──▶ meta keys ──seal──▶ plaintext SHA-256, size, mtime        (meta)
//! ```
//!
//! Every sealing is the same [`envelope`]: AES-256-CFB with a random IV, then
//! HMAC-SHA256 over version, associated data, IV and ciphertext, with subkeys
//! from HKDF per purpose. Randomness is always a `CryptoRng` argument, so tests
//! and the simulation are reproducible and nothing here touches the OS.
//!
//! ```
//! use coffer_crypto::{ChunkCipher, FileKey, content_address};
//! # use rand_core::SeedableRng;
//! # let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! let key = FileKey::generate(&mut rng);
//! let chunks = ChunkCipher::new(&key, [1; 16]);
//! let sealed = chunks.seal(&mut rng, 0, b"first chunk");
//! let address = content_address(&sealed); // what the server verifies and stores under
//! assert_eq!(chunks.open(0, &sealed).unwrap(), b"first chunk");
//! assert!(chunks.open(1, &sealed).is_err()); // moved to another index: refused
//! # let _ = address;
//! ```
//!
//! Secrets live in zeroize-on-drop types with redacted `Debug`.

pub mod chunk;
pub mod envelope;
pub mod error;
pub mod identity;
pub mod keys;
pub mod meta;

pub use chunk::{ChunkCipher, content_address};
pub use error::{KeyError, MetaError, OpenError};
pub use identity::{KdfParams, PublicKey, UserKeys, login_secret};
pub use keys::{FileKey, FileKeyContext, FolderKey, SecretKey, unwrap_file_key, wrap_file_key};
pub use meta::FileMeta;
pub use sha2::{Digest, Sha256};

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
