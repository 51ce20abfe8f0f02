//! `coffer-balancer`: the layer-4 balancer in front of Coffer servers.

#![allow(clippy::print_stdout)] // "listening on ADDR" is the readiness contract

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use coffer_balancer::{BackendSpec, Balancer, Config, Strategy, Verifier, admin};
use coffer_net::{Listener as _, Net as _, SystemClock, TokioNet, tls};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StrategyArg {
    RoundRobin,
    LeastConnections,
    PowerOfTwo,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::RoundRobin => Strategy::RoundRobin,
            StrategyArg::LeastConnections => Strategy::LeastConnections,
            StrategyArg::PowerOfTwo => Strategy::PowerOfTwo,
        }
    }
}

/// Coffer load balancer: passes TLS connections through to healthy backends.
///
/// Settings come from `--config` (TOML; every field documented in
/// docs/ARCHITECTURE.md), and flags override them. SIGHUP reads the file
/// again (flags still override); SIGTERM stops accepting and lets
/// connections finish for `shutdown_grace`.
#[derive(Debug, Parser)]
#[command(name = "coffer-balancer", version)]
struct Cli {
    /// TOML configuration, read at start and again on SIGHUP.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to accept clients on [default: 127.0.0.1:7000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A backend, ADDR or NAME=ADDR (NAME: the name its certificate carries);
    /// repeatable; replaces the file's list.
    #[arg(long = "backend")]
    backends: Vec<BackendSpec>,
    /// How backends are chosen [default: round-robin].
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
    /// CA (PEM) that health checks verify the servers against.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Between health checks of a settled backend, e.g. 2s [default: 2s].
    #[arg(long, value_parser = humantime::parse_duration)]
    health_interval: Option<Duration>,
    /// Good checks in a row that bring a backend up [default: 2].
    #[arg(long)]
    rise: Option<u32>,
    /// Bad checks in a row that take a backend down [default: 3].
    #[arg(long)]
    fall: Option<u32>,
    /// Longest wait for a backend to accept, e.g. 3s [default: 3s].
    #[arg(long, value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// Admin endpoint (plain HTTP) [default: 127.0.0.1:7001].
    #[arg(long)]
    admin: Option<SocketAddr>,
}

impl Cli {
    /// The file's configuration (or the defaults) with the flags applied.
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if !self.backends.is_empty() {
            config.backends = self.backends.clone();
        }
        if let Some(strategy) = self.strategy {
            config.strategy = strategy.into();
        }
        if let Some(ca) = &self.ca {
            config.ca = Some(ca.clone());
        }
        if let Some(interval) = self.health_interval {
            config.health.interval = interval;
        }
        if let Some(rise) = self.rise {
            config.health.rise = rise;
        }
        if let Some(fall) = self.fall {
            config.health.fall = fall;
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout = timeout;
        }
        if let Some(admin) = self.admin {
            config.admin = admin;
        }
        config.validate()?;
        Ok(config)
    }
}

/// The health checks' TLS verifier for `config`'s CA.
fn verifier(config: &Config) -> anyhow::Result<Option<Verifier>> {
    let Some(ca) = &config.ca else {
        return Ok(None);
    };
    let roots = tls::load_roots(ca).with_context(|| format!("CA {}", ca.display()))?;
    Ok(Some(Verifier::new(roots, Arc::new(SystemClock))?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = cli.config()?;
    let verifier = verifier(&config)?;
    if verifier.is_none() {
        warn!(
            "no CA given: health checks only open a TCP connection (give --ca to check TLS, hello and ping)"
        );
    }
    let (listen, admin_addr, grace) = (config.listen, config.admin, config.shutdown_grace);
    let balancer = Arc::new(Balancer::new(config, verifier, std::process::id().into())?);
    let listener = TokioNet
        .bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let admin_listener = TokioNet
        .bind(admin_addr)
        .await
        .with_context(|| format!("binding the admin endpoint {admin_addr}"))?;
    info!(admin = %admin_listener.local_addr()?, "admin endpoint: /metrics, /backends");

    let shutdown = CancellationToken::new();
    tokio::spawn(admin::serve::<TokioNet>(
        balancer.clone(),
        admin_listener,
        shutdown.clone(),
    ));
    println!("listening on {}", listener.local_addr()?);
    let mut serving = tokio::spawn(balancer.clone().run(TokioNet, listener, shutdown.clone()));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let deadline = loop {
        tokio::select! {
            result = &mut serving => return result.context("balancer task")?.context("balancing"),
            _ = sigterm.recv() => break grace,
            _ = sigint.recv() => break grace / 10,
            _ = sighup.recv() => reload(&cli, &balancer),
        }
    };
    info!(
        ?deadline,
        "shutting down: no new connections; waiting for open ones"
    );
    shutdown.cancel();
    if tokio::time::timeout(deadline, serving).await.is_err() {
        warn!("connections still open after {deadline:?}; exiting anyway");
    }
    Ok(())
}

/// SIGHUP: reads the configuration again; a bad one changes nothing.
fn reload(cli: &Cli, balancer: &Balancer) {
    if cli.config.is_none() {
        warn!("SIGHUP without --config: nothing to reload");
        return;
    }
    let next = cli
        .config()
        .and_then(|config| Ok((verifier(&config)?, config)));
    let (verifier, config) = match next {
        Ok(next) => next,
        Err(e) => {
            error!("reload refused, the running configuration stays: {e:#}");
            return;
        }
    };
    let running = balancer.config();
    if config.listen != running.listen || config.admin != running.admin {
        warn!("reload: listen and admin addresses take effect at the next start");
    }
    let backends = config.backends.len();
    match balancer.reload(config, verifier) {
        Ok(()) => info!(backends, "configuration reloaded"),
        Err(e) => error!("reload refused, the running configuration stays: {e}"),
    }
}
