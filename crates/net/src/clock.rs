//! Wall-clock time behind a trait, so that the simulation can fix it.
//!
//! Durations and timeouts use `tokio::time`, which turmoil already simulates;
//! only the *calendar* time — token expiry, timestamps, certificate validity —
//! goes through [`Clock`].

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;

/// A source of wall-clock time.
pub trait Clock: Debug + Send + Sync + 'static {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;

    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.now().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        // A clock set before 1970 is a misconfigured host; treat it as the epoch.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// A clock that shows the time it was last set to, for tests that decide
/// when things happen (token expiry, two writes in one millisecond).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `ms` milliseconds since the Unix epoch.
    pub fn at_ms(ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(ms))
    }

    /// Shows `ms` milliseconds since the Unix epoch from now on.
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// Moves the time shown on by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// Lets rustls read certificate validity against a [`Clock`] — the simulated
/// one in the simulation.
#[derive(Debug, Clone)]
pub struct TlsTime(pub SharedClock);

impl rustls::time_provider::TimeProvider for TlsTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(self.0.now()))
    }
}
