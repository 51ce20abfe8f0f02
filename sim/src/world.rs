//! The simulated world: one balancer, N servers and M clients, driven through
//! a seeded fault schedule, with the oracle watching.
//!
//! Timeline of a run:
//! 1. **warm-up** — no faults; every client makes a few connections through the
//!    balancer; at its end the balancer's counters must show an exact
//!    round-robin spread;
//! 2. **faults** — partitions and holds (black holes) between the balancer and
//!    servers and between clients and the balancer, server crashes and
//!    restarts, chosen by the seed; clients keep working and may fail, but only
//!    with typed errors, never by hanging;
//! 3. **heal** — every fault is undone; after a settle delay every client
//!    operation must succeed again.
//!
//! The real server, balancer and client libraries run unmodified over
//! [`TurmoilNet`]; TLS is real too, its certificates checked against the
//! simulated clock.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_balancer::{BackendSpec, Balancer, Config as BalancerConfig, Verifier};
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

/// The fixed calendar time every simulation starts at: 2030-01-01T00:00:00Z.
pub const EPOCH_SECS: u64 = 1_893_456_000;

const PORT: u16 = 8000;

/// A deliberately broken system, to prove the oracle catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// One client stays cut off from the balancer after the heal.
    NeverHeal,
    /// Clients (and the balancer, which would otherwise close a client that
    /// says nothing) wait forever, and one is black-holed: its operation hangs.
    NoClientTimeouts,
}

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Servers behind the balancer.
    pub servers: usize,
    /// Simulated client devices.
    pub clients: usize,
    /// Connections each client makes during the warm-up.
    pub warmup_ops: usize,
    /// Length of the fault phase.
    pub fault_window: Duration,
    /// Delay after the heal before operations must succeed again.
    pub settle: Duration,
    /// Operations each client makes after the settle delay.
    pub final_ops: usize,
    /// Whether faults are injected at all.
    pub faults: bool,
    /// A deliberately broken system.
    pub sabotage: Option<Sabotage>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            servers: 3,
            clients: 4,
            warmup_ops: 3,
            fault_window: Duration::from_secs(20),
            settle: Duration::from_secs(5),
            final_ops: 2,
            faults: true,
            sabotage: None,
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
}

