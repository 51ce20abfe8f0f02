//! The files workload: users and their devices doing what users do through
//! the real client library — register, sign in, create and share a folder,
//! accept the invitation, upload files of random sizes (multi-chunk ones
//! too), download them, move and delete them, edit the same file from two
//! devices, reconnect — while a stranger keeps trying to read what is not
//! theirs. The [`Ledger`] records what the system acknowledged and checks
//! every read against it.
//!
//! Devices, by client index: `client-1` and `client-2` are alice's, `client-3`
//! is bob's (invited as an editor), `client-4` is carol's, who is invited to
//! nothing.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use coffer_client::account::{self, Credentials};
use coffer_client::transfer::{self, NoJournal, PutOptions, Quiet, Source};
use coffer_client::{Client, ClientError, Endpoint, Pool, Session, folders};
use coffer_crypto::{KdfParams, UserKeys};
use coffer_proto::request::{Delete, List, Move, PathRef, Restore, Stat};
use coffer_proto::response::FolderInfo;
use coffer_proto::types::{Causality, EntryKind, FileEntry, FileId, Role, Token, VersionVector};
use coffer_proto::{ErrorCode, Request, Response};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};
use sha2::Digest as _;
use std::time::Duration;
use zeroize::Zeroizing;

use crate::net::TurmoilNet;

/// The users, in device order.
const USERS: [&str; 3] = ["alice", "bob", "carol"];
const PASSWORD: &str = "correct horse battery staple";
/// Paths the members' devices write: few, so that devices edit the same
/// files. The first three are only ever written and read — every version
/// acknowledged there must read back at the end; the others are also moved
/// and deleted.
const PATHS: [&str; 6] = ["a.txt", "docs/d.md", "docs/deep/f", "b.bin", "c", "docs/e"];
/// Where the moved and deleted paths start in [`PATHS`].
const CHURNED: usize = 3;
/// Versions of each path the servers keep.
pub(crate) const KEEP_VERSIONS: u32 = 10;
/// Where the race's two edits go: nothing else writes there.
pub(crate) const RACE_DIR: &str = "race";

/// The user of client `index` (0-based).
fn user_of(index: usize) -> usize {
    [0, 0, 1, 2][index % 4]
}

/// Each user's key pair, made once per process from a fixed seed: RSA key
/// generation is the slowest thing a run would do, and the same seed always
/// gives the same keys.
fn user_keys(user: usize) -> UserKeys {
    static KEYS: OnceLock<Vec<UserKeys>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..USERS.len())
            .map(|i| UserKeys::generate(&mut ChaCha20Rng::seed_from_u64(0xC0FF_EE00 + i as u64)))
            .collect()
    })[user]
        .clone()
}

/// Sabotage of the workload itself (see [`crate::Sabotage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leak {
    /// Play fair.
    None,
    /// alice also invites carol, and carol accepts — without the ledger
    /// being told: carol then reads what the model says she may not.
    Carol,
    /// alice tells the ledger she removed bob without asking the servers.
    Bob,
}

/// An upload the system acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Acked {
    path: String,
    file_id: FileId,
    version: u64,
    /// Names the write: no two writes of a path share one.
    vv: VersionVector,
    sha256: [u8; 32],
}

/// Two devices of alice's edit one new file at once, each through its own
/// server, while the first server is cut off from the others: the edits
/// cannot see each other, so once the servers meet again every node must
/// keep one under the path and the other as a conflict copy.
#[derive(Debug)]
pub struct Race {
    path: String,
    /// The server (index) each racer — `client-1`, `client-2` — writes
    /// through; the first is the one cut off.
    nodes: [usize; 2],
    /// Whether edits may still be made: the first server is still cut off.
    pub(crate) open: bool,
    edits: [Option<Edit>; 2],
}

/// One racer's edit and what became of it.
#[derive(Debug, Clone)]
struct Edit {
    sha256: [u8; 32],
    written: Written,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// Acknowledged: held by a quorum.
    Acked(FileId),
    /// Answered `unavailable` by a node that says it wrote the edit but
    /// could not reach a quorum (it keeps it and passes it on later).
    Kept,
    /// Failed otherwise: written or not.
    Unknown,
    /// Never tried: the race was over first.
    Skipped,
}

impl Race {
    pub(crate) fn new(seed: u64, nodes: [usize; 2]) -> Race {
        Race {
            path: format!("{RACE_DIR}/r{:x}.txt", seed % 4096),
            nodes,
            open: true,
            edits: [None, None],
        }
    }

    /// Both racers are done.
    pub(crate) fn done(&self) -> bool {
        self.edits.iter().all(Option::is_some)
    }
}

