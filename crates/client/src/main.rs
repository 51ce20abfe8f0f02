//! `coffer`: the Coffer command line.

#![allow(clippy::print_stdout)] // a command-line tool answers on stdout

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coffer_proto::types::Role;

mod cli;

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
    /// This device's state [default: ~/.coffer].
    #[arg(long, env = "COFFER_HOME", global = true)]
    home: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// Read the password from the first line of standard input.
    #[arg(long, global = true)]
    password_stdin: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates an account (keys made here), logs in and registers this device.
    Register {
        /// The username: 3 to 32 of a-z, 0-9, '_', '.', '-'.
        user: String,
        /// This device's name [default: the host name].
        #[arg(long)]
        device: Option<String>,
        /// This device's MAC address [default: the first network interface's].
        #[arg(long)]
        mac: Option<String>,
    },
    /// Logs in; registers this device if the home has none.
    Login {
        /// The username.
        user: String,
        /// This device's name [default: the host name].
        #[arg(long)]
        device: Option<String>,
        /// This device's MAC address [default: the first network interface's].
        #[arg(long)]
        mac: Option<String>,
    },
    /// Ends the session and forgets the keys cached here.
    Logout,
    /// Who this device is signed in as.
    Whoami,
    /// Lists the account's sessions, or revokes one.
    Sessions {
        /// A session to revoke.
        #[arg(long)]
        revoke: Option<String>,
    },
    /// The account's devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Folders, members and sharing.
    #[command(subcommand)]
    Folder(FolderCommand),
    /// Invitations waiting for you.
    Invites,
    /// Answers an invitation.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Uploads a file: `put LOCAL FOLDER:PATH` (a PATH ending in / takes the file's name).
    Put {
        /// The local file.
        local: PathBuf,
        /// FOLDER:PATH — FOLDER is a folder id or label.
        target: String,
    },
    /// Downloads a file: `get FOLDER:PATH LOCAL`, or `get shared:ID LOCAL`.
    Get {
        /// FOLDER:PATH, or shared:ID.
        source: String,
        /// A file to write, or a directory to write into.
        local: PathBuf,
        /// An older version, from `history`.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Lists a folder or a directory in it: `ls FOLDER[:DIR]`.
    Ls {
        /// FOLDER or FOLDER:DIR.
        target: String,
        /// Everything below, not just the directory.
        #[arg(long, short)]
        recursive: bool,
    },
    /// Deletes a file or directory (kept in history).
    Rm {
        /// FOLDER:PATH.
        target: String,
    },
    /// Moves or renames within a folder: `mv FOLDER:SRC FOLDER:DST`.
    Mv {
        /// FOLDER:SRC.
        source: String,
        /// FOLDER:DST.
        destination: String,
    },
    /// Creates a directory (and its parents).
    Mkdir {
        /// FOLDER:DIR.
        target: String,
    },
    /// The versions of a path, newest first.
    History {
        /// FOLDER:PATH.
        target: String,
    },
    /// Makes an older version the newest.
    Restore {
        /// FOLDER:PATH.
        target: String,
        /// The version, from `history`.
        #[arg(long)]
        version: u64,
    },
    /// Shares one file, read-only, with a user.
    Share {
        /// FOLDER:PATH.
        target: String,
        /// The recipient.
        user: String,
    },
    /// Files shared with you (`coffer get shared:ID LOCAL` fetches one).
    Shared,
    /// Keeps the attached folders in sync with the server until stopped
    /// (SIGINT, SIGTERM).
    Sync {
        /// Sync until nothing is left to do, then exit.
        #[arg(long)]
        once: bool,
        /// Folders (label or id) to sync [default: every attached folder].
        folders: Vec<String>,
    },
    /// Per attached folder: synced, pending or in error; changes waiting;
    /// conflicts. Then the latest alerts.
    Status,
    /// Checks that the server answers and is ready; prints its node and the round trip.
    Ping,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Lists the account's devices.
    List,
    /// Renames this device.
    Rename {
        /// The new name.
        name: String,
    },
    /// Removes a device (by name or id) and ends its sessions.
    Remove {
        /// The device.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum FolderCommand {
    /// Creates a folder; prints its id.
    Create {
        /// Its label.
        label: String,
        /// Attach it to this local directory for sync.
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Lists your folders.
    List,
    /// A folder and its members.
    Info {
        /// Folder id or label.
        folder: String,
    },
    /// Invites a user (the folder's keys are wrapped for their public key).
    Share {
        /// Folder id or label.
        folder: String,
        /// The invitee.
        user: String,
        /// Their role.
        #[arg(long, value_enum, default_value = "viewer")]
        role: RoleArg,
    },
    /// Removes a member and rotates the folder key.
    Unshare {
        /// Folder id or label.
        folder: String,
        /// The member.
        user: String,
    },
    /// Changes a member's role.
    Role {
        /// Folder id or label.
        folder: String,
        /// The member.
        user: String,
        /// The new role.
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Attaches a folder to a local directory for sync.
    Attach {
        /// Folder id or label.
        folder: String,
        /// The directory.
        dir: PathBuf,
    },
    /// Detaches a folder from its local directory.
    Detach {
        /// Folder id or label.
        folder: String,
    },
}

#[derive(Debug, Subcommand)]
enum InviteCommand {
    /// Accepts an invitation.
    Accept {
        /// Folder id or label.
        folder: String,
        /// Attach it to this local directory for sync.
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Declines an invitation.
    Decline {
        /// Folder id or label.
        folder: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Viewer,
    Editor,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Editor => Role::Editor,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}: {}", failure.code, failure.message);
            ExitCode::FAILURE
        }
    }
}
