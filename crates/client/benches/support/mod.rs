//! What the client benches share: an in-process server on loopback and a
//! way to run the real `coffer` binary against it.

#![allow(dead_code)] // each bench uses part of it

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use coffer_net::SystemClock;
use coffer_server::{Config, Server};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub(crate) fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) struct Coffer<'a> {
    pub(crate) addr: String,
    pub(crate) ca: &'a Path,
    pub(crate) home: &'a Path,
}

impl Coffer<'_> {
    /// `coffer --json ARGS` for this device and server, daemon logs on
    /// standard error at `warn` (or as `BENCH_LOG` says); standard input and output are the caller's to set.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        command
            .arg("--json")
            .args(args)
            .arg("--home")
            .arg(self.home)
            .env("COFFER_SERVER", &self.addr)
            .env("COFFER_CA", self.ca)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stderr(Stdio::inherit());
        command
    }

    /// Registers the account "bench" on this device and makes its folder
    /// "bench".
    pub(crate) fn sign_up_with_folder(&self) {
        self.run(
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
        self.run(&["folder", "create", "bench"], None);
    }

    /// Runs `coffer --json ARGS`; its answer and how long it took.
    pub(crate) fn run(&self, args: &[&str], stdin: Option<&str>) -> (Value, f64) {
        let started = Instant::now();
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
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

/// The processor the figures were measured on, as `/proc/cpuinfo` names it:
/// the same code has measured up to three times faster on one processor
/// family than on another, so a figure means little without it.
pub(crate) fn host() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|line| line.split(':').next().is_some_and(|key| key.trim() == name))
            .and_then(|line| line.split_once(':'))
            .map_or("?", |(_, value)| value.trim())
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} (family {}, model {}), {cores} cores",
        field("model name"),
        field("cpu family"),
        field("model")
    )
}

/// Processor time used so far, in seconds: by this process (the in-process
/// servers) and by the children it has waited for (the `coffer` processes).
/// From `/proc/self/stat`, in clock ticks of 1/100 s (Linux's `USER_HZ`).
pub(crate) fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are fields 14 and 15, cutime and cstime
    // 16 and 17, counting from 1 with the pid.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let at = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0) / 100.0;
    (at(14) + at(15), at(16) + at(17))
}

pub(crate) const MIB: usize = 1 << 20;

