//! The data path: accept a client, pick a backend, connect, and copy bytes both
//! ways until either side is done. The bytes are TLS records the balancer
//! cannot read; it holds no key.
//!
//! A backend that refuses or does not answer the connect in time is counted as
//! a failure and the same client is tried on another backend, up to a bound —
//! the client never notices.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_net::{Listener, Net};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::select::{Candidate, Selector, State, Strategy};

/// Why a balancer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BalancerError {
    /// No backend was given.
    #[error("no backends: give at least one --backend")]
    NoBackends,
    /// A backend was given twice.
    #[error("backend {0} is listed twice")]
    Duplicate(SocketAddr),
}

/// Tunables of the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Longest wait for a backend to accept a connection.
    pub connect_timeout: Duration,
    /// Most backends tried for one client connection.
    pub max_attempts: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(3),
            max_attempts: 3,
        }
    }
}

#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    state: Mutex<State>,
    active: AtomicU32,
    total: AtomicU64,
    failures: AtomicU64,
}

/// A snapshot of one backend's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStats {
    /// Its address.
    pub addr: SocketAddr,
    /// Its state.
    pub state: State,
    /// Connections in progress.
    pub active: u32,
    /// Connections proxied to it since start.
    pub total: u64,
    /// Connects to it that failed.
    pub failures: u64,
}

/// The balancer: its backends, their counters, and the selector.
#[derive(Debug)]
pub struct Balancer {
    backends: Vec<Backend>,
    selector: Mutex<Selector>,
    options: Options,
}

/// Gives a backend's active slot back when the connection ends, however it ends.
struct ActiveGuard<'a>(&'a Backend);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// A balancer over `backends`, refusing an empty or duplicated list.
    pub fn new(
        backends: Vec<SocketAddr>,
        strategy: Strategy,
        options: Options,
    ) -> Result<Balancer, BalancerError> {
        if backends.is_empty() {
            return Err(BalancerError::NoBackends);
        }
        for (i, addr) in backends.iter().enumerate() {
            if backends[..i].contains(addr) {
                return Err(BalancerError::Duplicate(*addr));
            }
        }
        Ok(Balancer {
            backends: backends
                .into_iter()
                .map(|addr| Backend {
                    addr,
                    state: Mutex::new(State::Up),
                    active: AtomicU32::new(0),
                    total: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                })
                .collect(),
            selector: Mutex::new(Selector::new(strategy)),
            options,
        })
    }

    /// Counters of every backend, in configuration order.
    pub fn stats(&self) -> Vec<BackendStats> {
        self.backends
            .iter()
            .map(|b| BackendStats {
                addr: b.addr,
                state: *b.state.lock().expect("state lock"),
                active: b.active.load(Ordering::Relaxed),
                total: b.total.load(Ordering::Relaxed),
                failures: b.failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Picks a backend not yet tried and takes an active slot on it, in one
    /// step so that concurrent picks see each other (least-connections needs it).
    fn pick(&self, tried: &[bool]) -> Option<(&Backend, ActiveGuard<'_>)> {
        let mut selector = self.selector.lock().expect("selector lock");
        let candidates: Vec<Candidate> = self
            .backends
            .iter()
            .zip(tried)
            .map(|(b, &tried)| Candidate {
                state: *b.state.lock().expect("state lock"),
                active: b.active.load(Ordering::Relaxed),
                tried,
            })
            .collect();
        let backend = &self.backends[selector.pick(&candidates)?];
        backend.active.fetch_add(1, Ordering::Relaxed);
        Some((backend, ActiveGuard(backend)))
    }

    async fn proxy<N: Net>(&self, net: &N, mut client: N::Stream) {
        let mut tried = vec![false; self.backends.len()];
        for _ in 0..self.options.max_attempts {
            let Some((backend, _active)) = self.pick(&tried) else {
                break;
            };
            let index = self
                .backends
                .iter()
                .position(|b| std::ptr::eq(b, backend))
                .expect("picked from the list");
            let connect =
                tokio::time::timeout(self.options.connect_timeout, net.connect(backend.addr)).await;
            let mut upstream = match connect {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(e)) => {
                    backend.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(backend = %backend.addr, error = %e, "connect failed; trying another backend");
                    tried[index] = true;
                    continue;
                }
                Err(_) => {
                    backend.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(backend = %backend.addr, "connect timed out; trying another backend");
                    tried[index] = true;
                    continue;
                }
            };
            backend.total.fetch_add(1, Ordering::Relaxed);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((up, down)) => debug!(backend = %backend.addr, up, down, "connection done"),
                Err(e) => {
                    debug!(backend = %backend.addr, error = %e, "connection ended with an error")
                }
            }
            return;
        }
        warn!("no backend reachable; closing the client connection");
    }

    /// Accepts clients on `listener` until `shutdown`; then stops accepting and
    /// waits for established connections to finish (the caller bounds the wait).
    pub async fn run<N: Net>(
        self: Arc<Self>,
        net: N,
        mut listener: N::Listener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let tracker = TaskTracker::new();
        info!(local = %listener.local_addr()?, backends = self.backends.len(), "balancing");
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let balancer = self.clone();
            let net = net.clone();
            tracker.spawn(
                async move { balancer.proxy(&net, stream).await }
                    .instrument(info_span!("client", %peer)),
            );
        }
        tracker.close();
        tracker.wait().await;
        Ok(())
    }
}
