//! What each command does, and how it says so: human lines by default, the
//! JSON shapes of CLI.md with `--json`, one `error: <code>: <what>` line on
//! failure.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use coffer_client::account::{self, Credentials};
use coffer_client::folders;
use coffer_client::home::Account;
use coffer_client::sync::daemon;
use coffer_client::sync::engine::Folder;
use coffer_client::sync::state::AlertKind;
use coffer_client::transfer::{self, Progress, Source};
use coffer_client::{ClientError, ClientTimeouts, Endpoint, Home, Pool, Session};
use coffer_crypto::{FileKeyContext, KdfParams, UserKeys};
use coffer_net::TokioNet;
use coffer_proto::request::{
    Delete, DeviceRemove, DeviceRename, FileShare, FolderRef, FolderSetRole, List, Move, PathRef,
    Restore, SessionRevoke, Stat,
};
use coffer_proto::response::FolderInfo;
use coffer_proto::types::{Blob, EntryKind, Role};
use coffer_proto::{ErrorCode, Request, Response};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::{Cli, Command, DeviceCommand, FolderCommand, InviteCommand};

/// A failure with the code it is reported under.
pub(crate) struct Failure {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
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

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

/// Sends a request and takes its answer, which must be of the kind named
/// (anything else is a protocol error: a server bug, or another protocol).
macro_rules! ask {
    ($session:expr, $request:expr, $kind:ident) => {{
        let request = $request;
        let asked = coffer_proto::Message::kind(&request);
        match $session.call(request).await? {
            Response::$kind(answer) => answer,
            other => {
                let message = format!(
                    "`{}` in answer to {asked}",
                    coffer_proto::Message::kind(&other)
                );
                return Err(ClientError::Protocol(message).into());
            }
        }
    }};
}

/// What every command has to hand.
struct Context {
    server: String,
    ca: Option<PathBuf>,
    home_dir: PathBuf,
    json: bool,
    password_stdin: bool,
}

fn print(json: bool, value: Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        let text = human();
        if !text.is_empty() {
            println!("{text}");
        }
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Owner => "owner",
        Role::Editor => "editor",
        Role::Viewer => "viewer",
    }
}

/// Splits `FOLDER:PATH` (the first colon separates; a label holding a colon
/// is named by its id instead).
fn split_target(target: &str) -> (&str, &str) {
    target.split_once(':').unwrap_or((target, ""))
}

/// A progress bar on a terminal, nothing elsewhere.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(label: &str) -> Bar {
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("a valid template"),
        );
        bar.set_message(label.to_owned());
        Bar(Some(bar))
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Context {
    fn endpoint(&self) -> Result<Endpoint> {
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| usage("no CA given: pass --ca FILE or set COFFER_CA"))?;
        let (host, _) = self
            .server
            .rsplit_once(':')
            .ok_or_else(|| usage(format!("--server {:?} is not HOST:PORT", self.server)))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| usage(format!("{host:?} is not a valid server name")))?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&self.server)
            .map_err(|e| Failure {
                code: ErrorCode::Unavailable,
                message: format!("cannot resolve {}: {e}", self.server),
            })?
            .next()
            .ok_or_else(|| usage(format!("{} resolves to no address", self.server)))?;
        Endpoint::trusting(addr, name, ca, ClientTimeouts::default())
            .map_err(|e| usage(e.to_string()))
    }

    fn pool(&self, size: usize) -> Result<Pool<TokioNet>> {
        Ok(Pool::new(TokioNet, self.endpoint()?, size))
    }

    fn home(&self) -> Result<Home> {
        Ok(Home::open(&self.home_dir).map_err(ClientError::from)?)
    }

    fn password(&self) -> Result<Zeroizing<String>> {
        if self.password_stdin {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| usage(format!("reading the password from standard input: {e}")))?;
            let trimmed = line.trim_end_matches(['\n', '\r']).to_owned();
            return Ok(Zeroizing::new(trimmed));
        }
        if let Ok(p) = std::env::var("COFFER_PASSWORD") {
            return Ok(Zeroizing::new(p));
        }
        if !std::io::stdin().is_terminal() {
            return Err(usage(
                "no password: pass --password-stdin or set COFFER_PASSWORD",
            ));
        }
        rpassword::prompt_password("password: ")
            .map(Zeroizing::new)
            .map_err(|e| usage(format!("reading the password: {e}")))
    }

    /// The session of the account this home is signed in to, for commands
    /// that need nothing else of the home.
    fn signed_in(&self) -> Result<Session<TokioNet>> {
        let home = self.home()?;
        Ok(self.session(&home)?.0)
    }

    /// The session of the account this home is signed in to.
    fn session(&self, home: &Home) -> Result<(Session<TokioNet>, Account)> {
        self.session_over(home, transfer::CONNECTIONS)
    }

    /// [`Context::session`] over a pool of up to `connections`.
    fn session_over(
        &self,
        home: &Home,
        connections: usize,
    ) -> Result<(Session<TokioNet>, Account)> {
        let (account, der) = home
            .account()
            .map_err(ClientError::from)?
            .ok_or_else(|| Failure {
                code: ErrorCode::Unauthorized,
                message: format!(
                    "not logged in on this device ({}): run `coffer login USER`",
                    self.home_dir.display()
                ),
            })?;
        let keys = UserKeys::from_pkcs8_der(&der).map_err(ClientError::from)?;
        let pool = self.pool(connections)?;
        pool.set_token(Some(account.token.clone()));
        Ok((Session::new(pool, account.username.clone(), keys), account))
    }
}

