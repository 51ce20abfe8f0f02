//! `coffer-server`: the Coffer server with the command line of CLI.md.

#![allow(clippy::print_stdout)] // "listening on ADDR" is the readiness contract

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use coffer_net::{Listener as _, Net as _, SystemClock, TokioNet};
use coffer_server::{Config, LogFormat, Server};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Coffer server: end-to-end encrypted file storage and sharing over TLS.
#[derive(Debug, Parser)]
#[command(name = "coffer-server", version)]
struct Cli {
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./coffer-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// This node's id [default: node-1].
    #[arg(long)]
    node_id: Option<String>,
    /// Certificate chain to serve (PEM), with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The deployment CA (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// File with the key that signs session tokens and TLS tickets, shared by a cluster [default: DATA/secret].
    #[arg(long)]
    cluster_secret_file: Option<PathBuf>,
    /// bcrypt cost of stored login secrets [default: 12].
    #[arg(long)]
    bcrypt_cost: Option<u32>,
    /// The admin account [default: the first one registered].
    #[arg(long)]
    admin: Option<String>,
    /// Another node of the cluster, as ID=IP:PORT; repeat for each.
    #[arg(long = "peer", value_name = "ID=IP:PORT", value_parser = parse_peer)]
    peers: Vec<(String, SocketAddr)>,
    /// Nodes that must hold a write before it is acknowledged [default: 2 with peers, else 1].
    #[arg(long)]
    write_quorum: Option<usize>,
}

fn parse_peer(s: &str) -> Result<(String, SocketAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=IP:PORT"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address (IP:PORT)"))?;
    Ok((id.to_owned(), addr))
}

impl Cli {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! flag {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        flag!(listen, data, node_id, log_format, bcrypt_cost);
        macro_rules! optional {
            ($($field:ident),*) => { $( if self.$field.is_some() { config.$field = self.$field; } )* };
        }
        optional!(
            tls_cert,
            tls_key,
            ca,
            cluster_secret_file,
            admin,
            write_quorum
        );
        if !self.peers.is_empty() {
            config.peers = self.peers.into_iter().collect();
        }
        Ok(config)
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Cli::parse().into_config()?;
    init_logging(config.log_format);
    let grace = config.shutdown_grace;
    let listen = config.listen;
    let server =
        Arc::new(Server::new(config, Arc::new(SystemClock)).context("starting the server")?);
    let listener = TokioNet
        .bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    println!("listening on {local}");

    let shutdown = CancellationToken::new();
    let mut serving = tokio::spawn(server.run(TokioNet, listener, shutdown.clone()));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let deadline: Duration = tokio::select! {
        result = &mut serving => return result.context("server task")?.context("serving"),
        _ = sigterm.recv() => grace,
        _ = sigint.recv() => grace / 10,
    };
    info!(?deadline, "shutting down");
    shutdown.cancel();
    match tokio::time::timeout(deadline, serving).await {
        Ok(result) => result.context("server task")?.context("serving")?,
        Err(_) => warn!("connections still open after {deadline:?}; exiting anyway"),
    }
    Ok(())
}
