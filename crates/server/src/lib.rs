//! The Coffer server as a library.
//!
//! [`Server::new`] takes a [`Config`] and a clock, sets up TLS (a development CA
//! and certificate under `DATA/tls` when none is configured), and
//! [`Server::run`] serves an already-bound [`Listener`] until the shutdown token
//! is cancelled — over real sockets in the binary, over turmoil's in the
//! simulation.
//!
//! Each connection: TLS handshake (with a deadline), then frames. The first
//! request must be `hello`; `ping` answers readiness. A frame that breaks the
//! protocol gets an `error` answer; if it broke the *framing* (size limits, a
//! header without an id) the connection is closed, otherwise it stays usable.
//!
//! Modules: [`config`] (file + defaults), `tls` (certificate setup),
//! `conn` (one connection's loop), `dispatch` (what each request does).

use std::io;
use std::sync::Arc;

use coffer_net::tls::TlsConfigError;
use coffer_net::{Listener, SharedClock};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

pub mod config;
mod conn;
mod dispatch;
mod tls;

pub use config::{Config, ConfigError, LogFormat};

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
}

/// A configured server, ready to serve listeners.
pub struct Server {
    config: Config,
    clock: SharedClock,
    acceptor: TlsAcceptor,
    ca_path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("node_id", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Validates `config` and prepares TLS.
    pub fn new(config: Config, clock: SharedClock) -> Result<Server, StartError> {
        config.validate()?;
        let tls = tls::setup(&config, &clock)?;
        Ok(Server {
            config,
            clock,
            acceptor: TlsAcceptor::from(tls.server_config),
            ca_path: tls.ca_path,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The CA certificate (PEM file) clients should trust: the configured one,
    /// or the development CA made under the data directory.
    pub fn ca_path(&self) -> Option<&std::path::Path> {
        self.ca_path.as_deref()
    }

    /// Serves `listener` until `shutdown` is cancelled, then stops accepting,
    /// lets every connection finish the request it is handling, and returns
    /// once all are closed. The caller bounds that wait (a grace period).
    pub async fn run<L: Listener>(
        self: Arc<Self>,
        mut listener: L,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let tracker = TaskTracker::new();
        let local = listener.local_addr()?;
        info!(%local, node = %self.config.node_id, "serving");
        loop {
            // Take a connection slot before accepting: when all are in use, new
            // connections wait in the kernel's queue instead of being refused.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let server = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(
                async move {
                    conn::serve(&server, stream, shutdown).await;
                    drop(permit);
                }
                .instrument(info_span!("conn", %peer)),
            );
        }
        tracker.close();
        info!(open = tracker.len(), "shutting down: no new connections");
        tracker.wait().await;
        info!("all connections closed");
        Ok(())
    }
}
