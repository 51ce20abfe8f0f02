//! A user's identity: the login secret, the password KDF, and the RSA-2048 key
//! pair that folder and file keys are wrapped for.
//!
//! - The **login secret** `SHA-256("coffer-auth-v1" ‖ username ‖ ":" ‖ password)`
//!   is what the server checks (it stores bcrypt of it); the password itself
//!   never leaves the client.
//! - The **private key** is sealed under Argon2id(password, per-user salt) and
//!   kept by the server, so a new device can log in and unwrap it. A wrong
//!   password fails the envelope's tag: a clear error, not garbage.
//! - **Folder keys** (and, for single-file shares, **file keys**) are wrapped for
//!   each member with RSA-OAEP(SHA-256), with a label per kind of key so one kind
//!   never unwraps as another. Decryption is blinded, and the RSA arithmetic is
//!   constant-time (crypto-bigint).

use argon2::{Algorithm, Argon2, Params, Version};
use rand_core::CryptoRng;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::envelope::{Purpose, Sealer};
use crate::error::{KeyError, OpenError};
use crate::keys::{FileKey, FolderKey, SecretKey};

/// RSA modulus size of every user key.
pub const RSA_BITS: usize = 2048;

const FOLDER_KEY_LABEL: &[u8] = b"coffer/v1/folder-key";
const FILE_KEY_LABEL: &[u8] = b"coffer/v1/file-key";

/// The login secret of `username` (already normalized to lowercase) and `password`.
pub fn login_secret(username: &str, password: &str) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(b"coffer-auth-v1");
    h.update(username.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    Zeroizing::new(h.finalize().into())
}

/// Argon2id parameters and salt for one user's password key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// Per-user random salt, 16 to 64 bytes.
    pub salt: Vec<u8>,
}

impl KdfParams {
    /// The algorithm name carried beside the parameters on the wire.
    pub const ALG: &'static str = "argon2id";
    /// Most memory a client agrees to spend (1 GiB): parameters come back from
    /// the server, which must not be able to exhaust a client's memory.
    pub const MAX_M_COST_KIB: u32 = 1 << 20;
    /// Most iterations a client agrees to run.
    pub const MAX_T_COST: u32 = 64;
    /// Most lanes a client agrees to run.
    pub const MAX_P_COST: u32 = 16;

    /// The parameters new accounts get: 64 MiB, 3 passes, 1 lane (RFC 9106's
    /// second recommended option, single-lane), a fresh 16-byte salt.
    pub fn recommended<R: CryptoRng + ?Sized>(rng: &mut R) -> KdfParams {
        Self::with_cost(rng, 64 * 1024, 3, 1)
    }

    /// Parameters of a chosen cost with a fresh salt. Tests and simulations use
    /// cheap ones; [`KdfParams::recommended`] is for real accounts.
    pub fn with_cost<R: CryptoRng + ?Sized>(
        rng: &mut R,
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
    ) -> KdfParams {
        let mut salt = vec![0u8; 16];
        rng.fill_bytes(&mut salt);
        KdfParams {
            m_cost_kib,
            t_cost,
            p_cost,
            salt,
        }
    }

    fn argon2(&self) -> Result<Argon2<'static>, KeyError> {
        let refuse = |reason: String| KeyError::KdfParams { reason };
        if self.m_cost_kib > Self::MAX_M_COST_KIB {
            return Err(refuse(format!(
                "memory cost {} KiB over {}",
                self.m_cost_kib,
                Self::MAX_M_COST_KIB
            )));
        }
        if self.t_cost > Self::MAX_T_COST {
            return Err(refuse(format!(
                "{} iterations over {}",
                self.t_cost,
                Self::MAX_T_COST
            )));
        }
        if self.p_cost > Self::MAX_P_COST {
            return Err(refuse(format!(
                "{} lanes over {}",
                self.p_cost,
                Self::MAX_P_COST
            )));
        }
        if !(16..=64).contains(&self.salt.len()) {
            return Err(refuse(format!(
                "salt of {} bytes, 16 to 64 required",
                self.salt.len()
            )));
        }
        let params = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| refuse(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Derives the password key.
    pub fn derive(&self, password: &str) -> Result<SecretKey, KeyError> {
        let mut out = Zeroizing::new([0u8; 32]);
        self.argon2()?
            .hash_password_into(password.as_bytes(), &self.salt, &mut out[..])
            .map_err(|e| KeyError::KdfParams {
                reason: e.to_string(),
            })?;
        Ok(SecretKey::from_bytes(*out))
    }
}

fn private_key_aad(username: &str) -> Vec<u8> {
    [b"coffer/v1/user:".as_slice(), username.as_bytes()].concat()
}

/// A user's RSA-2048 key pair.
#[derive(Clone)]
pub struct UserKeys {
    private: RsaPrivateKey,
    public: PublicKey,
}

impl std::fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserKeys")
            .field("fingerprint", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

impl UserKeys {
    /// Generates a new key pair (a fraction of a second to a few seconds).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> UserKeys {
        let private =
            RsaPrivateKey::new(rng, RSA_BITS).expect("2048-bit RSA key generation succeeds");
        Self::from_private(private)
    }

    fn from_private(private: RsaPrivateKey) -> UserKeys {
        let public = PublicKey(RsaPublicKey::from(&private));
        UserKeys { private, public }
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The private key as PKCS#8 DER, for a device's own key cache.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        let der = self
            .private
            .to_pkcs8_der()
            .expect("an RSA private key always encodes");
        Zeroizing::new(der.as_bytes().to_vec())
    }

    /// A key pair from PKCS#8 DER (a device's own key cache), refusing keys
    /// that are not RSA-2048.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<UserKeys, KeyError> {
        let private = RsaPrivateKey::from_pkcs8_der(der).map_err(|_| KeyError::Malformed {
            what: "private key",
        })?;
        if private.size() * 8 != RSA_BITS {
            return Err(KeyError::KeySize {
                bits: private.size() * 8,
                expected: RSA_BITS,
            });
        }
        Ok(Self::from_private(private))
    }

