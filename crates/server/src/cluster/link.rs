//! Peer links: how each node follows every other node's change log.
//!
//! Every node opens one link to each peer ([`follow`]) and the peer streams
//! its log down it ([`serve`]): first whatever the follower lacks, per origin,
//! from the cursors the follower sent in `peer_hello`; then each record as it
//! commits. Records travel in the order the serving node applied them, which
//! respects what each depends on (a folder before its members), and a node
//! passes on what it learnt from others, so a record reaches every node that
//! can reach anyone who holds it. The follower applies each batch durably and
//! acknowledges it with its cursors.
//!
//! A link is a TLS connection on the ordinary port on which the follower
//! presents its peer certificate; its node id, from the certificate, must be
//! a member and must match `peer_hello`. Clients carry no certificate, so
//! nothing a client holds opens a link.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coffer_net::conn::{ConnError, Connection, Timeouts};
use coffer_net::{Net, Stream, tls};
use coffer_proto::peer::{
    Ack, ChunkFetch, ForwardKeys, KeysForwarded, MAX_UNHELD, PeerHello, PeerMessage, PeerPong,
    PeerWelcome, Record, Records, decode_records, encode_records,
};
use coffer_proto::request::Register;
use coffer_proto::response::{ErrorBody, Registered};
use coffer_proto::types::Sha256;
use coffer_proto::{DecodeError, ErrorCode, Frame, Limits, PROTOCOL_VERSION};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Server;
use crate::cluster::membership::Membership;

