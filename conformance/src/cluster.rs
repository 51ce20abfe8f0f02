//! A cluster of real processes on 127.0.0.x: servers with certificates from one
//! CA, and a balancer in front of them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use coffer_certs::{Ca, Kind, Validity};
use coffer_client::{Client, ClientError, ClientTimeouts, Endpoint};
use coffer_net::TokioNet;
use rustls_pki_types::ServerName;

use crate::process::{Process, ProcessError, bin_dir};

/// What the suite does to the members of a cluster, whatever runs them.
pub trait Cluster {
    /// The address clients use (the balancer).
    fn front(&self) -> SocketAddr;
    /// The address of server `i`.
    fn server(&self, i: usize) -> SocketAddr;
    /// How many servers there are.
    fn servers(&self) -> usize;
    /// Kills server `i` at once (SIGKILL).
    fn kill(&mut self, i: usize);
    /// Freezes server `i` (SIGSTOP): it keeps its sockets and answers nothing.
    fn pause(&mut self, i: usize) -> Result<(), ProcessError>;
    /// Thaws server `i`.
    fn resume(&mut self, i: usize) -> Result<(), ProcessError>;
    /// Starts server `i` again on its data directory and address.
    fn restart(&mut self, i: usize) -> Result<(), ProcessError>;
    /// Stops server `i` gracefully (SIGTERM); its exit status.
    fn stop(&mut self, i: usize) -> Result<ExitStatus, ProcessError>;
    /// The CA clients trust.
    fn ca(&self) -> &Path;
}

/// Servers as processes: server `i` on 127.0.0.(i+2) at a fixed port (a
/// restart comes back where a balancer expects it), each with a data
/// directory of its own, all with one certificate (SANs: `localhost` and
/// every server's IP) from one CA.
#[derive(Debug)]
pub struct Servers {
    /// The running servers, in order.
    pub procs: Vec<Process>,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

/// The processes implementation: [`Servers`] and a balancer on 127.0.0.1.
#[derive(Debug)]
pub struct Processes {
    servers: Servers,
    balancer: Process,
}

/// A port free on `ip` right now.
pub fn free_port(ip: IpAddr) -> Result<u16, ProcessError> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ProcessError::Build(format!("no free port on {ip}: {e}")))
}

impl Servers {
    /// Starts `n` servers.
    pub fn start(n: usize) -> Result<Servers, ProcessError> {
        let bins = bin_dir()?;
        let dir = tempfile::tempdir().map_err(|e| ProcessError::Build(e.to_string()))?;
        let path = |name: &str| dir.path().join(name).display().to_string();
        let pki = |e: coffer_certs::CertError| ProcessError::Build(e.to_string());
        let now = time::OffsetDateTime::now_utc();
        let ca = Ca::generate("conformance CA", Validity::days_from(now, 2)).map_err(pki)?;
        ca.write(dir.path(), false).map_err(pki)?;
        let ips: Vec<IpAddr> = (0..n)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
            .collect();
        let mut sans = vec!["localhost".to_owned()];
        sans.extend(ips.iter().map(|ip| ip.to_string()));
        ca.issue(
            Kind::Server,
            "localhost",
            &sans,
            Validity::days_from(now, 2),
        )
        .and_then(|issued| issued.write(dir.path(), "server", false))
        .map_err(pki)?;
        let mut procs = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let node = format!("node-{}", i + 1);
            let args = vec![
                "--listen".to_owned(),
                SocketAddr::new(*ip, free_port(*ip)?).to_string(),
                "--data".to_owned(),
                path(&node),
                "--node-id".to_owned(),
                node,
                "--tls-cert".to_owned(),
                path("server.pem"),
                "--tls-key".to_owned(),
                path("server.key"),
                "--ca".to_owned(),
                path("ca.pem"),
            ];
            procs.push(Process::start(&bins.join("coffer-server"), args)?);
        }
        Ok(Servers {
            procs,
            ca: dir.path().join("ca.pem"),
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

impl Processes {
    /// Starts `servers` servers and a balancer (round-robin, health checks
    /// verified against the CA) in front of them.
    pub fn start(servers: usize) -> Result<Processes, ProcessError> {
        let servers = Servers::start(servers)?;
        let bins = bin_dir()?;
        let admin = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?,
        );
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin".into(),
            admin.to_string(),
            "--connect-timeout".into(),
            "1s".into(),
            "--health-interval".into(),
            "500ms".into(),
            "--ca".into(),
            servers.ca().display().to_string(),
        ];
        for addr in servers.addrs() {
            args.extend(["--backend".to_owned(), addr.to_string()]);
        }
        let balancer = Process::start(&bins.join("coffer-balancer"), args)?;
        Ok(Processes { servers, balancer })
    }
}

impl Cluster for Processes {
    fn front(&self) -> SocketAddr {
        self.balancer.addr()
    }

    fn server(&self, i: usize) -> SocketAddr {
        self.servers.procs[i].addr()
    }

    fn servers(&self) -> usize {
        self.servers.procs.len()
    }

    fn kill(&mut self, i: usize) {
        self.servers.procs[i].kill();
    }

    fn pause(&mut self, i: usize) -> Result<(), ProcessError> {
        self.servers.procs[i].pause()
    }

    fn resume(&mut self, i: usize) -> Result<(), ProcessError> {
        self.servers.procs[i].resume()
    }

    fn restart(&mut self, i: usize) -> Result<(), ProcessError> {
        self.servers.procs[i].restart()
    }

    fn stop(&mut self, i: usize) -> Result<ExitStatus, ProcessError> {
        self.servers.procs[i].terminate()
    }

    fn ca(&self) -> &Path {
        self.servers.ca()
    }
}

/// How a client sees the cluster.
#[derive(Debug, Clone)]
pub struct Probe {
    endpoint: Endpoint,
}

impl Probe {
    /// A probe trusting `ca`, with short deadlines so that a silent server is
    /// reported quickly.
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
        let endpoint = Endpoint {
            addr,
            ..self.endpoint.clone()
        };
        let client = Client::connect(&TokioNet, &endpoint).await?;
        Ok(client.ping().await?.node_id)
    }
}