pub(crate) async fn run(cli: Cli) -> Result<()> {
    let home_dir = match cli.home {
        Some(dir) => dir,
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".coffer"))
            .ok_or_else(|| usage("no home directory: pass --home DIR or set COFFER_HOME"))?,
    };
    let cx = Context {
        server: cli.server,
        ca: cli.ca,
        home_dir,
        json: cli.json,
        password_stdin: cli.password_stdin,
    };
    match cli.command {
        Command::Ping => ping(&cx).await,
        Command::Register { user, device, mac } => register(&cx, &user, device, mac).await,
        Command::Login { user, device, mac } => login(&cx, &user, device, mac).await,
        Command::Logout => logout(&cx).await,
        Command::Whoami => whoami(&cx).await,
        Command::Sessions { revoke } => sessions(&cx, revoke).await,
        Command::Device(command) => device(&cx, command).await,
        Command::Folder(command) => folder(&cx, command).await,
        Command::Invites => invites(&cx).await,
        Command::Invite(command) => invite(&cx, command).await,
        Command::Put { local, target } => put(&cx, &local, &target).await,
        Command::Get {
            source,
            local,
            version,
        } => get(&cx, &source, &local, version).await,
        Command::Ls { target, recursive } => ls(&cx, &target, recursive).await,
        Command::Rm { target } => rm(&cx, &target).await,
        Command::Mv {
            source,
            destination,
        } => mv(&cx, &source, &destination).await,
        Command::Mkdir { target } => mkdir(&cx, &target).await,
        Command::History { target } => history(&cx, &target).await,
        Command::Restore { target, version } => restore(&cx, &target, version).await,
        Command::Share { target, user } => share_file(&cx, &target, &user).await,
        Command::Shared => shared(&cx).await,
        Command::Sync { once, folders } => sync(&cx, once, &folders).await,
        Command::Status => status(&cx),
    }
}

/// The folder and the path in it that a `FOLDER:PATH` argument names.
async fn locate<'t>(session: &Session<TokioNet>, target: &'t str) -> Result<(FolderInfo, &'t str)> {
    let (folder, path) = split_target(target);
    Ok((session.resolve(folder).await?, path))
}

async fn ping(cx: &Context) -> Result<()> {
    let client = coffer_client::Client::connect(&TokioNet, &cx.endpoint()?).await?;
    let started = Instant::now();
    let pong = client.ping().await?;
    let rtt_ms = started.elapsed().as_secs_f64() * 1000.0;
    print(
        cx.json,
        json!({"node_id": pong.node_id, "ready": pong.ready, "rtt_ms": rtt_ms, "peers": pong.peers}),
        || {
            let state = if pong.ready { "ready" } else { "not ready" };
            format!("{} {state} ({rtt_ms:.1} ms)", pong.node_id)
        },
    );
    if !pong.ready {
        return Err(Failure {
            code: ErrorCode::Unavailable,
            message: format!("{} is not ready", pong.node_id),
        });
    }
    Ok(())
}

fn device_identity(device: Option<String>, mac: Option<String>) -> Result<(String, String)> {
    let name = device
        .or_else(account::host_name)
        .ok_or_else(|| usage("no host name to name this device: pass --device NAME"))?;
    let mac = mac
        .or_else(account::first_mac)
        .ok_or_else(|| usage("no network interface to identify this device: pass --mac MAC"))?;
    Ok((name, mac))
}

/// Binds this device to the session: the one this home knows, else one of the
/// account's devices with this MAC (a home made anew on the same machine),
/// else a new registration. Returns the device and the session to keep.
async fn bind_device(
    cx: &Context,
    credentials: &Credentials,
    mut session: Session<TokioNet>,
    mut info: coffer_proto::response::Session,
    name: String,
    mac: String,
) -> Result<(
    Session<TokioNet>,
    coffer_proto::response::Session,
    String,
    String,
)> {
    let mac = coffer_proto::name::normalize_mac(&mac).map_err(|e| usage(e.to_string()))?;
    let devices = ask!(session, Request::DeviceList, Devices);
    if let Some(known) = devices.devices.into_iter().find(|d| d.mac == mac) {
        // Sign in again, this time as that device.
        let keys =
            UserKeys::from_pkcs8_der(&session.keys().to_pkcs8_der()).map_err(ClientError::from)?;
        let _ = session.call(Request::Logout).await;
        let (again, again_info) = account::login(
            cx.pool(transfer::CONNECTIONS)?,
            credentials,
            Some(known.device_id.clone()),
            Some(keys),
        )
        .await?;
        session = again;
        info = again_info;
        return Ok((session, info, known.device_id, known.name));
    }
    let device = account::register_device(&session, &name, &mac).await?;
    Ok((session, info, device.device_id, device.name))
}