/// What the system acknowledged, and what the oracle found wrong.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The shared folder, once alice created it and invited bob.
    folder: Option<FolderInfo>,
    registered: [bool; 3],
    joined: bool,
    /// Acknowledged uploads, in the order they were acknowledged.
    acked: Vec<Acked>,
    /// The race, once it has begun.
    pub(crate) race: Option<Race>,
    /// alice is to remove bob from the folder now.
    pub(crate) unshare_due: bool,
    /// alice's removal of bob was acknowledged.
    unshared: bool,
    /// Each user's newest session token, good on every node.
    tokens: [Option<Token>; 3],
    /// Races found as one winner and one conflict copy on every node.
    pub conflicts: u32,
    /// Paths a move or delete was attempted on: what was acknowledged there
    /// may have gone with them, so the final sweep leaves them out.
    touched: BTreeSet<String>,
    /// Clients with a multi-chunk upload in flight (where the fault schedule
    /// drops connections).
    pub(crate) uploading: BTreeSet<String>,
    /// Devices done with their last steps.
    pub(crate) finished: usize,
    /// Reads checked against an acknowledged upload.
    pub checked_reads: u32,
    /// Reads a stranger or a connection without a session attempted.
    pub probes: u32,
    /// Violations of the invariants the ledger checks: acknowledged data
    /// reads back intact and is never lost, no access without a right,
    /// concurrent edits kept as one winner and one copy, replicas that
    /// converge.
    pub violations: Vec<String>,
}

impl Ledger {
    /// A read of `path` found `entry` with content `sha256`. A read may find
    /// any version a node holds — an older one through a node that lags, or
    /// one that was never acknowledged (written where no quorum answered) —
    /// but a version that is an acknowledged write (the same version vector
    /// and file) must have that write's content.
    fn read(&mut self, who: &str, path: &str, entry: &FileEntry, sha256: [u8; 32]) {
        let acked = self
            .acked
            .iter()
            .find(|a| a.path == path && a.vv == entry.vv && a.file_id == entry.file_id);
        if let Some(acked) = acked {
            self.checked_reads += 1;
            if acked.sha256 != sha256 {
                self.violations.push(format!(
                    "{who} read {path} v{} with a SHA-256 other than the one acknowledged",
                    entry.version
                ));
            }
        }
    }

    fn failed_read(&mut self, who: &str, path: &str, e: &ClientError) {
        if matches!(e, ClientError::Integrity(_)) {
            self.violations
                .push(format!("{who} read {path}: integrity failure: {e}"));
        }
    }

    /// Acknowledged uploads at paths no move or delete touched, by path.
    fn untouched(&self) -> BTreeMap<String, Vec<Acked>> {
        let mut by_path: BTreeMap<String, Vec<Acked>> = BTreeMap::new();
        for a in self
            .acked
            .iter()
            .filter(|a| !self.touched.contains(&a.path))
        {
            by_path.entry(a.path.clone()).or_default().push(a.clone());
        }
        by_path
    }
}

/// Whether `copy` is a conflict copy of `path` (see
/// [`coffer_proto::path::conflict_name`]): beside it, its name's stem then
/// `.conflict-`, its extension kept.
fn is_copy_of(copy: &str, path: &str) -> bool {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let (copy_dir, copy_name) = copy.rsplit_once('/').unwrap_or(("", copy));
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    dir == copy_dir
        && copy_name
            .strip_prefix(stem)
            .and_then(|rest| rest.strip_prefix(".conflict-"))
            .is_some_and(|rest| rest.ends_with(ext) && !rest.is_empty())
}

/// One simulated device.
pub(crate) struct Device {
    pub(crate) name: String,
    index: usize,
    endpoint: Endpoint,
    /// Each server, reached directly.
    direct: Vec<Endpoint>,
    rng: ChaCha8Rng,
    session: Option<Session<TurmoilNet>>,
    scratch: PathBuf,
    leak: Leak,
    seed: u64,
    logins: u64,
}

/// How an operation ended, for the oracle: done (an expected answer,
/// including refusals the model predicts), or failed with a typed error.
pub(crate) type Done = Result<String, ClientError>;

/// Answers the model expects in the normal course of things: a path another
/// device already moved or deleted, an edit that raced another.
fn expected(e: &ClientError) -> bool {
    matches!(e.code(), ErrorCode::NotFound | ErrorCode::Conflict)
}

