//! Who may do what: the one place where access is decided.
//!
//! [`requirement`] says, for every request of the protocol, what the caller
//! must be: nobody in particular, signed in, an admin, or a member of a folder
//! with at least a given role (or the recipient of a share, or the owner of an
//! upload). The connection enforces it before a handler runs; the store's
//! writer checks folder roles again with [`require`] inside the transaction
//! that makes a change, so a role lost in between is still respected.

use coffer_proto::Request;
use coffer_proto::types::{MemberStatus, Role, Scope};
use rusqlite::Connection;

use crate::error::{Result, forbidden, not_found};
use crate::store::query::{self, FolderRow};

/// What a folder operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Reading: viewers, editors, owners.
    Read,
    /// Changing content: editors and owners.
    Write,
    /// Sharing, unsharing, roles: owners.
    Manage,
}

impl Need {
    fn allows(self, role: Role) -> bool {
        match self {
            Need::Read => true,
            Need::Write => role.can_write(),
            Need::Manage => role == Role::Owner,
        }
    }
}

/// What the caller of a request must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requirement<'a> {
    /// Anyone (before signing in).
    Anyone,
    /// Any signed-in user; the handler works on the caller's own records.
    Session,
    /// A signed-in admin.
    Admin,
    /// An active member of the folder with the needed role.
    Folder(&'a str, Need),
    /// The recipient of the single-file share.
    Share(&'a str),
    /// The user who began the upload, still allowed to write its folder.
    Upload(&'a str),
}

/// The requirement of every request.
pub(crate) fn requirement(request: &Request) -> Requirement<'_> {
    use Request as R;
    match request {
        R::Hello(_) | R::Ping | R::Register(_) | R::Login(_) | R::Auth(_) => Requirement::Anyone,
        R::UserList | R::UserDisable(_) => Requirement::Admin,
        R::Refresh
        | R::Logout
        | R::Whoami
        | R::SessionList
        | R::SessionRevoke(_)
        | R::KeysPublish(_)
        | R::PublicKeyGet(_)
        | R::PrivateKeyGet
        | R::DeviceRegister(_)
        | R::DeviceList
        | R::DeviceRename(_)
        | R::DeviceRemove(_)
        | R::FolderCreate(_)
        | R::FolderList
        | R::InviteList
        | R::InviteAccept(_)
        | R::InviteDecline(_)
        // Leaving needs membership, which the store checks: it answers a
        // leave sent again, by one no longer a member, as done, and refuses
        // a leave to the owner and to anyone else.
        | R::FolderLeave(_)
        | R::FileShareRevoke(_)
        | R::SharedList
        | R::Subscribe(_)
        | R::Unsubscribe => Requirement::Session,
        R::FolderInfo(f) | R::FolderKeys(f) => {
            Requirement::Folder(&f.folder_id, Need::Read)
        }
        R::FolderShare(r) => Requirement::Folder(&r.folder_id, Need::Manage),
        R::FolderUnshare(r) => Requirement::Folder(&r.folder_id, Need::Manage),
        R::FolderSetRole(r) => Requirement::Folder(&r.folder_id, Need::Manage),
        R::List(r) => Requirement::Folder(&r.folder_id, Need::Read),
        R::Stat(r) | R::Download(r) => Requirement::Folder(&r.folder_id, Need::Read),
        R::History(r) => Requirement::Folder(&r.folder_id, Need::Read),
        R::Restore(r) => Requirement::Folder(&r.folder_id, Need::Write),
        R::UploadBegin(r) => Requirement::Folder(&r.folder_id, Need::Write),
        R::UploadCommit(c) => Requirement::Upload(&c.upload_id),
        R::UploadResume(u) | R::UploadAbort(u) => Requirement::Upload(&u.upload_id),
        R::UploadChunk(c) => Requirement::Upload(&c.upload_id),
        R::ChunkGet(c) => match &c.scope {
            Scope::Folder(folder_id) => Requirement::Folder(folder_id, Need::Read),
            Scope::Share(share_id) => Requirement::Share(share_id),
        },
        R::Delete(r) => Requirement::Folder(&r.folder_id, Need::Write),
        R::Move(r) => Requirement::Folder(&r.folder_id, Need::Write),
        R::Mkdir(r) => Requirement::Folder(&r.folder_id, Need::Write),
        // Sharing one file read-only: its folder's editors and owner.
        R::FileShare(r) => Requirement::Folder(&r.folder_id, Need::Write),
        R::SharedDownload(s) => Requirement::Share(&s.share_id),
    }
}

fn no_folder(folder_id: &str) -> crate::error::Error {
    // Strangers and invitees learn nothing about a folder, not even that it exists.
    not_found(format!("no folder {folder_id}"))
}

/// Checks that `username` is an active member of `folder_id` with a role that
/// allows `need`; returns the folder and the role.
pub(crate) fn require(
    conn: &Connection,
    username: &str,
    folder_id: &str,
    need: Need,
) -> Result<(FolderRow, Role)> {
    let folder = query::folder(conn, folder_id)?.ok_or_else(|| no_folder(folder_id))?;
    match query::membership(conn, folder_id, username)? {
        Some((role, MemberStatus::Active)) if need.allows(role) => Ok((folder, role)),
        Some((role, MemberStatus::Active)) => {
            let role = query::role_str(role);
            let article = if role == "editor" { "an" } else { "a" };
            Err(forbidden(format!(
                "{username} is {article} {role} of \"{}\"",
                folder.label
            )))
        }
        _ => Err(no_folder(folder_id)),
    }
}
