//! The envelope: AES-256-CFB with a random IV, then HMAC-SHA256 over everything
//! (encrypt-then-MAC).
//!
//! ```text
//! sealed = version (1) ‖ IV (16) ‖ ciphertext (n) ‖ tag (32)
//! tag    = HMAC-SHA256(mac_key, version ‖ u32_be(len(aad)) ‖ aad ‖ IV ‖ ciphertext)
//! enc_key, mac_key = HKDF-SHA256(ikm = key, info = "coffer/v1/<purpose>/enc" | ".../mac")
//! ```
//!
//! CFB alone is malleable — flipping a ciphertext bit flips the same plaintext
//! bit — so the tag is checked, in constant time, before a byte is decrypted.
//! The associated data (`aad`) binds the sealed bytes to where they belong: a
//! chunk to its file id and index, a wrapped file key to its folder, epoch and
//! file. The purpose gives each use its own subkeys, so bytes sealed for one
//! use never open as another even under the same key.

use aes::Aes256;
use aes::cipher::{InnerIvInit, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::OpenError;
use crate::keys::SecretKey;

/// Format version written as the first byte of every envelope.
pub const VERSION: u8 = 1;
/// IV length: one AES block.
pub const IV_LEN: usize = 16;
/// Tag length: a full HMAC-SHA256 output.
pub const TAG_LEN: usize = 32;
/// Bytes before the ciphertext: the version and the IV.
pub const HEADER_LEN: usize = 1 + IV_LEN;
/// Bytes an envelope adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// What sealed bytes are for. Each purpose derives its own subkeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A content chunk, under a file key.
    Chunk,
    /// A file's encrypted metadata, under its file key.
    Meta,
    /// A file key, under a folder key.
    FileKey,
    /// A user's private key, under a password-derived key.
    PrivateKey,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::Chunk => "chunk",
            Purpose::Meta => "meta",
            Purpose::FileKey => "file key",
            Purpose::PrivateKey => "private key",
        }
    }

    fn info(self, sub: &str) -> Vec<u8> {
        let label = match self {
            Purpose::Chunk => "chunk",
            Purpose::Meta => "meta",
            Purpose::FileKey => "file-key",
            Purpose::PrivateKey => "private-key",
        };
        format!("coffer/v1/{label}/{sub}").into_bytes()
    }
}

