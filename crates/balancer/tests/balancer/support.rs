//! A balancer (in-process) in front of server processes, and small clients
//! for its listener and its admin endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coffer_balancer::{BackendSpec, Balancer, Config, HealthConfig, Strategy, Verifier, admin};
use coffer_client::{Client, ClientError, ClientTimeouts, Endpoint};
use coffer_conformance::{Servers, scenario};
use coffer_net::{Listener as _, Net as _, SystemClock, TokioNet, tls};
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Checks every 300 ms (100 ms while a backend changes state); a check may
/// take up to 2 s, so a loaded test machine does not fail healthy servers.
pub(crate) fn quick_health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(300),
        fast_interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        rise: 2,
        fall: 3,
        jitter: 0.1,
    }
}

/// A configuration for `backends` with quick health checks.
pub(crate) fn config(backends: &[SocketAddr], strategy: Strategy) -> Config {
    Config {
        backends: backends
            .iter()
            .map(|&addr| BackendSpec { addr, name: None })
            .collect(),
        strategy,
        connect_timeout: Duration::from_secs(1),
        answer_timeout: Duration::from_secs(1),
        health: quick_health(),
        ..Config::default()
    }
}

/// A running in-process balancer.
pub(crate) struct Rig {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) balancer: Arc<Balancer>,
    _stop: DropGuard,
}

/// Starts a balancer for `config`, its health checks verified against `ca`.
pub(crate) async fn rig(config: Config, ca: &Path) -> Rig {
    let verifier = Verifier::new(tls::load_roots(ca).unwrap(), Arc::new(SystemClock)).unwrap();
    let balancer = Arc::new(Balancer::new(config, Some(verifier), 7).unwrap());
    let listener = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let admin_listener = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (addr, admin) = (
        listener.local_addr().unwrap(),
        admin_listener.local_addr().unwrap(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(balancer.clone().run(TokioNet, listener, stop.clone()));
    tokio::spawn(admin::serve::<TokioNet>(
        balancer.clone(),
        admin_listener,
        stop.clone(),
    ));
    Rig {
        addr,
        admin,
        balancer,
        _stop: stop.drop_guard(),
    }
}

/// Starts `n` servers (blocking: the test's runtime has nothing else to do yet).
pub(crate) fn servers(n: usize) -> Servers {
    Servers::start(n).expect("servers start")
}

pub(crate) fn endpoint(addr: SocketAddr, ca: &Path, request: Duration) -> Endpoint {
    let timeouts = ClientTimeouts {
        connect: Duration::from_secs(5),
        handshake: Duration::from_secs(5),
        request,
        frame: request,
    };
    Endpoint::trusting(
        addr,
        ServerName::try_from("localhost").unwrap(),
        ca,
        timeouts,
    )
    .unwrap()
}

/// A client connected through `addr` (TLS verified end to end) that pinged.
pub(crate) async fn connect(addr: SocketAddr, ca: &Path) -> Result<Client, ClientError> {
    let client = Client::connect(&TokioNet, &endpoint(addr, ca, Duration::from_secs(5))).await?;
    client.ping().await?;
    Ok(client)
}

/// `n` connections one after the other: how many landed on each node.
pub(crate) async fn spread(addr: SocketAddr, ca: &Path, n: usize) -> BTreeMap<String, usize> {
    let mut landed = BTreeMap::new();
    for i in 0..n {
        let client = connect(addr, ca)
            .await
            .unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
        *landed.entry(client.welcome().node_id.clone()).or_insert(0) += 1;
    }
    landed
}

/// One HTTP request to the admin endpoint: status and body.
pub(crate) async fn http(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    scenario::admin(admin, method, path)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `GET /metrics`: the value of the sample named exactly `sample` (with its
/// labels), if there is one.
pub(crate) async fn metric(admin: SocketAddr, sample: &str) -> Option<f64> {
    let (status, text) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(name, _)| *name == sample))
        .map(|(_, value)| value.parse().expect("a number"))
}

/// `GET /backends`, parsed.
pub(crate) async fn backends(admin: SocketAddr) -> Vec<Value> {
    scenario::backends(admin)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The backend at `addr` in `GET /backends`.
pub(crate) async fn backend(admin: SocketAddr, addr: SocketAddr) -> Value {
    scenario::backend(admin, addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `probe` every 50 ms until it holds; how long that took. Panics
/// after `limit` (a hang guard, not a speed assertion).
pub(crate) async fn until<F, Fut>(limit: Duration, what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !probe().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// Waits until every backend has passed a health check and is up.
pub(crate) async fn all_up(rig: &Rig) {
    until(
        Duration::from_secs(20),
        "every backend checked and up",
        || async {
            rig.balancer.stats().iter().all(|s| {
                s.check_micros > 0
                    && s.last_error.is_none()
                    && s.state == coffer_balancer::State::Up
            })
        },
    )
    .await;
}

/// Waits until the backend at `addr` shows `state` in `/backends`.
pub(crate) async fn state_becomes(
    rig: &Rig,
    addr: SocketAddr,
    state: &str,
    limit: Duration,
) -> Duration {
    until(limit, &format!("{addr} {state}"), || async {
        backend(rig.admin, addr).await["state"] == state
    })
    .await
}

/// Clients connecting (and pinging) one after another until stopped.
pub(crate) struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<(usize, Vec<(tokio::time::Instant, String)>)>,
}

impl Load {
    pub(crate) fn start(addr: SocketAddr, ca: &Path) -> Load {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (stop, ca) = (stop.clone(), ca.to_owned());
            async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.is_cancelled() {
                    let started = tokio::time::Instant::now();
                    match connect(addr, &ca).await {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push((started, e.to_string())),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (ok, failed)
            }
        });
        Load { stop, task }
    }

    /// Stops it; asserts that every connection begun at or after `killed`
    /// succeeded. The one in progress when a backend died may fail: once
    /// its TLS session runs on that backend, a pass-through balancer cannot
    /// move it (the load is sequential, so there is at most one).
    pub(crate) async fn none_failed_since(self, killed: tokio::time::Instant) {
        self.stop.cancel();
        let (ok, mut failed) = self.task.await.unwrap();
        let before = failed.iter().filter(|(t, _)| *t < killed).count();
        assert!(
            before <= 1,
            "{before} connections begun before the kill failed: {failed:?}"
        );
        failed.retain(|(t, _)| *t >= killed);
        let failed: Vec<String> = failed.into_iter().map(|(_, e)| e).collect();
        assert!(
            failed.is_empty(),
            "{} of {} connections failed: {failed:?}",
            failed.len(),
            ok + failed.len()
        );
        assert!(ok > 10, "only {ok} connections made");
    }
}
