//! The containers implementation of [`Cluster`]: the images of
//! `deploy/build-images.sh` (`FROM scratch`, statically linked binaries) run
//! through testcontainers, one container per server and one for the
//! balancer, on a private Docker network of the suite's own.
//!
//! Faults are the engine's: SIGKILL, stop, pause/unpause, and network
//! disconnect/connect for partitions. On one shared network, partitioning a
//! member from another disconnects the member that is not the balancer (or,
//! between the clients and the balancer, the balancer): it is cut off from
//! everyone, which includes the link asked for. Every address is fixed for
//! the cluster's life; a reconnected member gets its address back.
//!
//! Where no engine is reachable, [`engine`] says why and the suite skips this
//! implementation.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use testcontainers::bollard::models::{
    EndpointIpamConfig, EndpointSettings, NetworkConnectRequest, NetworkDisconnectRequest,
};
use testcontainers::bollard::query_parameters::KillContainerOptionsBuilder;
use testcontainers::core::client::docker_client_instance;
use testcontainers::core::{AccessMode, Mount, WaitFor};
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{ContainerAsync, GenericImage, ImageExt as _};

use crate::cluster::{
    Cluster, ClusterError, Member, Spec, balancer_args, pki, server_args, server_toml,
};
use crate::scenario::poll;

const SERVER_PORT: u16 = 8000;
const FRONT_PORT: u16 = 7000;
const ADMIN_PORT: u16 = 7001;
/// Host numbers on the network: the balancer, then the servers.
const BALANCER_HOST: u8 = 10;
const FIRST_SERVER_HOST: u8 = 11;

/// Whether this implementation can run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// An engine answers and the images are built.
    Ready,
    /// No engine answers `docker info`: the implementation is skipped.
    Unreachable(String),
    /// An engine answers but the images did not build: a failure.
    ImagesFailed(String),
}

/// Checks for a Docker engine and builds the images, once per run.
pub fn engine() -> Engine {
    static STATE: OnceLock<Engine> = OnceLock::new();
    STATE
        .get_or_init(|| {
            if let Err(e) = docker(&["info", "--format", "{{.ServerVersion}}"]) {
                return Engine::Unreachable(e.to_string());
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/build-images.sh");
            match Command::new("bash").arg(&script).output() {
                Ok(out) if out.status.success() => Engine::Ready,
                Ok(out) => {
                    Engine::ImagesFailed(String::from_utf8_lossy(&out.stderr).trim().to_owned())
                }
                Err(e) => Engine::ImagesFailed(format!("running {}: {e}", script.display())),
            }
        })
        .clone()
}

fn engine_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Engine(e.to_string())
}

