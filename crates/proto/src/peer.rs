//! Peer messages: what cluster nodes say to each other on a peer channel.
//!
//! A peer channel is a TLS connection on the ordinary port whose client presents
//! a peer certificate from the cluster CA; its first frame is `peer_hello`
//! instead of `hello`. Both sides then send requests and answers in this family
//! only. Record batches travel as a JSON array in the body ([`encode_records`],
//! [`decode_records`]).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "arbitrary"))]
use proptest_derive::Arbitrary;

use crate::codec::message_family;
use crate::error::DecodeError;
use crate::limits::MAX_RECORDS_PER_BATCH;
use crate::request::{FolderShare, FolderUnshare, Register};
use crate::response::{ErrorBody, FolderInfo, Registered};
use crate::types::{Hlc, Sha256};

message_family! {
    /// A message between cluster nodes.
    pub enum PeerMessage {
        /// Opens a peer channel.
        PeerHello(PeerHello) = "peer_hello",
        /// Answers `peer_hello` with what the answering node already holds.
        PeerWelcome(PeerWelcome) = "peer_welcome",
        /// Asks for one origin's records after a sequence number; answered by `records`.
        Pull(Pull) = "pull",
        /// A batch of change records. Body: the records (see [`encode_records`]).
        /// Answers `pull`, or pushed unasked with id 0.
        Records(Records) = "records" + body,
        /// How far the sender has durably applied each origin's records; answers
        /// `records` pushes, and counts toward write quorums.
        Ack(Ack) = "ack",
        /// Asks for a chunk by content address; answered by `chunk_data` or `peer_error`.
        ChunkFetch(ChunkFetch) = "chunk_fetch",
        /// A chunk. Body: the sealed chunk.
        ChunkData(ChunkFetch) = "chunk_data" + body,
        /// A registration forwarded to the username's owner node; answered by
        /// `forwarded` or `peer_error`.
        Forward(Register) = "forward_register",
        /// The owner node's answer to a forwarded registration.
        Forwarded(Registered) = "forwarded",
        /// A change of a folder's members and keys forwarded to the folder's
        /// key node, which makes every such change of that folder; answered
        /// by `keys_forwarded` or `peer_error`.
        ForwardKeys(ForwardKeys) = "forward_keys",
        /// The key node's answer to a forwarded key change: the client's
        /// answer.
        KeysForwarded(KeysForwarded) = "keys_forwarded",
        /// Keep-alive; answered by `peer_pong`.
        PeerPing = "peer_ping",
        /// Answers `peer_ping`.
        PeerPong(PeerPong) = "peer_pong",
        /// A request failed.
        PeerError(ErrorBody) = "peer_error",
    }
}

impl PeerMessage {
    fn id_rule(_id: u64) -> Result<(), &'static str> {
        // Requests use non-zero ids; unsolicited record pushes use 0.
        Ok(())
    }
}

/// Opens a peer channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct PeerHello {
    /// Protocol version.
    pub protocol: u32,
    /// The connecting node; must match its certificate.
    pub node_id: String,
    /// Highest sequence number the connecting node holds from each origin.
    pub cursors: BTreeMap<String, u64>,
}

/// Accepts a peer channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct PeerWelcome {
    /// The answering node.
    pub node_id: String,
    /// Highest sequence number the answering node holds from each origin.
    pub cursors: BTreeMap<String, u64>,
}

/// Asks for records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Pull {
    /// Whose records.
    pub origin: String,
    /// Records with a greater sequence number are wanted.
    pub after: u64,
    /// Most records in the answer.
    pub limit: u32,
}

/// Describes a record batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Records {
    /// Number of records in the body.
    pub count: u32,
    /// Whether the sender holds more after this batch.
    pub more: bool,
}

/// Durable progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Ack {
    /// Highest sequence number durably applied, per origin.
    pub applied: BTreeMap<String, u64>,
    /// Records at or below `applied` that are not held all the same: file
    /// versions whose chunks the sender lacks, per origin. A write waiting
    /// for its quorum does not count the sender for these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(
        any(test, feature = "arbitrary"),
        proptest(strategy = "crate::peer::arb_unheld()")
    )]
    pub unheld: BTreeMap<String, Vec<u64>>,
}

