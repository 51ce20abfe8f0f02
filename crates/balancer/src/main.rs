//! `coffer-balancer`: the layer-4 balancer in front of Coffer servers.

#![allow(clippy::print_stdout)] // "listening on ADDR" is the readiness contract

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use coffer_balancer::{Balancer, Options, Strategy};
use coffer_net::{Listener as _, Net as _, TokioNet};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StrategyArg {
    RoundRobin,
    LeastConnections,
}

/// Coffer load balancer: passes TLS connections through to healthy backends.
#[derive(Debug, Parser)]
#[command(name = "coffer-balancer", version)]
struct Cli {
    /// Address to accept clients on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// A backend server, ADDR (repeatable).
    #[arg(long = "backend", required = true)]
    backends: Vec<SocketAddr>,
    /// How backends are chosen.
    #[arg(long, value_enum, default_value = "round-robin")]
    strategy: StrategyArg,
    /// Longest wait for a backend to accept, in seconds.
    #[arg(long, default_value_t = 3)]
    connect_timeout_secs: u64,
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
    let strategy = match cli.strategy {
        StrategyArg::RoundRobin => Strategy::RoundRobin,
        StrategyArg::LeastConnections => Strategy::LeastConnections,
    };
    let options = Options {
        connect_timeout: Duration::from_secs(cli.connect_timeout_secs),
        ..Options::default()
    };
    let balancer = Arc::new(Balancer::new(cli.backends, strategy, options)?);
    let listener = TokioNet
        .bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    println!("listening on {}", listener.local_addr()?);

    let shutdown = CancellationToken::new();
    let mut serving = tokio::spawn(balancer.run(TokioNet, listener, shutdown.clone()));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let deadline = tokio::select! {
        result = &mut serving => return result.context("balancer task")?.context("balancing"),
        _ = sigterm.recv() => Duration::from_secs(30),
        _ = sigint.recv() => Duration::from_secs(3),
    };
    info!(?deadline, "shutting down");
    shutdown.cancel();
    if tokio::time::timeout(deadline, serving).await.is_err() {
        warn!("connections still open after {deadline:?}; exiting anyway");
    }
    Ok(())
}
