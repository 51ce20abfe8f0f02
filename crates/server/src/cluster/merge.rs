//! How replicated state merges, without any I/O.
//!
//! Every node applies the records of every other node in whatever order they
//! arrive, so each rule here is a join: commutative, associative and
//! idempotent. Applying the same set of records in any order, any number of
//! times, gives the same state on every node.
//!
//! - Rows that are registers (users, sessions, devices, folders, members,
//!   shares) keep the write with the greatest [`Stamp`]: (HLC, origin), a total
//!   order every node agrees on. A deleted row is a register holding nothing,
//!   so an older write arriving late cannot bring it back ([`Lww`]).
//! - A file entry keeps every version no other known version supersedes under
//!   version-vector order ([`Entry`]). Usually that is one version. When writes
//!   were concurrent it is several: every node shows the same
//!   [`winner`](Entry::winner) under the path and keeps each other live
//!   version as a conflict copy ([`Entry::losers`]), so no content is dropped.
//!   A tombstone is a version like any other: it supersedes what it saw, is
//!   superseded by what saw it, and racing another write, the later wins.
//! - [`Clock`] is the node's hybrid logical clock: it stamps local writes
//!   after every stamp the node has seen, and refuses a peer's stamp too far
//!   ahead of its own wall clock rather than be dragged into the future.

use std::cmp::Ordering;

use coffer_proto::types::{Causality, Hlc, VersionVector};
use serde::{Deserialize, Serialize};

/// Who made a write and when: compared by HLC, then by origin node, so two
/// writes are never equal unless they are the same write.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// When, on the origin's hybrid logical clock.
    pub hlc: Hlc,
    /// The node that made the write.
    pub origin: String,
}

/// How far ahead of this node's wall clock a peer's stamp may be. A stamp
/// further ahead is refused: taking it would push every later local stamp
/// into the future by as much.
pub const MAX_DRIFT_MS: u64 = 60_000;

/// The largest logical counter taken from a peer: a billion stamps within
/// one millisecond is a broken or hostile clock, not a busy one.
pub const MAX_LOGICAL: u32 = 1 << 30;

/// A peer's stamp that is too far ahead of this node's wall clock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a peer's stamp is out of line: {ahead_ms} ms ahead of this node's clock (at most {max_ms} allowed), \
     or its logical counter past the limit"
)]
pub struct ClockAhead {
    /// By how much the stamp is ahead.
    pub ahead_ms: u64,
    /// [`MAX_DRIFT_MS`].
    pub max_ms: u64,
}

/// A hybrid logical clock (Kulkarni et al., 2014): the wall clock when it
/// moves forward, a logical counter when it does not, and never behind a stamp
/// it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clock {
    last: Hlc,
}

impl Clock {
    /// A clock that has last stamped or seen `last`.
    pub fn new(last: Hlc) -> Self {
        Clock { last }
    }

    /// The newest stamp made or seen.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// Stamps a local write made at wall time `now_ms`: after every stamp made
    /// or seen so far.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        self.last = if now_ms > self.last.wall_ms {
            Hlc {
                wall_ms: now_ms,
                logical: 0,
            }
        } else {
            Hlc {
                wall_ms: self.last.wall_ms,
                logical: self.last.logical.saturating_add(1),
            }
        };
        self.last
    }

    /// Takes in a peer's stamp seen at wall time `now_ms`, so that every later
    /// local stamp orders after it. Refused, leaving the clock as it was, when
    /// the stamp is more than [`MAX_DRIFT_MS`] ahead of `now_ms`.
    pub fn observe(&mut self, remote: Hlc, now_ms: u64) -> Result<(), ClockAhead> {
        let ahead_ms = remote.wall_ms.saturating_sub(now_ms);
        // A logical counter near its end would leave no room for later
        // stamps to differ: as far out of line as a clock far ahead.
        if ahead_ms > MAX_DRIFT_MS || remote.logical > MAX_LOGICAL {
            return Err(ClockAhead {
                ahead_ms,
                max_ms: MAX_DRIFT_MS,
            });
        }
        self.last = self.last.max(remote);
        Ok(())
    }
}

/// A last-writer-wins register: the value of one row, or `None` once the row
/// is deleted, with the stamp of the write that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lww<T> {
    /// The write that set `value`.
    pub stamp: Stamp,
    /// The row, or `None` when the write deleted it.
    pub value: Option<T>,
}

