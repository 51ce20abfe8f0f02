//! Scenarios against real binaries. Each prints one summary line; the suite
//! ends with `N passed, M failed`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coffer_conformance::{Cluster, Probe, Processes};

/// What a scenario did.
#[derive(Debug, Default)]
struct Tally {
    operations: usize,
    faults: usize,
    checks: usize,
}

impl Tally {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
        self.checks += 1;
        if ok { Ok(()) } else { Err(what()) }
    }
}

/// Pings `addr` until it answers or `deadline` passes (readiness by polling,
/// never by sleeping a fixed time).
async fn until_ready(
    probe: &Probe,
    addr: std::net::SocketAddr,
    deadline: Duration,
) -> Result<String, String> {
    let start = Instant::now();
    loop {
        match probe.ping(addr).await {
            Ok(node) => return Ok(node),
            Err(e) if start.elapsed() > deadline => {
                return Err(format!("{addr} not ready after {deadline:?}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Servers start, answer directly and through the balancer in rotation,
/// survive SIGSTOP/SIGCONT, SIGKILL and restart, and stop cleanly on SIGTERM.
async fn lifecycle(cluster: &mut impl Cluster) -> Result<Tally, String> {
    let mut t = Tally::default();
    let probe = Probe::new(cluster.ca()).map_err(|e| e.to_string())?;

    for i in 0..cluster.servers() {
        let node = probe
            .ping(cluster.server(i))
            .await
            .map_err(|e| e.to_string())?;
        t.operations += 1;
        t.check(node == format!("node-{}", i + 1), || {
            format!("server {i} says it is {node}")
        })?;
    }

    let mut landed = BTreeMap::new();
    for _ in 0..3 * cluster.servers() {
        let node = probe
            .ping(cluster.front())
            .await
            .map_err(|e| e.to_string())?;
        t.operations += 1;
        *landed.entry(node).or_insert(0) += 1;
    }
    t.check(
        landed.len() == cluster.servers() && landed.values().all(|&n| n == 3),
        || format!("round-robin through the balancer landed {landed:?}"),
    )?;

    // A frozen server: a client gets a typed error within its deadlines, not a hang.
    cluster.pause(1).map_err(|e| e.to_string())?;
    t.faults += 1;
    let started = Instant::now();
    let frozen = probe.ping(cluster.server(1)).await;
    t.operations += 1;
    t.check(
        frozen.is_err() && started.elapsed() < Duration::from_secs(10),
        || {
            format!(
                "paused server answered {frozen:?} after {:?}",
                started.elapsed()
            )
        },
    )?;
    cluster.resume(1).map_err(|e| e.to_string())?;
    until_ready(&probe, cluster.server(1), Duration::from_secs(10)).await?;
    t.operations += 1;

    // A killed server: every connection through the balancer still lands.
    cluster.kill(2);
    t.faults += 1;
    for _ in 0..2 * cluster.servers() {
        let node = probe
            .ping(cluster.front())
            .await
            .map_err(|e| format!("with node-3 dead: {e}"))?;
        t.operations += 1;
        t.check(node != "node-3", || "a dead server answered".to_owned())?;
    }
    cluster.restart(2).map_err(|e| e.to_string())?;
    let node = until_ready(&probe, cluster.server(2), Duration::from_secs(10)).await?;
    t.operations += 1;
    t.check(node == "node-3", || {
        format!("restarted server says it is {node}")
    })?;

    let status = cluster.stop(0).map_err(|e| e.to_string())?;
    t.faults += 1;
    t.check(status.success(), || format!("SIGTERM exit status {status}"))?;
    t.check(probe.ping(cluster.server(0)).await.is_err(), || {
        "a stopped server answered".to_owned()
    })?;
    Ok(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let mut passed = 0;
    let mut failed = 0;
    let mut cluster = match Processes::start(3) {
        Ok(cluster) => cluster,
        Err(e) => panic!("processes cluster did not start: {e}"),
    };
    let started = Instant::now();
    match lifecycle(&mut cluster).await {
        Ok(t) => {
            passed += 1;
            eprintln!(
                "lifecycle [processes]: passed — {} operations, {} faults injected, {} checks passed ({:.1} s)",
                t.operations,
                t.faults,
                t.checks,
                started.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            failed += 1;
            eprintln!("lifecycle [processes]: FAILED — {e}");
        }
    }
    eprintln!("{passed} passed, {failed} failed");
    assert_eq!(failed, 0);
}