async fn register(
    cx: &Context,
    user: &str,
    device: Option<String>,
    mac: Option<String>,
) -> Result<()> {
    let (name, mac) = device_identity(device, mac)?;
    let credentials = Credentials::new(user, cx.password()?)?;
    let home = cx.home()?;
    let pool = cx.pool(transfer::CONNECTIONS)?;
    let kdf = KdfParams::recommended(&mut rand_os());
    let (registered, keys) = account::register(&pool, &credentials, kdf).await?;
    let (session, info) = account::login(pool, &credentials, None, Some(keys)).await?;
    let (session, info, device_id, device_name) =
        bind_device(cx, &credentials, session, info, name, mac).await?;
    save_account(cx, &home, &session, &info, &device_id, &device_name)?;
    print(
        cx.json,
        json!({"user": registered.username, "role": format!("{:?}", registered.role).to_lowercase(),
               "device": device_name, "device_id": device_id}),
        || {
            format!(
                "registered {} ({:?}) with device {device_name}",
                registered.username, registered.role
            )
            .to_lowercase()
        },
    );
    Ok(())
}

fn rand_os() -> rand_chacha::ChaCha20Rng {
    <rand_chacha::ChaCha20Rng as rand::SeedableRng>::try_from_rng(&mut rand::rngs::SysRng)
        .expect("the operating system provides randomness")
}

fn save_account(
    cx: &Context,
    home: &Home,
    session: &Session<TokioNet>,
    info: &coffer_proto::response::Session,
    device_id: &str,
    device_name: &str,
) -> Result<()> {
    let account = Account {
        server: cx.server.clone(),
        username: info.username.clone(),
        token: info.token.clone(),
        session_id: info.session_id.clone(),
        device_id: Some(device_id.to_owned()),
        device_name: Some(device_name.to_owned()),
    };
    home.set_account(&account, &session.keys().to_pkcs8_der())
        .map_err(ClientError::from)?;
    Ok(())
}

async fn login(
    cx: &Context,
    user: &str,
    device: Option<String>,
    mac: Option<String>,
) -> Result<()> {
    let credentials = Credentials::new(user, cx.password()?)?;
    let home = cx.home()?;
    // A home that knows this user keeps its device and its keys.
    let known = home
        .account()
        .map_err(ClientError::from)?
        .filter(|(a, _)| a.username == credentials.username);
    let (device_id, keys) = match &known {
        Some((a, der)) => (
            a.device_id.clone(),
            Some(UserKeys::from_pkcs8_der(der).map_err(ClientError::from)?),
        ),
        None => (None, None),
    };
    let (session, info) = account::login(
        cx.pool(transfer::CONNECTIONS)?,
        &credentials,
        device_id.clone(),
        keys,
    )
    .await?;
    let (session, info, device_id, device_name) = match (device_id, known) {
        (Some(id), Some((a, _))) => (session, info, id, a.device_name.unwrap_or_default()),
        _ => {
            let (name, mac) = device_identity(device, mac)?;
            bind_device(cx, &credentials, session, info, name, mac).await?
        }
    };
    save_account(cx, &home, &session, &info, &device_id, &device_name)?;
    print(
        cx.json,
        json!({"user": info.username, "device": device_name, "device_id": device_id, "expires": rfc3339(info.expires_ms)}),
        || format!("logged in as {} on {device_name}", info.username),
    );
    Ok(())
}

async fn logout(cx: &Context) -> Result<()> {
    let home = cx.home()?;
    if let Ok((session, _)) = cx.session(&home) {
        // The session ends on the server if it can be reached; the keys go
        // from this device either way.
        let _ = session.call(Request::Logout).await;
    }
    home.sign_out().map_err(ClientError::from)?;
    print(cx.json, json!({"logged_out": true}), || "logged out".into());
    Ok(())
}

async fn whoami(cx: &Context) -> Result<()> {
    let session = cx.signed_in()?;
    let me = ask!(session, Request::Whoami, Whoami);
    print(
        cx.json,
        json!({"user": me.username, "device": me.device_name, "device_id": me.device_id,
               "server_node": me.node_id, "role": format!("{:?}", me.role).to_lowercase()}),
        || {
            format!(
                "{} on {} (served by {})",
                me.username,
                me.device_name.as_deref().unwrap_or("no device"),
                me.node_id
            )
        },
    );
    Ok(())
}

