//! Requests: what a client sends a server.
//!
//! Every request carries a non-zero `id` that its response echoes. A connection
//! starts with [`Hello`]; most requests then need a session, obtained by
//! [`Login`] or [`Auth`] on the same connection.

use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "arbitrary"))]
use proptest_derive::Arbitrary;

use crate::codec::message_family;
use crate::types::{
    Blob, EpochKey, FileId, Kdf, LoginSecret, MemberKey, Role, Scope, Sha256, Token, VersionVector,
};

message_family! {
    /// A client's request. The body column of `docs/PROTOCOL.md` says which take one.
    pub enum Request {
        /// Opens the conversation; answered by `welcome`.
        Hello(Hello) = "hello",
        /// Liveness and readiness probe; answered by `pong`. Needs no session.
        Ping = "ping",

        /// Creates an account with its key material; answered by `registered`.
        Register(Register) = "register",
        /// Opens a session and binds it to this connection; answered by `session`.
        Login(Login) = "login",
        /// Binds an existing session to this connection; answered by `session`.
        Auth(Auth) = "auth",
        /// Extends the current session; answered by `session` with a new token.
        Refresh = "refresh",
        /// Ends the current session; answered by `ok`.
        Logout = "logout",
        /// Who the session belongs to; answered by `whoami`.
        Whoami = "whoami",
        /// The caller's sessions; answered by `sessions`.
        SessionList = "session_list",
        /// Revokes one of the caller's sessions; answered by `ok`.
        SessionRevoke(SessionRevoke) = "session_revoke",
        /// All accounts (admins only); answered by `users`.
        UserList = "user_list",
        /// Disables or re-enables an account (admins only); answered by `ok`.
        UserDisable(UserDisable) = "user_disable",

        /// Replaces the caller's key material; answered by `ok`.
        KeysPublish(KeysPublish) = "keys_publish",
        /// Any user's public key; answered by `public_key`.
        PublicKeyGet(PublicKeyGet) = "public_key_get",
        /// The caller's wrapped private key and KDF parameters; answered by `private_key`.
        PrivateKeyGet = "private_key_get",

        /// Registers a device of the caller and binds it to the session; answered by `device`.
        DeviceRegister(DeviceRegister) = "device_register",
        /// The caller's devices; answered by `devices`.
        DeviceList = "device_list",
        /// Renames a device; answered by `device`.
        DeviceRename(DeviceRename) = "device_rename",
        /// Removes a device and revokes its sessions; answered by `ok`.
        DeviceRemove(DeviceRemove) = "device_remove",

        /// Creates a folder owned by the caller; answered by `folder`.
        FolderCreate(FolderCreate) = "folder_create",
        /// Folders the caller is a member of; answered by `folders`.
        FolderList = "folder_list",
        /// A folder and its members; answered by `folder_detail`.
        FolderInfo(FolderRef) = "folder_info",
        /// The caller's wrapped folder keys, every epoch; answered by `folder_keys`.
        FolderKeys(FolderRef) = "folder_keys",
        /// Invites a user (owner only); answered by `ok`.
        FolderShare(FolderShare) = "folder_share",
        /// Removes a member and rotates the folder key (owner only); answered by `folder`.
        FolderUnshare(FolderUnshare) = "folder_unshare",
        /// Changes a member's role (owner only); answered by `ok`.
        FolderSetRole(FolderSetRole) = "folder_set_role",
        /// Leaves a folder (not for its owner); answered by `ok`.
        FolderLeave(FolderRef) = "folder_leave",
        /// Pending invitations for the caller; answered by `invites`.
        InviteList = "invite_list",
        /// Accepts an invitation; answered by `folder`.
        InviteAccept(FolderRef) = "invite_accept",
        /// Declines an invitation; answered by `ok`.
        InviteDecline(FolderRef) = "invite_decline",

        /// Lists a directory or the whole folder; answered by `listing`.
        List(List) = "list",
        /// One entry, latest or a given version; answered by `entry`.
        Stat(Stat) = "stat",
        /// Versions of one path, newest first; answered by `history`.
        History(PathRef) = "history",
        /// Makes an old version the newest; answered by `entry`.
        Restore(Restore) = "restore",

        /// Starts (or finds) an upload. Body: the chunk list, 32 bytes (SHA-256
        /// of each sealed chunk) per chunk — and, with `commit`, the sealed
        /// chunks themselves after it; or empty for a *streamed* upload, whose
        /// hashes come with its chunks. Answered by `upload`, or by `entry`
        /// with `commit`.
        UploadBegin(UploadBegin) = "upload_begin" + body,
        /// Asks which chunks an upload still lacks; answered by `upload`.
        UploadResume(UploadRef) = "upload_resume",
        /// One sealed chunk. Body: the chunk — or empty, to name by its hash a
        /// chunk the folder already holds (an unchanged chunk of an earlier
        /// version). Answered by `chunk_ack`, or by an error with code
        /// `checksum_mismatch`.
        UploadChunk(UploadChunk) = "upload_chunk" + body,
        /// Commits an upload whose chunks have all arrived; answered by `entry`.
        UploadCommit(UploadCommit) = "upload_commit",
        /// Abandons an upload; answered by `ok`.
        UploadAbort(UploadRef) = "upload_abort",
        /// A file's manifest; answered by `manifest`.
        Download(Stat) = "download",
        /// One sealed chunk by content address; answered by `chunk`.
        ChunkGet(ChunkGet) = "chunk_get",
        /// Deletes a path (leaves a tombstone); answered by `entry`.
        Delete(Delete) = "delete",
        /// Moves or renames without re-upload; answered by `entry`.
        Move(Move) = "move",
        /// Creates a directory; answered by `entry`.
        Mkdir(PathRef) = "mkdir",

        /// Shares one file read-only with a user; answered by `file_shared`.
        FileShare(FileShare) = "file_share",
        /// Withdraws a single-file share; answered by `ok`.
        FileShareRevoke(ShareRef) = "file_share_revoke",
        /// Files shared with the caller; answered by `shared`.
        SharedList = "shared_list",
        /// The manifest of a file shared with the caller; answered by `manifest`.
        SharedDownload(ShareRef) = "shared_download",

        /// Starts pushing change events from a cursor; answered by `subscribed`,
        /// then events with id 0.
        Subscribe(Subscribe) = "subscribe",
        /// Stops the pushes; answered by `ok`.
        Unsubscribe = "unsubscribe",
    }
}