impl<T: Ord + Clone> Lww<T> {
    /// The write with the greater stamp. Equal stamps mean the same write and
    /// so the same value; should they not (a node that reused its clock after
    /// losing its data), the greater value wins, so that every node still
    /// agrees.
    pub fn merge(&self, other: &Lww<T>) -> Lww<T> {
        let ours = (&self.stamp, &self.value);
        let theirs = (&other.stamp, &other.value);
        if theirs > ours {
            other.clone()
        } else {
            self.clone()
        }
    }

    /// Whether `incoming` replaces this register's value.
    pub fn superseded_by(&self, incoming: &Lww<T>) -> bool {
        (&incoming.stamp, &incoming.value) > (&self.stamp, &self.value)
    }
}

/// One version of a file entry: its causal history, the write that made it,
/// whether it deletes the entry, and what it holds (opaque here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version<C> {
    /// What the version knows of the entry's earlier writes.
    pub vv: VersionVector,
    /// The write that made it.
    pub stamp: Stamp,
    /// A tombstone: the entry was deleted.
    pub deleted: bool,
    /// The version's content (size, chunk list, wrapped key, metadata…).
    pub content: C,
}

impl<C: Ord> Version<C> {
    /// Whether this version, concurrent with `other`, is the one every node
    /// shows under the path (see [`Version::rank`]).
    pub fn outranks(&self, other: &Version<C>) -> bool {
        self.rank(other) == Ordering::Greater
    }

    /// Whether this version, arriving where `shown` is shown, is shown
    /// instead: when it saw `shown`, or is concurrent with it and outranks
    /// it. Comparing an arriving version with the shown one only — what a
    /// store does, holding one version under a path — shows the
    /// [`Entry::winner`] of every version delivered, in any order, as long as
    /// the rank follows causality (see [`Version::rank`]).
    pub fn replaces(&self, shown: &Version<C>) -> bool {
        match self.vv.compare(&shown.vv) {
            Causality::After => true,
            Causality::Concurrent => self.outranks(shown),
            Causality::Before | Causality::Equal => false,
        }
    }

    /// Which of two versions is shown under the path when both are: the
    /// later write, by clock, then by the weight of its vector (the sum of
    /// its counters), so that of two versions written at the same time the
    /// one that saw the other ranks higher, then by origin. `Greater` means
    /// `self` wins. Versions that tie (only possible between forged or
    /// corrupted records) are told apart by content, deletion and vector, so
    /// the order stays total.
    ///
    /// The rank follows causality — a version ranks above every version it
    /// saw — because a node stamps a write no earlier than the version it
    /// replaces. That is what lets a node keep only the version it shows:
    /// the winner of a path can only change to a version that replaces it
    /// (see [`Version::replaces`]). A rank putting a live version before a
    /// tombstone would not follow causality (a delete would rank below the
    /// edit it deletes): two nodes hearing of two chains of writes ending in
    /// deletes in opposite orders would show different versions for good.
    /// So a delete racing an edit is decided like any two writes, and the
    /// edit, when it loses, is kept as a conflict copy.
    pub fn rank(&self, other: &Version<C>) -> Ordering {
        self.rank_key()
            .cmp(&other.rank_key())
            .then_with(|| self.vv.iter().cmp(other.vv.iter()))
    }
}

impl<C> Version<C> {
    /// What [`Version::rank`] compares, in order, before the vectors: the
    /// vector's weight is the sum of its counters, greater in a vector than
    /// in every vector it supersedes.
    fn rank_key(&self) -> (Hlc, u128, &str, &C, bool) {
        let weight = self.vv.iter().map(|(_, n)| u128::from(n)).sum();
        (
            self.stamp.hlc,
            weight,
            &self.stamp.origin,
            &self.content,
            self.deleted,
        )
    }
}

/// The versions of one file entry that no other known version supersedes — a
/// multi-value register under version-vector order. Kept best first, so two
/// entries holding the same versions are equal values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<C> {
    versions: Vec<Version<C>>,
}

impl<C: Ord + Clone> Entry<C> {
    /// An entry holding one version.
    pub fn new(version: Version<C>) -> Self {
        Entry {
            versions: vec![version],
        }
    }

    /// Adds a version: it is dropped if a held version saw it, it drops every
    /// held version it saw, and it is kept beside those it is concurrent with.
    pub fn insert(&mut self, version: Version<C>) {
        for (i, held) in self.versions.iter().enumerate() {
            match version.vv.compare(&held.vv) {
                Causality::Before => return,
                Causality::Equal => {
                    // The same write; on a node that reused its counters, the
                    // better ranked one, so that every node keeps the same.
                    if version.rank(held) == Ordering::Greater {
                        self.versions[i] = version;
                        self.sort();
                    }
                    return;
                }
                Causality::After | Causality::Concurrent => {}
            }
        }
        self.versions
            .retain(|held| version.vv.compare(&held.vv) != Causality::After);
        self.versions.push(version);
        self.sort();
    }

