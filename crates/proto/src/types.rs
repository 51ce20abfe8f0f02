//! Value types shared by several messages: hashes, opaque byte strings, ids,
//! roles, version vectors, clocks and file entries.
//!
//! Binary values that are small (hashes, wrapped keys, salts, encrypted metadata)
//! travel inside the JSON header — hashes as lowercase hex, other bytes as
//! standard base64. Bulk data (chunks, chunk lists, record batches) never does:
//! it travels in the frame body.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

#[cfg(any(test, feature = "arbitrary"))]
use proptest_derive::Arbitrary;

/// Decodes exactly `N` bytes of hex into an array (upper or lower case).
fn hex_array<const N: usize, E: de::Error>(s: &str) -> Result<[u8; N], E> {
    let mut out = [0u8; N];
    // No echo of the input in the message: hashes sit beside secrets in requests.
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| E::custom(format_args!("expected {} hex digits", N * 2)))?;
    Ok(out)
}

struct HexVisitor<const N: usize>;

impl<const N: usize> Visitor<'_> for HexVisitor<N> {
    type Value = [u8; N];
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string of {} hex digits", N * 2)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        hex_array(v)
    }
}

/// A SHA-256 digest: a chunk's content address, a file's plaintext checksum, a
/// login secret. Hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Sha256, hex::FromHexError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Sha256(out))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(HexVisitor::<32>).map(Sha256)
    }
}

/// A file's identity: 16 random bytes chosen by the client when the file is
/// first written and kept across edits and moves. The chunk envelope binds every
/// chunk to it. Hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FileId(pub [u8; 16]);

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", hex::encode(self.0))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for FileId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for FileId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(HexVisitor::<16>).map(FileId)
    }
}

/// Opaque bytes the server stores without understanding: public keys, wrapped
/// keys, encrypted metadata, KDF salts. Standard base64 on the wire.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Blob(pub Vec<u8>);

impl Blob {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Blob {
        Blob(v)
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lengths only: blobs hold wrapped keys, which have no business in logs.
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct B64;
        impl Visitor<'_> for B64 {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a standard base64 string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Blob, E> {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(Blob)
                    .map_err(|_| E::custom("expected standard base64"))
            }
        }
        d.deserialize_str(B64)
    }
}

/// The login secret: `SHA-256("coffer-auth-v1" ‖ username ‖ ":" ‖ password)`.
/// The server stores only bcrypt of it. Its `Debug` is redacted.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(transparent)]
pub struct LoginSecret(pub Sha256);

impl fmt::Debug for LoginSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginSecret(<redacted>)")
    }
}

/// A session token. Bearer credentials: its `Debug` is redacted so that a
/// logged message never carries one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(transparent)]
pub struct Token(pub String);

impl Token {
    /// The token text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A member's role in a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and writes.
    Editor,
    /// Reads, writes, shares and unshares; exactly one per folder.
    Owner,
}

impl Role {
    /// Whether this role may change the folder's content.
    pub fn can_write(self) -> bool {
        matches!(self, Role::Editor | Role::Owner)
    }
}

/// An account's role on the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    /// May list users and disable accounts.
    Admin,
    /// Everyone else.
    User,
}

/// The state of a folder membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    /// Invited, not yet answered.
    Invited,
    /// A member.
    Active,
}

/// What a path in a folder names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A file with content.
    File,
    /// A directory.
    Dir,
}

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Same history.
    Equal,
    /// The left side happened before the right one (the right one knows it).
    Before,
    /// The left side happened after the right one.
    After,
    /// Neither knows the other: a conflict.
    Concurrent,
}

/// A version vector: per writer (a server node), how many writes of an entry it
/// has seen. Absent writers count as zero, and zero counters are never stored, so
/// equal histories are equal values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(from = "BTreeMap<String, u64>", into = "BTreeMap<String, u64>")]
pub struct VersionVector(
    #[cfg_attr(
        any(test, feature = "arbitrary"),
        proptest(strategy = "proptest::collection::btree_map(\"[a-c]\", 1u64..4, 0..3)")
    )]
    BTreeMap<String, u64>,
);

impl From<BTreeMap<String, u64>> for VersionVector {
    fn from(mut map: BTreeMap<String, u64>) -> Self {
        map.retain(|_, n| *n > 0);
        VersionVector(map)
    }
}

impl From<VersionVector> for BTreeMap<String, u64> {
    fn from(v: VersionVector) -> Self {
        v.0
    }
}

impl VersionVector {
    /// The empty vector: no writes yet.
    pub fn new() -> Self {
        VersionVector::default()
    }

    /// The counter of `writer` (zero when absent).
    pub fn get(&self, writer: &str) -> u64 {
        self.0.get(writer).copied().unwrap_or(0)
    }

    /// Records one more write by `writer`.
    pub fn increment(&mut self, writer: &str) {
        *self.0.entry(writer.to_owned()).or_insert(0) += 1;
    }

    /// The least vector that knows everything both know (element-wise maximum).
    pub fn merge(&self, other: &VersionVector) -> VersionVector {
        let mut out = self.0.clone();
        for (writer, &n) in &other.0 {
            let slot = out.entry(writer.clone()).or_insert(0);
            *slot = (*slot).max(n);
        }
        VersionVector(out)
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut less = false;
        let mut greater = false;
        for writer in self.0.keys().chain(other.0.keys()) {
            let (a, b) = (self.get(writer), other.get(writer));
            less |= a < b;
            greater |= a > b;
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// The writers and their counters, in writer order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(w, n)| (w.as_str(), *n))
    }
}

/// A hybrid logical clock reading: wall-clock milliseconds plus a logical
/// counter that orders events within one millisecond (or while a clock lags).
/// Ties between nodes are broken by the origin node id, outside this type.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Hlc {
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Logical counter within `wall_ms`.
    pub logical: u32,
}

