//! A small pool of signed-in connections to one server (or balancer).
//!
//! Commands take one connection and pipeline on it; transfers spread their
//! chunks over several. A connection that failed is replaced at next use, and
//! a request that may safely run twice is retried with backoff when its
//! connection is lost or the server is briefly unavailable.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use coffer_net::Net;
use coffer_proto::request::Auth;
use coffer_proto::types::Token;
use coffer_proto::{Frame, Message, Request, Response};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::sync::Mutex;

use crate::client::{Client, Endpoint};
use crate::error::ClientError;

/// Where [`Pool::link`] sends a request.
#[derive(Debug, PartialEq, Eq)]
enum Pick {
    /// On this open connection.
    Use(usize),
    /// On a new connection; on this one if none can be opened.
    Open { else_use: Option<usize> },
}

/// Given the requests in flight on each open connection, taken in turn from
/// `start`: the first idle one; else, with `size` open already, the least
/// busy (the first of those in turn); else a new connection.
fn pick(loads: &[usize], start: usize, size: usize) -> Pick {
    let n = loads.len();
    let quietest = (0..n).map(|k| (start + k) % n).min_by_key(|&i| loads[i]);
    match quietest {
        Some(i) if loads[i] == 0 || n >= size => Pick::Use(i),
        _ => Pick::Open { else_use: quietest },
    }
}

/// Attempts of a retryable request before its error is reported.
const ATTEMPTS: u32 = 5;
/// First pause between attempts (plus up to half again, at random); doubles
/// each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// A connection the server has said nothing on for this long is pinged
/// before it carries a request that must not run twice.
const QUIET: Duration = Duration::from_secs(1);

/// Whether a request may be sent again without changing its effect: reads,
/// the upload steps the server makes idempotent, the writes the client
/// named (an upload's begin, a delete, a move, a restore, a device
/// registered or a folder made with its id: done again, on any server, it
/// is the same write, answered with what it did), and the writes the server
/// knows again by what they carry (a device by its name and MAC, a folder,
/// an invitation or a rotation by its folder keys, wrapped at random; an
/// acceptance by the membership it made) or by
/// what they left (a leave, a decline or a device's removal, by the row
/// they deleted).
pub fn retryable(request: &Request) -> bool {
    match request {
        Request::UploadBegin(r) => r.upload_id.is_some(),
        Request::Delete(r) => r.write_id.is_some(),
        Request::Move(r) => r.write_id.is_some(),
        Request::Restore(r) => r.write_id.is_some(),
        other => matches!(
            other.kind(),
            "ping"
                | "auth"
                | "whoami"
                | "session_list"
                | "user_list"
                | "public_key_get"
                | "private_key_get"
                | "device_list"
                | "folder_list"
                | "folder_info"
                | "folder_keys"
                | "invite_list"
                | "list"
                | "stat"
                | "history"
                | "download"
                | "chunk_get"
                | "shared_list"
                | "shared_download"
                | "upload_resume"
                | "upload_chunk"
                | "upload_commit"
                | "device_register"
                | "folder_create"
                | "folder_share"
                | "folder_unshare"
                | "invite_accept"
                | "invite_decline"
                | "folder_leave"
                | "device_remove"
        ),
    }
}

/// Connections to one server, signed in with one token.
pub struct Pool<N: Net> {
    net: N,
    endpoint: Endpoint,
    token: std::sync::Mutex<Option<Token>>,
    links: Mutex<Vec<Arc<Client>>>,
    /// The cluster node every request goes to while set ([`Pool::set_home`]).
    home: std::sync::Mutex<Option<String>>,
    size: usize,
    next: AtomicUsize,
    /// Draws the backoff jitter.
    rng: std::sync::Mutex<ChaCha20Rng>,
}

impl<N: Net> std::fmt::Debug for Pool<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("server", &self.endpoint.addr)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<N: Net> Pool<N> {
    /// A pool of at most `size` connections.
    pub fn new(net: N, endpoint: Endpoint, size: usize) -> Self {
        Pool {
            net,
            endpoint,
            token: std::sync::Mutex::new(None),
            links: Mutex::new(Vec::new()),
            home: std::sync::Mutex::new(None),
            size: size.max(1),
            next: AtomicUsize::new(0),
            rng: std::sync::Mutex::new(crate::session::os_rng()),
        }
    }

