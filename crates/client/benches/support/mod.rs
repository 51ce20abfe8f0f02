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
    /// Dropped after the runtime has stopped, so with none of its threads
    /// left in it.
    _budget: Option<Arc<CpuBudget>>,
}

impl Running {
    /// A runtime whose threads are named `name` (as a profiler shows them)
    /// and, when `budget` is given, all run under it: each joins as it
    /// starts, the workers and the blocking threads that store chunks,
    /// started later, alike.
    fn new(name: &str, budget: Option<Arc<CpuBudget>>) -> Running {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name(name);
        if let Some(budget) = &budget {
            let budget = budget.clone();
            builder.on_thread_start(move || {
                if let Err(e) = budget.join() {
                    eprintln!("a thread stays off its processor budget: {e}");
                }
            });
        }
        Running {
            shutdown: CancellationToken::new(),
            runtime: Some(builder.build().unwrap()),
            _budget: budget,
        }
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("set until dropped")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// A share of the host's processor time, as a machine of its own would
/// have: a control group of Linux's `cpu` controller whose threads may run
/// `cores` cores' worth of time per 100 ms period between them, and are
/// held back for the rest of the period once they have; and one of the
/// `cpuacct` controller, which counts the time they ran. Version 1 of the
/// controllers (mounted at `/sys/fs/cgroup/cpu` and `…/cpuacct`), which
/// take single threads: the servers here are threads of this process. The
/// groups are removed when dropped.
pub(crate) struct CpuBudget {
    /// The group under `cpu`, then the one under `cpuacct`.
    groups: [PathBuf; 2],
}

/// Where the hierarchies of the two controllers are mounted (version 1).
const CGROUP_ROOTS: [&str; 2] = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct"];
/// Microseconds in a period of the budget (the kernel's default).
const PERIOD_US: u64 = 100_000;

impl CpuBudget {
    /// A budget of `cores`, or why this host cannot give one.
    pub(crate) fn new(name: &str, cores: f64) -> Result<Arc<CpuBudget>, String> {
        for (root, file) in CGROUP_ROOTS
            .iter()
            .zip(["cpu.cfs_quota_us", "cpuacct.usage"])
        {
            if !Path::new(root).join(file).is_file() {
                return Err(format!("no {file} under {root} (cgroup version 1)"));
            }
        }
        let group = format!("coffer-bench-{}-{name}", std::process::id());
        let groups = CGROUP_ROOTS.map(|root| Path::new(root).join(&group));
        let mut made = Vec::new();
        for dir in &groups {
            if let Err(e) = std::fs::create_dir(dir) {
                made.into_iter().for_each(|d| drop(std::fs::remove_dir(d)));
                return Err(format!("creating {}: {e}", dir.display()));
            }
            made.push(dir);
        }
        let budget = Arc::new(CpuBudget { groups });
        let quota = (cores * PERIOD_US as f64).round() as u64;
        for (file, value) in [
            ("cpu.cfs_period_us", PERIOD_US),
            ("cpu.cfs_quota_us", quota),
        ] {
            std::fs::write(budget.groups[0].join(file), value.to_string())
                .map_err(|e| format!("setting {file}: {e}"))?;
        }
        // A thread that joins and ends: whether threads may be moved here.
        let probe = budget.clone();
        std::thread::spawn(move || probe.join())
            .join()
            .map_err(|_| "the probe thread panicked".to_owned())??;
        Ok(budget)
    }

    /// Puts the calling thread under this budget.
    fn join(&self) -> Result<(), String> {
        // `/proc/thread-self` links to `PID/task/TID`.
        let link = std::fs::read_link("/proc/thread-self").map_err(|e| e.to_string())?;
        let tid = link
            .file_name()
            .and_then(|t| t.to_str())
            .ok_or("no thread id")?;
        for group in &self.groups {
            std::fs::write(group.join("tasks"), tid)
                .map_err(|e| format!("joining {}: {e}", group.display()))?;
        }
        Ok(())
    }

    /// Processor time its threads have used, in seconds.
    pub(crate) fn used_seconds(&self) -> f64 {
        std::fs::read_to_string(self.groups[1].join("cpuacct.usage"))
            .ok()
            .and_then(|ns| ns.trim().parse::<f64>().ok())
            .map_or(0.0, |ns| ns / 1e9)
    }

    /// How long, in all, its threads were held back for having used their
    /// share, in seconds: zero when the budget never bound.
    pub(crate) fn throttled_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(self.groups[0].join("cpu.stat")).unwrap_or_default();
        stat.lines()
            .find_map(|line| line.strip_prefix("throttled_time "))
            .and_then(|ns| ns.trim().parse::<f64>().ok())
            .map_or(0.0, |ns| ns / 1e9)
    }
}

impl Drop for CpuBudget {
    fn drop(&mut self) {
        for (group, root) in self.groups.iter().zip(CGROUP_ROOTS) {
            // Threads still in it (a blocking thread the runtime left
            // running) go back to the root group: only an empty group can
            // be removed.
            let tasks = std::fs::read_to_string(group.join("tasks")).unwrap_or_default();
            for tid in tasks.lines() {
                let _ = std::fs::write(Path::new(root).join("tasks"), tid);
            }
            if let Err(e) = std::fs::remove_dir(group) {
                eprintln!("could not remove {}: {e}", group.display());
            }
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
        Local::start_on(dir, None)
    }

    /// Starts a server with its data under `dir`, on `budget` when given.
    pub(crate) fn start_on(dir: &Path, budget: Option<Arc<CpuBudget>>) -> Local {
        let running = Running::new("single", budget);
        let (addr, ca) = running.runtime().block_on(async {
            let config = Config {
                data: dir.join("server"),
                bcrypt_cost: 4,
                ..Config::default()
            };
            let server = Arc::new(Server::new(config, Arc::new(SystemClock)).unwrap());
            let ca = server.ca_path().unwrap().to_owned();
            let (addr, _) = server.spawn_local(running.shutdown.clone()).await.unwrap();
            (addr, ca)
        });
        Local {
            addr: addr.to_string(),
            ca,
            _running: running,
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
/// certificates from one CA, the default write quorum of two), each on a
/// runtime of its own as each would be in a process of its own, stopped
/// when dropped.
pub(crate) struct LocalCluster {
    pub(crate) addrs: Vec<String>,
    pub(crate) ca: PathBuf,
    _running: Vec<Running>,
}

impl LocalCluster {
    /// Starts `nodes` servers with their data under `dir`, node `i` on
    /// `budgets[i]` where given, and waits until every one has caught up
    /// with the others.
    pub(crate) fn start(dir: &Path, nodes: usize, budgets: Vec<Arc<CpuBudget>>) -> LocalCluster {
        use coffer_certs::{Ca, Kind, Validity};
        use coffer_net::{Listener as _, Net as _, TokioNet};

        std::fs::create_dir_all(dir).unwrap();
        let validity = Validity::days_from(time::OffsetDateTime::now_utc(), 2);
        let ca = Ca::generate("bench CA", validity).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        std::fs::write(dir.join("secret"), [7u8; 32]).unwrap();
        let mut budgets = budgets.into_iter();
        let running: Vec<Running> = (0..nodes)
            .map(|n| {
                let name = format!("node-{}", n + 1);
                Running::new(&name, budgets.next())
            })
            .collect();
        let listeners: Vec<_> = running
            .iter()
            .map(|r| {
                let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                r.runtime().block_on(TokioNet.bind(any)).unwrap()
            })
            .collect();
        let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut servers = Vec::new();
        for (i, (listener, node)) in listeners.into_iter().zip(&running).enumerate() {
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
            let _entered = node.runtime().enter();
            let server = Arc::new(Server::new(config, Arc::new(SystemClock)).unwrap());
            node.runtime().spawn(
                server
                    .clone()
                    .run(TokioNet, listener, node.shutdown.clone()),
            );
            servers.push(server);
        }
        while !servers.iter().all(|s| s.ready()) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        LocalCluster {
            addrs: addrs.iter().map(ToString::to_string).collect(),
            ca: ca_file,
            _running: running,
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

        let running = Running::new("balancer", None);
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
        let addr = running.runtime().block_on(async {
            let listener = TokioNet.bind(any).await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(balancer.run(TokioNet, listener, running.shutdown.clone()));
            addr
        });
        Front {
            addr: addr.to_string(),
            _running: running,
        }
    }
}
