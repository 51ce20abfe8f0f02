//! The [`Cluster`] trait — what the suite does to a deployment, whatever runs
//! it — and its processes implementation on 127.0.0.x, with a [`FaultProxy`]
//! on every link.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_certs::{Ca, Kind, Validity};
use coffer_client::{Client, ClientError, ClientTimeouts, Endpoint};
use coffer_net::TokioNet;
use rustls_pki_types::ServerName;

use crate::process::{Process, ProcessError, bin_dir};
use crate::proxy::{Fault, FaultProxy};
use crate::scenario::poll;

/// A member of a cluster, or the suite's clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// The users' side: every client the suite runs.
    Clients,
    /// The balancer.
    Balancer,
    /// Server `i` (0-based).
    Server(usize),
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Member::Clients => f.write_str("clients"),
            Member::Balancer => f.write_str("balancer"),
            Member::Server(i) => write!(f, "node-{}", i + 1),
        }
    }
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A process could not be started or signalled.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The container engine refused or failed.
    #[error("container engine: {0}")]
    Engine(String),
    /// Setting up (certificates, directories, images) failed.
    #[error("setting up: {0}")]
    Setup(String),
    /// The operation makes no sense for this member or link.
    #[error("{0}")]
    Unsupported(String),
    /// A graceful stop ended with a failure status.
    #[error("{member} exited with {status} on a graceful stop")]
    ExitStatus {
        /// Who.
        member: Member,
        /// Its exit status.
        status: String,
    },
}

/// What the suite asks of a deployment.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Servers behind the balancer.
    pub servers: usize,
    /// The balancer's strategy (`round-robin`, `least-connections`).
    pub strategy: String,
    /// Extra lines for every server's TOML configuration.
    pub server_toml: String,
    /// Extra flags for the balancer (later flags override earlier ones).
    pub balancer_args: Vec<String>,
    /// The cluster secret; `None`: 32 fresh random bytes.
    pub secret: Option<Vec<u8>>,
}

impl Spec {
    /// `servers` servers behind a round-robin balancer, default configuration
    /// but for bcrypt at its cheapest cost (the suite logs in a lot).
    pub fn new(servers: usize) -> Spec {
        Spec {
            servers,
            strategy: "round-robin".into(),
            server_toml: String::new(),
            balancer_args: Vec::new(),
            secret: None,
        }
    }

