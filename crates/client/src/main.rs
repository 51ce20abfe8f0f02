//! `coffer`: the Coffer command line.

#![allow(clippy::print_stdout)] // a command-line tool answers on stdout

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use coffer_client::{Client, ClientError, ClientTimeouts, Endpoint};
use coffer_net::{SystemClock, TokioNet, tls};
use coffer_proto::ErrorCode;
use rustls_pki_types::ServerName;

/// Coffer: end-to-end encrypted file sharing and folder sync.
#[derive(Debug, Parser)]
#[command(name = "coffer", version)]
struct Cli {
    /// Server (or balancer) address, HOST:PORT.
    #[arg(
        long,
        env = "COFFER_SERVER",
        default_value = "127.0.0.1:8000",
        global = true
    )]
    server: String,
    /// CA certificate (PEM) the server's certificate must be signed by. A local
    /// development server's is DATA/tls/ca.pem.
    #[arg(long, env = "COFFER_CA", global = true)]
    ca: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks that the server answers and is ready; prints its node and the round trip.
    Ping,
}

/// A failure with the code it is reported under.
struct Failure {
    code: ErrorCode,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let message = match &e {
            // The server's own words already carry the code.
            ClientError::Server(body) => body.message.clone(),
            other => other.to_string(),
        };
        Failure {
            code: e.code(),
            message,
        }
    }
}

fn bad_request(message: impl Into<String>) -> Failure {
    Failure {
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

async fn endpoint(cli: &Cli) -> Result<Endpoint, Failure> {
    let ca = cli
        .ca
        .as_ref()
        .ok_or_else(|| bad_request("no CA given: pass --ca FILE or set COFFER_CA"))?;
    let roots = tls::load_roots(ca).map_err(|e| bad_request(e.to_string()))?;
    let config = tls::client_config(roots, None, Arc::new(SystemClock))
        .map_err(|e| bad_request(e.to_string()))?;
    let (host, _) = cli
        .server
        .rsplit_once(':')
        .ok_or_else(|| bad_request(format!("--server {:?} is not HOST:PORT", cli.server)))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| bad_request(format!("{host:?} is not a valid server name")))?;
    let addr = tokio::net::lookup_host(&cli.server)
        .await
        .map_err(|e| Failure {
            code: ErrorCode::Unavailable,
            message: format!("cannot resolve {}: {e}", cli.server),
        })?
        .next()
        .ok_or_else(|| bad_request(format!("{} resolves to no address", cli.server)))?;
    Ok(Endpoint {
        addr,
        name,
        tls: config,
        ca_label: ca.display().to_string(),
        timeouts: ClientTimeouts::default(),
    })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let endpoint = endpoint(&cli).await?;
    match cli.command {
        Command::Ping => {
            let mut client = Client::connect(&TokioNet, &endpoint).await?;
            let started = Instant::now();
            let pong = client.ping().await?;
            let rtt_ms = started.elapsed().as_secs_f64() * 1000.0;
            if cli.json {
                let out = serde_json::json!({ "node_id": pong.node_id, "ready": pong.ready, "rtt_ms": rtt_ms });
                println!("{out}");
            } else {
                let state = if pong.ready { "ready" } else { "not ready" };
                println!("{} {state} ({rtt_ms:.1} ms)", pong.node_id);
            }
            if !pong.ready {
                return Err(Failure {
                    code: ErrorCode::Unavailable,
                    message: format!("{} is not ready", pong.node_id),
                });
            }
            Ok(())
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}: {}", failure.code, failure.message);
            ExitCode::FAILURE
        }
    }
}