impl Device {
    pub(crate) fn new(
        name: String,
        index: usize,
        (endpoint, direct): (Endpoint, Vec<Endpoint>),
        seed: u64,
        scratch: &Path,
        leak: Leak,
    ) -> Device {
        let scratch = scratch.join(&name);
        std::fs::create_dir_all(&scratch).expect("the scratch directory is writable");
        Device {
            name,
            index,
            endpoint,
            direct,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xD0_0000 ^ index as u64),
            session: None,
            scratch,
            leak,
            seed,
            logins: 0,
        }
    }

    fn user(&self) -> usize {
        user_of(self.index)
    }

    fn first_device(&self) -> bool {
        self.index == [0, 2, 3][self.user()]
    }

    /// Whether this device is set up: signed in, and the folder shared and
    /// joined.
    pub(crate) fn set_up(&self, ledger: &Ledger) -> bool {
        self.session.is_some() && ledger.joined
    }

    /// One step of the workload: whatever this device should do next.
    pub(crate) async fn step(&mut self, ledger: &RefCell<Ledger>) -> Done {
        if self.session.is_none() {
            return self.sign_in(ledger).await;
        }
        let user = self.user();
        let folder = ledger.borrow().folder.clone();
        let (unshare_due, unshared) = {
            let l = ledger.borrow();
            (l.unshare_due, l.unshared)
        };
        let racer = self.index < 2
            && ledger
                .borrow()
                .race
                .as_ref()
                .is_some_and(|r| r.edits[self.index].is_none());
        match (USERS[user], folder) {
            ("alice", None) if self.first_device() => self.create_and_share(ledger).await,
            ("bob", Some(_)) if !ledger.borrow().joined => self.join(ledger).await,
            ("carol", folder) => self.probe(ledger, folder).await,
            (_, None) => Ok("waiting for the folder".into()),
            ("alice", Some(folder)) if racer => self.race(ledger, &folder).await,
            ("alice", Some(folder)) if unshare_due && !unshared && self.first_device() => {
                self.unshare(ledger, &folder).await
            }
            ("bob", Some(folder)) if unshared => self.removed(&folder).await,
            (_, Some(folder)) => self.file_op(ledger, &folder).await,
        }
    }

    /// A session on server `node` alone, signed in with `user`'s newest
    /// token (tokens are good on every node).
    fn direct_session(
        &self,
        ledger: &RefCell<Ledger>,
        node: usize,
        user: usize,
    ) -> Option<Session<TurmoilNet>> {
        let token = ledger.borrow().tokens[user].clone()?;
        let seed = self.seed ^ ((self.index as u64) << 40) ^ ((node as u64 + 1) << 56);
        let pool = Pool::new(TurmoilNet, self.direct[node].clone(), 1).with_seed(seed);
        pool.set_token(Some(token));
        Some(Session::new(pool, USERS[user].to_owned(), user_keys(user)).with_seed(seed ^ 3))
    }

    /// The racer's edit: a new file at the race's path, through its own
    /// server, while the race is on.
    async fn race(&mut self, ledger: &RefCell<Ledger>, folder: &FolderInfo) -> Done {
        let (path, node, open) = {
            let l = ledger.borrow();
            let race = l.race.as_ref().expect("racing");
            (race.path.clone(), race.nodes[self.index], race.open)
        };
        let record = |edit: Edit| {
            if let Some(race) = ledger.borrow_mut().race.as_mut() {
                race.edits[self.index] = Some(edit);
            }
        };
        if !open {
            record(Edit {
                sha256: [0; 32],
                written: Written::Skipped,
            });
            return Ok("race over before this edit".into());
        }
        let Some(session) = self.direct_session(ledger, node, self.user()) else {
            return Ok("no token to race with".into());
        };
        let mut bytes = vec![0u8; self.rng.random_range(1..4096)];
        self.rng.fill_bytes(&mut bytes);
        let sha256: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        let local = self.scratch.join("race");
        std::fs::write(&local, &bytes).map_err(|source| ClientError::Local {
            path: local.clone(),
            source,
        })?;
        let put = transfer::put(
            &session,
            &NoJournal,
            &local,
            folder,
            &path,
            &Quiet,
            // A new file, as a device that has not seen the other's: the
            // later edit is refused `conflict` if the earlier one reached
            // its server first, so that both are acknowledged only when
            // they truly raced.
            &PutOptions {
                base: transfer::Base::Known(None),
                ..PutOptions::default()
            },
        )
        .await;
        let written = match &put {
            Ok(report) => Written::Acked(report.entry.file_id),
            Err(ClientError::Server(e))
                if e.code == ErrorCode::Unavailable
                    && e.message.contains("written on this node") =>
            {
                Written::Kept
            }
            Err(_) => Written::Unknown,
        };
        record(Edit {
            sha256,
            written: written.clone(),
        });
        match put {
            Ok(report) => Ok(format!(
                "race {path} through server-{} v{}",
                node + 1,
                report.entry.version
            )),
            Err(e) => Ok(format!(
                "race {path} through server-{}: {written:?}: {e}",
                node + 1
            )),
        }
    }

    /// alice removes bob from the folder; repeated until it is known done
    /// (an answer lost on the way is found out from the members).
    async fn unshare(&mut self, ledger: &RefCell<Ledger>, folder: &FolderInfo) -> Done {
        if self.leak == Leak::Bob {
            ledger.borrow_mut().unshared = true;
            return Ok("pretended to remove bob".into());
        }
        let s = self.session();
        let done = match folders::unshare(s, folder, "bob").await {
            Ok(_) => true,
            Err(e) => {
                let detail = folders::detail(s, &folder.folder_id).await?;
                if detail.members.iter().any(|m| m.username == "bob") {
                    return Err(e);
                }
                true
            }
        };
        let detail = folders::detail(s, &folder.folder_id).await?;
        let mut l = ledger.borrow_mut();
        l.unshared = done;
        l.folder = Some(detail.folder);
        Ok("removed bob".into())
    }

    /// bob, removed from the folder, tries to list it: a node that has not
    /// heard of the removal yet may still answer; after the heal none may
    /// (checked by [`Device::check_unshare`]).
    async fn removed(&mut self, folder: &FolderInfo) -> Done {
        match self.session().call(list(folder)).await {
            Ok(_) => Ok("removed, but still answered".into()),
            Err(ClientError::Server(e)) if refusal(e.code) => {
                Ok(format!("removed, refused: {}", e.code))
            }
            Err(e) => Err(e),
        }
    }

    async fn sign_in(&mut self, ledger: &RefCell<Ledger>) -> Done {
        let user = self.user();
        let credentials =
            Credentials::new(USERS[user], Zeroizing::new(PASSWORD.to_owned())).expect("valid");
        self.logins += 1;
        let pool_seed = self.seed ^ ((self.index as u64) << 40) ^ (self.logins << 20);
        let pool = Pool::new(TurmoilNet, self.endpoint.clone(), 2).with_seed(pool_seed);
        let registered = ledger.borrow().registered[user];
        if !registered {
            if !self.first_device() {
                return Ok("waiting for the account".into());
            }
            let kdf = KdfParams::with_cost(&mut self.rng, 8, 1, 1);
            let mut rng = ChaCha20Rng::seed_from_u64(pool_seed ^ 1);
            match account::register_keys(&pool, &credentials, kdf, user_keys(user), &mut rng).await
            {
                Ok(_) => {}
                // An earlier attempt went through but its answer was lost.
                Err(e) if e.code() == ErrorCode::Conflict => {}
                Err(e) => return Err(e),
            }
            ledger.borrow_mut().registered[user] = true;
        }
        let (session, info) = account::login(pool, &credentials, None, None).await?;
        ledger.borrow_mut().tokens[user] = Some(info.token);
        self.session = Some(session.with_seed(pool_seed ^ 2));
        Ok("signed in".into())
    }

    fn session(&self) -> &Session<TurmoilNet> {
        self.session.as_ref().expect("signed in")
    }

    async fn create_and_share(&mut self, ledger: &RefCell<Ledger>) -> Done {
        let s = self.session();
        let folder = folders::create(s, "shared".into()).await?;
        folders::share(s, &folder, "bob", Role::Editor).await?;
        if self.leak == Leak::Carol {
            folders::share(s, &folder, "carol", Role::Viewer).await?;
        }
        ledger.borrow_mut().folder = Some(folder);
        Ok("created and shared the folder".into())
    }

    async fn join(&mut self, ledger: &RefCell<Ledger>) -> Done {
        let s = self.session();
        let invites = folders::invites(s).await?;
        let folder_id = ledger.borrow().folder.as_ref().map(|f| f.folder_id.clone());
        match invites
            .iter()
            .find(|i| Some(&i.folder_id) == folder_id.as_ref())
        {
            Some(invite) => {
                folders::accept(s, &invite.folder_id).await?;
                ledger.borrow_mut().joined = true;
                Ok("accepted".into())
            }
            None => Ok("no invitation yet".into()),
        }
    }

    /// carol, and a connection that never signed in, try to read the shared
    /// folder. Every such read must be refused.
    async fn probe(&mut self, ledger: &RefCell<Ledger>, folder: Option<FolderInfo>) -> Done {
        let Some(folder) = folder else {
            return Ok("nothing to probe yet".into());
        };
        if self.leak == Leak::Carol && self.logins == 1 {
            // The sabotage: carol quietly joins.
            let s = self.session();
            if folders::invites(s)
                .await?
                .iter()
                .any(|i| i.folder_id == folder.folder_id)
            {
                folders::accept(s, &folder.folder_id).await?;
            }
        }
        let list = list(&folder);
        let stat = Request::Stat(Stat {
            folder_id: folder.folder_id.clone(),
            path: PATHS[self.rng.random_range(0..PATHS.len())].into(),
            version: None,
            inline: false,
        });
        let request = if self.rng.random_bool(0.5) {
            list
        } else {
            stat
        };
        let kind = coffer_proto::Message::kind(&request).to_owned();
        let anonymous = self.rng.random_bool(0.3);
        let answer = if anonymous {
            let client = Client::connect(&TurmoilNet, &self.endpoint).await?;
            client.call(request).await.map(|_| ())
        } else {
            self.session().call(request).await.map(|_| ())
        };
        let who = if anonymous {
            "a connection without a session"
        } else {
            "carol"
        };
        match answer {
            Ok(()) => {
                let mut ledger = ledger.borrow_mut();
                ledger.probes += 1;
                ledger.violations.push(format!(
                    "{who} was answered a {kind} of a folder she is not in"
                ));
                Ok(format!("{kind} answered"))
            }
            Err(ClientError::Server(e)) if refusal(e.code) => {
                ledger.borrow_mut().probes += 1;
                Ok(format!("{kind} refused: {}", e.code))
            }
            Err(e) => Err(e),
        }
    }

    async fn file_op(&mut self, ledger: &RefCell<Ledger>, folder: &FolderInfo) -> Done {
        let path = PATHS[self.rng.random_range(0..PATHS.len())];
        let roll = self.rng.random_range(0..100u32);
        let done = match roll {
            0..40 => self.put(ledger, folder, path).await,
            40..75 => self
                .get(ledger, folder, path, None)
                .await
                .map(|report| format!("get {path} v{}", report.entry.version)),
            75..85 => {
                let from = self.rng.random_range(CHURNED..PATHS.len());
                let to = CHURNED
                    + (from - CHURNED + self.rng.random_range(1..PATHS.len() - CHURNED))
                        % (PATHS.len() - CHURNED);
                let (path, to) = (PATHS[from], PATHS[to]);
                ledger
                    .borrow_mut()
                    .touched
                    .extend([path.to_owned(), to.to_owned()]);
                let request = Request::Move(Move {
                    folder_id: folder.folder_id.clone(),
                    from: path.into(),
                    to: to.into(),
                    base: None,
                    write_id: Some(self.session().write_id()),
                });
                self.session()
                    .call(request)
                    .await
                    .map(|_| format!("mv {path} {to}"))
            }
            85..93 => {
                let path = PATHS[self.rng.random_range(CHURNED..PATHS.len())];
                ledger.borrow_mut().touched.insert(path.to_owned());
                let request = Request::Delete(Delete {
                    folder_id: folder.folder_id.clone(),
                    path: path.into(),
                    base: None,
                    write_id: Some(self.session().write_id()),
                });
                self.session()
                    .call(request)
                    .await
                    .map(|_| format!("rm {path}"))
            }
            93..96 => {
                let path = PATHS[self.rng.random_range(CHURNED..PATHS.len())];
                ledger.borrow_mut().touched.insert(path.to_owned());
                self.restore(ledger, folder, path).await
            }
            _ => {
                self.session().pool().reset().await;
                Ok("reconnected".into())
            }
        };
        match done {
            Err(e) if expected(&e) => Ok(format!("{path}: {}", e.code())),
            other => other,
        }
    }

    /// `history` of `path`, then one of its earlier versions that is not a
    /// deletion made the newest again, by its number — as `coffer restore`
    /// does. The history a node lists is derived from the versions it
    /// keeps, so every node lists the same once they have converged (the
    /// replica digest covers every kept version).
    async fn restore(&mut self, ledger: &RefCell<Ledger>, folder: &FolderInfo, path: &str) -> Done {
        let request = Request::History(PathRef {
            folder_id: folder.folder_id.clone(),
            path: path.to_owned(),
        });
        let versions = match self.session().call(request).await? {
            Response::History(history) => history.versions,
            other => return Err(unexpected("history", &other)),
        };
        // Newest first, numbered one apart, whenever it is asked.
        if versions
            .windows(2)
            .any(|w| w[1].version + 1 != w[0].version)
        {
            let why = format!(
                "the history of {path} is not numbered one apart: {:?}",
                versions.iter().map(|v| v.version).collect::<Vec<_>>()
            );
            ledger.borrow_mut().violations.push(why.clone());
            return Err(ClientError::Protocol(why));
        }
        let earlier: Vec<u64> = versions
            .iter()
            .skip(1)
            .filter(|v| !v.deleted)
            .map(|v| v.version)
            .collect();
        if earlier.is_empty() {
            return Ok(format!("history {path}: nothing to restore"));
        }
        let version = earlier[self.rng.random_range(0..earlier.len())];
        let request = Request::Restore(Restore {
            folder_id: folder.folder_id.clone(),
            path: path.to_owned(),
            version,
            write_id: Some(self.session().write_id()),
        });
        match self.session().call(request).await {
            Ok(Response::Entry(e)) => Ok(format!("restore {path} v{version} as v{}", e.version)),
            Ok(other) => Err(unexpected("restore", &other)),
            // Another device's write came between: the number now names a
            // deletion.
            Err(ClientError::Server(e))
                if e.code == ErrorCode::BadRequest && e.message.contains("is a deletion") =>
            {
                Ok(format!("restore {path} v{version}: now a deletion"))
            }
            Err(e) => Err(e),
        }
    }

    async fn put(&mut self, ledger: &RefCell<Ledger>, folder: &FolderInfo, path: &str) -> Done {
        let size = match self.rng.random_range(0..100u32) {
            0..5 => 0,
            5..60 => self.rng.random_range(1..4096),
            60..90 => self.rng.random_range(4096..100_000),
            // Two chunks.
            _ => (1 << 20) + self.rng.random_range(1..65_536),
        };
        let mut bytes = vec![0u8; size];
        self.rng.fill_bytes(&mut bytes);
        let local = self.scratch.join("upload");
        std::fs::write(&local, &bytes).map_err(|source| ClientError::Local {
            path: local.clone(),
            source,
        })?;
        let multi = size > 1 << 20;
        if multi {
            ledger.borrow_mut().uploading.insert(self.name.clone());
        }
        let put = transfer::put(
            self.session(),
            &NoJournal,
            &local,
            folder,
            path,
            &Quiet,
            &PutOptions::default(),
        )
        .await;
        ledger.borrow_mut().uploading.remove(&self.name);
        let report = put?;
        let e = &report.entry;
        ledger.borrow_mut().acked.push(Acked {
            path: e.path.clone(),
            file_id: e.file_id,
            version: e.version,
            vv: e.vv.clone(),
            sha256: report.sha256,
        });
        Ok(format!("put {path} v{} ({size} bytes)", e.version))
    }

    async fn get(
        &mut self,
        ledger: &RefCell<Ledger>,
        folder: &FolderInfo,
        path: &str,
        version: Option<u64>,
    ) -> Result<transfer::GetReport, ClientError> {
        let dest = self.scratch.join("download");
        let source = Source::Folder {
            folder_id: &folder.folder_id,
            path,
            version,
        };
        match transfer::get(self.session(), source, &dest, &Quiet, false).await {
            Ok(report) => {
                ledger
                    .borrow_mut()
                    .read(&self.name, path, &report.entry, report.sha256);
                Ok(report)
            }
            Err(e) => {
                ledger.borrow_mut().failed_read(&self.name, path, &e);
                Err(e)
            }
        }
    }

    /// After the heal, through every node: no acknowledged upload (at a path
    /// no move or delete touched) is lost. Each is found — under its path at
    /// its version, or as a conflict copy beside it, by its version vector
    /// and file id — and reads back with its SHA-256; or a version the node
    /// holds there (the path's newest, the one at its number, a copy) has
    /// seen it, which is how a superseded version may leave the history.
    pub(crate) async fn sweep(
        &mut self,
        ledger: &RefCell<Ledger>,
        replicas: &crate::replicas::Replicas,
    ) -> Done {
        let Some(folder) = ledger.borrow().folder.clone() else {
            return Ok("no folder".into());
        };
        let acked = ledger.borrow().untouched();
        let (mut found, mut superseded) = (0, 0);
        for node in 0..self.direct.len() {
            let Some(s) = self.direct_session(ledger, node, self.user()) else {
                return Ok("no token".into());
            };
            let listed = listing(&s, &folder, None, true).await?;
            for (path, writes) in &acked {
                let mut held: Vec<FileEntry> = Vec::new();
                held.extend(stat(&s, &folder, path, None).await?);
                for copy in listed.iter().filter(|c| is_copy_of(c, path)) {
                    held.extend(stat(&s, &folder, copy, None).await?);
                }
                for w in writes {
                    let mut here = held.clone();
                    here.extend(stat(&s, &folder, path, Some(w.version)).await?);
                    let holder = here
                        .iter()
                        .find(|e| e.vv == w.vv && e.file_id == w.file_id && !e.deleted);
                    let why = match holder {
                        Some(e) => {
                            found += 1;
                            let version = Some(e.version);
                            match read_back(&s, &folder, &e.path, version, &self.scratch).await {
                                Ok((_, sha)) if sha == w.sha256 => continue,
                                Ok(_) => format!("{} reads back with other content", e.path),
                                Err(e) => e.to_string(),
                            }
                        }
                        None if here
                            .iter()
                            .any(|e| w.vv.compare(&e.vv) == Causality::Before) =>
                        {
                            superseded += 1;
                            continue;
                        }
                        None => {
                            // The same upload committed through two nodes
                            // (retried after `unavailable`) is one version on
                            // every node, under one of the two vectors: the
                            // one acknowledged may be the other. Its content
                            // tells it, random as it is.
                            let mut same = false;
                            for e in here.iter().filter(|e| e.file_id == w.file_id && !e.deleted) {
                                let version = Some(e.version);
                                if let Ok((_, sha)) =
                                    read_back(&s, &folder, &e.path, version, &self.scratch).await
                                    && sha == w.sha256
                                {
                                    same = true;
                                    break;
                                }
                            }
                            if same {
                                found += 1;
                                continue;
                            }
                            // Or that one, superseded since, has been seen.
                            match replicas.seen_through_twin(node, path, &w.vv) {
                                Ok(true) => {
                                    superseded += 1;
                                    continue;
                                }
                                Ok(false) => "neither under its path nor as a conflict copy, \
                                              and nothing there has seen it"
                                    .to_owned(),
                                Err(e) => format!("its twins and versions could not be read: {e}"),
                            }
                        }
                    };
                    ledger.borrow_mut().violations.push(format!(
                        "acknowledged {path} v{} {:?} is lost on server-{}: {why}",
                        w.version,
                        w.vv,
                        node + 1
                    ));
                }
            }
        }
        Ok(format!(
            "swept {} nodes: {found} acknowledged uploads found, {superseded} superseded",
            self.direct.len()
        ))
    }

    /// After the heal, through every node: the race's edits that were
    /// written are each kept exactly once — the winner under the path, the
    /// other as its conflict copy — with nothing else there, the same on
    /// every node.
    pub(crate) async fn check_race(&mut self, ledger: &RefCell<Ledger>) -> Done {
        let (Some(folder), Some((path, edits))) = ({
            let l = ledger.borrow();
            (
                l.folder.clone(),
                l.race.as_ref().map(|r| (r.path.clone(), r.edits.clone())),
            )
        }) else {
            return Ok("no race".into());
        };
        let edits: Vec<Edit> = edits.into_iter().flatten().collect();
        let written: Vec<&Edit> = edits
            .iter()
            .filter(|e| matches!(e.written, Written::Acked(_) | Written::Kept))
            .collect();
        let mut first: Option<BTreeMap<String, [u8; 32]>> = None;
        let mut violations = Vec::new();
        for node in 0..self.direct.len() {
            let Some(s) = self.direct_session(ledger, node, self.user()) else {
                return Ok("no token".into());
            };
            let mut held: BTreeMap<String, [u8; 32]> = BTreeMap::new();
            for p in listing(&s, &folder, Some(RACE_DIR), false).await? {
                let (entry, sha) = read_back(&s, &folder, &p, None, &self.scratch).await?;
                if let Some(e) = edits.iter().find(|e| e.sha256 == sha)
                    && let Written::Acked(id) = e.written
                    && id != entry.file_id
                {
                    violations.push(format!(
                        "server-{}: {p} holds a race edit under another file id",
                        node + 1
                    ));
                }
                held.insert(p, sha);
            }
            let on = format!("server-{}", node + 1);
            for (p, sha) in &held {
                if !edits
                    .iter()
                    .any(|e| e.sha256 == *sha && e.written != Written::Skipped)
                {
                    violations.push(format!("{on}: {p} holds content no race edit wrote"));
                }
                if *p != path && !is_copy_of(p, &path) {
                    violations.push(format!("{on}: {p} is neither {path} nor a copy of it"));
                }
            }
            for e in &edits {
                let n = held.values().filter(|sha| **sha == e.sha256).count();
                if n > 1 || (n == 0 && written.iter().any(|w| w.sha256 == e.sha256)) {
                    violations.push(format!(
                        "{on}: the race's {:?} edit is kept {n} times, not once",
                        e.written
                    ));
                }
            }
            if !held.is_empty() && !held.contains_key(&path) {
                violations.push(format!("{on}: copies of {path} but no winner under it"));
            }
            match &first {
                None => first = Some(held),
                Some(f) if *f != held => violations.push(format!(
                    "{on} keeps other race files than server-1: {:?} against {:?}",
                    held.keys().collect::<Vec<_>>(),
                    f.keys().collect::<Vec<_>>()
                )),
                Some(_) => {}
            }
        }
        let mut l = ledger.borrow_mut();
        let outcome = format!(
            "race: {} of 2 edits written, {} problems",
            written.len(),
            violations.len()
        );
        if written.len() == 2 && violations.is_empty() {
            l.conflicts += 1;
        }
        l.violations
            .extend(violations.into_iter().map(|v| format!("race: {v}")));
        Ok(outcome)
    }

    /// After the heal, through every node: once alice has removed bob, every
    /// node refuses him the folder — at once, or within a bound (a node may
    /// still be taking the removal in).
    pub(crate) async fn check_unshare(&mut self, ledger: &RefCell<Ledger>) -> Done {
        let (folder, unshared) = {
            let l = ledger.borrow();
            (l.folder.clone(), l.unshared)
        };
        let Some(folder) = folder else {
            return Ok("no folder".into());
        };
        if !unshared {
            ledger
                .borrow_mut()
                .violations
                .push("alice's removal of bob was never acknowledged".into());
            return Ok("bob never removed".into());
        }
        let bob = 1;
        for node in 0..self.direct.len() {
            let Some(s) = self.direct_session(ledger, node, bob) else {
                return Ok("no token of bob's".into());
            };
            let mut answered = true;
            for _ in 0..UNSHARE_POLLS {
                match s.call(list(&folder)).await {
                    Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(ClientError::Server(e)) if refusal(e.code) => {
                        answered = false;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if answered {
                ledger.borrow_mut().violations.push(format!(
                    "bob, removed from the folder, is still answered a list by server-{} \
                     after {UNSHARE_POLLS} tries",
                    node + 1
                ));
            }
        }
        Ok(format!("bob refused by {} nodes", self.direct.len()))
    }
}

/// Tries a removed member gets from each node before a violation.
const UNSHARE_POLLS: u32 = 20;

/// Whether `code` refuses access (rather than failing).
fn refusal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Forbidden | ErrorCode::NotFound | ErrorCode::Unauthorized
    )
}

