//! The [`Cluster`] trait — what the suite does to a deployment, whatever runs
//! it — and its processes implementation on 127.0.0.x, with a [`FaultProxy`]
//! on every link: clients → balancer, balancer → each server, and each
//! server → each of its peers.
//!
//! A cluster of several servers is a replicated one unless its [`Spec`] says
//! otherwise: every node has a peer certificate naming its node id, follows
//! every other (`--peer`), shares the CA, the cluster secret and the admin
//! account's name, and acknowledges a write once `write_quorum` nodes hold
//! it (or answers `unavailable` after `quorum_timeout`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_certs::{Ca, Kind, Validity};
use coffer_client::{Client, ClientError, ClientTimeouts, Endpoint};
use coffer_net::TokioNet;
use coffer_proto::response::Pong;
use rustls_pki_types::ServerName;

use crate::process::{Process, ProcessError, bin_dir};
use crate::proxy::{Fault, FaultProxy};
use crate::scenario::{Failure, backend_state, poll};

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

/// The account every server of the suite's clusters makes admin (`admin` in
/// their configuration): in a cluster each node would otherwise make its own
/// first account admin.
pub const ADMIN: &str = "cf-admin";

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
    /// Whether the servers follow each other (`--peer` for every other node).
    pub peered: bool,
    /// Nodes that must hold a write before it is acknowledged (`--write-quorum`);
    /// `None`: the server's default (2 with peers, else 1).
    pub write_quorum: Option<usize>,
    /// How long a write waits for its quorum before it is answered
    /// `unavailable` — short, so that scenarios that expect it stay quick.
    pub quorum_timeout: Duration,
}