/// Seals and opens envelopes of one purpose under one key.
///
/// Holds the expanded AES key schedule and the keyed HMAC state, so that sealing
/// many chunks of one file pays for key setup once. Both zeroize on drop.
#[derive(Clone)]
pub struct Sealer {
    purpose: Purpose,
    cipher: Aes256,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("purpose", &self.purpose)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Derives the purpose's subkeys from `key`.
    pub fn new(key: &SecretKey, purpose: Purpose) -> Sealer {
        let hkdf = Hkdf::<Sha256>::new(None, key.expose());
        let mut enc = Zeroizing::new([0u8; 32]);
        let mut mac = Zeroizing::new([0u8; 32]);
        hkdf.expand(&purpose.info("enc"), &mut enc[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(&purpose.info("mac"), &mut mac[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Sealer {
            purpose,
            cipher: Aes256::new(&(*enc).into()),
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(&mac[..])
                .expect("HMAC takes keys of any length"),
        }
    }

    /// Seals `plaintext` bound to `aad`, with a fresh IV from `rng`.
    pub fn seal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let mut iv = [0u8; IV_LEN];
        rng.fill_bytes(&mut iv);
        self.seal_with_iv(iv, aad, plaintext)
    }

    /// Seals with a caller-chosen IV. The IV must never repeat under one key:
    /// this exists for known-answer tests and for callers that draw IVs
    /// themselves.
    pub fn seal_with_iv(&self, iv: [u8; IV_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.resize(HEADER_LEN, 0);
        out.extend_from_slice(plaintext);
        self.seal_in_place(iv, aad, &mut out);
        out
    }

    /// Seals without copying: `buf` holds [`HEADER_LEN`] bytes of any value,
    /// then the plaintext, and becomes the envelope (header written,
    /// plaintext encrypted where it lies, tag appended). With
    /// [`TAG_LEN`] bytes of spare capacity it does not reallocate.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn seal_in_place(&self, iv: [u8; IV_LEN], aad: &[u8], buf: &mut Vec<u8>) {
        assert!(
            buf.len() >= HEADER_LEN,
            "the buffer starts with room for the header"
        );
        buf[0] = VERSION;
        buf[1..HEADER_LEN].copy_from_slice(&iv);
        cfb_mode::Encryptor::<Aes256>::inner_iv_init(self.cipher.clone(), &iv.into())
            .encrypt(&mut buf[HEADER_LEN..]);
        let tag = self.tag(aad, buf);
        buf.extend_from_slice(&tag);
    }

    /// Checks the tag and, only if it matches, decrypts.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let iv = self.verify(aad, sealed)?;
        let mut plaintext = sealed[HEADER_LEN..sealed.len() - TAG_LEN].to_vec();
        cfb_mode::Decryptor::<Aes256>::inner_iv_init(self.cipher.clone(), &iv.into())
            .decrypt(&mut plaintext);
        Ok(plaintext)
    }

    /// Checks the tag and, only if it matches, decrypts without copying: the
    /// plaintext is the returned part of `sealed`. On error `sealed` is
    /// unchanged.
    pub fn open_in_place<'a>(
        &self,
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], OpenError> {
        let iv = self.verify(aad, sealed)?;
        let end = sealed.len() - TAG_LEN;
        let plaintext = &mut sealed[HEADER_LEN..end];
        cfb_mode::Decryptor::<Aes256>::inner_iv_init(self.cipher.clone(), &iv.into())
            .decrypt(plaintext);
        Ok(plaintext)
    }

    /// Checks an envelope's shape, version and tag; its IV.
    fn verify(&self, aad: &[u8], sealed: &[u8]) -> Result<[u8; IV_LEN], OpenError> {
        let what = self.purpose.name();
        if sealed.len() < OVERHEAD {
            return Err(OpenError::TooShort {
                what,
                len: sealed.len(),
                min: OVERHEAD,
            });
        }
        if sealed[0] != VERSION {
            return Err(OpenError::UnsupportedVersion {
                what,
                found: sealed[0],
                expected: VERSION,
            });
        }
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        self.mac_of(aad, body)
            .verify_slice(tag)
            .map_err(|_| OpenError::Integrity { what })?;
        Ok(body[1..HEADER_LEN]
            .try_into()
            .expect("length checked above"))
    }

    /// The keyed MAC over `version ‖ len(aad) ‖ aad ‖ IV ‖ ciphertext`, where
    /// `body` is `version ‖ IV ‖ ciphertext`.
    fn mac_of(&self, aad: &[u8], body: &[u8]) -> Hmac<Sha256> {
        let aad_len = u32::try_from(aad.len()).expect("associated data is small");
        let mut mac = self.mac.clone();
        mac.update(&body[..1]);
        mac.update(&aad_len.to_be_bytes());
        mac.update(aad);
        mac.update(&body[1..]);
        mac
    }

    fn tag(&self, aad: &[u8], body: &[u8]) -> [u8; TAG_LEN] {
        self.mac_of(aad, body).finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn sealer(purpose: Purpose) -> Sealer {
        Sealer::new(&SecretKey::from_bytes([7; 32]), purpose)
    }

    #[test]
    fn purposes_do_not_cross() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let sealed = sealer(Purpose::Meta).seal(&mut rng, b"ctx", b"hello");
        assert_eq!(
            sealer(Purpose::Meta).open(b"ctx", &sealed).unwrap(),
            b"hello"
        );
        assert_eq!(
            sealer(Purpose::FileKey).open(b"ctx", &sealed),
            Err(OpenError::Integrity { what: "file key" })
        );
    }

    #[test]
    fn aad_length_is_bound() {
        // Without the length prefix, shifting one byte from the associated data
        // into the IV (and the last IV byte into the ciphertext) would leave the
        // MAC input unchanged: "ab" ‖ IV ‖ ct == "a" ‖ ("b" ‖ IV[..15]) ‖ (IV[15] ‖ ct).
        let s = sealer(Purpose::Meta);
        let sealed = s.seal_with_iv([1; 16], b"ab", b"x");
        assert!(s.open(b"ab", &sealed).is_ok());
        let iv = &sealed[1..17];
        let mut forged = vec![VERSION, b'b'];
        forged.extend_from_slice(&iv[..15]);
        forged.push(iv[15]);
        forged.extend_from_slice(&sealed[17..]);
        assert_eq!(forged.len(), sealed.len() + 1);
        assert_eq!(
            s.open(b"a", &forged),
            Err(OpenError::Integrity { what: "meta" })
        );
    }

    #[test]
    fn framing_errors() {
        let s = sealer(Purpose::Chunk);
        assert_eq!(
            s.open(b"", &[VERSION; OVERHEAD - 1]),
            Err(OpenError::TooShort {
                what: "chunk",
                len: OVERHEAD - 1,
                min: OVERHEAD
            })
        );
        let mut sealed = s.seal_with_iv([0; 16], b"", b"");
        assert_eq!(sealed.len(), OVERHEAD);
        assert_eq!(s.open(b"", &sealed).unwrap(), b"");
        sealed[0] = 2;
        assert_eq!(
            s.open(b"", &sealed),
            Err(OpenError::UnsupportedVersion {
                what: "chunk",
                found: 2,
                expected: 1
            })
        );
    }
}
