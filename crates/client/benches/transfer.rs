//! `coffer put` and `coffer get` of a large file, end to end: the real
//! `coffer` binary (a fresh process per transfer, so start-up, TLS and login
//! are counted) against an in-process server on loopback, on one machine.
//! Upload means reading, hashing and sealing every chunk on the client, then
//! verifying and durably storing it on the server; download means fetching,
//! checking every MAC, decrypting, hashing and writing the file.
//!
//! `cargo bench -p coffer-client --bench transfer` (or `just bench`).
//! `BENCH_MIB` sets the file size (default 1024), `BENCH_RUNS` the number of
//! runs of each (default 3). Figures are MB/s (10^6 bytes per second).

#![allow(clippy::print_stdout)] // a bench reports on stdout

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use coffer_net::SystemClock;
use coffer_server::{Config, Server};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `len` bytes that do not compress or repeat (xorshift), a MiB at a time.
fn write_file(path: &Path, len: usize) {
    let mut out = std::io::BufWriter::with_capacity(MIB, std::fs::File::create(path).unwrap());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; MIB];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(MIB);
        out.write_all(&block[..n]).unwrap();
        left -= n;
    }
    out.flush().unwrap();
    out.get_ref().sync_all().unwrap();
}

struct Coffer<'a> {
    addr: String,
    ca: &'a Path,
    home: &'a Path,
}

impl Coffer<'_> {
    /// Runs `coffer --json ARGS`; its answer and how long it took.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (Value, f64) {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
            .arg("--json")
            .args(args)
            .arg("--home")
            .arg(self.home)
            .env("COFFER_SERVER", &self.addr)
            .env("COFFER_CA", self.ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert!(out.status.success(), "coffer {args:?} failed");
        (serde_json::from_slice(&out.stdout).unwrap(), seconds)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let size_mib = env_number("BENCH_MIB", 1024);
    let runs = env_number("BENCH_RUNS", 3).max(1);
    // Disk-backed, as a real home and server data directory would be.
    let dir =
        tempfile::tempdir_in(std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| ".".into()))
            .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = CancellationToken::new();
    let (addr, ca) = runtime.block_on(async {
        let config = Config {
            data: dir.path().join("server"),
            bcrypt_cost: 4,
            ..Config::default()
        };
        let server = Arc::new(Server::new(config, Arc::new(SystemClock)).unwrap());
        let ca = server.ca_path().unwrap().to_owned();
        let (addr, _) = server.spawn_local(shutdown.clone()).await.unwrap();
        (addr, ca)
    });
    let home = dir.path().join("home");
    let coffer = Coffer {
        addr: addr.to_string(),
        ca: &ca,
        home: &home,
    };
    coffer.run(
        &[
            "register",
            "bench",
            "--device",
            "bench",
            "--mac",
            "02:00:00:00:00:01",
            "--password-stdin",
        ],
        Some("bench password\n"),
    );
    coffer.run(&["folder", "create", "bench"], None);

    let local = dir.path().join("large.bin");
    write_file(&local, size_mib * MIB);
    let back = dir.path().join("large.out");
    let bytes = (size_mib * MIB) as f64;
    println!("{size_mib} MiB file, {runs} runs, one coffer process per transfer");
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let target = format!("bench:large-{run}.bin");
        let (put, seconds) = coffer.run(&["put", local.to_str().unwrap(), &target], None);
        up.push(bytes / seconds / 1e6);
        let (got, seconds) = coffer.run(&["get", &target, back.to_str().unwrap()], None);
        down.push(bytes / seconds / 1e6);
        assert_eq!(put["sha256"], got["sha256"], "the file came back whole");
        println!(
            "run {run}: put {:.0} MB/s, get {:.0} MB/s",
            up[run], down[run]
        );
        std::fs::remove_file(&back).unwrap();
    }
    println!("coffer put: {:.0} MB/s (median of {runs})", median(up));
    println!("coffer get: {:.0} MB/s (median of {runs})", median(down));
    shutdown.cancel();
    drop(runtime);
}