async fn sessions(cx: &Context, revoke: Option<String>) -> Result<()> {
    let session = cx.signed_in()?;
    if let Some(id) = revoke {
        session
            .call(Request::SessionRevoke(SessionRevoke {
                session_id: id.clone(),
            }))
            .await?;
        print(cx.json, json!({"revoked": id}), || {
            format!("revoked session {id}")
        });
        return Ok(());
    }
    let list = ask!(session, Request::SessionList, Sessions);
    let rows: Vec<Value> = list
        .sessions
        .iter()
        .map(|s| {
            json!({"session_id": s.session_id, "device_id": s.device_id, "created": rfc3339(s.created_ms),
                   "expires": rfc3339(s.expires_ms), "current": s.current})
        })
        .collect();
    print(cx.json, Value::from(rows), || {
        list.sessions
            .iter()
            .map(|s| {
                format!(
                    "{}{}  device {}  expires {}",
                    s.session_id,
                    if s.current { " (this one)" } else { "" },
                    s.device_id.as_deref().unwrap_or("-"),
                    rfc3339(s.expires_ms)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

async fn device(cx: &Context, command: DeviceCommand) -> Result<()> {
    let home = cx.home()?;
    let (session, account) = cx.session(&home)?;
    let devices = ask!(session, Request::DeviceList, Devices);
    match command {
        DeviceCommand::List => {
            let rows: Vec<Value> = devices
                .devices
                .iter()
                .map(|d| {
                    json!({"device_id": d.device_id, "name": d.name, "mac": d.mac,
                           "this": Some(&d.device_id) == account.device_id.as_ref()})
                })
                .collect();
            print(cx.json, Value::from(rows), || {
                devices
                    .devices
                    .iter()
                    .map(|d| {
                        let this = if Some(&d.device_id) == account.device_id.as_ref() {
                            " (this one)"
                        } else {
                            ""
                        };
                        format!("{}{this}  {}  {}", d.name, d.mac, d.device_id)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        DeviceCommand::Rename { name } => {
            let device_id = account
                .device_id
                .ok_or_else(|| usage("this home has no device registered"))?;
            session
                .call(Request::DeviceRename(DeviceRename {
                    device_id: device_id.clone(),
                    name: name.clone(),
                }))
                .await?;
            home.set_device(&device_id, &name)
                .map_err(ClientError::from)?;
            print(
                cx.json,
                json!({"device_id": device_id, "name": name}),
                || format!("renamed to {name}"),
            );
        }
        DeviceCommand::Remove { name } => {
            let device = devices
                .devices
                .iter()
                .find(|d| d.name == name || d.device_id == name)
                .ok_or_else(|| Failure {
                    code: ErrorCode::NotFound,
                    message: format!("no device {name:?}"),
                })?;
            session
                .call(Request::DeviceRemove(DeviceRemove {
                    device_id: device.device_id.clone(),
                }))
                .await?;
            print(cx.json, json!({"removed": device.device_id}), || {
                format!("removed {}", device.name)
            });
        }
    }
    Ok(())
}

fn attach_dir(home: &Home, folder_id: &str, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|source| ClientError::Local {
        path: dir.to_owned(),
        source,
    })?;
    let dir = std::fs::canonicalize(dir).map_err(|source| ClientError::Local {
        path: dir.to_owned(),
        source,
    })?;
    home.attach(folder_id, &dir).map_err(ClientError::from)?;
    Ok(dir)
}

async fn folder(cx: &Context, command: FolderCommand) -> Result<()> {
    let home = cx.home()?;
    let (session, _) = cx.session(&home)?;
    match command {
        FolderCommand::Create { label, path } => {
            let f = folders::create(&session, label).await?;
            let attached = match path {
                Some(dir) => Some(attach_dir(&home, &f.folder_id, &dir)?),
                None => None,
            };
            print(
                cx.json,
                json!({"folder_id": f.folder_id, "label": f.label, "path": attached}),
                || f.folder_id.clone(),
            );
        }
        FolderCommand::List => {
            let folders = session.folders().await?;
            let mut rows = Vec::new();
            let mut lines = Vec::new();
            for f in &folders {
                let path = home.attachment(&f.folder_id).map_err(ClientError::from)?;
                rows.push(
                    json!({"folder_id": f.folder_id, "label": f.label, "role": role_name(f.role),
                                 "path": path, "owner": f.owner, "epoch": f.epoch}),
                );
                lines.push(format!(
                    "{}  {}  {}{}",
                    f.folder_id,
                    f.label,
                    role_name(f.role),
                    path.map(|p| format!("  {}", p.display()))
                        .unwrap_or_default()
                ));
            }
            print(cx.json, Value::from(rows), || lines.join("\n"));
        }
        FolderCommand::Info { folder } => {
            let f = session.resolve(&folder).await?;
            let detail = folders::detail(&session, &f.folder_id).await?;
            let members: Vec<Value> = detail
                .members
                .iter()
                .map(|m| {
                    json!({"user": m.username, "role": role_name(m.role),
                                "status": format!("{:?}", m.status).to_lowercase()})
                })
                .collect();
            print(
                cx.json,
                json!({"folder_id": f.folder_id, "label": f.label, "owner": f.owner, "role": role_name(f.role),
                       "epoch": detail.folder.epoch, "members": members}),
                || {
                    let mut out = format!(
                        "{} ({})\nowner {}, key epoch {}\n",
                        f.label, f.folder_id, f.owner, detail.folder.epoch
                    );
                    for m in &detail.members {
                        out.push_str(&format!(
                            "  {} {}{}\n",
                            m.username,
                            role_name(m.role),
                            if m.status == coffer_proto::types::MemberStatus::Invited {
                                " (invited)"
                            } else {
                                ""
                            }
                        ));
                    }
                    out.trim_end().to_owned()
                },
            );
        }
        FolderCommand::Share { folder, user, role } => {
            let f = session.resolve(&folder).await?;
            let (invitee, key) = folders::share(&session, &f, &user, role.into()).await?;
            eprintln!("{invitee}'s key fingerprint: {}", key.fingerprint());
            print(
                cx.json,
                json!({"folder_id": f.folder_id, "invited": invitee, "role": role_name(role.into()),
                       "fingerprint": key.fingerprint()}),
                || {
                    format!(
                        "invited {invitee} to \"{}\" as {}",
                        f.label,
                        role_name(role.into())
                    )
                },
            );
        }
        FolderCommand::Unshare { folder, user } => {
            let f = session.resolve(&folder).await?;
            let member =
                coffer_proto::name::normalize_username(&user).map_err(|e| usage(e.to_string()))?;
            let epoch = folders::unshare(&session, &f, &member).await?;
            print(
                cx.json,
                json!({"folder_id": f.folder_id, "removed": member, "epoch": epoch}),
                || {
                    format!(
                        "removed {member} from \"{}\"; the folder key is now at epoch {epoch}",
                        f.label
                    )
                },
            );
        }
        FolderCommand::Role { folder, user, role } => {
            let f = session.resolve(&folder).await?;
            session
                .call(Request::FolderSetRole(FolderSetRole {
                    folder_id: f.folder_id.clone(),
                    username: user.clone(),
                    role: role.into(),
                }))
                .await?;
            print(
                cx.json,
                json!({"folder_id": f.folder_id, "user": user, "role": role_name(role.into())}),
                || {
                    format!(
                        "{user} is now {} of \"{}\"",
                        role_name(role.into()),
                        f.label
                    )
                },
            );
        }
        FolderCommand::Attach { folder, dir } => {
            let f = session.resolve(&folder).await?;
            let dir = attach_dir(&home, &f.folder_id, &dir)?;
            print(
                cx.json,
                json!({"folder_id": f.folder_id, "path": dir}),
                || format!("\"{}\" attached to {}", f.label, dir.display()),
            );
        }
        FolderCommand::Detach { folder } => {
            let f = session.resolve(&folder).await?;
            let was = home.detach(&f.folder_id).map_err(ClientError::from)?;
            print(
                cx.json,
                json!({"folder_id": f.folder_id, "detached": was}),
                || {
                    if was {
                        format!("\"{}\" detached", f.label)
                    } else {
                        format!("\"{}\" was not attached", f.label)
                    }
                },
            );
        }
    }
    Ok(())
}

async fn invites(cx: &Context) -> Result<()> {
    let session = cx.signed_in()?;
    let invites = folders::invites(&session).await?;
    let rows: Vec<Value> = invites
        .iter()
        .map(|i| json!({"folder_id": i.folder_id, "label": i.label, "from": i.from, "role": role_name(i.role)}))
        .collect();
    print(cx.json, Value::from(rows), || {
        invites
            .iter()
            .map(|i| {
                format!(
                    "{}  \"{}\" from {} as {}",
                    i.folder_id,
                    i.label,
                    i.from,
                    role_name(i.role)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

async fn invite(cx: &Context, command: InviteCommand) -> Result<()> {
    let home = cx.home()?;
    let (session, _) = cx.session(&home)?;
    let invites = folders::invites(&session).await?;
    let find = |folder: &str| {
        let mut matching = invites
            .iter()
            .filter(|i| i.folder_id == folder || i.label == folder);
        match (matching.next(), matching.next()) {
            (Some(i), None) => Ok(i.clone()),
            (Some(_), Some(_)) => Err(usage(format!(
                "several invitations are labelled {folder:?}; use the id"
            ))),
            (None, _) => Err(Failure {
                code: ErrorCode::NotFound,
                message: format!("no invitation to {folder:?}"),
            }),
        }
    };
    match command {
        InviteCommand::Accept { folder, path } => {
            let i = find(&folder)?;
            folders::accept(&session, &i.folder_id).await?;
            let attached = match path {
                Some(dir) => Some(attach_dir(&home, &i.folder_id, &dir)?),
                None => None,
            };
            print(
                cx.json,
                json!({"folder_id": i.folder_id, "label": i.label, "path": attached}),
                || format!("joined \"{}\" as {}", i.label, role_name(i.role)),
            );
        }
        InviteCommand::Decline { folder } => {
            let i = find(&folder)?;
            session
                .call(Request::InviteDecline(FolderRef {
                    folder_id: i.folder_id.clone(),
                }))
                .await?;
            print(
                cx.json,
                json!({"folder_id": i.folder_id, "declined": true}),
                || format!("declined \"{}\"", i.label),
            );
        }
    }
    Ok(())
}

async fn put(cx: &Context, local: &Path, target: &str) -> Result<()> {
    let home = cx.home()?;
    let (session, _) = cx.session(&home)?;
    let (f, path) = locate(&session, target).await?;
    let name = local
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| usage(format!("{} has no file name", local.display())))?;
    let path = if path.is_empty() {
        name.to_owned()
    } else if path.ends_with('/') {
        format!("{path}{name}")
    } else {
        path.to_owned()
    };
    let bar = Bar::new(&path);
    let report = transfer::put(
        &session,
        &home,
        local,
        &f,
        &path,
        &bar,
        &transfer::PutOptions::default(),
    )
    .await?;
    drop(bar);
    let entry = &report.entry;
    print(
        cx.json,
        json!({"path": entry.path, "size": entry.size, "sha256": hex::encode(report.sha256),
               "version": entry.version, "resumed": report.resumed, "chunks_sent": report.chunks_sent}),
        || {
            format!(
                "{}:{} version {} ({} bytes{})",
                f.label,
                entry.path,
                entry.version,
                entry.size,
                if report.resumed { ", resumed" } else { "" }
            )
        },
    );
    Ok(())
}

async fn get(cx: &Context, source: &str, local: &Path, version: Option<u64>) -> Result<()> {
    let session = cx.signed_in()?;
    let (folder, path) = split_target(source);
    let bar = Bar::new(path);
    let report = if folder == "shared" {
        transfer::get(&session, Source::Share(path), local, &bar, false).await?
    } else {
        if path.is_empty() {
            return Err(usage("name a file: FOLDER:PATH"));
        }
        let f = session.resolve(folder).await?;
        let source = Source::Folder {
            folder_id: &f.folder_id,
            path,
            version,
        };
        transfer::get(&session, source, local, &bar, false).await?
    };
    drop(bar);
    print(
        cx.json,
        json!({"path": report.written, "size": report.size, "sha256": hex::encode(report.sha256),
               "version": report.entry.version}),
        || format!("{} ({} bytes)", report.written.display(), report.size),
    );
    Ok(())
}

async fn ls(cx: &Context, target: &str, recursive: bool) -> Result<()> {
    let session = cx.signed_in()?;
    let (f, dir) = locate(&session, target).await?;
    let dir = dir.trim_end_matches('/');
    let mut entries = Vec::new();
    let mut cursor = None;
    loop {
        let page = ask!(
            session,
            Request::List(List {
                folder_id: f.folder_id.clone(),
                dir: (!dir.is_empty()).then(|| dir.to_owned()),
                recursive,
                deleted: false,
                cursor: cursor.take(),
                limit: None,
            }),
            Listing
        );
        entries.extend(page.entries);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let kind = |k: EntryKind| if k == EntryKind::Dir { "dir" } else { "file" };
    let rows: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({"path": e.path, "size": e.size, "kind": kind(e.kind), "version": e.version,
                        "modified": rfc3339(e.modified_ms)})
        })
        .collect();
    print(cx.json, Value::from(rows), || {
        entries
            .iter()
            .map(|e| {
                let name = if e.kind == EntryKind::Dir {
                    format!("{}/", e.path)
                } else {
                    e.path.clone()
                };
                format!(
                    "{:>12}  v{:<4} {}  {}",
                    e.size,
                    e.version,
                    rfc3339(e.modified_ms),
                    name
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

fn entry_line(folder: &FolderInfo, e: &coffer_proto::types::FileEntry) -> String {
    format!("{}:{} version {}", folder.label, e.path, e.version)
}

async fn rm(cx: &Context, target: &str) -> Result<()> {
    let session = cx.signed_in()?;
    let (f, path) = locate(&session, target).await?;
    let e = ask!(
        session,
        Request::Delete(Delete {
            folder_id: f.folder_id.clone(),
            path: path.to_owned(),
            base: None,
            write_id: Some(session.write_id()),
        }),
        Entry
    );
    print(
        cx.json,
        json!({"path": e.path, "version": e.version, "deleted": true}),
        || format!("deleted {}", entry_line(&f, &e)),
    );
    Ok(())
}

async fn mv(cx: &Context, source: &str, destination: &str) -> Result<()> {
    let session = cx.signed_in()?;
    let (from_folder, from) = split_target(source);
    let (to_folder, to) = split_target(destination);
    let f = session.resolve(from_folder).await?;
    let g = session.resolve(to_folder).await?;
    if f.folder_id != g.folder_id {
        return Err(usage(
            "a move stays within one folder; copy with get and put across folders",
        ));
    }
    let e = ask!(
        session,
        Request::Move(Move {
            folder_id: f.folder_id.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
            base: None,
            write_id: Some(session.write_id()),
        }),
        Entry
    );
    print(
        cx.json,
        json!({"path": e.path, "from": from, "version": e.version}),
        || format!("moved {from} to {}", entry_line(&f, &e)),
    );
    Ok(())
}

async fn mkdir(cx: &Context, target: &str) -> Result<()> {
    let session = cx.signed_in()?;
    let (f, path) = locate(&session, target).await?;
    let e = ask!(
        session,
        Request::Mkdir(PathRef {
            folder_id: f.folder_id.clone(),
            path: path.trim_end_matches('/').to_owned(),
        }),
        Entry
    );
    print(
        cx.json,
        json!({"path": e.path, "kind": "dir", "version": e.version}),
        || format!("made {}/", e.path),
    );
    Ok(())
}

async fn history(cx: &Context, target: &str) -> Result<()> {
    let session = cx.signed_in()?;
    let (f, path) = locate(&session, target).await?;
    let h = ask!(
        session,
        Request::History(PathRef {
            folder_id: f.folder_id.clone(),
            path: path.to_owned(),
        }),
        History
    );
    // Devices are named by their owner's names where this account knows them.
    let names: std::collections::HashMap<String, String> =
        match session.call(Request::DeviceList).await? {
            Response::Devices(d) => d
                .devices
                .into_iter()
                .map(|d| (d.device_id, d.name))
                .collect(),
            _ => Default::default(),
        };
    let device = |id: &Option<String>| id.as_ref().map(|id| names.get(id).unwrap_or(id).clone());
    let rows: Vec<Value> = h
        .versions
        .iter()
        .map(|v| json!({"version": v.version, "size": v.size, "modified": rfc3339(v.modified_ms),
                        "device": device(&v.device_id), "device_id": v.device_id, "deleted": v.deleted}))
        .collect();
    print(cx.json, Value::from(rows), || {
        h.versions
            .iter()
            .map(|v| {
                format!(
                    "v{:<4} {:>12}  {}  {}{}",
                    v.version,
                    v.size,
                    rfc3339(v.modified_ms),
                    device(&v.device_id).as_deref().unwrap_or("-"),
                    if v.deleted { "  (deleted)" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

async fn restore(cx: &Context, target: &str, version: u64) -> Result<()> {
    let session = cx.signed_in()?;
    let (f, path) = locate(&session, target).await?;
    let e = ask!(
        session,
        Request::Restore(Restore {
            folder_id: f.folder_id.clone(),
            path: path.to_owned(),
            version,
            write_id: Some(session.write_id()),
        }),
        Entry
    );
    print(
        cx.json,
        json!({"path": e.path, "version": e.version, "restored_from": version}),
        || format!("restored version {version} as {}", entry_line(&f, &e)),
    );
    Ok(())
}

async fn share_file(cx: &Context, target: &str, user: &str) -> Result<()> {
    let session = cx.signed_in()?;
    let (f, path) = locate(&session, target).await?;
    let entry = ask!(
        session,
        Request::Stat(Stat {
            folder_id: f.folder_id.clone(),
            path: path.to_owned(),
            version: None,
            inline: false,
        }),
        Entry
    );
    if entry.kind != EntryKind::File {
        return Err(usage(format!(
            "{path} is a directory; share the folder instead"
        )));
    }
    let folder_key = session.folder_key(&f.folder_id, entry.epoch).await?;
    let ctx = FileKeyContext {
        folder_id: &f.folder_id,
        epoch: entry.epoch,
        file_id: entry.file_id.0,
    };
    let file_key =
        coffer_crypto::unwrap_file_key(&folder_key, ctx, entry.wrapped_file_key.as_bytes())
            .map_err(|e| {
                ClientError::Integrity(format!("the file key of {path} does not unwrap: {e}"))
            })?;
    let (recipient, key) = folders::public_key(&session, user).await?;
    eprintln!("{recipient}'s key fingerprint: {}", key.fingerprint());
    let wrapped = key.wrap_file_key(&mut *session.rng(), &file_key);
    let shared = ask!(
        session,
        Request::FileShare(FileShare {
            folder_id: f.folder_id.clone(),
            path: path.to_owned(),
            username: recipient.clone(),
            wrapped_key: Blob(wrapped),
        }),
        FileShared
    );
    print(
        cx.json,
        json!({"share_id": shared.share_id, "path": path, "user": recipient, "fingerprint": key.fingerprint()}),
        || {
            format!(
                "shared {path} with {recipient}: they fetch it with `coffer get shared:{}`",
                shared.share_id
            )
        },
    );
    Ok(())
}

async fn shared(cx: &Context) -> Result<()> {
    let session = cx.signed_in()?;
    let list = ask!(session, Request::SharedList, Shared);
    let rows: Vec<Value> = list
        .shares
        .iter()
        .map(|s| {
            json!({"share_id": s.share_id, "from": s.from, "path": s.path, "size": s.size,
                        "shared": rfc3339(s.created_ms)})
        })
        .collect();
    print(cx.json, Value::from(rows), || {
        list.shares
            .iter()
            .map(|s| {
                format!(
                    "shared:{}  {} from {} ({} bytes)",
                    s.share_id, s.path, s.from, s.size
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// Resolves the folders to sync: every attached folder the account still
/// belongs to, or those named.
async fn synced_folders(
    home: &Home,
    session: &Session<TokioNet>,
    names: &[String],
) -> Result<Vec<Folder>> {
    let attached = home.attachments().map_err(ClientError::from)?;
    let server = session.folders().await?;
    let mut out = Vec::new();
    for (folder_id, root) in attached {
        let Some(info) = server.iter().find(|f| f.folder_id == folder_id) else {
            tracing::warn!(
                folder_id,
                "attached, but you are no longer a member: skipped"
            );
            continue;
        };
        if !names.is_empty() && !names.iter().any(|n| *n == info.label || *n == folder_id) {
            continue;
        }
        out.push(Folder {
            info: info.clone(),
            root,
        });
    }
    for name in names {
        if !out
            .iter()
            .any(|f| f.info.label == *name || f.info.folder_id == *name)
        {
            return Err(usage(format!(
                "{name:?} is not an attached folder: `coffer folder attach {name} DIR` first"
            )));
        }
    }
    if out.is_empty() {
        return Err(usage(
            "no folder is attached to a directory on this device: `coffer folder attach FOLDER DIR`",
        ));
    }
    Ok(out)
}

/// Resolves once SIGINT or SIGTERM arrives.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn sync(cx: &Context, once: bool, names: &[String]) -> Result<()> {
    // The daemon says what it does on standard error (RUST_LOG to tune).
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("coffer_client=info")),
        )
        .try_init();
    let home = cx.home()?;
    let (session, account) = cx.session_over(&home, daemon::CONNECTIONS)?;
    let folders = synced_folders(&home, &session, names).await?;
    let device = account
        .device_name
        .clone()
        .or(account.device_id.clone())
        .unwrap_or_else(|| "device".to_owned());
    for f in &folders {
        tracing::info!(folder = %f.info.label, root = %f.root.display(), role = role_name(f.info.role), "syncing");
    }
    let options = daemon::Options {
        once,
        ..daemon::Options::default()
    };
    let summary = daemon::run(&home, &session, &device, folders, &options, stop_signal()).await?;
    print(
        cx.json,
        json!({
            "queued": summary.queued,
            "sent": summary.sent,
            "applied": summary.applied,
            "conflicts": summary.conflicts,
            "bytes_sent": summary.bytes_sent,
        }),
        || {
            format!(
                "sent {} changes, applied {}, {} conflicts",
                summary.sent, summary.applied, summary.conflicts
            )
        },
    );
    Ok(())
}

fn status(cx: &Context) -> Result<()> {
    let home = cx.home()?;
    let queue = home.queue();
    let state = home.sync_state();
    let mut rows = Vec::new();
    for (folder_id, root) in home.attachments().map_err(ClientError::from)? {
        let pending = queue.pending(&folder_id).map_err(ClientError::from)?;
        let failing = queue.failing(&folder_id).map_err(ClientError::from)?;
        let conflicts = state
            .count(&folder_id, AlertKind::Conflict)
            .map_err(ClientError::from)?
            + state
                .count(&folder_id, AlertKind::ViewerEdit)
                .map_err(ClientError::from)?;
        let synced = state.listed(&folder_id).map_err(ClientError::from)?;
        let condition = if failing > 0 {
            "error"
        } else if pending > 0 || !synced {
            "pending"
        } else {
            "synced"
        };
        rows.push(json!({
            "folder_id": folder_id,
            "path": root,
            "state": condition,
            "pending": pending,
            "conflicts": conflicts,
        }));
    }
    let alerts = state.alerts(10).map_err(ClientError::from)?;
    print(cx.json, Value::Array(rows.clone()), || {
        let mut out: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{}  {}  {}  {} pending  {} conflicts",
                    r["folder_id"].as_str().unwrap_or_default(),
                    r["path"].as_str().unwrap_or_default(),
                    r["state"].as_str().unwrap_or_default(),
                    r["pending"],
                    r["conflicts"]
                )
            })
            .collect();
        if out.is_empty() {
            out.push("no folder is attached on this device".to_owned());
        }
        if !alerts.is_empty() {
            out.push("latest alerts:".to_owned());
            out.extend(alerts.iter().map(|a| {
                format!(
                    "  {}  {:?}  {}",
                    rfc3339(a.created_ms.max(0) as u64),
                    a.kind,
                    a.message
                )
            }));
        }
        out.join("\n")
    });
    Ok(())
}