    /// Draws the backoff jitter from `seed`: reproducible runs.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = std::sync::Mutex::new(ChaCha20Rng::seed_from_u64(seed));
        self
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Signs new connections in with `token` (existing ones keep their session).
    pub fn set_token(&self, token: Option<Token>) {
        *self.token.lock().expect("token lock") = token;
    }

    /// Sends every request to the cluster node `node` from now on (none:
    /// wherever the balancer sends each connection). The sync daemon sets
    /// it to the node its subscription is on: that node has applied every
    /// record whose event it sent, and another node may not have yet, so a
    /// read made there for an event could miss the change the event tells
    /// of. While the node is unreachable, requests answer `unavailable`.
    pub fn set_home(&self, node: Option<String>) {
        *self.home.lock().expect("home lock") = node;
    }

    /// The node set by [`Pool::set_home`].
    pub fn home(&self) -> Option<String> {
        self.home.lock().expect("home lock").clone()
    }

    async fn open(&self) -> Result<Arc<Client>, ClientError> {
        Ok(Arc::new(self.dedicated().await?))
    }

    /// A new connection, signed in like the pool's, that the pool does not
    /// hand out: for a subscription, whose events are its own.
    pub async fn dedicated(&self) -> Result<Client, ClientError> {
        let client = Client::connect(&self.net, &self.endpoint).await?;
        let token = self.token.lock().expect("token lock").clone();
        if let Some(token) = token {
            client.call(Request::Auth(Auth { token })).await?;
        }
        Ok(client)
    }

    /// Up to `n` live connections (at least one), opening as needed.
    pub async fn links(&self, n: usize) -> Result<Vec<Arc<Client>>, ClientError> {
        let want = n.clamp(1, self.size);
        let mut links = self.links.lock().await;
        links.retain(|l| !l.is_closed());
        while links.len() < want {
            match self.open().await {
                Ok(link) => links.push(link),
                Err(e) if links.is_empty() => return Err(e),
                // Some connections are enough to go on with.
                Err(_) => break,
            }
        }
        Ok(links.iter().take(want).cloned().collect())
    }

    /// A live connection: an idle one if there is one, else a new one while
    /// the pool has room, else the least busy (the first of those in turn).
    ///
    /// The server answers one connection's requests one after another, so
    /// requests issued together, as the sync daemon's are, only overlap on
    /// the server — and its writer only commits them together — when they
    /// go out on connections of their own.
    pub async fn link(&self) -> Result<Arc<Client>, ClientError> {
        let mut links = self.links.lock().await;
        links.retain(|l| !l.is_closed());
        let loads: Vec<usize> = links.iter().map(|l| l.in_flight()).collect();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        match pick(&loads, start, self.size) {
            Pick::Use(i) => Ok(links[i].clone()),
            Pick::Open { else_use } => match self.open().await {
                Ok(link) => {
                    links.push(link.clone());
                    Ok(link)
                }
                // Busy connections are still connections.
                Err(e) => else_use.map(|i| links[i].clone()).ok_or(e),
            },
        }
    }

    /// Drops every connection (after a sign-in, say).
    pub async fn reset(&self) {
        self.links.lock().await.clear();
    }

