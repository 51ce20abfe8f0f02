//! The balancer: its backends, their health checkers, the accept loop, and
//! what the admin endpoint and SIGHUP change while it runs.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use coffer_net::{Listener, Net};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backend::{ActiveGuard, Backend, BackendStats};
use crate::config::{Config, ConfigError};
use crate::health::{self, Verifier};
use crate::proxy;
use crate::select::{Candidate, Draws, Selector};

/// Balancer-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Client connections being served.
    pub(crate) active: AtomicUsize,
    /// Client connections accepted since start.
    pub(crate) accepted: AtomicU64,
    /// Clients closed on arrival because `max_connections` were being served.
    pub(crate) rejected: AtomicU64,
    /// Clients closed for sending nothing in time, or for going idle.
    pub(crate) timed_out: AtomicU64,
    /// Clients for which no backend could be reached.
    pub(crate) unserved: AtomicU64,
}

/// Holds a client connection's place under `max_connections`.
pub(crate) struct ClientGuard(Arc<Balancer>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running (or ready to run) balancer.
pub struct Balancer {
    config: RwLock<Arc<Config>>,
    verifier: RwLock<Option<Verifier>>,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    selector: Mutex<Selector>,
    /// Backends were added: the supervisor starts their checkers.
    changed: Notify,
    seed: u64,
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("backends", &self.backends())
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// A balancer for `config`, which it validates. `verifier` checks the
    /// backends' TLS in health checks (without one they only connect).
    /// `seed` drives the random parts (health-check jitter, power of two
    /// choices), so a simulation replays them.
    pub fn new(
        config: Config,
        verifier: Option<Verifier>,
        seed: u64,
    ) -> Result<Balancer, ConfigError> {
        config.validate()?;
        let backends = config
            .backends
            .iter()
            .map(|spec| Arc::new(Backend::new(spec.clone())))
            .collect();
        Ok(Balancer {
            selector: Mutex::new(Selector::with_seed(config.strategy, seed)),
            config: RwLock::new(Arc::new(config)),
            verifier: RwLock::new(verifier),
            backends: RwLock::new(Arc::new(backends)),
            changed: Notify::new(),
            seed,
            counters: Counters::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    fn verifier(&self) -> Option<Verifier> {
        self.verifier.read().expect("verifier lock").clone()
    }

    /// The backends in force, in configuration order.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.read().expect("backends lock").clone()
    }

    /// A snapshot of every backend, in configuration order.
    pub fn stats(&self) -> Vec<BackendStats> {
        self.backends().iter().map(|b| b.stats()).collect()
    }

    /// Drains (`true`) or re-admits (`false`) the backend at `addr`; its
    /// snapshot, or `None` if there is no such backend.
    pub fn drain(&self, addr: SocketAddr, draining: bool) -> Option<BackendStats> {
        let backends = self.backends();
        let backend = backends.iter().find(|b| b.spec.addr == addr)?;
        backend.draining.store(draining, Ordering::Relaxed);
        info!(backend = %addr, draining, "admin");
        Some(backend.stats())
    }

    /// Applies a new configuration without dropping a connection: backends
    /// kept keep their state and counters, new ones are checked at once,
    /// removed ones take no new connections and let theirs finish. A
    /// configuration that does not validate changes nothing. The listen and
    /// admin addresses stay as they were bound.
    pub fn reload(&self, config: Config, verifier: Option<Verifier>) -> Result<(), ConfigError> {
        config.validate()?;
        {
            let mut current = self.backends.write().expect("backends lock");
            let next: Vec<Arc<Backend>> = config
                .backends
                .iter()
                .map(|spec| match current.iter().find(|b| b.spec == *spec) {
                    Some(kept) => kept.clone(),
                    None => Arc::new(Backend::new(spec.clone())),
                })
                .collect();
            for old in current.iter() {
                if !next.iter().any(|b| Arc::ptr_eq(b, old)) {
                    old.removed.store(true, Ordering::Relaxed);
                    old.recheck.notify_one();
                    info!(backend = %old.spec, "removed by reload; its connections finish");
                }
            }
            *current = Arc::new(next);
        }
        self.selector
            .lock()
            .expect("selector lock")
            .set_strategy(config.strategy);
        *self.verifier.write().expect("verifier lock") = verifier;
        *self.config.write().expect("config lock") = Arc::new(config);
        self.changed.notify_one();
        Ok(())
    }

    /// Picks a backend not in `tried` and takes an active slot on it, in one
    /// step so that concurrent picks see each other (least-connections needs it).
    pub(crate) fn pick(&self, tried: &[SocketAddr]) -> Option<(Arc<Backend>, ActiveGuard)> {
        let backends = self.backends();
        let mut selector = self.selector.lock().expect("selector lock");
        let candidates: Vec<Candidate> = backends
            .iter()
            .map(|b| Candidate {
                state: b.state(),
                active: b.active.load(Ordering::Relaxed),
                tried: tried.contains(&b.spec.addr),
            })
            .collect();
        let backend = backends[selector.pick(&candidates)?].clone();
        backend.active.fetch_add(1, Ordering::Relaxed);
        Some((backend.clone(), ActiveGuard(backend)))
    }

    /// Counts a failed connect by a client, begun at `began`: the backend is
    /// suspect, counted as one failed check and checked again at once; unless
    /// a check begun no earlier has passed since, which overtakes it.
    pub(crate) fn connect_failed(
        &self,
        backend: &Backend,
        began: tokio::time::Instant,
        why: &dyn std::fmt::Display,
    ) {
        backend.failures.fetch_add(1, Ordering::Relaxed);
        if backend.answered_since(began) {
            // It answered a check begun after this connect: a partition that
            // has healed, say. Another backend gets the client all the same.
            info!(backend = %backend.spec, error = %why, "connect failed, but the backend has passed a check since it began; trying another backend");
            return;
        }
        let health = self.config().health;
        warn!(backend = %backend.spec, error = %why, "connect failed; trying another backend");
        if let Some(up) = backend.observe(false, began, health.rise, health.fall) {
            log_flip(backend, up, why);
        }
        backend.recheck.notify_one();
    }

    /// Accepts clients on `listener` and checks the backends until
    /// `shutdown`; then stops accepting and waits for established connections
    /// to finish (the caller bounds the wait).
    pub async fn run<N: Net>(
        self: Arc<Self>,
        net: N,
        mut listener: N::Listener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let checks = CancellationToken::new();
        tokio::spawn(self.clone().supervise(net.clone(), checks.clone()));
        let _stop_checks = checks.drop_guard();
        let tracker = TaskTracker::new();
        info!(local = %listener.local_addr()?, backends = self.backends().len(), "balancing");
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.next_connection() => accepted,
            };
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            let max = self.config().max_connections;
            if self.counters.active.fetch_add(1, Ordering::Relaxed) >= max {
                self.counters.active.fetch_sub(1, Ordering::Relaxed);
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, max, "at max_connections; closing the new client");
                drop(stream);
                continue;
            }
            let guard = ClientGuard(self.clone());
            tracker.spawn(
                proxy::serve(self.clone(), net.clone(), stream, guard)
                    .instrument(info_span!("client", %peer)),
            );
        }
        // Stop accepting at once: new clients are refused, not left queued.
        drop(listener);
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    /// Keeps one checker running per backend in force.
    async fn supervise<N: Net>(self: Arc<Self>, net: N, stop: CancellationToken) {
        loop {
            for backend in self.backends().iter() {
                if !backend.removed.load(Ordering::Relaxed)
                    && !backend.checking.swap(true, Ordering::Relaxed)
                {
                    tokio::spawn(
                        self.clone()
                            .checker(net.clone(), backend.clone(), stop.clone()),
                    );
                }
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Checks one backend until it is removed or the balancer stops.
    async fn checker<N: Net>(
        self: Arc<Self>,
        net: N,
        backend: Arc<Backend>,
        stop: CancellationToken,
    ) {
        // However the task ends (even dropped with its runtime), the
        // supervisor of the next `run` may start another.
        let _checking = Checking(backend.clone());
        let mut draws = Draws::new(self.seed ^ hash_addr(backend.spec.addr));
        let name = backend.spec.tls_name();
        while !backend.removed.load(Ordering::Relaxed) {
            let health = self.config().health;
            let verifier = self.verifier();
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                r = health::check(&net, backend.spec.addr, &name, verifier.as_ref(), health.timeout) => r,
                _ = stop.cancelled() => break,
            };
            let micros = started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
            backend.check_micros.store(micros, Ordering::Relaxed);
            let flipped = match &result {
                Ok(()) => {
                    *backend.last_error.lock().expect("error lock") = None;
                    backend.observe(true, started, health.rise, health.fall)
                }
                Err(e) => {
                    backend.checks_failed.fetch_add(1, Ordering::Relaxed);
                    debug!(backend = %backend.spec, error = %e, "health check failed");
                    *backend.last_error.lock().expect("error lock") = Some(e.to_string());
                    backend.observe(false, started, health.rise, health.fall)
                }
            };
            if let Some(up) = flipped {
                let why: &dyn std::fmt::Display = match &result {
                    Ok(()) => &"checks pass",
                    Err(e) => e,
                };
                log_flip(&backend, up, why);
            }
            let base = if backend.changing() {
                health.fast_interval
            } else {
                health.interval
            };
            let wait = health::jittered(base, health.jitter, draws.unit());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = backend.recheck.notified() => {}
                _ = stop.cancelled() => break,
            }
        }
    }
}

/// Clears a backend's `checking` flag when its checker ends.
struct Checking(Arc<Backend>);

impl Drop for Checking {
    fn drop(&mut self) {
        self.0.checking.store(false, Ordering::Relaxed);
    }
}

fn log_flip(backend: &Backend, up: bool, why: &dyn std::fmt::Display) {
    if up {
        info!(backend = %backend.spec, "backend up: {why}");
    } else {
        warn!(backend = %backend.spec, "backend down: {why}");
    }
}

fn hash_addr(addr: SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    // A fixed hasher: the same address gives the same stream of draws.
    let mut h = std::hash::DefaultHasher::new();
    addr.hash(&mut h);
    h.finish()
}
