//! The Coffer server as a library.
//!
//! [`Server::new`] takes a [`Config`] and a clock, opens the data directory
//! (SQLite database, chunk store, token key), sets up TLS (a development CA
//! and certificate under `DATA/tls` when none is configured), and
//! [`Server::run`] serves an already-bound [`Listener`] until the shutdown token
//! is cancelled — over real sockets in the binary, over turmoil's in the
//! simulation.
//!
//! Each connection: TLS handshake (with a deadline), then frames. The first
//! request must be `hello`. [`access`] decides what each request needs (a
//! session, an admin, a folder role…) in one place; the handlers in
//! `handlers/` do the work; every state change goes through the store's single
//! writer ([`store`]), which also records the change log and the events pushed
//! to subscribers.
//!
//! Modules: [`config`], `tls` (certificates), `conn` (one connection's loop),
//! `dispatch` (session state and routing), `handlers` (one file per area),
//! `store` (database, change log), `chunks` (chunk files), `auth` (tokens,
//! bcrypt, rate limits), [`access`], [`cluster`] (merge rules and membership).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coffer_net::tls::TlsConfigError;
use coffer_net::{Listener, Net, SharedClock};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span};

pub mod access;
mod auth;
mod chunks;
pub mod cluster;
pub mod config;
mod conn;
mod dispatch;
mod error;
mod handlers;
mod store;
mod tls;

pub use auth::SecretError;
pub use config::{Config, ConfigError, LogFormat};
pub use store::StoreError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Development TLS material could not be created or read.
    #[error("TLS material under the data directory: {0}")]
    Certs(#[from] coffer_certs::CertError),
    /// Configured TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token key could not be read or made.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The data directory (or the chunk store in it) could not be prepared.
    #[error("{path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
}

