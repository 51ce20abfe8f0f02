//! Server configuration: a TOML file (`--config`), overridden by flags.
//!
//! Every field has a default, so `coffer-server` runs with no file and no
//! flags at all. Durations are written the human way: `"10s"`, `"5m"`.
//!
//! ```toml
//! listen = "127.0.0.1:8000"
//! data = "./coffer-data"
//! node_id = "node-1"
//! # tls_cert = "/etc/coffer/node-1.pem"   # with tls_key; absent: a development
//! # tls_key = "/etc/coffer/node-1.key"    # CA and certificate under DATA/tls
//! # ca = "/etc/coffer/ca.pem"             # the deployment CA (verifies cluster peers)
//! log_format = "text"                     # or "json"
//! max_connections = 10000
//! handshake_timeout = "10s"
//! hello_timeout = "10s"
//! idle_timeout = "5m"
//! frame_timeout = "60s"
//! write_timeout = "60s"
//! shutdown_grace = "30s"                  # SIGTERM; SIGINT allows a tenth of it
//! # cluster_secret_file = "/etc/coffer/secret"  # signs tokens and TLS tickets, for a cluster;
//!                                         # absent: DATA/secret, made on first start
//! bcrypt_cost = 12                        # of stored login secrets
//! session_ttl = "24h"                     # a session's life; `refresh` extends it
//! # admin = "alice"                       # the admin account; absent: the first registered
//! keep_versions = 10                      # versions of each path kept for history/restore
//! upload_ttl = "24h"                      # how long an unfinished upload stays resumable
//! collect_interval = "1m"                 # how often expired uploads and unused chunks go
//! login_failures_per_user = 10            # failed logins per user per window…
//! login_failures_per_address = 100        # …and per client address, before `rate_limited`
//! login_window = "1m"
//! # write_quorum = 2                      # nodes holding a write before it is acknowledged;
//!                                         # absent: 2 with peers, else 1
//! quorum_timeout = "5s"                   # then the write is answered `unavailable`
//! # [peers]                               # the other nodes of a cluster, by node id; they need
//! # node-2 = "10.0.0.2:8000"              # tls_cert/tls_key (a peer certificate naming node_id),
//! # node-3 = "10.0.0.3:8000"              # ca and cluster_secret_file
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// Everything `coffer-server` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to accept clients (and cluster peers) on.
    pub listen: SocketAddr,
    /// Directory of the database, the chunk store and generated TLS material.
    pub data: PathBuf,
    /// This node's id in a cluster, reported in `welcome` and `pong`.
    pub node_id: String,
    /// Certificate chain (PEM) to serve; with `tls_key`. Without both, a
    /// development CA and a certificate for localhost are made under `DATA/tls`.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The deployment CA (PEM): cluster peers must present a certificate it signed.
    pub ca: Option<PathBuf>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Most connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Longest TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Longest wait for `hello` after the handshake.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// Longest silence between frames once a connection is open.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest time one frame may take to arrive once it started.
    #[serde(with = "humantime_serde")]
    pub frame_timeout: Duration,
    /// Longest time one frame may take to send.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long a graceful shutdown (SIGTERM) lets connections finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// File holding the key (at least 32 bytes) that signs session tokens and
    /// protects TLS session tickets, shared by every node of a cluster, so that
    /// tokens and sessions from one node hold on every other. Absent:
    /// `DATA/secret`, made on first start.
    pub cluster_secret_file: Option<PathBuf>,
    /// bcrypt cost of stored login secrets (4 to 31).
    pub bcrypt_cost: u32,
    /// How long a session lasts; `refresh` extends it by as much.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// The admin account. Absent: the first account registered is admin.
    pub admin: Option<String>,
    /// Versions of each path kept for history and restore (at least 1).
    pub keep_versions: u32,
    /// How long an unfinished upload stays resumable.
    #[serde(with = "humantime_serde")]
    pub upload_ttl: Duration,
    /// How often expired uploads and chunks nothing refers to are collected.
    #[serde(with = "humantime_serde")]
    pub collect_interval: Duration,
    /// Failed logins allowed per user per window.
    pub login_failures_per_user: u32,
    /// Failed logins allowed per client address per window.
    pub login_failures_per_address: u32,
    /// The login rate-limit window.
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
    /// The other nodes of the cluster, by node id, with the address each
    /// listens on. Empty: a single server.
    pub peers: BTreeMap<String, SocketAddr>,
    /// Nodes that must hold a write durably before it is acknowledged.
    /// Absent: 2 when there are peers, else 1.
    pub write_quorum: Option<usize>,
    /// How long a write waits for its quorum before it is answered
    /// `unavailable`.
    #[serde(with = "humantime_serde")]
    pub quorum_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data: PathBuf::from("./coffer-data"),
            node_id: "node-1".to_owned(),
            tls_cert: None,
            tls_key: None,
            ca: None,
            log_format: LogFormat::Text,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            cluster_secret_file: None,
            bcrypt_cost: 12,
            session_ttl: Duration::from_secs(24 * 3600),
            admin: None,
            keep_versions: 10,
            upload_ttl: Duration::from_secs(24 * 3600),
            collect_interval: Duration::from_secs(60),
            login_failures_per_user: 10,
            login_failures_per_address: 100,
            login_window: Duration::from_secs(60),
            peers: BTreeMap::new(),
            write_quorum: None,
            quorum_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its location.
        message: String,
    },
    /// The combination of settings is not valid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; missing fields take their defaults, unknown ones are refused.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks settings that only make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key go together".into(),
            ));
        }
        coffer_certs::validate_node_id(&self.node_id)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "max_connections must be at least 1".into(),
            ));
        }
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(ConfigError::Invalid(format!(
                "bcrypt_cost {} is outside 4 to 31",
                self.bcrypt_cost
            )));
        }
        if self.keep_versions == 0 {
            return Err(ConfigError::Invalid(
                "keep_versions must be at least 1".into(),
            ));
        }
        if let Some(admin) = &self.admin {
            coffer_proto::name::normalize_username(admin)
                .map_err(|e| ConfigError::Invalid(format!("admin: {e}")))?;
        }
        for id in self.peers.keys() {
            coffer_certs::validate_node_id(id)
                .map_err(|e| ConfigError::Invalid(format!("peer {id}: {e}")))?;
        }
        self.membership()?;
        if !self.peers.is_empty() {
            for (setting, missing) in [
                (
                    "tls_cert and tls_key (a peer certificate naming this node)",
                    self.tls_cert.is_none(),
                ),
                (
                    "ca (the cluster CA that signs every node's certificate)",
                    self.ca.is_none(),
                ),
                (
                    "cluster_secret_file (the key every node signs tokens with)",
                    self.cluster_secret_file.is_none(),
                ),
                (
                    "admin (each node would otherwise make its own first account admin)",
                    self.admin.is_none(),
                ),
            ] {
                if missing {
                    return Err(ConfigError::Invalid(format!(
                        "a node with peers needs {setting}"
                    )));
                }
            }
        }
        for (name, value) in [
            ("session_ttl", self.session_ttl),
            ("upload_ttl", self.upload_ttl),
            ("collect_interval", self.collect_interval),
            ("login_window", self.login_window),
            ("handshake_timeout", self.handshake_timeout),
            ("hello_timeout", self.hello_timeout),
            ("idle_timeout", self.idle_timeout),
            ("frame_timeout", self.frame_timeout),
            ("write_timeout", self.write_timeout),
            ("quorum_timeout", self.quorum_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be more than zero"
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The cluster this configuration describes: this node and its peers.
    pub fn membership(&self) -> Result<crate::cluster::Membership, ConfigError> {
        let peers = self
            .peers
            .iter()
            .map(|(id, addr)| (id.clone(), addr.to_string()))
            .collect();
        crate::cluster::Membership::new(
            &self.node_id,
            &self.listen.to_string(),
            &peers,
            self.write_quorum,
        )
        .map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_the_default() {
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: Config = toml::from_str(&doc).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("lisen = \"127.0.0.1:1\"").is_err());
        assert!(toml::from_str::<Config>("idle_timeout = \"soon\"").is_err());
        let half_tls = Config {
            tls_cert: Some("a".into()),
            ..Config::default()
        };
        assert!(half_tls.validate().is_err());
        let bad_id = Config {
            node_id: "Node 1".into(),
            ..Config::default()
        };
        assert!(bad_id.validate().is_err());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn a_cluster_node_needs_its_certificate_the_ca_and_the_shared_secret() {
        let peers: Config = toml::from_str(
            "node_id = \"node-1\"\n[peers]\nnode-2 = \"127.0.0.2:8000\"\nnode-3 = \"127.0.0.3:8000\"",
        )
        .unwrap();
        assert_eq!(peers.peers.len(), 2);
        let error = peers.validate().unwrap_err().to_string();
        assert!(error.contains("tls_cert"), "{error}");
        let complete = Config {
            tls_cert: Some("n.pem".into()),
            tls_key: Some("n.key".into()),
            ca: Some("ca.pem".into()),
            cluster_secret_file: Some("secret".into()),
            admin: Some("root".into()),
            ..peers
        };
        assert!(complete.validate().is_ok());
        assert_eq!(complete.membership().unwrap().write_quorum(), 2);
        let itself = Config {
            peers: [("node-1".to_owned(), complete.listen)].into(),
            ..complete.clone()
        };
        assert!(itself.validate().is_err(), "a node is not its own peer");
        let too_many = Config {
            write_quorum: Some(4),
            ..complete
        };
        assert!(too_many.validate().is_err());
    }
}
