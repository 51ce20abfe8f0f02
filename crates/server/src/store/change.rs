//! Every state change, and how it is applied.
//!
//! A [`Change`] is a complete, deterministic description of one change: ids,
//! hashes and times are chosen before it reaches the writer, so applying it is
//! a pure function of the database and the change. [`apply_batch`] applies a
//! batch in one transaction; each change validates itself against the state
//! it finds (roles, base versions, uniqueness), writes its rows, appends itself
//! to the change log and records the events subscribers are told.

use std::collections::BTreeSet;

use super::{exec, one};
use coffer_proto::event::{
    Change as FileChange, EndReason, Event, FileChanged, Invited, KeyRotated, MemberChange,
    MemberChanged, SessionEnded,
};
use coffer_proto::response::{DeviceInfo, FolderInfo, Invite, Registered};
use coffer_proto::types::{
    Blob, Causality, EntryKind, EpochKey, FileEntry, FileId, Kdf, MemberKey, MemberStatus, Role,
    Sha256, UserRole, VersionVector,
};
use coffer_proto::{ErrorCode, path as paths};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::query::{self, ENTRY_COLUMNS, kind_str, role_str, summary, user_role_str, vv_json};
use super::replica;
use super::{StoredEvent, WriterContext};
use crate::access::{Need, require};
use crate::cluster::{Clock, Stamp};
use crate::error::{Error, Result, bad_request, conflict, forbidden, not_found};

/// An upload as it is begun: everything but the chunks themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UploadRecord {
    pub(crate) upload_id: String,
    /// Identifies the same upload begun again (for resuming without its id).
    pub(crate) upload_key: Sha256,
    pub(crate) username: String,
    pub(crate) device_id: Option<String>,
    pub(crate) folder_id: String,
    pub(crate) path: String,
    pub(crate) file_id: FileId,
    pub(crate) size: u64,
    pub(crate) chunk_size: u32,
    pub(crate) chunk_count: u32,
    pub(crate) epoch: u64,
    pub(crate) wrapped_file_key: Blob,
    pub(crate) meta: Blob,
    pub(crate) base: Option<VersionVector>,
    /// The chunk list, 32 bytes per chunk; empty for a streamed upload.
    pub(crate) chunks: Blob,
    pub(crate) expires_ms: u64,
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub(crate) enum Change {
    Register {
        username: String,
        login_hash: String,
        public_key: Blob,
        wrapped_private_key: Blob,
        kdf: Kdf,
        /// The configured admin, if any; otherwise the first account is admin.
        admin: Option<String>,
    },
    SessionOpen {
        session_id: String,
        username: String,
        device_id: Option<String>,
        expires_ms: u64,
    },
    SessionExtend {
        session_id: String,
        expires_ms: u64,
    },
    SessionRevoke {
        username: String,
        session_id: String,
    },
    UserDisable {
        username: String,
        disabled: bool,
    },
    KeysPublish {
        username: String,
        public_key: Blob,
        wrapped_private_key: Blob,
        kdf: Kdf,
    },
    DeviceRegister {
        username: String,
        session_id: String,
        device_id: String,
        /// The id is derived from the client's write id (see [`Change::named`]).
        #[serde(default)]
        named: bool,
        name: String,
        mac: String,
    },
    DeviceRename {
        username: String,
        device_id: String,
        name: String,
    },
    DeviceRemove {
        username: String,
        device_id: String,
    },
    FolderCreate {
        username: String,
        folder_id: String,
        /// The id is derived from the client's write id (see [`Change::named`]).
        #[serde(default)]
        named: bool,
        label: String,
        wrapped_key: Blob,
    },
    FolderShare {
        username: String,
        folder_id: String,
        invitee: String,
        role: Role,
        keys: Vec<EpochKey>,
    },
    InviteAccept {
        username: String,
        folder_id: String,
    },
    InviteDecline {
        username: String,
        folder_id: String,
    },
    FolderUnshare {
        username: String,
        folder_id: String,
        member: String,
        epoch: u64,
        keys: Vec<MemberKey>,
    },
    FolderSetRole {
        username: String,
        folder_id: String,
        member: String,
        role: Role,
    },
    FolderLeave {
        username: String,
        folder_id: String,
    },
    UploadBegin(UploadRecord),
    /// A whole small file at once: begun, its chunks (already stored) received,
    /// and committed.
    UploadInline {
        upload: UploadRecord,
        /// Size of each sealed chunk, in order.
        sizes: Vec<u64>,
    },
    ChunkReceived {
        username: String,
        upload_id: String,
        index: u32,
        hash: Sha256,
        /// Bytes received; `None` when the chunk was named by reference.
        size: Option<u64>,
    },
    UploadCommit {
        username: String,
        upload_id: String,
        /// Metadata given at commit (streamed uploads).
        meta: Option<Blob>,
    },
    UploadAbort {
        username: String,
        upload_id: String,
    },
    /// A delete; its `write_id`, the client's name for it, makes sending it
    /// again answer the tombstone it made (see [`named_write`]).
    Delete {
        username: String,
        device_id: Option<String>,
        folder_id: String,
        path: String,
        base: Option<VersionVector>,
        write_id: Option<String>,
    },
    /// A move, named as [`Change::Delete`] is.
    Move {
        username: String,
        device_id: Option<String>,
        folder_id: String,
        from: String,
        to: String,
        base: Option<VersionVector>,
        write_id: Option<String>,
    },
    Mkdir {
        username: String,
        device_id: Option<String>,
        folder_id: String,
        path: String,
    },
    /// A restore, named as [`Change::Delete`] is.
    Restore {
        username: String,
        device_id: Option<String>,
        folder_id: String,
        path: String,
        version: u64,
        write_id: Option<String>,
    },
    FileShare {
        username: String,
        share_id: String,
        folder_id: String,
        path: String,
        recipient: String,
        wrapped_key: Blob,
    },
    FileShareRevoke {
        username: String,
        share_id: String,
    },
    /// Local housekeeping: expire uploads, find unreferenced chunks. Not logged:
    /// every node collects its own garbage.
    Collect,
    /// A chunk fetched from a peer is stored here. Not logged: what a node
    /// holds on disk is its own business.
    ChunkFetched {
        hash: Sha256,
        size: u64,
        /// Pushed ahead of its version: kept from collection until then.
        hold_until: Option<u64>,
    },
}

impl Change {
    /// Whether the change concerns this node alone, and is not logged.
    fn is_local(&self) -> bool {
        matches!(self, Change::Collect | Change::ChunkFetched { .. })
    }

    /// Whether the change is a named creation (a folder or a device whose id
    /// the client's write id decided): every node that does it inserts its
    /// rows under one stamp, [`replica::NAMED`], so that the row merge takes
    /// them for one incarnation, not two.
    fn named(&self) -> bool {
        matches!(
            self,
            Change::DeviceRegister { named: true, .. } | Change::FolderCreate { named: true, .. }
        )
    }

    fn kind(&self) -> &'static str {
        match self {
            Change::Register { .. } => "register",
            Change::SessionOpen { .. } => "session_open",
            Change::SessionExtend { .. } => "session_extend",
            Change::SessionRevoke { .. } => "session_revoke",
            Change::UserDisable { .. } => "user_disable",
            Change::KeysPublish { .. } => "keys_publish",
            Change::DeviceRegister { .. } => "device_register",
            Change::DeviceRename { .. } => "device_rename",
            Change::DeviceRemove { .. } => "device_remove",
            Change::FolderCreate { .. } => "folder_create",
            Change::FolderShare { .. } => "folder_share",
            Change::InviteAccept { .. } => "invite_accept",
            Change::InviteDecline { .. } => "invite_decline",
            Change::FolderUnshare { .. } => "folder_unshare",
            Change::FolderSetRole { .. } => "folder_set_role",
            Change::FolderLeave { .. } => "folder_leave",
            Change::UploadBegin(_) => "upload_begin",
            Change::UploadInline { .. } => "upload_inline",
            Change::ChunkReceived { .. } => "chunk_received",
            Change::UploadCommit { .. } => "upload_commit",
            Change::UploadAbort { .. } => "upload_abort",
            Change::Delete { .. } => "delete",
            Change::Move { .. } => "move",
            Change::Mkdir { .. } => "mkdir",
            Change::Restore { .. } => "restore",
            Change::FileShare { .. } => "file_share",
            Change::FileShareRevoke { .. } => "file_share_revoke",
            Change::Collect => "collect",
            Change::ChunkFetched { .. } => "chunk_fetched",
        }
    }
}

/// An upload's progress, as `upload_begin` and `upload_resume` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UploadState {
    pub(crate) upload_id: String,
    pub(crate) chunk_count: u32,
    pub(crate) expires_ms: u64,
    /// Indices of chunks not yet received.
    pub(crate) missing: Vec<u32>,
}

/// What applying a change produced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Applied {
    Done,
    Registered(Registered),
    Device(DeviceInfo),
    Folder(FolderInfo),
    Entry(FileEntry),
    Upload(UploadState),
    Share(String),
    /// How many unreferenced chunks were deleted.
    Collected(usize),
}

/// An event with its audience: the active members of a folder, and/or a user.
pub(super) type Told = (Option<String>, Option<String>, Event);

/// Events a change produces, with their audience.
#[derive(Default)]
struct Effects {
    events: Vec<Told>,
    /// The answer repeats an earlier write (an upload committed again):
    /// logged all the same, so that it is acknowledged only once the quorum
    /// holds everything this node held, that write included.
    repeats: bool,
}

impl Effects {
    fn tell_folder(&mut self, folder_id: &str, event: Event) {
        self.events.push((Some(folder_id.to_owned()), None, event));
    }

    fn tell_user(&mut self, username: &str, event: Event) {
        self.events.push((None, Some(username.to_owned()), event));
    }

    fn tell_folder_and_user(&mut self, folder_id: &str, username: &str, event: Event) {
        self.events
            .push((Some(folder_id.to_owned()), Some(username.to_owned()), event));
    }
}

/// What applying a change produced, and the number of its record in this
/// node's log (`None` for a change that is not logged).
pub(crate) type Logged = (Applied, Option<u64>);

