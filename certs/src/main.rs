//! `coffer-certs`: make a CA, server certificates and cluster peer certificates.

#![allow(clippy::print_stdout)] // a command-line tool reports on stdout

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use coffer_certs::{CA_DAYS, Ca, Kind, LEAF_DAYS, Validity};
use time::OffsetDateTime;

/// Certificates for a Coffer deployment.
#[derive(Debug, Parser)]
#[command(name = "coffer-certs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates a CA: DIR/ca.pem and DIR/ca.key.
    Ca {
        /// Directory to write to.
        #[arg(long)]
        out: PathBuf,
        /// Common name of the CA.
        #[arg(long, default_value = "Coffer CA")]
        name: String,
        /// Days of validity.
        #[arg(long, default_value_t = CA_DAYS)]
        days: i64,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issues a server certificate: DIR/NAME.pem (chain) and DIR/NAME.key.
    Server(Leaf),
    /// Issues a cluster peer certificate for node NAME: DIR/NAME.pem and DIR/NAME.key.
    Peer(Leaf),
}

#[derive(Debug, clap::Args)]
struct Leaf {
    /// Directory holding ca.pem and ca.key.
    #[arg(long)]
    ca: PathBuf,
    /// Server name, or node id for a peer.
    #[arg(long)]
    name: String,
    /// Host name or IP address the certificate is valid for (repeatable).
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Directory to write to.
    #[arg(long)]
    out: PathBuf,
    /// Days of validity.
    #[arg(long, default_value_t = LEAF_DAYS)]
    days: i64,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

fn issue(kind: Kind, leaf: Leaf) -> anyhow::Result<()> {
    let ca =
        Ca::load(&leaf.ca).with_context(|| format!("loading the CA from {}", leaf.ca.display()))?;
    let validity = Validity::days_from(OffsetDateTime::now_utc(), leaf.days);
    let issued = ca
        .issue(kind, &leaf.name, &leaf.sans, validity)
        .with_context(|| format!("issuing a certificate for {}", leaf.name))?;
    let (cert, key) = issued.write(&leaf.out, &leaf.name, leaf.force)?;
    println!("wrote {} and {}", cert.display(), key.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ca {
            out,
            name,
            days,
            force,
        } => {
            let ca = Ca::generate(&name, Validity::days_from(OffsetDateTime::now_utc(), days))?;
            ca.write(&out, force)
                .with_context(|| format!("writing the CA to {}", out.display()))?;
            println!(
                "wrote {} and {}",
                out.join("ca.pem").display(),
                out.join("ca.key").display()
            );
            Ok(())
        }
        Command::Server(leaf) => issue(Kind::Server, leaf),
        Command::Peer(leaf) => issue(Kind::Peer, leaf),
    }
}
