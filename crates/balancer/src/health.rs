//! Health: whether a backend should get new connections.
//!
//! [`Health`] is the pure part — rise/fall counting over check results — and
//! [`check`] the active check, which speaks the protocol: TCP connect, TLS
//! handshake verified against the deployment CA, `hello`, `ping`; healthy
//! only if the server answers that it is ready (its store is open and it has
//! caught up with its peers). Without a CA a check can only open a TCP
//! connection, and says so in the balancer's log at start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coffer_net::conn::{ConnError, Connection, Timeouts};
use coffer_net::{Net, SharedClock, tls};
use coffer_proto::request::Hello;
use coffer_proto::{Frame, Limits, PROTOCOL_VERSION, Request, Response};
use rustls_pki_types::ServerName;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The rise/fall state of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    up: bool,
    /// Consecutive results that disagree with `up`.
    against: u32,
    /// Not yet confirmed by a first check.
    unconfirmed: bool,
    /// When the newest passing attempt began.
    passed: Option<Instant>,
}

impl Health {
    /// A backend before its first check: taken to be up (so that the first
    /// clients need not wait for a check), and checked at the fast interval
    /// until a check confirms or refutes it.
    pub fn new() -> Self {
        Health {
            up: true,
            against: 0,
            unconfirmed: true,
            passed: None,
        }
    }

    /// Whether it takes new connections.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Whether its state is in question, so that it is checked at the fast
    /// interval: a recent result disagreed, or none has come yet.
    pub fn changing(&self) -> bool {
        self.unconfirmed || self.against > 0
    }

    /// Whether an attempt that began at `began` has been overtaken: one that
    /// began no earlier has passed since. Its failure says nothing of the
    /// backend now (a client's connect that waited out a partition, answered
    /// after the partition healed and a check passed).
    pub fn answered_since(&self, began: Instant) -> bool {
        self.passed.is_some_and(|passed| passed >= began)
    }

    /// Counts the result of an attempt (a check, or a client's connect) that
    /// began at `began`; `Some(up)` when the state flips. Up flips to down
    /// after `fall` bad results in a row, down to up after `rise` good ones.
    /// Before its first good check a backend falls at the first bad one: a
    /// server that was never seen healthy gets no benefit of the doubt. A
    /// failure [overtaken](Health::answered_since) by a pass is not counted.
    pub fn observe(&mut self, ok: bool, began: Instant, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.passed = self.passed.max(Some(began));
        } else if self.answered_since(began) {
            return None;
        }
        if ok == self.up {
            self.against = 0;
            self.unconfirmed = false;
            return None;
        }
        self.against += 1;
        let needed = match (self.up, self.unconfirmed) {
            (true, true) => 1,
            (true, false) => fall,
            (false, _) => rise,
        };
        if self.against >= needed.max(1) {
            self.up = ok;
            self.against = 0;
            self.unconfirmed = false;
            Some(ok)
        } else {
            None
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

/// The wait before the next check: `base` varied by up to `jitter` of itself
/// either way; `unit` is a draw in [0, 1).
pub fn jittered(base: Duration, jitter: f64, unit: f64) -> Duration {
    base.mul_f64(1.0 + jitter * (2.0 * unit - 1.0))
}

/// How a health check verifies a backend's TLS.
#[derive(Clone)]
pub struct Verifier {
    /// A connector trusting the deployment CA.
    pub connector: TlsConnector,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// Verifies against the CA certificates in `roots`, with certificate
    /// validity judged by `clock` (simulated time in a simulation).
    pub fn new(
        roots: Arc<rustls::RootCertStore>,
        clock: SharedClock,
    ) -> Result<Verifier, tls::TlsConfigError> {
        let config = tls::client_config(roots, None, clock)?;
        Ok(Verifier {
            connector: TlsConnector::from(config),
        })
    }
}

/// Why a backend failed its check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The whole check took longer than allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The name to verify is not a TLS server name.
    #[error("{0:?} is not a TLS server name")]
    Name(String),
    /// The TLS handshake failed (a certificate the CA did not sign, or for
    /// another name, is one way).
    #[error("TLS: {0}")]
    Tls(tls::HandshakeError),
    /// The server answered, but not as a Coffer server does.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server answered that it does not serve requests now.
    #[error("not ready")]
    NotReady,
}

impl From<ConnError> for CheckError {
    fn from(e: ConnError) -> Self {
        CheckError::Protocol(e.to_string())
    }
}

/// Checks one backend within `timeout`: connect, then (with a verifier)
/// TLS, `hello` and `ping`, which must answer ready.
pub async fn check<N: Net>(
    net: &N,
    addr: SocketAddr,
    name: &str,
    verifier: Option<&Verifier>,
    timeout: Duration,
) -> Result<(), CheckError> {
    let steps = async {
        let tcp = net.connect(addr).await.map_err(CheckError::Connect)?;
        match verifier {
            Some(verifier) => speak(tcp, name, verifier, timeout).await,
            None => Ok(()),
        }
    };
    tokio::time::timeout(timeout, steps)
        .await
        .unwrap_or(Err(CheckError::Timeout(timeout)))
}

/// TLS, `hello`, `ping` over a connected stream.
async fn speak<S: coffer_net::Stream>(
    tcp: S,
    name: &str,
    verifier: &Verifier,
    timeout: Duration,
) -> Result<(), CheckError> {
    let server_name =
        ServerName::try_from(name.to_owned()).map_err(|_| CheckError::Name(name.to_owned()))?;
    let stream = tls::connect(&verifier.connector, server_name, tcp, timeout)
        .await
        .map_err(CheckError::Tls)?;
    let timeouts = Timeouts {
        idle: timeout,
        frame: timeout,
        write: timeout,
    };
    let mut conn = Connection::new(stream, Limits::default(), timeouts);
    let hello = Request::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        agent: concat!("coffer-balancer/", env!("CARGO_PKG_VERSION")).into(),
    });
    match ask(&mut conn, 1, hello).await? {
        Response::Welcome(_) => {}
        other => return Err(unexpected("hello", &other)),
    }
    match ask(&mut conn, 2, Request::Ping).await? {
        Response::Pong(pong) if pong.ready => {
            let _ = conn.shutdown().await;
            Ok(())
        }
        Response::Pong(_) => Err(CheckError::NotReady),
        other => Err(unexpected("ping", &other)),
    }
}