/// Applies a batch in one transaction. Each change's result is returned in
/// order, with the events the batch recorded.
pub(crate) fn apply_batch(
    conn: &mut Connection,
    ctx: &WriterContext,
    changes: &[Change],
) -> rusqlite::Result<(Vec<Result<Logged>>, Vec<StoredEvent>)> {
    let mut tx = conn.transaction()?;
    let now = ctx.clock.now_ms();
    let mut clock = Clock::new(replica::last_hlc(&tx)?);
    let mut own_seq = replica::last_seq(&tx, &ctx.origin)?;
    let mut results = Vec::with_capacity(changes.len());
    let mut recorded = Vec::new();
    for change in changes {
        let sp = tx.savepoint()?;
        replica::clear_touched(&sp)?;
        let mut effects = Effects::default();
        match apply(&sp, ctx, now, change, &mut effects) {
            Ok(applied) => {
                let mut logged = None;
                let stamp = Stamp {
                    hlc: clock.tick(now),
                    origin: ctx.origin.clone(),
                };
                let rows = if change.is_local() {
                    Vec::new()
                } else {
                    replica::take_written(&sp, &stamp, change.named())?
                };
                // A change that wrote no replicated row and tells no one
                // (an upload begun, a chunk received) is this node's alone:
                // no record, and nothing for peers to acknowledge.
                if !change.is_local()
                    && (!rows.is_empty() || !effects.events.is_empty() || effects.repeats)
                {
                    own_seq += 1;
                    exec(
                        &sp,
                        "INSERT INTO changes (origin, origin_seq, hlc_wall, hlc_logical, kind, payload, rows) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            ctx.origin,
                            own_seq as i64,
                            stamp.hlc.wall_ms as i64,
                            stamp.hlc.logical as i64,
                            change.kind(),
                            serde_json::to_string(change).expect("changes serialize"),
                            serde_json::to_string(&rows).expect("rows serialize")
                        ],
                    )?;
                    let seq = sp.last_insert_rowid();
                    let events = replica::record_events(&sp, seq, effects.events)?;
                    sp.commit()?;
                    recorded.extend(events);
                    logged = Some(own_seq);
                } else {
                    // Housekeeping of this node alone: nothing to replicate.
                    replica::clear_touched(&sp)?;
                    sp.commit()?;
                }
                results.push(Ok((applied, logged)));
            }
            Err(Error::Db(e)) => return Err(e),
            Err(refused) => results.push(Err(refused)),
        }
    }
    tx.commit()?;
    Ok((results, recorded))
}

