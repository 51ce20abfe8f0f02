//! The simulated world: one balancer, N servers and M clients, driven through
//! a seeded fault schedule, with the oracle watching.
//!
//! Timeline of a run:
//! 1. **warm-up** — no faults; every client makes a few connections through the
//!    balancer (or, in the files world, signs in and joins the folder); it
//!    ends once all have, and the balancer's counters must then show an exact
//!    round-robin spread;
//! 2. **faults** — partitions and holds (black holes) between the balancer and
//!    servers and between clients and the balancer, server crashes and
//!    restarts, chosen by the seed; clients keep working and may fail, but only
//!    with typed errors, never by hanging;
//! 3. **heal** — every fault is undone; after a settle delay (the balancer's
//!    recovery bound) every client operation must succeed again.
//!
//! The real server, balancer and client libraries run unmodified over
//! [`TurmoilNet`]; TLS is real too, its certificates checked against the
//! simulated clock.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use coffer_balancer::{BackendSpec, Balancer, Config as BalancerConfig, HealthConfig, Verifier};
use coffer_certs::{Ca, Kind, Validity};
use coffer_client::{Client, ClientTimeouts, Endpoint};
use coffer_net::{Net, SharedClock, tls};
use coffer_server::{Config, Server};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustls_pki_types::ServerName;
use tokio_util::sync::CancellationToken;

use crate::net::{SimClock, TurmoilNet};
use crate::oracle::{self, Op, Outcome, WarmupSpread};
use crate::replicas::Replicas;
use crate::workload::{Device, Done, KEEP_VERSIONS, Leak, Ledger, Race};

/// The fixed calendar time every simulation starts at: 2030-01-01T00:00:00Z.
pub const EPOCH_SECS: u64 = 1_893_456_000;

const PORT: u16 = 8000;

/// A deliberately broken system, to prove the oracle catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// At the heal, one byte of every stored chunk is flipped and the chunk
    /// store's own checksum recomputed: the server serves wrong bytes as sound.
    CorruptChunks,
    /// carol is quietly let into the shared folder, which the model says
    /// she may not read.
    LeakAccess,
    /// The balancer ignores health: neither checks nor failed connects ever
    /// take a backend down.
    IgnoreHealth,
    /// One client stays cut off from the balancer after the heal.
    NeverHeal,
    /// Clients (and the balancer, which would otherwise close a client that
    /// says nothing) wait forever, and one is black-holed: its operation hangs.
    NoClientTimeouts,
    /// The last server's peer links stay cut after the heal: what the others
    /// hold never reaches it, nor its writes them.
    StallReplication,
    /// At the heal, every chunk file of server-2 is deleted behind its back.
    LoseChunks,
    /// alice believes she removed bob from the folder but never asked the
    /// servers to: bob keeps his access, which the model says he lost.
    SkipUnshare,
}

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Servers behind the balancer; more than one make a replicated cluster.
    pub servers: usize,
    /// Simulated client devices.
    pub clients: usize,
    /// Connections each client makes during the warm-up.
    pub warmup_ops: usize,
    /// Length of the fault phase.
    pub fault_window: Duration,
    /// Delay after the heal before operations must succeed again; by default
    /// the balancer's recovery bound under the health checks the run sets.
    pub settle: Option<Duration>,
    /// Operations each client makes after the settle delay.
    pub final_ops: usize,
    /// Whether faults are injected at all.
    pub faults: bool,
    /// The files workload (accounts, a shared folder, uploads, downloads,
    /// moves, deletes, a race of two edits on the two sides of a partition,
    /// an unshare, a stranger's probes) instead of pings
    /// ([`Options::service`]).
    pub files: bool,
    /// A deliberately broken system.
    pub sabotage: Option<Sabotage>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            servers: 3,
            clients: 4,
            warmup_ops: 3,
            fault_window: Duration::from_secs(10),
            settle: None,
            final_ops: 2,
            faults: true,
            files: false,
            sabotage: None,
        }
    }
}

impl Options {
    /// The files workload: four devices of three users against the three
    /// replicated servers behind the balancer.
    pub fn service() -> Options {
        Options {
            files: true,
            final_ops: 6,
            ..Options::default()
        }
    }
}

/// How many faults of each kind a run injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Balancer↔server partitions.
    pub backend_partitions: u32,
    /// Balancer↔server holds (black holes).
    pub backend_holds: u32,
    /// Client↔balancer partitions.
    pub client_partitions: u32,
    /// Server crashes (each later restarted).
    pub crashes: u32,
    /// Links whose latency jumped to hundreds of milliseconds.
    pub latency_spikes: u32,
    /// Balancer restarts.
    pub balancer_restarts: u32,
    /// Clients cut off while a multi-chunk upload was in flight.
    pub upload_drops: u32,
    /// Servers cut off from every other server (the balancer still reaches
    /// them), including the race's.
    pub isolations: u32,
    /// Servers crashed, their data directory deleted, and restarted empty.
    pub wipes: u32,
}

impl FaultCounts {
    /// All faults.
    pub fn total(&self) -> u32 {
        self.backend_partitions
            + self.backend_holds
            + self.client_partitions
            + self.crashes
            + self.latency_spikes
            + self.balancer_restarts
            + self.upload_drops
            + self.isolations
            + self.wipes
    }

    /// Adds another run's counts.
    pub fn add(&mut self, other: &FaultCounts) {
        self.backend_partitions += other.backend_partitions;
        self.backend_holds += other.backend_holds;
        self.client_partitions += other.client_partitions;
        self.crashes += other.crashes;
        self.latency_spikes += other.latency_spikes;
        self.balancer_restarts += other.balancer_restarts;
        self.upload_drops += other.upload_drops;
        self.isolations += other.isolations;
        self.wipes += other.wipes;
    }
}

