//! Throughput of the chunk envelope next to the raw primitives it composes, on
//! the same 1 MiB buffer, then the envelope's cost as a ratio of theirs.
//!
//! `cargo bench -p coffer-crypto --bench envelope` (or `just bench`).

#![allow(clippy::print_stdout)] // a bench reports on stdout

use std::hint::black_box;
use std::path::PathBuf;

use aes::Aes256;
use aes::cipher::KeyIvInit;
use coffer_crypto::{ChunkCipher, FileKey, SecretKey};
use criterion::{Criterion, Throughput};
use hmac::{Hmac, KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sha2::Sha256;

const GROUP: &str = "envelope_1MiB";
const LEN: usize = 1 << 20;

fn benches(c: &mut Criterion) {
    let key = [7u8; 32];
    let iv = [9u8; 16];
    let plaintext: Vec<u8> = (0..LEN).map(|i| (i * 31 % 251) as u8).collect();
    let cipher = ChunkCipher::new(&FileKey(SecretKey::from_bytes(key)), [1; 16]);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let sealed = cipher.seal(&mut rng, 0, &plaintext);

    let mut group = c.benchmark_group(GROUP);
    group.throughput(Throughput::Bytes(LEN as u64));
    let mut buf = plaintext.clone();
    group.bench_function("aes256_cfb_encrypt", |b| {
        b.iter(|| {
            cfb_mode::Encryptor::<Aes256>::new(&key.into(), &iv.into())
                .encrypt(black_box(&mut buf));
        })
    });
    group.bench_function("aes256_cfb_decrypt", |b| {
        b.iter(|| {
            cfb_mode::Decryptor::<Aes256>::new(&key.into(), &iv.into())
                .decrypt(black_box(&mut buf));
        })
    });
    group.bench_function("hmac_sha256", |b| {
        b.iter(|| {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            mac.update(black_box(&plaintext));
            black_box(mac.finalize());
        })
    });
    group.bench_function("envelope_seal", |b| {
        b.iter(|| black_box(cipher.seal(&mut rng, 0, black_box(&plaintext))))
    });
    group.bench_function("envelope_open", |b| {
        b.iter(|| black_box(cipher.open(0, black_box(&sealed)).unwrap()))
    });
    group.finish();
}

/// Mean time per iteration (ns) that criterion recorded for one benchmark.
fn mean_ns(dir: &std::path::Path, name: &str) -> Option<f64> {
    let path = dir
        .join(GROUP)
        .join(name)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn report(dir: &std::path::Path) {
    let get = |n| mean_ns(dir, n);
    let (Some(enc), Some(dec), Some(mac), Some(seal), Some(open)) = (
        get("aes256_cfb_encrypt"),
        get("aes256_cfb_decrypt"),
        get("hmac_sha256"),
        get("envelope_seal"),
        get("envelope_open"),
    ) else {
        println!("(ratios need every benchmark of the group to have run)");
        return;
    };
    let mbps = |ns: f64| LEN as f64 / ns * 1e9 / 1e6;
    println!();
    println!("{:<22} {:>10}", "1 MiB chunk", "MB/s");
    for (name, ns) in [
        ("aes256_cfb_encrypt", enc),
        ("aes256_cfb_decrypt", dec),
        ("hmac_sha256", mac),
        ("envelope_seal", seal),
        ("envelope_open", open),
    ] {
        println!("{name:<22} {:>10.0}", mbps(ns));
    }
    println!();
    println!(
        "seal time / (CFB encrypt + HMAC) = {:.3}",
        seal / (enc + mac)
    );
    println!(
        "open time / (CFB decrypt + HMAC) = {:.3}",
        open / (dec + mac)
    );
    println!("seal time / CFB encrypt alone    = {:.3}", seal / enc);
    println!("open time / CFB decrypt alone    = {:.3}", open / dec);
}

fn main() {
    // Where criterion keeps its results: beside the bench executable's profile
    // directory, as `target/criterion`.
    let dir = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("bench executable path");
            exe.ancestors()
                .nth(3)
                .expect("target/<profile>/deps/<exe>")
                .join("criterion")
        });
    let mut criterion = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    report(&dir);
}
