//! Balancer configuration: a TOML file (`--config`), overridden by flags, and
//! read again on SIGHUP.
//!
//! Every field but `backends` has a default. Durations are written the human
//! way: `"2s"`, `"500ms"`. A backend is `"ADDR"` or `"NAME=ADDR"`: NAME is the
//! name its TLS certificate must carry for the health check (by default the
//! address itself, which the certificate must then list).
//!
//! ```toml
//! listen = "127.0.0.1:7000"
//! admin = "127.0.0.1:7001"               # plain HTTP: keep it on loopback
//! backends = []                          # e.g. ["127.0.0.1:8001", "node-2=127.0.0.2:8000"]
//! strategy = "round-robin"               # or "least-connections", "power-of-two"
//! # ca = "/etc/coffer/ca.pem"            # health checks verify servers against it;
//!                                        # absent: they only open a TCP connection
//! max_connections = 10000                # further clients are closed at once
//! connect_timeout = "3s"                 # to a backend, before trying another
//! answer_timeout = "3s"                  # for a backend's answer to a ClientHello, before trying another
//! max_attempts = 3                       # backends tried for one client connection
//! first_byte_timeout = "10s"             # a client that says nothing is closed
//! idle_timeout = "5m"                    # a connection with no bytes either way is closed
//! close_on_down = true                   # close connections to a backend marked down
//! shutdown_grace = "30s"                 # SIGTERM; SIGINT allows a tenth of it
//!
//! [health]
//! interval = "2s"                        # between checks of a steady backend
//! fast_interval = "500ms"                # while a backend is changing state
//! timeout = "2s"                         # for one whole check
//! rise = 2                               # good checks to bring a backend up
//! fall = 3                               # bad checks to take it down
//! jitter = 0.1                           # each wait varies by up to this fraction
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::select::Strategy;

/// One backend: its address and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The TLS name the health check verifies; `None`: the address.
    pub name: Option<String>,
}

impl BackendSpec {
    /// The TLS name to verify: the given name, or the address.
    pub fn tls_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.addr.ip().to_string())
    }
}

impl std::fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}={}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl FromStr for BackendSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addr) = match s.rsplit_once('=') {
            Some((name, addr)) => (Some(name), addr),
            None => (None, s),
        };
        let addr = addr.parse().map_err(|_| {
            format!("backend {s:?}: {addr:?} is not an address (expected IP:PORT or NAME=IP:PORT)")
        })?;
        if let Some(name) = name
            && rustls_pki_types::ServerName::try_from(name).is_err()
        {
            return Err(format!("backend {s:?}: {name:?} is not a TLS server name"));
        }
        Ok(BackendSpec {
            addr,
            name: name.map(str::to_owned),
        })
    }
}

impl Serialize for BackendSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackendSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How and how often backends are checked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Between checks of a backend whose state is settled.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Between checks while a backend's state is changing (a check disagreed
    /// with its state, or a client's connect to it failed).
    #[serde(with = "humantime_serde")]
    pub fast_interval: Duration,
    /// For one whole check: connect, TLS handshake, hello, ping.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive good checks that bring a down backend up.
    pub rise: u32,
    /// Consecutive bad checks that take an up backend down.
    pub fall: u32,
    /// Each wait varies at random by up to this fraction, so checks of many
    /// backends (and of many balancers) do not fall in step.
    pub jitter: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            jitter: 0.1,
        }
    }
}

