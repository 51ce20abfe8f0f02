//! The server's TLS material: configured files, or development ones made on
//! first start under `DATA/tls` and reused afterwards.

use std::path::PathBuf;
use std::sync::Arc;

use coffer_net::SharedClock;
use coffer_net::tickets::SharedTickets;
use coffer_net::tls::{self, Identity};
use time::OffsetDateTime;
use tracing::info;

use crate::StartError;
use crate::config::Config;

pub(crate) struct Tls {
    pub(crate) server_config: Arc<rustls::ServerConfig>,
    pub(crate) ca_path: Option<PathBuf>,
}

fn now(clock: &SharedClock) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + clock.now()
}

/// The server's TLS configuration; sessions resume through `tickets`, which
/// every server sharing the cluster secret opens.
pub(crate) fn setup(
    config: &Config,
    clock: &SharedClock,
    tickets: SharedTickets,
) -> Result<Tls, StartError> {
    let (identity, ca_path) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => (Identity::load(cert, key)?, config.ca.clone()),
        _ => {
            let dev = coffer_certs::ensure_dev_tls(&config.data.join("tls"), now(clock))?;
            if dev.generated {
                info!(ca = %dev.ca.display(), "made development TLS material; clients pass this file as --ca");
            }
            (
                Identity::load(&dev.cert, &dev.key)?,
                Some(config.ca.clone().unwrap_or(dev.ca)),
            )
        }
    };
    // Cluster peers authenticate with certificates from the deployment CA;
    // clients present none and are admitted all the same.
    let peer_roots = ca_path.as_deref().map(tls::load_roots).transpose()?;
    Ok(Tls {
        server_config: tls::server_config(&identity, peer_roots, clock.clone(), Some(tickets))?,
        ca_path,
    })
}

/// How this node connects to its peers: presenting its certificate, which
/// must be a peer certificate naming this node, and trusting the cluster CA.
/// `None` for a node without peers.
pub(crate) fn peer_connector(
    config: &Config,
    clock: &SharedClock,
) -> Result<Option<tokio_rustls::TlsConnector>, StartError> {
    if config.peers.is_empty() {
        return Ok(None);
    }
    let (Some(cert), Some(key), Some(ca)) = (&config.tls_cert, &config.tls_key, &config.ca) else {
        return Err(crate::ConfigError::Invalid(
            "a node with peers needs tls_cert, tls_key and ca".into(),
        )
        .into());
    };
    let identity = Identity::load(cert, key)?;
    let named = coffer_certs::node_id_of(identity.leaf());
    if named.as_deref() != Some(config.node_id.as_str()) {
        return Err(crate::ConfigError::Invalid(format!(
            "{} is not a peer certificate of node {} (it names {}); make one with `coffer-certs peer {}`",
            cert.display(),
            config.node_id,
            named.as_deref().unwrap_or("no node"),
            config.node_id
        ))
        .into());
    }
    let roots = tls::load_roots(ca)?;
    let client = tls::client_config(roots, Some(&identity), clock.clone())?;
    Ok(Some(tokio_rustls::TlsConnector::from(client)))
}
