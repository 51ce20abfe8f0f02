//! What each request does, one file per area. Handlers validate their input,
//! read through the store's read connections, and make every change by sending
//! a [`Change`](crate::store::Change) to the store's writer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coffer_proto::{Request, Response};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Server;
use crate::dispatch::Session;
use crate::error::{Error, Result};
use crate::store::{Applied, Change};

pub(crate) use account::{format_cursor, register_owned};
pub(crate) use file::{ChunkJob, prepare_chunk, store_chunk};
pub(crate) use folder::key_change_here;

mod account;
mod device;
pub(crate) mod file;
mod folder;
mod share;

/// A handler's answer: the response and its body.
pub(crate) type Answer = Result<(Response, Bytes)>;

fn answer(response: Response) -> Answer {
    Ok((response, Bytes::new()))
}

/// A write's id as the client named it: of an upload id's form, or refused.
fn write_id(id: Option<String>) -> Result<Option<String>> {
    match id {
        Some(id) if !coffer_proto::request::is_upload_id(&id) => Err(crate::error::bad_request(
            "a write id is `u` and 32 lowercase hex digits",
        )),
        id => Ok(id),
    }
}

/// The id of what a named creation makes (`prefix` and 32 hex digits, like
/// [`Server::new_id`]'s): the same wherever the creation is done, so a
/// creation sent again through another node makes the same row, which the
/// row merge keeps as one (`replica::NAMED`). It is derived from the
/// creator's name as well as the client's id: no one can name a row into
/// another user's folder or device, even where that row has not arrived yet.
fn named_id(prefix: &str, username: &str, write_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"coffer named creation\0")
        .chain_update(prefix.as_bytes())
        .chain_update(b"\0")
        .chain_update(username.as_bytes())
        .chain_update(b"\0")
        .chain_update(write_id.as_bytes())
        .finalize();
    format!("{prefix}{}", hex::encode(&digest[..16]))
}

/// The id of a row a creation makes, and whether the creation is named:
/// derived from the client's write id, or picked at random.
fn creation_id(
    server: &Server,
    prefix: &str,
    username: &str,
    write_id: Option<String>,
) -> Result<(String, bool)> {
    Ok(match self::write_id(write_id)? {
        Some(id) => (named_id(prefix, username, &id), true),
        None => (server.new_id(prefix), false),
    })
}

/// An [`Applied`] other than the one a change produces: a bug.
fn unexpected(applied: Applied) -> Error {
    Error::Io(std::io::Error::other(format!(
        "unexpected store answer {applied:?}"
    )))
}

/// Sends the request to its handler. The access check has already passed.
pub(crate) async fn route(
    server: &Server,
    session: &mut Session,
    request: Request,
    body: Bytes,
) -> Answer {
    use Request as R;
    match request {
        R::Hello(_) => unreachable!("hello is answered before routing"),
        R::Ping => account::ping(server).await,
        R::Register(r) => account::register(server, r).await,
        R::Login(r) => account::login(server, session, r).await,
        R::Auth(r) => account::auth(server, session, r).await,
        R::Refresh => account::refresh(server, session).await,
        R::Logout => account::logout(server, session).await,
        R::Whoami => account::whoami(server, session).await,
        R::SessionList => account::sessions(server, session).await,
        R::SessionRevoke(r) => account::revoke(server, session, r).await,
        R::UserList => account::users(server).await,
        R::UserDisable(r) => account::disable(server, session, r).await,
        R::KeysPublish(r) => account::publish_keys(server, session, r).await,
        R::PublicKeyGet(r) => account::public_key(server, r).await,
        R::PrivateKeyGet => account::private_key(server, session).await,
        R::DeviceRegister(r) => device::register(server, session, r).await,
        R::DeviceList => device::list(server, session).await,
        R::DeviceRename(r) => device::rename(server, session, r).await,
        R::DeviceRemove(r) => device::remove(server, session, r).await,
        R::FolderCreate(r) => folder::create(server, session, r).await,
        R::FolderList => folder::list(server, session).await,
        R::FolderInfo(r) => folder::info(server, session, r).await,
        R::FolderKeys(r) => folder::keys(server, session, r).await,
        R::FolderShare(r) => folder::share(server, session, r).await,
        R::FolderUnshare(r) => folder::unshare(server, session, r).await,
        R::FolderSetRole(r) => folder::set_role(server, session, r).await,
        R::FolderLeave(r) => folder::leave(server, session, r).await,
        R::InviteList => folder::invites(server, session).await,
        R::InviteAccept(r) => folder::accept(server, session, r).await,
        R::InviteDecline(r) => folder::decline(server, session, r).await,
        R::List(r) => file::list(server, r).await,
        R::Stat(r) => file::stat(server, r).await,
        R::History(r) => file::history(server, r).await,
        R::Restore(r) => file::restore(server, session, r).await,
        R::UploadBegin(r) => file::upload_begin(server, session, r, body).await,
        R::UploadResume(r) => file::upload_resume(server, session, r).await,
        R::UploadChunk(r) => {
            file::store_chunk(server, file::prepare_chunk(server, session, r, body).await?).await
        }
        R::UploadCommit(r) => file::upload_commit(server, session, r).await,
        R::UploadAbort(r) => file::upload_abort(server, session, r).await,
        R::Download(r) => file::download(server, r).await,
        R::ChunkGet(r) => file::chunk_get(server, session, r).await,
        R::Delete(r) => file::delete(server, session, r).await,
        R::Move(r) => file::move_path(server, session, r).await,
        R::Mkdir(r) => file::mkdir(server, session, r).await,
        R::FileShare(r) => share::create(server, session, r).await,
        R::FileShareRevoke(r) => share::revoke(server, session, r).await,
        R::SharedList => share::list(server, session).await,
        R::SharedDownload(r) => share::download(server, session, r).await,
        R::Subscribe(r) => account::subscribe(server, session, r).await,
        R::Unsubscribe => {
            session.subscription = None;
            answer(Response::Ok)
        }
    }
}

/// Housekeeping until shutdown: expire unfinished uploads and delete chunks
/// nothing refers to any more.
pub(crate) async fn maintenance(server: Arc<Server>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(server.config.collect_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = collect(&server).await {
            warn!(error = %e, "collecting garbage failed; will retry");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// One round of collection; returns how many chunk files were deleted.
pub(crate) async fn collect(server: &Server) -> Result<usize> {
    match server.store.write(Change::Collect).await? {
        Applied::Collected(count) => {
            if count > 0 {
                debug!(chunks = count, "collected unreferenced chunks");
            }
            Ok(count)
        }
        other => Err(unexpected(other)),
    }
}