/// What a run did and found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Every operation and fault, in simulated-time order: identical for
    /// identical seeds.
    pub trace: Vec<String>,
    /// Client operations.
    pub ops: Vec<Op>,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Reads checked against an acknowledged upload's SHA-256.
    pub checked_reads: u32,
    /// Reads a stranger or a connection without a session attempted.
    pub probes: u32,
    /// Races whose two edits were both written and were then found as one
    /// winner and one conflict copy on every node.
    pub conflicts: u32,
    /// Invariant violations; empty when the run passed.
    pub violations: Vec<String>,
}

impl Report {
    /// The command that replays this run.
    pub fn replay(&self) -> String {
        format!("replay: TURMOIL_SEED={} just sim", self.seed)
    }
}

/// A scratch directory on a RAM-backed filesystem where there is a roomy one
/// (`/dev/shm` with at least 1 GiB free), else in the default place. The
/// servers' fsyncs then cost nothing, so a seed's speed is the code's, not
/// the disk's; what a crash keeps is the simulation's durability model either
/// way (a crash loses the process's memory, never the files).
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    const ROOM: u64 = 1 << 30;
    let shm = std::path::Path::new("/dev/shm");
    let roomy = nix::sys::statvfs::statvfs(shm)
        .is_ok_and(|s| s.blocks_available().saturating_mul(s.fragment_size()) >= ROOM);
    match roomy.then(|| tempfile::tempdir_in(shm)) {
        Some(Ok(dir)) => Ok(dir),
        _ => tempfile::tempdir(),
    }
}

