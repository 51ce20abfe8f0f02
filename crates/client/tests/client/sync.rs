//! `coffer sync`: two devices of alice and one of bob keep a folder in sync
//! through one server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::support::{Env, content, sha256_hex};

/// Alice on devices `a1` and `a2`, bob on `b` (with `bob_role`, if any); the
/// folder "team" attached on each. The local directories, in that order.
async fn team(env: &Env, bob_role: Option<&str>) -> Vec<PathBuf> {
    env.register("a1", "alice").await;
    let a1 = env.path("dir-a1");
    env.ok(
        "a1",
        &["folder", "create", "team", "--path", a1.to_str().unwrap()],
    )
    .await;
    env.login("a2", "alice").await;
    let a2 = env.path("dir-a2");
    env.ok("a2", &["folder", "attach", "team", a2.to_str().unwrap()])
        .await;
    let mut dirs = vec![a1, a2];
    if let Some(role) = bob_role {
        env.register("b", "bob").await;
        env.ok("a1", &["folder", "share", "team", "bob", "--role", role])
            .await;
        let b = env.path("dir-b");
        env.ok(
            "b",
            &["invite", "accept", "team", "--path", b.to_str().unwrap()],
        )
        .await;
        dirs.push(b);
    }
    dirs
}

/// `coffer --json sync --once` on a device: its summary.
async fn sync(env: &Env, home: &str) -> Value {
    env.json(home, &["sync", "--once"]).await
}

/// Everything below `dir` but the ignore file: path → SHA-256 (files) or
/// `None` (directories).
fn tree(dir: &Path) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            let rel = p
                .strip_prefix(dir)
                .unwrap()
                .to_str()
                .unwrap()
                .replace('\\', "/");
            if rel == ".cofferignore" {
                continue;
            }
            if p.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(sha256_hex(&std::fs::read(&p).unwrap())));
            }
        }
    }
    out
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn assert_same(dirs: &[PathBuf]) {
    let first = tree(&dirs[0]);
    for d in &dirs[1..] {
        assert_eq!(
            tree(d),
            first,
            "{} differs from {}",
            d.display(),
            dirs[0].display()
        );
    }
}

/// The file id the server holds at `path` (live entries).
fn file_id_on_server(env: &Env, path: &str) -> Option<Vec<u8>> {
    let db = rusqlite::Connection::open(env.server.data.join("coffer.db")).unwrap();
    db.query_row(
        "SELECT file_id FROM entries WHERE path = ?1 AND deleted = 0",
        [path],
        |r| r.get(0),
    )
    .ok()
}