/// Everything `coffer-balancer` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Address of the admin endpoint (plain HTTP).
    pub admin: SocketAddr,
    /// The servers.
    pub backends: Vec<BackendSpec>,
    /// How a backend is chosen.
    pub strategy: Strategy,
    /// CA (PEM) the servers' certificates are verified against by health checks.
    pub ca: Option<PathBuf>,
    /// Most client connections at once; further ones are closed on arrival.
    pub max_connections: usize,
    /// Longest wait for a backend to accept.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for a backend's first answer to a client's whole TLS
    /// ClientHello; a backend silent that long (a frozen process) is treated
    /// like one that refused the connection.
    #[serde(with = "humantime_serde")]
    pub answer_timeout: Duration,
    /// Most backends tried for one client connection.
    pub max_attempts: usize,
    /// Longest wait for a new client's first byte (a TLS client speaks first).
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Close established connections to a backend when it is marked down,
    /// rather than leave them to time out.
    pub close_on_down: bool,
    /// How long SIGTERM lets connections finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Health checks.
    pub health: HealthConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            admin: SocketAddr::from(([127, 0, 0, 1], 7001)),
            backends: Vec::new(),
            strategy: Strategy::RoundRobin,
            ca: None,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(3),
            answer_timeout: Duration::from_secs(3),
            max_attempts: 3,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            close_on_down: true,
            shutdown_grace: Duration::from_secs(30),
            health: HealthConfig::default(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
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
    /// The settings do not make a working balancer.
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

    /// Checks what only makes sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.backends.is_empty() {
            return invalid("no backends: give at least one --backend".into());
        }
        for (i, b) in self.backends.iter().enumerate() {
            if self.backends[..i].iter().any(|a| a.addr == b.addr) {
                return invalid(format!("backend {} is listed twice", b.addr));
            }
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1".into());
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts must be at least 1".into());
        }
        let h = &self.health;
        if h.rise == 0 || h.fall == 0 {
            return invalid("health rise and fall must be at least 1".into());
        }
        if !(0.0..=0.5).contains(&h.jitter) {
            return invalid(format!("health jitter {} is outside 0 to 0.5", h.jitter));
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("answer_timeout", self.answer_timeout),
            ("first_byte_timeout", self.first_byte_timeout),
            ("idle_timeout", self.idle_timeout),
            ("health.interval", h.interval),
            ("health.fast_interval", h.fast_interval),
            ("health.timeout", h.timeout),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be more than zero"));
            }
        }
        Ok(())
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
    fn backends_parse_with_and_without_a_name() {
        let plain: BackendSpec = "127.0.0.1:8001".parse().unwrap();
        assert_eq!(plain.tls_name(), "127.0.0.1");
        let named: BackendSpec = "node-2=127.0.0.2:8000".parse().unwrap();
        assert_eq!(named.name.as_deref(), Some("node-2"));
        assert_eq!(named.to_string(), "node-2=127.0.0.2:8000");
        for bad in [
            "",
            "localhost:8000",
            "127.0.0.1",
            "x y=127.0.0.1:1",
            "=127.0.0.1:1",
        ] {
            assert!(bad.parse::<BackendSpec>().is_err(), "{bad}");
        }
        let config: Config = toml::from_str(r#"backends = ["127.0.0.1:1", "n=[::1]:2"]"#).unwrap();
        assert_eq!(config.backends.len(), 2);
        assert!(toml::from_str::<Config>(r#"backends = ["nowhere"]"#).is_err());
    }

    #[test]
    fn unworkable_settings_are_refused_with_the_reason() {
        let one = |s: &str| BackendSpec {
            addr: s.parse().unwrap(),
            name: None,
        };
        let base = Config {
            backends: vec![one("127.0.0.1:1")],
            ..Config::default()
        };
        assert!(base.validate().is_ok());
        let cases: Vec<(Config, &str)> = vec![
            (Config::default(), "no backends"),
            (
                Config {
                    backends: vec![one("127.0.0.1:1"), one("127.0.0.1:1")],
                    ..base.clone()
                },
                "listed twice",
            ),
            (
                Config {
                    max_connections: 0,
                    ..base.clone()
                },
                "max_connections",
            ),
            (
                Config {
                    health: HealthConfig {
                        fall: 0,
                        ..HealthConfig::default()
                    },
                    ..base.clone()
                },
                "rise and fall",
            ),
            (
                Config {
                    idle_timeout: Duration::ZERO,
                    ..base.clone()
                },
                "idle_timeout",
            ),
        ];
        for (config, says) in cases {
            let e = config.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        assert!(toml::from_str::<Config>("lisen = \"127.0.0.1:1\"").is_err());
        assert!(toml::from_str::<Config>("[health]\ninterval = \"often\"").is_err());
    }
}