fn apply(
    tx: &Connection,
    ctx: &WriterContext,
    now: u64,
    change: &Change,
    fx: &mut Effects,
) -> Result<Applied> {
    match change {
        Change::Register {
            username,
            login_hash,
            public_key,
            wrapped_private_key,
            kdf,
            admin,
        } => {
            if query::user(tx, username)?.is_some() {
                return Err(conflict(format!("the username {username} is taken")));
            }
            let first: bool = one(tx, "SELECT NOT EXISTS (SELECT 1 FROM users)", [], |r| {
                r.get(0)
            })?;
            let role = match admin {
                Some(admin) if admin == username => UserRole::Admin,
                None if first => UserRole::Admin,
                _ => UserRole::User,
            };
            exec(
                tx,
                "INSERT INTO users (username, login_hash, role, public_key, wrapped_private_key, kdf, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    username,
                    login_hash,
                    user_role_str(role),
                    public_key.as_bytes(),
                    wrapped_private_key.as_bytes(),
                    serde_json::to_string(kdf).expect("kdf serializes"),
                    now as i64
                ],
            )?;
            Ok(Applied::Registered(Registered {
                username: username.clone(),
                role,
            }))
        }
        Change::SessionOpen {
            session_id,
            username,
            device_id,
            expires_ms,
        } => {
            let user = query::user(tx, username)?
                .ok_or_else(|| not_found(format!("no user {username}")))?;
            if user.disabled {
                return Err(forbidden(format!("the account {username} is disabled")));
            }
            if let Some(device_id) = device_id
                && query::device(tx, username, device_id)?.is_none()
            {
                return Err(not_found(format!("no device {device_id} of {username}")));
            }
            exec(
                tx,
                "INSERT INTO sessions (session_id, username, device_id, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    session_id,
                    username,
                    device_id,
                    now as i64,
                    *expires_ms as i64
                ],
            )?;
            Ok(Applied::Done)
        }
        Change::SessionExtend {
            session_id,
            expires_ms,
        } => {
            let n = exec(
                tx,
                "UPDATE sessions SET expires_ms = ?2 WHERE session_id = ?1 AND revoked = 0",
                params![session_id, *expires_ms as i64],
            )?;
            if n == 0 {
                return Err(Error::refused(
                    ErrorCode::Unauthorized,
                    "the session has ended",
                ));
            }
            Ok(Applied::Done)
        }
        Change::SessionRevoke {
            username,
            session_id,
        } => {
            let n = exec(
                tx,
                "UPDATE sessions SET revoked = 1 WHERE session_id = ?1 AND username = ?2 AND revoked = 0",
                params![session_id, username],
            )?;
            if n == 0 {
                return Err(not_found(format!("no live session {session_id}")));
            }
            end_session(fx, username, session_id, EndReason::Revoked);
            Ok(Applied::Done)
        }
        Change::UserDisable { username, disabled } => {
            if query::user(tx, username)?.is_none() {
                return Err(not_found(format!("no user {username}")));
            }
            exec(
                tx,
                "UPDATE users SET disabled = ?2 WHERE username = ?1",
                params![username, *disabled as i64],
            )?;
            if *disabled {
                revoke_sessions(
                    tx,
                    fx,
                    "username = ?1",
                    username,
                    username,
                    EndReason::AccountDisabled,
                )?;
            }
            Ok(Applied::Done)
        }
        Change::KeysPublish {
            username,
            public_key,
            wrapped_private_key,
            kdf,
        } => {
            exec(
                tx,
                "UPDATE users SET public_key = ?2, wrapped_private_key = ?3, kdf = ?4 WHERE username = ?1",
                params![
                    username,
                    public_key.as_bytes(),
                    wrapped_private_key.as_bytes(),
                    serde_json::to_string(kdf).expect("kdf serializes")
                ],
            )?;
            Ok(Applied::Done)
        }
        Change::DeviceRegister {
            username,
            session_id,
            device_id,
            named,
            name,
            mac,
        } => {
            if *named {
                // This registration, done here before (or through another
                // node, and arrived): the device it made, the session bound.
                if let Some(device) = query::device(tx, username, device_id)? {
                    bind_session(tx, session_id, device_id)?;
                    fx.repeats = true;
                    return Ok(Applied::Device(device));
                }
                named_creation_free(tx, "devices", device_id, "device")?;
            }
            // Registered already under this name and MAC — the same machine,
            // the request sent again (after `unavailable`, through any node
            // its device has reached): that device, the session bound to it.
            let same: Option<(String, i64)> = one(
                tx,
                "SELECT device_id, created_ms FROM devices WHERE username = ?1 AND name = ?2 AND mac = ?3",
                params![username, name, mac],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
            if let Some((device_id, created_ms)) = same {
                bind_session(tx, session_id, &device_id)?;
                fx.repeats = true;
                return Ok(Applied::Device(DeviceInfo {
                    device_id,
                    name: name.clone(),
                    mac: mac.clone(),
                    created_ms: created_ms as u64,
                }));
            }
            let taken: Option<String> = one(
                tx,
                "SELECT CASE WHEN name = ?2 THEN 'name' ELSE 'MAC address' END FROM devices \
                     WHERE username = ?1 AND (name = ?2 OR mac = ?3)",
                params![username, name, mac],
                |r| r.get(0),
            )
            .optional()?;
            if let Some(what) = taken {
                return Err(conflict(format!(
                    "{username} already has a device with this {what}"
                )));
            }
            exec(
                tx,
                "INSERT INTO devices (device_id, username, name, mac, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![device_id, username, name, mac, now as i64],
            )?;
            bind_session(tx, session_id, device_id)?;
            Ok(Applied::Device(DeviceInfo {
                device_id: device_id.clone(),
                name: name.clone(),
                mac: mac.clone(),
                created_ms: now,
            }))
        }
        Change::DeviceRename {
            username,
            device_id,
            name,
        } => {
            let device = query::device(tx, username, device_id)?
                .ok_or_else(|| not_found(format!("no device {device_id}")))?;
            let clash: bool = one(
                tx,
                "SELECT EXISTS (SELECT 1 FROM devices WHERE username = ?1 AND name = ?2 AND device_id <> ?3)",
                params![username, name, device_id],
                |r| r.get(0),
            )?;
            if clash {
                return Err(conflict(format!(
                    "{username} already has a device named {name:?}"
                )));
            }
            exec(
                tx,
                "UPDATE devices SET name = ?2 WHERE device_id = ?1",
                params![device_id, name],
            )?;
            Ok(Applied::Device(DeviceInfo {
                name: name.clone(),
                ..device
            }))
        }
        Change::DeviceRemove {
            username,
            device_id,
        } => {
            if query::device(tx, username, device_id)?.is_none() {
                // This removal, sent again: the device is gone, and it was
                // this user's (its sessions stay, revoked).
                let theirs: bool = one(
                    tx,
                    "SELECT EXISTS (SELECT 1 FROM sessions WHERE device_id = ?1 AND username = ?2)",
                    params![device_id, username],
                    |r| r.get(0),
                )?;
                if theirs && super::replica::deleted(tx, "devices", &[device_id])? {
                    fx.repeats = true;
                    return Ok(Applied::Done);
                }
                return Err(not_found(format!("no device {device_id}")));
            }
            revoke_sessions(
                tx,
                fx,
                "device_id = ?1",
                device_id,
                username,
                EndReason::DeviceRemoved,
            )?;
            exec(tx, "DELETE FROM devices WHERE device_id = ?1", [device_id])?;
            Ok(Applied::Done)
        }
        Change::FolderCreate {
            username,
            folder_id,
            named,
            label,
            wrapped_key,
        } => {
            if *named {
                // This creation, done here before (or through another node,
                // and arrived): the folder it made, as it is now.
                if let Some(folder) = query::folder(tx, folder_id)?
                    && folder.owner == *username
                {
                    fx.repeats = true;
                    return Ok(Applied::Folder(query::folder_info(&folder, Role::Owner)));
                }
                named_creation_free(tx, "folders", folder_id, "folder")?;
            }
            // The folder this request made, sent again: its epoch-1 key,
            // wrapped at random, is the request's own.
            let made: Option<String> = one(
                tx,
                "SELECT f.folder_id FROM folders f JOIN folder_keys k \
                 ON k.folder_id = f.folder_id AND k.username = f.owner AND k.epoch = 1 \
                 WHERE f.owner = ?1 AND f.label = ?2 AND k.wrapped_key = ?3",
                params![username, label, wrapped_key.as_bytes()],
                |r| r.get(0),
            )
            .optional()?;
            if let Some(made) = made {
                fx.repeats = true;
                let folder = query::folder(tx, &made)?.expect("just found");
                return Ok(Applied::Folder(query::folder_info(&folder, Role::Owner)));
            }
            let clash: bool = one(
                tx,
                "SELECT EXISTS (SELECT 1 FROM folders WHERE owner = ?1 AND label = ?2)",
                params![username, label],
                |r| r.get(0),
            )?;
            if clash {
                return Err(conflict(format!(
                    "{username} already has a folder labelled {label:?}"
                )));
            }
            exec(
                tx,
                "INSERT INTO folders (folder_id, label, owner, epoch, created_ms) VALUES (?1, ?2, ?3, 1, ?4)",
                params![folder_id, label, username, now as i64],
            )?;
            exec(
                tx,
                "INSERT INTO members (folder_id, username, role, status, invited_by, created_ms) \
                 VALUES (?1, ?2, 'owner', 'active', ?2, ?3)",
                params![folder_id, username, now as i64],
            )?;
            exec(
                tx,
                "INSERT INTO folder_keys (folder_id, username, epoch, wrapped_key) VALUES (?1, ?2, 1, ?3)",
                params![folder_id, username, wrapped_key.as_bytes()],
            )?;
            // The owner "joins" their new folder: their other devices learn of it.
            member_event(
                fx,
                folder_id,
                username,
                MemberChange::Joined,
                Role::Owner,
                true,
            );
            let folder = query::folder(tx, folder_id)?.expect("just inserted");
            Ok(Applied::Folder(query::folder_info(&folder, Role::Owner)))
        }
        Change::FolderShare {
            username,
            folder_id,
            invitee,
            role,
            keys,
        } => {
            let (folder, _) = require(tx, username, folder_id, Need::Manage)?;
            if *role == Role::Owner {
                return Err(bad_request(
                    "an invitation offers the viewer or editor role",
                ));
            }
            let user =
                query::user(tx, invitee)?.ok_or_else(|| not_found(format!("no user {invitee}")))?;
            if user.disabled {
                return Err(forbidden(format!("the account {invitee} is disabled")));
            }
            if query::membership(tx, folder_id, invitee)?.is_some() {
                // This invitation, sent again: the keys, wrapped at random,
                // are the ones it left.
                if holds_keys(
                    tx,
                    folder_id,
                    keys.iter()
                        .map(|k| (invitee.as_str(), k.epoch, &k.wrapped_key)),
                )? {
                    fx.repeats = true;
                    return Ok(Applied::Done);
                }
                return Err(conflict(format!(
                    "{invitee} is already a member of or invited to \"{}\"",
                    folder.label
                )));
            }
            let epochs: BTreeSet<u64> = keys.iter().map(|k| k.epoch).collect();
            if epochs.len() != keys.len() || epochs != (1..=folder.epoch).collect() {
                return Err(bad_request(format!(
                    "an invitation carries the folder key of every epoch 1 to {}, once each",
                    folder.epoch
                )));
            }
            exec(
                tx,
                "INSERT INTO members (folder_id, username, role, status, invited_by, created_ms) \
                 VALUES (?1, ?2, ?3, 'invited', ?4, ?5)",
                params![folder_id, invitee, role_str(*role), username, now as i64],
            )?;
            for key in keys {
                exec(
                    tx,
                    "INSERT INTO folder_keys (folder_id, username, epoch, wrapped_key) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        folder_id,
                        invitee,
                        key.epoch as i64,
                        key.wrapped_key.as_bytes()
                    ],
                )?;
            }
            fx.tell_user(
                invitee,
                Event::Invited(Invited {
                    cursor: String::new(),
                    invite: Invite {
                        folder_id: folder_id.clone(),
                        label: folder.label.clone(),
                        from: username.clone(),
                        role: *role,
                        created_ms: now,
                    },
                }),
            );
            Ok(Applied::Done)
        }
        Change::InviteAccept {
            username,
            folder_id,
        } => {
            let role = match query::membership(tx, folder_id, username)? {
                Some((role, MemberStatus::Invited)) => role,
                // Accepted already: the request sent again.
                Some((role, MemberStatus::Active)) => {
                    fx.repeats = true;
                    let folder = query::folder(tx, folder_id)?.expect("a membership has a folder");
                    return Ok(Applied::Folder(query::folder_info(&folder, role)));
                }
                None => return Err(not_found(format!("no invitation to folder {folder_id}"))),
            };
            exec(
                tx,
                "UPDATE members SET status = 'active' WHERE folder_id = ?1 AND username = ?2",
                params![folder_id, username],
            )?;
            member_event(fx, folder_id, username, MemberChange::Joined, role, true);
            let folder = query::folder(tx, folder_id)?.expect("a membership has a folder");
            Ok(Applied::Folder(query::folder_info(&folder, role)))
        }
        Change::InviteDecline {
            username,
            folder_id,
        } => {
            let Some((_, MemberStatus::Invited)) = query::membership(tx, folder_id, username)?
            else {
                if left(tx, folder_id, username)? {
                    fx.repeats = true;
                    return Ok(Applied::Done);
                }
                return Err(not_found(format!("no invitation to folder {folder_id}")));
            };
            remove_member(tx, folder_id, username)?;
            Ok(Applied::Done)
        }
        Change::FolderUnshare {
            username,
            folder_id,
            member,
            epoch,
            keys,
        } => {
            let (folder, _) = require(tx, username, folder_id, Need::Manage)?;
            // This rotation, sent again: the member is gone and the epoch's
            // keys, wrapped at random, are the ones it left.
            if folder.epoch == *epoch
                && query::membership(tx, folder_id, member)?.is_none()
                && holds_keys(
                    tx,
                    folder_id,
                    keys.iter()
                        .map(|k| (k.username.as_str(), *epoch, &k.wrapped_key)),
                )?
            {
                fx.repeats = true;
                return Ok(Applied::Folder(query::folder_info(&folder, Role::Owner)));
            }
            let (role, _) = query::membership(tx, folder_id, member)?.ok_or_else(|| {
                not_found(format!("{member} is not a member of \"{}\"", folder.label))
            })?;
            if role == Role::Owner {
                return Err(forbidden("the owner cannot be removed from their folder"));
            }
            if *epoch != folder.epoch + 1 {
                return Err(conflict(format!(
                    "the folder is at key epoch {}; an unshare must bring epoch {}",
                    folder.epoch,
                    folder.epoch + 1
                )));
            }
            let remaining: BTreeSet<String> = query::members(tx, folder_id)?
                .into_iter()
                .map(|m| m.username)
                .filter(|name| name != member)
                .collect();
            let given: BTreeSet<String> = keys.iter().map(|k| k.username.clone()).collect();
            if given.len() != keys.len() || given != remaining {
                return Err(bad_request(format!(
                    "the new key must be wrapped for exactly the remaining members: {}",
                    remaining.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
            remove_member(tx, folder_id, member)?;
            for key in keys {
                exec(
                    tx,
                    "INSERT INTO folder_keys (folder_id, username, epoch, wrapped_key) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        folder_id,
                        key.username,
                        *epoch as i64,
                        key.wrapped_key.as_bytes()
                    ],
                )?;
            }
            exec(
                tx,
                "UPDATE folders SET epoch = ?2 WHERE folder_id = ?1",
                params![folder_id, *epoch as i64],
            )?;
            member_event(fx, folder_id, member, MemberChange::Removed, role, true);
            fx.tell_folder(
                folder_id,
                Event::KeyRotated(KeyRotated {
                    cursor: String::new(),
                    folder_id: folder_id.clone(),
                    epoch: *epoch,
                }),
            );
            let folder = query::folder(tx, folder_id)?.expect("still there");
            Ok(Applied::Folder(query::folder_info(&folder, Role::Owner)))
        }
        Change::FolderSetRole {
            username,
            folder_id,
            member,
            role,
        } => {
            let (folder, _) = require(tx, username, folder_id, Need::Manage)?;
            let (current, _) = query::membership(tx, folder_id, member)?.ok_or_else(|| {
                not_found(format!("{member} is not a member of \"{}\"", folder.label))
            })?;
            if current == Role::Owner || *role == Role::Owner {
                return Err(forbidden(
                    "the owner's role cannot change, and there is one owner",
                ));
            }
            exec(
                tx,
                "UPDATE members SET role = ?3 WHERE folder_id = ?1 AND username = ?2",
                params![folder_id, member, role_str(*role)],
            )?;
            member_event(
                fx,
                folder_id,
                member,
                MemberChange::RoleChanged,
                *role,
                true,
            );
            Ok(Applied::Done)
        }
        Change::FolderLeave {
            username,
            folder_id,
        } => {
            if left(tx, folder_id, username)? {
                fx.repeats = true;
                return Ok(Applied::Done);
            }
            let (_, role) = require(tx, username, folder_id, Need::Read)?;
            if role == Role::Owner {
                return Err(forbidden("the owner cannot leave their folder"));
            }
            remove_member(tx, folder_id, username)?;
            member_event(fx, folder_id, username, MemberChange::Left, role, true);
            Ok(Applied::Done)
        }
        Change::UploadBegin(record) => {
            let begun = upload_begin(tx, now, record)?;
            fx.repeats = matches!(begun, Applied::Entry(_));
            Ok(begun)
        }
        Change::UploadInline { upload, sizes } => {
            let state = match upload_begin(tx, now, upload)? {
                Applied::Upload(state) => state,
                // Committed before: the same answer again.
                done @ Applied::Entry(_) => {
                    fx.repeats = true;
                    return Ok(done);
                }
                _ => unreachable!("upload_begin answers with the upload or its version"),
            };
            for (index, (hash, size)) in upload
                .chunks
                .as_bytes()
                .chunks_exact(32)
                .zip(sizes)
                .enumerate()
            {
                receive_chunk(tx, now, &state.upload_id, index as u32, hash, Some(*size))?;
            }
            upload_commit(tx, ctx, now, &upload.username, &state.upload_id, None, fx)
        }
        Change::ChunkReceived {
            username,
            upload_id,
            index,
            hash,
            size,
        } => {
            let upload = open_upload(tx, username, upload_id, now)?;
            if *index >= upload.chunk_count {
                return Err(bad_request(format!(
                    "chunk index {index} is past the upload's {} chunks",
                    upload.chunk_count
                )));
            }
            // Named by reference (no bytes sent): only a chunk this folder
            // already holds.
            if size.is_none() && !folder_holds(tx, &upload.folder_id, &hash.0)? {
                return Err(not_found(format!(
                    "chunk {index} is not held by this folder; send its bytes"
                )));
            }
            receive_chunk(tx, now, upload_id, *index, &hash.0, *size)?;
            Ok(Applied::Done)
        }
        Change::UploadCommit {
            username,
            upload_id,
            meta,
        } => upload_commit(tx, ctx, now, username, upload_id, meta.as_ref(), fx),
        Change::UploadAbort {
            username,
            upload_id,
        } => {
            let upload = open_upload(tx, username, upload_id, now)?;
            drop_upload(tx, &upload.upload_id)?;
            Ok(Applied::Done)
        }
        Change::Delete {
            username,
            device_id,
            folder_id,
            path,
            base,
            write_id,
        } => {
            require(tx, username, folder_id, Need::Write)?;
            if let Some(done) = named_write(tx, fx, folder_id, path, write_id)? {
                return Ok(done);
            }
            let current = live_entry(tx, folder_id, path)?;
            check_base(tx, &current, base.as_ref())?;
            // A directory goes with everything below it, deepest first.
            let mut doomed = descendants(tx, folder_id, path)?;
            doomed.reverse();
            doomed.push(current);
            let mut last = None;
            for entry in doomed {
                let tomb = FileEntry {
                    version: entry.version + 1,
                    vv: bumped(tx, ctx, &entry.vv)?,
                    size: 0,
                    chunk_count: 0,
                    modified_ms: stamped(now, &entry),
                    device_id: device_id.clone(),
                    deleted: true,
                    ..entry
                };
                let named = write_id.as_deref();
                put_version_of(tx, ctx, &tomb, &[], named, Slot::Latest)?;
                file_event(fx, &tomb, FileChange::Deleted, None);
                last = Some(tomb);
            }
            Ok(Applied::Entry(last.expect("at least the path itself")))
        }
        Change::Move {
            username,
            device_id,
            folder_id,
            from,
            to,
            base,
            write_id,
        } => {
            require(tx, username, folder_id, Need::Write)?;
            if let Some(done) = named_write(tx, fx, folder_id, to, write_id)? {
                return Ok(done);
            }
            if from == to {
                return Err(bad_request("a move needs a new path"));
            }
            if to.starts_with(&format!("{from}/")) {
                return Err(bad_request("a directory cannot move inside itself"));
            }
            let current = live_entry(tx, folder_id, from)?;
            check_base(tx, &current, base.as_ref())?;
            ensure_free(tx, folder_id, to)?;
            make_parents(tx, ctx, now, folder_id, to, device_id, fx)?;
            let mut moving = vec![current];
            moving.extend(descendants(tx, folder_id, from)?);
            let mut moved_root = None;
            for entry in moving {
                let new_path = format!("{to}{}", &entry.path[from.len()..]);
                let (_, chunks) = query::stored(tx, folder_id, &entry.path, &entry.vv)?
                    .ok_or_else(|| Error::Db(rusqlite::Error::QueryReturnedNoRows))?;
                let previous = query::entry(tx, folder_id, &new_path)?;
                // After whatever the new path held (a tombstone, say), not
                // only after the entry moved: on every node it must follow
                // that version, and this node's count for the path must not
                // go back to a number it used there already.
                let after = match &previous {
                    Some(p) => entry.vv.merge(&p.vv),
                    None => entry.vv.clone(),
                };
                let arrived = FileEntry {
                    path: new_path.clone(),
                    version: previous.as_ref().map_or(1, |p| p.version + 1),
                    vv: bumped(tx, ctx, &after)?,
                    modified_ms: previous.iter().fold(stamped(now, &entry), stamped),
                    device_id: device_id.clone(),
                    ..entry.clone()
                };
                let named = write_id.as_deref();
                put_version_of(tx, ctx, &arrived, &chunks, named, Slot::Latest)?;
                let left = FileEntry {
                    version: entry.version + 1,
                    vv: bumped(tx, ctx, &entry.vv)?,
                    size: 0,
                    chunk_count: 0,
                    modified_ms: stamped(now, &entry),
                    device_id: device_id.clone(),
                    deleted: true,
                    ..entry.clone()
                };
                put_version_of(tx, ctx, &left, &[], named, Slot::Latest)?;
                file_event(fx, &arrived, FileChange::Moved, Some(entry.path.clone()));
                moved_root.get_or_insert(arrived);
            }
            Ok(Applied::Entry(moved_root.expect("the path itself moved")))
        }
        Change::Mkdir {
            username,
            device_id,
            folder_id,
            path,
        } => {
            require(tx, username, folder_id, Need::Write)?;
            if let Some(existing) = query::entry(tx, folder_id, path)?.filter(|e| !e.deleted) {
                return if existing.kind == EntryKind::Dir {
                    Ok(Applied::Entry(existing))
                } else {
                    Err(conflict(format!("{path} is a file")))
                };
            }
            make_parents(tx, ctx, now, folder_id, path, device_id, fx)?;
            Ok(Applied::Entry(make_dir(
                tx, ctx, now, folder_id, path, device_id, fx,
            )?))
        }
        Change::Restore {
            username,
            device_id,
            folder_id,
            path,
            version,
            write_id,
        } => {
            require(tx, username, folder_id, Need::Write)?;
            if let Some(done) = named_write(tx, fx, folder_id, path, write_id)? {
                return Ok(done);
            }
            let (old, chunks) = query::version(tx, folder_id, path, *version)?
                .ok_or_else(|| not_found(format!("no version {version} of {path}")))?;
            if old.deleted {
                return Err(bad_request(format!(
                    "version {version} of {path} is a deletion"
                )));
            }
            let latest = query::entry(tx, folder_id, path)?.expect("a version has an entry");
            make_parents(tx, ctx, now, folder_id, path, device_id, fx)?;
            let restored = FileEntry {
                version: latest.version + 1,
                vv: bumped(tx, ctx, &latest.vv)?,
                modified_ms: stamped(now, &latest),
                device_id: device_id.clone(),
                ..old
            };
            let named = write_id.as_deref();
            put_version_of(tx, ctx, &restored, &chunks, named, Slot::Latest)?;
            let how = if latest.deleted {
                FileChange::Created
            } else {
                FileChange::Modified
            };
            file_event(fx, &restored, how, None);
            Ok(Applied::Entry(restored))
        }
        Change::FileShare {
            username,
            share_id,
            folder_id,
            path,
            recipient,
            wrapped_key,
        } => {
            require(tx, username, folder_id, Need::Write)?;
            let entry = live_entry(tx, folder_id, path)?;
            if entry.kind != EntryKind::File {
                return Err(bad_request(format!(
                    "{path} is a directory; share the folder instead"
                )));
            }
            if recipient == username {
                return Err(bad_request("a file is shared with someone else"));
            }
            if query::user(tx, recipient)?.is_none() {
                return Err(not_found(format!("no user {recipient}")));
            }
            exec(
                tx,
                "INSERT INTO file_shares (share_id, folder_id, path, file_id, owner, recipient, wrapped_key, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    share_id,
                    folder_id,
                    path,
                    &entry.file_id.0[..],
                    username,
                    recipient,
                    wrapped_key.as_bytes(),
                    now as i64
                ],
            )?;
            Ok(Applied::Share(share_id.clone()))
        }
        Change::FileShareRevoke { username, share_id } => {
            let row: Option<(String, String)> = one(tx,
                    "SELECT s.owner, f.owner FROM file_shares s JOIN folders f ON f.folder_id = s.folder_id \
                     WHERE s.share_id = ?1",
                    [share_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match row {
                Some((sharer, folder_owner))
                    if &sharer == username || &folder_owner == username =>
                {
                    exec(
                        tx,
                        "DELETE FROM file_shares WHERE share_id = ?1",
                        [share_id],
                    )?;
                    Ok(Applied::Done)
                }
                _ => Err(not_found(format!("no share {share_id} of yours"))),
            }
        }
        Change::Collect => collect(tx, ctx, now),
        Change::ChunkFetched {
            hash,
            size,
            hold_until,
        } => {
            exec(
                tx,
                "INSERT OR IGNORE INTO chunks (hash, size, created_ms) VALUES (?1, ?2, ?3)",
                params![&hash.0[..], *size as i64, now as i64],
            )?;
            if let Some(until) = hold_until {
                exec(
                    tx,
                    "INSERT INTO held_chunks (hash, until_ms) VALUES (?1, ?2) \
                     ON CONFLICT (hash) DO UPDATE SET until_ms = max(until_ms, ?2)",
                    params![&hash.0[..], *until as i64],
                )?;
            }
            // No record waits for it any more.
            exec(tx, "DELETE FROM unheld WHERE hash = ?1", [&hash.0[..]])?;
            Ok(Applied::Done)
        }
    }
}

fn end_session(fx: &mut Effects, username: &str, session_id: &str, reason: EndReason) {
    fx.tell_user(
        username,
        Event::SessionEnded(SessionEnded {
            session_id: session_id.to_owned(),
            reason,
        }),
    );
}

/// Revokes every live session matching `filter` (with `?1` bound to `value`).
fn revoke_sessions(
    tx: &Connection,
    fx: &mut Effects,
    filter: &str,
    value: &str,
    username: &str,
    reason: EndReason,
) -> Result<()> {
    let ids: Vec<String> = tx
        .prepare_cached(&format!(
            "SELECT session_id FROM sessions WHERE revoked = 0 AND {filter}"
        ))?
        .query_map([value], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in ids {
        exec(
            tx,
            "UPDATE sessions SET revoked = 1 WHERE session_id = ?1",
            [&id],
        )?;
        end_session(fx, username, &id, reason);
    }
    Ok(())
}

/// Whether `username` was in `folder_id` (a member, or invited) and is no
/// longer: a leave or a decline sent again finds the work done. Only one
/// who was there is told so; anyone else is not told the folder exists.
fn left(tx: &Connection, folder_id: &str, username: &str) -> Result<bool> {
    Ok(super::replica::deleted(
        tx,
        "members",
        &[folder_id, username],
    )?)
}

fn remove_member(tx: &Connection, folder_id: &str, username: &str) -> Result<()> {
    exec(
        tx,
        "DELETE FROM members WHERE folder_id = ?1 AND username = ?2",
        params![folder_id, username],
    )?;
    exec(
        tx,
        "DELETE FROM folder_keys WHERE folder_id = ?1 AND username = ?2",
        params![folder_id, username],
    )?;
    Ok(())
}

/// A membership change, told to the folder — and to the member concerned when
/// they are no longer in it to hear (`tell_member`).
fn member_event(
    fx: &mut Effects,
    folder_id: &str,
    member: &str,
    change: MemberChange,
    role: Role,
    tell_member: bool,
) {
    let event = Event::MemberChanged(MemberChanged {
        cursor: String::new(),
        folder_id: folder_id.to_owned(),
        username: member.to_owned(),
        change,
        role,
    });
    if tell_member {
        fx.tell_folder_and_user(folder_id, member, event);
    } else {
        fx.tell_folder(folder_id, event);
    }
}

fn file_event(fx: &mut Effects, entry: &FileEntry, change: FileChange, from: Option<String>) {
    fx.tell_folder(
        &entry.folder_id,
        Event::FileChanged(FileChanged {
            cursor: String::new(),
            folder_id: entry.folder_id.clone(),
            change,
            path: entry.path.clone(),
            from,
            entry: summary(entry),
            device_id: entry.device_id.clone(),
        }),
    );
}

/// `vv` with one more write by this database, counted under its origin
/// and numbered with the record this change makes: a counter the origin
/// never gave another write, of any path or branch.
///
/// Counting under the node id, a node whose data directory was wiped could
/// number a write as its old database had numbered another. Counting one up
/// from the path's vector, a node that wrote on a branch that then lost,
/// and wrote again on the winner, gave the second write the counter of the
/// first; two different versions could so carry one vector and the nodes
/// never agree which they hold (seed 147 of the simulation).
fn bumped(tx: &Connection, ctx: &WriterContext, vv: &VersionVector) -> Result<VersionVector> {
    let next = super::replica::last_seq(tx, &ctx.origin)? + 1;
    let mut counters: std::collections::BTreeMap<String, u64> = vv.clone().into();
    let counter = counters.entry(ctx.origin.clone()).or_insert(0);
    *counter = (*counter + 1).max(next);
    Ok(VersionVector::from(counters))
}

/// The time to stamp a write made at `now` that replaces `replaced`: no
/// earlier than it, even where this node's clock is behind the one that
/// wrote it, so that a version always ranks above the versions it saw
/// ([`crate::cluster::Version::rank`]).
fn stamped(now: u64, replaced: &FileEntry) -> u64 {
    now.max(replaced.modified_ms)
}

pub(super) fn distinct(chunks: &[u8]) -> BTreeSet<[u8; 32]> {
    chunks
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect()
}

/// The live (not deleted) entry at `path`.
fn live_entry(tx: &Connection, folder_id: &str, path: &str) -> Result<FileEntry> {
    query::entry(tx, folder_id, path)?
        .filter(|e| !e.deleted)
        .ok_or_else(|| not_found(format!("no {path} in this folder")))
}

/// Refuses when the client's base version is not the current one.
fn check_base(tx: &Connection, current: &FileEntry, base: Option<&VersionVector>) -> Result<()> {
    match base {
        Some(base) if !based_on(tx, current, base)? => Err(conflict(format!(
            "{} changed since the version you started from (it is at version {})",
            current.path, current.version
        ))),
        _ => Ok(()),
    }
}

/// Whether a client that last saw `base` saw `current`: `base` is its
/// vector, or that of its twin — the same write committed through another
/// node too (an upload or a named write sent again after `unavailable`),
/// which `current` stands for on every node ([`merge_version`]). The client
/// may have been answered with either.
fn based_on(tx: &Connection, current: &FileEntry, base: &VersionVector) -> Result<bool> {
    if base.compare(&current.vv) == Causality::Equal {
        return Ok(true);
    }
    let Some(upload) = upload_of(tx, current)? else {
        return Ok(false);
    };
    let twins: Vec<String> = tx
        .prepare_cached("SELECT vv FROM twins WHERE upload_id = ?1")?
        .query_map([upload], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(twins.iter().any(|vv| {
        serde_json::from_str::<VersionVector>(vv)
            .is_ok_and(|vv| vv.compare(base) == Causality::Equal)
    }))
}

/// Live entries strictly below `path`, in path order.
fn descendants(tx: &Connection, folder_id: &str, path: &str) -> Result<Vec<FileEntry>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM entries WHERE folder_id = ?1 AND deleted = 0 \
         AND path > ?2 AND path < ?3 ORDER BY path"
    ))?;
    // Every path below "a" sorts between "a/" and "a0" ('0' follows '/').
    let rows = stmt.query_map(
        params![folder_id, format!("{path}/"), format!("{path}0")],
        query::entry_from_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Refuses when `path` is taken by a live entry.
fn ensure_free(tx: &Connection, folder_id: &str, path: &str) -> Result<()> {
    match query::entry(tx, folder_id, path)? {
        Some(e) if !e.deleted => Err(conflict(format!("{path} already exists"))),
        _ => Ok(()),
    }
}

fn make_dir(
    tx: &Connection,
    ctx: &WriterContext,
    now: u64,
    folder_id: &str,
    path: &str,
    device_id: &Option<String>,
    fx: &mut Effects,
) -> Result<FileEntry> {
    let previous = query::entry(tx, folder_id, path)?;
    let dir = FileEntry {
        folder_id: folder_id.to_owned(),
        path: path.to_owned(),
        kind: EntryKind::Dir,
        file_id: FileId::default(),
        version: previous.as_ref().map_or(1, |p| p.version + 1),
        vv: bumped(
            tx,
            ctx,
            &previous.as_ref().map(|p| p.vv.clone()).unwrap_or_default(),
        )?,
        size: 0,
        chunk_size: 0,
        chunk_count: 0,
        epoch: 0,
        wrapped_file_key: Blob::default(),
        meta: Blob::default(),
        modified_ms: previous.iter().fold(now, stamped),
        device_id: device_id.clone(),
        deleted: false,
    };
    put_version(tx, ctx, &dir, &[])?;
    file_event(fx, &dir, FileChange::Created, None);
    Ok(dir)
}

/// Creates the missing ancestor directories of `path`; refuses when one of them is a file.
fn make_parents(
    tx: &Connection,
    ctx: &WriterContext,
    now: u64,
    folder_id: &str,
    path: &str,
    device_id: &Option<String>,
    fx: &mut Effects,
) -> Result<()> {
    let mut ancestors = Vec::new();
    let mut dir = paths::parent(path);
    while !dir.is_empty() {
        ancestors.push(dir);
        dir = paths::parent(dir);
    }
    for dir in ancestors.into_iter().rev() {
        match query::entry(tx, folder_id, dir)? {
            Some(e) if !e.deleted && e.kind == EntryKind::Dir => {}
            Some(e) if !e.deleted => return Err(conflict(format!("{dir} is a file"))),
            _ => {
                make_dir(tx, ctx, now, folder_id, dir, device_id, fx)?;
            }
        }
    }
    Ok(())
}

/// Records a new version of a path: the version row, the latest entry, the
/// chunk references, and the pruning of versions beyond the kept history.
fn put_version(
    tx: &Connection,
    ctx: &WriterContext,
    entry: &FileEntry,
    chunks: &[u8],
) -> Result<()> {
    put_version_of(tx, ctx, entry, chunks, None, Slot::Latest)
}

/// What [`put_version_of`] puts where.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The path's latest version: kept, and shown as its entry.
    Latest,
    /// Kept among the path's versions only: one the entry has moved past,
    /// or one that lost to the version shown.
    History,
}

/// [`put_version`] of a version that `upload` committed (if one did), where
/// `slot` says.
fn put_version_of(
    tx: &Connection,
    ctx: &WriterContext,
    entry: &FileEntry,
    chunks: &[u8],
    upload: Option<&str>,
    slot: Slot,
) -> Result<()> {
    let values = params![
        entry.folder_id,
        entry.path,
        kind_str(entry.kind),
        &entry.file_id.0[..],
        entry.version as i64,
        vv_json(&entry.vv),
        entry.size as i64,
        entry.chunk_size as i64,
        entry.chunk_count as i64,
        entry.epoch as i64,
        entry.wrapped_file_key.as_bytes(),
        entry.meta.as_bytes(),
        entry.modified_ms as i64,
        entry.device_id,
        entry.deleted as i64,
    ];
    // A version is kept once, under its vector, however often it comes.
    let new = exec(
        tx,
        &format!(
            "INSERT OR IGNORE INTO versions ({ENTRY_COLUMNS}, chunks, upload_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ),
        rusqlite::params_from_iter(values.iter().copied().chain([
            &chunks as &dyn rusqlite::ToSql,
            &upload as &dyn rusqlite::ToSql,
        ])),
    )? == 1;
    if slot == Slot::Latest {
        exec(
            tx,
            &format!(
                "INSERT OR REPLACE INTO entries ({ENTRY_COLUMNS}, parent) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ),
            rusqlite::params_from_iter(values.iter().copied().chain(std::iter::once(
                &paths::parent(&entry.path) as &dyn rusqlite::ToSql,
            ))),
        )?;
    }
    if !new {
        return Ok(());
    }
    for hash in distinct(chunks) {
        exec(
            tx,
            "INSERT INTO chunk_refs (hash, folder_id, refs) VALUES (?1, ?2, 1) \
             ON CONFLICT (hash, folder_id) DO UPDATE SET refs = refs + 1",
            params![&hash[..], entry.folder_id],
        )?;
    }
    prune(tx, ctx, &entry.folder_id, &entry.path)
}

/// Keeps the `keep_versions` versions of `path` that rank highest, and
/// releases the chunks of the rest. The rank orders the versions alike on
/// every node, so a node that keeps the versions it met and prunes them so
/// keeps the same ones as every other node that met the same versions, in
/// whatever order they came: pruning again after a late version is the same
/// as pruning once. The latest version ranks highest (it is the winner of
/// every version met), and is kept in any case.
fn prune(tx: &Connection, ctx: &WriterContext, folder_id: &str, path: &str) -> Result<()> {
    let count: i64 = one(
        tx,
        "SELECT count(*) FROM versions WHERE folder_id = ?1 AND path = ?2",
        params![folder_id, path],
        |r| r.get(0),
    )?;
    if count <= i64::from(ctx.keep_versions) {
        return Ok(());
    }
    let latest = query::entry(tx, folder_id, path)?.map(|e| e.vv);
    let mut kept: Vec<FileEntry> = tx
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM versions WHERE folder_id = ?1 AND path = ?2"
        ))?
        .query_map(params![folder_id, path], query::entry_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    kept.sort_by(|a, b| {
        (Some(&b.vv) == latest.as_ref())
            .cmp(&(Some(&a.vv) == latest.as_ref()))
            .then_with(|| query::ranked(b).rank(&query::ranked(a)))
    });
    for old in kept.iter().skip(ctx.keep_versions as usize) {
        remove_version(tx, folder_id, path, &old.vv)?;
    }
    Ok(())
}

/// Removes a version row, releasing its chunks.
fn remove_version(tx: &Connection, folder_id: &str, path: &str, vv: &VersionVector) -> Result<()> {
    let vv = vv_json(vv);
    let chunks: Option<Vec<u8>> = one(
        tx,
        "SELECT chunks FROM versions WHERE folder_id = ?1 AND path = ?2 AND vv = ?3",
        params![folder_id, path, vv],
        |r| r.get(0),
    )
    .optional()?;
    if let Some(chunks) = &chunks {
        exec(
            tx,
            "DELETE FROM versions WHERE folder_id = ?1 AND path = ?2 AND vv = ?3",
            params![folder_id, path, vv],
        )?;
        for hash in distinct(chunks) {
            release_chunk(tx, folder_id, &hash)?;
        }
    }
    Ok(())
}

/// A version that lost to a concurrent one, to keep as a conflict copy: its
/// entry, its chunks, and the upload that made it, if one did.
pub(super) type Lost = (FileEntry, Vec<u8>, Option<String>);

/// A version of a file entry written on a peer, merged by version vector:
/// kept, whatever it is — every node keeps every version it meets, under its
/// vector, so that all keep the same history ([`query::history`]) — and
/// shown under the path when it follows the version shown there, or is
/// concurrent with it and ranks higher (the same one on every node). The
/// concurrent version that is no longer shown, unless a tombstone, is
/// returned: the conflict copy to keep beside it — with, when the remote
/// wins, the earlier versions of the history it beat (see [`stranded`]).
pub(super) fn merge_version(
    tx: &Connection,
    ctx: &WriterContext,
    remote: FileEntry,
    chunks: Vec<u8>,
    upload: Option<&str>,
) -> Result<Vec<Lost>> {
    let Some(current) = query::entry(tx, &remote.folder_id, &remote.path)? else {
        put_version_of(tx, ctx, &remote, &chunks, upload, Slot::Latest)?;
        return Ok(Vec::new());
    };
    let mut copies = Vec::new();
    match remote.vv.compare(&current.vv) {
        Causality::Equal => return Ok(copies),
        // A version the path has moved past (it came by a longer way than
        // the one that followed it): into the history.
        Causality::Before => {
            put_version_of(tx, ctx, &remote, &chunks, upload, Slot::History)?;
            return Ok(copies);
        }
        Causality::After => {
            put_version_of(tx, ctx, &remote, &chunks, upload, Slot::Latest)?;
            return Ok(copies);
        }
        Causality::Concurrent => {}
    }
    // One upload committed through two nodes (a retry after `unavailable`)
    // is one write: the one that ranks higher stands for both, and nothing
    // is copied.
    let current_upload = upload_of(tx, &current)?;
    let same = upload.is_some() && upload == current_upload.as_deref();
    let remote_wins = query::ranked(&remote).outranks(&query::ranked(&current));
    let kept = vv_json(if remote_wins { &remote.vv } else { &current.vv });
    let (loser, held, loser_upload) = if remote_wins {
        let held = query::stored(tx, &current.folder_id, &current.path, &current.vv)?
            .map(|(_, chunks)| chunks)
            .unwrap_or_default();
        copies = stranded(tx, &current, &remote)?;
        put_version_of(tx, ctx, &remote, &chunks, upload, Slot::Latest)?;
        (current, held, current_upload)
    } else {
        put_version_of(tx, ctx, &remote, &chunks, upload, Slot::History)?;
        (remote, chunks, upload.map(str::to_owned))
    };
    if same {
        // The loser's vector stays known as the winner's twin: a client
        // answered with it edits on (see [`based_on`]).
        exec(
            tx,
            "INSERT OR IGNORE INTO twins (upload_id, vv, kept) VALUES (?1, ?2, ?3)",
            params![loser_upload, vv_json(&loser.vv), kept],
        )?;
        return Ok(copies);
    }
    // The copy keeps the upload that made it: a commit of that upload
    // retried later answers with the copy (see [`committed_as`]).
    copies.insert(0, (loser, held, loser_upload));
    // A tombstone that lost needs no copy, and neither does a directory (it
    // holds nothing; what is in it stays under the path).
    copies.retain(|(loser, _, _)| !loser.deleted && loser.kind == EntryKind::File);
    Ok(copies)
}

/// The earlier versions of `beaten`'s history that `winner` does not
/// descend from: the chain it beat. A node that met each of them as the
/// head of the path, before the one after it had arrived, kept it as a
/// conflict copy; kept as copies here too, they are the same copies on
/// every node. (They stay among the path's versions, out of its history.)
fn stranded(tx: &Connection, beaten: &FileEntry, winner: &FileEntry) -> Result<Vec<Lost>> {
    let mut losers = Vec::new();
    for version in query::history(tx, &beaten.folder_id, &beaten.path)?
        .into_iter()
        .skip(1)
    {
        if matches!(
            version.vv.compare(&winner.vv),
            Causality::Before | Causality::Equal
        ) {
            continue;
        }
        let upload = upload_of(tx, &version)?;
        let chunks = query::stored(tx, &version.folder_id, &version.path, &version.vv)?
            .map(|(_, chunks)| chunks)
            .unwrap_or_default();
        losers.push((version, chunks, upload));
    }
    Ok(losers)
}

/// Refuses a named creation whose row `id` in `table` the caller does not
/// hold but this node knows: here under another owner (an id derived alike
/// from two names: not to be met), or made and deleted since — the
/// creation, sent again late, does not bring it back.
fn named_creation_free(tx: &Connection, table: &str, id: &str, what: &str) -> Result<()> {
    if replica::known(tx, table, &[id])? {
        return Err(conflict(format!(
            "the {what} this request names was made and is gone, or is not yours"
        )));
    }
    Ok(())
}

/// Binds a session that runs on no device yet to `device_id`.
fn bind_session(tx: &Connection, session_id: &str, device_id: &str) -> Result<()> {
    exec(
        tx,
        "UPDATE sessions SET device_id = ?2 WHERE session_id = ?1 AND device_id IS NULL",
        params![session_id, device_id],
    )?;
    Ok(())
}

/// Whether the folder holds each `(member, epoch, wrapped key)` given, and
/// there is at least one: folder keys are wrapped at random (RSA-OAEP), so
/// the keys a write left name that write — a share or a rotation sent again
/// finds its own keys, where another write's would differ.
fn holds_keys<'a>(
    tx: &Connection,
    folder_id: &str,
    keys: impl Iterator<Item = (&'a str, u64, &'a Blob)>,
) -> Result<bool> {
    let mut any = false;
    for (username, epoch, wrapped) in keys {
        let held: bool = one(
            tx,
            "SELECT EXISTS (SELECT 1 FROM folder_keys \
             WHERE folder_id = ?1 AND username = ?2 AND epoch = ?3 AND wrapped_key = ?4)",
            params![folder_id, username, epoch as i64, wrapped.as_bytes()],
            |r| r.get(0),
        )?;
        if !held {
            return Ok(false);
        }
        any = true;
    }
    Ok(any)
}

/// The version the write the client named `write_id` made of `path` (its
/// tombstone, the moved entry at its new path, the restored version), when
/// it was done already — here, or through another node whose version has
/// arrived: the answer to the write sent again, given once the write quorum
/// holds everything this node holds (`repeats`). The versions a named write
/// makes carry its name, as an upload's carry the upload's id, so that one
/// done through two nodes before either heard of the other merges as one
/// write ([`merge_version`]).
fn named_write(
    tx: &Connection,
    fx: &mut Effects,
    folder_id: &str,
    path: &str,
    write_id: &Option<String>,
) -> Result<Option<Applied>> {
    let Some(id) = write_id else {
        return Ok(None);
    };
    let done = committed_as(tx, folder_id, path, id)?;
    fx.repeats |= done.is_some();
    Ok(done.map(Applied::Entry))
}

/// The upload that committed `entry`'s version, if an upload did.
fn upload_of(tx: &Connection, entry: &FileEntry) -> Result<Option<String>> {
    Ok(one(
        tx,
        "SELECT upload_id FROM versions WHERE folder_id = ?1 AND path = ?2 AND vv = ?3",
        params![entry.folder_id, entry.path, vv_json(&entry.vv)],
        |r| r.get(0),
    )
    .optional()?
    .flatten())
}

/// The version `upload_id` made of `path`, committed here or — replicated
/// since — through another node: in the history of the path, or, once it
/// lost to a concurrent version, as its conflict copy. Of the versions kept
/// under the upload (its twin under another vector, the copy beside the
/// version that lost), the one a history shows, at `path` first, then the
/// newest.
fn committed_as(
    tx: &Connection,
    folder_id: &str,
    path: &str,
    upload_id: &str,
) -> Result<Option<FileEntry>> {
    let found: Vec<FileEntry> = tx
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM versions WHERE folder_id = ?1 AND upload_id = ?2"
        ))?
        .query_map(params![folder_id, upload_id], query::entry_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let mut keyed = Vec::with_capacity(found.len());
    for version in found {
        let shown = query::history(tx, folder_id, &version.path)?
            .iter()
            .any(|v| v.vv == version.vv);
        keyed.push(((shown, version.path == path, version.version), version));
    }
    Ok(keyed
        .into_iter()
        .max_by(|(k, a), (l, b)| {
            k.cmp(l)
                .then_with(|| query::ranked(a).rank(&query::ranked(b)))
        })
        .map(|(_, version)| version))
}

/// Keeps `loser`, a version that lost to a concurrent one, as a new entry
/// beside its path: `name.conflict-<device>-<time>.ext`, its content, file id
/// and vector unchanged, so that every node that finds the same conflict
/// makes the same copy. Returns the events to tell, or nothing when the copy
/// is already here.
pub(super) fn keep_copy(tx: &Connection, ctx: &WriterContext, lost: Lost) -> Result<Vec<Told>> {
    let (loser, chunks, upload) = lost;
    let who: String = loser
        .device_id
        .as_deref()
        .unwrap_or("peer")
        .chars()
        .take(9)
        .collect();
    let secs = loser.modified_ms / 1000;
    for n in 1.. {
        let name = if n == 1 {
            paths::conflict_name(&loser.path, &who, secs)
        } else {
            paths::conflict_name(&loser.path, &format!("{who}-{n}"), secs)
        };
        // The copy of an earlier or later version of the same chain, as made
        // (a copy is version 1; an edit of it is not): two versions of one
        // chain that lost within one second are one copy, shown at its
        // latest, wherever they were found first — not two names in an order
        // that differs between nodes (seed 9612 of the files world: each
        // name ended with both versions). `None`: kept, not shown.
        let told = match query::entry(tx, &loser.folder_id, &name)? {
            None => Some(FileChange::Created),
            Some(here) => {
                let as_made = here.version == 1 && !here.deleted && here.file_id == loser.file_id;
                match loser.vv.compare(&here.vv) {
                    Causality::Equal => return Ok(Vec::new()),
                    Causality::Before if as_made => None,
                    Causality::After if as_made => Some(FileChange::Modified),
                    _ => continue,
                }
            }
        };
        let copy = FileEntry {
            path: name,
            version: 1,
            ..loser
        };
        let slot = if told.is_some() {
            Slot::Latest
        } else {
            Slot::History
        };
        put_version_of(tx, ctx, &copy, &chunks, upload.as_deref(), slot)?;
        let mut fx = Effects::default();
        if let Some(change) = told {
            file_event(&mut fx, &copy, change, None);
        }
        return Ok(fx.events);
    }
    unreachable!("some name is free")
}

fn release_chunk(tx: &Connection, folder_id: &str, hash: &[u8; 32]) -> Result<()> {
    let refs: Option<i64> = one(
        tx,
        "SELECT refs FROM chunk_refs WHERE hash = ?1 AND folder_id = ?2",
        params![&hash[..], folder_id],
        |r| r.get(0),
    )
    .optional()?;
    match refs {
        Some(n) if n > 1 => exec(
            tx,
            "UPDATE chunk_refs SET refs = refs - 1 WHERE hash = ?1 AND folder_id = ?2",
            params![&hash[..], folder_id],
        )?,
        _ => exec(
            tx,
            "DELETE FROM chunk_refs WHERE hash = ?1 AND folder_id = ?2",
            params![&hash[..], folder_id],
        )?,
    };
    Ok(())
}

/// An upload row.
struct UploadRow {
    upload_id: String,
    folder_id: String,
    path: String,
    device_id: Option<String>,
    file_id: Vec<u8>,
    size: u64,
    chunk_size: u32,
    chunk_count: u32,
    epoch: u64,
    wrapped_file_key: Vec<u8>,
    meta: Vec<u8>,
    base: Option<VersionVector>,
    expires_ms: u64,
    committed_version: Option<u64>,
}

fn upload_row(tx: &Connection, upload_id: &str, username: &str) -> Result<Option<UploadRow>> {
    Ok(one(
        tx,
        "SELECT upload_id, folder_id, path, device_id, file_id, size, chunk_size, chunk_count, epoch, \
         wrapped_file_key, meta, base, expires_ms, committed_version \
         FROM uploads WHERE upload_id = ?1 AND username = ?2",
        params![upload_id, username],
        |r| {
            Ok(UploadRow {
                upload_id: r.get(0)?,
                folder_id: r.get(1)?,
                path: r.get(2)?,
                device_id: r.get(3)?,
                file_id: r.get(4)?,
                size: r.get::<_, i64>(5)? as u64,
                chunk_size: r.get::<_, i64>(6)? as u32,
                chunk_count: r.get::<_, i64>(7)? as u32,
                epoch: r.get::<_, i64>(8)? as u64,
                wrapped_file_key: r.get(9)?,
                meta: r.get(10)?,
                base: r
                    .get::<_, Option<String>>(11)?
                    .and_then(|b| serde_json::from_str(&b).ok()),
                expires_ms: r.get::<_, i64>(12)? as u64,
                committed_version: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
            })
        },
    )
    .optional()?)
}

/// A live, uncommitted upload of `username`.
fn open_upload(tx: &Connection, username: &str, upload_id: &str, now: u64) -> Result<UploadRow> {
    match upload_row(tx, upload_id, username)? {
        Some(u) if u.expires_ms > now && u.committed_version.is_none() => Ok(u),
        Some(u) if u.committed_version.is_some() => {
            Err(conflict(format!("upload {upload_id} is already committed")))
        }
        _ => Err(not_found(format!("no upload {upload_id} in progress"))),
    }
}

/// Whether a kept version of the folder refers to the chunk.
fn folder_holds(tx: &Connection, folder_id: &str, hash: &[u8]) -> Result<bool> {
    Ok(one(
        tx,
        "SELECT EXISTS (SELECT 1 FROM chunk_refs WHERE hash = ?1 AND folder_id = ?2)",
        params![hash, folder_id],
        |r| r.get(0),
    )?)
}

/// Records that chunk `index` of an upload arrived (or, with `size` `None`,
/// was named and is held by the folder). An index keeps the hash it first got.
fn receive_chunk(
    tx: &Connection,
    now: u64,
    upload_id: &str,
    index: u32,
    hash: &[u8],
    size: Option<u64>,
) -> Result<()> {
    let known: Option<Vec<u8>> = one(
        tx,
        "SELECT hash FROM upload_chunks WHERE upload_id = ?1 AND idx = ?2",
        params![upload_id, index],
        |r| r.get(0),
    )
    .optional()?;
    if let Some(known) = known
        && known != hash
    {
        return Err(Error::refused(
            ErrorCode::ChecksumMismatch,
            format!("chunk {index} is not the chunk the upload has for that index"),
        ));
    }
    exec(
        tx,
        "INSERT INTO upload_chunks (upload_id, idx, hash, received) VALUES (?1, ?2, ?3, 1) \
         ON CONFLICT (upload_id, idx) DO UPDATE SET received = 1",
        params![upload_id, index, hash],
    )?;
    if let Some(size) = size {
        exec(
            tx,
            "INSERT OR IGNORE INTO chunks (hash, size, created_ms) VALUES (?1, ?2, ?3)",
            params![hash, size as i64, now as i64],
        )?;
    }
    Ok(())
}

fn drop_upload(tx: &Connection, upload_id: &str) -> Result<()> {
    exec(
        tx,
        "DELETE FROM upload_chunks WHERE upload_id = ?1",
        [upload_id],
    )?;
    exec(tx, "DELETE FROM uploads WHERE upload_id = ?1", [upload_id])?;
    Ok(())
}

/// Indices of an upload's chunks not yet received.
pub(crate) fn missing_chunks(
    tx: &Connection,
    upload_id: &str,
    chunk_count: u32,
) -> Result<Vec<u32>> {
    let mut received = vec![false; chunk_count as usize];
    let mut stmt =
        tx.prepare_cached("SELECT idx FROM upload_chunks WHERE upload_id = ?1 AND received = 1")?;
    for idx in stmt.query_map([upload_id], |r| r.get::<_, i64>(0))? {
        if let Some(slot) = received.get_mut(idx? as usize) {
            *slot = true;
        }
    }
    Ok((0..chunk_count)
        .filter(|&i| !received[i as usize])
        .collect())
}

fn upload_begin(tx: &Connection, now: u64, u: &UploadRecord) -> Result<Applied> {
    let (folder, _) = require(tx, &u.username, &u.folder_id, Need::Write)?;
    // A write begun again under its id — after a lost answer, or through
    // another node — answers with the version it made, if it made one.
    let here: Option<(String, Vec<u8>, Option<i64>)> = one(
        tx,
        "SELECT username, upload_key, committed_version FROM uploads WHERE upload_id = ?1",
        [&u.upload_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()?;
    if let Some((owner, _, _)) = &here
        && *owner != u.username
    {
        return Err(conflict(format!("upload id {} is taken", u.upload_id)));
    }
    if let Some(entry) = committed_as(tx, &u.folder_id, &u.path, &u.upload_id)? {
        return Ok(Applied::Entry(entry));
    }
    // Under its id, a begin with other content (the client began again with
    // a new key) replaces the unfinished one.
    if let Some((_, key, committed)) = &here
        && (committed.is_some() || key[..] != u.upload_key.0[..])
    {
        drop_upload(tx, &u.upload_id)?;
    }
    if u.epoch != folder.epoch {
        return Err(conflict(format!(
            "the folder key was rotated: uploads use epoch {}, not {}",
            folder.epoch, u.epoch
        )));
    }
    if let Some(existing) = query::entry(tx, &u.folder_id, &u.path)?.filter(|e| !e.deleted)
        && existing.kind == EntryKind::Dir
    {
        return Err(conflict(format!("{} is a directory", u.path)));
    }
    // The same listed upload begun again (a client resuming without its id)
    // finds the one in progress.
    let resumed: Option<(String, u64)> = one(
        tx,
        "SELECT upload_id, expires_ms FROM uploads WHERE upload_key = ?1 AND username = ?2 \
         AND committed_version IS NULL AND expires_ms > ?3",
        params![&u.upload_key.0[..], u.username, now as i64],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
    )
    .optional()?;
    let (upload_id, expires_ms) = match resumed {
        Some(found) => found,
        None => {
            // A committed or expired upload with the same key makes way.
            let stale: Vec<String> = tx
                .prepare_cached("SELECT upload_id FROM uploads WHERE upload_key = ?1")?
                .query_map([&u.upload_key.0[..]], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in stale {
                drop_upload(tx, &id)?;
            }
            exec(
                tx,
                "INSERT INTO uploads (upload_id, upload_key, username, device_id, folder_id, path, file_id, size, \
                 chunk_size, chunk_count, epoch, wrapped_file_key, meta, base, created_ms, expires_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                params![
                    u.upload_id,
                    &u.upload_key.0[..],
                    u.username,
                    u.device_id,
                    u.folder_id,
                    u.path,
                    &u.file_id.0[..],
                    u.size as i64,
                    u.chunk_size as i64,
                    u.chunk_count as i64,
                    u.epoch as i64,
                    u.wrapped_file_key.as_bytes(),
                    u.meta.as_bytes(),
                    u.base.as_ref().map(vv_json),
                    now as i64,
                    u.expires_ms as i64
                ],
            )?;
            // A listed upload announces its chunks; those the folder already
            // holds count as received.
            for (index, hash) in u.chunks.as_bytes().chunks_exact(32).enumerate() {
                let held = folder_holds(tx, &u.folder_id, hash)?;
                exec(
                    tx,
                    "INSERT INTO upload_chunks (upload_id, idx, hash, received) VALUES (?1, ?2, ?3, ?4)",
                    params![u.upload_id, index as i64, hash, held],
                )?;
            }
            (u.upload_id.clone(), u.expires_ms)
        }
    };
    Ok(Applied::Upload(UploadState {
        missing: missing_chunks(tx, &upload_id, u.chunk_count)?,
        upload_id,
        chunk_count: u.chunk_count,
        expires_ms,
    }))
}

fn upload_commit(
    tx: &Connection,
    ctx: &WriterContext,
    now: u64,
    username: &str,
    upload_id: &str,
    meta: Option<&Blob>,
    fx: &mut Effects,
) -> Result<Applied> {
    // Committing again what was committed answers with the same version: a
    // client that lost the first answer may retry without making two. So
    // does committing an upload whose version, made through another node,
    // has arrived meanwhile.
    let row = upload_row(tx, upload_id, username)?;
    if let Some(done) = &row
        && let Some(entry) = committed_as(tx, &done.folder_id, &done.path, upload_id)?
    {
        if done.committed_version.is_none() {
            mark_committed(tx, upload_id, entry.version)?;
        }
        fx.repeats = true;
        return Ok(Applied::Entry(entry));
    }
    if let Some(done) = row
        && let Some(version) = done.committed_version
    {
        let entry = match query::version(tx, &done.folder_id, &done.path, version)? {
            // Written before versions kept their upload: the number is all
            // there is to go by.
            Some((entry, _)) if upload_of(tx, &entry)?.is_none() => entry,
            // Gone, or the number is another write's now: never answered
            // as this one's (simulation seed 323).
            _ => {
                return Err(conflict(format!(
                    "upload {upload_id} was committed, and that version is gone"
                )));
            }
        };
        fx.repeats = true;
        return Ok(Applied::Entry(entry));
    }
    let upload = open_upload(tx, username, upload_id, now)?;
    let (folder, _) = require(tx, username, &upload.folder_id, Need::Write)?;
    let missing = missing_chunks(tx, upload_id, upload.chunk_count)?;
    if !missing.is_empty() {
        return Err(bad_request(format!(
            "{} of {} chunks have not arrived (first missing: {})",
            missing.len(),
            upload.chunk_count,
            missing[0]
        )));
    }
    let meta = match meta {
        Some(meta) => meta.as_bytes().to_vec(),
        None if upload.meta.is_empty() => {
            return Err(bad_request(
                "a streamed upload gives its metadata at commit",
            ));
        }
        None => upload.meta.clone(),
    };
    if upload.epoch != folder.epoch {
        return Err(conflict(format!(
            "the folder key was rotated to epoch {} during the upload; encrypt again",
            folder.epoch
        )));
    }
    let path = upload.path.clone();
    let current = query::entry(tx, &upload.folder_id, &path)?;
    match (&current, &upload.base) {
        (Some(c), _) if !c.deleted && c.kind == EntryKind::Dir => {
            return Err(conflict(format!("{path} is a directory")));
        }
        (Some(c), Some(b)) if !based_on(tx, c, b)? => {
            return Err(conflict(format!(
                "{path} changed since the version the upload started from (it is at version {})",
                c.version
            )));
        }
        (Some(c), None) if !c.deleted => {
            return Err(conflict(format!(
                "{path} already exists (at version {})",
                c.version
            )));
        }
        (None, Some(b)) if *b != VersionVector::new() => {
            return Err(conflict(format!("{path} no longer exists")));
        }
        _ => {}
    }
    let chunks: Vec<u8> = tx
        .prepare_cached("SELECT hash FROM upload_chunks WHERE upload_id = ?1 ORDER BY idx")?
        .query_map([upload_id], |r| r.get::<_, Vec<u8>>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .concat();
    make_parents(
        tx,
        ctx,
        now,
        &upload.folder_id,
        &path,
        &upload.device_id,
        fx,
    )?;
    let entry = FileEntry {
        folder_id: upload.folder_id.clone(),
        path,
        kind: EntryKind::File,
        file_id: FileId(upload.file_id.clone().try_into().unwrap_or_default()),
        version: current.as_ref().map_or(1, |c| c.version + 1),
        vv: bumped(
            tx,
            ctx,
            &current.as_ref().map(|c| c.vv.clone()).unwrap_or_default(),
        )?,
        size: upload.size,
        chunk_size: upload.chunk_size,
        chunk_count: upload.chunk_count,
        epoch: upload.epoch,
        wrapped_file_key: Blob(upload.wrapped_file_key.clone()),
        meta: Blob(meta),
        modified_ms: current.iter().fold(now, stamped),
        device_id: upload.device_id.clone(),
        deleted: false,
    };
    put_version_of(tx, ctx, &entry, &chunks, Some(upload_id), Slot::Latest)?;
    mark_committed(tx, upload_id, entry.version)?;
    let how = match &current {
        Some(c) if !c.deleted => FileChange::Modified,
        _ => FileChange::Created,
    };
    file_event(fx, &entry, how, None);
    Ok(Applied::Entry(entry))
}

/// Records that `upload_id` made `version`: its chunks are the version's now.
fn mark_committed(tx: &Connection, upload_id: &str, version: u64) -> Result<()> {
    exec(
        tx,
        "DELETE FROM upload_chunks WHERE upload_id = ?1",
        [upload_id],
    )?;
    exec(
        tx,
        "UPDATE uploads SET committed_version = ?2 WHERE upload_id = ?1",
        params![upload_id, version as i64],
    )?;
    Ok(())
}

/// Most chunk files one collection deletes; the rest wait for the next round.
const COLLECT_LIMIT: u32 = 1000;

/// Expires uploads and deletes chunks nothing refers to any more. Runs in the
/// writer, so no upload can begin referring to a chunk between the moment it
/// is found unreferenced and the moment its file goes.
fn collect(tx: &Connection, ctx: &WriterContext, now: u64) -> Result<Applied> {
    let expired: Vec<String> = tx
        .prepare_cached("SELECT upload_id FROM uploads WHERE expires_ms <= ?1")?
        .query_map([now as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in expired {
        drop_upload(tx, &id)?;
    }
    exec(
        tx,
        "DELETE FROM held_chunks WHERE until_ms <= ?1",
        [now as i64],
    )?;
    // Notes of records whose chunk is held now, or referred to by no version
    // any more (superseded or removed since; it may never come).
    exec(
        tx,
        "DELETE FROM unheld WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.hash = unheld.hash) \
         OR NOT EXISTS (SELECT 1 FROM chunk_refs r WHERE r.hash = unheld.hash)",
        [],
    )?;
    let garbage: Vec<Vec<u8>> = tx
        .prepare_cached(
            "SELECT hash FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM chunk_refs r WHERE r.hash = c.hash) \
             AND NOT EXISTS (SELECT 1 FROM upload_chunks u WHERE u.hash = c.hash) \
             AND NOT EXISTS (SELECT 1 FROM held_chunks h WHERE h.hash = c.hash) LIMIT ?1",
        )?
        .query_map([COLLECT_LIMIT], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for hash in &garbage {
        if let Ok(h) = <[u8; 32]>::try_from(hash.as_slice()) {
            ctx.chunks.remove(&h)?;
        }
        exec(tx, "DELETE FROM chunks WHERE hash = ?1", [hash])?;
    }
    Ok(Applied::Collected(garbage.len()))
}