impl Request {
    fn id_rule(id: u64) -> Result<(), &'static str> {
        if id == 0 {
            Err("id 0 is reserved for server pushes")
        } else {
            Ok(())
        }
    }
}

/// Opens the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Hello {
    /// Protocol version the client speaks.
    pub protocol: u32,
    /// Free-form client name and version, for logs.
    pub agent: String,
}

/// Creates an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Register {
    /// 3–32 characters of `[a-z0-9_.-]`, case-insensitive.
    pub username: String,
    /// `SHA-256("coffer-auth-v1" ‖ username ‖ ":" ‖ password)`.
    pub login_secret: LoginSecret,
    /// The user's RSA-2048 public key, SubjectPublicKeyInfo DER.
    pub public_key: Blob,
    /// The private key sealed under the password-derived key.
    pub wrapped_private_key: Blob,
    /// How the password-derived key is made.
    pub kdf: Kdf,
}

/// Opens a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Login {
    /// The account.
    pub username: String,
    /// See [`Register::login_secret`].
    pub login_secret: LoginSecret,
    /// The device this session runs on, when the client has registered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// Binds an existing session to this connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Auth {
    /// A token from `session`.
    pub token: Token,
}

/// Names one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct SessionRevoke {
    /// The session.
    pub session_id: String,
}

/// Disables or re-enables an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct UserDisable {
    /// The account.
    pub username: String,
    /// `true` disables (and ends its sessions), `false` re-enables.
    pub disabled: bool,
}

/// Replaces the caller's key material (for a password change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct KeysPublish {
    /// SubjectPublicKeyInfo DER.
    pub public_key: Blob,
    /// The private key sealed under the password-derived key.
    pub wrapped_private_key: Blob,
    /// How the password-derived key is made.
    pub kdf: Kdf,
}