    /// Seals the private key (PKCS#8 DER) under the password key, bound to the username.
    pub fn wrap<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        username: &str,
        password: &str,
        kdf: &KdfParams,
    ) -> Result<Vec<u8>, KeyError> {
        let key = kdf.derive(password)?;
        let der = self
            .private
            .to_pkcs8_der()
            .map_err(|_| KeyError::Malformed {
                what: "private key",
            })?;
        Ok(Sealer::new(&key, Purpose::PrivateKey).seal(
            rng,
            &private_key_aad(username),
            der.as_bytes(),
        ))
    }

    /// Opens a wrapped private key. A wrong password (or altered bytes) is
    /// [`KeyError::WrongPassword`].
    pub fn unwrap(
        wrapped: &[u8],
        username: &str,
        password: &str,
        kdf: &KdfParams,
    ) -> Result<UserKeys, KeyError> {
        let key = kdf.derive(password)?;
        let der = Sealer::new(&key, Purpose::PrivateKey)
            .open(&private_key_aad(username), wrapped)
            .map_err(|e| match e {
                OpenError::Integrity { .. } => KeyError::WrongPassword,
                other => KeyError::Open(other),
            })?;
        Self::from_pkcs8_der(&Zeroizing::new(der))
    }

    fn decrypt<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: &'static [u8],
        what: &'static str,
        wrapped: &[u8],
    ) -> Result<SecretKey, KeyError> {
        let bytes = self
            .private
            .decrypt_blinded(rng, Oaep::<Sha256>::new_with_label(label), wrapped)
            .map_err(|_| KeyError::Unwrap { what })?;
        SecretKey::from_slice(&Zeroizing::new(bytes), what)
    }

    /// Unwraps a folder key wrapped for this user.
    pub fn unwrap_folder_key<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        wrapped: &[u8],
    ) -> Result<FolderKey, KeyError> {
        self.decrypt(rng, FOLDER_KEY_LABEL, "folder key", wrapped)
            .map(FolderKey)
    }

    /// Unwraps a file key shared with this user.
    pub fn unwrap_file_key<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        wrapped: &[u8],
    ) -> Result<FileKey, KeyError> {
        self.decrypt(rng, FILE_KEY_LABEL, "file key", wrapped)
            .map(FileKey)
    }
}