/// Certificates for the run, valid around the simulation's epoch.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(servers: usize) -> std::io::Result<Pki> {
        let dir = scratch_dir()?;
        let now =
            time::OffsetDateTime::from_unix_timestamp(EPOCH_SECS as i64).expect("valid epoch");
        let validity = Validity::days_from(now, 30);
        let ca = Ca::generate("sim CA", validity).map_err(std::io::Error::other)?;
        ca.write(dir.path(), false).map_err(std::io::Error::other)?;
        ca.issue(Kind::Server, "localhost", &["localhost".into()], validity)
            .and_then(|issued| issued.write(dir.path(), "server", false))
            .map_err(std::io::Error::other)?;
        // Each server of a cluster has its peer certificate, which names its
        // node and serves clients (and health checks) as localhost too.
        if servers > 1 {
            for n in 1..=servers {
                let node = format!("server-{n}");
                ca.issue(Kind::Peer, &node, &["localhost".into()], validity)
                    .and_then(|issued| issued.write(dir.path(), &node, false))
                    .map_err(std::io::Error::other)?;
            }
        }
        // The servers share a cluster secret, as a deployment's do: tokens
        // and TLS session tickets from one are good on every other.
        std::fs::write(dir.path().join("secret"), [0x5e; 32])?;
        Ok(Pki { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// How long a write waits for its quorum before it is answered
/// `unavailable`: shorter than the clients' request deadline, so that a
/// device learns that its write was kept on the node (and the race knows its
/// edit was written) instead of timing out.
const QUORUM_TIMEOUT: Duration = Duration::from_secs(1);

/// Server `n` of `servers`: alone, with the server certificate; in a
/// cluster, with its peer certificate and the others as peers. A
fn server_config(pki: &Pki, n: usize, servers: usize) -> Config {
    let node = format!("server-{n}");
    let (cert, key) = if servers > 1 {
        (format!("{node}.pem"), format!("{node}.key"))
    } else {
        ("server.pem".to_owned(), "server.key".to_owned())
    };
    Config {
        listen: SocketAddr::from(([0, 0, 0, 0], PORT)),
        data: pki.path(&node),
        tls_cert: Some(pki.path(&cert)),
        tls_key: Some(pki.path(&key)),
        ca: Some(pki.path("ca.pem")),
        cluster_secret_file: Some(pki.path("secret")),
        bcrypt_cost: 4,
        keep_versions: KEEP_VERSIONS,
        admin: (servers > 1).then(|| "admin".to_owned()),
        quorum_timeout: QUORUM_TIMEOUT,
        peers: (1..=servers)
            .filter(|&m| m != n)
            .map(|m| {
                let peer = format!("server-{m}");
                let addr = SocketAddr::new(turmoil::lookup(peer.as_str()), PORT);
                (peer, addr)
            })
            .collect(),
        node_id: node,
        ..Config::default()
    }
}

type Shared<T> = Rc<RefCell<T>>;

/// The server each host runs now (none while it is down).
pub(crate) type Nodes = Shared<Vec<Weak<Server>>>;

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

fn fmt_time(t: Duration) -> String {
    format!("{:>9.3}s", t.as_secs_f64())
}

/// Records one client operation for the oracle and the trace.
struct Recorder {
    ops: Shared<Vec<Op>>,
    trace: Shared<Vec<String>>,
    client: String,
    /// Longer than every client deadline together: beyond it, an operation hangs.
    bound: Duration,
}

impl Recorder {
    async fn op(&self, after_heal: bool, attempt: impl Future<Output = Done>) {
        let start = now();
        let mut why = String::new();
        let outcome = match tokio::time::timeout(self.bound + Duration::from_secs(5), attempt).await
        {
            Err(_) => Outcome::Hung,
            Ok(Ok(detail)) => Outcome::Ok { detail },
            Ok(Err(e)) => {
                why = format!(": {e}");
                Outcome::Failed {
                    code: e.code().to_string(),
                }
            }
        };
        let end = now();
        self.trace.borrow_mut().push(format!(
            "{} {} {outcome:?}{why}",
            fmt_time(end),
            self.client
        ));
        self.ops.borrow_mut().push(Op {
            client: self.client.clone(),
            start,
            end,
            after_heal,
            outcome,
        });
    }
}

/// Waits until every device is done with its last steps; false (and a
/// violation) when they are not within a bound.
async fn all_finished(ledger: &RefCell<Ledger>, clients: usize) -> bool {
    for _ in 0..1200 {
        if ledger.borrow().finished >= clients {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ledger
        .borrow_mut()
        .violations
        .push("the devices did not finish their last steps within 120 s".into());
    false
}

/// Flips one byte of every chunk the server stores and recomputes the store's
/// checksum, so that the server serves the wrong bytes as sound.
fn corrupt_chunks(data: &std::path::Path) -> std::io::Result<u32> {
    let mut corrupted = 0;
    let root = data.join("chunks");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    dirs.sort();
    for dir in dirs.iter().filter(|d| !d.ends_with("tmp") && d.is_dir()) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        for file in files {
            let mut bytes = std::fs::read(&file)?;
            let Some(len) = bytes.len().checked_sub(4).filter(|&l| l > 0) else {
                continue;
            };
            bytes[len / 2] ^= 0x01;
            let crc = crc32c::crc32c(&bytes[..len]).to_le_bytes();
            bytes[len..].copy_from_slice(&crc);
            std::fs::write(&file, bytes)?;
            corrupted += 1;
        }
    }
    Ok(corrupted)
}

/// Deletes every chunk file the server stores, its database none the wiser.
fn lose_chunks(data: &std::path::Path) -> std::io::Result<u32> {
    let mut lost = 0;
    for dir in std::fs::read_dir(data.join("chunks"))? {
        let dir = dir?.path();
        if dir.ends_with("tmp") || !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir)? {
            std::fs::remove_file(file?.path())?;
            lost += 1;
        }
    }
    Ok(lost)
}

/// The longest a backend that went down may still be handed new
/// connections: a settled check interval, then `fall` failed checks at the
/// fast interval, each up to its timeout, and a connect already under way.
/// Each of those timed steps may also end up to two ticks late in the
/// simulation — tokio rounds a deadline up to its next millisecond, and the
/// simulation wakes a host only on its next tick — so each adds two ticks.
fn detection_bound(config: &BalancerConfig, tick: Duration) -> Duration {
    let h = &config.health;
    let slack = 1.0 + h.jitter;
    let steps = 2 + 2 * h.fall;
    h.interval.mul_f64(slack)
        + (h.timeout + h.fast_interval.mul_f64(slack)) * h.fall
        + config.connect_timeout
        + tick * 2 * steps
}

/// The longest the balancer may take, once every fault is undone, to take
/// every backend again: a check under way at the heal may still fail (and take
/// a backend down) until its timeout; a backend that is down is checked again
/// within a settled interval, and `rise` good checks, the later ones at the fast
/// interval, bring it back. Ticks as in [`detection_bound`]. Operations after
/// this delay must succeed.
fn recovery_bound(config: &BalancerConfig, tick: Duration) -> Duration {
    let h = &config.health;
    let slack = 1.0 + h.jitter;
    let steps = 1 + 2 * h.rise;
    h.timeout
        + h.interval.mul_f64(slack)
        + h.timeout
        + (h.fast_interval.mul_f64(slack) + h.timeout) * h.rise.saturating_sub(1)
        + tick * 2 * steps
}

/// Runs one simulation.
pub fn run(seed: u64, options: &Options) -> Result<Report, Box<dyn std::error::Error>> {
    let pki = Rc::new(Pki::new(options.servers)?);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(Duration::from_secs(600))
        .min_message_latency(MIN_LATENCY)
        .max_message_latency(MAX_LATENCY)
        .tick_duration(TICK)
        // Hosts run in a new order each tick, drawn from the seed: messages
        // that land in one tick are taken in every order across seeds.
        .enable_random_order()
        .build();

    let clock: SharedClock = Arc::new(SimClock);
    let servers: Vec<String> = (1..=options.servers)
        .map(|n| format!("server-{n}"))
        .collect();
    let sabotage = options.sabotage;
    // The running server of each host, for the convergence check and the
    // wipe's readiness rule. Weak: a crashed host's server must go with it.
    let nodes: Nodes = Rc::new(RefCell::new(
        (0..servers.len()).map(|_| Weak::new()).collect(),
    ));
    for (i, name) in servers.iter().enumerate() {
        let pki = pki.clone();
        let clock = clock.clone();
        let nodes = nodes.clone();
        // Every start of a host draws from its own stream of the seed, so a
        // restarted server never reuses the ids it handed out before.
        let starts = Rc::new(std::cell::Cell::new(0u64));
        let count = options.servers;
        sim.host(name.as_str(), move || {
            let pki = pki.clone();
            let clock = clock.clone();
            let nodes = nodes.clone();
            starts.set(starts.get() + 1);
            let server_seed = seed ^ ((i as u64 + 1) << 48) ^ (starts.get() << 32);
            async move {
                // Built once running, when every host has a name to look up.
                let config = server_config(&pki, i + 1, count);
                let server = Arc::new(Server::with_seed(config.clone(), clock, server_seed)?);
                nodes.borrow_mut()[i] = Arc::downgrade(&server);
                let listener = TurmoilNet.bind(config.listen).await?;
                server
                    .run(TurmoilNet, listener, CancellationToken::new())
                    .await?;
                Ok(())
            }
        });
    }
    let backends: Vec<BackendSpec> = servers
        .iter()
        .map(|s| BackendSpec {
            addr: SocketAddr::new(sim.lookup(s.as_str()), PORT),
            name: Some("localhost".into()),
        })
        .collect();
    let mut balancer_config = BalancerConfig {
        backends,
        connect_timeout: Duration::from_secs(1),
        max_attempts: 3,
        // Checks quick enough that a backend down for a few seconds is
        // detected within the run: bound about 3 s.
        health: HealthConfig {
            interval: Duration::from_millis(500),
            fast_interval: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
            jitter: 0.1,
        },
        first_byte_timeout: if sabotage == Some(Sabotage::NoClientTimeouts) {
            Duration::from_secs(3600)
        } else {
            BalancerConfig::default().first_byte_timeout
        },
        ..BalancerConfig::default()
    };
    // What the balancer promises, whatever the sabotage makes it do.
    let detect = detection_bound(&balancer_config, TICK);
    let settle = options.settle.unwrap_or_else(|| {
        let balancer = recovery_bound(&balancer_config, TICK);
        // Writes need a peer too: the files world waits for the cluster's
        // links as well.
        if options.files && options.servers > 1 {
            balancer.max(CLUSTER_RECOVERY)
        } else {
            balancer
        }
    });
    if sabotage == Some(Sabotage::IgnoreHealth) {
        balancer_config.health = HealthConfig {
            interval: Duration::from_secs(3600),
            fast_interval: Duration::from_secs(3600),
            fall: u32::MAX,
            ..balancer_config.health
        };
    }
    // Health checks verify the servers' TLS against the simulated clock.
    let roots = tls::load_roots(&pki.path("ca.pem"))?;
    let verifier = Verifier::new(roots.clone(), clock.clone())?;
    // The running balancer and when it started: a restart is a new one,
    // knowing nothing of the backends' health.
    let current: Shared<Option<(Arc<Balancer>, Duration)>> = Rc::default();
    {
        let current = current.clone();
        let starts = Rc::new(std::cell::Cell::new(0u64));
        sim.host("balancer", move || {
            starts.set(starts.get() + 1);
            let balancer = Balancer::new(
                balancer_config.clone(),
                Some(verifier.clone()),
                seed ^ (starts.get() << 40),
            )
            .map(Arc::new);
            if let Ok(balancer) = &balancer {
                *current.borrow_mut() = Some((balancer.clone(), now()));
            }
            async move {
                let balancer = balancer?;
                let listener = TurmoilNet
                    .bind(SocketAddr::from(([0, 0, 0, 0], PORT)))
                    .await?;
                balancer
                    .run(TurmoilNet, listener, CancellationToken::new())
                    .await?;
                Ok(())
            }
        });
    }

    let phases: Rc<Phases> = Rc::default();
    let timeouts = if sabotage == Some(Sabotage::NoClientTimeouts) {
        let forever = Duration::from_secs(3600);
        ClientTimeouts {
            connect: forever,
            handshake: forever,
            request: forever,
            frame: forever,
        }
    } else {
        ClientTimeouts {
            connect: Duration::from_secs(2),
            handshake: Duration::from_secs(3),
            request: Duration::from_secs(2),
            frame: Duration::from_secs(2),
        }
    };
    // Longer than every client deadline together: beyond it, an operation hangs.
    // A files step makes several requests, each retried a few times.
    let op_bound = Duration::from_secs(if options.files { 60 } else { 12 });

    let ops: Shared<Vec<Op>> = Rc::default();
    let trace: Shared<Vec<String>> = Rc::default();
    let ledger: Rc<RefCell<Ledger>> = Rc::default();
    let scratch = Rc::new(scratch_dir()?);
    let balancer_ip = sim.lookup("balancer");
    let clients: Vec<String> = (1..=options.clients)
        .map(|n| format!("client-{n}"))
        .collect();
    for (index, name) in clients.iter().enumerate() {
        let recorder = Recorder {
            ops: ops.clone(),
            trace: trace.clone(),
            client: name.clone(),
            bound: op_bound,
        };
        // A device's own TLS configuration: its own session cache.
        let endpoint = Endpoint {
            addr: SocketAddr::new(balancer_ip, PORT),
            name: ServerName::try_from("localhost")?,
            tls: tls::client_config(roots.clone(), None, clock.clone())?,
            ca_label: "sim CA".into(),
            timeouts,
        };
        let options = options.clone();
        let ledger = ledger.clone();
        let phases = phases.clone();
        let leak = match sabotage {
            Some(Sabotage::LeakAccess) => Leak::Carol,
            Some(Sabotage::SkipUnshare) => Leak::Bob,
            _ => Leak::None,
        };
        // Each server reached directly, past the balancer: the race's edits
        // and the final checks of every node.
        let direct: Vec<Endpoint> = servers
            .iter()
            .map(|s| Endpoint {
                addr: SocketAddr::new(sim.lookup(s.as_str()), PORT),
                ..endpoint.clone()
            })
            .collect();
        let mut device = options.files.then(|| {
            Device::new(
                name.clone(),
                index,
                (endpoint.clone(), direct),
                seed,
                scratch.path(),
                leak,
            )
        });
        let replicas = Replicas {
            nodes: nodes.clone(),
            data: servers.iter().map(|s| pki.path(s)).collect(),
        };
        sim.client(name.as_str(), async move {
            // Let the servers start (and a cluster's nodes catch up with each
            // other) and the balancer see them ready.
            while !phases.started.get() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let ping = async || {
                let client = Client::connect(&TurmoilNet, &endpoint).await?;
                Ok(client.ping().await?.node_id)
            };
            if let Some(device) = &mut device {
                // Setting up (accounts, the folder) is the warm-up.
                let mut set_up = false;
                while !phases.settled() {
                    recorder.op(false, device.step(&ledger)).await;
                    if !set_up && device.set_up(&ledger.borrow()) {
                        set_up = true;
                        phases.ready.set(phases.ready.get() + 1);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                for _ in 0..options.final_ops {
                    recorder.op(true, device.step(&ledger)).await;
                }
                ledger.borrow_mut().finished += 1;
                if index == 0 && all_finished(&ledger, options.clients).await {
                    // Once no device writes any more: every node must come
                    // to hold the same, and every check sees the final state.
                    recorder.op(true, replicas.converged(&ledger)).await;
                    recorder.op(true, device.sweep(&ledger, &replicas)).await;
                    recorder.op(true, device.check_race(&ledger)).await;
                    recorder.op(true, device.check_unshare(&ledger)).await;
                }
                return Ok(());
            }
            for _ in 0..options.warmup_ops {
                recorder.op(false, ping()).await;
            }
            phases.ready.set(phases.ready.get() + 1);
            while !phases.settled() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !phases.warming() && !phases.settled() {
                    recorder.op(false, ping()).await;
                }
            }
            for _ in 0..options.final_ops {
                recorder.op(true, ping()).await;
            }
            ledger.borrow_mut().finished += 1;
            if index == 0 && all_finished(&ledger, options.clients).await {
                recorder.op(true, replicas.converged(&ledger)).await;
            }
            Ok(())
        });
    }

    let mut faults = Faults {
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_fa17),
        counts: FaultCounts::default(),
        servers: servers.clone(),
        clients: clients.clone(),
        crashed: BTreeMap::new(),
        spiked: Vec::new(),
        rejoin: Vec::new(),
        links: BTreeMap::new(),
        isolated: BTreeMap::new(),
        race: None,
        racing: false,
        data: servers.iter().map(|s| pki.path(s)).collect(),
        trace: trace.clone(),
        sabotage,
    };
    // The files workload's two scripted events: the race of two edits on the
    // two sides of a partition, and alice removing bob from the folder.
    let mut race_at = None;
    let mut unshare_at = None;
    let mut spread = None;
    let mut next_fault = Duration::ZERO;
    let mut heal_at = None;
    let mut healed = None;
    let mut watch = Detection::new(servers.len(), detect);
    loop {
        let done = sim.step()?;
        let t = sim.elapsed();
        let (balancer, balancer_started) =
            current.borrow().clone().expect("the balancer host started");
        if !phases.started.get()
            && (t >= WARMUP
                || balancer.stats().iter().all(|b| {
                    b.state == coffer_balancer::State::Up
                        && b.check_micros > 0
                        && b.last_error.is_none()
                }))
        {
            phases.started.set(true);
        }
        if phases.warming() && (phases.ready.get() == options.clients || t >= WARMUP) {
            let stats = balancer.stats();
            spread = Some(WarmupSpread {
                totals: stats.iter().map(|s| s.total).collect(),
                failures: stats.iter().map(|s| s.failures).collect(),
            });
            phases.warmed.set(true);
            next_fault = t;
            heal_at = Some(if options.faults {
                t + options.fault_window
            } else {
                t
            });
            trace.borrow_mut().push(format!(
                "{} warm-up over, {} of {} clients set up",
                fmt_time(t),
                phases.ready.get(),
                options.clients
            ));
            if options.files {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7ace);
                if options.faults && servers.len() > 1 {
                    race_at = Some(t + Duration::from_millis(rng.random_range(500..4000)));
                }
                unshare_at = Some(t + Duration::from_millis(rng.random_range(2000..8000)));
            }
        }
        if race_at.is_some_and(|at| t >= at) && healed.is_none() {
            race_at = None;
            let (cut, other) = faults.start_race(&sim, t);
            ledger.borrow_mut().race = Some(Race::new(seed, [cut, other]));
        }
        if faults.racing && ledger.borrow().race.as_ref().is_some_and(Race::done) {
            faults.end_race(&sim, t);
            if let Some(race) = ledger.borrow_mut().race.as_mut() {
                race.open = false;
            }
        }
        if unshare_at.is_some_and(|at| t >= at) || (unshare_at.is_some() && phases.settled()) {
            unshare_at = None;
            ledger.borrow_mut().unshare_due = true;
            trace
                .borrow_mut()
                .push(format!("{} alice is to remove bob", fmt_time(t)));
        }
        // Faults from the end of the warm-up until the heal.
        if let Some(heal_at) = heal_at
            && healed.is_none()
        {
            if options.faults {
                faults.due(&mut sim, t);
                if t >= next_fault && t < heal_at {
                    let ready: Vec<bool> = nodes
                        .borrow()
                        .iter()
                        .map(|n| n.upgrade().is_some_and(|s| s.ready()))
                        .collect();
                    faults.inject(&mut sim, t, &ledger.borrow().uploading, &ready);
                    next_fault = t + Duration::from_millis(faults.rng.random_range(200..1200));
                }
            }
            if t >= heal_at {
                healed = Some(t);
                faults.heal(&mut sim);
                if let Some(race) = ledger.borrow_mut().race.as_mut() {
                    race.open = false;
                }
                if sabotage == Some(Sabotage::NeverHeal) {
                    faults.partition(&sim, "client-1", "balancer");
                }
                if sabotage == Some(Sabotage::CorruptChunks) {
                    let n = corrupt_chunks(&pki.path("server-1"))?;
                    trace
                        .borrow_mut()
                        .push(format!("{} sabotage: corrupted {n} chunks", fmt_time(t)));
                }
                if sabotage == Some(Sabotage::StallReplication)
                    && let Some(last) = servers.last()
                {
                    faults.isolate(&sim, last);
                }
                if sabotage == Some(Sabotage::LoseChunks) {
                    let n = lose_chunks(&pki.path("server-2"))?;
                    trace
                        .borrow_mut()
                        .push(format!("{} sabotage: deleted {n} chunks", fmt_time(t)));
                }
                trace.borrow_mut().push(format!("{} heal", fmt_time(t)));
            }
        }
        if let Some(healed) = healed
            && !phases.settled()
            && t >= healed + settle
        {
            phases.settled.set(true);
            trace.borrow_mut().push(format!("{} settled", fmt_time(t)));
        }
        let down: Vec<bool> = servers.iter().map(|s| faults.is_down(s)).collect();
        watch.observe(t, balancer_started, &down, || balancer.stats());
        if done {
            break;
        }
    }

    // `SIM_KEEP=1`: leave the servers' data directories (their databases and
    // chunk stores) behind for a look after a replay.
    if std::env::var_os("SIM_KEEP").is_some() {
        let kept = pki.dir.path().to_owned();
        trace
            .borrow_mut()
            .push(format!("data directories kept under {}", kept.display()));
        drop(sim);
        if let Ok(pki) = Rc::try_unwrap(pki) {
            let _ = pki.dir.keep();
        }
    }
    let ops = ops.borrow().clone();
    let mut violations = oracle::check(
        &ops,
        op_bound,
        // The pings' connections, a fixed number per client, spread exactly;
        // the files workload's devices open as many as their steps need.
        spread
            .as_ref()
            .filter(|_| servers.len() > 1 && !options.files),
    );
    violations.extend(watch.violations);
    let ledger = ledger.borrow();
    violations.extend(ledger.violations.iter().cloned());
    let mut trace = trace.borrow().clone();
    trace.push(format!(
        "faults {:?}; {} reads checked, {} probes refused or caught, {} race(s) as one winner and one copy",
        faults.counts, ledger.checked_reads, ledger.probes, ledger.conflicts
    ));
    Ok(Report {
        seed,
        trace,
        ops,
        faults: faults.counts,
        checked_reads: ledger.checked_reads,
        probes: ledger.probes,
        conflicts: ledger.conflicts,
        violations,
    })
}

/// The longest a server may take, once every fault is undone, to link up
/// with its peers again (and so to reach a write quorum): a peer link cut
/// silently is given up after three missed pings, 5 s apart
/// (`cluster/link.rs`), then reconnected after at most its 5 s backoff, and
/// catches up within a second.
const CLUSTER_RECOVERY: Duration = Duration::from_secs(21);

/// How far simulated time moves per step.
const TICK: Duration = Duration::from_millis(10);

/// The longest warm-up: it ends sooner, once every client has set up (made
/// its warm-up connections, or signed in and joined the folder).
const WARMUP: Duration = Duration::from_secs(3);

/// The run's phases as they unfold. The warm-up ends once every client has set
/// up (or after [`WARMUP`]), the faults run for the fault window, and the
/// settle delay after the heal lasts as long as the balancer may take to
/// recover. A warm-up as long as its work and a settle delay as long as its
/// bound: a run spends no simulated time waiting on nothing.
#[derive(Debug, Default)]
struct Phases {
    /// Every server has answered the balancer's health check ready: a
    /// cluster's nodes have linked up and caught up with each other.
    started: std::cell::Cell<bool>,
    /// Clients that have set up.
    ready: std::cell::Cell<usize>,
    /// The warm-up has ended and the faults have begun.
    warmed: std::cell::Cell<bool>,
    /// The settle delay has ended: every operation from then on must succeed.
    settled: std::cell::Cell<bool>,
}

impl Phases {
    fn warming(&self) -> bool {
        !self.warmed.get()
    }

    fn settled(&self) -> bool {
        self.settled.get()
    }
}

/// Link latency outside spikes.
const MIN_LATENCY: Duration = Duration::from_millis(1);
const MAX_LATENCY: Duration = Duration::from_millis(20);

/// The fault schedule: what is broken now, and what gets broken next.
struct Faults {
    rng: ChaCha8Rng,
    counts: FaultCounts,
    servers: Vec<String>,
    clients: Vec<String>,
    /// Crashed servers and when each comes back.
    crashed: BTreeMap<String, Duration>,
    /// Links with a latency spike.
    spiked: Vec<(String, String)>,
    /// Clients cut off mid-upload, and when they are let back.
    rejoin: Vec<(Duration, String)>,
    /// Servers cut off from the other servers, and when they are let back.
    isolated: BTreeMap<String, Duration>,
    /// The race's two servers: the one cut off from the others while the race
    /// is on, then the one its other edit goes through. Neither is wiped,
    /// and no other isolation comes and goes while the race is on: the race's
    /// check expects each edit written to be kept, and the two to meet only
    /// once both are written.
    race: Option<(String, String)>,
    /// Whether the race's server is still cut off.
    racing: bool,
    /// Each server's data directory, which a wipe deletes.
    data: Vec<PathBuf>,
    /// Links now partitioned or held, each named by its two ends in order.
    /// Every fault that breaks a link goes through `partition`, `hold` and
    /// `repair`, so the heal and a quiet crash can trust it.
    links: BTreeMap<(String, String), Cut>,
    trace: Shared<Vec<String>>,
    sabotage: Option<Sabotage>,
}

/// How a link is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Everything sent either way is lost.
    Partitioned,
    /// Everything sent either way waits until the link is released.
    Held,
}

