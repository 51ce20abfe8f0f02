//! Responses: what a server answers. Each echoes its request's `id`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "arbitrary"))]
use proptest_derive::Arbitrary;

use crate::codec::message_family;
use crate::error::ErrorCode;
use crate::types::{
    Blob, EntryKind, EntrySummary, EpochKey, FileEntry, Kdf, MemberStatus, Role, Sha256, Token,
    UserRole,
};

message_family! {
    /// A server's answer to one request.
    pub enum Response {
        /// Answers `hello`.
        Welcome(Welcome) = "welcome",
        /// Answers `ping`.
        Pong(Pong) = "pong",
        /// Success with nothing to say.
        Ok = "ok",
        /// Failure of the request; the connection stays usable unless the error
        /// was about framing.
        Error(ErrorBody) = "error",
        /// Answers `register`.
        Registered(Registered) = "registered",
        /// Answers `login`, `auth` and `refresh`.
        Session(Session) = "session",
        /// Answers `whoami`.
        Whoami(Whoami) = "whoami",
        /// Answers `session_list`.
        Sessions(Sessions) = "sessions",
        /// Answers `user_list`.
        Users(Users) = "users",
        /// Answers `public_key_get`.
        PublicKey(PublicKey) = "public_key",
        /// Answers `private_key_get`.
        PrivateKey(PrivateKey) = "private_key",
        /// Answers `device_register` and `device_rename`.
        Device(DeviceInfo) = "device",
        /// Answers `device_list`.
        Devices(Devices) = "devices",
        /// Answers `folder_create`, `folder_unshare` and `invite_accept`.
        Folder(FolderInfo) = "folder",
        /// Answers `folder_list`.
        Folders(Folders) = "folders",
        /// Answers `folder_info`.
        FolderDetail(FolderDetail) = "folder_detail",
        /// Answers `folder_keys`.
        FolderKeys(FolderKeys) = "folder_keys",
        /// Answers `invite_list`.
        Invites(Invites) = "invites",
        /// Answers `list`.
        Listing(Listing) = "listing",
        /// Answers `stat`, `restore`, `upload_commit`, `delete`, `move` and `mkdir`.
        Entry(FileEntry) = "entry",
        /// Answers `history`.
        History(History) = "history",
        /// Answers `upload_begin` and `upload_resume`. Body: a bitmap of the
        /// chunks still missing (bit `i % 8` of byte `i / 8` set when chunk `i`
        /// is missing), `ceil(chunk_count / 8)` bytes.
        Upload(Upload) = "upload" + body,
        /// Answers `upload_chunk`: the chunk is stored.
        ChunkAck(ChunkAck) = "chunk_ack",
        /// Answers `download` and `shared_download`. Body: the chunk list, 32
        /// bytes per chunk.
        Manifest(Manifest) = "manifest" + body,
        /// Answers `chunk_get`. Body: the sealed chunk.
        Chunk(ChunkInfo) = "chunk" + body,
        /// Answers `file_share`.
        FileShared(FileShared) = "file_shared",
        /// Answers `shared_list`.
        Shared(Shared) = "shared",
        /// Answers `subscribe`; events follow with id 0.
        Subscribed(Subscribed) = "subscribed",
    }
}

impl Response {
    fn id_rule(_id: u64) -> Result<(), &'static str> {
        // Any id: a response to a frame whose id could not be read uses 0.
        Ok(())
    }

    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error(ErrorBody::new(code, message))
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct ErrorBody {
    /// Stable code to branch on.
    pub code: ErrorCode,
    /// HTTP-style status of the code.
    pub status: u16,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorBody {
    /// An error with the status that goes with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            status: code.status(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The server's side of the opening.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Welcome {
    /// Protocol version the server speaks.
    pub protocol: u32,
    /// Server software and version.
    pub server: String,
    /// The node that answered.
    pub node_id: String,
    /// Largest header the server accepts.
    pub max_header: u32,
    /// Largest body the server accepts.
    pub max_body: u32,
}

/// Readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Pong {
    /// Whether the node serves requests now (store open, caught up with peers).
    pub ready: bool,
    /// The node that answered.
    pub node_id: String,
    /// The node's clock, Unix milliseconds.
    pub time_ms: u64,
    /// In a cluster: how each peer stands with this node (absent for a
    /// single node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<String, PeerLag>,
}

/// How one peer stands with the node answering `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct PeerLag {
    /// The node has a link to the peer now and follows its log.
    pub linked: bool,
    /// The node has received the peer's whole log at least once since it started.
    pub caught_up: bool,
    /// Records this node holds that the peer has not acknowledged.
    pub behind_records: u64,
    /// While it is behind: milliseconds since the peer last acknowledged.
    pub behind_ms: u64,
}

/// A new account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Registered {
    /// The normalized (lowercase) username.
    pub username: String,
    /// The account's role.
    pub role: UserRole,
}

/// A session bound to this connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Session {
    /// Bearer token for `auth` on other connections.
    pub token: Token,
    /// The session's id, for listing and revoking.
    pub session_id: String,
    /// The account.
    pub username: String,
    /// The account's role.
    pub role: UserRole,
    /// The device, when the session has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Expiry, Unix milliseconds.
    pub expires_ms: u64,
}