/// A listing of the whole folder.
fn list(folder: &FolderInfo) -> Request {
    Request::List(List {
        folder_id: folder.folder_id.clone(),
        dir: None,
        recursive: true,
        deleted: false,
        cursor: None,
        limit: None,
    })
}

/// The paths of the live files under `dir`, every page.
async fn listing(
    s: &Session<TurmoilNet>,
    folder: &FolderInfo,
    dir: Option<&str>,
    recursive: bool,
) -> Result<Vec<String>, ClientError> {
    let mut paths = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let request = Request::List(List {
            folder_id: folder.folder_id.clone(),
            dir: dir.map(str::to_owned),
            recursive,
            deleted: false,
            cursor: cursor.take(),
            limit: None,
        });
        let page = match s.call(request).await {
            Ok(Response::Listing(page)) => page,
            Ok(other) => return Err(unexpected("list", &other)),
            // A directory nothing was written to.
            Err(e) if e.code() == ErrorCode::NotFound => return Ok(paths),
            Err(e) => return Err(e),
        };
        paths.extend(
            page.entries
                .into_iter()
                .filter(|e| e.kind == EntryKind::File && !e.deleted)
                .map(|e| e.path),
        );
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(paths),
        }
    }
    Err(ClientError::Protocol(
        "a listing of more than 100 pages".into(),
    ))
}