/// What becomes of a host whose process dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// It stays down until restarted.
    Crash,
    /// It starts again at once on the same data.
    Restart,
}

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl Faults {
    fn log(&self, t: Duration, line: &str) {
        self.trace
            .borrow_mut()
            .push(format!("{} fault {line}", fmt_time(t)));
    }

    fn partition(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        sim.partition(a, b);
        self.links.insert(link(a, b), Cut::Partitioned);
    }

    fn hold(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        sim.hold(a, b);
        self.links.insert(link(a, b), Cut::Held);
    }

    /// Repairs the link and releases what it held.
    fn repair(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        sim.repair(a, b);
        sim.release(a, b);
        self.links.remove(&link(a, b));
    }

    /// Kills `host`'s process as a power cut would: whatever its sockets
    /// would say as the process dies (FINs, resets) is lost, and so is what it
    /// sent that is still on the wire. Letting those last words through would
    /// make runs differ: tokio drops a runtime's tasks in an order that
    /// depends on process-wide task ids, so on what else the process ran
    /// before (other seeds, other threads), and each dropped socket's words
    /// would draw link latency from the seed's generator in that order. The
    /// host's links come back as they were.
    fn quietly(&mut self, sim: &mut turmoil::Sim<'_>, host: &str, fate: Fate) {
        // Every other host: a server also talks to its peers, and to the
        // devices that reach it directly (the race, the final checks).
        let peers: Vec<String> = std::iter::once("balancer".to_owned())
            .chain(self.servers.iter().cloned())
            .chain(self.clients.iter().cloned())
            .filter(|h| h != host)
            .collect();
        for peer in &peers {
            sim.partition_oneway(host, peer.as_str());
        }
        match fate {
            Fate::Crash => sim.crash(host),
            Fate::Restart => sim.bounce(host),
        }
        for peer in &peers {
            match self.links.get(&link(host, peer)) {
                None => sim.repair_oneway(host, peer.as_str()),
                Some(Cut::Held) => sim.hold(host, peer.as_str()),
                Some(Cut::Partitioned) => {}
            }
        }
    }

    fn is_down(&self, server: &str) -> bool {
        self.crashed.contains_key(server) || self.links.contains_key(&link("balancer", server))
    }

    /// Brings back what is due: restarted servers, clients cut mid-upload.
    fn due(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration) {
        let back: Vec<String> = self
            .crashed
            .iter()
            .filter(|(_, at)| **at <= t)
            .map(|(s, _)| s.clone())
            .collect();
        for server in back {
            self.crashed.remove(&server);
            self.quietly(sim, &server, Fate::Restart);
            self.log(t, &format!("restart {server}"));
        }
        let rejoined: Vec<String> = self
            .isolated
            .iter()
            .filter(|(_, at)| **at <= t)
            .map(|(s, _)| s.clone())
            .collect();
        for server in rejoined {
            self.isolated.remove(&server);
            self.rejoin_peers(sim, &server);
            self.log(t, &format!("rejoin {server} its peers"));
        }
        let (now, later): (Vec<_>, Vec<_>) = self.rejoin.drain(..).partition(|(at, _)| *at <= t);
        self.rejoin = later;
        for (_, client) in now {
            self.repair(sim, &client, "balancer");
            self.log(t, &format!("repair {client} balancer"));
        }
    }

    /// Cuts `server` off from every other server (the balancer and the
    /// devices still reach it).
    fn isolate(&mut self, sim: &turmoil::Sim<'_>, server: &str) {
        for other in self.peers_of(server) {
            self.partition(sim, server, &other);
        }
        self.counts.isolations += 1;
    }

    fn rejoin_peers(&mut self, sim: &turmoil::Sim<'_>, server: &str) {
        for other in self.peers_of(server) {
            self.repair(sim, server, &other);
        }
    }

    /// Every server but `server`.
    fn peers_of(&self, server: &str) -> Vec<String> {
        self.servers
            .iter()
            .filter(|s| *s != server)
            .cloned()
            .collect()
    }

    /// Starts the race: its first server is cut off from the others until
    /// both edits are done (or the heal).
    fn start_race(&mut self, sim: &turmoil::Sim<'_>, t: Duration) -> (usize, usize) {
        let n = self.servers.len();
        let cut = self.rng.random_range(0..n);
        let other = (cut + self.rng.random_range(1..n)) % n;
        let (a, b) = (self.servers[cut].clone(), self.servers[other].clone());
        // A random isolation under way ends now: its timed end would also
        // reconnect the race's server.
        for server in std::mem::take(&mut self.isolated).into_keys() {
            self.rejoin_peers(sim, &server);
        }
        self.isolate(sim, &a);
        self.log(t, &format!("race: isolate {a}, edit through {a} and {b}"));
        self.race = Some((a, b));
        self.racing = true;
        (cut, other)
    }

    /// Ends the race's isolation once both edits are done.
    fn end_race(&mut self, sim: &turmoil::Sim<'_>, t: Duration) {
        if let Some((a, _)) = self.race.clone()
            && self.racing
        {
            self.racing = false;
            self.rejoin_peers(sim, &a);
            self.log(t, &format!("race over: rejoin {a} its peers"));
        }
    }

    /// Wipes a server — crash, data directory deleted, restart later — only
    /// while every server is up and ready: a wiped node is ready again only
    /// once it has caught up with every peer, so at most one node at a time
    /// lacks what it held (`nodes − write_quorum` with three nodes and a
    /// quorum of two), and no acknowledged write may be lost. An isolated
    /// server is wiped first: what it acknowledged alone would die with it.
    fn wipe(&mut self, sim: &mut turmoil::Sim<'_>, t: Duration, ready: &[bool]) -> Option<String> {
        if !ready.iter().all(|&r| r) || !self.crashed.is_empty() {
            return None;
        }
        let race = self.race.clone();
        let spared = |s: &String| race.as_ref().is_some_and(|(a, b)| s == a || s == b);
        let candidates: Vec<usize> = (0..self.servers.len())
            .filter(|&i| !spared(&self.servers[i]))
            .collect();
        let i = candidates
            .iter()
            .copied()
            .find(|&i| self.isolated.contains_key(&self.servers[i]))
            .or_else(|| {
                (!candidates.is_empty())
                    .then(|| candidates[self.rng.random_range(0..candidates.len())])
            })?;
        let server = self.servers[i].clone();
        self.quietly(sim, &server, Fate::Crash);
        if let Err(e) = std::fs::remove_dir_all(&self.data[i]) {
            self.log(t, &format!("wiping {server} failed: {e}"));
        }
        let back = t + Duration::from_millis(self.rng.random_range(500..4000));
        self.crashed.insert(server.clone(), back);
        self.counts.wipes += 1;
        Some(format!("wipe {server}"))
    }

    fn inject(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        t: Duration,
        uploading: &BTreeSet<String>,
        ready: &[bool],
    ) {
        if self.sabotage == Some(Sabotage::NoClientTimeouts) && self.counts.total() == 0 {
            // Black-hole the first client: with no deadlines it waits forever.
            self.hold(sim, "client-1", "balancer");
            self.counts.client_partitions += 1;
            self.log(t, "hold client-1 balancer");
        }
        // A multi-chunk upload in flight: cut its client off now and then.
        if let Some(client) = uploading.iter().next()
            && self.rng.random_bool(0.5)
        {
            self.partition(sim, client, "balancer");
            self.rejoin.push((
                t + Duration::from_millis(self.rng.random_range(200..1500)),
                client.clone(),
            ));
            self.counts.upload_drops += 1;
            self.log(t, &format!("drop {client} mid-upload"));
            return;
        }
        let server = self.servers[self.rng.random_range(0..self.servers.len())].clone();
        let line = match self.rng.random_range(0..10u32) {
            0 => {
                self.partition(sim, "balancer", &server);
                self.counts.backend_partitions += 1;
                format!("partition balancer {server}")
            }
            1 => {
                self.hold(sim, "balancer", &server);
                self.counts.backend_holds += 1;
                format!("hold balancer {server}")
            }
            2 => {
                // The black-holed client of the hang sabotage stays
                // black-holed: a partition would fail its operation.
                let open = if self.sabotage == Some(Sabotage::NoClientTimeouts) {
                    &self.clients[1..]
                } else {
                    &self.clients[..]
                };
                let client = open[self.rng.random_range(0..open.len())].clone();
                self.partition(sim, &client, "balancer");
                self.counts.client_partitions += 1;
                format!("partition {client} balancer")
            }
            3 if !self.crashed.contains_key(&server) => {
                self.quietly(sim, &server, Fate::Crash);
                let back = t + Duration::from_millis(self.rng.random_range(500..4000));
                self.crashed.insert(server.clone(), back);
                self.counts.crashes += 1;
                format!("crash {server}")
            }
            4 => {
                let (a, b) = if self.rng.random_bool(0.5) {
                    let client = &self.clients[self.rng.random_range(0..self.clients.len())];
                    (client.clone(), "balancer".to_owned())
                } else {
                    ("balancer".to_owned(), server.clone())
                };
                let spike = Duration::from_millis(self.rng.random_range(200..1500));
                sim.set_link_latency(a.as_str(), b.as_str(), spike);
                self.spiked.push((a.clone(), b.clone()));
                self.counts.latency_spikes += 1;
                format!("latency {a} {b} {spike:?}")
            }
            5 => {
                self.quietly(sim, "balancer", Fate::Restart);
                self.counts.balancer_restarts += 1;
                "restart balancer".to_owned()
            }
            6 if !self.racing && !self.isolated.contains_key(&server) => {
                self.isolate(sim, &server);
                let back = t + Duration::from_millis(self.rng.random_range(500..3000));
                self.isolated.insert(server.clone(), back);
                format!("isolate {server} from its peers")
            }
            7 => match self.wipe(sim, t, ready) {
                Some(line) => line,
                None => self.repair_some(sim, &server),
            },
            _ => self.repair_some(sim, &server),
        };
        self.log(t, &line);
    }

    /// Faults also come and go before the heal.
    fn repair_some(&mut self, sim: &turmoil::Sim<'_>, server: &str) -> String {
        self.repair(sim, "balancer", server);
        if let Some((a, b)) = self.spiked.pop() {
            unspike(sim, &a, &b);
        }
        format!("repair balancer {server}")
    }

    /// Undoes every fault.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>) {
        let broken: Vec<(String, String)> = self.links.keys().cloned().collect();
        for (a, b) in broken {
            self.repair(sim, &a, &b);
        }
        for (a, b) in self.spiked.drain(..) {
            unspike(sim, &a, &b);
        }
        for server in std::mem::take(&mut self.crashed).into_keys() {
            self.quietly(sim, &server, Fate::Restart);
        }
        self.rejoin.clear();
        self.isolated.clear();
        self.racing = false;
    }
}