/// A user's public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(RsaPublicKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// Parses SubjectPublicKeyInfo DER, refusing keys that are not RSA-2048.
    pub fn from_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        let key = RsaPublicKey::from_public_key_der(der)
            .map_err(|_| KeyError::Malformed { what: "public key" })?;
        if key.size() * 8 != RSA_BITS {
            return Err(KeyError::KeySize {
                bits: key.size() * 8,
                expected: RSA_BITS,
            });
        }
        Ok(PublicKey(key))
    }

    /// SubjectPublicKeyInfo DER.
    pub fn to_der(&self) -> Vec<u8> {
        self.0
            .to_public_key_der()
            .expect("an RSA public key always encodes")
            .into_vec()
    }

    /// SHA-256 of the DER, as 16 groups of 4 hex digits: what users compare out
    /// of band before trusting a key.
    pub fn fingerprint(&self) -> String {
        let hex: Vec<String> = Sha256::digest(self.to_der())
            .chunks(2)
            .map(|pair| format!("{:02x}{:02x}", pair[0], pair[1]))
            .collect();
        hex.join(" ")
    }

    fn encrypt<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: &'static [u8],
        key: &SecretKey,
    ) -> Vec<u8> {
        self.0
            .encrypt(rng, Oaep::<Sha256>::new_with_label(label), key.expose())
            .expect("32 bytes fit in RSA-2048 OAEP-SHA256")
    }

    /// Wraps a folder key for this user.
    pub fn wrap_folder_key<R: CryptoRng + ?Sized>(&self, rng: &mut R, key: &FolderKey) -> Vec<u8> {
        self.encrypt(rng, FOLDER_KEY_LABEL, &key.0)
    }

    /// Wraps a file key for this user (single-file share).
    pub fn wrap_file_key<R: CryptoRng + ?Sized>(&self, rng: &mut R, key: &FileKey) -> Vec<u8> {
        self.encrypt(rng, FILE_KEY_LABEL, &key.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use std::sync::OnceLock;

    /// One key pair for the whole test binary: generation is the slow part.
    fn alice() -> &'static UserKeys {
        static KEYS: OnceLock<UserKeys> = OnceLock::new();
        KEYS.get_or_init(|| UserKeys::generate(&mut ChaCha20Rng::seed_from_u64(42)))
    }

    fn cheap_kdf() -> KdfParams {
        KdfParams::with_cost(&mut ChaCha20Rng::seed_from_u64(1), 64, 1, 1)
    }

    #[test]
    fn login_secret_is_the_documented_hash() {
        let expected: [u8; 32] = Sha256::digest(b"coffer-auth-v1alice:pw").into();
        assert_eq!(*login_secret("alice", "pw"), expected);
        assert_ne!(*login_secret("alice", "pw"), *login_secret("alic", "epw"));
    }

    #[test]
    fn private_key_round_trip_and_wrong_password() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let kdf = cheap_kdf();
        let wrapped = alice()
            .wrap(&mut rng, "alice", "correct horse", &kdf)
            .unwrap();
        let back = UserKeys::unwrap(&wrapped, "alice", "correct horse", &kdf).unwrap();
        assert_eq!(back.public(), alice().public());
        assert_eq!(
            UserKeys::unwrap(&wrapped, "alice", "wrong horse", &kdf).unwrap_err(),
            KeyError::WrongPassword
        );
        // Bound to the username and to the salt.
        assert!(UserKeys::unwrap(&wrapped, "mallory", "correct horse", &kdf).is_err());
        let other_salt = KdfParams {
            salt: vec![0; 16],
            ..kdf
        };
        assert!(UserKeys::unwrap(&wrapped, "alice", "correct horse", &other_salt).is_err());
    }

    #[test]
    fn hostile_kdf_parameters_are_refused_before_any_work() {
        let kdf = cheap_kdf();
        for bad in [
            KdfParams {
                m_cost_kib: KdfParams::MAX_M_COST_KIB + 1,
                ..kdf.clone()
            },
            KdfParams {
                t_cost: KdfParams::MAX_T_COST + 1,
                ..kdf.clone()
            },
            KdfParams {
                p_cost: KdfParams::MAX_P_COST + 1,
                ..kdf.clone()
            },
            KdfParams {
                salt: vec![1; 8],
                ..kdf.clone()
            },
            KdfParams {
                t_cost: 0,
                ..kdf.clone()
            },
        ] {
            assert!(
                matches!(bad.derive("pw"), Err(KeyError::KdfParams { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn folder_and_file_keys_wrap_for_their_owner_only() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let folder = FolderKey::generate(&mut rng);
        let wrapped = alice().public().wrap_folder_key(&mut rng, &folder);
        assert_eq!(wrapped.len(), RSA_BITS / 8);
        assert_eq!(
            alice().unwrap_folder_key(&mut rng, &wrapped).unwrap(),
            folder
        );
        // A folder-key wrapping never unwraps as a file key (labels differ).
        assert_eq!(
            alice().unwrap_file_key(&mut rng, &wrapped).unwrap_err(),
            KeyError::Unwrap { what: "file key" }
        );
        let mut flipped = wrapped.clone();
        flipped[100] ^= 1;
        assert!(alice().unwrap_folder_key(&mut rng, &flipped).is_err());
        let bob = UserKeys::generate(&mut ChaCha20Rng::seed_from_u64(43));
        assert!(bob.unwrap_folder_key(&mut rng, &wrapped).is_err());
        let file = FileKey::generate(&mut rng);
        let shared = bob.public().wrap_file_key(&mut rng, &file);
        assert_eq!(bob.unwrap_file_key(&mut rng, &shared).unwrap(), file);
    }

    #[test]
    fn public_keys_parse_and_refuse_garbage() {
        let der = alice().public().to_der();
        assert_eq!(&PublicKey::from_der(&der).unwrap(), alice().public());
        assert!(matches!(
            PublicKey::from_der(&der[1..]),
            Err(KeyError::Malformed { .. })
        ));
        let fp = alice().public().fingerprint();
        assert_eq!(fp.len(), 16 * 4 + 15);
    }
}