impl Spec {
    /// `servers` servers behind a round-robin balancer, default configuration
    /// but for bcrypt at its cheapest cost (the suite logs in a lot) and a
    /// quorum timeout of 2 s; several servers replicate to each other.
    pub fn new(servers: usize) -> Spec {
        Spec {
            servers,
            strategy: "round-robin".into(),
            server_toml: String::new(),
            balancer_args: Vec::new(),
            secret: None,
            peered: true,
            write_quorum: None,
            quorum_timeout: Duration::from_secs(2),
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

    /// The same with servers that do not follow each other: strangers that
    /// share a CA and a secret.
    pub fn unpeered(mut self) -> Spec {
        self.peered = false;
        self
    }

    /// The same with another write quorum.
    pub fn write_quorum(mut self, nodes: usize) -> Spec {
        self.write_quorum = Some(nodes);
        self
    }

    /// Whether its servers make a replicated cluster.
    pub fn replicated(&self) -> bool {
        self.peered && self.servers > 1
    }
}

/// The node id of server `i`.
pub fn node_id(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// What the suite does to the members of a cluster, whatever runs them.
///
/// Every implementation puts a balancer in front of `servers()` servers that
/// share one CA and one cluster secret; each serves a peer certificate
/// naming its node id, valid for `localhost` and the addresses clients use.
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
    /// Whether the servers replicate to each other (peer links).
    fn replicated(&self) -> bool;
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
    /// Between two servers that is their peer link, both directions.
    async fn partition(&mut self, a: Member, b: Member) -> Result<(), ClusterError>;
    /// Restores the link between `a` and `b`.
    async fn heal(&mut self, a: Member, b: Member) -> Result<(), ClusterError>;
}

/// A fresh CA, for each of `nodes` a peer certificate naming it (valid for
/// `localhost`, 127.0.0.1 and `ips`: wherever clients reach a node, directly
/// or through the balancer), and the cluster secret (`secret`, else 32 random
/// bytes), written into `dir` as `ca.pem`, `<node>.pem`, `<node>.key` and
/// `secret`.
pub fn pki(
    dir: &Path,
    nodes: &[String],
    ips: &[IpAddr],
    secret: Option<&[u8]>,
) -> Result<Vec<u8>, ClusterError> {
    let setup = |e: coffer_certs::CertError| ClusterError::Setup(e.to_string());
    let now = time::OffsetDateTime::now_utc();
    let ca = Ca::generate("conformance CA", Validity::days_from(now, 2)).map_err(setup)?;
    ca.write(dir, false).map_err(setup)?;
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    sans.extend(ips.iter().map(IpAddr::to_string));
    for node in nodes {
        ca.issue(Kind::Peer, node, &sans, Validity::days_from(now, 2))
            .and_then(|issued| issued.write(dir, node, false))
            .map_err(setup)?;
    }
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

/// The flags of server `node` listening on `listen` with its data in `data`,
/// its configuration, certificate, key, CA and secret in `pki` (named as
/// [`pki`] writes them, the configuration `server.toml`), following `peers`
/// (node id, the address it reaches that node at).
pub fn server_args(
    node: &str,
    listen: &str,
    data: &str,
    pki: &str,
    peers: &[(String, SocketAddr)],
    spec: &Spec,
) -> Vec<String> {
    let at = |name: &str| format!("{pki}/{name}");
    let mut args: Vec<String> = [
        ("--config", at("server.toml")),
        ("--listen", listen.to_owned()),
        ("--data", data.to_owned()),
        ("--node-id", node.to_owned()),
        ("--tls-cert", at(&format!("{node}.pem"))),
        ("--tls-key", at(&format!("{node}.key"))),
        ("--ca", at("ca.pem")),
        ("--cluster-secret-file", at("secret")),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect();
    for (id, addr) in peers {
        args.extend(["--peer".to_owned(), format!("{id}={addr}")]);
    }
    if let Some(quorum) = spec.write_quorum {
        args.extend(["--write-quorum".to_owned(), quorum.to_string()]);
    }
    args
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
    format!(
        "bcrypt_cost = 4\nadmin = \"{ADMIN}\"\nquorum_timeout = \"{}ms\"\n{}",
        spec.quorum_timeout.as_millis(),
        spec.server_toml
    )
}

/// Servers as processes: server `i` on 127.0.0.(i+2) at a fixed port (a
/// restart comes back where a balancer and its peers expect it), each with a
/// data directory of its own and a peer certificate from one CA, all with one
/// cluster secret. In a replicated cluster node `i` reaches node `j` through a
/// [`FaultProxy`] of its own, so that each peer link can be cut alone.
#[derive(Debug)]
pub struct Servers {
    /// The running servers, in order.
    pub procs: Vec<Process>,
    /// The proxy node `i` reaches node `j` through, at `(i, j)`.
    peer_links: BTreeMap<(usize, usize), FaultProxy>,
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
    /// Starts `n` servers that do not follow each other, with the default
    /// configuration (what the balancer's own tests want: independent
    /// backends).
    pub fn start(n: usize) -> Result<Servers, ClusterError> {
        Self::start_spec(&Spec::new(n).unpeered(), None)
    }

    /// Starts the servers of `spec`; a replicated cluster's peer-link proxies
    /// run on `proxies`.
    pub fn start_spec(
        spec: &Spec,
        proxies: Option<&tokio::runtime::Handle>,
    ) -> Result<Servers, ClusterError> {
        let setup = |e: std::io::Error| ClusterError::Setup(e.to_string());
        let bins = bin_dir()?;
        let dir = tempfile::tempdir().map_err(setup)?;
        let ips: Vec<IpAddr> = (0..spec.servers)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
            .collect();
        let nodes: Vec<String> = (0..spec.servers).map(node_id).collect();
        let secret = pki(dir.path(), &nodes, &ips, spec.secret.as_deref())?;
        std::fs::write(dir.path().join("server.toml"), server_toml(spec)).map_err(setup)?;
        let mut addrs = Vec::new();
        for ip in &ips {
            addrs.push(SocketAddr::new(*ip, free_port(*ip)?));
        }
        let mut peer_links = BTreeMap::new();
        if spec.replicated() {
            let runtime = proxies.ok_or_else(|| {
                ClusterError::Setup("a replicated cluster's peer links need proxies".into())
            })?;
            for i in 0..spec.servers {
                for j in (0..spec.servers).filter(|&j| j != i) {
                    let listen = SocketAddr::new(ips[j], 0);
                    let proxy = FaultProxy::start(runtime, listen, addrs[j]).map_err(setup)?;
                    peer_links.insert((i, j), proxy);
                }
            }
        }
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut procs = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let peers: Vec<(String, SocketAddr)> = peer_links
                .iter()
                .filter(|((from, _), _)| *from == i)
                .map(|((_, to), proxy)| (nodes[*to].clone(), proxy.addr()))
                .collect();
            let args = server_args(
                node,
                &addrs[i].to_string(),
                &path(node),
                &dir.path().display().to_string(),
                &peers,
                spec,
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
            peer_links,
            ca: dir.path().join("ca.pem"),
            secret,
            dir,
        })
    }

    /// The servers' addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.procs.iter().map(Process::addr).collect()
    }

    /// The CA that signed their certificates.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// A directory for files of the caller's (removed with the servers).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A runtime of the proxies' own, shut down in the background when dropped
/// (it is dropped from inside the test's runtime, where blocking on its
/// shutdown is not allowed).
#[derive(Debug)]
struct ProxyRuntime(Option<tokio::runtime::Runtime>);

impl ProxyRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The processes implementation: [`Servers`], a balancer on 127.0.0.1, and a
/// [`FaultProxy`] on every link — clients → balancer, balancer → each server,
/// server → server.
#[derive(Debug)]
pub struct Processes {
    servers: Servers,
    balancer: Process,
    admin: SocketAddr,
    front: FaultProxy,
    backends: Vec<FaultProxy>,
    // The proxies' tasks run here, apart from the test's own threads; held
    // for them, never read. Last, so that it goes after every proxy on it.
    _runtime: ProxyRuntime,
}

impl Processes {
    /// Starts the servers of `spec`, a proxy in front of each, a balancer
    /// (health checks verified against the CA every 500 ms) over the proxies,
    /// and a proxy in front of the balancer for the clients; then waits until
    /// the cluster has settled (see [`settle`]).
    pub async fn start(spec: &Spec) -> Result<Processes, ClusterError> {
        let setup = |e: std::io::Error| ClusterError::Setup(e.to_string());
        let runtime = ProxyRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("fault-proxy")
                .enable_all()
                .build()
                .map_err(setup)?,
        ));
        let servers =
            tokio::task::block_in_place(|| Servers::start_spec(spec, Some(runtime.handle())))?;
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
        let balancer = tokio::task::block_in_place(|| {
            Process::start_with(&bin_dir()?.join("coffer-balancer"), args, &[], Some(&log))
        })?;
        let front = FaultProxy::start(
            runtime.handle(),
            SocketAddr::new(loopback, 0),
            balancer.addr(),
        )
        .map_err(setup)?;
        let cluster = Processes {
            servers,
            balancer,
            admin,
            front,
            backends,
            _runtime: runtime,
        };
        settle(&cluster, SETTLE)
            .await
            .map_err(ClusterError::Setup)?;
        Ok(cluster)
    }

    /// The proxies on the link between `a` and `b` (two between servers, one
    /// each way).
    fn link(&self, a: Member, b: Member) -> Result<Vec<&FaultProxy>, ClusterError> {
        let no_link = |a, b| ClusterError::Unsupported(format!("no link between {a} and {b}"));
        match (a.min(b), a.max(b)) {
            (Member::Clients, Member::Balancer) => Ok(vec![&self.front]),
            (Member::Balancer, Member::Server(i)) if i < self.backends.len() => {
                Ok(vec![&self.backends[i]])
            }
            (Member::Server(i), Member::Server(j)) => {
                let links = &self.servers.peer_links;
                match (links.get(&(i, j)), links.get(&(j, i))) {
                    (Some(there), Some(back)) => Ok(vec![there, back]),
                    _ => Err(no_link(a, b)),
                }
            }
            (a, b) => Err(no_link(a, b)),
        }
    }

    /// Sets the fault on the link between `a` and `b` (any of the proxy's
    /// faults, not only a partition).
    pub fn set_link(&self, a: Member, b: Member, fault: Fault) -> Result<(), ClusterError> {
        for proxy in self.link(a, b)? {
            proxy.set(fault);
        }
        Ok(())
    }

    /// Kills server `i` and starts it again as a stranger to the others: the
    /// same data, address and certificate, no `--peer`. A sabotage, for the
    /// suite's own tests: such a node reports ready at once, whatever it
    /// holds.
    pub fn restart_unpeered(&mut self, i: usize) -> Result<(), ClusterError> {
        let process = self.process(Member::Server(i))?;
        let mut args = process.args().to_vec();
        while let Some(at) = args.iter().position(|a| a == "--peer") {
            args.drain(at..at + 2);
        }
        tokio::task::block_in_place(|| process.restart_with(args))?;
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

    fn replicated(&self) -> bool {
        !self.servers.peer_links.is_empty()
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

    /// Connects to `addr`, says hello and pings: its whole answer.
    pub async fn pong(&self, addr: SocketAddr) -> Result<Pong, ClientError> {
        self.connect(addr).await?.ping().await
    }

    /// Pings `addr` until a node answers that it is ready or `deadline`
    /// passes (readiness by polling, never by sleeping a fixed time): the
    /// node that answered.
    pub async fn until_ready(
        &self,
        addr: SocketAddr,
        deadline: Duration,
    ) -> Result<String, String> {
        let what = format!("{addr} ready");
        poll(deadline, Duration::from_millis(50), &what, || async {
            let pong = self.pong(addr).await.map_err(|e| e.to_string())?;
            Ok(pong.ready.then_some(pong.node_id))
        })
        .await
    }

    /// Pings `addr` until its node is ready, linked to `peers` peers and has
    /// caught up with each of them at least once, or `deadline` passes.
    pub async fn until_linked(
        &self,
        addr: SocketAddr,
        peers: usize,
        deadline: Duration,
    ) -> Result<Pong, String> {
        let what = format!("{addr} ready and linked to {peers} peers");
        poll(deadline, Duration::from_millis(50), &what, || async {
            let pong = self.pong(addr).await.map_err(|e| e.to_string())?;
            let linked = pong.peers.values().filter(|p| p.linked && p.caught_up);
            Ok((pong.ready && linked.count() == peers).then_some(pong))
        })
        .await
    }
}

/// How long a cluster may take to settle after it starts.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Waits until every server of `cluster` is ready and (when it has peers)
/// linked to every other and caught up with each, and the balancer reports
/// every backend up, or fails after `deadline` saying which did not.
pub async fn settle(cluster: &impl Cluster, deadline: Duration) -> Result<(), Failure> {
    let probe = Probe::new(cluster.ca()).map_err(|e| e.to_string())?;
    let n = cluster.servers();
    for i in 0..n {
        let peers = if cluster.replicated() { n - 1 } else { 0 };
        probe
            .until_linked(cluster.server(i), peers, deadline)
            .await?;
    }
    for i in 0..n {
        let (admin, backend) = (cluster.admin(), cluster.backend(i));
        poll(
            deadline,
            Duration::from_millis(50),
            &format!("the balancer sees {} up", node_id(i)),
            || async move {
                let (state, _) = backend_state(admin, backend).await?;
                Ok((state == "up").then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// Waits until every server of a replicated `cluster` is linked to every
/// other and none holds a record another has not acknowledged — every node
/// holds every write — or fails after `deadline` with the laggards. Each
/// node's view is `coffer_proto::response::Pong::peers`, what `coffer ping
/// --json` prints.
pub async fn converged(cluster: &impl Cluster, deadline: Duration) -> Result<(), Failure> {
    let probe = Probe::new(cluster.ca()).map_err(|e| e.to_string())?;
    let n = cluster.servers();
    poll(
        deadline,
        Duration::from_millis(100),
        "every node holding every write",
        || {
            let probe = probe.clone();
            async move {
                let mut behind = Vec::new();
                for i in 0..n {
                    let pong = probe
                        .pong(cluster.server(i))
                        .await
                        .map_err(|e| format!("{}: {e}", node_id(i)))?;
                    if !pong.ready {
                        behind.push(format!("{} not ready", node_id(i)));
                    }
                    for (peer, lag) in &pong.peers {
                        if !lag.linked || !lag.caught_up || lag.behind_records > 0 {
                            behind.push(format!("{} → {peer}: {lag:?}", node_id(i)));
                        }
                    }
                    if pong.peers.len() + 1 != n {
                        behind.push(format!("{} knows {} peers", node_id(i), pong.peers.len()));
                    }
                }
                if behind.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(behind.join("; "))
                }
            }
        },
    )
    .await
}