    /// Both entries' versions, less those another one supersedes.
    pub fn merge(&self, other: &Entry<C>) -> Entry<C> {
        let mut merged = self.clone();
        for version in &other.versions {
            merged.insert(version.clone());
        }
        merged
    }

    fn sort(&mut self) {
        self.versions.sort_by(|a, b| b.rank(a));
    }

    /// The version every node shows under the entry's path.
    pub fn winner(&self) -> &Version<C> {
        &self.versions[0]
    }

    /// The other live versions, concurrent with the winner: each is kept as a
    /// conflict copy. A tombstone that lost needs no copy.
    pub fn losers(&self) -> impl Iterator<Item = &Version<C>> {
        self.versions[1..].iter().filter(|v| !v.deleted)
    }

    /// Every version held, best first.
    pub fn versions(&self) -> &[Version<C>] {
        &self.versions
    }

    /// The history a write replacing every held version must start from: what
    /// all of them know. A write with this vector, plus one, supersedes them all.
    pub fn known(&self) -> VersionVector {
        self.versions
            .iter()
            .fold(VersionVector::new(), |known, v| known.merge(&v.vv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(wall_ms: u64, origin: &str) -> Stamp {
        Stamp {
            hlc: Hlc {
                wall_ms,
                logical: 0,
            },
            origin: origin.to_owned(),
        }
    }

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(node, n) in pairs {
            for _ in 0..n {
                v.increment(node);
            }
        }
        v
    }

    fn version(pairs: &[(&str, u64)], at: u64, origin: &str, content: &str) -> Version<String> {
        Version {
            vv: vv(pairs),
            stamp: stamp(at, origin),
            deleted: false,
            content: content.to_owned(),
        }
    }

    fn tombstone(pairs: &[(&str, u64)], at: u64, origin: &str) -> Version<String> {
        Version {
            deleted: true,
            ..version(pairs, at, origin, "")
        }
    }

    fn both_orders(a: &Version<String>, b: &Version<String>) -> Entry<String> {
        let mut ab = Entry::new(a.clone());
        ab.insert(b.clone());
        let mut ba = Entry::new(b.clone());
        ba.insert(a.clone());
        assert_eq!(ab, ba, "the order of arrival decides nothing");
        ab
    }

    #[test]
    fn a_newer_version_replaces_the_one_it_saw() {
        let entry = both_orders(
            &version(&[("a", 1)], 10, "a", "v1"),
            &version(&[("a", 1), ("b", 1)], 5, "b", "v2"),
        );
        // The vector decides, not the clock: b's clock was behind.
        assert_eq!(entry.winner().content, "v2");
        assert_eq!(entry.versions().len(), 1);
    }

    #[test]
    fn concurrent_versions_keep_one_winner_and_the_loser_as_a_copy() {
        let entry = both_orders(
            &version(&[("a", 2)], 20, "a", "from a"),
            &version(&[("a", 1), ("b", 1)], 30, "b", "from b"),
        );
        assert_eq!(entry.winner().content, "from b", "the later write wins");
        let losers: Vec<_> = entry.losers().map(|v| v.content.as_str()).collect();
        assert_eq!(losers, ["from a"]);
        // A write that saw both ends the conflict.
        let mut next = entry.known();
        next.increment("c");
        let mut entry = entry;
        entry.insert(Version {
            vv: next,
            ..version(&[], 40, "c", "merged")
        });
        assert_eq!(entry.versions().len(), 1);
        assert_eq!(entry.winner().content, "merged");
    }

    #[test]
    fn a_tombstone_wins_against_older_versions_and_loses_against_newer_ones() {
        let v1 = version(&[("a", 1)], 10, "a", "v1");
        let gone = tombstone(&[("a", 1), ("b", 1)], 20, "b");
        let entry = both_orders(&v1, &gone);
        assert!(entry.winner().deleted);
        assert_eq!(entry.losers().count(), 0);
        let back = version(&[("a", 2), ("b", 1)], 15, "a", "recreated");
        let entry = entry.merge(&Entry::new(back));
        assert_eq!(entry.winner().content, "recreated");
        assert_eq!(entry.versions().len(), 1);
    }

    #[test]
    fn a_delete_racing_a_modification_is_decided_by_time_and_the_edit_is_never_lost() {
        // The tombstone is the later write: the path is deleted, and the edit
        // is kept as a copy.
        let entry = both_orders(
            &version(&[("a", 2)], 10, "a", "edited"),
            &tombstone(&[("a", 1), ("b", 1)], 50, "b"),
        );
        assert!(entry.winner().deleted);
        let losers: Vec<_> = entry.losers().map(|v| v.content.as_str()).collect();
        assert_eq!(losers, ["edited"]);
        // The edit is the later write: it stays, and the tombstone needs no
        // copy.
        let entry = both_orders(
            &version(&[("a", 2)], 60, "a", "edited"),
            &tombstone(&[("a", 1), ("b", 1)], 50, "b"),
        );
        assert_eq!(entry.winner().content, "edited");
        assert_eq!(entry.losers().count(), 0, "a tombstone needs no copy");
    }

    #[test]
    fn of_two_versions_stamped_alike_the_one_that_saw_the_other_ranks_higher() {
        let first = version(&[("b", 1)], 10, "a", "z");
        let next = version(&[("a", 1), ("b", 1)], 10, "a", "a");
        assert!(next.outranks(&first));
        assert!(next.replaces(&first));
        assert!(!first.replaces(&next));
    }

    #[test]
    fn registers_keep_the_later_write_and_deletes_stay_deleted() {
        let old = Lww {
            stamp: stamp(10, "b"),
            value: Some("old"),
        };
        let deleted = Lww {
            stamp: stamp(20, "a"),
            value: None,
        };
        assert_eq!(old.merge(&deleted), deleted);
        assert_eq!(deleted.merge(&old), deleted);
        assert!(old.superseded_by(&deleted));
        assert!(!deleted.superseded_by(&old));
        // Same time: the origin breaks the tie.
        let from_a = Lww {
            stamp: stamp(10, "a"),
            value: Some("a"),
        };
        assert_eq!(from_a.merge(&old), old);
    }

    #[test]
    fn the_clock_stamps_after_everything_it_has_seen() {
        let mut clock = Clock::default();
        let first = clock.tick(100);
        assert_eq!(
            first,
            Hlc {
                wall_ms: 100,
                logical: 0
            }
        );
        // The wall clock stepped back: the logical counter carries on.
        assert_eq!(
            clock.tick(90),
            Hlc {
                wall_ms: 100,
                logical: 1
            }
        );
        let remote = Hlc {
            wall_ms: 5_000,
            logical: 7,
        };
        clock.observe(remote, 100).unwrap();
        assert!(clock.tick(101) > remote);
        let far = Hlc {
            wall_ms: 100 + MAX_DRIFT_MS + 1,
            logical: 0,
        };
        let before = clock;
        assert_eq!(
            clock.observe(far, 100),
            Err(ClockAhead {
                ahead_ms: MAX_DRIFT_MS + 1,
                max_ms: MAX_DRIFT_MS
            })
        );
        assert_eq!(clock, before, "a refused stamp leaves the clock alone");
        let worn = Hlc {
            wall_ms: 100,
            logical: MAX_LOGICAL + 1,
        };
        assert!(clock.observe(worn, 100).is_err(), "no room left after it");
        assert_eq!(clock, before);
    }

    // Versions over three nodes, with few distinct vectors so that equal,
    // ordered and concurrent pairs all come up.
    fn any_version() -> impl Strategy<Value = Version<u8>> {
        (
            (0u64..3, 0u64..3, 0u64..3),
            0u64..4,
            0usize..3,
            any::<bool>(),
            0u8..3,
        )
            .prop_map(|((a, b, c), at, origin, deleted, content)| Version {
                vv: vv(&[("a", a), ("b", b), ("c", c)]),
                stamp: stamp(at, ["a", "b", "c"][origin]),
                deleted,
                content,
            })
    }

    fn any_entry() -> impl Strategy<Value = Entry<u8>> {
        proptest::collection::vec(any_version(), 1..5).prop_map(|versions| {
            let mut versions = versions.into_iter();
            let mut entry = Entry::new(versions.next().expect("at least one"));
            versions.for_each(|v| entry.insert(v));
            entry
        })
    }

    /// Writes of one entry by three nodes: each a new version, or one
    /// written on top of an earlier write — counted one up under its node,
    /// stamped no earlier than it. A node counts and stamps its writes in
    /// order. Some are deletes.
    fn causal_history() -> impl Strategy<Value = Vec<Version<u8>>> {
        proptest::collection::vec(
            (
                proptest::option::of(any::<prop::sample::Index>()),
                0usize..3,
                0u64..3,
                any::<bool>(),
                0u8..3,
            ),
            1..8,
        )
        .prop_map(|writes| {
            let mut counts = [0u64; 3];
            let mut clocks = [0u64; 3];
            let mut history: Vec<Version<u8>> = Vec::new();
            for (parent, node, later, deleted, content) in writes {
                let name = ["a", "b", "c"][node];
                counts[node] += 1;
                let parent = parent
                    .filter(|_| !history.is_empty())
                    .map(|i| history[i.index(history.len())].clone());
                let (mut counters, at) = match parent {
                    Some(p) => (std::collections::BTreeMap::from(p.vv), p.stamp.hlc.wall_ms),
                    None => (std::collections::BTreeMap::new(), 0),
                };
                counters.insert(name.to_owned(), counts[node]);
                clocks[node] = at.max(clocks[node]) + later;
                history.push(Version {
                    vv: VersionVector::from(counters),
                    stamp: stamp(clocks[node], name),
                    deleted,
                    content,
                });
            }
            history
        })
    }

    fn any_register() -> impl Strategy<Value = Lww<u8>> {
        (0u64..4, 0usize..3, proptest::option::of(0u8..3)).prop_map(|(at, origin, value)| Lww {
            stamp: stamp(at, ["a", "b", "c"][origin]),
            value,
        })
    }

    proptest! {
        #[test]
        fn entry_merge_is_commutative(a in any_entry(), b in any_entry()) {
            prop_assert_eq!(a.merge(&b), b.merge(&a));
        }

        #[test]
        fn entry_merge_is_associative(a in any_entry(), b in any_entry(), c in any_entry()) {
            prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
        }

        #[test]
        fn entry_merge_is_idempotent(a in any_entry(), b in any_entry()) {
            prop_assert_eq!(a.merge(&a), a.clone());
            let ab = a.merge(&b);
            prop_assert_eq!(ab.merge(&b), ab);
        }

        /// Versions delivered in any order leave the same entry, and no
        /// version is lost: each is held, or a held version saw it.
        #[test]
        fn every_delivery_order_converges_and_loses_nothing(
            versions in proptest::collection::vec(any_version(), 1..7),
            rotate in 0usize..7,
        ) {
            let fold = |order: &[Version<u8>]| {
                let mut entry = Entry::new(order[0].clone());
                order[1..].iter().for_each(|v| entry.insert(v.clone()));
                entry
            };
            let forward = fold(&versions);
            let mut other = versions.clone();
            other.reverse();
            let len = other.len();
            other.rotate_left(rotate % len);
            prop_assert_eq!(&fold(&other), &forward);
            for v in &versions {
                prop_assert!(
                    forward.versions().iter().any(|held| matches!(
                        v.vv.compare(&held.vv),
                        Causality::Before | Causality::Equal
                    )),
                    "{:?} was dropped", v
                );
            }
            // What is held is an antichain: no held version saw another.
            for (i, x) in forward.versions().iter().enumerate() {
                for y in &forward.versions()[i + 1..] {
                    prop_assert_eq!(x.vv.compare(&y.vv), Causality::Concurrent);
                }
            }
        }

        /// A store keeps only the version it shows and compares each
        /// version that arrives with it ([`Version::replaces`]). Over writes
        /// that each follow the version they replace — stamped no earlier,
        /// counted one up under their node — that shows, whatever the order
        /// of delivery, the winner of the entry holding every version.
        #[test]
        fn showing_one_version_shows_the_winner_of_all(
            (history, order) in causal_history().prop_flat_map(|history| {
                let order: Vec<usize> = (0..history.len()).collect();
                (Just(history), Just(order).prop_shuffle())
            }),
        ) {
            let mut entry = Entry::new(history[order[0]].clone());
            let mut shown = history[order[0]].clone();
            for &i in &order[1..] {
                entry.insert(history[i].clone());
                if history[i].replaces(&shown) {
                    shown = history[i].clone();
                }
            }
            prop_assert_eq!(&shown, entry.winner());
        }

        #[test]
        fn register_merge_is_a_join(
            a in any_register(), b in any_register(), c in any_register(),
        ) {
            prop_assert_eq!(a.merge(&b), b.merge(&a));
            prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
            prop_assert_eq!(a.merge(&a), a.clone());
            prop_assert_eq!(a.superseded_by(&b), a.merge(&b) != a);
        }

        /// Stamps a node makes only grow, whatever the wall clock does.
        #[test]
        fn the_clock_never_goes_back(
            steps in proptest::collection::vec((0u64..1_000_000, proptest::option::of(0u64..1_100_000)), 1..40),
        ) {
            let mut clock = Clock::default();
            let mut last = Hlc::default();
            for (now, seen) in steps {
                if let Some(wall_ms) = seen {
                    let _ = clock.observe(Hlc { wall_ms, logical: 3 }, now);
                }
                let next = clock.tick(now);
                prop_assert!(next > last);
                last = next;
            }
        }
    }
}
