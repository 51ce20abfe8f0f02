//! What every scenario shares: its tally, files with known digests, a plain
//! HTTP client for the balancer's admin endpoint, and polling with deadlines
//! (readiness is always polled, never slept for).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What a scenario did; [`Tally::check`] counts each check and fails the
/// scenario with its message when it does not hold.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Operations performed (commands run, connections made).
    pub operations: usize,
    /// Faults injected.
    pub faults: usize,
    /// Checks that held.
    pub checks: usize,
}

/// A scenario's failure: what did not hold.
pub type Failure = String;

impl Tally {
    /// Counts a check; `Err(what())` when `ok` is false.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> Result<(), Failure> {
        if ok {
            self.checks += 1;
            Ok(())
        } else {
            Err(what())
        }
    }

    /// Counts `n` operations.
    pub fn ops(&mut self, n: usize) {
        self.operations += n;
    }
}

/// Turns any error into a scenario failure with context.
pub trait Context<T> {
    /// `Err(e)` becomes `Err("{what}: {e}")`.
    fn ctx(self, what: &str) -> Result<T, Failure>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// The hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `len` bytes that only `seed` produces (SHA-256 in counter mode), starting
/// with `seed` itself so a scan of the servers' disks can look for it.
pub fn content(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    out.extend_from_slice(seed.as_bytes());
    let mut counter = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(counter.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// Writes `content(seed, len)` to `path`; its hex SHA-256.
pub fn write_file(path: &Path, seed: &str, len: usize) -> Result<String, Failure> {
    let bytes = content(seed, len);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).ctx("creating a directory")?;
    }
    std::fs::write(path, &bytes).ctx("writing a file")?;
    Ok(sha256_hex(&bytes))
}

/// The hex SHA-256 of the file at `path`.
pub fn file_sha(path: &Path) -> Result<String, Failure> {
    Ok(sha256_hex(&std::fs::read(path).ctx("reading a file")?))
}

/// Calls `probe` every `every` until it gives `Some`, or fails after
/// `deadline` with the last state `what` describes.
pub async fn poll<T, F, Fut>(
    deadline: Duration,
    every: Duration,
    what: &str,
    mut probe: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, Failure>>,
{
    let start = tokio::time::Instant::now();
    loop {
        let last = match probe().await {
            Ok(Some(t)) => return Ok(t),
            Ok(None) => "not yet".to_owned(),
            Err(e) => e,
        };
        if start.elapsed() > deadline {
            return Err(format!("{what}: still not after {deadline:?} ({last})"));
        }
        tokio::time::sleep(every).await;
    }
}

/// One request to the balancer's admin endpoint: `(status, body)`.
pub async fn admin(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String), Failure> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("admin {method} {path}: no answer in 10 s"))?
        .ctx("admin endpoint")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("admin {method} {path}: no status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// `GET /backends`, parsed.
pub async fn backends(admin_addr: SocketAddr) -> Result<Vec<serde_json::Value>, Failure> {
    let (status, body) = admin(admin_addr, "GET", "/backends").await?;
    if status != 200 {
        return Err(format!("GET /backends answered {status}: {body}"));
    }
    serde_json::from_str(&body).ctx("GET /backends body")
}

/// The entry of backend `addr` in `GET /backends`.
pub async fn backend(
    admin_addr: SocketAddr,
    addr: SocketAddr,
) -> Result<serde_json::Value, Failure> {
    backends(admin_addr)
        .await?
        .into_iter()
        .find(|b| b["addr"] == addr.to_string())
        .ok_or_else(|| format!("{addr} is not in /backends"))
}

/// The balancer's view of backend `addr`: `(state, active connections)`.
pub async fn backend_state(
    admin_addr: SocketAddr,
    addr: SocketAddr,
) -> Result<(String, u64), Failure> {
    let entry = backend(admin_addr, addr).await?;
    Ok((
        entry["state"].as_str().unwrap_or("?").to_owned(),
        entry["active"].as_u64().unwrap_or(0),
    ))
}

/// Every regular file under `root` (iteratively, no recursion) as its path
/// relative to `root` and its full path; what `skip` says is left out, with
/// everything under it. A directory that cannot be read is an error.
pub fn files(
    root: &Path,
    skip: impl Fn(&str) -> bool,
) -> Result<Vec<(String, std::path::PathBuf)>, Failure> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ctx("listing a directory")? {
            let entry = entry.ctx("listing a directory")?;
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if skip(&rel) {
                continue;
            }
            let kind = entry.file_type().ctx("file type")?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.push((rel, path));
            }
        }
    }
    Ok(out)
}

/// Every regular file under `root` as relative path → hex SHA-256, skipping
/// what `skip` says.
pub fn tree(
    root: &Path,
    skip: impl Fn(&str) -> bool,
) -> Result<std::collections::BTreeMap<String, String>, Failure> {
    files(root, skip)?
        .into_iter()
        .map(|(rel, path)| {
            // A file may vanish between listing and reading (the daemon
            // renames into place); such a tree is simply not settled yet.
            let bytes = std::fs::read(&path).map_err(|e| format!("{rel}: {e}"))?;
            Ok((rel, sha256_hex(&bytes)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_seeded_and_sized() {
        assert_eq!(content("a", 0).len(), 0);
        assert_eq!(content("seed", 3), b"see");
        assert_eq!(content("x", 100_000), content("x", 100_000));
        assert_ne!(content("x", 1000), content("y", 1000));
    }

    #[tokio::test]
    async fn poll_gives_up_with_the_last_state() {
        let r: Result<(), _> = poll(
            Duration::from_millis(50),
            Duration::from_millis(10),
            "never",
            || async { Err("still broken".to_owned()) },
        )
        .await;
        let e = r.unwrap_err();
        assert!(e.contains("never") && e.contains("still broken"), "{e}");
    }
}
