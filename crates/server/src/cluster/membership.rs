//! Who is in the cluster, who owns a username, and how many nodes make a
//! write durable.
//!
//! The membership is a static list every node and the balancer are given.
//! A username belongs to one node, chosen by rendezvous hashing (Thaler and
//! Ravishankar's highest random weight): every node computes the same owner
//! from the list alone, in any order, and removing a node moves only the names
//! it owned.

use std::collections::BTreeMap;
use std::ops::Bound;

use sha2::{Digest, Sha256};

/// A cluster as one node sees it: itself and its peers, each by node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    me: String,
    /// Every node's address for peer links, this node's included.
    nodes: BTreeMap<String, String>,
    write_quorum: usize,
}

/// Why a membership was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// A peer has this node's own id.
    #[error("peer {0} has this node's own id")]
    PeerIsSelf(String),
    /// The write quorum is zero or larger than the cluster.
    #[error("write quorum {quorum} is outside 1 to {nodes}, the number of nodes")]
    Quorum {
        /// The quorum asked for.
        quorum: usize,
        /// Nodes in the cluster.
        nodes: usize,
    },
}

/// The write quorum when none is configured: two copies as soon as there are
/// two nodes, so that losing any one node loses no acknowledged write.
pub fn default_write_quorum(nodes: usize) -> usize {
    nodes.min(2)
}

impl Membership {
    /// Node `me` (listening on `own_addr`) with `peers` (id → address), and a
    /// write quorum ([`default_write_quorum`] when `None`).
    pub fn new(
        me: &str,
        own_addr: &str,
        peers: &BTreeMap<String, String>,
        write_quorum: Option<usize>,
    ) -> Result<Membership, MembershipError> {
        if peers.contains_key(me) {
            return Err(MembershipError::PeerIsSelf(me.to_owned()));
        }
        let mut nodes = peers.clone();
        nodes.insert(me.to_owned(), own_addr.to_owned());
        let quorum = write_quorum.unwrap_or_else(|| default_write_quorum(nodes.len()));
        if quorum == 0 || quorum > nodes.len() {
            return Err(MembershipError::Quorum {
                quorum,
                nodes: nodes.len(),
            });
        }
        Ok(Membership {
            me: me.to_owned(),
            nodes,
            write_quorum: quorum,
        })
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The other nodes, by id, with their addresses.
    pub fn peers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.nodes
            .iter()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, addr)| (id.as_str(), addr.as_str()))
    }

    /// Whether `id` is a member (this node included).
    pub fn contains(&self, id: &str) -> bool {
        self.nodes.contains_key(id)
    }

    /// How many nodes, this one included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether this node is alone (never: a membership holds at least itself).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes that must hold a write durably before it is acknowledged.
    pub fn write_quorum(&self) -> usize {
        self.write_quorum
    }

    /// The node a chunk goes to next from this node along the chain: the
    /// first node after this one in the order of their ids (the last
    /// followed by the first) that `follows` this node now, stopping at
    /// `origin`, the node that took the chunk in an upload. From `origin` it
    /// goes to the first following node after it; each passes it on to the
    /// next, skipping those not following it, until the next would be
    /// `origin` again. Every node has the same order, so a chunk taken by a
    /// member never comes back round.
    pub fn next_along(&self, origin: &str, follows: impl Fn(&str) -> bool) -> Option<&str> {
        let me = self.me.as_str();
        let after = self
            .nodes
            .range::<str, _>((Bound::Excluded(me), Bound::Unbounded));
        let before = self
            .nodes
            .range::<str, _>((Bound::Unbounded, Bound::Excluded(me)));
        after
            .chain(before)
            .map(|(id, _)| id.as_str())
            .take_while(|id| *id != origin)
            .find(|id| follows(id))
    }

    /// The node that registers `username` (already normalized): the one whose
    /// hash with the name is highest.
    pub fn owner(&self, username: &str) -> &str {
        self.nodes
            .keys()
            .max_by_key(|node| (weight(node, username), *node))
            .expect("a membership holds at least this node")
    }
}