async fn ask<S>(conn: &mut Connection<S>, id: u64, request: Request) -> Result<Response, CheckError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    conn.send(&Frame::new(id, request)).await?;
    match conn.recv::<Response>().await? {
        Some(frame) if frame.id == id => Ok(frame.msg),
        Some(frame) => Err(CheckError::Protocol(format!(
            "answer to request {} when {id} was asked",
            frame.id
        ))),
        None => Err(CheckError::Protocol("closed without an answer".into())),
    }
}

fn unexpected(asked: &str, answer: &Response) -> CheckError {
    CheckError::Protocol(format!(
        "`{}` in answer to {asked}",
        coffer_proto::Message::kind(answer)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Attempts that each began later than the one before.
    fn now() -> Instant {
        use std::sync::atomic::{AtomicU64, Ordering};
        static TICKS: AtomicU64 = AtomicU64::new(0);
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(Instant::now);
        start + Duration::from_millis(TICKS.fetch_add(1, Ordering::Relaxed))
    }

    #[test]
    fn rise_and_fall_count_in_a_row() {
        let mut h = Health::new();
        assert!(h.is_up() && h.changing());
        assert_eq!(h.observe(true, now(), 2, 3), None);
        assert!(!h.changing());
        // Two bad, one good: the streak starts over.
        assert_eq!(h.observe(false, now(), 2, 3), None);
        assert!(h.changing());
        assert_eq!(h.observe(false, now(), 2, 3), None);
        assert_eq!(h.observe(true, now(), 2, 3), None);
        assert_eq!(h.observe(false, now(), 2, 3), None);
        assert_eq!(h.observe(false, now(), 2, 3), None);
        assert_eq!(h.observe(false, now(), 2, 3), Some(false));
        assert!(!h.is_up() && !h.changing());
        assert_eq!(h.observe(true, now(), 2, 3), None);
        assert_eq!(h.observe(true, now(), 2, 3), Some(true));
    }

    #[test]
    fn a_backend_never_seen_healthy_falls_at_once() {
        let mut h = Health::new();
        assert_eq!(h.observe(false, now(), 2, 3), Some(false));
        assert_eq!(h.observe(true, now(), 2, 3), None);
        assert_eq!(h.observe(true, now(), 2, 3), Some(true));
    }

    #[test]
    fn a_failure_overtaken_by_a_pass_is_not_counted() {
        let mut h = Health::new();
        let t0 = now();
        assert_eq!(h.observe(true, t0, 2, 2), None);
        // Two client connects begin, then a partition; a check that began
        // after them passes once it heals; then they time out.
        let (a, b) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        let check = t0 + Duration::from_secs(3);
        assert_eq!(h.observe(true, check, 2, 2), None);
        assert!(h.answered_since(a) && h.answered_since(b));
        assert_eq!(h.observe(false, a, 2, 2), None);
        assert_eq!(h.observe(false, b, 2, 2), None);
        assert!(h.is_up() && !h.changing(), "stale failures counted");
        // Failures of attempts that began after the pass do count.
        let later = check + Duration::from_secs(1);
        assert!(!h.answered_since(later));
        assert_eq!(h.observe(false, later, 2, 2), None);
        assert_eq!(h.observe(false, later, 2, 2), Some(false));
        // And a late pass of an old attempt counts toward rising, as any pass.
        assert_eq!(h.observe(true, a, 2, 2), None);
        assert_eq!(h.observe(true, later, 2, 2), Some(true));
    }

    proptest! {
        /// After any history, `fall` bad results take an up backend down and
        /// `rise` good ones bring a down one up — never fewer.
        #[test]
        fn thresholds_hold(history in proptest::collection::vec(any::<bool>(), 0..30), rise in 1u32..5, fall in 1u32..5) {
            let mut h = Health::new();
            for ok in history { h.observe(ok, now(), rise, fall); }
            // Settle on a confirmed state first.
            let was_up = h.is_up();
            h.observe(was_up, now(), rise, fall);
            let (target, n) = if was_up { (false, fall) } else { (true, rise) };
            for i in 1..n {
                prop_assert_eq!(h.observe(target, now(), rise, fall), None, "flipped after {}", i);
            }
            prop_assert_eq!(h.observe(target, now(), rise, fall), Some(target));
        }

        #[test]
        fn jitter_stays_within_its_fraction(ms in 1u64..100_000, jitter in 0.0f64..0.5, unit in 0.0f64..1.0) {
            let base = Duration::from_millis(ms);
            let d = jittered(base, jitter, unit);
            prop_assert!(d >= base.mul_f64(1.0 - jitter) && d <= base.mul_f64(1.0 + jitter));
        }
    }
}