/// Writes `len` bytes that do not compress or repeat (xorshift), a MiB at a time.
pub(crate) fn write_file(path: &Path, len: usize) {
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

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A scratch directory under the target directory (disk-backed, as a real
/// home and data directory would be; never inside the source tree), removed
/// when dropped.
pub(crate) fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// What runs in this process on a runtime of its own: told to stop, then
/// given five seconds to, when dropped.
struct Running {
    shutdown: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// A server in this process, stopped when dropped.
pub(crate) struct Local {
    pub(crate) addr: String,
    pub(crate) ca: PathBuf,
    _running: Running,
}

impl Local {
    /// Starts a server with its data under `dir`.
    pub(crate) fn start(dir: &Path) -> Local {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let shutdown = CancellationToken::new();
        let (addr, ca) = runtime.block_on(async {
            let config = Config {
                data: dir.join("server"),
                bcrypt_cost: 4,
                ..Config::default()
            };
            let server = Arc::new(Server::new(config, Arc::new(SystemClock)).unwrap());
            let ca = server.ca_path().unwrap().to_owned();
            let (addr, _) = server.spawn_local(shutdown.clone()).await.unwrap();
            (addr, ca)
        });
        Local {
            addr: addr.to_string(),
            ca,
            _running: Running {
                shutdown,
                runtime: Some(runtime),
            },
        }
    }

    /// The binary with the device `home`.
    pub(crate) fn coffer<'a>(&'a self, home: &'a Path) -> Coffer<'a> {
        Coffer {
            addr: self.addr.clone(),
            ca: &self.ca,
            home,
        }
    }
}

/// Servers in this process that make one replicated cluster (peer
/// certificates from one CA, the default write quorum of two), stopped when
/// dropped.
pub(crate) struct LocalCluster {
    pub(crate) addrs: Vec<String>,
    pub(crate) ca: PathBuf,
    _running: Running,
}

impl LocalCluster {
    /// Starts `nodes` servers with their data under `dir`, and waits until
    /// every one has caught up with the others.
    pub(crate) fn start(dir: &Path, nodes: usize) -> LocalCluster {
        use coffer_certs::{Ca, Kind, Validity};
        use coffer_net::{Listener as _, Net as _, TokioNet};

        let runtime = tokio::runtime::Runtime::new().unwrap();
        let shutdown = CancellationToken::new();
        std::fs::create_dir_all(dir).unwrap();
        let validity = Validity::days_from(time::OffsetDateTime::now_utc(), 2);
        let ca = Ca::generate("bench CA", validity).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        std::fs::write(dir.join("secret"), [7u8; 32]).unwrap();
        let addrs = runtime.block_on(async {
            let mut listeners = Vec::new();
            for _ in 0..nodes {
                let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                listeners.push(TokioNet.bind(any).await.unwrap());
            }
            let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
            let mut servers = Vec::new();
            for (i, listener) in listeners.into_iter().enumerate() {
                let id = format!("node-{}", i + 1);
                let sans = ["localhost".to_owned(), "127.0.0.1".to_owned()];
                let issued = ca.issue(Kind::Peer, &id, &sans, validity).unwrap();
                let (cert, key) = issued.write(dir, &id, false).unwrap();
                let config = Config {
                    listen: addrs[i],
                    data: dir.join(&id),
                    peers: (0..nodes)
                        .filter(|&j| j != i)
                        .map(|j| (format!("node-{}", j + 1), addrs[j]))
                        .collect(),
                    node_id: id,
                    tls_cert: Some(cert),
                    tls_key: Some(key),
                    ca: Some(ca_file.clone()),
                    cluster_secret_file: Some(dir.join("secret")),
                    admin: Some("admin".into()),
                    bcrypt_cost: 4,
                    ..Config::default()
                };
                let server = Arc::new(Server::new(config, Arc::new(SystemClock)).unwrap());
                tokio::spawn(server.clone().run(TokioNet, listener, shutdown.clone()));
                servers.push(server);
            }
            while !servers.iter().all(|s| s.ready()) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            addrs
        });
        LocalCluster {
            addrs: addrs.iter().map(ToString::to_string).collect(),
            ca: ca_file,
            _running: Running {
                shutdown,
                runtime: Some(runtime),
            },
        }
    }

    /// The binary with the device `home`, talking to node `node` (0-based).
    pub(crate) fn coffer<'a>(&'a self, node: usize, home: &'a Path) -> Coffer<'a> {
        Coffer {
            addr: self.addrs[node].clone(),
            ca: &self.ca,
            home,
        }
    }
}

/// A balancer in this process in front of `backends`, as a deployment puts
/// one in front of its servers (health checks verified against `ca`, the
/// default round-robin), stopped when dropped.
pub(crate) struct Front {
    pub(crate) addr: String,
    _running: Running,
}

impl Front {
    pub(crate) fn start(backends: &[String], ca: &Path) -> Front {
        use coffer_balancer::{BackendSpec, Balancer, Config, Verifier};
        use coffer_net::{Listener as _, Net as _, TokioNet, tls};

        let runtime = tokio::runtime::Runtime::new().unwrap();
        let shutdown = CancellationToken::new();
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let config = Config {
            listen: any,
            backends: backends
                .iter()
                .map(|addr| BackendSpec {
                    addr: addr.parse().unwrap(),
                    name: None,
                })
                .collect(),
            ..Config::default()
        };
        let verifier = Verifier::new(tls::load_roots(ca).unwrap(), Arc::new(SystemClock)).unwrap();
        let balancer = Arc::new(Balancer::new(config, Some(verifier), 1).unwrap());
        let addr = runtime.block_on(async {
            let listener = TokioNet.bind(any).await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(balancer.run(TokioNet, listener, shutdown.clone()));
            addr
        });
        Front {
            addr: addr.to_string(),
            _running: Running {
                shutdown,
                runtime: Some(runtime),
            },
        }
    }
}
