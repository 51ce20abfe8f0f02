//! Folders, members, invitations and folder keys.

use coffer_proto::peer::{ForwardKeys, KeyChange, KeysForwarded};
use coffer_proto::request::{FolderCreate, FolderRef, FolderSetRole, FolderShare, FolderUnshare};
use coffer_proto::response::{FolderDetail, FolderKeys, Folders, Invites};
use coffer_proto::types::{Blob, Role};
use coffer_proto::{Response, name};

use super::{Answer, answer, unexpected};
use crate::Server;
use crate::access::{Need, require};
use crate::dispatch::Session;
use crate::error::{Result, bad_request};
use crate::store::{Applied, Change, query};

/// Largest wrapped folder key accepted (RSA-2048 OAEP gives 256 bytes).
const MAX_WRAPPED_KEY: usize = 1024;

fn wrapped_key(key: &Blob) -> Result<()> {
    if key.0.is_empty() || key.0.len() > MAX_WRAPPED_KEY {
        return Err(bad_request(format!(
            "a wrapped key has 1 to {MAX_WRAPPED_KEY} bytes"
        )));
    }
    Ok(())
}

fn username(raw: &str) -> Result<String> {
    name::normalize_username(raw).map_err(|e| bad_request(e.to_string()))
}

fn member_role(role: Role) -> Result<Role> {
    if role == Role::Owner {
        return Err(bad_request(
            "a member is a viewer or an editor; a folder has one owner",
        ));
    }
    Ok(role)
}

async fn folder_answer(server: &Server, change: Change) -> Answer {
    match server.store.write(change).await? {
        Applied::Folder(folder) => answer(Response::Folder(folder)),
        Applied::Done => answer(Response::Ok),
        other => Err(unexpected(other)),
    }
}

pub(super) async fn create(server: &Server, session: &Session, r: FolderCreate) -> Answer {
    let me = session.user()?.username.clone();
    name::validate_label("folder label", &r.label).map_err(|e| bad_request(e.to_string()))?;
    wrapped_key(&r.wrapped_key)?;
    let (folder_id, named) = super::creation_id(server, "f", &me, r.write_id)?;
    let change = Change::FolderCreate {
        username: me,
        folder_id,
        named,
        label: r.label,
        wrapped_key: r.wrapped_key,
    };
    folder_answer(server, change).await
}

pub(super) async fn list(server: &Server, session: &Session) -> Answer {
    let me = session.user()?.username.clone();
    let folders = server
        .store
        .read(move |conn| query::folders(conn, &me))
        .await?;
    answer(Response::Folders(Folders { folders }))
}

pub(super) async fn info(server: &Server, session: &Session, r: FolderRef) -> Answer {
    let me = session.user()?.username.clone();
    server
        .store
        .read(move |conn| {
            let (folder, role) = require(conn, &me, &r.folder_id, Need::Read)?;
            let members = query::members(conn, &r.folder_id)?;
            Ok((
                Response::FolderDetail(FolderDetail {
                    folder: query::folder_info(&folder, role),
                    members,
                }),
                Default::default(),
            ))
        })
        .await
}

pub(super) async fn keys(server: &Server, session: &Session, r: FolderRef) -> Answer {
    let me = session.user()?.username.clone();
    let folder_id = r.folder_id.clone();
    let keys = server
        .store
        .read(move |conn| query::folder_keys(conn, &folder_id, &me))
        .await?;
    answer(Response::FolderKeys(FolderKeys {
        folder_id: r.folder_id,
        keys,
    }))
}

pub(super) async fn share(server: &Server, session: &Session, r: FolderShare) -> Answer {
    let me = session.user()?.username.clone();
    key_change(server, me, KeyChange::Share(r)).await
}

pub(super) async fn unshare(server: &Server, session: &Session, r: FolderUnshare) -> Answer {
    let me = session.user()?.username.clone();
    key_change(server, me, KeyChange::Unshare(r)).await
}

