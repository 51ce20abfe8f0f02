//! The sync daemon end to end: real `coffer` processes on two devices of one
//! account against an in-process server on loopback, on one machine.
//!
//! - **latency**: both devices run `coffer sync`; a 1 KiB file is written on
//!   A, and the clock stops when B has it whole (median and p99 of
//!   `BENCH_RUNS`, default 50);
//! - **throughput**: 10,000 files of 4 KiB (`BENCH_FILES`) written on A, then
//!   `coffer sync --once` on A (upload) and on B (download), each a fresh
//!   process; files per second for each and end to end (one after the
//!   other). Then **live**: both daemons running, as many files written on A,
//!   timed from the first write until B has them all;
//! - **memory**: the peak RSS of `coffer sync --once` over a folder of
//!   100,000 small files (`BENCH_INDEX_FILES`): scanning, hashing, indexing
//!   and uploading them all.
//!
//! `cargo bench -p coffer-client --bench sync` (or `just bench-sync`).

#![allow(clippy::print_stdout)] // a bench reports on stdout

mod support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::{Coffer, env_number, host, median};

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// Alice's device `name` with the folder "bench" attached at `dir`.
fn device(server: &support::Local, home: &Path, dir: &Path, first: bool) {
    let coffer = server.coffer(home);
    let mac = if first {
        "02:00:00:00:00:0a"
    } else {
        "02:00:00:00:00:0b"
    };
    let name = if first { "a" } else { "b" };
    let verb = if first { "register" } else { "login" };
    coffer.run(
        &[
            verb,
            "alice",
            "--device",
            name,
            "--mac",
            mac,
            "--password-stdin",
        ],
        Some("bench password\n"),
    );
    if first {
        coffer.run(
            &["folder", "create", "bench", "--path", dir.to_str().unwrap()],
            None,
        );
    } else {
        coffer.run(&["folder", "attach", "bench", dir.to_str().unwrap()], None);
    }
}

/// `coffer sync` running in the background, killed when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(coffer: &Coffer<'_>) -> Daemon {
        Daemon(
            coffer
                .command(&["sync"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path, bytes: &[u8], limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if std::fs::read(path).is_ok_and(|b| b == bytes) {
            return true;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    false
}

/// Whether `dir` holds `want` finished files (daemon temporaries aside)
/// within `limit`.
fn wait_for_count(dir: &Path, want: usize, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        let mut count = 0;
        if let Ok(subdirs) = std::fs::read_dir(dir) {
            for sub in subdirs.flatten() {
                if let Ok(files) = std::fs::read_dir(sub.path()) {
                    count += files
                        .flatten()
                        .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
                        .count();
                }
            }
        }
        if count >= want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Runs `coffer sync --once` for `coffer`: seconds taken and peak RSS (KiB).
fn once(coffer: &Coffer<'_>) -> (f64, i64) {
    let started = Instant::now();
    let status = coffer
        .command(&["sync", "--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(status.success(), "coffer sync --once failed");
    // The largest resident set of any child waited for so far: the run just ended.
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    (seconds, usage.max_rss())
}

fn main() {
    let runs = env_number("BENCH_RUNS", 50).max(2);
    let files = env_number("BENCH_FILES", 10_000);
    let index_files = env_number("BENCH_INDEX_FILES", 100_000);
    let dir = support::scratch();
    println!("on {}", host());

    // Memory first, so that the peak RSS of children is this run's.
    {
        let server = support::Local::start(&dir.path().join("m"));
        let (home, root) = (dir.path().join("m-home"), dir.path().join("m-dir"));
        device(&server, &home, &root, true);
        for i in 0..index_files {
            write(
                &root,
                &format!("d{:03}/f{i}.txt", i % 1000),
                format!("{i}").as_bytes(),
            );
        }
        let (seconds, rss_kib) = once(&server.coffer(&home));
        println!(
            "memory: {index_files} files scanned, indexed and uploaded in {seconds:.1} s; peak RSS {:.0} MB",
            rss_kib as f64 * 1024.0 / 1e6
        );
    }

    let server = support::Local::start(dir.path());
    let (home_a, home_b) = (dir.path().join("home-a"), dir.path().join("home-b"));
    let (dir_a, dir_b) = (dir.path().join("dir-a"), dir.path().join("dir-b"));
    device(&server, &home_a, &dir_a, true);
    device(&server, &home_b, &dir_b, false);
    let (a, b) = (server.coffer(&home_a), server.coffer(&home_b));
    once(&a);
    once(&b);

    // Throughput.
    let payload = vec![0x5au8; 4096];
    for i in 0..files {
        let mut bytes = payload.clone();
        bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
        write(&dir_a, &format!("many/d{:02}/f{i}.bin", i % 100), &bytes);
    }
    let (up, _) = once(&a);
    let (down, _) = once(&b);
    let last = dir_b.join(format!("many/d{:02}/f{}.bin", (files - 1) % 100, files - 1));
    assert!(last.exists(), "the files arrived on B");
    println!(
        "throughput: {files} files of 4 KiB: A uploads {:.0} files/s, B downloads {:.0} files/s, A → B {:.0} files/s",
        files as f64 / up,
        files as f64 / down,
        files as f64 / (up + down)
    );

    // Live, with both daemons running: the same number of files written on
    // A, from the first write until B has them all.
    let _da = Daemon::start(&a);
    let _db = Daemon::start(&b);
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    for i in 0..files {
        let mut bytes = payload.clone();
        bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
        bytes[8] = 0xa5;
        write(&dir_a, &format!("live/d{:02}/f{i}.bin", i % 100), &bytes);
    }
    let written = started.elapsed().as_secs_f64();
    let arrived = wait_for_count(&dir_b.join("live"), files, Duration::from_secs(600));
    let took = started.elapsed().as_secs_f64();
    assert!(arrived, "the live files did not all arrive on B");
    println!(
        "live: {files} files of 4 KiB written on A ({written:.1} s to write) are all on B after {took:.1} s: {:.0} files/s",
        files as f64 / took
    );

    // Latency, with both daemons running.
    let mut latencies = Vec::new();
    for run in 0..runs {
        let mut bytes = vec![0u8; 1024];
        bytes[..8].copy_from_slice(&(run as u64).to_le_bytes());
        let rel = format!("latency/r{run}.txt");
        let started = Instant::now();
        write(&dir_a, &rel, &bytes);
        assert!(
            wait_for(&dir_b.join(&rel), &bytes, Duration::from_secs(30)),
            "run {run}: the file did not arrive"
        );
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[((sorted.len() * 99).div_ceil(100)).saturating_sub(1)];
    println!(
        "latency: 1 KiB file A → B over {runs} runs: median {:.0} ms, p99 {p99:.0} ms",
        median(latencies)
    );
}