/// Parameters of the password KDF that wraps a user's private key. Opaque to the
/// server, which stores and returns them verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Kdf {
    /// Algorithm name; `"argon2id"` in this version.
    pub alg: String,
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// Per-user random salt.
    pub salt: Blob,
}

/// A folder key for one epoch, wrapped for one member (RSA-OAEP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct EpochKey {
    /// Key epoch; the first is 1, each unshare adds one.
    pub epoch: u64,
    /// The folder key wrapped with the member's public key.
    pub wrapped_key: Blob,
}

/// A folder key of a new epoch wrapped for one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct MemberKey {
    /// The member.
    pub username: String,
    /// The folder key wrapped with the member's public key.
    pub wrapped_key: Blob,
}

/// The full record of one version of one path in a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FileEntry {
    /// Folder holding the entry.
    pub folder_id: String,
    /// Path inside the folder (see [`crate::path`]).
    pub path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// The file's identity, stable across edits and moves.
    pub file_id: FileId,
    /// Per-path version number, 1 for the first write; what `history` lists.
    pub version: u64,
    /// Causal history of the entry.
    pub vv: VersionVector,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Plaintext chunk size the file was cut with.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunk_count: u32,
    /// Folder key epoch the file key is wrapped under.
    pub epoch: u64,
    /// The file key wrapped under the folder key of `epoch`.
    pub wrapped_file_key: Blob,
    /// Encrypted metadata (plaintext SHA-256, modification time, …), sealed under the file key.
    pub meta: Blob,
    /// When the server committed this version, Unix milliseconds.
    pub modified_ms: u64,
    /// Device that wrote this version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Whether this version is a deletion (tombstone).
    pub deleted: bool,
}

/// One line of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct EntrySummary {
    /// Path inside the folder.
    pub path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Per-path version number.
    pub version: u64,
    /// When the version was committed, Unix milliseconds.
    pub modified_ms: u64,
    /// Whether the latest version is a tombstone (listed only when asked for).
    pub deleted: bool,
}

/// Where a chunk may be read from: a folder the caller belongs to, or a
/// single-file share made to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// A folder, by id.
    Folder(String),
    /// A single-file share, by id.
    Share(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hex_and_base64_errors_do_not_echo_input() {
        let err = serde_json::from_str::<Sha256>("\"secret-value\"").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = serde_json::from_str::<Blob>("\"secret!!\"").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(serde_json::from_str::<FileId>("\"00\"").is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let secret = LoginSecret(Sha256([0xab; 32]));
        assert!(!format!("{secret:?}").contains("abab"));
        let token = Token("tok-123".to_owned());
        assert!(!format!("{token:?}").contains("tok-123"));
        assert_eq!(serde_json::to_string(&token).unwrap(), "\"tok-123\"");
    }

    #[test]
    fn zero_counters_are_dropped() {
        let v: VersionVector = serde_json::from_str(r#"{"a":0,"b":2}"#).unwrap();
        let mut w = VersionVector::new();
        w.increment("b");
        w.increment("b");
        assert_eq!(v, w);
    }

    #[test]
    fn compare_basics() {
        let mut a = VersionVector::new();
        let b = a.clone();
        assert_eq!(a.compare(&b), Causality::Equal);
        a.increment("n1");
        assert_eq!(a.compare(&b), Causality::After);
        assert_eq!(b.compare(&a), Causality::Before);
        let mut c = b.clone();
        c.increment("n2");
        assert_eq!(a.compare(&c), Causality::Concurrent);
    }

    proptest! {
        #[test]
        fn merge_is_a_semilattice(a: VersionVector, b: VersionVector, c: VersionVector) {
            prop_assert_eq!(a.merge(&b), b.merge(&a));
            prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
            prop_assert_eq!(a.merge(&a), a.clone());
        }

        #[test]
        fn merge_is_the_least_upper_bound(a: VersionVector, b: VersionVector) {
            let m = a.merge(&b);
            prop_assert!(matches!(a.compare(&m), Causality::Before | Causality::Equal));
            prop_assert!(matches!(b.compare(&m), Causality::Before | Causality::Equal));
            // Concurrent inputs: the merge strictly dominates both.
            if a.compare(&b) == Causality::Concurrent {
                prop_assert_eq!(a.compare(&m), Causality::Before);
                prop_assert_eq!(b.compare(&m), Causality::Before);
            }
        }

        #[test]
        fn compare_is_antisymmetric(a: VersionVector, b: VersionVector) {
            let expected = match a.compare(&b) {
                Causality::Equal => Causality::Equal,
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                Causality::Concurrent => Causality::Concurrent,
            };
            prop_assert_eq!(b.compare(&a), expected);
            prop_assert_eq!(a.compare(&b) == Causality::Equal, a == b);
        }

        #[test]
        fn increment_moves_forward(a: VersionVector, w in "[a-d]") {
            let mut b = a.clone();
            b.increment(&w);
            prop_assert_eq!(a.compare(&b), Causality::Before);
        }
    }
}
