//! `coffer put` and `coffer get`: sizes at the chunk edges, a large streamed
//! file, resuming, and what a corrupt or lying server gets from the client.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::Digest;

use super::support::{Env, content, files_below, sha256_hex};

const MIB: usize = 1 << 20;

/// Writes `len` bytes of varied content to `path` a MiB at a time; their SHA-256.
fn write_large(path: &Path, len: usize, seed: u8) -> String {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = sha2::Sha256::new();
    let mut left = len;
    let mut block = 0u8;
    while left > 0 {
        let piece = content(left.min(MIB), seed ^ block);
        hasher.update(&piece);
        file.write_all(&piece).unwrap();
        left -= piece.len();
        block = block.wrapping_add(1);
    }
    file.flush().unwrap();
    hex::encode(hasher.finalize())
}

fn file_sha256(path: &Path) -> String {
    use std::io::Read;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0; MIB];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break hex::encode(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Nothing but `expected` in `dir`: no temporary file left behind.
fn only_files(dir: &Path, expected: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, expected, "the files in {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_at_the_chunk_edges_round_trip() {
    let env = Env::start().await;
    env.register("alice", "alice").await;
    env.ok("alice", &["folder", "create", "edges"]).await;
    for (name, len) in [
        ("empty", 0),
        ("one", 1),
        ("chunk", MIB),
        ("chunk-and-one", MIB + 1),
        ("three", 3 * MIB - 7),
    ] {
        let bytes = content(len, len as u8);
        let target = format!("edges:{name}");
        let put = env.put("alice", name, &bytes, &target).await;
        assert_eq!(put["size"], len, "{name}");
        assert_eq!(put["sha256"], sha256_hex(&bytes), "{name}");
        let out = env.path(&format!("{name}.out"));
        let got = env
            .json("alice", &["get", &target, out.to_str().unwrap()])
            .await;
        assert_eq!(got["size"], len, "{name}");
        assert_eq!(got["sha256"], sha256_hex(&bytes), "{name}");
        assert_eq!(std::fs::read(&out).unwrap(), bytes, "{name}");
    }
    let ls = env.json("alice", &["ls", "edges"]).await;
    let sizes: Vec<(String, u64)> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        [
            ("chunk".to_owned(), MIB as u64),
            ("chunk-and-one".to_owned(), MIB as u64 + 1),
            ("empty".to_owned(), 0),
            ("one".to_owned(), 1),
            ("three".to_owned(), 3 * MIB as u64 - 7),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_streams_through_without_being_held() {
    let env = Env::start().await;
    env.register("alice", "alice").await;
    env.ok("alice", &["folder", "create", "big"]).await;
    let len = 200 * MIB;
    let local = env.path("large.bin");
    let sha = write_large(&local, len, 7);

    let (put, peak) =
        watching_memory(&env, &["put", local.to_str().unwrap(), "big:large.bin"]).await;
    assert_eq!(put["size"], len);
    assert_eq!(put["sha256"], sha);
    // Neither direction ever holds the file: the peak resident set stays far
    // below its size.
    assert!(peak < 100 * 1024, "the put peaked at {} MiB", peak / 1024);

    let out = env.path("large.out");
    let (got, peak) = watching_memory(&env, &["get", "big:large.bin", out.to_str().unwrap()]).await;
    assert_eq!(got["sha256"], sha);
    assert_eq!(file_sha256(&out), sha);
    assert!(peak < 100 * 1024, "the get peaked at {} MiB", peak / 1024);
}

/// Runs `coffer --json ARGS` as alice, reading its peak resident set (VmHWM,
/// in KiB) every few milliseconds while it runs; its output and that peak.
async fn watching_memory(env: &Env, args: &[&str]) -> (serde_json::Value, u64) {
    let stdout = env.path("watched.out");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("--json")
        .args(args)
        .arg("--home")
        .arg(env.home("alice"))
        .env("COFFER_SERVER", env.server.addr.to_string())
        .env("COFFER_CA", &env.server.ca)
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id().unwrap());
    let mut peak = 0u64;
    let mut samples = 0;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.unwrap(),
            () = tokio::time::sleep(Duration::from_millis(5)) => {
                let Ok(text) = std::fs::read_to_string(&status_file) else { continue };
                let hwm = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok());
                if let Some(kib) = hwm {
                    peak = peak.max(kib);
                    samples += 1;
                }
            }
        }
    };
    assert!(status.success(), "coffer {args:?} failed");
    assert!(
        samples >= 3,
        "only {samples} samples of the memory of coffer {args:?}"
    );
    (
        serde_json::from_slice(&std::fs::read(&stdout).unwrap()).unwrap(),
        peak,
    )
}