    /// The same with extra balancer flags.
    pub fn balancer_args(mut self, args: &[&str]) -> Spec {
        self.balancer_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The same with a chosen cluster secret.
    pub fn secret(mut self, secret: &[u8]) -> Spec {
        self.secret = Some(secret.to_vec());
        self
    }

    /// The same with another balancing strategy.
    pub fn strategy(mut self, strategy: &str) -> Spec {
        self.strategy = strategy.into();
        self
    }

    /// The same with extra server configuration.
    pub fn server_toml(mut self, toml: &str) -> Spec {
        self.server_toml.push_str(toml);
        self.server_toml.push('\n');
        self
    }
}

/// What the suite does to the members of a cluster, whatever runs them.
///
/// Every implementation puts a balancer in front of `servers()` servers that
/// share one CA, one certificate name (`localhost`) and one cluster secret.
#[allow(async_fn_in_trait)] // used generically from one test task; never boxed
pub trait Cluster {
    /// What runs the members (`processes`, `containers`).
    fn kind(&self) -> &'static str;
    /// The address clients use (the balancer, through the clients' link).
    fn front(&self) -> SocketAddr;
    /// The address the suite reaches server `i` at directly.
    fn server(&self, i: usize) -> SocketAddr;
    /// How many servers there are.
    fn servers(&self) -> usize;
    /// The balancer's admin endpoint (plain HTTP).
    fn admin(&self) -> SocketAddr;
    /// How the balancer names server `i` in `/backends` and in drain paths.
    fn backend(&self, i: usize) -> SocketAddr;
    /// The CA clients trust.
    fn ca(&self) -> &Path;
    /// Server `i`'s data directory, as the host sees it.
    fn data_dir(&self, i: usize) -> PathBuf;
    /// The cluster secret that signs session tokens.
    fn secret(&self) -> &[u8];
    /// Kills `member` at once (SIGKILL); its data stays.
    async fn kill(&mut self, member: Member) -> Result<(), ClusterError>;
    /// Stops `member` gracefully (SIGTERM); an error if it exits with a failure.
    async fn stop(&mut self, member: Member) -> Result<(), ClusterError>;
    /// Starts a killed or stopped `member` again on its data and address, and
    /// waits until it listens.
    async fn start(&mut self, member: Member) -> Result<(), ClusterError>;
    /// Kills `member` and starts it again.
    async fn restart(&mut self, member: Member) -> Result<(), ClusterError> {
        self.kill(member).await?;
        self.start(member).await
    }
    /// Freezes `member`: it keeps its sockets and answers nothing.
    async fn pause(&mut self, member: Member) -> Result<(), ClusterError>;
    /// Thaws `member`.
    async fn resume(&mut self, member: Member) -> Result<(), ClusterError>;
    /// Cuts the link between `a` and `b`: nothing crosses it either way.
    async fn partition(&mut self, a: Member, b: Member) -> Result<(), ClusterError>;
    /// Restores the link between `a` and `b`.
    async fn heal(&mut self, a: Member, b: Member) -> Result<(), ClusterError>;
}

/// A fresh CA, a server certificate for `localhost` and `ips`, and the
/// cluster secret (`secret`, else 32 random bytes), written into `dir` as
/// `ca.pem`, `server.pem`, `server.key` and `secret`.
pub fn pki(dir: &Path, ips: &[IpAddr], secret: Option<&[u8]>) -> Result<Vec<u8>, ClusterError> {
    let setup = |e: coffer_certs::CertError| ClusterError::Setup(e.to_string());
    let now = time::OffsetDateTime::now_utc();
    let ca = Ca::generate("conformance CA", Validity::days_from(now, 2)).map_err(setup)?;
    ca.write(dir, false).map_err(setup)?;
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    sans.extend(ips.iter().map(IpAddr::to_string));
    ca.issue(
        Kind::Server,
        "localhost",
        &sans,
        Validity::days_from(now, 2),
    )
    .and_then(|issued| issued.write(dir, "server", false))
    .map_err(setup)?;
    let secret: Vec<u8> = match secret {
        Some(chosen) => chosen.to_vec(),
        None => {
            use rand::Rng as _;
            let mut bytes = vec![0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            bytes
        }
    };
    std::fs::write(dir.join("secret"), &secret).map_err(|e| ClusterError::Setup(e.to_string()))?;
    Ok(secret)
}

/// The flags of server `node` listening on `listen` with its data in `data`
/// and its configuration, certificate, key, CA and secret in `pki` (named as
/// [`pki`] writes them, the configuration `server.toml`).
pub fn server_args(node: &str, listen: &str, data: &str, pki: &str) -> Vec<String> {
    let at = |name: &str| format!("{pki}/{name}");
    [
        ("--config", at("server.toml")),
        ("--listen", listen.to_owned()),
        ("--data", data.to_owned()),
        ("--node-id", node.to_owned()),
        ("--tls-cert", at("server.pem")),
        ("--tls-key", at("server.key")),
        ("--ca", at("ca.pem")),
        ("--cluster-secret-file", at("secret")),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

/// The flags of the balancer of `spec` in front of `backends` (checked as
/// `localhost`), health checks verified against `ca` every 500 ms.
pub fn balancer_args(
    spec: &Spec,
    listen: &str,
    admin: &str,
    ca: &str,
    backends: &[SocketAddr],
) -> Vec<String> {
    let mut args: Vec<String> = [
        ("--listen", listen),
        ("--admin", admin),
        ("--strategy", &spec.strategy),
        ("--connect-timeout", "1s"),
        ("--health-interval", "500ms"),
        ("--ca", ca),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value.to_owned()])
    .collect();
    for addr in backends {
        args.extend(["--backend".to_owned(), format!("localhost={addr}")]);
    }
    args.extend(spec.balancer_args.iter().cloned());
    args
}

/// The configuration file of a server in `spec`.
pub fn server_toml(spec: &Spec) -> String {
    format!("bcrypt_cost = 4\n{}", spec.server_toml)
}

/// Servers as processes: server `i` on 127.0.0.(i+2) at a fixed port (a
/// restart comes back where a balancer expects it), each with a data
/// directory of its own, all with one certificate (SANs: `localhost` and
/// every server's IP) from one CA and one cluster secret.
#[derive(Debug)]
pub struct Servers {
    /// The running servers, in order.
    pub procs: Vec<Process>,
    ca: PathBuf,
    secret: Vec<u8>,
    dir: tempfile::TempDir,
}

/// A port free on `ip` right now.
pub fn free_port(ip: IpAddr) -> Result<u16, ProcessError> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ProcessError::Build(format!("no free port on {ip}: {e}")))
}

impl Servers {
    /// Starts `n` servers with the default configuration.
    pub fn start(n: usize) -> Result<Servers, ClusterError> {
        Self::start_spec(&Spec::new(n))
    }