/// A configured server, ready to serve listeners.
pub struct Server {
    config: Config,
    clock: SharedClock,
    acceptor: TlsAcceptor,
    ca_path: Option<PathBuf>,
    store: store::Store,
    chunks: Arc<chunks::ChunkStore>,
    token_key: auth::TokenKey,
    limiter: auth::RateLimiter,
    /// Ids, salts and secrets: from the OS, or from a seed in the simulation.
    rng: Mutex<ChaCha20Rng>,
    /// bcrypt of nothing anyone knows, at the configured cost: what an unknown
    /// user's login is checked against, so it takes as long as a wrong password.
    dummy_hash: String,
    /// This node and its peers.
    membership: cluster::Membership,
    /// How this node reaches its peers, presenting its peer certificate;
    /// `None` without peers.
    peer_tls: Option<tokio_rustls::TlsConnector>,
    /// What the peers following this node's log have acknowledged.
    followers: Arc<cluster::link::Followers>,
    /// The links up to peers, for requests forwarded to them.
    outbox: cluster::link::Outbox,
    /// Records taken from peers whose chunks this node still lacks.
    unheld: cluster::link::Unheld,
    /// The change log was empty at start: a new node, or a wiped one.
    started_empty: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("node_id", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Validates `config`, opens the data directory and prepares TLS, with
    /// randomness from the operating system. Must be called inside a tokio runtime.
    pub fn new(config: Config, clock: SharedClock) -> Result<Server, StartError> {
        let rng = ChaCha20Rng::try_from_rng(&mut rand::rngs::SysRng).map_err(|e| {
            StartError::DataDir {
                path: config.data.clone(),
                source: io::Error::other(format!("no randomness from the OS: {e}")),
            }
        })?;
        Self::with_rng(config, clock, rng)
    }

    /// Like [`Server::new`], with every random choice drawn from `seed`: the
    /// simulation's way to replay a run exactly.
    pub fn with_seed(config: Config, clock: SharedClock, seed: u64) -> Result<Server, StartError> {
        Self::with_rng(config, clock, ChaCha20Rng::seed_from_u64(seed))
    }

    fn with_rng(
        mut config: Config,
        clock: SharedClock,
        mut rng: ChaCha20Rng,
    ) -> Result<Server, StartError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data).map_err(|source| StartError::DataDir {
            path: config.data.clone(),
            source,
        })?;
        config.admin = config
            .admin
            .as_deref()
            .map(|a| coffer_proto::name::normalize_username(a).expect("validated"));
        let token_key = match &config.cluster_secret_file {
            Some(path) => auth::TokenKey::load(path)?,
            None => auth::TokenKey::load_or_create(
                &config.data.join("secret"),
                rand::RngExt::random(&mut rng),
            )?,
        };
        let tls = tls::setup(&config, &clock, token_key.session_tickets(clock.clone()))?;
        let membership = config.membership()?;
        let peer_tls = tls::peer_connector(&config, &clock)?;
        let chunk_dir = config.data.join("chunks");
        let chunks = Arc::new(chunks::ChunkStore::open(&chunk_dir).map_err(|source| {
            StartError::DataDir {
                path: chunk_dir,
                source,
            }
        })?);
        let store = store::Store::open(
            &config.data,
            store::WriterContext {
                origin: format!("{}.{}", config.node_id, {
                    let mut suffix = [0u8; 4];
                    rand::Rng::fill_bytes(&mut rng, &mut suffix);
                    hex::encode(suffix)
                }),
                clock: clock.clone(),
                keep_versions: config.keep_versions,
                chunks: chunks.clone(),
            },
        )?;
        let started_empty = *store.committed().borrow() == 0;
        let followers = Arc::new(cluster::link::Followers::default());
        let mut store = store;
        if membership.write_quorum() > 1 {
            store.require_quorum(cluster::link::Quorum {
                followers: followers.clone(),
                needed: membership.write_quorum() - 1,
                timeout: config.quorum_timeout,
            });
        }
        let dummy_hash = auth::unmatchable_hash(
            config.bcrypt_cost,
            rand::RngExt::random(&mut rng),
            rand::RngExt::random(&mut rng),
        );
        let limiter = auth::RateLimiter::new(auth::LoginLimits {
            per_user: config.login_failures_per_user,
            per_address: config.login_failures_per_address,
            window: config.login_window,
        });
        Ok(Server {
            acceptor: TlsAcceptor::from(tls.server_config),
            ca_path: tls.ca_path,
            config,
            clock,
            store,
            chunks,
            token_key,
            limiter,
            rng: Mutex::new(rng),
            dummy_hash,
            membership,
            peer_tls,
            followers,
            outbox: cluster::link::Outbox::default(),
            unheld: cluster::link::Unheld::default(),
            started_empty,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this node serves clients: always for a single node; in a
    /// cluster, once it has received the whole log of enough peers since it
    /// started that every acknowledged write is among them (all but
    /// `write_quorum − 1` of its peers, and at least one), so that a node
    /// back from a restart or a wipe does not answer from stale state.
    pub fn ready(&self) -> bool {
        let peers = self.membership.len() - 1;
        // An acknowledged write is on `write_quorum` nodes. A node that kept
        // its data holds it or one of the others does, so it needs all but
        // `write_quorum − 1` of its peers; a node that starts empty (new, or
        // wiped) may have been one of those nodes, so it needs one more.
        let needed = (peers + 1 - self.membership.write_quorum()) + usize::from(self.started_empty);
        peers == 0 || self.outbox.caught_up() >= needed.clamp(1, peers)
    }

    /// The peers this node has a link to now (it follows their logs, and can
    /// forward requests to them).
    pub fn linked_peers(&self) -> Vec<String> {
        self.outbox.linked()
    }

    /// A digest of this node's replicated state (every replicated row, and
    /// when it was created or deleted): two nodes that have exchanged all
    /// their records have the same digest.
    pub async fn replica_digest(&self) -> io::Result<[u8; 32]> {
        self.store
            .digest()
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// One round of collection now, as the periodic one does: expired
    /// uploads and the chunks nothing holds go. How many chunk files went.
    pub async fn collect_now(&self) -> io::Result<usize> {
        handlers::collect(self)
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// The CA certificate (PEM file) clients should trust: the configured one,
    /// or the development CA made under the data directory.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca_path.as_deref()
    }

    /// Fills `out` from the server's generator.
    fn random(&self, out: &mut [u8]) {
        rand::Rng::fill_bytes(&mut *self.rng.lock().expect("rng lock"), out);
    }

    /// A fresh random id: `prefix` and 16 random bytes in hex.
    fn new_id(&self, prefix: &str) -> String {
        let mut bytes = [0u8; 16];
        self.random(&mut bytes);
        format!("{prefix}{}", hex::encode(bytes))
    }

    /// Serves on a free port of 127.0.0.1 in a new task until `shutdown`:
    /// for tests, benches and local tools. The address, and the task.
    pub async fn spawn_local(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> io::Result<(
        std::net::SocketAddr,
        tokio::task::JoinHandle<io::Result<()>>,
    )> {
        use coffer_net::Net as _;
        let listener = coffer_net::TokioNet
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .await?;
        let addr = listener.local_addr()?;
        Ok((
            addr,
            tokio::spawn(self.run(coffer_net::TokioNet, listener, shutdown)),
        ))
    }

    /// Serves `listener` until `shutdown` is cancelled, following each peer's
    /// log over `net`; then stops accepting, lets every connection finish the
    /// request it is handling, and returns once all are closed. The caller
    /// bounds that wait (a grace period).
    pub async fn run<N: Net, L: Listener>(
        self: Arc<Self>,
        net: N,
        mut listener: L,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let tracker = TaskTracker::new();
        let local = listener.local_addr()?;
        info!(%local, node = %self.config.node_id, "serving");
        // Before any link acknowledges: the records noted as lacking chunks
        // before a restart are still unheld.
        let notes = self
            .store
            .read(store::query::unheld)
            .await
            .map_err(io::Error::other)?;
        self.unheld.load(notes);
        tracker.spawn(handlers::maintenance(self.clone(), shutdown.clone()));
        if !self.config.peers.is_empty() {
            tracker.spawn(
                cluster::link::repair(self.clone(), shutdown.clone())
                    .instrument(info_span!("repair")),
            );
        }
        for (peer, addr) in &self.config.peers {
            tracker.spawn(
                cluster::link::follow(
                    self.clone(),
                    net.clone(),
                    peer.clone(),
                    *addr,
                    shutdown.clone(),
                )
                .instrument(info_span!("follow", %peer)),
            );
        }
        loop {
            // Take a connection slot before accepting: when all are in use, new
            // connections wait in the kernel's queue instead of being refused.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.next_connection() => accepted,
            };
            let server = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(
                async move {
                    conn::serve(server, stream, peer, shutdown).await;
                    drop(permit);
                }
                .instrument(info_span!("conn", %peer, user = tracing::field::Empty)),
            );
        }
        tracker.close();
        info!(open = tracker.len(), "shutting down: no new connections");
        tracker.wait().await;
        info!("all connections closed");
        Ok(())
    }
}