    /// A connection to the cluster node `node`: one open already, the least
    /// busy, or new ones until one lands there (a balancer spreads them over
    /// its servers), at most the pool's size of them. `unavailable` when none
    /// does: that node is gone, and what lived only there with it.
    pub async fn link_to(&self, node: &str) -> Result<Arc<Client>, ClientError> {
        let on_node = |links: &mut Vec<Arc<Client>>| {
            links.retain(|l| !l.is_closed());
            links
                .iter()
                .filter(|l| l.welcome().node_id == node)
                .min_by_key(|l| l.in_flight())
                .cloned()
        };
        let busy = {
            let mut links = self.links.lock().await;
            match on_node(&mut links) {
                // Idle, or no room for another: this one.
                Some(link) if link.in_flight() == 0 || links.len() >= self.size => {
                    return Ok(link);
                }
                busy => busy,
            }
        };
        if let Some(busy) = busy {
            // All busy with room left: one more, used if it lands there
            // (the server answers one connection's requests in turn), kept
            // for other requests if not.
            let Ok(link) = self.open().await else {
                return Ok(busy);
            };
            let mut links = self.links.lock().await;
            links.push(link.clone());
            // Others may have opened one meanwhile: the oldest go.
            while links.len() > self.size {
                links.remove(0);
            }
            return Ok(if link.welcome().node_id == node {
                link
            } else {
                busy
            });
        }
        for _ in 0..self.size {
            let link = self.open().await?;
            let mut links = self.links.lock().await;
            links.push(link);
            if let Some(link) = on_node(&mut links) {
                return Ok(link);
            }
            // The pool keeps at most its size; the oldest elsewhere go.
            while links.len() > self.size {
                links.remove(0);
            }
        }
        Err(ClientError::Server(coffer_proto::ErrorBody::new(
            coffer_proto::ErrorCode::Unavailable,
            format!("no connection reaches {node} now"),
        )))
    }

    /// Sends a request, retrying one that may safely run twice when the
    /// connection is lost or the server says it is briefly unavailable.
    pub async fn call(
        &self,
        request: Request,
        body: Bytes,
    ) -> Result<Frame<Response>, ClientError> {
        self.call_at(None, request, body).await
    }

    /// [`Pool::call`] on a connection to the cluster node `node`
    /// ([`Pool::link_to`]): an upload in progress lives on the node it
    /// began on.
    pub async fn call_at(
        &self,
        node: Option<&str>,
        request: Request,
        body: Bytes,
    ) -> Result<Frame<Response>, ClientError> {
        let home = self.home();
        let node = node.or(home.as_deref());
        let again = retryable(&request);
        let mut pause = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let link = match node {
                Some(node) => self.link_to(node).await,
                None => self.link().await,
            };
            // A request that cannot be retried goes out only on a connection
            // known to be alive. One that has been quiet may lead to a server
            // or balancer that died without a word (and has restarted since):
            // the first to learn it would be the request, which then could
            // not be sent again. A quiet connection is pinged first; if the
            // ping fails, the request was not sent and goes on another.
            // Connection pools check a borrowed connection the same way
            // (HikariCP, past half a second idle).
            if let Ok(link) = &link
                && !again
                && link.in_flight() == 0
                && link.quiet_for() >= QUIET
                && let Err(e) = link.ping().await
            {
                if attempt < ATTEMPTS && e.is_transient() {
                    attempt += 1;
                    continue;
                }
                return Err(e);
            }
            let result = match link {
                Ok(link) => link.call_with_body(request.clone(), body.clone()).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) if attempt < ATTEMPTS && e.is_transient() && (again || !e.was_sent()) => {
                    // Jittered, so that clients cut off together do not all
                    // come back together.
                    let jitter = self
                        .rng
                        .lock()
                        .expect("rng lock")
                        .random_range(0..=pause.as_millis() as u64 / 2);
                    tokio::time::sleep(pause + Duration::from_millis(jitter)).await;
                    pause *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Pick, pick};

    #[test]
    fn an_idle_connection_first_then_a_new_one_then_the_least_busy() {
        // Nothing open yet.
        assert_eq!(pick(&[], 0, 4), Pick::Open { else_use: None });
        // The first idle one in turn, however busy the others are.
        assert_eq!(pick(&[0, 3], 1, 4), Pick::Use(0));
        assert_eq!(pick(&[0, 0], 1, 4), Pick::Use(1));
        assert_eq!(pick(&[0, 0], 2, 4), Pick::Use(0));
        // All busy with room left: a new one, the least busy if that fails.
        assert_eq!(pick(&[2, 1], 0, 4), Pick::Open { else_use: Some(1) });
        // All busy and the pool full: the least busy, in turn among equals.
        assert_eq!(pick(&[2, 1, 1], 0, 3), Pick::Use(1));
        assert_eq!(pick(&[2, 1, 1], 2, 3), Pick::Use(2));
        assert_eq!(pick(&[5, 4, 6, 4], 3, 3), Pick::Use(3));
    }
}