fn docker(args: &[&str]) -> Result<String, ClusterError> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(engine_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(ClusterError::Engine(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A private network of the suite's, removed when dropped.
#[derive(Debug)]
struct Network {
    name: String,
    prefix: [u8; 3],
}

impl Network {
    /// Creates a network on a free /24 of 10.213.0.0/16 (the CLI negotiates
    /// the engine's API version; a name is never reused).
    fn create() -> Result<Network, ClusterError> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("coffer-conformance-{}-{n}", std::process::id());
        let start = (std::process::id() as usize * 7 + n as usize * 13) % 250;
        let mut last = String::new();
        for k in 0..250 {
            let third = ((start + k) % 250 + 1) as u8;
            let subnet = format!("10.213.{third}.0/24");
            match docker(&[
                "network", "create", "--driver", "bridge", "--subnet", &subnet, &name,
            ]) {
                Ok(_) => {
                    return Ok(Network {
                        name,
                        prefix: [10, 213, third],
                    });
                }
                // Another network holds this subnet: try the next one.
                Err(e) if e.to_string().contains("overlap") => last = e.to_string(),
                Err(e) => return Err(e),
            }
        }
        Err(ClusterError::Engine(format!(
            "no free subnet in 10.213.0.0/16: {last}"
        )))
    }

    fn ip(&self, host: u8) -> IpAddr {
        let [a, b, c] = self.prefix;
        IpAddr::V4(Ipv4Addr::new(a, b, c, host))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// One container and how many times it has said `listening on`.
struct Node {
    member: Member,
    container: ContainerAsync<GenericImage>,
    ip: IpAddr,
    starts: usize,
    connected: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("member", &self.member)
            .field("id", &self.container.id())
            .field("ip", &self.ip)
            .finish()
    }
}

/// The containers implementation.
#[derive(Debug)]
pub struct Containers {
    // Containers go before the network they are on.
    servers: Vec<Node>,
    balancer: Node,
    network: Network,
    secret: Vec<u8>,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl Containers {
    /// Starts the servers of `spec` and a balancer in front of them, each in a
    /// container on a fresh network, with certificates and a cluster secret
    /// made for this cluster.
    pub async fn start(spec: &Spec) -> Result<Containers, ClusterError> {
        match engine() {
            Engine::Ready => {}
            Engine::Unreachable(why) | Engine::ImagesFailed(why) => {
                return Err(ClusterError::Setup(why));
            }
        }
        let setup = |e: std::io::Error| ClusterError::Setup(e.to_string());
        let dir = tempfile::tempdir().map_err(setup)?;
        let network = Network::create()?;
        let ips: Vec<IpAddr> = (0..spec.servers)
            .map(|i| network.ip(FIRST_SERVER_HOST + i as u8))
            .chain([network.ip(BALANCER_HOST)])
            .collect();
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(setup)?;
        let secret = pki(&pki_dir, &ips, spec.secret.as_deref())?;
        std::fs::write(pki_dir.join("server.toml"), server_toml(spec)).map_err(setup)?;
        let pki_mount = || {
            Mount::bind_mount(pki_dir.display().to_string(), "/pki")
                .with_access_mode(AccessMode::ReadOnly)
        };

        let mut servers = Vec::new();
        for (i, ip) in ips.iter().take(spec.servers).enumerate() {
            let data = dir.path().join(format!("node-{}", i + 1));
            std::fs::create_dir_all(&data).map_err(setup)?;
            let node = format!("node-{}", i + 1);
            let args = server_args(&node, &format!("0.0.0.0:{SERVER_PORT}"), "/data", "/pki");
            let image = GenericImage::new("coffer-server", "local")
                .with_wait_for(WaitFor::message_on_stdout("listening on"))
                .with_cmd(args)
                .with_network(network.name.clone())
                .with_mount(pki_mount())
                .with_mount(Mount::bind_mount(data.display().to_string(), "/data"))
                .with_startup_timeout(Duration::from_secs(30));
            let member = Member::Server(i);
            servers.push(Node::start(member, image, &network, *ip).await?);
        }

        let backends: Vec<SocketAddr> = servers
            .iter()
            .map(|s| SocketAddr::new(s.ip, SERVER_PORT))
            .collect();
        let args = balancer_args(
            spec,
            &format!("0.0.0.0:{FRONT_PORT}"),
            &format!("0.0.0.0:{ADMIN_PORT}"),
            "/pki/ca.pem",
            &backends,
        );
        let image = GenericImage::new("coffer-balancer", "local")
            .with_wait_for(WaitFor::message_on_stdout("listening on"))
            .with_cmd(args)
            .with_network(network.name.clone())
            .with_mount(pki_mount())
            .with_startup_timeout(Duration::from_secs(30));
        let balancer =
            Node::start(Member::Balancer, image, &network, network.ip(BALANCER_HOST)).await?;
        Ok(Containers {
            servers,
            balancer,
            network,
            secret,
            ca: pki_dir.join("ca.pem"),
            dir,
        })
    }

    fn node(&mut self, member: Member) -> Result<&mut Node, ClusterError> {
        match member {
            Member::Balancer => Ok(&mut self.balancer),
            Member::Server(i) if i < self.servers.len() => Ok(&mut self.servers[i]),
            other => Err(ClusterError::Unsupported(format!(
                "{other} is not a container of this cluster"
            ))),
        }
    }

    /// The member a partition between `a` and `b` disconnects.
    fn cut(a: Member, b: Member) -> Result<Member, ClusterError> {
        match (a.min(b), a.max(b)) {
            (Member::Clients, Member::Balancer) => Ok(Member::Balancer),
            (Member::Clients | Member::Balancer, Member::Server(i)) => Ok(Member::Server(i)),
            (a, b) => Err(ClusterError::Unsupported(format!(
                "no link between {a} and {b}"
            ))),
        }
    }
}

impl Node {
    /// Starts `image` on `network` and moves it to its fixed address `ip`.
    async fn start(
        member: Member,
        image: testcontainers::ContainerRequest<GenericImage>,
        network: &Network,
        ip: IpAddr,
    ) -> Result<Node, ClusterError> {
        let container = image.start().await.map_err(engine_err)?;
        let mut node = Node {
            member,
            container,
            ip,
            starts: 1,
            connected: true,
        };
        // The engine gave it the next free address; give it its own (the
        // process listens on 0.0.0.0, so it serves there at once).
        node.disconnect(&network.name).await?;
        node.connect(&network.name).await?;
        Ok(node)
    }

    async fn disconnect(&mut self, network: &str) -> Result<(), ClusterError> {
        let docker = docker_client_instance().await.map_err(engine_err)?;
        docker
            .disconnect_network(
                network,
                NetworkDisconnectRequest {
                    container: self.container.id().to_owned(),
                    force: Some(true),
                },
            )
            .await
            .map_err(engine_err)?;
        self.connected = false;
        Ok(())
    }

    async fn connect(&mut self, network: &str) -> Result<(), ClusterError> {
        let docker = docker_client_instance().await.map_err(engine_err)?;
        let endpoint = EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(self.ip.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        docker
            .connect_network(
                network,
                NetworkConnectRequest {
                    container: self.container.id().to_owned(),
                    endpoint_config: Some(endpoint),
                },
            )
            .await
            .map_err(engine_err)?;
        self.connected = true;
        Ok(())
    }

    /// Waits until the container has said `listening on` `self.starts` times
    /// (its log keeps the lines of earlier runs).
    async fn until_listening(&self) -> Result<(), ClusterError> {
        let what = format!("{} says `listening on`", self.member);
        poll(
            Duration::from_secs(30),
            Duration::from_millis(50),
            &what,
            || async {
                let out = self
                    .container
                    .stdout_to_vec()
                    .await
                    .map_err(|e| e.to_string())?;
                let said = String::from_utf8_lossy(&out)
                    .matches("listening on")
                    .count();
                Ok((said >= self.starts).then_some(()))
            },
        )
        .await
        .map_err(ClusterError::Engine)
    }
}

impl Cluster for Containers {
    fn kind(&self) -> &'static str {
        "containers"
    }

    fn front(&self) -> SocketAddr {
        SocketAddr::new(self.balancer.ip, FRONT_PORT)
    }

    fn server(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.servers[i].ip, SERVER_PORT)
    }

    fn servers(&self) -> usize {
        self.servers.len()
    }

    fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.balancer.ip, ADMIN_PORT)
    }

    fn backend(&self, i: usize) -> SocketAddr {
        self.server(i)
    }

    fn ca(&self) -> &Path {
        &self.ca
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{}", i + 1))
    }

    fn secret(&self) -> &[u8] {
        &self.secret
    }

    async fn kill(&mut self, member: Member) -> Result<(), ClusterError> {
        let node = self.node(member)?;
        let docker = docker_client_instance().await.map_err(engine_err)?;
        docker
            .kill_container(
                node.container.id(),
                Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
            )
            .await
            .map_err(engine_err)?;
        Ok(())
    }

    async fn stop(&mut self, member: Member) -> Result<(), ClusterError> {
        let node = self.node(member)?;
        node.container
            .stop_with_timeout(Some(30))
            .await
            .map_err(engine_err)?;
        let code = node.container.exit_code().await.map_err(engine_err)?;
        match code {
            Some(0) => Ok(()),
            other => Err(ClusterError::ExitStatus {
                member,
                status: format!("{other:?}"),
            }),
        }
    }

    async fn start(&mut self, member: Member) -> Result<(), ClusterError> {
        let node = self.node(member)?;
        node.container.start().await.map_err(engine_err)?;
        node.starts += 1;
        node.until_listening().await
    }

    async fn pause(&mut self, member: Member) -> Result<(), ClusterError> {
        self.node(member)?
            .container
            .pause()
            .await
            .map_err(engine_err)?;
        Ok(())
    }

    async fn resume(&mut self, member: Member) -> Result<(), ClusterError> {
        self.node(member)?
            .container
            .unpause()
            .await
            .map_err(engine_err)?;
        Ok(())
    }

    async fn partition(&mut self, a: Member, b: Member) -> Result<(), ClusterError> {
        let cut = Self::cut(a, b)?;
        let network = self.network.name.clone();
        let node = self.node(cut)?;
        if node.connected {
            node.disconnect(&network).await?;
        }
        Ok(())
    }

    async fn heal(&mut self, a: Member, b: Member) -> Result<(), ClusterError> {
        let cut = Self::cut(a, b)?;
        let network = self.network.name.clone();
        let node = self.node(cut)?;
        if !node.connected {
            node.connect(&network).await?;
        }
        Ok(())
    }
}