/// Names a user whose public key is wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct PublicKeyGet {
    /// The user.
    pub username: String,
}

/// Registers a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct DeviceRegister {
    /// Unique among the caller's devices.
    pub name: String,
    /// Hardware address `aa:bb:cc:dd:ee:ff`, unique among the caller's devices.
    pub mac: String,
    /// The write's id, chosen by the client like an upload's ([`upload_id`]:
    /// `u` and 32 lowercase hex digits, random). The device's id is derived
    /// from it and the caller's name, so every server of the cluster that
    /// does this registration — sent again after an `unavailable` or a lost
    /// answer — makes the same device, and the servers merge what they made
    /// into one. Absent: the server picks the id, and a registration sent
    /// again is known only by its name and MAC on a server that has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
}

/// Renames a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct DeviceRename {
    /// The device.
    pub device_id: String,
    /// Its new name.
    pub name: String,
}

/// Removes a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct DeviceRemove {
    /// The device.
    pub device_id: String,
}

/// Creates a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FolderCreate {
    /// Human label, unique among the caller's own folders.
    pub label: String,
    /// The epoch-1 folder key wrapped with the caller's public key.
    pub wrapped_key: Blob,
    /// The write's id, chosen by the client like an upload's ([`upload_id`]:
    /// `u` and 32 lowercase hex digits, random). The folder's id is derived
    /// from it and the caller's name, so every server of the cluster that
    /// does this creation — sent again after an `unavailable` or a lost
    /// answer — makes the same folder, and the servers merge what they made
    /// into one. Absent: the server picks the id, and a creation sent again
    /// is known only by its label and key on a server that has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
}

/// Names a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FolderRef {
    /// The folder.
    pub folder_id: String,
}

/// Invites a user into a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FolderShare {
    /// The folder.
    pub folder_id: String,
    /// The invitee.
    pub username: String,
    /// `viewer` or `editor`.
    pub role: Role,
    /// Every epoch's folder key wrapped with the invitee's public key, so that
    /// they can read content written before they joined.
    pub keys: Vec<EpochKey>,
}

/// Removes a member and rotates the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FolderUnshare {
    /// The folder.
    pub folder_id: String,
    /// The member to remove.
    pub username: String,
    /// The new epoch: the current one plus one.
    pub epoch: u64,
    /// The new epoch's key wrapped for every remaining member and invitee.
    pub keys: Vec<MemberKey>,
}

/// Changes a member's role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FolderSetRole {
    /// The folder.
    pub folder_id: String,
    /// The member.
    pub username: String,
    /// `viewer` or `editor`.
    pub role: Role,
}

/// Lists entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct List {
    /// The folder.
    pub folder_id: String,
    /// Directory to list; the folder's root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Whether to descend into subdirectories.
    #[serde(default)]
    pub recursive: bool,
    /// Whether to include tombstones.
    #[serde(default)]
    pub deleted: bool,
    /// Continues a listing from the `cursor` of its previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Most entries per page; the server caps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Names one entry, optionally one version of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Stat {
    /// The folder.
    pub folder_id: String,
    /// The path.
    pub path: String,
    /// A version from `history`; the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// For `download`: a file of one small chunk comes with that chunk,
    /// sealed, after the addresses in the answer's body (one round trip for
    /// a small file instead of two). Ignored by `stat`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
}

/// Names a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct PathRef {
    /// The folder.
    pub folder_id: String,
    /// The path.
    pub path: String,
}

/// Restores a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Restore {
    /// The folder.
    pub folder_id: String,
    /// The path.
    pub path: String,
    /// The version to bring back.
    pub version: u64,
    /// The write's id, chosen by the client like an upload's ([`upload_id`]:
    /// `u` and 32 lowercase hex digits, random): it names this write on every
    /// server of the cluster, so that sending it again — after an
    /// `unavailable` or a lost answer, through any server — answers the
    /// version it made instead of making another. Absent: the write has no
    /// name, and a retry is a new write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
}