/// `path` (at `version`, else the newest) as the node holds it; none when
/// it holds no such version.
async fn stat(
    s: &Session<TurmoilNet>,
    folder: &FolderInfo,
    path: &str,
    version: Option<u64>,
) -> Result<Option<FileEntry>, ClientError> {
    let request = Request::Stat(Stat {
        folder_id: folder.folder_id.clone(),
        path: path.to_owned(),
        version,
        inline: false,
    });
    match s.call(request).await {
        Ok(Response::Entry(e)) => Ok(Some(e)),
        Ok(other) => Err(unexpected("stat", &other)),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Downloads `path` (at `version`) and verifies it: its entry and SHA-256.
async fn read_back(
    s: &Session<TurmoilNet>,
    folder: &FolderInfo,
    path: &str,
    version: Option<u64>,
    scratch: &Path,
) -> Result<(FileEntry, [u8; 32]), ClientError> {
    let source = Source::Folder {
        folder_id: &folder.folder_id,
        path,
        version,
    };
    let report = transfer::get(s, source, &scratch.join("check"), &Quiet, false).await?;
    Ok((report.entry, report.sha256))
}

fn unexpected(asked: &str, answer: &Response) -> ClientError {
    ClientError::Protocol(format!(
        "`{}` in answer to {asked}",
        coffer_proto::Message::kind(answer)
    ))
}
