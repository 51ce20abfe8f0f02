//! Events: what a server pushes to a subscribed connection, always with id 0.
//!
//! Every event carries a `cursor`; a client that reconnects subscribes from the
//! last cursor it processed and receives everything after it, then
//! `caught_up`. Cursors are opaque strings chosen by the server.

use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "arbitrary"))]
use proptest_derive::Arbitrary;

use crate::codec::message_family;
use crate::response::Invite;
use crate::types::{EntrySummary, Role};

message_family! {
    /// A change pushed to a subscriber.
    pub enum Event {
        /// A path in one of the subscriber's folders changed.
        FileChanged(FileChanged) = "file_changed",
        /// A folder's membership changed.
        MemberChanged(MemberChanged) = "member_changed",
        /// A folder's key was rotated: new content uses the new epoch.
        KeyRotated(KeyRotated) = "key_rotated",
        /// The subscriber was invited into a folder.
        Invited(Invited) = "invited",
        /// The connection's session ended (revoked, expired, device removed);
        /// the server closes the connection after this.
        SessionEnded(SessionEnded) = "session_ended",
        /// Everything up to `cursor` has been delivered; what follows is live.
        CaughtUp(CaughtUp) = "caught_up",
    }
}

impl Event {
    fn id_rule(id: u64) -> Result<(), &'static str> {
        if id == 0 {
            Ok(())
        } else {
            Err("pushed events use id 0")
        }
    }
}

/// How a path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A new path.
    Created,
    /// New content at an existing path.
    Modified,
    /// Deleted (a tombstone).
    Deleted,
    /// Moved from `from` to `path`.
    Moved,
}

/// A path changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FileChanged {
    /// Position in the stream.
    pub cursor: String,
    /// The folder.
    pub folder_id: String,
    /// What happened.
    pub change: Change,
    /// The path now.
    pub path: String,
    /// The former path, for a move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The entry after the change.
    pub entry: EntrySummary,
    /// The device that made the change, when known; lets a device skip its own echoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// What happened to a membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum MemberChange {
    /// Accepted an invitation.
    Joined,
    /// Removed by the owner.
    Removed,
    /// Left on their own.
    Left,
    /// Got a new role.
    RoleChanged,
}

/// A membership changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct MemberChanged {
    /// Position in the stream.
    pub cursor: String,
    /// The folder.
    pub folder_id: String,
    /// The member concerned.
    pub username: String,
    /// What happened.
    pub change: MemberChange,
    /// The member's role after the change (their last one when they left).
    pub role: Role,
}

/// A key rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct KeyRotated {
    /// Position in the stream.
    pub cursor: String,
    /// The folder.
    pub folder_id: String,
    /// The new epoch.
    pub epoch: u64,
}

/// An invitation arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Invited {
    /// Position in the stream.
    pub cursor: String,
    /// The invitation.
    pub invite: Invite,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Revoked by its user.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Its device was removed.
    DeviceRemoved,
    /// The account was disabled.
    AccountDisabled,
}

/// The session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct SessionEnded {
    /// The session.
    pub session_id: String,
    /// Why.
    pub reason: EndReason,
}

/// The backlog is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct CaughtUp {
    /// The last cursor delivered (or the one subscribed from).
    pub cursor: String,
}
