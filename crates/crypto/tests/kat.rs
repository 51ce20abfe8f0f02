//! Known-answer tests.
//!
//! First the primitives Coffer composes, against their standards' published
//! vectors; then Coffer's own constructions (chunk envelope, file-key wrapping,
//! metadata, Argon2id key derivation, login secret, RSA-OAEP interop) against
//! values computed by independent implementations (`kat/generate.py`).

use aes::Aes256;
use aes::cipher::KeyIvInit;
use coffer_crypto::{
    ChunkCipher, FileKey, FileKeyContext, FileMeta, FolderKey, KdfParams, KeyError, PublicKey,
    SecretKey, UserKeys, content_address, login_secret, unwrap_file_key,
};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.replace(char::is_whitespace, "")).unwrap()
}

fn vectors() -> Value {
    serde_json::from_str(include_str!("kat/vectors.json")).unwrap()
}

fn hex_field(v: &Value, key: &str) -> Vec<u8> {
    unhex(v[key].as_str().unwrap_or_else(|| panic!("missing {key}")))
}

fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

// ---------- primitives ----------

#[test]
fn aes_256_cfb_nist_sp800_38a_f3_17() {
    let key = unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
    let iv = unhex("000102030405060708090a0b0c0d0e0f");
    let plaintext = unhex(
        "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
         30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
    );
    let expected = unhex(
        "dc7e84bfda79164b7ecd8486985d3860 39ffed143b28b1c832113c6331e5407b
         df10132415e54b92a13ed0a8267ae2f9 75a385741ab9cef82031623d55b1e471",
    );
    let mut buf = plaintext.clone();
    cfb_mode::Encryptor::<Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .encrypt(&mut buf);
    assert_eq!(buf, expected);
    cfb_mode::Decryptor::<Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .decrypt(&mut buf);
    assert_eq!(buf, plaintext);
}

