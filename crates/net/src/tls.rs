//! rustls configuration, always with the `ring` provider chosen explicitly, and
//! handshakes with a deadline.
//!
//! Servers and clients speak TLS 1.3 (1.2 allowed) and the ALPN protocol
//! `coffer/1`. Clients always verify the server's chain against the deployment
//! CA; there is no switch to turn that off. A server may also accept client
//! certificates from the cluster CA (peer channels) while still admitting
//! clients that present none.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::clock::{SharedClock, TlsTime};
use crate::tickets::SharedTickets;

/// The ALPN protocol id of this protocol version.
pub const ALPN: &[u8] = b"coffer/1";

/// The crypto provider every configuration uses: ring, with TLS 1.3's
/// AES-128-GCM/SHA-256 suite preferred (then AES-256-GCM/SHA-384, then
/// ChaCha20-Poly1305, and TLS 1.2's suites after). The key schedule then
/// runs on SHA-256, which this hardware computes with its SHA extensions,
/// where SHA-384 runs in software; and AES-128 seals the bulk data in 10
/// rounds instead of 14. Its 128-bit security is the level X25519 and P-256
/// give the handshake anyway; go's TLS stack prefers it for the same reasons.
/// Content keeps its own AES-256 end-to-end sealing whatever TLS chooses.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
            _ => 3,
        });
    Arc::new(provider)
}

/// Why TLS material could not be loaded or a configuration built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: io::Error,
    },
    /// PEM without the expected contents.
    #[error("{what}: {reason}")]
    Pem {
        /// What was being read.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration (for instance a key that does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Pem {
            what: what.to_owned(),
            reason: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

/// A certificate chain and its private key: what a server (or a cluster peer
/// acting as a client) presents.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// From PEM: the chain (leaf first) and a PKCS#8, PKCS#1 or SEC1 key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Identity, TlsConfigError> {
        let chain = certs_from_pem(chain_pem, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsConfigError::Pem {
            what: "private key".to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Identity { chain, key })
    }

    /// Reads the chain and key from PEM files.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsConfigError> {
        Identity::from_pem(&read(cert)?, &read(key)?).map_err(|e| match e {
            TlsConfigError::Pem { what, reason } => TlsConfigError::Pem {
                what: format!("{what} in {} / {}", cert.display(), key.display()),
                reason,
            },
            other => other,
        })
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// Trust anchors from PEM (one or more CA certificates).
pub fn roots_from_pem(pem: &[u8]) -> Result<Arc<RootCertStore>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(pem, "CA certificate")? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// Trust anchors from a PEM file.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsConfigError> {
    roots_from_pem(&read(path)?).map_err(|e| match e {
        TlsConfigError::Pem { reason, .. } => TlsConfigError::Pem {
            what: format!("CA certificate in {}", path.display()),
            reason,
        },
        other => other,
    })
}

/// A server configuration. With `peer_roots`, client certificates signed by
/// that CA are verified (and clients without one still admitted; the server
/// decides per channel what a certificate allows). With `tickets`, sessions
/// resume through stateless tickets any server holding the same secret opens
/// (see [`crate::tickets`]); without, through this configuration's own cache.
pub fn server_config(
    identity: &Identity,
    peer_roots: Option<Arc<RootCertStore>>,
    clock: SharedClock,
    tickets: Option<SharedTickets>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_details(provider.clone(), Arc::new(TlsTime(clock)))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match peer_roots {
        Some(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots, provider)
                .allow_unauthenticated()
                .build()?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    if let Some(tickets) = tickets {
        config.ticketer = Arc::new(tickets);
    }
    Ok(Arc::new(config))
}

/// A client configuration that trusts `roots` only, optionally presenting an
/// identity (cluster peers do; clients do not).
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<&Identity>,
    clock: SharedClock,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let builder = ClientConfig::builder_with_details(provider(), Arc::new(TlsTime(clock)))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// What is wrong with a peer's certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertProblem {
    /// Not signed by a trusted CA (or the signature is bad).
    #[error("not signed by a trusted CA")]
    NotSigned,
    /// Valid, but for other names than the one connected to.
    #[error("not valid for {expected} (it names {presented})")]
    WrongName {
        /// The name connected to.
        expected: String,
        /// The names the certificate holds.
        presented: String,
    },
    /// Past its validity.
    #[error("expired")]
    Expired,
    /// Before its validity.
    #[error("not valid yet")]
    NotYetValid,
    /// The peer presented no certificate where one was required.
    #[error("none presented")]
    Missing,
    /// Anything else the verifier refused.
    #[error("{0}")]
    Other(String),
}

impl CertProblem {
    fn from_rustls(e: &rustls::CertificateError) -> CertProblem {
        use rustls::CertificateError as E;
        match e {
            E::UnknownIssuer | E::BadSignature => CertProblem::NotSigned,
            E::NotValidForName => CertProblem::WrongName {
                expected: "this server".into(),
                presented: "other names".into(),
            },
            E::NotValidForNameContext {
                expected,
                presented,
            } => CertProblem::WrongName {
                expected: match expected {
                    ServerName::DnsName(name) => name.as_ref().to_owned(),
                    ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                    other => format!("{other:?}"),
                },
                presented: presented.join(", "),
            },
            E::Expired | E::ExpiredContext { .. } => CertProblem::Expired,
            E::NotValidYet | E::NotValidYetContext { .. } => CertProblem::NotYetValid,
            other => CertProblem::Other(format!("{other:?}")),
        }
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// It did not finish in time.
    #[error("TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    /// The peer's certificate was refused.
    #[error("certificate refused: {0}")]
    Certificate(CertProblem),
    /// The peer refused the session (for instance our certificate).
    #[error("peer refused the TLS session: {0}")]
    Refused(String),
    /// The peer did not speak TLS, or broke the protocol.
    #[error("TLS protocol error: {0}")]
    Protocol(String),
    /// The connection failed underneath.
    #[error("connection failed during the TLS handshake: {0}")]
    Io(io::Error),
}

impl HandshakeError {
    fn from_io(e: io::Error) -> HandshakeError {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return HandshakeError::Io(e);
        };
        match tls {
            rustls::Error::InvalidCertificate(reason) => {
                HandshakeError::Certificate(CertProblem::from_rustls(reason))
            }
            rustls::Error::NoCertificatesPresented => {
                HandshakeError::Certificate(CertProblem::Missing)
            }
            rustls::Error::AlertReceived(alert) => HandshakeError::Refused(format!("{alert:?}")),
            other => HandshakeError::Protocol(other.to_string()),
        }
    }
}

/// Runs the server side of a handshake, giving up after `timeout`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    stream: S,
    timeout: Duration,
) -> Result<server::TlsStream<S>, HandshakeError> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Err(_) => Err(HandshakeError::Timeout(timeout)),
        Ok(result) => result.map_err(HandshakeError::from_io),
    }
}

/// Runs the client side of a handshake with `name` as the expected server
/// name, giving up after `timeout`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    connector: &TlsConnector,
    name: ServerName<'static>,
    stream: S,
    timeout: Duration,
) -> Result<client::TlsStream<S>, HandshakeError> {
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Err(_) => Err(HandshakeError::Timeout(timeout)),
        Ok(result) => result.map_err(HandshakeError::from_io),
    }
}