/// Most records an [`Ack`] lists as `unheld`; beyond them the sender lowers
/// `applied` to below the first it cannot list.
pub const MAX_UNHELD: usize = 256;

/// Names a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct ChunkFetch {
    /// Content address.
    pub hash: Sha256,
    /// On a chunk pushed unasked that the sender passes on rather than took
    /// in an upload itself: the node that took it. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A change of a folder's members and keys, made by `username` through the
/// forwarding node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct ForwardKeys {
    /// Who asked (signed in on the forwarding node).
    pub username: String,
    /// What they asked.
    pub change: KeyChange,
    /// What the forwarding node held (origin → highest seq) when it
    /// forwarded: the key node first waits until it holds as much, so that
    /// the client's own earlier writes (the folder it just made) are there.
    pub cursors: BTreeMap<String, u64>,
}

/// The requests a folder's key node makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(rename_all = "snake_case", tag = "kind", content = "request")]
pub enum KeyChange {
    /// `folder_share`: a member added, with the folder's keys wrapped for them.
    Share(FolderShare),
    /// `folder_unshare`: a member removed, and the key rotated.
    Unshare(FolderUnshare),
}

impl KeyChange {
    /// The folder changed.
    pub fn folder_id(&self) -> &str {
        match self {
            KeyChange::Share(r) => &r.folder_id,
            KeyChange::Unshare(r) => &r.folder_id,
        }
    }
}

/// The answer to a forwarded key change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct KeysForwarded {
    /// The folder after an unshare (the client is answered `folder`);
    /// absent after a share (answered `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<FolderInfo>,
}

/// A node's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct PeerPong {
    /// The answering node.
    pub node_id: String,
    /// Whether it serves clients now.
    pub ready: bool,
}

/// One entry of the replication change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Record {
    /// The node where the change was made.
    pub origin: String,
    /// Its position in the origin's log, from 1, without gaps.
    pub seq: u64,
    /// When it was made, by the origin's hybrid logical clock.
    pub hlc: Hlc,
    /// The change itself; its shape belongs to the server's store.
    #[cfg_attr(
        any(test, feature = "arbitrary"),
        proptest(strategy = "crate::peer::arb_json()")
    )]
    pub payload: serde_json::Value,
}

/// Encodes a record batch as a frame body.
pub fn encode_records(records: &[Record]) -> Bytes {
    Bytes::from(serde_json::to_vec(records).expect("records always serialize"))
}

/// Decodes a record batch body, checking that it holds exactly `count` records
/// and no more than [`MAX_RECORDS_PER_BATCH`].
pub fn decode_records(body: &[u8], count: u32) -> Result<Vec<Record>, DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidFields {
        kind: "records",
        reason,
    };
    if count > MAX_RECORDS_PER_BATCH {
        return Err(invalid(format!(
            "{count} records exceed the batch limit of {MAX_RECORDS_PER_BATCH}"
        )));
    }
    let records: Vec<Record> = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "body is not a record array (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if records.len() != count as usize {
        return Err(invalid(format!(
            "header announces {count} records, body holds {}",
            records.len()
        )));
    }
    Ok(records)
}

/// An [`Ack`]'s `unheld` of the size a header carries.
#[cfg(any(test, feature = "arbitrary"))]
pub(crate) fn arb_unheld() -> impl proptest::strategy::Strategy<Value = BTreeMap<String, Vec<u64>>>
{
    use proptest::prelude::*;
    proptest::collection::btree_map(
        ".{0,12}",
        proptest::collection::vec(any::<u64>(), 0..8),
        0..4,
    )
}

/// JSON values for property tests: small and of every shape.
#[cfg(any(test, feature = "arbitrary"))]
pub(crate) fn arb_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn record_batches_round_trip(records in proptest::collection::vec(any::<Record>(), 0..8)) {
            let body = encode_records(&records);
            prop_assert_eq!(decode_records(&body, records.len() as u32)?, records);
        }
    }

    #[test]
    fn batch_count_must_match() {
        let body = encode_records(&[]);
        assert!(matches!(
            decode_records(&body, 1),
            Err(DecodeError::InvalidFields {
                kind: "records",
                ..
            })
        ));
        assert!(decode_records(b"{}", 0).is_err());
        assert!(decode_records(b"[]", MAX_RECORDS_PER_BATCH + 1).is_err());
    }
}
