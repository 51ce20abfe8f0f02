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
use coffer_proto::request::{Delete, List, Move, Stat};
use coffer_proto::response::FolderInfo;
use coffer_proto::types::{FileId, Role};
use coffer_proto::{ErrorCode, Request};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};
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
}

/// What the system acknowledged, and what the oracle found wrong.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The shared folder, once alice created it and invited bob.
    folder: Option<FolderInfo>,
    registered: [bool; 3],
    joined: bool,
    /// Acknowledged uploads: (path, file id, version) → plaintext SHA-256.
    acked: BTreeMap<(String, FileId, u64), [u8; 32]>,
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
    /// Violations of invariants 1 (acknowledged data reads back intact) and 2
    /// (no access without a right).
    pub violations: Vec<String>,
}

impl Ledger {
    fn read(&mut self, who: &str, path: &str, entry: (FileId, u64), sha256: [u8; 32]) {
        if let Some(acked) = self.acked.get(&(path.to_owned(), entry.0, entry.1)) {
            self.checked_reads += 1;
            if *acked != sha256 {
                self.violations.push(format!(
                    "{who} read {path} v{} with a SHA-256 other than the one acknowledged",
                    entry.1
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

    /// Acknowledged uploads at paths no move or delete touched, by path: each
    /// must still read back, at its version, with its SHA-256.
    fn untouched(&self) -> Vec<(String, FileId, u64, [u8; 32])> {
        self.acked
            .iter()
            .filter(|((path, ..), _)| !self.touched.contains(path))
            .map(|((path, id, version), sha)| (path.clone(), *id, *version, *sha))
            .collect()
    }
}

/// One simulated device.
pub(crate) struct Device {
    pub(crate) name: String,
    index: usize,
    endpoint: Endpoint,
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
        endpoint: Endpoint,
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
        match (USERS[user], folder) {
            ("alice", None) if self.first_device() => self.create_and_share(ledger).await,
            ("bob", Some(_)) if !ledger.borrow().joined => self.join(ledger).await,
            ("carol", folder) => self.probe(ledger, folder).await,
            (_, None) => Ok("waiting for the folder".into()),
            (_, Some(folder)) => self.file_op(ledger, &folder).await,
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
        let (session, _) = account::login(pool, &credentials, None, None).await?;
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
        let list = Request::List(List {
            folder_id: folder.folder_id.clone(),
            dir: None,
            recursive: true,
            deleted: false,
            cursor: None,
            limit: None,
        });
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
            Err(ClientError::Server(e))
                if matches!(
                    e.code,
                    ErrorCode::Forbidden | ErrorCode::NotFound | ErrorCode::Unauthorized
                ) =>
            {
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
                });
                self.session()
                    .call(request)
                    .await
                    .map(|_| format!("rm {path}"))
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
        ledger
            .borrow_mut()
            .acked
            .insert((e.path.clone(), e.file_id, e.version), report.sha256);
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
                let e = &report.entry;
                ledger
                    .borrow_mut()
                    .read(&self.name, path, (e.file_id, e.version), report.sha256);
                Ok(report)
            }
            Err(e) => {
                ledger.borrow_mut().failed_read(&self.name, path, &e);
                Err(e)
            }
        }
    }

    /// After the heal: every acknowledged upload no move or delete touched
    /// reads back at its version with its SHA-256 (invariant 1, in full).
    pub(crate) async fn sweep(&mut self, ledger: &RefCell<Ledger>) -> Done {
        let Some(folder) = ledger.borrow().folder.clone() else {
            return Ok("no folder".into());
        };
        let mut newest: Option<(String, u64)> = None;
        let mut swept = 0;
        let acked = ledger.borrow().untouched();
        for (path, file_id, version, sha256) in acked {
            // The server keeps the newest versions of each path: every
            // acknowledged one among them must be there.
            let latest = match &newest {
                Some((p, v)) if *p == path => *v,
                _ => {
                    let v = self.latest_version(&folder, &path).await?;
                    newest = Some((path.clone(), v));
                    v
                }
            };
            if version + u64::from(KEEP_VERSIONS) <= latest {
                continue;
            }
            swept += 1;
            let why = match self.get(ledger, &folder, &path, Some(version)).await {
                Ok(r) if r.entry.file_id == file_id && r.sha256 == sha256 => continue,
                Ok(_) => "it reads back as another file or other content".to_owned(),
                Err(e) => e.to_string(),
            };
            ledger.borrow_mut().violations.push(format!(
                "acknowledged {path} v{version} does not read back: {why}"
            ));
        }
        Ok(format!(
            "swept {swept} acknowledged uploads still in history"
        ))
    }

    async fn latest_version(&self, folder: &FolderInfo, path: &str) -> Result<u64, ClientError> {
        let stat = Request::Stat(Stat {
            folder_id: folder.folder_id.clone(),
            path: path.to_owned(),
            version: None,
            inline: false,
        });
        match self.session().call(stat).await? {
            coffer_proto::Response::Entry(e) => Ok(e.version),
            other => Err(ClientError::Protocol(format!(
                "`{}` in answer to stat",
                coffer_proto::Message::kind(&other)
            ))),
        }
    }
}
