//! Blocking work — SQLite, fsync, bcrypt — without stalling the runtime.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f` on the blocking pool when the runtime has worker threads to spare;
/// on a current-thread runtime (tests and the simulation) runs it in place.
/// The simulation thus never involves an OS thread, and stays deterministic.
pub async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match Handle::current().runtime_flavor() {
        RuntimeFlavor::MultiThread => match tokio::task::spawn_blocking(f).await {
            Ok(value) => value,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        _ => f(),
    }
}