fn unspike(sim: &turmoil::Sim<'_>, a: &str, b: &str) {
    sim.set_link_latency(a, b, MIN_LATENCY);
    sim.set_link_max_message_latency(a, b, MAX_LATENCY);
}

/// Invariant 3, first half: a backend down for longer than the detection
/// bound is handed no new connection. Each down backend's failed-connect
/// count is snapshotted once the bound has passed (counted from the later of
/// its going down and the balancer's start); any growth after is a violation.
struct Detection {
    bound: Duration,
    since: Vec<Option<Duration>>,
    snapshot: Vec<Option<u64>>,
    violations: Vec<String>,
}

impl Detection {
    fn new(servers: usize, bound: Duration) -> Detection {
        Detection {
            bound,
            since: vec![None; servers],
            snapshot: vec![None; servers],
            violations: Vec::new(),
        }
    }

    fn observe(
        &mut self,
        t: Duration,
        balancer_started: Duration,
        down: &[bool],
        stats: impl FnOnce() -> Vec<coffer_balancer::BackendStats>,
    ) {
        // Read the balancer's counters only when a bound has passed.
        let mut stats = Some(stats);
        let mut read: Vec<coffer_balancer::BackendStats> = Vec::new();
        for (i, &down) in down.iter().enumerate() {
            if !down {
                self.since[i] = None;
                self.snapshot[i] = None;
                continue;
            }
            let since = *self.since[i].get_or_insert(t);
            if t < since.max(balancer_started) + self.bound {
                self.snapshot[i] = None;
                continue;
            }
            if let Some(stats) = stats.take() {
                read = stats();
            }
            let failures = read[i].failures;
            match self.snapshot[i] {
                None => self.snapshot[i] = Some(failures),
                Some(before) if failures > before => {
                    self.violations.push(format!(
                        "the balancer handed server-{} a new connection at {t:?}, down since {since:?} (bound {:?})",
                        i + 1,
                        self.bound
                    ));
                    self.snapshot[i] = Some(failures);
                }
                Some(_) => {}
            }
        }
    }
}

/// A seed from `TURMOIL_SEED`, or the system clock when unset (printed, so any
/// run can be replayed).
pub fn seed_from_env() -> u64 {
    std::env::var("TURMOIL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        })
}