    /// Starts the servers of `spec`.
    pub fn start_spec(spec: &Spec) -> Result<Servers, ClusterError> {
        let bins = bin_dir()?;
        let dir = tempfile::tempdir().map_err(|e| ClusterError::Setup(e.to_string()))?;
        let ips: Vec<IpAddr> = (0..spec.servers)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
            .collect();
        let secret = pki(dir.path(), &ips, spec.secret.as_deref())?;
        let config = dir.path().join("server.toml");
        std::fs::write(&config, server_toml(spec))
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut procs = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let node = format!("node-{}", i + 1);
            let listen = SocketAddr::new(*ip, free_port(*ip)?).to_string();
            let args = server_args(
                &node,
                &listen,
                &path(&node),
                &dir.path().display().to_string(),
            );
            let log = dir.path().join(format!("{node}.log"));
            procs.push(Process::start_with(
                &bins.join("coffer-server"),
                args,
                &[],
                Some(&log),
            )?);
        }
        Ok(Servers {
            procs,
            ca: dir.path().join("ca.pem"),
            secret,
            dir,
        })
    }

    /// The servers' addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.procs.iter().map(Process::addr).collect()
    }

    /// The CA that signed their certificate.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// A directory for files of the caller's (removed with the servers).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The processes implementation: [`Servers`], a balancer on 127.0.0.1, and a
/// [`FaultProxy`] on every link — clients → balancer, balancer → each server.
#[derive(Debug)]
pub struct Processes {
    servers: Servers,
    balancer: Process,
    admin: SocketAddr,
    front: FaultProxy,
    backends: Vec<FaultProxy>,
    // The proxies' tasks run here, apart from the test's own threads; always
    // `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        // Dropped from inside the test's runtime, where blocking on the
        // proxies' shutdown is not allowed: let them go in the background.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Processes {
    /// Starts the servers of `spec`, a proxy in front of each, a balancer
    /// (health checks verified against the CA every 500 ms) over the proxies,
    /// and a proxy in front of the balancer for the clients.
    pub fn start(spec: &Spec) -> Result<Processes, ClusterError> {
        let setup = |e: std::io::Error| ClusterError::Setup(e.to_string());
        let servers = Servers::start_spec(spec)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .map_err(setup)?;
        let mut backends = Vec::new();
        for addr in servers.addrs() {
            let listen = SocketAddr::new(addr.ip(), 0);
            backends.push(FaultProxy::start(runtime.handle(), listen, addr).map_err(setup)?);
        }
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let admin = SocketAddr::new(loopback, free_port(loopback)?);
        let proxied: Vec<SocketAddr> = backends.iter().map(FaultProxy::addr).collect();
        let ca = servers.ca().display().to_string();
        let args = balancer_args(spec, "127.0.0.1:0", &admin.to_string(), &ca, &proxied);
        let log = servers.dir().join("balancer.log");
        let balancer =
            Process::start_with(&bin_dir()?.join("coffer-balancer"), args, &[], Some(&log))?;
        let front = FaultProxy::start(
            runtime.handle(),
            SocketAddr::new(loopback, 0),
            balancer.addr(),
        )
        .map_err(setup)?;
        Ok(Processes {
            servers,
            balancer,
            admin,
            front,
            backends,
            runtime: Some(runtime),
        })
    }

    /// The proxy on the link between `a` and `b`.
    fn link(&self, a: Member, b: Member) -> Result<&FaultProxy, ClusterError> {
        match (a.min(b), a.max(b)) {
            (Member::Clients, Member::Balancer) => Ok(&self.front),
            (Member::Balancer, Member::Server(i)) if i < self.backends.len() => {
                Ok(&self.backends[i])
            }
            (a, b) => Err(ClusterError::Unsupported(format!(
                "no link between {a} and {b}"
            ))),
        }
    }