/// Starts an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct UploadBegin {
    /// The folder.
    pub folder_id: String,
    /// The path being written.
    pub path: String,
    /// The file's identity (kept from the previous version when there is one).
    pub file_id: FileId,
    /// Plaintext size.
    pub size: u64,
    /// Plaintext chunk size, within the protocol's bounds.
    pub chunk_size: u32,
    /// Number of chunks; the body lists that many hashes.
    pub chunk_count: u32,
    /// Folder key epoch the file key is wrapped under; must be the current one.
    pub epoch: u64,
    /// The file key wrapped under the folder key.
    pub wrapped_file_key: Blob,
    /// Encrypted metadata; may be empty for a streamed upload, which then
    /// gives it at commit.
    pub meta: Blob,
    /// The version the client last saw: commit fails with `conflict` if the path
    /// moved on since. Absent for a path the client believes new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<VersionVector>,
    /// A whole small file in one request: the body carries the sealed chunks
    /// after the chunk list, in order (their sizes follow from `size` and
    /// `chunk_size`), and the upload is committed at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub commit: bool,
    /// The upload's id, chosen by the client (`u` and 32 lowercase hex
    /// digits, random): it names this write on every server of the cluster,
    /// so that beginning or committing it again — after an `unavailable`, a
    /// lost answer, or through another server — never makes a second version.
    /// A begin whose upload was committed already answers `entry`. Absent:
    /// the server picks the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
}

/// An upload id from 16 random bytes: `u` and 32 lowercase hex digits.
pub fn upload_id(random: [u8; 16]) -> String {
    format!("u{}", hex::encode(random))
}

/// Whether `id` has the form of an upload id ([`upload_id`]).
pub fn is_upload_id(id: &str) -> bool {
    id.len() == 33
        && id.starts_with('u')
        && id[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Names an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct UploadRef {
    /// The upload.
    pub upload_id: String,
}

/// Commits an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct UploadCommit {
    /// The upload.
    pub upload_id: String,
    /// Encrypted metadata, when it was not known at begin (a streamed upload
    /// learns the file's plaintext SHA-256 only at its end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Blob>,
}

/// One chunk of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct UploadChunk {
    /// The upload.
    pub upload_id: String,
    /// Index of the chunk, from 0.
    pub index: u32,
    /// SHA-256 of the body: the chunk's content address.
    pub sha256: Sha256,
    /// Optional MD5 of the body, hex, for peers that want the original design's
    /// block check too. Never the only check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

/// Fetches one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct ChunkGet {
    /// Where the caller's right to read comes from.
    pub scope: Scope,
    /// The chunk's content address.
    pub hash: Sha256,
}

/// Deletes a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Delete {
    /// The folder.
    pub folder_id: String,
    /// The path.
    pub path: String,
    /// The version the client last saw; see [`UploadBegin::base`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<VersionVector>,
    /// The write's id, chosen by the client like an upload's ([`upload_id`]:
    /// `u` and 32 lowercase hex digits, random): it names this delete on every
    /// server of the cluster, so that sending it again — after an
    /// `unavailable` or a lost answer, through any server — answers the
    /// version it made instead of making another. Absent: the write has no
    /// name, and a retry is a new write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
}

/// Moves a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Move {
    /// The folder.
    pub folder_id: String,
    /// The current path.
    pub from: String,
    /// The new path; must not exist.
    pub to: String,
    /// The version of `from` the client last saw; see [`UploadBegin::base`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<VersionVector>,
    /// The write's id, chosen by the client like an upload's ([`upload_id`]:
    /// `u` and 32 lowercase hex digits, random): it names this move on every
    /// server of the cluster, so that sending it again — after an
    /// `unavailable` or a lost answer, through any server — answers the
    /// version it made instead of making another. Absent: the write has no
    /// name, and a retry is a new write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
}

/// Shares one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FileShare {
    /// The folder holding the file.
    pub folder_id: String,
    /// The file.
    pub path: String,
    /// The recipient.
    pub username: String,
    /// The file key wrapped with the recipient's public key.
    pub wrapped_key: Blob,
}

/// Names a single-file share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct ShareRef {
    /// The share.
    pub share_id: String,
}

/// Starts the event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Subscribe {
    /// Resume after this cursor (from a previous event); from now when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}
