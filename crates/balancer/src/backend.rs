//! One backend: its address, health, admin state and counters.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::BackendSpec;
use crate::health::Health;
use crate::select::State;

/// A backend and everything the balancer tracks about it.
#[derive(Debug)]
pub struct Backend {
    /// Address and TLS name.
    pub spec: BackendSpec,
    pub(crate) health: Mutex<Health>,
    /// Drained by the admin: no new connections.
    pub(crate) draining: AtomicBool,
    /// Gone from the configuration: its checker stops, its connections finish.
    pub(crate) removed: AtomicBool,
    /// A checker task is running for it.
    pub(crate) checking: AtomicBool,
    /// Wakes its checker at once (a client's connect failed).
    pub(crate) recheck: Notify,
    /// Cancelled when it is marked down: connections to it close.
    pub(crate) down: Mutex<CancellationToken>,
    pub(crate) active: AtomicU32,
    pub(crate) total: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) checks_failed: AtomicU64,
    /// Duration of the last check, in microseconds.
    pub(crate) check_micros: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

/// A snapshot of one backend; `/backends` serves it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendStats {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The TLS name its checks verify, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether it takes new connections.
    pub state: State,
    /// Connections in progress.
    pub active: u32,
    /// Connections proxied to it since start.
    pub total: u64,
    /// Connects to it that failed (or went unanswered).
    pub failures: u64,
    /// Bytes from clients to it.
    pub bytes_in: u64,
    /// Bytes from it to clients.
    pub bytes_out: u64,
    /// Health checks it failed.
    pub checks_failed: u64,
    /// How long its last health check took, in microseconds.
    pub check_micros: u64,
    /// Why its last check failed, while it is failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Backend {
    pub(crate) fn new(spec: BackendSpec) -> Backend {
        Backend {
            spec,
            health: Mutex::new(Health::new()),
            draining: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            checking: AtomicBool::new(false),
            recheck: Notify::new(),
            down: Mutex::new(CancellationToken::new()),
            active: AtomicU32::new(0),
            total: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            check_micros: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Whether it takes new connections, and if not, why.
    pub fn state(&self) -> State {
        if self.draining.load(Ordering::Relaxed) || self.removed.load(Ordering::Relaxed) {
            State::Draining
        } else if self.health.lock().expect("health lock").is_up() {
            State::Up
        } else {
            State::Down
        }
    }

    /// What connections to it watch to close when it is marked down.
    pub(crate) fn down_token(&self) -> CancellationToken {
        self.down.lock().expect("down lock").clone()
    }

    /// Counts the result of a check (or a client's connect) that began at
    /// `began`; returns the new state if it flipped. Marking down cancels its
    /// connections' token.
    pub(crate) fn observe(&self, ok: bool, began: Instant, rise: u32, fall: u32) -> Option<bool> {
        let flipped = self
            .health
            .lock()
            .expect("health lock")
            .observe(ok, began, rise, fall);
        if flipped == Some(false) {
            let mut down = self.down.lock().expect("down lock");
            down.cancel();
            *down = CancellationToken::new();
        }
        flipped
    }

    /// Whether an attempt that began at `began` was overtaken by a pass.
    pub(crate) fn answered_since(&self, began: Instant) -> bool {
        self.health
            .lock()
            .expect("health lock")
            .answered_since(began)
    }

    /// Whether its checks should come at the fast interval.
    pub(crate) fn changing(&self) -> bool {
        self.health.lock().expect("health lock").changing()
    }

    /// A snapshot of it.
    pub fn stats(&self) -> BackendStats {
        BackendStats {
            addr: self.spec.addr,
            name: self.spec.name.clone(),
            state: self.state(),
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            checks_failed: self.checks_failed.load(Ordering::Relaxed),
            check_micros: self.check_micros.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("error lock").clone(),
        }
    }
}

/// Gives a backend's active slot back when the connection ends, however it ends.
pub(crate) struct ActiveGuard(pub(crate) std::sync::Arc<Backend>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