/// Records read from the log per round.
const BATCH_RECORDS: usize = 512;
/// A batch is sent once its records reach this many bytes of JSON.
const BATCH_BYTES: usize = 1 << 20;
/// An idle link is pinged this often; three silent periods end it.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Most registrations a follower may have this node make at once.
const MAX_FORWARDED: usize = 16;
/// Chunks a follower asks of a peer at once.
const FETCH_WINDOW: usize = 8;
/// Chunks waiting to be pushed to followers; a follower further behind
/// misses the oldest (and fetches them when their record comes). A chunk
/// leaves the queue once every link has sent it, so it holds at most this
/// many chunks of a follower that lags: 32 MiB at the default chunk size,
/// 128 MiB at the largest. With 16, the followers of three 256 MiB puts on
/// one 2-core host missed 52 and 60 of their 768 chunks; with 32, 10 and 0.
const PUSH_QUEUE: usize = 32;
/// How long a follower keeps a pushed chunk that no version holds yet.
const PUSH_HOLD: Duration = Duration::from_secs(3600);
/// How long a follower whose records name chunks it lacks waits for one of
/// them to come along the chain before it asks for the rest; and the
/// longest it waits in all, however they keep coming.
const CHAIN_IDLE: Duration = Duration::from_millis(250);
const CHAIN_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for a peer to answer a forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits between attempts to reach a peer, doubling up to the maximum.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] tls::HandshakeError),
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("the peer closed the link")]
    Closed,
    #[error("the peer said: {0}")]
    Refused(String),
    #[error("unexpected {0} on a peer link")]
    Unexpected(&'static str),
    #[error("records: {0}")]
    Records(#[from] DecodeError),
    #[error("the peer's records could not be applied: {0}")]
    Apply(String),
    #[error(transparent)]
    Server(#[from] crate::error::Error),
}

fn timeouts(server: &Server) -> Timeouts {
    Timeouts {
        idle: PING_EVERY * 3,
        frame: server.config.frame_timeout,
        write: server.config.write_timeout,
    }
}

/// What the peers that follow this node have acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Followers {
    /// Per peer: its cursors as it last acknowledged them, and when.
    acked: std::sync::Mutex<BTreeMap<String, Acked>>,
    /// Bumped at every acknowledgement, for writes waiting on a quorum.
    news: tokio::sync::watch::Sender<u64>,
}

/// What a write waits for before it is acknowledged in a cluster: `needed`
/// peers holding its record durably, within `timeout`.
#[derive(Debug, Clone)]
pub(crate) struct Quorum {
    pub(crate) followers: Arc<Followers>,
    pub(crate) needed: usize,
    pub(crate) timeout: Duration,
}

impl Quorum {
    /// Waits until `needed` peers have acknowledged record `seq` of
    /// `origin`; `unavailable` when they have not within the timeout (the
    /// write stays here and still reaches them when they come back).
    pub(crate) async fn wait(&self, origin: &str, seq: u64) -> crate::error::Result<()> {
        let mut news = self.followers.news.subscribe();
        let enough = || {
            let acked = self.followers.acked.lock().expect("followers lock");
            acked.values().filter(|a| a.holds(origin, seq)).count() >= self.needed
        };
        let waited = tokio::time::timeout(self.timeout, async {
            while !enough() {
                if news.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if waited.is_ok() && enough() {
            Ok(())
        } else {
            Err(unavailable(format!(
                "written on this node, but fewer than {} other nodes hold it yet; \
                 it reaches them once they are back (check before writing again)",
                self.needed
            )))
        }
    }
}

/// What a follower last acknowledged, and when (Unix milliseconds).
#[derive(Debug)]
struct Acked {
    /// Origin → newest record applied.
    applied: BTreeMap<String, u64>,
    /// Records within `applied` whose chunks the follower lacks.
    unheld: BTreeMap<String, Vec<u64>>,
    at: u64,
}

impl Acked {
    /// Whether the follower holds record `seq` of `origin`, chunks and all.
    fn holds(&self, origin: &str, seq: u64) -> bool {
        self.applied.get(origin).is_some_and(|&s| s >= seq)
            && !self.unheld.get(origin).is_some_and(|u| u.contains(&seq))
    }
}

impl Followers {
    fn record(&self, peer: &str, ack: Ack, now_ms: u64) {
        self.acked.lock().expect("followers lock").insert(
            peer.to_owned(),
            Acked {
                applied: ack.applied,
                unheld: ack.unheld,
                at: now_ms,
            },
        );
        self.news.send_modify(|n| *n += 1);
    }

    /// How far `peer` is behind a node holding `held`: records not
    /// acknowledged, and milliseconds since its last acknowledgement (0 when
    /// it holds everything).
    pub(crate) fn behind(
        &self,
        peer: &str,
        held: &BTreeMap<String, u64>,
        now_ms: u64,
    ) -> (u64, u64) {
        let acked = self.acked.lock().expect("followers lock");
        let (applied, at) = match acked.get(peer) {
            Some(acked) => (Some(&acked.applied), Some(acked.at)),
            None => (None, None),
        };
        // Records applied without their chunks are not held either.
        let unheld = acked
            .get(peer)
            .map_or(0, |a| a.unheld.values().map(|s| s.len() as u64).sum());
        let records: u64 = unheld
            + held
                .iter()
                .map(|(origin, &seq)| {
                    seq.saturating_sub(applied.and_then(|a| a.get(origin)).copied().unwrap_or(0))
                })
                .sum::<u64>();
        let since = if records == 0 {
            0
        } else {
            at.map_or(now_ms, |at| now_ms.saturating_sub(at))
        };
        (records, since)
    }
}

/// Records this node took from peers whose chunks it could not get yet
/// (the peer that sent them lacked them too, and no other could send them):
/// acknowledged as `unheld`, so that no writer counts this node toward its
/// quorum for a version it could not serve, until the chunks arrive
/// (pushed, fetched by the repair loop or on a read).
///
/// Noted in the database with the records themselves (table `unheld`) and
/// read back when the node starts ([`Unheld::load`]), so that a node that
/// restarts still acknowledges them as unheld; held here in memory for the
/// acknowledgements. Settled notes are dropped from the database as their
/// chunks are stored, and by collection.
#[derive(Debug)]
pub(crate) struct Unheld {
    /// Origin → seq → the chunks that record still needs.
    records: std::sync::Mutex<BTreeMap<String, Needs>>,
    /// Bumped when a chunk some record waited for is stored: the links
    /// acknowledge again.
    settled: tokio::sync::watch::Sender<u64>,
}

/// Per record (seq) of one origin, the chunks it still needs.
type Needs = BTreeMap<u64, Vec<[u8; 32]>>;

impl Default for Unheld {
    fn default() -> Self {
        Unheld {
            records: Default::default(),
            settled: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Unheld {
    /// Takes in the notes the database kept ([`crate::store::query::unheld`]).
    pub(crate) fn load(&self, notes: Vec<(String, u64, [u8; 32])>) {
        for (origin, seq, hash) in notes {
            self.note(&origin, seq, hash);
        }
    }

    /// Notes that record `seq` of `origin`, applied here, needs `hash`.
    fn note(&self, origin: &str, seq: u64, hash: [u8; 32]) {
        self.records
            .lock()
            .expect("unheld lock")
            .entry(origin.to_owned())
            .or_default()
            .entry(seq)
            .or_default()
            .push(hash);
    }

    /// A chunk is stored here now: if a record waited for it, the links
    /// acknowledge again.
    fn stored(&self, hash: &[u8; 32]) {
        let waited = self
            .records
            .lock()
            .expect("unheld lock")
            .values()
            .flat_map(|by_seq| by_seq.values())
            .any(|hashes| hashes.contains(hash));
        if waited {
            self.settled.send_modify(|n| *n += 1);
        }
    }

    /// Every chunk some record still waits for.
    fn noted(&self) -> Vec<[u8; 32]> {
        let records = self.records.lock().expect("unheld lock");
        let mut hashes: Vec<[u8; 32]> = records
            .values()
            .flat_map(|by_seq| by_seq.values().flatten().copied())
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        hashes
    }

    /// The acknowledgement of `applied`: the records still lacking chunks
    /// listed as unheld, at most [`MAX_UNHELD`] (an origin with more than
    /// that is acknowledged only up to its first record left out), after
    /// forgetting the chunks in `settled` — stored here since, or referred
    /// to by no version any more (a version removed or superseded since,
    /// whose chunks may never come).
    fn ack(&self, settled: &BTreeSet<[u8; 32]>, mut applied: BTreeMap<String, u64>) -> Ack {
        let mut records = self.records.lock().expect("unheld lock");
        let mut unheld: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut listed = 0;
        for (origin, by_seq) in records.iter_mut() {
            by_seq.retain(|_, hashes| {
                hashes.retain(|h| !settled.contains(h));
                !hashes.is_empty()
            });
            for &seq in by_seq.keys() {
                if listed == MAX_UNHELD {
                    if let Some(cursor) = applied.get_mut(origin) {
                        *cursor = (*cursor).min(seq - 1);
                    }
                    break;
                }
                unheld.entry(origin.clone()).or_default().push(seq);
                listed += 1;
            }
        }
        records.retain(|_, by_seq| !by_seq.is_empty());
        Ack { applied, unheld }
    }
}

/// A request sent to a peer over the link that follows it, and where its
/// answer goes.
enum Ask {
    /// Register an account whose name the peer owns.
    Register(Register, oneshot::Sender<Result<Registered, ErrorBody>>),
    /// Send a chunk this node lacks.
    Chunk(Sha256, oneshot::Sender<Result<Bytes, ErrorBody>>),
    /// Change the members and keys of a folder the peer is key node of.
    Keys(
        ForwardKeys,
        oneshot::Sender<Result<KeysForwarded, ErrorBody>>,
    ),
}

/// Where the answer to a request sent on a link goes.
enum Waiter {
    Register(oneshot::Sender<Result<Registered, ErrorBody>>),
    Chunk(oneshot::Sender<Result<Bytes, ErrorBody>>),
    Keys(oneshot::Sender<Result<KeysForwarded, ErrorBody>>),
}

impl Waiter {
    fn gone(&self) -> bool {
        match self {
            Waiter::Register(reply) => reply.is_closed(),
            Waiter::Chunk(reply) => reply.is_closed(),
            Waiter::Keys(reply) => reply.is_closed(),
        }
    }

    fn fail(self, e: ErrorBody) {
        match self {
            Waiter::Register(reply) => drop(reply.send(Err(e))),
            Waiter::Chunk(reply) => drop(reply.send(Err(e))),
            Waiter::Keys(reply) => drop(reply.send(Err(e))),
        }
    }
}

/// The links this node has up to its peers, for forwarding requests.
#[derive(Debug)]
pub(crate) struct Outbox {
    links: std::sync::Mutex<BTreeMap<String, mpsc::Sender<Ask>>>,
    /// Peers whose whole log this node has received since it started.
    caught_up: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Chunks of uploads as they arrive, for the links that serve followers
    /// to push ahead of the commit ([`Outbox::push_chunk`]), and chunks
    /// passed on along the chain ([`Outbox::pass_on`]).
    pushes: broadcast::Sender<Pushed>,
    /// The peers that follow this node now, each with its links (one, but
    /// a reconnecting follower's new link may start before its old one
    /// ends): those a pushed chunk may go to.
    served: std::sync::Mutex<BTreeMap<String, usize>>,
    /// Counts the chunks this node has stored from its peers, so that a
    /// follower waiting for chunks along the chain wakes as each comes.
    stored: tokio::sync::watch::Sender<u64>,
}

/// A chunk for the followers: its address and bytes, and the node that
/// took it in an upload when that is not this one.
#[derive(Clone)]
struct Pushed {
    origin: Option<String>,
    hash: Sha256,
    bytes: Bytes,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            links: Default::default(),
            caught_up: Default::default(),
            pushes: broadcast::channel(PUSH_QUEUE).0,
            served: Default::default(),
            stored: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl std::fmt::Debug for Ask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never the login secret.
            Ask::Register(register, _) => f
                .debug_struct("Register")
                .field("username", &register.username)
                .finish_non_exhaustive(),
            Ask::Chunk(hash, _) => f.debug_tuple("Chunk").field(hash).finish(),
            Ask::Keys(keys, _) => f
                .debug_struct("Keys")
                .field("username", &keys.username)
                .field("folder_id", &keys.change.folder_id())
                .finish_non_exhaustive(),
        }
    }
}

impl Outbox {
    fn link(&self, peer: &str) -> Option<mpsc::Sender<Ask>> {
        self.links.lock().expect("outbox lock").get(peer).cloned()
    }

    pub(crate) fn linked(&self) -> Vec<String> {
        self.links
            .lock()
            .expect("outbox lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Whether this node has received `peer`'s whole log since it started.
    pub(crate) fn caught_up_with(&self, peer: &str) -> bool {
        self.caught_up.lock().expect("outbox lock").contains(peer)
    }

    /// How many peers this node has caught up with since it started.
    pub(crate) fn caught_up(&self) -> usize {
        self.caught_up.lock().expect("outbox lock").len()
    }

    /// Offers a chunk an upload just stored here to the followers, so that
    /// by the commit they hold it already and acknowledge at once, instead
    /// of fetching the whole file then. It goes to one of them, which
    /// passes it on to the next ([`Membership::next_along`]): no node sends
    /// it twice. A
    /// follower too slow to take it misses it (the queue is short) and
    /// fetches it after the commit as before.
    pub(crate) fn push_chunk(&self, hash: Sha256, bytes: Bytes) {
        // No follower listening: nothing to do.
        let _ = self.pushes.send(Pushed {
            origin: None,
            hash,
            bytes,
        });
    }

    /// Passes on along the chain a chunk pushed here that `origin` took in
    /// an upload.
    fn pass_on(&self, origin: String, hash: Sha256, bytes: Bytes) {
        let _ = self.pushes.send(Pushed {
            origin: Some(origin),
            hash,
            bytes,
        });
    }

    /// Whether a link serving `peer` sends it `pushed`: whether `peer` is
    /// the next node along the chain from this one
    /// ([`Membership::next_along`]).
    fn sends(&self, membership: &Membership, peer: &str, pushed: &Pushed) -> bool {
        let origin = pushed.origin.as_deref().unwrap_or(membership.me());
        let served = self.served.lock().expect("outbox lock");
        membership.next_along(origin, |id| served.contains_key(id)) == Some(peer)
    }

    fn mark_caught_up(&self, peer: &str) -> bool {
        self.caught_up
            .lock()
            .expect("outbox lock")
            .insert(peer.to_owned())
    }
}

/// Counts a link serving a follower while it lasts.
struct Serving(Arc<Server>, String);

impl Serving {
    fn new(server: &Arc<Server>, peer: &str) -> Serving {
        *server
            .outbox
            .served
            .lock()
            .expect("outbox lock")
            .entry(peer.to_owned())
            .or_insert(0) += 1;
        Serving(server.clone(), peer.to_owned())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let mut served = self.0.outbox.served.lock().expect("outbox lock");
        if let Some(links) = served.get_mut(&self.1) {
            *links -= 1;
            if *links == 0 {
                served.remove(&self.1);
            }
        }
    }
}

/// Removes a link from the outbox when the link ends.
struct LinkUp(Arc<Server>, String);

impl Drop for LinkUp {
    fn drop(&mut self) {
        self.0
            .outbox
            .links
            .lock()
            .expect("outbox lock")
            .remove(&self.1);
    }
}

fn unavailable(message: String) -> crate::error::Error {
    crate::error::Error::refused(ErrorCode::Unavailable, message)
}

/// Has `owner`, the node that registers this name, register it: over this
/// node's link to it. `unavailable` when that link is down or the owner does
/// not answer in time; otherwise the owner's own answer.
pub(crate) async fn forward_register(
    server: &Server,
    owner: &str,
    register: Register,
) -> crate::error::Result<Registered> {
    forward(server, owner, "registers this name", |reply| {
        Ask::Register(register, reply)
    })
    .await
}

/// Has `node`, the key node of the folder, make a change of its members and
/// keys: over this node's link to it. `unavailable` when that link is down or
/// the key node does not answer in time; otherwise its own answer.
pub(crate) async fn forward_keys(
    server: &Server,
    node: &str,
    keys: ForwardKeys,
) -> crate::error::Result<KeysForwarded> {
    forward(
        server,
        node,
        "changes this folder's members and keys",
        |reply| Ask::Keys(keys, reply),
    )
    .await
}

/// Sends the request `ask` makes to `node` over this node's link to it, and
/// waits at most [`FORWARD_TIMEOUT`] for its answer. `unavailable`, saying
/// that `node` is the one that `does` this, when the link is down or the
/// answer does not come; otherwise `node`'s own answer.
async fn forward<T>(
    server: &Server,
    node: &str,
    does: &str,
    ask: impl FnOnce(oneshot::Sender<Result<T, ErrorBody>>) -> Ask,
) -> crate::error::Result<T> {
    let down = || unavailable(format!("{node}, the node that {does}, is not reachable"));
    let link = server.outbox.link(node).ok_or_else(down)?;
    let (reply, answer) = oneshot::channel();
    link.send(ask(reply)).await.map_err(|_| down())?;
    match tokio::time::timeout(FORWARD_TIMEOUT, answer).await {
        Ok(Ok(Ok(done))) => Ok(done),
        Ok(Ok(Err(body))) => Err(crate::error::Error::refused(body.code, body.message)),
        Ok(Err(_)) | Err(_) => Err(down()),
    }
}

/// Makes a key change a peer forwarded, once this node holds what the peer
/// held when it forwarded it (waiting at most [`FORWARD_TIMEOUT`]).
async fn keys_forwarded(server: &Server, keys: ForwardKeys) -> crate::error::Result<KeysForwarded> {
    let mut committed = server.store.committed();
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    loop {
        let held = server.store.cursors().await?;
        let behind = keys
            .cursors
            .iter()
            .any(|(origin, seq)| held.get(origin).copied().unwrap_or(0) < *seq);
        if !behind {
            break;
        }
        match tokio::time::timeout_at(deadline, committed.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(unavailable(format!(
                    "{} has not yet received what the forwarding node held",
                    server.config.node_id
                )));
            }
        }
    }
    crate::handlers::key_change_here(server, keys.username, keys.change).await
}

/// A chunk this node lacks (a version written on a peer refers to it), from
/// the first linked peer that has it: checked against its content address,
/// stored durably, and recorded so that collection knows it. `None` when no
/// peer could send it.
pub(crate) async fn fetch_chunk(server: &Server, hash: Sha256) -> Option<Vec<u8>> {
    fetch_chunk_except(server, hash, None).await
}

/// [`fetch_chunk`] from any linked peer but `except`.
async fn fetch_chunk_except(
    server: &Server,
    hash: Sha256,
    except: Option<&str>,
) -> Option<Vec<u8>> {
    // Every peer at once, the first sound answer kept: a link that went
    // silent (its peer cut off, not yet known dead) must not hold the
    // others' answers back for its whole timeout.
    let mut asked = JoinSet::new();
    for peer in server.outbox.linked() {
        if except == Some(peer.as_str()) {
            continue;
        }
        let Some(link) = server.outbox.link(&peer) else {
            continue;
        };
        let (reply, answer) = oneshot::channel();
        // Bounded, queueing included: that link's loop may itself be
        // waiting on this one's.
        asked.spawn(async move {
            tokio::time::timeout(FORWARD_TIMEOUT, async move {
                link.send(Ask::Chunk(hash, reply)).await.ok()?;
                answer.await.ok()?.ok().map(|bytes| (peer, bytes))
            })
            .await
            .ok()
            .flatten()
        });
    }
    while let Some(answered) = asked.join_next().await {
        if let Ok(Some((peer, bytes))) = answered
            && keep_chunk(server, &peer, hash, bytes.clone(), false).await
        {
            return Some(bytes.to_vec());
        }
    }
    None
}

/// Stores a chunk `peer` sent, once checked against its content address,
/// durably, and records it for collection; one that came `ahead` of its
/// version (pushed, or fetched before its record is taken) is kept from
/// collection meanwhile. Whether it is now held.
async fn keep_chunk(server: &Server, peer: &str, hash: Sha256, bytes: Bytes, ahead: bool) -> bool {
    let size = bytes.len() as u64;
    let chunks = server.chunks.clone();
    // Hashed and written off the async threads, as an upload's chunks are.
    let kept = coffer_net::blocking(move || {
        if <sha2::Sha256 as sha2::Digest>::digest(&bytes)[..] != hash.0 {
            return Ok(false);
        }
        chunks.put(&hash.0, &bytes).map(|()| true)
    })
    .await;
    match kept {
        Ok(true) => {}
        Ok(false) => {
            warn!(%peer, %hash, "a peer sent a chunk that does not match its address");
            return false;
        }
        Err(e) => {
            warn!(%hash, error = %e, "a chunk from a peer could not be stored");
            return false;
        }
    }
    if let Err(e) = server
        .store
        .write(crate::store::Change::ChunkFetched {
            hash,
            size,
            hold_until: ahead.then(|| server.clock.now_ms() + PUSH_HOLD.as_millis() as u64),
        })
        .await
    {
        warn!(%hash, error = %e, "a chunk from a peer could not be recorded");
    }
    // Recorded: the records that waited for it are held now.
    server.unheld.stored(&hash.0);
    server.outbox.stored.send_modify(|n| *n += 1);
    true
}

/// How often a node looks for chunks its versions refer to that it lacks.
const REPAIR_EVERY: Duration = Duration::from_secs(2);
/// Most missing chunks one round of repair asks for.
const REPAIR_BATCH: usize = 64;

/// Until `shutdown`: fetches from peers the chunks this node's versions
/// refer to but it does not hold — those no peer could send when the version
/// arrived (the node that had them was down, or had not fetched them yet
/// itself). Without this such a chunk came only on a first read, and a node
/// could stay short of a file indefinitely, one loss away from losing it.
pub(crate) async fn repair(server: Arc<Server>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(REPAIR_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let missing = match server
            .store
            .read(|conn| crate::store::query::chunks_missing(conn, REPAIR_BATCH))
            .await
        {
            Ok(missing) => missing,
            Err(e) => {
                warn!(error = %e, "could not look for missing chunks");
                continue;
            }
        };
        // Several at once, as the follower fetches a batch's chunks.
        let (mut fetching, mut fetched) = (JoinSet::new(), 0);
        for hash in missing.iter().copied() {
            let server = server.clone();
            fetching.spawn(async move { fetch_chunk(&server, Sha256(hash)).await.is_some() });
            while fetching.len() >= FETCH_WINDOW {
                fetched += usize::from(matches!(fetching.join_next().await, Some(Ok(true))));
            }
        }
        while let Some(done) = fetching.join_next().await {
            fetched += usize::from(matches!(done, Ok(true)));
        }
        if !missing.is_empty() {
            debug!(
                missing = missing.len(),
                fetched, "fetched chunks this node lacked"
            );
        }
    }
}

/// Follows `peer`'s log until `shutdown`: connects, applies what it sends,
/// and reconnects with backoff whenever the link ends.
pub(crate) async fn follow<N: Net>(
    server: Arc<Server>,
    net: N,
    peer: String,
    addr: SocketAddr,
    shutdown: CancellationToken,
) {
    let mut wait = RETRY_FIRST;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = follow_once(&server, &net, &peer, addr, &mut wait) => outcome,
        };
        match outcome {
            Err(LinkError::Connect(e)) => debug!(%peer, error = %e, "peer unreachable"),
            Err(e) => info!(%peer, error = %e, "peer link ended"),
            Ok(()) => info!(%peer, "peer link ended"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

async fn follow_once<N: Net>(
    server: &Arc<Server>,
    net: &N,
    peer: &str,
    addr: SocketAddr,
    wait: &mut Duration,
) -> Result<(), LinkError> {
    let Some(connector) = &server.peer_tls else {
        return Err(LinkError::Refused(
            "this node has no peer certificate".into(),
        ));
    };
    let timeout = server.config.handshake_timeout;
    let stream = tokio::time::timeout(timeout, net.connect(addr))
        .await
        .map_err(|_| LinkError::Connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(LinkError::Connect)?;
    let name = rustls::pki_types::ServerName::try_from(peer.to_owned())
        .map_err(|e| LinkError::Refused(format!("node id {peer} is not a TLS name: {e}")))?;
    let tls = tls::connect(connector, name, stream, timeout).await?;
    // The CA signed it for this name; it must also be the peer certificate
    // of that node, not a server certificate that happens to carry the name.
    let named = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| coffer_certs::node_id_of(leaf));
    if named.as_deref() != Some(peer) {
        return Err(LinkError::Refused(format!(
            "the certificate at {addr} is not the peer certificate of {peer}"
        )));
    }
    let mut conn = Connection::new(tls, Limits::default(), timeouts(server));
    conn.send(&Frame::new(
        1,
        PeerMessage::PeerHello(PeerHello {
            protocol: PROTOCOL_VERSION,
            node_id: server.config.node_id.clone(),
            cursors: server.store.cursors().await?,
        }),
    ))
    .await?;
    match next(&mut conn).await?.msg {
        PeerMessage::PeerWelcome(welcome) if welcome.node_id == peer => {}
        PeerMessage::PeerWelcome(welcome) => {
            return Err(LinkError::Refused(format!(
                "expected node {peer}, reached {}",
                welcome.node_id
            )));
        }
        PeerMessage::PeerError(e) => return Err(LinkError::Refused(e.message)),
        other => return Err(LinkError::Unexpected(kind(&other))),
    }
    info!(%peer, "following the peer's log");
    // Requests for the peer go out on this link while it is up.
    let (outbox, mut forwards) = mpsc::channel::<Ask>(64);
    server
        .outbox
        .links
        .lock()
        .expect("outbox lock")
        .insert(peer.to_owned(), outbox);
    let _registered = LinkUp(server.clone(), peer.to_owned());
    let mut waiting: BTreeMap<u64, Waiter> = BTreeMap::new();
    let mut next_id = 2u64;
    // Frames that came while this loop waited for chunks, in order.
    let mut parked: std::collections::VecDeque<Frame<PeerMessage>> = Default::default();
    let mut settled = server.unheld.settled.subscribe();
    let mut storing = Storing::default();
    // The peer pings an idle link: silence for three pings means it is gone.
    // Kept here, not left to the reader's idle timeout, which starts afresh
    // each time a request going out wins the select below: a node that keeps
    // asking (its repair loop does) would wait on a dead link for good, never
    // catching up (seed 168 of the simulation).
    let mut heard = tokio::time::Instant::now();
    loop {
        let frame = if let Some(frame) = parked.pop_front() {
            frame
        } else {
            tokio::select! {
            frame = next(&mut conn) => {
                heard = tokio::time::Instant::now();
                frame?
            }
            () = tokio::time::sleep_until(heard + PING_EVERY * 3) => {
                return Err(LinkError::Refused("the peer stopped sending".into()));
            }
            // Chunks some records waited for came: they are held now.
            Ok(()) = settled.changed() => {
                acknowledge(server, &mut conn).await?;
                continue;
            }
            Some(ask) = forwards.recv() => {
                // Requests whose callers gave up are forgotten.
                waiting.retain(|_, waiter| !waiter.gone());
                let id = next_id;
                next_id += 1;
                let (msg, waiter) = match ask {
                    Ask::Register(register, reply) => {
                        (PeerMessage::Forward(register), Waiter::Register(reply))
                    }
                    Ask::Chunk(hash, reply) => {
                        (PeerMessage::ChunkFetch(ChunkFetch { hash, origin: None }), Waiter::Chunk(reply))
                    }
                    Ask::Keys(keys, reply) => (PeerMessage::ForwardKeys(keys), Waiter::Keys(reply)),
                };
                conn.send(&Frame::new(id, msg)).await?;
                waiting.insert(id, waiter);
                continue;
            }
            }
        };
        match frame.msg {
            PeerMessage::Forwarded(registered) => {
                if let Some(Waiter::Register(reply)) = waiting.remove(&frame.id) {
                    let _ = reply.send(Ok(registered));
                }
            }
            // Pushed unasked while an upload arrives there.
            PeerMessage::ChunkData(chunk) if frame.id == 0 => {
                storing.pushed(server, peer, chunk, frame.body).await?;
            }
            PeerMessage::ChunkData(_) => {
                if let Some(Waiter::Chunk(reply)) = waiting.remove(&frame.id) {
                    let _ = reply.send(Ok(frame.body));
                }
            }
            PeerMessage::KeysForwarded(done) => {
                if let Some(Waiter::Keys(reply)) = waiting.remove(&frame.id) {
                    let _ = reply.send(Ok(done));
                }
            }
            PeerMessage::PeerError(e) if frame.id != 0 => {
                if let Some(waiter) = waiting.remove(&frame.id) {
                    waiter.fail(e);
                }
            }
            PeerMessage::Records(Records { count, more }) => {
                let records = decode_records(&frame.body, count)?;
                // The chunks pushed before these records are on disk first,
                // so that those of their versions are not fetched again.
                storing.all().await?;
                // The chunks of the versions among them first, from the
                // peer, which holds them unless it took the version without
                // them itself. Taken before them, a version could reach
                // every node while its chunks, on the node that wrote it
                // alone, died with that node (seed 192 of the simulation).
                let applied = server.store.cursors().await?;
                let wanted = crate::store::replica::chunks_of(&records, &applied)
                    .into_iter()
                    .map(Sha256)
                    .collect();
                // Of records as they commit (not a backlog), the chunks not
                // here are most likely on their way along the chain, from
                // the node the peer pushed them to.
                let ahead = if more {
                    lacking(server, wanted).await
                } else {
                    along_the_chain(server, wanted).await
                };
                fetch_from_peer(
                    server,
                    &mut conn,
                    peer,
                    ahead.into(),
                    &mut next_id,
                    &mut parked,
                    &mut storing,
                )
                .await?;
                let done = server.store.replicate(records).await?;
                if let Some(stopped) = done.stopped {
                    // Nothing after it can be applied either: say so loudly,
                    // and back off rather than fetch the same batch in a loop.
                    warn!(%peer, %stopped, "replication from this peer is stuck");
                    return Err(LinkError::Apply(stopped.to_string()));
                }
                // Progress: the next failure starts its backoff afresh.
                *wait = RETRY_FIRST;
                // What the peer lacked itself is asked of the others before
                // the batch is acknowledged: an acknowledgement counts
                // toward the writer's quorum. A record whose chunks are
                // nowhere yet is acknowledged as unheld until they come.
                let lacking = done.chunks_needed.keys().copied().map(Sha256).collect();
                for hash in fetch_elsewhere(server, peer, lacking).await? {
                    for (origin, seq) in &done.chunks_needed[&hash.0] {
                        server.unheld.note(origin, *seq, hash.0);
                    }
                }
                debug!(%peer, applied = done.applied, skipped = done.duplicates, "records from a peer");
                if !more && server.outbox.mark_caught_up(peer) {
                    info!(%peer, "caught up with the peer's log");
                }
                acknowledge(server, &mut conn).await?;
            }
            PeerMessage::PeerPing => conn.send(&Frame::new(frame.id, pong(server))).await?,
            PeerMessage::PeerError(e) => return Err(LinkError::Refused(e.message)),
            other => return Err(LinkError::Unexpected(kind(&other))),
        }
    }
}

/// Of `chunks`, those this node does not hold: a look at the disk per
/// chunk, off the async threads.
async fn lacking(server: &Server, chunks: Vec<Sha256>) -> Vec<Sha256> {
    let store = server.chunks.clone();
    coffer_net::blocking(move || {
        chunks
            .into_iter()
            .filter(|hash| !store.has(&hash.0))
            .collect()
    })
    .await
}

/// Of `wanted`, the chunks this node lacks once those on their way along
/// the chain have come: waits while they come, at most [`CHAIN_IDLE`] for
/// the next and [`CHAIN_WAIT`] in all, so that the chunks are asked of the
/// writer only if they do not come (the node that was to pass them on is
/// gone or slow, or the writer pushed them to this node and it missed
/// them).
async fn along_the_chain(server: &Server, wanted: Vec<Sha256>) -> Vec<Sha256> {
    // Subscribed before the first look: a chunk stored meanwhile is seen
    // by the look or wakes the wait.
    let mut stored = server.outbox.stored.subscribe();
    let until = tokio::time::Instant::now() + CHAIN_WAIT;
    let mut ahead = wanted;
    loop {
        ahead = lacking(server, ahead).await;
        if ahead.is_empty() {
            return ahead;
        }
        let next = until.min(tokio::time::Instant::now() + CHAIN_IDLE);
        if !matches!(
            tokio::time::timeout_at(next, stored.changed()).await,
            Ok(Ok(()))
        ) {
            return ahead;
        }
    }
}

/// Tells the peer this link follows what this node holds now.
async fn acknowledge<S: Stream>(
    server: &Server,
    conn: &mut Connection<S>,
) -> Result<(), LinkError> {
    let applied = server.store.cursors().await?;
    // Of the chunks records wait for, those no longer missing; checked
    // after the note was read, so a chunk noted meanwhile stays noted.
    let noted = server.unheld.noted();
    let settled = if noted.is_empty() {
        BTreeSet::new()
    } else {
        server
            .store
            .read(move |conn| crate::store::query::settled(conn, noted))
            .await?
    };
    let ack = server.unheld.ack(&settled, applied);
    conn.send(&Frame::new(0, PeerMessage::Ack(ack))).await?;
    Ok(())
}

/// The answer to a peer's ping: this node, and whether it is ready.
fn pong(server: &Server) -> PeerMessage {
    PeerMessage::PeerPong(PeerPong {
        node_id: server.config.node_id.clone(),
        ready: server.ready(),
    })
}

/// Chunks a follower link is storing, and their bytes. Left to finish if
/// the link ends meanwhile: a chunk written but not yet recorded would be a
/// file that collection does not know of.
#[derive(Default)]
struct Storing {
    tasks: JoinSet<usize>,
    bytes: usize,
}

impl Storing {
    /// Stores a chunk `peer` sent ahead of its records alongside the others
    /// in flight, under the bound a client connection's chunks have: a
    /// follower storing them one at a time falls behind the writer, which
    /// stores an upload's chunks at once, and misses pushes it must then
    /// fetch again.
    async fn keep(
        &mut self,
        server: &Arc<Server>,
        peer: &str,
        hash: Sha256,
        bytes: Bytes,
    ) -> Result<(), LinkError> {
        while self.bytes >= crate::conn::CHUNK_BYTES_IN_FLIGHT {
            self.next().await?;
        }
        self.bytes += bytes.len();
        let (server, peer) = (server.clone(), peer.to_owned());
        self.tasks.spawn(async move {
            let len = bytes.len();
            keep_chunk(&server, &peer, hash, bytes, true).await;
            len
        });
        Ok(())
    }

    /// A chunk `peer` pushed unasked: passed on along the chain as it
    /// comes, then stored alongside the others, as the writer stores an
    /// upload's. It was taken in an upload by the `origin` it names, or by
    /// `peer` when it names none; passed on only when that is another
    /// member (a chunk must not come back round).
    async fn pushed(
        &mut self,
        server: &Arc<Server>,
        peer: &str,
        chunk: ChunkFetch,
        bytes: Bytes,
    ) -> Result<(), LinkError> {
        let origin = chunk.origin.unwrap_or_else(|| peer.to_owned());
        if origin != server.config.node_id && server.membership.contains(&origin) {
            server.outbox.pass_on(origin, chunk.hash, bytes.clone());
        }
        self.keep(server, peer, chunk.hash, bytes).await
    }

    async fn next(&mut self) -> Result<(), LinkError> {
        match self.tasks.join_next().await {
            Some(Ok(len)) => {
                self.bytes -= len;
                Ok(())
            }
            Some(Err(e)) => Err(LinkError::Apply(e.to_string())),
            None => Ok(()),
        }
    }

    /// Waits until every chunk in flight is stored (or found unsound).
    async fn all(&mut self) -> Result<(), LinkError> {
        while !self.tasks.is_empty() {
            self.next().await?;
        }
        Ok(())
    }
}

impl Drop for Storing {
    fn drop(&mut self) {
        self.tasks.detach_all();
    }
}

/// Fetches `needed` chunks from `peer`, the node this link follows, several
/// at once, each stored as it comes (kept from collection until its record
/// is taken); frames that arrive meanwhile are parked for the link's loop.
/// A chunk the peer says it lacks is left out: it took the version without
/// it, and [`fetch_elsewhere`] asks the other nodes once the record is
/// taken. A peer that stops answering ends the link, its records not taken:
/// they come again, with their chunks, on a link that works.
async fn fetch_from_peer<S: Stream>(
    server: &Arc<Server>,
    conn: &mut Connection<S>,
    peer: &str,
    needed: std::collections::VecDeque<Sha256>,
    next_id: &mut u64,
    parked: &mut std::collections::VecDeque<Frame<PeerMessage>>,
    storing: &mut Storing,
) -> Result<(), LinkError> {
    let mut queue = needed;
    let mut asked: BTreeMap<u64, Sha256> = BTreeMap::new();
    // When the peer last answered a request for a chunk.
    let mut progress = tokio::time::Instant::now();
    loop {
        while asked.len() < FETCH_WINDOW
            && let Some(hash) = queue.pop_front()
        {
            let id = *next_id;
            *next_id += 1;
            let ask = PeerMessage::ChunkFetch(ChunkFetch { hash, origin: None });
            conn.send(&Frame::new(id, ask)).await?;
            asked.insert(id, hash);
        }
        if asked.is_empty() {
            break;
        }
        // The peer's pings keep the link alive however long an answer
        // takes: without a deadline of its own, a request the peer never
        // answers (lost with a connection cut mid-stream, or held up) would
        // hold this link here for good, and a node catching up would never
        // be ready (seed 168 of the simulation).
        let Ok(frame) = tokio::time::timeout_at(progress + FORWARD_TIMEOUT, next(conn)).await
        else {
            warn!(%peer, unanswered = asked.len(), "the peer did not send chunks it was asked for in time");
            return Err(LinkError::Refused(
                "the peer did not send the chunks of its records in time".into(),
            ));
        };
        let frame = frame?;
        match frame.msg {
            PeerMessage::ChunkData(_) if asked.contains_key(&frame.id) => {
                progress = tokio::time::Instant::now();
                let hash = asked.remove(&frame.id).expect("asked");
                storing.keep(server, peer, hash, frame.body).await?;
            }
            // A chunk pushed meanwhile: nobody here waits for it.
            PeerMessage::ChunkData(chunk) if frame.id == 0 => {
                storing.pushed(server, peer, chunk, frame.body).await?;
            }
            PeerMessage::PeerError(e) if asked.contains_key(&frame.id) => {
                let hash = asked.remove(&frame.id).expect("asked");
                if e.code == ErrorCode::Unavailable {
                    // Busy, not lacking it: asked again, within the same
                    // deadline.
                    queue.push_back(hash);
                } else {
                    progress = tokio::time::Instant::now();
                }
            }
            PeerMessage::PeerPing => conn.send(&Frame::new(frame.id, pong(server))).await?,
            msg => parked.push_back(Frame { msg, ..frame }),
        }
    }
    storing.all().await
}

/// Fetches the chunks `lacking` (versions taken from `peer` refer to them,
/// but it did not have them) from the other peers: all at once and each of
/// every peer at once, so that a peer gone silent holds the link up for one
/// timeout at most. Those none has yet, left to the repair loop.
async fn fetch_elsewhere(
    server: &Arc<Server>,
    peer: &str,
    lacking: Vec<Sha256>,
) -> Result<Vec<Sha256>, LinkError> {
    let mut elsewhere = JoinSet::new();
    for hash in lacking {
        let (server, peer) = (server.clone(), peer.to_owned());
        elsewhere.spawn(async move {
            (
                hash,
                fetch_chunk_except(&server, hash, Some(&peer))
                    .await
                    .is_some(),
            )
        });
    }
    let mut nowhere = Vec::new();
    while let Some(done) = elsewhere.join_next().await {
        match done {
            Ok((hash, false)) => {
                warn!(%peer, %hash, "a chunk of a version taken here is nowhere to be had yet");
                nowhere.push(hash);
            }
            Ok((_, true)) => {}
            Err(e) => return Err(LinkError::Apply(e.to_string())),
        }
    }
    Ok(nowhere)
}

async fn next<S: Stream>(conn: &mut Connection<S>) -> Result<Frame<PeerMessage>, LinkError> {
    conn.recv::<PeerMessage>().await?.ok_or(LinkError::Closed)
}

fn kind(msg: &PeerMessage) -> &'static str {
    coffer_proto::Message::kind(msg)
}

/// Serves a peer that follows this node's log, on a connection whose client
/// certificate names node `node` (`None`: it has none that names a node).
pub(crate) async fn serve<S: Stream>(
    server: &Arc<Server>,
    mut conn: Connection<S>,
    node: Option<String>,
    shutdown: CancellationToken,
) {
    conn.set_timeouts(timeouts(server));
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        outcome = serve_inner(server, &mut conn, node) => outcome,
    };
    match outcome {
        Ok(()) => debug!("peer link closed"),
        Err(LinkError::Conn(e)) if e.is_disconnect() => debug!(error = %e, "peer link closed"),
        Err(e) => info!(error = %e, "peer link ended"),
    }
    let _ = conn.shutdown().await;
}

async fn refuse<S: Stream>(conn: &mut Connection<S>, why: String) -> LinkError {
    let _ = conn
        .send(&Frame::new(
            0,
            PeerMessage::PeerError(ErrorBody::new(ErrorCode::Forbidden, why.clone())),
        ))
        .await;
    LinkError::Refused(why)
}

async fn serve_inner<S: Stream>(
    server: &Arc<Server>,
    conn: &mut Connection<S>,
    node: Option<String>,
) -> Result<(), LinkError> {
    let frame = next(conn).await?;
    let PeerMessage::PeerHello(hello) = frame.msg else {
        return Err(refuse(conn, "a peer link opens with peer_hello".into()).await);
    };
    let me = &server.config.node_id;
    let peer = match node {
        Some(node) if node == hello.node_id && server.membership.contains(&node) && node != *me => {
            node
        }
        Some(node) if node != hello.node_id => {
            return Err(refuse(
                conn,
                format!("the certificate names {node}, not {}", hello.node_id),
            )
            .await);
        }
        _ => {
            return Err(refuse(conn, format!("{} is not a peer of {me}", hello.node_id)).await);
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(refuse(
            conn,
            format!("protocol {} is not {PROTOCOL_VERSION}", hello.protocol),
        )
        .await);
    }
    conn.send(&Frame::new(
        frame.id,
        PeerMessage::PeerWelcome(PeerWelcome {
            node_id: me.clone(),
            cursors: server.store.cursors().await?,
        }),
    ))
    .await?;
    info!(%peer, "a peer follows this node's log");
    let mut sent = hello.cursors;
    let mut position = server.store.log_start(sent.clone()).await?;
    let mut committed = server.store.committed();
    let mut pushes = server.outbox.pushes.subscribe();
    let _serving = Serving::new(server, &peer);
    // Requests of the peer being answered here (registrations it forwarded,
    // chunks it lacks): each ends as the frame to send back.
    let mut forwarded: JoinSet<(u64, PeerMessage, Bytes)> = JoinSet::new();
    // The first round sends the follower's backlog, marked `more`, and ends
    // with an empty batch that is not: from then on it is caught up.
    let mut backlog = true;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    loop {
        // Seen before reading, so that a commit landing meanwhile wakes the
        // next round instead of waiting for a ping.
        committed.borrow_and_update();
        // The chunks pushed so far go first. An upload's chunk is pushed
        // before it is acknowledged, so before the commit naming it: sent
        // ahead of the log, the follower holds a version's chunks when its
        // record comes, rather than fetching those still queued here.
        send_pushed(server, conn, &mut pushes, &peer).await?;
        // Everything the follower lacks, in the order it was applied here.
        loop {
            let batch = server.store.log_after(position, BATCH_RECORDS).await?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            let full = batch.len() == BATCH_RECORDS;
            position = last;
            let wanted: Vec<Record> = batch
                .into_iter()
                .map(|(_, record)| record)
                .filter(|r| r.seq > sent.get(&r.origin).copied().unwrap_or(0))
                .collect();
            for record in &wanted {
                sent.insert(record.origin.clone(), record.seq);
            }
            send_records(conn, wanted, backlog).await?;
            if !full {
                break;
            }
        }
        if backlog {
            send_batch(conn, Vec::new(), false).await?;
            backlog = false;
        }
        tokio::select! {
            changed = committed.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            pushed = pushes.recv() => match pushed {
                Ok(pushed) => push(server, conn, &peer, pushed).await?,
                Err(broadcast::error::RecvError::Lagged(missed)) => lagged(&peer, missed),
                Err(broadcast::error::RecvError::Closed) => {}
            },
            frame = conn.recv::<PeerMessage>() => {
                let frame = frame?.ok_or(LinkError::Closed)?;
                heard = tokio::time::Instant::now();
                match frame.msg {
                    PeerMessage::Forward(_) | PeerMessage::ChunkFetch(_) | PeerMessage::ForwardKeys(_)
                        if forwarded.len() >= MAX_FORWARDED =>
                    {
                        let body = ErrorBody::new(
                            ErrorCode::Unavailable,
                            "too many requests from this peer at once; try again",
                        );
                        conn.send(&Frame::new(frame.id, PeerMessage::PeerError(body))).await?;
                    }
                    PeerMessage::Forward(register) => {
                        let server = server.clone();
                        forwarded.spawn(async move {
                            let msg = match crate::handlers::register_owned(&server, register).await {
                                Ok(registered) => PeerMessage::Forwarded(registered),
                                Err(e) => PeerMessage::PeerError(e.to_body()),
                            };
                            (frame.id, msg, Bytes::new())
                        });
                    }
                    PeerMessage::ForwardKeys(keys) => {
                        let server = server.clone();
                        forwarded.spawn(async move {
                            let msg = match keys_forwarded(&server, keys).await {
                                Ok(done) => PeerMessage::KeysForwarded(done),
                                Err(e) => PeerMessage::PeerError(e.to_body()),
                            };
                            (frame.id, msg, Bytes::new())
                        });
                    }
                    PeerMessage::ChunkFetch(ChunkFetch { hash, .. }) => {
                        let chunks = server.chunks.clone();
                        forwarded.spawn(async move {
                            match coffer_net::blocking(move || chunks.get(&hash.0)).await {
                                Ok(bytes) => (
                                    frame.id,
                                    PeerMessage::ChunkData(ChunkFetch { hash, origin: None }),
                                    Bytes::from(bytes),
                                ),
                                Err(e) => {
                                    let body = ErrorBody::new(
                                        ErrorCode::NotFound,
                                        format!("no chunk {hash} here ({e:?})"),
                                    );
                                    (frame.id, PeerMessage::PeerError(body), Bytes::new())
                                }
                            }
                        });
                    }
                    PeerMessage::Ack(ack) => {
                        // What the follower holds need not be sent to it again,
                        // whoever it had it from.
                        for (origin, &seq) in &ack.applied {
                            let held = sent.entry(origin.clone()).or_insert(0);
                            *held = (*held).max(seq);
                        }
                        let now = server.clock.now_ms();
                        server.followers.record(&peer, ack, now);
                        let (records, ms) = server.followers.behind(&peer, &sent, now);
                        debug!(%peer, behind_records = records, behind_ms = ms, "the peer acknowledged records");
                    }
                    PeerMessage::PeerPong(_) => {}
                    other => return Err(LinkError::Unexpected(kind(&other))),
                }
            }
            Some(done) = forwarded.join_next(), if !forwarded.is_empty() => {
                let (id, msg, body) = done.map_err(|e| LinkError::Apply(e.to_string()))?;
                conn.send(&Frame::with_body(id, msg, body)).await?;
            }
            _ = ping.tick() => {
                if heard.elapsed() > PING_EVERY * 3 {
                    return Err(LinkError::Refused("the follower stopped answering".into()));
                }
                conn.send(&Frame::new(1, PeerMessage::PeerPing)).await?;
            }
        }
    }
}

/// Sends the follower `peer` a chunk pushed here, unasked, when it is the
/// next node along the chain.
async fn push<S: Stream>(
    server: &Server,
    conn: &mut Connection<S>,
    peer: &str,
    pushed: Pushed,
) -> Result<(), LinkError> {
    if !server.outbox.sends(&server.membership, peer, &pushed) {
        return Ok(());
    }
    let Pushed {
        origin,
        hash,
        bytes,
    } = pushed;
    let msg = PeerMessage::ChunkData(ChunkFetch { hash, origin });
    Ok(conn.send(&Frame::with_body(0, msg, bytes)).await?)
}

fn lagged(peer: &str, missed: u64) {
    debug!(%peer, missed, "the peer took too long for some pushed chunks");
}

/// Sends the follower every chunk pushed and not yet sent.
async fn send_pushed<S: Stream>(
    server: &Server,
    conn: &mut Connection<S>,
    pushes: &mut broadcast::Receiver<Pushed>,
    peer: &str,
) -> Result<(), LinkError> {
    loop {
        match pushes.try_recv() {
            Ok(pushed) => push(server, conn, peer, pushed).await?,
            Err(broadcast::error::TryRecvError::Lagged(missed)) => lagged(peer, missed),
            Err(_) => return Ok(()),
        }
    }
}

/// Sends `records` in batches of at most [`BATCH_BYTES`] of JSON (a record
/// larger than that travels alone) and at most the protocol's record limit.
async fn send_records<S: Stream>(
    conn: &mut Connection<S>,
    records: Vec<Record>,
    more: bool,
) -> Result<(), LinkError> {
    let mut batch: Vec<Record> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = serde_json::to_vec(&record.payload).map_or(0, |v| v.len()) + 64;
        if !batch.is_empty()
            && (bytes + size > BATCH_BYTES
                || batch.len() >= coffer_proto::limits::MAX_RECORDS_PER_BATCH as usize)
        {
            send_batch(conn, std::mem::take(&mut batch), true).await?;
            bytes = 0;
        }
        bytes += size;
        batch.push(record);
    }
    if !batch.is_empty() {
        send_batch(conn, batch, more).await?;
    }
    Ok(())
}

async fn send_batch<S: Stream>(
    conn: &mut Connection<S>,
    batch: Vec<Record>,
    more: bool,
) -> Result<(), LinkError> {
    let body: Bytes = encode_records(&batch);
    if body.len() > coffer_proto::limits::MAX_BODY as usize {
        warn!(
            bytes = body.len(),
            "a record is larger than a frame can carry; the link cannot pass it"
        );
        return Err(LinkError::Unexpected("record too large"));
    }
    conn.send(&Frame::with_body(
        0,
        PeerMessage::Records(Records {
            count: batch.len() as u32,
            more,
        }),
        body,
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(o, s)| (o.to_string(), *s)).collect()
    }

    #[test]
    fn a_record_whose_chunks_are_lacking_is_acknowledged_as_unheld_until_they_come() {
        let unheld = Unheld::default();
        let settled = unheld.settled.subscribe();
        unheld.note("a.1", 7, [7; 32]);
        let ack = unheld.ack(&BTreeSet::new(), applied(&[("a.1", 9), ("b.1", 3)]));
        assert_eq!(ack.applied, applied(&[("a.1", 9), ("b.1", 3)]));
        assert_eq!(ack.unheld, BTreeMap::from([("a.1".to_owned(), vec![7])]));

        // Counted by a writer waiting for its quorum: every record of a up
        // to 9 but 7, and b's.
        let followers = Followers::default();
        followers.record("n2", ack, 0);
        let holds = |origin: &str, seq| followers.acked.lock().unwrap()["n2"].holds(origin, seq);
        assert!(holds("a.1", 6) && holds("a.1", 8) && holds("b.1", 3));
        assert!(!holds("a.1", 7) && !holds("a.1", 10));
        assert_eq!(followers.behind("n2", &applied(&[("a.1", 9)]), 0).0, 1);

        // The chunk comes: the links are told, and it is held.
        unheld.stored(&[1; 32]);
        assert!(!settled.has_changed().unwrap());
        unheld.stored(&[7; 32]);
        assert!(settled.has_changed().unwrap());
        assert_eq!(unheld.noted(), vec![[7; 32]]);
        let ack = unheld.ack(&BTreeSet::from([[7; 32]]), applied(&[("a.1", 9)]));
        assert!(ack.unheld.is_empty());
        assert!(unheld.records.lock().unwrap().is_empty());
    }

    #[test]
    fn an_acknowledgement_lists_a_bounded_number_of_unheld_records() {
        let unheld = Unheld::default();
        for seq in 1..=MAX_UNHELD as u64 + 10 {
            unheld.note("a.1", seq * 2, [9; 32]);
        }
        let ack = unheld.ack(&BTreeSet::new(), applied(&[("a.1", 10_000)]));
        assert_eq!(ack.unheld["a.1"].len(), MAX_UNHELD);
        // Acknowledged only below the first record left out.
        assert_eq!(ack.applied["a.1"], (MAX_UNHELD as u64 + 1) * 2 - 1);
    }
}
