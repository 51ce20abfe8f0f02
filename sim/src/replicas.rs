//! What each server holds once the run is over: the digest of its
//! replicated state (`Server::replica_digest`), and the chunks its versions
//! reference against the chunk files it has. The comparison itself is
//! [`oracle::replicas`].

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_proto::types::{Causality, VersionVector};

use crate::oracle::{self, Holdings};
use crate::workload::{Done, Ledger};
use crate::world::Nodes;

/// How often, and how many times, the nodes are compared before their
/// difference is a violation: after the heal a peer link may first wait out
/// its reconnection backoff (up to 5 s), then the records and chunks it
/// missed take a few round trips.
const POLL: Duration = Duration::from_millis(200);
const POLLS: u32 = 100;

/// The servers of a run and their data directories.
pub(crate) struct Replicas {
    pub(crate) nodes: Nodes,
    pub(crate) data: Vec<PathBuf>,
}

impl Replicas {
    /// After the heal, once no device writes any more: every node comes to
    /// hold the same replicated state and every chunk its versions reference
    /// (polled, at most [`POLLS`] times). What still differs at the bound is
    /// a violation.
    pub(crate) async fn converged(&self, ledger: &RefCell<Ledger>) -> Done {
        let mut differences = Vec::new();
        for poll in 0..POLLS {
            let holdings = self.holdings().await;
            differences = oracle::replicas(&holdings);
            if differences.is_empty() {
                let chunks = holdings.first().map_or(0, |h| h.referenced.len());
                return Ok(format!(
                    "{} nodes converged ({chunks} chunks each) after {poll} polls",
                    holdings.len()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        let n = differences.len();
        ledger.borrow_mut().violations.extend(differences);
        Ok(format!("{n} differences between the nodes"))
    }

    async fn holdings(&self) -> Vec<Holdings> {
        let mut all = Vec::with_capacity(self.data.len());
        for (i, data) in self.data.iter().enumerate() {
            let node = format!("server-{}", i + 1);
            let server = self.nodes.borrow()[i].upgrade();
            let digest = match server {
                Some(server) => server
                    .replica_digest()
                    .await
                    .map_err(|e| format!("its digest failed: {e}")),
                None => Err("it is not running".to_owned()),
            };
            let (referenced, held) = match (referenced(data), held(data).map_err(Into::into)) {
                (Ok(r), Ok(h)) => (r, h),
                (Err(e), _) | (_, Err(e)) => {
                    all.push(Holdings {
                        node,
                        digest: Err(format!("its data directory is unreadable: {e}")),
                        referenced: BTreeSet::new(),
                        held: BTreeSet::new(),
                    });
                    continue;
                }
            };
            all.push(Holdings {
                node,
                digest,
                referenced,
                held,
            });
        }
        all
    }
}

/// The chunks the versions a node keeps reference (each version's chunk
/// list, 32 bytes per chunk), read from its database.
fn referenced(data: &Path) -> Result<BTreeSet<[u8; 32]>, Box<dyn std::error::Error>> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("coffer.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    db.busy_timeout(Duration::from_secs(10))?;
    let mut statement = db.prepare("SELECT chunks FROM versions")?;
    let mut rows = statement.query([])?;
    let mut set = BTreeSet::new();
    while let Some(row) = rows.next()? {
        let chunks: Vec<u8> = row.get(0)?;
        set.extend(
            chunks
                .chunks_exact(32)
                .map(|c| <[u8; 32]>::try_from(c).expect("32 bytes")),
        );
    }
    Ok(set)
}

impl Replicas {
    /// Whether the write of `path` acknowledged with the vector `acked` is
    /// seen, on server `node`, through its twin: the same upload committed
    /// through another node as well (retried there after `unavailable`), a
    /// version under another vector that every node keeps in its stead
    /// (`change::merge_version`). A version the node holds at `path` that
    /// has seen the twin has seen the write; without this, once the twin is
    /// superseded and pruned from the history, nothing the node holds has
    /// the acknowledged vector in its past (simulation seed 4101 of the
    /// files world). The node notes, as it merges the two, the vector it
    /// dropped and the one it kept (table `twins`): every vector the upload
    /// was known under there.
    pub(crate) fn seen_through_twin(
        &self,
        node: usize,
        path: &str,
        acked: &VersionVector,
    ) -> Result<bool, Box<dyn std::error::Error>> {
        let db = rusqlite::Connection::open_with_flags(
            self.data[node].join("coffer.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        db.busy_timeout(Duration::from_secs(10))?;
        let noted: Vec<(String, VersionVector)> = db
            .prepare("SELECT upload_id, vv FROM twins UNION SELECT upload_id, kept FROM twins")?
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))?
            .filter_map(|row| {
                let (upload, vv) = row.ok()?;
                Some((upload, serde_json::from_str(&vv).ok()?))
            })
            .collect();
        let uploads: BTreeSet<&String> = noted
            .iter()
            .filter(|(_, vv)| vv == acked)
            .map(|(upload, _)| upload)
            .collect();
        let twins: Vec<&VersionVector> = noted
            .iter()
            .filter(|(upload, vv)| vv != acked && uploads.contains(upload))
            .map(|(_, vv)| vv)
            .collect();
        if twins.is_empty() {
            return Ok(false);
        }
        let held: Vec<VersionVector> = db
            .prepare("SELECT vv FROM versions WHERE path = ?1")?
            .query_map([path], |r| r.get::<_, String>(0))?
            .filter_map(|vv| serde_json::from_str(&vv.ok()?).ok())
            .collect();
        Ok(held.iter().any(|h| {
            twins
                .iter()
                .any(|t| matches!(t.compare(h), Causality::Before | Causality::Equal))
        }))
    }
}

/// The chunks a node's store holds: `chunks/ab/cdef…`, named by address.
fn held(data: &Path) -> std::io::Result<BTreeSet<[u8; 32]>> {
    let mut set = BTreeSet::new();
    for dir in std::fs::read_dir(data.join("chunks"))? {
        let dir = dir?;
        let prefix = dir.file_name().to_string_lossy().into_owned();
        if prefix == "tmp" || !dir.path().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(dir.path())? {
            let name = file?.file_name().to_string_lossy().into_owned();
            if let Some(address) = parse_hex(&format!("{prefix}{name}")) {
                set.insert(address);
            }
        }
    }
    Ok(set)
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