/// Changes a folder's members and keys on the folder's key node — here, or
/// forwarded to it — so that two rotations of one folder never race on two
/// nodes, and a share never misses a rotation made at the same moment.
async fn key_change(server: &Server, username: String, change: KeyChange) -> Answer {
    let node = server.membership.owner(change.folder_id());
    let done = if node == server.config.node_id {
        key_change_here(server, username, change).await?
    } else {
        let cursors = server.store.cursors().await?;
        let forward = ForwardKeys {
            username,
            change,
            cursors,
        };
        crate::cluster::link::forward_keys(server, node, forward).await?
    };
    answer(match done.folder {
        Some(folder) => Response::Folder(folder),
        None => Response::Ok,
    })
}

/// Makes a change of a folder's members and keys on this node, the folder's
/// key node: asked here, or forwarded by a peer once this node holds what
/// that peer held ([`ForwardKeys::cursors`]).
pub(crate) async fn key_change_here(
    server: &Server,
    username: String,
    change: KeyChange,
) -> Result<KeysForwarded> {
    if !server.ready() {
        return Err(crate::dispatch::catching_up(server));
    }
    let node = server.membership.owner(change.folder_id());
    if node != server.config.node_id {
        return Err(crate::error::Error::refused(
            coffer_proto::ErrorCode::Unavailable,
            format!(
                "{} does not change the keys of folder {}; {node} does",
                server.config.node_id,
                change.folder_id()
            ),
        ));
    }
    let change = match change {
        KeyChange::Share(r) => {
            for key in &r.keys {
                wrapped_key(&key.wrapped_key)?;
            }
            Change::FolderShare {
                username,
                folder_id: r.folder_id,
                invitee: self::username(&r.username)?,
                role: member_role(r.role)?,
                keys: r.keys,
            }
        }
        KeyChange::Unshare(r) => {
            let mut keys = r.keys;
            for key in &mut keys {
                wrapped_key(&key.wrapped_key)?;
                key.username = self::username(&key.username)?;
            }
            Change::FolderUnshare {
                username,
                folder_id: r.folder_id,
                member: self::username(&r.username)?,
                epoch: r.epoch,
                keys,
            }
        }
    };
    match server.store.write(change).await? {
        Applied::Folder(folder) => Ok(KeysForwarded {
            folder: Some(folder),
        }),
        Applied::Done => Ok(KeysForwarded { folder: None }),
        other => Err(unexpected(other)),
    }
}

pub(super) async fn set_role(server: &Server, session: &Session, r: FolderSetRole) -> Answer {
    let me = session.user()?.username.clone();
    let change = Change::FolderSetRole {
        username: me,
        folder_id: r.folder_id,
        member: username(&r.username)?,
        role: member_role(r.role)?,
    };
    folder_answer(server, change).await
}

pub(super) async fn leave(server: &Server, session: &Session, r: FolderRef) -> Answer {
    let me = session.user()?.username.clone();
    let change = Change::FolderLeave {
        username: me,
        folder_id: r.folder_id,
    };
    folder_answer(server, change).await
}

pub(super) async fn invites(server: &Server, session: &Session) -> Answer {
    let me = session.user()?.username.clone();
    let invites = server
        .store
        .read(move |conn| query::invites(conn, &me))
        .await?;
    answer(Response::Invites(Invites { invites }))
}

pub(super) async fn accept(server: &Server, session: &Session, r: FolderRef) -> Answer {
    let me = session.user()?.username.clone();
    let change = Change::InviteAccept {
        username: me,
        folder_id: r.folder_id,
    };
    folder_answer(server, change).await
}

pub(super) async fn decline(server: &Server, session: &Session, r: FolderRef) -> Answer {
    let me = session.user()?.username.clone();
    let change = Change::InviteDecline {
        username: me,
        folder_id: r.folder_id,
    };
    folder_answer(server, change).await
}