/// Who the caller is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Whoami {
    /// The account.
    pub username: String,
    /// The account's role.
    pub role: UserRole,
    /// The session.
    pub session_id: String,
    /// The device, when the session has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The device's name, when the session has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// The node that answered.
    pub node_id: String,
}

/// One session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct SessionSummary {
    /// The session's id.
    pub session_id: String,
    /// Its device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Creation, Unix milliseconds.
    pub created_ms: u64,
    /// Expiry, Unix milliseconds.
    pub expires_ms: u64,
    /// Whether this is the session asking.
    pub current: bool,
}

/// The caller's sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Sessions {
    /// Live sessions, oldest first.
    pub sessions: Vec<SessionSummary>,
}

/// One account, as an admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct UserSummary {
    /// The account.
    pub username: String,
    /// Its role.
    pub role: UserRole,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Creation, Unix milliseconds.
    pub created_ms: u64,
}

/// Every account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Users {
    /// Accounts by name.
    pub users: Vec<UserSummary>,
}

/// A user's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct PublicKey {
    /// The user.
    pub username: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key: Blob,
}

/// The caller's wrapped private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct PrivateKey {
    /// The private key sealed under the password-derived key.
    pub wrapped_private_key: Blob,
    /// How to derive that key.
    pub kdf: Kdf,
}

/// One device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct DeviceInfo {
    /// The device's id.
    pub device_id: String,
    /// Its name.
    pub name: String,
    /// Its hardware address.
    pub mac: String,
    /// Registration, Unix milliseconds.
    pub created_ms: u64,
}

/// The caller's devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Devices {
    /// Devices by name.
    pub devices: Vec<DeviceInfo>,
}

/// A folder as one member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FolderInfo {
    /// The folder's id (server-generated).
    pub folder_id: String,
    /// Its label.
    pub label: String,
    /// Its owner.
    pub owner: String,
    /// The caller's role.
    pub role: Role,
    /// Current key epoch.
    pub epoch: u64,
    /// Creation, Unix milliseconds.
    pub created_ms: u64,
}

/// The caller's folders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Folders {
    /// Folders by label.
    pub folders: Vec<FolderInfo>,
}

/// One member of a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Member {
    /// The user.
    pub username: String,
    /// Their role.
    pub role: Role,
    /// Invited or active.
    pub status: MemberStatus,
}

/// A folder and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FolderDetail {
    /// The folder.
    pub folder: FolderInfo,
    /// Members and pending invitees.
    pub members: Vec<Member>,
}

/// The caller's wrapped keys of one folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FolderKeys {
    /// The folder.
    pub folder_id: String,
    /// One key per epoch the caller holds, oldest first.
    pub keys: Vec<EpochKey>,
}

/// One pending invitation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Invite {
    /// The folder.
    pub folder_id: String,
    /// Its label.
    pub label: String,
    /// Who invited.
    pub from: String,
    /// The offered role.
    pub role: Role,
    /// When, Unix milliseconds.
    pub created_ms: u64,
}

/// Pending invitations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Invites {
    /// Oldest first.
    pub invites: Vec<Invite>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Listing {
    /// Entries in path order.
    pub entries: Vec<EntrySummary>,
    /// Present when more entries follow: pass it back to get them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One version in a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct VersionInfo {
    /// Per-path version number.
    pub version: u64,
    /// File or directory.
    pub kind: EntryKind,
    /// Plaintext size.
    pub size: u64,
    /// Commit time, Unix milliseconds.
    pub modified_ms: u64,
    /// The writing device, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Whether this version is a deletion.
    pub deleted: bool,
}

/// Versions of one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct History {
    /// The path.
    pub path: String,
    /// Newest first.
    pub versions: Vec<VersionInfo>,
}

/// An upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Upload {
    /// The upload's id; resumable on any server until `expires_ms`.
    pub upload_id: String,
    /// Number of chunks.
    pub chunk_count: u32,
    /// How many are still missing (set bits in the body).
    pub missing: u32,
    /// When the upload is collected if not committed, Unix milliseconds.
    pub expires_ms: u64,
}

/// A stored chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct ChunkAck {
    /// The upload.
    pub upload_id: String,
    /// The chunk's index.
    pub index: u32,
}

/// What a client needs to fetch and decrypt a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Manifest {
    /// The entry.
    pub entry: FileEntry,
    /// For a single-file share: the file key wrapped with the recipient's public
    /// key (the entry's own key is under a folder key they do not have).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_key: Option<Blob>,
}

/// A chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct ChunkInfo {
    /// Its content address (SHA-256 of the body).
    pub hash: Sha256,
}

/// A new single-file share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FileShared {
    /// The share's id.
    pub share_id: String,
}

/// One file shared with the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct SharedFile {
    /// The share's id (`coffer get shared:ID`).
    pub share_id: String,
    /// Who shared it.
    pub from: String,
    /// The file's path in its folder.
    pub path: String,
    /// Plaintext size.
    pub size: u64,
    /// When shared, Unix milliseconds.
    pub created_ms: u64,
}

/// Files shared with the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Shared {
    /// Newest first.
    pub shares: Vec<SharedFile>,
}

/// The event stream is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Subscribed {
    /// The cursor the stream starts after.
    pub cursor: String,
}