impl FaultCounts {
    /// All faults.
    pub fn total(&self) -> u32 {
        self.backend_partitions + self.backend_holds + self.client_partitions + self.crashes
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
    /// Invariant violations; empty when the run passed.
    pub violations: Vec<String>,
}

impl Report {
    /// The command that replays this run.
    pub fn replay(&self) -> String {
        format!("replay: TURMOIL_SEED={} just sim", self.seed)
    }
}

/// Certificates for the run, valid around the simulation's epoch.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> std::io::Result<Pki> {
        let dir = tempfile::tempdir()?;
        let now =
            time::OffsetDateTime::from_unix_timestamp(EPOCH_SECS as i64).expect("valid epoch");
        let validity = Validity::days_from(now, 30);
        let ca = Ca::generate("sim CA", validity).map_err(std::io::Error::other)?;
        ca.write(dir.path(), false).map_err(std::io::Error::other)?;
        ca.issue(Kind::Server, "localhost", &["localhost".into()], validity)
            .and_then(|issued| issued.write(dir.path(), "server", false))
            .map_err(std::io::Error::other)?;
        Ok(Pki { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn server_config(pki: &Pki, n: usize) -> Config {
    Config {
        listen: SocketAddr::from(([0, 0, 0, 0], PORT)),
        data: pki.path(&format!("server-{n}")),
        node_id: format!("server-{n}"),
        tls_cert: Some(pki.path("server.pem")),
        tls_key: Some(pki.path("server.key")),
        ca: Some(pki.path("ca.pem")),
        bcrypt_cost: 4,
        ..Config::default()
    }
}

type Shared<T> = Rc<RefCell<T>>;

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

fn fmt_time(t: Duration) -> String {
    format!("{:>9.3}s", t.as_secs_f64())
}

/// Runs one simulation.
pub fn run(seed: u64, options: &Options) -> Result<Report, Box<dyn std::error::Error>> {
    let pki = Rc::new(Pki::new()?);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(Duration::from_secs(600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .build();

    let clock: SharedClock = Arc::new(SimClock);
    let servers: Vec<String> = (1..=options.servers)
        .map(|n| format!("server-{n}"))
        .collect();
    for (i, name) in servers.iter().enumerate() {
        let pki = pki.clone();
        let clock = clock.clone();
        // Every start of a host draws from its own stream of the seed, so a
        // restarted server never reuses the ids it handed out before.
        let starts = Rc::new(std::cell::Cell::new(0u64));
        sim.host(name.as_str(), move || {
            let config = server_config(&pki, i + 1);
            let clock = clock.clone();
            starts.set(starts.get() + 1);
            let server_seed = seed ^ ((i as u64 + 1) << 48) ^ (starts.get() << 32);
            async move {
                let server = Arc::new(Server::with_seed(config.clone(), clock, server_seed)?);
                let listener = TurmoilNet.bind(config.listen).await?;
                server.run(listener, CancellationToken::new()).await?;
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
    let balancer_config = BalancerConfig {
        backends,
        connect_timeout: Duration::from_secs(1),
        max_attempts: 3,
        first_byte_timeout: if options.sabotage == Some(Sabotage::NoClientTimeouts) {
            Duration::from_secs(3600)
        } else {
            BalancerConfig::default().first_byte_timeout
        },
        ..BalancerConfig::default()
    };
    // Health checks verify the servers' TLS against the simulated clock.
    let verifier = Verifier::new(tls::load_roots(&pki.path("ca.pem"))?, clock.clone())?;
    let balancer = Arc::new(Balancer::new(balancer_config, Some(verifier), seed)?);
    {
        let balancer = balancer.clone();
        sim.host("balancer", move || {
            let balancer = balancer.clone();
            async move {
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

    let warmup_end = Duration::from_secs(5);
    let heal_at = warmup_end
        + if options.faults {
            options.fault_window
        } else {
            Duration::ZERO
        };
    let settled = heal_at + options.settle;
    let timeouts = if options.sabotage == Some(Sabotage::NoClientTimeouts) {
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
    let op_bound = Duration::from_secs(12);

    let ops: Shared<Vec<Op>> = Rc::default();
    let trace: Shared<Vec<String>> = Rc::default();
    let balancer_ip = sim.lookup("balancer");
    let clients: Vec<String> = (1..=options.clients)
        .map(|n| format!("client-{n}"))
        .collect();
    for name in &clients {
        let (ops, trace, name_owned) = (ops.clone(), trace.clone(), name.clone());
        let roots = tls::load_roots(&pki.path("ca.pem"))?;
        let endpoint = Endpoint {
            addr: SocketAddr::new(balancer_ip, PORT),
            name: ServerName::try_from("localhost")?,
            tls: tls::client_config(roots, None, clock.clone())?,
            ca_label: "sim CA".into(),
            timeouts,
        };
        let options = options.clone();
        sim.client(name.as_str(), async move {
            // Let servers and balancer bind first.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let op = async |after_heal: bool| {
                let start = now();
                let attempt = async {
                    let client = Client::connect(&TurmoilNet, &endpoint).await?;
                    let pong = client.ping().await?;
                    Ok::<_, coffer_client::ClientError>(pong.node_id)
                };
                let outcome =
                    match tokio::time::timeout(op_bound + Duration::from_secs(5), attempt).await {
                        Err(_) => Outcome::Hung,
                        Ok(Ok(node)) => Outcome::Ok { node },
                        Ok(Err(e)) => Outcome::Failed {
                            code: e.code().to_string(),
                        },
                    };
                let end = now();
                trace
                    .borrow_mut()
                    .push(format!("{} {name_owned} {outcome:?}", fmt_time(end)));
                ops.borrow_mut().push(Op {
                    client: name_owned.clone(),
                    start,
                    end,
                    after_heal,
                    outcome,
                });
            };
            for _ in 0..options.warmup_ops {
                op(false).await;
            }
            while now() < settled {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if now() >= warmup_end && now() < settled {
                    op(false).await;
                }
            }
            for _ in 0..options.final_ops {
                op(true).await;
            }
            Ok(())
        });
    }

    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut faults = FaultCounts::default();
    let mut spread = None;
    let mut next_fault = warmup_end;
    let mut healed = !options.faults;
    let mut crashed: Vec<String> = Vec::new();
    loop {
        let done = sim.step()?;
        let t = sim.elapsed();
        if spread.is_none() && t >= warmup_end {
            let stats = balancer.stats();
            spread = Some(WarmupSpread {
                totals: stats.iter().map(|s| s.total).collect(),
                failures: stats.iter().map(|s| s.failures).collect(),
            });
        }
        if options.faults && !healed && t >= next_fault {
            if options.sabotage == Some(Sabotage::NoClientTimeouts) && faults.total() == 0 {
                // Black-hole the first client: with no deadlines it waits forever.
                sim.hold("client-1", "balancer");
                faults.client_partitions += 1;
                trace
                    .borrow_mut()
                    .push(format!("{} fault hold client-1 balancer", fmt_time(t)));
            }
            let server = servers[rng.random_range(0..servers.len())].clone();
            let line = match rng.random_range(0..4u32) {
                0 => {
                    sim.partition("balancer", server.as_str());
                    faults.backend_partitions += 1;
                    format!("partition balancer {server}")
                }
                1 => {
                    sim.hold("balancer", server.as_str());
                    faults.backend_holds += 1;
                    format!("hold balancer {server}")
                }
                2 => {
                    // The black-holed client of the hang sabotage stays
                    // black-holed: a partition would fail its operation.
                    let open = if options.sabotage == Some(Sabotage::NoClientTimeouts) {
                        &clients[1..]
                    } else {
                        &clients[..]
                    };
                    let client = open[rng.random_range(0..open.len())].clone();
                    sim.partition(client.as_str(), "balancer");
                    faults.client_partitions += 1;
                    format!("partition {client} balancer")
                }
                _ if !crashed.contains(&server) => {
                    sim.crash(server.as_str());
                    crashed.push(server.clone());
                    faults.crashes += 1;
                    format!("crash {server}")
                }
                _ => {
                    // Already down: repair links instead, so faults also come and go.
                    sim.repair("balancer", server.as_str());
                    sim.release("balancer", server.as_str());
                    format!("repair balancer {server}")
                }
            };
            trace
                .borrow_mut()
                .push(format!("{} fault {line}", fmt_time(t)));
            next_fault = t + Duration::from_millis(rng.random_range(300..2000));
        }
        if !healed && t >= heal_at {
            healed = true;
            for server in &servers {
                sim.repair("balancer", server.as_str());
                sim.release("balancer", server.as_str());
            }
            for client in &clients {
                sim.repair(client.as_str(), "balancer");
                sim.release(client.as_str(), "balancer");
            }
            for server in crashed.drain(..) {
                sim.bounce(server.as_str());
            }
            if options.sabotage == Some(Sabotage::NeverHeal) {
                sim.partition("client-1", "balancer");
            }
            trace.borrow_mut().push(format!("{} heal", fmt_time(t)));
        }
        if done {
            break;
        }
    }

    let ops = ops.borrow().clone();
    let violations = oracle::check(&ops, op_bound, spread.as_ref());
    let mut trace = trace.borrow().clone();
    trace.push(format!("faults {faults:?}"));
    Ok(Report {
        seed,
        trace,
        ops,
        faults,
        violations,
    })
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