#[test]
fn hmac_sha256_rfc4231_case_2() {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
    mac.update(b"what do ya want for nothing?");
    assert_eq!(
        mac.finalize().into_bytes().to_vec(),
        unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
}

#[test]
fn hkdf_sha256_rfc5869_case_1() {
    let ikm = [0x0b; 22];
    let salt = unhex("000102030405060708090a0b0c");
    let info = unhex("f0f1f2f3f4f5f6f7f8f9");
    let mut okm = [0u8; 42];
    Hkdf::<Sha256>::new(Some(&salt), &ikm)
        .expand(&info, &mut okm)
        .unwrap();
    assert_eq!(
        okm.to_vec(),
        unhex(
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        )
    );
}

#[test]
fn sha256_fips180_abc() {
    assert_eq!(
        coffer_crypto::sha256(b"abc").to_vec(),
        unhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
}

#[test]
fn argon2id_rfc9106_section_5_3() {
    use argon2::{Algorithm, Argon2, ParamsBuilder, Version};
    let params = ParamsBuilder::new()
        .m_cost(32)
        .t_cost(3)
        .p_cost(4)
        .data(argon2::AssociatedData::new(&[0x04; 12]).unwrap())
        .output_len(32)
        .build()
        .unwrap();
    let argon =
        Argon2::new_with_secret(&[0x03; 8], Algorithm::Argon2id, Version::V0x13, params).unwrap();
    let mut out = [0u8; 32];
    argon
        .hash_password_into(&[0x01; 32], &[0x02; 16], &mut out)
        .unwrap();
    assert_eq!(
        out.to_vec(),
        unhex("0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659")
    );
}

// ---------- Coffer's constructions ----------

#[test]
fn chunk_envelope_matches_independent_implementation() {
    let v = vectors();
    let key = FileKey(SecretKey::from_slice(&hex_field(&v, "file_key"), "k").unwrap());
    let file_id: [u8; 16] = hex_field(&v, "file_id").try_into().unwrap();
    let iv: [u8; 16] = hex_field(&v, "iv").try_into().unwrap();
    let cipher = ChunkCipher::new(&key, file_id);
    let chunks = v["chunks"].as_array().unwrap();
    assert!(!chunks.is_empty());
    for c in chunks {
        let index = c["index"].as_u64().unwrap() as u32;
        let plaintext = pattern(c["plaintext_len"].as_u64().unwrap() as usize, 4);
        let expected = hex_field(c, "sealed");
        assert_eq!(
            cipher.seal_with_iv(iv, index, &plaintext),
            expected,
            "chunk {index}"
        );
        assert_eq!(cipher.open(index, &expected).unwrap(), plaintext);
        assert_eq!(
            content_address(&expected).to_vec(),
            hex_field(c, "content_address")
        );
    }
}

#[test]
fn file_key_wrapping_and_metadata_match_independent_implementation() {
    let v = vectors();
    let folder_key = FolderKey(SecretKey::from_slice(&hex_field(&v, "folder_key"), "k").unwrap());
    let file_key = FileKey(SecretKey::from_slice(&hex_field(&v, "file_key"), "k").unwrap());
    let file_id: [u8; 16] = hex_field(&v, "file_id").try_into().unwrap();
    let ctx = FileKeyContext {
        folder_id: v["folder_id"].as_str().unwrap(),
        epoch: v["epoch"].as_u64().unwrap(),
        file_id,
    };
    assert_eq!(
        unwrap_file_key(&folder_key, ctx, &hex_field(&v, "wrapped_file_key")).unwrap(),
        file_key
    );
    let meta = FileMeta::open(&file_key, file_id, &hex_field(&v, "meta_sealed")).unwrap();
    assert_eq!(
        meta,
        FileMeta {
            sha256: Sha256::digest(b"hello").into(),
            size: 5,
            mtime_ms: -12345,
            mode: 0o644,
            name: "é.t".into(),
        }
    );
}

#[test]
fn argon2id_key_derivation_matches_argon2_cffi() {
    let v = &vectors()["argon2id"];
    let kdf = KdfParams {
        m_cost_kib: v["m_cost_kib"].as_u64().unwrap() as u32,
        t_cost: v["t_cost"].as_u64().unwrap() as u32,
        p_cost: v["p_cost"].as_u64().unwrap() as u32,
        salt: hex_field(v, "salt"),
    };
    let key = kdf.derive(v["password"].as_str().unwrap()).unwrap();
    assert_eq!(key.expose().to_vec(), hex_field(v, "key"));
}

#[test]
fn login_secret_matches_hashlib() {
    let v = &vectors()["login_secret"];
    let secret = login_secret(
        v["username"].as_str().unwrap(),
        v["password"].as_str().unwrap(),
    );
    assert_eq!(secret.to_vec(), hex_field(v, "secret"));
}

#[test]
fn rsa_oaep_interoperates_with_pyca() {
    let v = vectors();
    let r = &v["rsa"];
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // Wrap the PKCS#8 key the way a client stores it, then unwrap it.
    let kdf = KdfParams::with_cost(&mut rng, 64, 1, 1);
    let keys = {
        use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        let private = rsa::RsaPrivateKey::from_pkcs8_der(&hex_field(r, "private_pkcs8")).unwrap();
        let der = private.to_pkcs8_der().unwrap();
        // Round-trip through the sealed form, the only way keys enter the crate.
        let sealer = coffer_crypto::envelope::Sealer::new(
            &kdf.derive("pw").unwrap(),
            coffer_crypto::envelope::Purpose::PrivateKey,
        );
        let sealed = sealer.seal(&mut rng, b"coffer/v1/user:kat", der.as_bytes());
        UserKeys::unwrap(&sealed, "kat", "pw", &kdf).unwrap()
    };
    assert_eq!(keys.public().to_der(), hex_field(r, "public_spki"));
    let folder_key = keys
        .unwrap_folder_key(&mut rng, &hex_field(r, "wrapped_folder_key"))
        .unwrap();
    assert_eq!(folder_key.0.expose().to_vec(), hex_field(&v, "folder_key"));
    let file_key = keys
        .unwrap_file_key(&mut rng, &hex_field(r, "wrapped_share_key"))
        .unwrap();
    assert_eq!(file_key.0.expose().to_vec(), hex_field(&v, "file_key"));
    // Our wrapping decrypts with the same key too (checked through our own unwrap,
    // since OAEP is randomized).
    let again = PublicKey::from_der(&hex_field(r, "public_spki"))
        .unwrap()
        .wrap_folder_key(&mut rng, &folder_key);
    assert_eq!(
        keys.unwrap_folder_key(&mut rng, &again).unwrap(),
        folder_key
    );
    // Keys that are not RSA-2048 are refused.
    assert_eq!(
        PublicKey::from_der(&hex_field(r, "public_spki_1024")).unwrap_err(),
        KeyError::KeySize {
            bits: 1024,
            expected: 2048
        }
    );
}