/// The rendezvous weight of `node` for `key`: the first 8 bytes of
/// SHA-256(node ‖ 0 ‖ key). The zero byte keeps ("ab", "c") and ("a", "bc")
/// apart.
fn weight(node: &str, key: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(node.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(me: &str, ids: &[&str]) -> Membership {
        let peers = ids
            .iter()
            .filter(|id| **id != me)
            .map(|id| (id.to_string(), format!("{id}:8000")))
            .collect();
        Membership::new(me, &format!("{me}:8000"), &peers, None).unwrap()
    }

    #[test]
    fn a_chunk_goes_along_the_chain_once_to_every_node_following() {
        let ids = ["n3", "n1", "n4", "n2"];
        let view = |me| cluster(me, &ids);
        let all = |_: &str| true;
        // Taken by n2: to n3, n4 and n1 in turn, and not back to n2.
        assert_eq!(view("n2").next_along("n2", all), Some("n3"));
        assert_eq!(view("n3").next_along("n2", all), Some("n4"));
        assert_eq!(view("n4").next_along("n2", all), Some("n1"));
        assert_eq!(view("n1").next_along("n2", all), None);
        // Taken by n1 with n2 down: n1 skips it, and so does n4 after n3.
        let up = |id: &str| id != "n2";
        assert_eq!(view("n1").next_along("n1", up), Some("n3"));
        assert_eq!(view("n3").next_along("n1", up), Some("n4"));
        assert_eq!(view("n4").next_along("n1", up), None);
        // Nobody following: nowhere.
        assert_eq!(view("n1").next_along("n1", |_| false), None);
    }

    fn names() -> impl Iterator<Item = String> {
        (0..3000).map(|i| format!("user{i}"))
    }

    #[test]
    fn every_node_names_the_same_owner() {
        let ids = ["node-1", "node-2", "node-3"];
        let views: Vec<_> = ids.iter().map(|me| cluster(me, &ids)).collect();
        for name in names() {
            let owner = views[0].owner(&name);
            assert!(views.iter().all(|v| v.owner(&name) == owner), "{name}");
        }
    }

    #[test]
    fn names_spread_over_the_nodes() {
        let view = cluster("node-1", &["node-1", "node-2", "node-3"]);
        let mut counts = BTreeMap::new();
        for name in names() {
            *counts.entry(view.owner(&name).to_owned()).or_insert(0) += 1;
        }
        // 1000 expected each; SHA-256 is fixed, so this never flickers.
        assert!(
            counts.values().all(|&n| (850..=1150).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn removing_a_node_moves_only_the_names_it_owned() {
        let three = cluster("node-1", &["node-1", "node-2", "node-3"]);
        let two = cluster("node-1", &["node-1", "node-2"]);
        let mut moved = 0;
        for name in names() {
            match three.owner(&name) {
                "node-3" => moved += 1,
                owner => assert_eq!(two.owner(&name), owner, "{name} moved"),
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn quorum_defaults_to_two_copies_and_is_bounded() {
        assert_eq!(cluster("a", &["a"]).write_quorum(), 1);
        assert_eq!(cluster("a", &["a", "b"]).write_quorum(), 2);
        assert_eq!(cluster("a", &["a", "b", "c"]).write_quorum(), 2);
        let peers: BTreeMap<_, _> = [("b".to_owned(), "b:1".to_owned())].into();
        assert_eq!(
            Membership::new("a", "a:1", &peers, Some(3)),
            Err(MembershipError::Quorum {
                quorum: 3,
                nodes: 2
            })
        );
        assert!(Membership::new("a", "a:1", &peers, Some(0)).is_err());
        let with_self: BTreeMap<_, _> = [("a".to_owned(), "a:2".to_owned())].into();
        assert_eq!(
            Membership::new("a", "a:1", &with_self, None),
            Err(MembershipError::PeerIsSelf("a".into()))
        );
        let view = cluster("b", &["a", "b", "c"]);
        assert_eq!(
            view.peers().map(|(id, _)| id).collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert!(view.contains("b") && !view.contains("d"));
    }
}
