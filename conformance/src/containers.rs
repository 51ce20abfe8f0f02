//! The containers implementation of [`Cluster`]: the images of
//! `deploy/build-images.sh` (`FROM scratch`, statically linked binaries) run
//! through testcontainers, one container per server and one for the
//! balancer, on private Docker networks of the suite's own.
//!
//! Networks: the *front* network holds the balancer and every server (the
//! host reaches both on it, as the clients); in a replicated cluster each
//! pair of servers also shares a network of its own, and each node reaches
//! that peer only there (`--peer node-j=<j's address on their network>`).
//!
//! Faults are the engine's: SIGKILL, stop, pause/unpause, and network
//! disconnect/connect for partitions. Between two servers a partition
//! disconnects the lower-numbered one from their pair's network: exactly that
//! peer link is cut, both ways. Between the clients or the balancer and a
//! server it disconnects the server from the front network (its peer links
//! stay); between the clients and the balancer, the balancer. Every address
//! is fixed for the cluster's life; a reconnected member gets its address
//! back.
//!
//! Servers run as the host's user and group, so that their data directories
//! (bind-mounted) stay the suite's to read and wipe.
//!
//! Where no engine is reachable, [`engine`] says why and the suite skips this
//! implementation.

use std::collections::BTreeMap;
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
    Cluster, ClusterError, Member, SETTLE, Spec, balancer_args, node_id, pki, server_args,
    server_toml, settle,
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

    /// Host `host` of this network, to be connected.
    fn attach(&self, host: u8) -> Attachment {
        Attachment {
            network: self.name.clone(),
            ip: self.ip(host),
            connected: false,
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A network a container is on, its fixed address there, and whether it is
/// connected now.
#[derive(Debug, Clone)]
struct Attachment {
    network: String,
    ip: IpAddr,
    connected: bool,
}

/// One container, the networks it is on (the front network first) and how
/// many times it has said `listening on`.
struct Node {
    member: Member,
    container: ContainerAsync<GenericImage>,
    attached: Vec<Attachment>,
    starts: usize,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("member", &self.member)
            .field("id", &self.container.id())
            .field("attached", &self.attached)
            .finish()
    }
}

/// The containers implementation.
#[derive(Debug)]
pub struct Containers {
    // Containers go before the networks they are on.
    servers: Vec<Node>,
    balancer: Node,
    /// The network of each pair of servers `(i, j)`, `i < j`.
    links: BTreeMap<(usize, usize), Network>,
    network: Network,
    secret: Vec<u8>,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl Containers {
    /// Starts the servers of `spec` and a balancer in front of them, each in a
    /// container on fresh networks, with certificates and a cluster secret
    /// made for this cluster; then waits until the cluster has settled (see
    /// [`settle`]).
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
        let host = |i: usize| FIRST_SERVER_HOST + i as u8;
        let mut links = BTreeMap::new();
        if spec.replicated() {
            for i in 0..spec.servers {
                for j in i + 1..spec.servers {
                    links.insert((i, j), Network::create()?);
                }
            }
        }
        let link = |i: usize, j: usize| &links[&(i.min(j), i.max(j))];
        let front_ips: Vec<IpAddr> = (0..spec.servers)
            .map(|i| network.ip(host(i)))
            .chain([network.ip(BALANCER_HOST)])
            .collect();
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(setup)?;
        let nodes: Vec<String> = (0..spec.servers).map(node_id).collect();
        let secret = pki(&pki_dir, &nodes, &front_ips, spec.secret.as_deref())?;
        std::fs::write(pki_dir.join("server.toml"), server_toml(spec)).map_err(setup)?;
        let pki_mount = || {
            Mount::bind_mount(pki_dir.display().to_string(), "/pki")
                .with_access_mode(AccessMode::ReadOnly)
        };
        // Who the suite runs as: the owner of the directory it just made.
        let user = {
            use std::os::unix::fs::MetadataExt as _;
            let me = std::fs::metadata(dir.path()).map_err(setup)?;
            format!("{}:{}", me.uid(), me.gid())
        };

        let mut servers = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let data = dir.path().join(node);
            std::fs::create_dir_all(&data).map_err(setup)?;
            let others = (0..spec.servers).filter(|&j| j != i && spec.replicated());
            let peers: Vec<(String, SocketAddr)> = others
                .clone()
                .map(|j| {
                    let at = SocketAddr::new(link(i, j).ip(host(j)), SERVER_PORT);
                    (node_id(j), at)
                })
                .collect();
            let args = server_args(
                node,
                &format!("0.0.0.0:{SERVER_PORT}"),
                "/data",
                "/pki",
                &peers,
                spec,
            );
            let image = GenericImage::new("coffer-server", "local")
                .with_wait_for(WaitFor::message_on_stdout("listening on"))
                .with_cmd(args)
                .with_network(network.name.clone())
                .with_user(user.clone())
                .with_mount(pki_mount())
                .with_mount(Mount::bind_mount(data.display().to_string(), "/data"))
                .with_startup_timeout(Duration::from_secs(30));
            let attached = std::iter::once(network.attach(host(i)))
                .chain(others.map(|j| link(i, j).attach(host(i))))
                .collect();
            servers.push(Node::start(Member::Server(i), image, attached).await?);
        }

        let backends: Vec<SocketAddr> = (0..spec.servers)
            .map(|i| SocketAddr::new(network.ip(host(i)), SERVER_PORT))
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
            .with_user(user)
            .with_mount(pki_mount())
            .with_startup_timeout(Duration::from_secs(30));
        let attached = vec![network.attach(BALANCER_HOST)];
        let balancer = Node::start(Member::Balancer, image, attached).await?;
        let cluster = Containers {
            servers,
            balancer,
            links,
            network,
            secret,
            ca: pki_dir.join("ca.pem"),
            dir,
        };
        settle(&cluster, SETTLE)
            .await
            .map_err(ClusterError::Engine)?;
        Ok(cluster)
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

    /// The member a partition between `a` and `b` disconnects, and from
    /// which network.
    fn cut(&self, a: Member, b: Member) -> Result<(Member, String), ClusterError> {
        let front = self.network.name.clone();
        match (a.min(b), a.max(b)) {
            (Member::Clients, Member::Balancer) => Ok((Member::Balancer, front)),
            (Member::Clients | Member::Balancer, Member::Server(i)) => {
                Ok((Member::Server(i), front))
            }
            (Member::Server(i), Member::Server(j)) if self.links.contains_key(&(i, j)) => {
                Ok((Member::Server(i), self.links[&(i, j)].name.clone()))
            }
            (a, b) => Err(ClusterError::Unsupported(format!(
                "no link between {a} and {b}"
            ))),
        }
    }
}

impl Node {
    /// Starts `image` (on the first of `attached`) and gives it its fixed
    /// address on each network it is to be on.
    async fn start(
        member: Member,
        image: testcontainers::ContainerRequest<GenericImage>,
        attached: Vec<Attachment>,
    ) -> Result<Node, ClusterError> {
        let container = image.start().await.map_err(engine_err)?;
        let first = attached[0].network.clone();
        let mut node = Node {
            member,
            container,
            attached,
            starts: 1,
        };
        node.attached[0].connected = true;
        // The engine gave it the next free address on the first network; give
        // it its own (the process listens on 0.0.0.0, so it serves there at
        // once), and join the others.
        node.disconnect(&first).await?;
        let networks: Vec<String> = node.attached.iter().map(|a| a.network.clone()).collect();
        for network in networks {
            node.connect(&network).await?;
        }
        Ok(node)
    }

    fn attachment(&mut self, network: &str) -> Result<&mut Attachment, ClusterError> {
        let member = self.member;
        self.attached
            .iter_mut()
            .find(|a| a.network == network)
            .ok_or_else(|| ClusterError::Unsupported(format!("{member} is not on {network}")))
    }

    /// Its fixed address on the front network.
    fn ip(&self) -> IpAddr {
        self.attached[0].ip
    }

    async fn disconnect(&mut self, network: &str) -> Result<(), ClusterError> {
        if !self.attachment(network)?.connected {
            return Ok(());
        }
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
        self.attachment(network)?.connected = false;
        Ok(())
    }

    async fn connect(&mut self, network: &str) -> Result<(), ClusterError> {
        let ip = self.attachment(network)?.ip;
        let docker = docker_client_instance().await.map_err(engine_err)?;
        let endpoint = EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: Some(ip.to_string()),
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
        self.attachment(network)?.connected = true;
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
        SocketAddr::new(self.balancer.ip(), FRONT_PORT)
    }

    fn server(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.servers[i].ip(), SERVER_PORT)
    }

    fn servers(&self) -> usize {
        self.servers.len()
    }

    fn replicated(&self) -> bool {
        !self.links.is_empty()
    }

    fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.balancer.ip(), ADMIN_PORT)
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
        let (member, network) = self.cut(a, b)?;
        self.node(member)?.disconnect(&network).await
    }

    async fn heal(&mut self, a: Member, b: Member) -> Result<(), ClusterError> {
        let (member, network) = self.cut(a, b)?;
        let node = self.node(member)?;
        if node.attachment(&network)?.connected {
            return Ok(());
        }
        node.connect(&network).await
    }
}