    /// Sets the fault on the link between `a` and `b` (any of the proxy's
    /// faults, not only a partition).
    pub fn set_link(&self, a: Member, b: Member, fault: Fault) -> Result<(), ClusterError> {
        self.link(a, b)?.set(fault);
        Ok(())
    }

    fn process(&mut self, member: Member) -> Result<&mut Process, ClusterError> {
        match member {
            Member::Balancer => Ok(&mut self.balancer),
            Member::Server(i) if i < self.servers.procs.len() => Ok(&mut self.servers.procs[i]),
            other => Err(ClusterError::Unsupported(format!(
                "{other} is not a process of this cluster"
            ))),
        }
    }
}

impl Cluster for Processes {
    fn kind(&self) -> &'static str {
        "processes"
    }

    fn front(&self) -> SocketAddr {
        self.front.addr()
    }

    fn server(&self, i: usize) -> SocketAddr {
        self.servers.procs[i].addr()
    }

    fn servers(&self) -> usize {
        self.servers.procs.len()
    }

    fn admin(&self) -> SocketAddr {
        self.admin
    }

    fn backend(&self, i: usize) -> SocketAddr {
        self.backends[i].addr()
    }

    fn ca(&self) -> &Path {
        self.servers.ca()
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.servers.dir().join(format!("node-{}", i + 1))
    }

    fn secret(&self) -> &[u8] {
        &self.servers.secret
    }

    async fn kill(&mut self, member: Member) -> Result<(), ClusterError> {
        self.process(member)?.kill();
        Ok(())
    }

    async fn stop(&mut self, member: Member) -> Result<(), ClusterError> {
        let process = self.process(member)?;
        let status = tokio::task::block_in_place(|| process.terminate())?;
        if status.success() {
            Ok(())
        } else {
            Err(ClusterError::ExitStatus {
                member,
                status: status.to_string(),
            })
        }
    }

    async fn start(&mut self, member: Member) -> Result<(), ClusterError> {
        let process = self.process(member)?;
        tokio::task::block_in_place(|| process.restart())?;
        if member == Member::Balancer {
            // The balancer took a fresh port: the clients' link leads there now.
            self.front.retarget(self.balancer.addr());
        }
        Ok(())
    }

    async fn pause(&mut self, member: Member) -> Result<(), ClusterError> {
        self.process(member)?.pause()?;
        Ok(())
    }

    async fn resume(&mut self, member: Member) -> Result<(), ClusterError> {
        self.process(member)?.resume()?;
        Ok(())
    }

    async fn partition(&mut self, a: Member, b: Member) -> Result<(), ClusterError> {
        self.set_link(a, b, Fault::BlackHole)
    }

    async fn heal(&mut self, a: Member, b: Member) -> Result<(), ClusterError> {
        self.set_link(a, b, Fault::Pass)
    }
}

/// How a client sees the cluster: a connection with short deadlines, so that
/// a silent server is reported quickly.
#[derive(Debug, Clone)]
pub struct Probe {
    endpoint: Endpoint,
}

impl Probe {
    /// A probe trusting `ca`.
    pub fn new(ca: &Path) -> Result<Probe, coffer_net::tls::TlsConfigError> {
        let quick = Duration::from_secs(2);
        let endpoint = Endpoint::trusting(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            ServerName::try_from("localhost").expect("a valid name"),
            ca,
            ClientTimeouts {
                connect: quick,
                handshake: quick,
                request: quick,
                frame: quick,
            },
        )?;
        Ok(Probe { endpoint })
    }

    /// Connects to `addr`, says hello and pings: the node that answered.
    pub async fn ping(&self, addr: SocketAddr) -> Result<String, ClientError> {
        let client = self.connect(addr).await?;
        Ok(client.ping().await?.node_id)
    }

    /// A client connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Client, ClientError> {
        let endpoint = Endpoint {
            addr,
            ..self.endpoint.clone()
        };
        Client::connect(&TokioNet, &endpoint).await
    }

    /// Pings `addr` until it answers or `deadline` passes (readiness by
    /// polling, never by sleeping a fixed time): the node that answered.
    pub async fn until_ready(
        &self,
        addr: SocketAddr,
        deadline: Duration,
    ) -> Result<String, String> {
        let what = format!("{addr} ready");
        poll(deadline, Duration::from_millis(50), &what, || async {
            self.ping(addr).await.map(Some).map_err(|e| e.to_string())
        })
        .await
    }
}