fn conflict_copies(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_keys()
        .filter(|p| p.contains(".conflict-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_edits_deletes_and_moves_converge_on_every_device() {
    let env = Env::start().await;
    let dirs = team(&env, Some("editor")).await;
    let (a1, a2, b) = (&dirs[0], &dirs[1], &dirs[2]);
    write(a1, "a.txt", b"first");
    write(a1, "docs/plan.md", b"# plan");
    write(a1, "docs/deep/x.bin", &content(200_000, 7));
    std::fs::create_dir_all(a1.join("empty")).unwrap();
    sync(&env, "a1").await;
    sync(&env, "a2").await;
    sync(&env, "b").await;
    assert_same(&dirs);
    assert_eq!(
        std::fs::read(a2.join("docs/deep/x.bin")).unwrap(),
        content(200_000, 7)
    );
    let x_id = file_id_on_server(&env, "docs/deep/x.bin").unwrap();

    // The second device edits, deletes, renames a file and a directory.
    write(a2, "a.txt", b"second");
    std::fs::remove_file(a2.join("docs/plan.md")).unwrap();
    std::fs::create_dir_all(a2.join("moved")).unwrap();
    std::fs::rename(a2.join("docs/deep/x.bin"), a2.join("moved/x.bin")).unwrap();
    std::fs::rename(a2.join("empty"), a2.join("renamed")).unwrap();
    let summary = sync(&env, "a2").await;
    // The rename went up as a move: no content was sent for it.
    assert!(summary["bytes_sent"].as_u64().unwrap() < 1_000, "{summary}");
    assert_eq!(file_id_on_server(&env, "moved/x.bin"), Some(x_id));
    assert_eq!(file_id_on_server(&env, "docs/deep/x.bin"), None);
    sync(&env, "a1").await;
    sync(&env, "b").await;
    assert_same(&dirs);
    assert_eq!(std::fs::read(b.join("a.txt")).unwrap(), b"second");
    assert!(!b.join("docs/plan.md").exists());
    assert!(b.join("renamed").is_dir() && !b.join("empty").exists());

    // Bob (an editor) removes a whole directory.
    std::fs::remove_dir_all(b.join("docs")).unwrap();
    sync(&env, "b").await;
    sync(&env, "a1").await;
    sync(&env, "a2").await;
    assert_same(&dirs);
    assert!(!a1.join("docs").exists());
    for home in ["a1", "a2", "b"] {
        let status = env.json(home, &["status"]).await;
        assert_eq!(status[0]["state"], "synced", "{home}: {status}");
        assert_eq!(status[0]["pending"], 0);
        assert_eq!(status[0]["conflicts"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_small_files_converge() {
    let env = Env::start().await;
    let dirs = team(&env, None).await;
    for i in 0..1_000 {
        write(
            &dirs[0],
            &format!("d{}/f{i}.txt", i % 10),
            format!("file {i}").as_bytes(),
        );
    }
    let summary = sync(&env, "a1").await;
    assert_eq!(summary["sent"], 1_010, "{summary}");
    sync(&env, "a2").await;
    assert_same(&dirs);
    assert_eq!(tree(&dirs[1]).len(), 1_010);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_edited_in_one_chunk_sends_about_one_chunk() {
    let env = Env::start().await;
    let dirs = team(&env, None).await;
    let big = dirs[0].join("big.bin");
    let mut bytes = content(100 << 20, 3);
    std::fs::write(&big, &bytes).unwrap();
    let first = sync(&env, "a1").await;
    assert!(
        first["bytes_sent"].as_u64().unwrap() >= 100 << 20,
        "{first}"
    );
    sync(&env, "a2").await;
    assert_same(&dirs);

    // One byte in the middle of chunk 50 (1 MiB chunks at this size).
    bytes[50 * (1 << 20) + 123] ^= 0xff;
    std::fs::write(&big, &bytes).unwrap();
    let second = sync(&env, "a1").await;
    let sent = second["bytes_sent"].as_u64().unwrap();
    assert!(
        ((1 << 20)..2 << 20).contains(&sent),
        "a one-chunk edit sent {sent} bytes"
    );
    sync(&env, "a2").await;
    assert_same(&dirs);
    assert_eq!(
        sha256_hex(&std::fs::read(dirs[1].join("big.bin")).unwrap()),
        sha256_hex(&bytes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_keep_both_versions_and_identical_ones_are_no_conflict() {
    let env = Env::start().await;
    let dirs = team(&env, None).await;
    let (a1, a2) = (&dirs[0], &dirs[1]);
    write(a1, "notes/todo.txt", b"v1");
    write(a1, "gone.txt", b"to be deleted or kept");
    sync(&env, "a1").await;
    sync(&env, "a2").await;

    // Both edit the same file; both create the same new file identically;
    // one deletes a file the other edits.
    write(a1, "notes/todo.txt", b"from a1");
    write(a2, "notes/todo.txt", b"from a2");
    write(a1, "same.txt", b"identical");
    write(a2, "same.txt", b"identical");
    std::fs::remove_file(a1.join("gone.txt")).unwrap();
    write(a2, "gone.txt", b"edited, so kept");
    sync(&env, "a1").await;
    let second = sync(&env, "a2").await;
    assert_eq!(second["conflicts"], 1, "{second}");
    sync(&env, "a1").await;
    assert_same(&dirs);

    let copies = conflict_copies(a1);
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = &copies[0];
    assert!(
        copy.starts_with("notes/todo.conflict-a2-") && copy.ends_with(".txt"),
        "{copy}"
    );
    assert_eq!(
        std::fs::read(a1.join("notes/todo.txt")).unwrap(),
        b"from a1"
    );
    assert_eq!(std::fs::read(a1.join(copy)).unwrap(), b"from a2");
    assert_eq!(std::fs::read(a1.join("same.txt")).unwrap(), b"identical");
    assert_eq!(
        std::fs::read(a1.join("gone.txt")).unwrap(),
        b"edited, so kept"
    );
    let status = env.json("a2", &["status"]).await;
    assert_eq!(status[0]["conflicts"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_catches_up_from_its_cursor() {
    let env = Env::start().await;
    let dirs = team(&env, None).await;
    let (a1, a2) = (&dirs[0], &dirs[1]);
    for i in 0..20 {
        write(a1, &format!("f{i}.txt"), format!("v1 {i}").as_bytes());
    }
    sync(&env, "a1").await;
    sync(&env, "a2").await;
    // 50 changes while a2 is off: 20 new files, 10 edits, 10 deletes, 10 moves.
    for i in 0..20 {
        write(a1, &format!("new/n{i}.txt"), format!("new {i}").as_bytes());
    }
    for i in 0..10 {
        write(a1, &format!("f{i}.txt"), format!("v2 {i}").as_bytes());
    }
    for i in 10..20 {
        std::fs::remove_file(a1.join(format!("f{i}.txt"))).unwrap();
    }
    for i in 0..10 {
        std::fs::rename(
            a1.join(format!("new/n{i}.txt")),
            a1.join(format!("m{i}.txt")),
        )
        .unwrap();
    }
    sync(&env, "a1").await;
    let caught_up = sync(&env, "a2").await;
    assert!(caught_up["applied"].as_u64().unwrap() >= 40, "{caught_up}");
    assert_same(&dirs);
    assert_eq!(std::fs::read(a2.join("f3.txt")).unwrap(), b"v2 3");
    assert!(!a2.join("f15.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_push_and_keeps_its_edits() {
    let env = Env::start().await;
    let dirs = team(&env, Some("viewer")).await;
    let (a1, b) = (&dirs[0], &dirs[2]);
    write(a1, "shared.txt", b"from alice");
    sync(&env, "a1").await;
    sync(&env, "b").await;
    assert_eq!(std::fs::read(b.join("shared.txt")).unwrap(), b"from alice");

    write(b, "mine.txt", b"bob's own");
    write(b, "shared.txt", b"bob edits");
    sync(&env, "b").await;
    sync(&env, "a1").await;
    assert!(!a1.join("mine.txt").exists());
    assert_eq!(std::fs::read(a1.join("shared.txt")).unwrap(), b"from alice");
    let status = env.json("b", &["status"]).await;
    assert!(status[0]["conflicts"].as_u64().unwrap() >= 2, "{status}");

    // Alice edits the file bob edited: bob gets hers and keeps his beside it.
    write(a1, "shared.txt", b"alice again");
    sync(&env, "a1").await;
    sync(&env, "b").await;
    assert_eq!(std::fs::read(b.join("shared.txt")).unwrap(), b"alice again");
    let copies = conflict_copies(b);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(std::fs::read(b.join(&copies[0])).unwrap(), b"bob edits");
    assert_eq!(std::fs::read(b.join("mine.txt")).unwrap(), b"bob's own");
    sync(&env, "a1").await;
    assert!(conflict_copies(a1).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_files_stay_local() {
    let env = Env::start().await;
    let dirs = team(&env, None).await;
    let (a1, a2) = (&dirs[0], &dirs[1]);
    write(a1, ".cofferignore", b"build/\n*.log\n");
    for p in [
        ".DS_Store",
        "x.swp",
        "y.tmp",
        "z.part",
        "~$doc.docx",
        "build/out.o",
        "run.log",
    ] {
        write(a1, p, b"local only");
    }
    write(a1, "kept.txt", b"synced");
    // A download's temporary that a killed process left an hour and more
    // ago is removed; one written to a moment ago (a download under way) is
    // not touched.
    let (abandoned, live) = (".coffer-tmp-0a.part", ".coffer-tmp-0b.part");
    write(a1, abandoned, b"half");
    write(a1, live, b"half");
    std::fs::File::options()
        .write(true)
        .open(a1.join(abandoned))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 60 * 60))
        .unwrap();
    sync(&env, "a1").await;
    sync(&env, "a2").await;
    let synced: Vec<String> = tree(a2).into_keys().collect();
    assert_eq!(synced, ["kept.txt"]);
    assert!(!a2.join(".cofferignore").exists());
    assert!(
        !a1.join(abandoned).exists(),
        "the abandoned temporary is removed"
    );
    assert!(a1.join(live).exists(), "a fresh temporary is left alone");
}

/// The daemon, started in the background.
fn daemon(env: &Env, home: &str) -> std::process::Child {
    daemon_logging(env, home, None)
}

/// The daemon, its log (at `filter`) written to `log` if given.
fn daemon_logging(env: &Env, home: &str, log: Option<(&Path, &str)>) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_coffer"));
    command
        .args(["sync", "--home"])
        .arg(env.home(home))
        .env("COFFER_SERVER", env.server.addr.to_string())
        .env("COFFER_CA", &env.server.ca)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some((path, filter)) = log {
        command
            .env("RUST_LOG", filter)
            .stderr(std::fs::File::create(path).unwrap());
    }
    command.spawn().unwrap()
}

/// Kills a child process on drop, so a failing test leaves none behind.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_daemons_carry_a_change_across_and_stop_cleanly() {
    let env = Env::start().await;
    let dirs = team(&env, None).await;
    let (a1, a2) = (dirs[0].clone(), dirs[1].clone());
    let mut one = Reap(daemon(&env, "a1"));
    let mut two = Reap(daemon(&env, "a2"));
    // Started: a file written now travels by the watcher and the subscription.
    tokio::time::sleep(Duration::from_millis(500)).await;
    write(&a1, "live/hello.txt", b"hello");
    until("hello.txt on a2", || {
        std::fs::read(a2.join("live/hello.txt")).is_ok_and(|b| b == b"hello")
    })
    .await;
    std::fs::rename(a2.join("live/hello.txt"), a2.join("live/bye.txt")).unwrap();
    until("the rename on a1", || {
        a1.join("live/bye.txt").exists() && !a1.join("live/hello.txt").exists()
    })
    .await;
    for child in [&mut one, &mut two] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.0.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
    assert_same(&dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_sync_resumes_without_loss() {
    let env = Env::start().await;
    let dirs = team(&env, None).await;
    let a1 = dirs[0].clone();
    for i in 0..1_000 {
        write(&a1, &format!("many/f{i}.txt"), &content(2_000 + i, i as u8));
    }
    write(&a1, "large.bin", &content(40 << 20, 9));
    let db = env.server.data.join("coffer.db");
    let entries = move || -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    let mut child = Reap(daemon(&env, "a1"));
    until("some files on the server", || entries() > 20).await;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    assert!(
        entries() < 1_000,
        "the daemon finished before it was killed"
    );
    sync(&env, "a1").await;
    sync(&env, "a2").await;
    assert_same(&dirs);
    assert_eq!(tree(&dirs[1]).len(), 1_002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_sees_its_event_stream_end() {
    use coffer_client::{ClientTimeouts, Endpoint, Home, Pool};
    use coffer_net::TokioNet;
    use coffer_proto::request::{PathRef, Subscribe};
    use coffer_proto::{Request, Response};

    let env = Env::start().await;
    env.register("a1", "alice").await;
    let folder = env.json("a1", &["folder", "create", "team"]).await;
    let folder_id = folder["folder_id"].as_str().unwrap().to_owned();
    let (account, _) = Home::open(&env.home("a1"))
        .unwrap()
        .account()
        .unwrap()
        .unwrap();
    let endpoint = Endpoint::trusting(
        env.server.addr,
        rustls_pki_types::ServerName::try_from("localhost").unwrap(),
        &env.server.ca,
        ClientTimeouts::default(),
    )
    .unwrap();
    let pool = Pool::new(TokioNet, endpoint, 1);
    pool.set_token(Some(account.token));
    let subscriber = pool.dedicated().await.unwrap();
    let mut events = subscriber.events().unwrap();
    let answer = subscriber
        .call(Request::Subscribe(Subscribe { cursor: None }))
        .await
        .unwrap();
    assert!(matches!(answer.msg, Response::Subscribed(_)), "{answer:?}");

    // More changes than the client queues, none of them read meanwhile.
    let writer = pool.dedicated().await.unwrap();
    for i in 0..4_200 {
        writer
            .call(Request::Mkdir(PathRef {
                folder_id: folder_id.clone(),
                path: format!("d{i}"),
            }))
            .await
            .unwrap();
    }
    // What was queued is delivered, then the stream ends (instead of
    // going on after a silent gap), so the reader knows to resubscribe.
    let mut received = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(_)) => received += 1,
            Ok(None) => break,
            Err(_) => panic!("the stream neither ended nor went on after {received} events"),
        }
    }
    assert!((1..4_200).contains(&received), "{received} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_does_not_rescan_what_its_own_scans_touch() {
    let env = Env::start().await;
    let dirs = team(&env, None).await;
    for i in 0..50 {
        write(&dirs[0], &format!("d{}/f{i}.txt", i % 5), b"x");
    }
    sync(&env, "a1").await;
    let log = env.path("a1.log");
    let _daemon = Reap(daemon_logging(
        &env,
        "a1",
        Some((&log, "coffer_client::sync=debug")),
    ));
    let scans = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("scanned")
            .count()
    };
    // Started: its first full scan is done, then nothing happens.
    until("the first scan", || scans(&log) >= 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = scans(&log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Reading directories and files is not a change: no scan follows scan.
    assert_eq!(scans(&log), settled, "the daemon keeps rescanning");
    assert!(settled <= 3, "{settled} scans with nothing changed");
}
