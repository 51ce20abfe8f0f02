//! The balancer's data path against a direct connection and against HAProxy
//! in `mode tcp`, in the same run, on loopback:
//!
//! - bulk throughput, one connection, each way (`BENCH_MIB` per transfer,
//!   default 1024);
//! - round-trip latency of 64-byte request/response pairs on one connection
//!   (`BENCH_ROUNDS`, default 10000, after a warm-up): p50 and p99;
//! - memory per idle proxied connection: the proxy's resident set before and
//!   after `BENCH_IDLE` (default 5000) connections that sent one byte and then
//!   nothing.
//!
//! The three are measured in turn, `BENCH_RUNS` times (default 5), and each
//! figure is the median. Both proxies run as separate processes (the release
//! `coffer-balancer`, and `haproxy` with two threads); the test backend and
//! the clients share this process. `just bench-balancer` installs HAProxy from
//! Debian's packages first; without it the HAProxy column is skipped.

#![allow(clippy::print_stdout)] // a bench reports on stdout

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1 << 20;
const BLOCK: usize = 256 * 1024;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The test backend. A connection's first byte says what it wants:
/// `D` + u64: that many bytes sent back, then close; `U`: everything read
/// until the client's end, then the count as u64; `E`: echo; `I`: nothing,
/// held open (counted in `idle`).
async fn backend(listener: TcpListener, idle: Arc<AtomicUsize>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let idle = idle.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut kind = [0u8; 1];
            if stream.read_exact(&mut kind).await.is_err() {
                return;
            }
            match kind[0] {
                b'D' => {
                    let Ok(mut left) = stream.read_u64().await else {
                        return;
                    };
                    let block = vec![0x5a; BLOCK];
                    while left > 0 {
                        let n = left.min(BLOCK as u64) as usize;
                        if stream.write_all(&block[..n]).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                    let _ = stream.shutdown().await;
                }
                b'U' => {
                    let mut block = vec![0; BLOCK];
                    let mut total = 0u64;
                    loop {
                        match stream.read(&mut block).await {
                            Ok(0) => break,
                            Ok(n) => total += n as u64,
                            Err(_) => return,
                        }
                    }
                    let _ = stream.write_u64(total).await;
                }
                b'E' => {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                b'I' => {
                    idle.fetch_add(1, Ordering::Relaxed);
                    let mut buf = [0u8; 1];
                    let _ = stream.read(&mut buf).await;
                    idle.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
        });
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

/// MB/s of `bytes` from the backend to the client.
async fn download(addr: SocketAddr, bytes: u64) -> f64 {
    let start = Instant::now();
    let mut stream = connect(addr).await;
    stream.write_u8(b'D').await.unwrap();
    stream.write_u64(bytes).await.unwrap();
    let mut block = vec![0; BLOCK];
    let mut got = 0u64;
    loop {
        match stream.read(&mut block).await.unwrap() {
            0 => break,
            n => got += n as u64,
        }
    }
    assert_eq!(got, bytes, "short download");
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// MB/s of `bytes` from the client to the backend (until it confirms the count).
async fn upload(addr: SocketAddr, bytes: u64) -> f64 {
    let start = Instant::now();
    let mut stream = connect(addr).await;
    stream.write_u8(b'U').await.unwrap();
    let block = vec![0xa5; BLOCK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        stream.write_all(&block[..n]).await.unwrap();
        left -= n as u64;
    }
    stream.shutdown().await.unwrap();
    assert_eq!(stream.read_u64().await.unwrap(), bytes, "short upload");
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// p50 and p99 round trips of 64-byte pairs, in microseconds.
async fn latency(addr: SocketAddr, rounds: usize) -> (f64, f64) {
    let mut stream = connect(addr).await;
    stream.write_u8(b'E').await.unwrap();
    let out = [0x42u8; 64];
    let mut back = [0u8; 64];
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let start = Instant::now();
        stream.write_all(&out).await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
        if i >= rounds / 10 {
            samples.push(start.elapsed());
        }
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Opens `n` connections that send their one byte and go quiet; waits until
/// the backend holds them all.
async fn open_idle(addr: SocketAddr, idle: &AtomicUsize, n: usize, held: &mut Vec<TcpStream>) {
    let target = idle.load(Ordering::Relaxed) + n;
    for _ in 0..n {
        let mut s = connect(addr).await;
        s.write_u8(b'I').await.unwrap();
        held.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while idle.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "idle connections not all through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// KiB of the proxy's resident set per idle proxied connection.
async fn idle_cost(addr: SocketAddr, pid: u32, idle: &AtomicUsize, n: usize) -> f64 {
    // A first small batch settles the allocator; then the measured batch.
    let mut held = Vec::with_capacity(n + 100);
    open_idle(addr, idle, 100, &mut held).await;
    let before = resident_kib(pid);
    open_idle(addr, idle, n, &mut held).await;
    let after = resident_kib(pid);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    while idle.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    after.saturating_sub(before) as f64 / n as f64
}

/// A proxy process, stopped (by its PID) when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn coffer_balancer(backend: SocketAddr) -> Proxy {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer-balancer"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backend",
        ])
        .arg(backend.to_string())
        .env("COFFER_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("coffer-balancer starts");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("coffer-balancer said {line:?}"));
    Proxy { child, addr }
}

/// HAProxy's version line, if it is installed.
fn haproxy_version() -> Option<String> {
    let out = Command::new("haproxy").arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(str::to_owned)
}

fn haproxy(backend: SocketAddr, dir: &Path) -> Proxy {
    let port = free_port();
    let config = dir.join("haproxy.cfg");
    // maxconn bounds the descriptors HAProxy asks for (2 per connection).
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 9000\n  nbthread 2\n\
             defaults\n  mode tcp\n  timeout connect 3s\n  timeout client 5m\n  timeout server 5m\n\
             frontend bench\n  bind 127.0.0.1:{port}\n  default_backend servers\n\
             backend servers\n  server s1 {backend} check\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Proxy { child, addr }
}

#[derive(Debug, Default, Clone)]
struct Samples {
    download: Vec<f64>,
    upload: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mib = env_number("BENCH_MIB", 1024);
    let runs = env_number("BENCH_RUNS", 5).max(1);
    let rounds = env_number("BENCH_ROUNDS", 10_000);
    let idle_n = env_number("BENCH_IDLE", 5000);
    runtime.block_on(async {
        let idle = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = listener.local_addr().unwrap();
        tokio::spawn(backend(listener, idle.clone()));
        let dir = tempfile::tempdir().unwrap();
        let version = haproxy_version();
        let ours = coffer_balancer(backend_addr);
        let theirs = version.as_ref().map(|_| haproxy(backend_addr, dir.path()));
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Interleaved, so that whatever else the machine does falls on all
        // three alike; each figure is the median over the runs.
        let mut targets = vec![backend_addr, ours.addr];
        targets.extend(theirs.as_ref().map(|h| h.addr));
        let mut samples = vec![Samples::default(); targets.len()];
        let bytes = (mib * MIB) as u64;
        for _ in 0..runs {
            for (i, addr) in targets.iter().enumerate() {
                samples[i].download.push(download(*addr, bytes).await);
                samples[i].upload.push(upload(*addr, bytes).await);
                let (p50, p99) = latency(*addr, rounds).await;
                samples[i].p50.push(p50);
                samples[i].p99.push(p99);
            }
        }
        let our_idle = idle_cost(ours.addr, ours.child.id(), &idle, idle_n).await;
        let their_idle = match &theirs {
            Some(h) => Some(idle_cost(h.addr, h.child.id(), &idle, idle_n).await),
            None => None,
        };

        println!(
            "balancer bench: medians of {runs} interleaved runs; {mib} MiB per transfer, \
             {rounds} round trips of 64 bytes per run; {idle_n} idle connections"
        );
        match &version {
            Some(v) => println!("haproxy: {v} (mode tcp, nbthread 2)"),
            None => println!(
                "haproxy: not installed (`just bench-balancer` installs it); its column is skipped"
            ),
        }
        let m = |i: usize, f: fn(&Samples) -> &Vec<f64>| samples.get(i).map(|s| median(f(s)));
        let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<26}{:>12}{:>18}{:>14}{:>18}",
            "", "direct", "coffer-balancer", "haproxy", "coffer/haproxy"
        );
        let row = |name: &str, d: Option<f64>, o: f64, t: Option<f64>| {
            let ratio = t
                .map(|t| format!("{:.2}", o / t))
                .unwrap_or_else(|| "-".into());
            println!(
                "{name:<26}{:>12}{:>18}{:>14}{:>18}",
                cell(d),
                cell(Some(o)),
                cell(t),
                ratio
            );
        };
        let ours_of = |f: fn(&Samples) -> &Vec<f64>| m(1, f).unwrap_or_default();
        row(
            "download MB/s",
            m(0, |s| &s.download),
            ours_of(|s| &s.download),
            m(2, |s| &s.download),
        );
        row(
            "upload MB/s",
            m(0, |s| &s.upload),
            ours_of(|s| &s.upload),
            m(2, |s| &s.upload),
        );
        row(
            "round trip p50 µs",
            m(0, |s| &s.p50),
            ours_of(|s| &s.p50),
            m(2, |s| &s.p50),
        );
        row(
            "round trip p99 µs",
            m(0, |s| &s.p99),
            ours_of(|s| &s.p99),
            m(2, |s| &s.p99),
        );
        let direct_p99 = m(0, |s| &s.p99).unwrap_or_default();
        row(
            "added p99 µs",
            None,
            ours_of(|s| &s.p99) - direct_p99,
            m(2, |s| &s.p99).map(|t| t - direct_p99),
        );
        row("idle connection KiB", None, our_idle, their_idle);
    });
}
