//! A signed-in user on one device: connections, the user's keys, and the
//! folder keys unwrapped so far.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use coffer_crypto::{FolderKey, UserKeys};
use coffer_net::Net;
use coffer_proto::request::FolderRef;
use coffer_proto::response::FolderInfo;
use coffer_proto::{Frame, Request, Response};
use rand::{RngExt as _, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::error::ClientError;
use crate::pool::Pool;

/// A signed-in user.
pub struct Session<N: Net> {
    pool: Pool<N>,
    username: String,
    keys: UserKeys,
    rng: Mutex<ChaCha20Rng>,
    folder_keys: Mutex<HashMap<(String, u64), FolderKey>>,
}

impl<N: Net> std::fmt::Debug for Session<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Randomness from the operating system.
pub(crate) fn os_rng() -> ChaCha20Rng {
    ChaCha20Rng::try_from_rng(&mut rand::rngs::SysRng)
        .expect("the operating system provides randomness")
}

impl<N: Net> Session<N> {
    /// A session over `pool` (already carrying the token) for `username` with `keys`.
    pub fn new(pool: Pool<N>, username: String, keys: UserKeys) -> Self {
        Session {
            pool,
            username,
            keys,
            rng: Mutex::new(os_rng()),
            folder_keys: Mutex::new(HashMap::new()),
        }
    }

    /// Draws every random choice (keys, IVs, ids) from `seed`: reproducible runs.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Mutex::new(ChaCha20Rng::seed_from_u64(seed));
        self
    }

    /// The user.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The user's keys.
    pub fn keys(&self) -> &UserKeys {
        &self.keys
    }

    /// The connections.
    pub fn pool(&self) -> &Pool<N> {
        &self.pool
    }

    /// The session's random generator.
    pub fn rng(&self) -> MutexGuard<'_, ChaCha20Rng> {
        self.rng.lock().expect("rng lock")
    }

    /// A new name for one write (an upload, a move, a delete, a restore, a
    /// folder made, a device registered),
    /// random: sent with every attempt at that write, it makes the server
    /// answer a write done already instead of doing it again, so the write
    /// may be retried through any server of the cluster.
    pub fn write_id(&self) -> String {
        coffer_proto::request::upload_id(self.rng().random())
    }

    /// Sends a request (retrying what may run twice) and returns the answer.
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        Ok(self.pool.call(request, Bytes::new()).await?.msg)
    }

    /// Like [`Session::call`], with a body, returning the whole frame.
    pub async fn call_with_body(
        &self,
        request: Request,
        body: Bytes,
    ) -> Result<Frame<Response>, ClientError> {
        self.pool.call(request, body).await
    }

    /// [`Session::call_with_body`] on a connection to the cluster node
    /// `node`, when given ([`Pool::call_at`]).
    pub async fn call_at(
        &self,
        node: Option<&str>,
        request: Request,
        body: Bytes,
    ) -> Result<Frame<Response>, ClientError> {
        self.pool.call_at(node, request, body).await
    }

    /// The node an upload begun now goes to: the pool's home node if it has
    /// one, else that of a connection the pool holds (every connection
    /// reaches the same one on a single server).
    pub async fn upload_node(&self) -> Result<String, ClientError> {
        if let Some(home) = self.pool.home() {
            return Ok(home);
        }
        Ok(self.pool.link().await?.welcome().node_id.clone())
    }

    /// The folders the user is an active member of.
    pub async fn folders(&self) -> Result<Vec<FolderInfo>, ClientError> {
        match self.call(Request::FolderList).await? {
            Response::Folders(f) => Ok(f.folders),
            other => Err(unexpected("folder_list", &other)),
        }
    }

    /// A folder by id or by label.
    pub async fn resolve(&self, folder: &str) -> Result<FolderInfo, ClientError> {
        let folders = self.folders().await?;
        if let Some(f) = folders.iter().find(|f| f.folder_id == folder) {
            return Ok(f.clone());
        }
        let mut labelled = folders.into_iter().filter(|f| f.label == folder);
        match (labelled.next(), labelled.next()) {
            (Some(f), None) => Ok(f),
            (Some(_), Some(_)) => Err(ClientError::Usage(format!(
                "several of your folders are labelled {folder:?}; name one by its id"
            ))),
            (None, _) => Err(ClientError::NotFound(format!(
                "you have no folder {folder:?}"
            ))),
        }
    }

    /// Every folder key the user holds for `folder_id`, by epoch, oldest first.
    pub async fn folder_keys(&self, folder_id: &str) -> Result<Vec<(u64, FolderKey)>, ClientError> {
        let answer = self
            .call(Request::FolderKeys(FolderRef {
                folder_id: folder_id.to_owned(),
            }))
            .await?;
        let Response::FolderKeys(keys) = answer else {
            return Err(unexpected("folder_keys", &answer));
        };
        let mut out = Vec::with_capacity(keys.keys.len());
        for key in keys.keys {
            let cached = self
                .folder_keys
                .lock()
                .expect("key cache lock")
                .get(&(folder_id.to_owned(), key.epoch))
                .cloned();
            let folder_key = match cached {
                Some(k) => k,
                None => {
                    let k = self
                        .keys
                        .unwrap_folder_key(&mut *self.rng(), key.wrapped_key.as_bytes())?;
                    self.folder_keys
                        .lock()
                        .expect("key cache lock")
                        .insert((folder_id.to_owned(), key.epoch), k.clone());
                    k
                }
            };
            out.push((key.epoch, folder_key));
        }
        Ok(out)
    }

    /// The folder key of one epoch.
    pub async fn folder_key(&self, folder_id: &str, epoch: u64) -> Result<FolderKey, ClientError> {
        if let Some(k) = self
            .folder_keys
            .lock()
            .expect("key cache lock")
            .get(&(folder_id.to_owned(), epoch))
        {
            return Ok(k.clone());
        }
        self.folder_keys(folder_id)
            .await?
            .into_iter()
            .find(|(e, _)| *e == epoch)
            .map(|(_, k)| k)
            .ok_or_else(|| {
                ClientError::NotFound(format!(
                    "you hold no key of epoch {epoch} for folder {folder_id}"
                ))
            })
    }
}

/// An answer of the wrong type: a server bug, or a server of another protocol.
pub(crate) fn unexpected(request: &str, answer: &Response) -> ClientError {
    ClientError::Protocol(format!(
        "`{}` in answer to {request}",
        coffer_proto::Message::kind(answer)
    ))
}