/// Chunks of `upload` the server has received, by its database.
fn received(data: &Path) -> i64 {
    let Ok(db) = rusqlite::Connection::open(data.join("coffer.db")) else {
        return 0;
    };
    let _ = db.busy_timeout(Duration::from_secs(1));
    db.query_row(
        "SELECT COUNT(*) FROM upload_chunks WHERE received = 1",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_put_resumes_where_it_stopped() {
    let env = Env::start().await;
    env.register("alice", "alice").await;
    env.ok("alice", &["folder", "create", "media"]).await;
    let len = 100 * MIB;
    let local = env.path("video.bin");
    let sha = write_large(&local, len, 3);

    // The first try dies (SIGKILL) once the server holds a few of its chunks.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["put", local.to_str().unwrap(), "media:video.bin", "--home"])
        .arg(env.home("alice"))
        .env("COFFER_SERVER", env.server.addr.to_string())
        .env("COFFER_CA", &env.server.ca)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while received(&env.server.data) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload never got going"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the put ended before it could be interrupted"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    kill(pid, Signal::SIGKILL).unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the put was killed, not finished");
    let held = received(&env.server.data);
    assert!(
        held < 100,
        "{held} chunks arrived: the put had all but finished"
    );
    let versions = env.json("alice", &["ls", "media"]).await;
    assert_eq!(versions, serde_json::json!([]), "nothing is committed yet");

    // Run again: it resumes, sending only what the server lacks.
    let put = env
        .json(
            "alice",
            &["put", local.to_str().unwrap(), "media:video.bin"],
        )
        .await;
    assert_eq!(put["resumed"], true);
    let sent = put["chunks_sent"].as_u64().unwrap();
    assert!(
        sent <= 100 - held as u64,
        "sent {sent} with {held} already there"
    );
    assert!(sent > 0);
    assert_eq!(put["sha256"], sha);
    assert_eq!(put["version"], 1);

    let out = env.path("video.out");
    env.ok("alice", &["get", "media:video.bin", out.to_str().unwrap()])
        .await;
    assert_eq!(file_sha256(&out), sha);

    // A changed file starts over rather than mixing old chunks with new.
    let sha2 = write_large(&local, 3 * MIB, 4);
    let put = env
        .json(
            "alice",
            &["put", local.to_str().unwrap(), "media:video.bin"],
        )
        .await;
    assert_eq!(put["resumed"], false);
    assert_eq!(put["sha256"], sha2);
    assert_eq!(put["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_on_the_server_fails_the_get_and_writes_nothing() {
    let env = Env::start().await;
    env.register("alice", "alice").await;
    env.ok("alice", &["folder", "create", "docs"]).await;
    let bytes = content(3 * MIB, 5);
    env.put("alice", "doc.bin", &bytes, "docs:doc.bin").await;

    // Flip one byte in the middle of one chunk in the store.
    let chunks = files_below(&env.server.data.join("chunks"));
    assert_eq!(chunks.len(), 3);
    let victim = &chunks[1];
    let mut sealed = std::fs::read(victim).unwrap();
    let mid = sealed.len() / 2;
    sealed[mid] ^= 0x01;
    std::fs::write(victim, &sealed).unwrap();

    let out_dir = env.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let line = env
        .fails(
            "alice",
            &[
                "get",
                "docs:doc.bin",
                out_dir.join("doc.bin").to_str().unwrap(),
            ],
        )
        .await;
    assert!(line.starts_with("error: checksum_mismatch: "), "{line}");
    only_files(&out_dir, &[]);
    // Into a directory, too: nothing, not even a temporary file.
    let line = env
        .fails("alice", &["get", "docs:doc.bin", out_dir.to_str().unwrap()])
        .await;
    assert!(line.starts_with("error: checksum_mismatch: "), "{line}");
    only_files(&out_dir, &[]);

    // A small file, whose chunk comes inline with the manifest.
    env.put("alice", "small.bin", b"small and inline", "docs:small.bin")
        .await;
    let victim = files_below(&env.server.data.join("chunks"))
        .into_iter()
        .find(|c| !chunks.contains(c))
        .expect("the small file's chunk");
    let mut sealed = std::fs::read(&victim).unwrap();
    sealed[20] ^= 0x01;
    std::fs::write(&victim, &sealed).unwrap();
    let line = env
        .fails(
            "alice",
            &["get", "docs:small.bin", out_dir.to_str().unwrap()],
        )
        .await;
    assert!(line.starts_with("error: checksum_mismatch: "), "{line}");
    only_files(&out_dir, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_serves_altered_ciphertext_is_caught_by_the_mac() {
    altered_ciphertext_is_caught(2 * MIB + 100, 1, false).await;
}

/// A small file's one chunk comes inline with the manifest: checked all the
/// same. The altered chunk is given no folder reference, so a `chunk_get`
/// for it would be refused as `not_found`: the MAC failure shows the chunk
/// came inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_chunk_sent_inline_is_caught_by_the_mac() {
    altered_ciphertext_is_caught(1000, 0, true).await;
}

async fn altered_ciphertext_is_caught(size: usize, chunk: usize, inline: bool) {
    let env = Env::start().await;
    env.register("alice", "alice").await;
    env.ok("alice", &["folder", "create", "docs"]).await;
    let bytes = content(size, 6);
    env.put("alice", "doc.bin", &bytes, "docs:doc.bin").await;
    let existing = env.path("out.bin");
    std::fs::write(&existing, b"what was here before").unwrap();

    // The server's own checks all pass: the altered chunk is stored under its
    // own hash with its own CRC, and the version lists it. Only the client's
    // MAC can tell.
    let db = rusqlite::Connection::open(env.server.data.join("coffer.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let (folder_id, list): (String, Vec<u8>) = db
        .query_row(
            "SELECT folder_id, chunks FROM versions WHERE path = 'doc.bin'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let at = chunk * 32..(chunk + 1) * 32;
    let old: [u8; 32] = list[at.clone()].try_into().unwrap();
    let old_hex = hex::encode(old);
    let chunk_dir = env.server.data.join("chunks");
    let mut sealed = std::fs::read(chunk_dir.join(&old_hex[..2]).join(&old_hex[2..])).unwrap();
    sealed.truncate(sealed.len() - 4); // the store's CRC32C
    let last = sealed.len() - 40; // ciphertext, before the tag
    sealed[last] ^= 0x80;
    let new: [u8; 32] = sha2::Sha256::digest(&sealed).into();
    let new_hex = hex::encode(new);
    std::fs::create_dir_all(chunk_dir.join(&new_hex[..2])).unwrap();
    let mut stored = sealed.clone();
    stored.extend_from_slice(&crc32c::crc32c(&sealed).to_le_bytes());
    std::fs::write(chunk_dir.join(&new_hex[..2]).join(&new_hex[2..]), &stored).unwrap();
    let mut altered = list.clone();
    altered[at].copy_from_slice(&new);
    db.execute(
        "UPDATE versions SET chunks = ?1 WHERE path = 'doc.bin'",
        [&altered],
    )
    .unwrap();
    db.execute(
        "INSERT INTO chunks (hash, size, created_ms) VALUES (?1, ?2, 0)",
        rusqlite::params![&new[..], sealed.len() as i64],
    )
    .unwrap();
    if !inline {
        db.execute(
            "INSERT INTO chunk_refs (hash, folder_id, refs) VALUES (?1, ?2, 1)",
            rusqlite::params![&new[..], folder_id],
        )
        .unwrap();
    }
    drop(db);

    let line = env
        .fails(
            "alice",
            &["get", "docs:doc.bin", existing.to_str().unwrap()],
        )
        .await;
    assert!(
        line.starts_with(&format!(
            "error: checksum_mismatch: chunk {chunk} of doc.bin"
        )),
        "{line}"
    );
    // The file that was there is untouched, and no temporary file is left.
    assert_eq!(std::fs::read(&existing).unwrap(), b"what was here before");
    let names: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".coffer-"))
        .collect();
    assert_eq!(names, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_never_holds_plaintext_passwords_or_private_keys() {
    let env = Env::start().await;
    env.register("alice", "alice").await;
    env.register("bob", "bob").await;
    env.ok("alice", &["folder", "create", "vault"]).await;
    env.ok(
        "alice",
        &["folder", "share", "vault", "bob", "--role", "editor"],
    )
    .await;
    env.ok("bob", &["invite", "accept", "vault"]).await;

    // A marker every few hundred bytes, in small and multi-chunk files from both.
    let marker = format!("MARKER-{:016x}", rand_marker());
    let text = |len: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        while out.len() < len {
            out.extend_from_slice(marker.as_bytes());
            out.extend_from_slice(&content(300, out.len() as u8));
        }
        out.truncate(len);
        out
    };
    for (home, name, len) in [
        ("alice", "small.txt", 2_000),
        ("alice", "big.txt", 3 * MIB + 5),
        ("bob", "bob.txt", 50_000),
    ] {
        env.put(home, name, &text(len), &format!("vault:{name}"))
            .await;
    }
    env.ok("alice", &["share", "vault:big.txt", "bob"]).await;
    env.ok("alice", &["folder", "unshare", "vault", "bob"])
        .await;

    // The private keys, as the homes hold them, and the passwords.
    let private_key = |home: &str| -> Vec<u8> {
        let db = rusqlite::Connection::open(env.home(home).join("state.db")).unwrap();
        db.query_row("SELECT private_key FROM account", [], |r| r.get(0))
            .unwrap()
    };
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("the marker".into(), marker.as_bytes().to_vec()),
        ("alice's password".into(), b"pw-alice".to_vec()),
        ("bob's password".into(), b"pw-bob".to_vec()),
    ];
    for home in ["alice", "bob"] {
        let der = private_key(home);
        // The DER ends with the CRT coefficient: secret, unlike the modulus
        // near its start.
        needles.push((
            format!("{home}'s private key"),
            der[der.len() - 32..].to_vec(),
        ));
    }
    let files = files_below(&env.server.data);
    assert!(
        files.len() > 5,
        "the data directory holds {} files",
        files.len()
    );
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for (what, needle) in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == &needle[..]),
                "{what} is in {}",
                file.display()
            );
        }
    }
    // The marker is in what the clients hold, so the search would find it.
    assert!(
        std::fs::read(env.path("big.txt"))
            .unwrap()
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
    );
}

/// A number no earlier run used.
fn rand_marker() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    u64::from_le_bytes(bytes)
}
