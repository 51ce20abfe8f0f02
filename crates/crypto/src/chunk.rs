//! The chunk envelope: how one piece of a file is sealed.
//!
//! A file is cut into fixed-size plaintext chunks; chunk `i` is sealed under
//! subkeys of the file key with associated data `file_id ‖ u64_be(i)`, so a
//! chunk moved to another index or another file fails its tag. Its SHA-256 —
//! over the sealed bytes, which is all the server ever sees — is its content
//! address.

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use crate::envelope::{Purpose, Sealer};
use crate::error::OpenError;
use crate::keys::FileKey;

/// Seals and opens the chunks of one file.
#[derive(Clone, Debug)]
pub struct ChunkCipher {
    sealer: Sealer,
    file_id: [u8; 16],
}

impl ChunkCipher {
    /// The chunk cipher of the file `file_id` under `key`.
    pub fn new(key: &FileKey, file_id: [u8; 16]) -> ChunkCipher {
        ChunkCipher {
            sealer: Sealer::new(&key.0, Purpose::Chunk),
            file_id,
        }
    }

    fn aad(&self, index: u32) -> [u8; 24] {
        let mut aad = [0u8; 24];
        aad[..16].copy_from_slice(&self.file_id);
        aad[16..].copy_from_slice(&u64::from(index).to_be_bytes());
        aad
    }

    /// Seals chunk `index`.
    pub fn seal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        index: u32,
        plaintext: &[u8],
    ) -> Vec<u8> {
        self.sealer.seal(rng, &self.aad(index), plaintext)
    }

    /// Seals chunk `index` with a caller-chosen IV (known-answer tests).
    pub fn seal_with_iv(&self, iv: [u8; 16], index: u32, plaintext: &[u8]) -> Vec<u8> {
        self.sealer.seal_with_iv(iv, &self.aad(index), plaintext)
    }

    /// Seals chunk `index` without copying; see [`Sealer::seal_in_place`] for
    /// the layout of `buf`. The IV must never repeat under this file key.
    pub fn seal_in_place(&self, iv: [u8; 16], index: u32, buf: &mut Vec<u8>) {
        self.sealer.seal_in_place(iv, &self.aad(index), buf);
    }

    /// Opens chunk `index`, refusing it unless it was sealed for exactly this
    /// file, index and key and not altered since.
    pub fn open(&self, index: u32, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        self.sealer.open(&self.aad(index), sealed)
    }

    /// Opens chunk `index` without copying: the plaintext is the returned part
    /// of `sealed`.
    pub fn open_in_place<'a>(
        &self,
        index: u32,
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], OpenError> {
        self.sealer.open_in_place(&self.aad(index), sealed)
    }
}

/// A chunk's content address: SHA-256 of its sealed bytes.
pub fn content_address(sealed: &[u8]) -> [u8; 32] {
    Sha256::digest(sealed).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use crate::envelope::OVERHEAD;
    use crate::keys::SecretKey;

    fn cipher(key: u8, file: u8) -> ChunkCipher {
        ChunkCipher::new(&FileKey(SecretKey::from_bytes([key; 32])), [file; 16])
    }

    proptest! {
        #[test]
        fn round_trip(seed: u64, index: u32, plaintext in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let c = cipher(1, 1);
            let sealed = c.seal(&mut rng, index, &plaintext);
            prop_assert_eq!(sealed.len(), plaintext.len() + OVERHEAD);
            prop_assert_eq!(c.open(index, &sealed)?, plaintext);
        }

        /// Sealing and opening in place give exactly the bytes of the copying forms.
        #[test]
        fn in_place_matches_copying(iv: [u8; 16], index: u32, plaintext in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let c = cipher(3, 3);
            let sealed = c.seal_with_iv(iv, index, &plaintext);
            let mut buf = vec![0xAA; crate::envelope::HEADER_LEN];
            buf.extend_from_slice(&plaintext);
            c.seal_in_place(iv, index, &mut buf);
            prop_assert_eq!(&buf, &sealed);
            prop_assert_eq!(c.open_in_place(index, &mut buf)?, &plaintext[..]);
            // A refused envelope is left as it was.
            let mut bad = sealed.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            let before = bad.clone();
            prop_assert!(c.open_in_place(index, &mut bad).is_err());
            prop_assert_eq!(bad, before);
        }

        /// Every single-bit flip anywhere — version, IV, ciphertext, tag — is refused.
        #[test]
        fn every_bit_flip_is_rejected(seed: u64, plaintext in proptest::collection::vec(any::<u8>(), 0..96)) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let c = cipher(2, 2);
            let sealed = c.seal(&mut rng, 5, &plaintext);
            for bit in 0..sealed.len() * 8 {
                let mut bad = sealed.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(c.open(5, &bad).is_err(), "flip of bit {} accepted", bit);
            }
        }

        /// Truncated or extended envelopes are refused.
        #[test]
        fn length_changes_are_rejected(seed: u64, plaintext in proptest::collection::vec(any::<u8>(), 1..64), extra: u8) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let c = cipher(2, 2);
            let sealed = c.seal(&mut rng, 0, &plaintext);
            for cut in 0..sealed.len() {
                prop_assert!(c.open(0, &sealed[..cut]).is_err());
            }
            let mut longer = sealed.clone();
            longer.push(extra);
            prop_assert!(c.open(0, &longer).is_err());
        }
    }

    #[test]
    fn misplaced_chunks_and_wrong_keys_are_rejected() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let c = cipher(3, 3);
        let sealed = c.seal(&mut rng, 7, b"chunk seven");
        assert!(c.open(7, &sealed).is_ok());
        // Another index of the same file.
        assert_eq!(
            c.open(8, &sealed),
            Err(OpenError::Integrity { what: "chunk" })
        );
        assert!(c.open(7 + (1 << 31), &sealed).is_err());
        // The same index of another file under the same key.
        assert!(cipher(3, 4).open(7, &sealed).is_err());
        // The right file id under another key.
        assert!(cipher(4, 3).open(7, &sealed).is_err());
    }

    #[test]
    fn ivs_are_fresh_so_equal_chunks_differ() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let c = cipher(5, 5);
        let a = c.seal(&mut rng, 0, b"same");
        let b = c.seal(&mut rng, 0, b"same");
        assert_ne!(a, b);
        assert_ne!(content_address(&a), content_address(&b));
    }
}
