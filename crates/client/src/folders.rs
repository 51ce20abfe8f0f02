//! Folders and their members. Folder keys are made, wrapped for each member's
//! public key and rotated here, on the client; the server only ever stores
//! them wrapped.

use coffer_crypto::{FolderKey, PublicKey};
use coffer_net::Net;
use coffer_proto::request::{FolderCreate, FolderRef, FolderShare, FolderUnshare, PublicKeyGet};
use coffer_proto::response::{FolderDetail, FolderInfo, Invite};
use coffer_proto::types::{Blob, EpochKey, MemberKey, Role};
use coffer_proto::{Request, Response};

use crate::error::ClientError;
use crate::session::{Session, unexpected};

/// Creates a folder: a new folder key, wrapped for the owner alone.
pub async fn create<N: Net>(s: &Session<N>, label: String) -> Result<FolderInfo, ClientError> {
    let wrapped = {
        let mut rng = s.rng();
        let key = FolderKey::generate(&mut *rng);
        s.keys().public().wrap_folder_key(&mut *rng, &key)
    };
    let request = Request::FolderCreate(FolderCreate {
        label,
        wrapped_key: Blob(wrapped),
        write_id: Some(s.write_id()),
    });
    match s.call(request).await? {
        Response::Folder(f) => Ok(f),
        other => Err(unexpected("folder_create", &other)),
    }
}

/// A user's name as the server spells it, and their public key.
pub async fn public_key<N: Net>(
    s: &Session<N>,
    user: &str,
) -> Result<(String, PublicKey), ClientError> {
    let request = Request::PublicKeyGet(PublicKeyGet {
        username: user.into(),
    });
    match s.call(request).await? {
        Response::PublicKey(pk) => {
            Ok((pk.username, PublicKey::from_der(pk.public_key.as_bytes())?))
        }
        other => Err(unexpected("public_key_get", &other)),
    }
}

/// Invites `user` to `folder` with `role`: every epoch's folder key, wrapped
/// for their public key. Returns their name and key (whose fingerprint the
/// inviter should check).
pub async fn share<N: Net>(
    s: &Session<N>,
    folder: &FolderInfo,
    user: &str,
    role: Role,
) -> Result<(String, PublicKey), ClientError> {
    let (invitee, key) = public_key(s, user).await?;
    let keys: Vec<EpochKey> = {
        let all = s.folder_keys(&folder.folder_id).await?;
        let mut rng = s.rng();
        all.iter()
            .map(|(epoch, k)| EpochKey {
                epoch: *epoch,
                wrapped_key: Blob(key.wrap_folder_key(&mut *rng, k)),
            })
            .collect()
    };
    s.call(Request::FolderShare(FolderShare {
        folder_id: folder.folder_id.clone(),
        username: invitee.clone(),
        role,
        keys,
    }))
    .await?;
    Ok((invitee, key))
}

/// The folder with its members.
pub async fn detail<N: Net>(s: &Session<N>, folder_id: &str) -> Result<FolderDetail, ClientError> {
    let request = Request::FolderInfo(FolderRef {
        folder_id: folder_id.to_owned(),
    });
    match s.call(request).await? {
        Response::FolderDetail(d) => Ok(d),
        other => Err(unexpected("folder_info", &other)),
    }
}

/// Removes `member` (a normalized username) and rotates: a new folder key for
/// a new epoch, wrapped for everyone who stays. Returns the new epoch.
pub async fn unshare<N: Net>(
    s: &Session<N>,
    folder: &FolderInfo,
    member: &str,
) -> Result<u64, ClientError> {
    let detail = detail(s, &folder.folder_id).await?;
    let new_key = FolderKey::generate(&mut *s.rng());
    let mut keys = Vec::new();
    for m in detail.members.iter().filter(|m| m.username != member) {
        let (_, pk) = public_key(s, &m.username).await?;
        keys.push(MemberKey {
            username: m.username.clone(),
            wrapped_key: Blob(pk.wrap_folder_key(&mut *s.rng(), &new_key)),
        });
    }
    let epoch = detail.folder.epoch + 1;
    s.call(Request::FolderUnshare(FolderUnshare {
        folder_id: folder.folder_id.clone(),
        username: member.to_owned(),
        epoch,
        keys,
    }))
    .await?;
    Ok(epoch)
}

/// Invitations waiting for the user.
pub async fn invites<N: Net>(s: &Session<N>) -> Result<Vec<Invite>, ClientError> {
    match s.call(Request::InviteList).await? {
        Response::Invites(i) => Ok(i.invites),
        other => Err(unexpected("invite_list", &other)),
    }
}

/// Accepts the invitation to `folder_id`.
pub async fn accept<N: Net>(s: &Session<N>, folder_id: &str) -> Result<(), ClientError> {
    s.call(Request::InviteAccept(FolderRef {
        folder_id: folder_id.to_owned(),
    }))
    .await?;
    Ok(())
}
