//! Scenarios 4 and 5: a server killed under a client's feet, on a replicated
//! cluster behind the balancer.
//!
//! - **failover**: kill the node a multi-chunk upload through the balancer
//!   is going to. The client's `put` either gets through on its own or fails
//!   `unavailable`; run again, as a user would, it completes through another
//!   node. The file is there once — one version, no conflict copy —
//!   complete, on every node, the killed one included once it is back.
//! - **crash consistency**: kill -9 a node during 100 commits from four
//!   devices, restart it, and find through it every acknowledged file intact,
//!   no torn one, and no file committed twice.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::try_join_all;

use crate::cluster::{Cluster, Member, Probe, converged, node_id, settle};
use crate::device::Device;
use crate::scenario::{Context as _, Failure, Tally, file_sha, poll, write_file};

/// The failover upload's size in MiB: as many chunks of the default size.
const BIG_MIB: u32 = 64;

/// Chunks of uploads in progress whose receipt the server has committed, as
/// its database under `data` says (none yet if it cannot be read): what a
/// resumed upload does not send again. A chunk file in the store is not
/// enough: a kill between the file's rename and its receipt's commit leaves
/// a chunk the upload does not know it has.
fn received_chunks(data: &Path) -> usize {
    let count = || -> rusqlite::Result<i64> {
        let db = rusqlite::Connection::open_with_flags(
            data.join("coffer.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        db.busy_timeout(Duration::from_millis(200))?;
        db.query_row(
            "SELECT COUNT(*) FROM upload_chunks WHERE received = 1",
            [],
            |r| r.get(0),
        )
    };
    count().map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

/// Times a user runs `put` again before the scenario calls the failover
/// failed.
const RETRIES: usize = 3;

/// Scenario 4 on a replicated service cluster.
pub async fn failover(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    let n = cluster.servers();
    settle(cluster, Duration::from_secs(60)).await?;
    let probe = Probe::new(cluster.ca()).ctx("probe")?;
    let device = Device::new(dir, "fo-user", "main", cluster.front(), cluster.ca());
    device.enrol(true).await.ctx("register")?;
    let folder = device
        .create_folder("failover", None)
        .await
        .ctx("folder create")?;
    let big = dir.join("failover.bin");
    let sha = write_file(&big, "failover payload", (BIG_MIB as usize) << 20)?;
    let big_s = big.display().to_string();
    let target = format!("{folder}:big.bin");
    t.ops(2);
    converged(cluster, Duration::from_secs(60)).await?;

    // Upload through the balancer; once a node has receipts for some of the
    // chunks, kill that node.
    let stores: Vec<_> = (0..n).map(|i| cluster.data_dir(i)).collect();
    let before: Vec<usize> = stores.iter().map(|s| received_chunks(s)).collect();
    let put = tokio::spawn({
        let (device, big_s, target) = (device.clone(), big_s.clone(), target.clone());
        async move { device.json(&["put", &big_s, &target]).await }
    });
    // `Some(None)`: the put ended first.
    let busy = poll(
        Duration::from_secs(60),
        Duration::from_millis(5),
        "chunks arriving at a node",
        || {
            let (stores, before, finished) = (&stores, &before, put.is_finished());
            async move {
                let busy = (0..stores.len()).find(|&i| received_chunks(&stores[i]) > before[i] + 2);
                Ok(match busy {
                    Some(i) => Some(Some(i)),
                    None if finished => Some(None),
                    None => None,
                })
            }
        },
    )
    .await?;
    let Some(receiving) = busy else {
        let outcome = put.await.ctx("the put task")?;
        return Err(format!(
            "the put ended before any node took 3 of its chunks: {outcome:?}"
        ));
    };
    cluster
        .kill(Member::Server(receiving))
        .await
        .ctx("kill the receiving node")?;
    t.faults += 1;
    // Whatever happens while it is down, it is started again (the scenarios
    // after this one share the cluster).
    let away = async {
        // The client gets through on its own, or fails for want of a server;
        // then the user runs it again, and it must get through.
        let mut outcome = put.await.ctx("the put task")?;
        let mut attempts = vec![format!("{outcome:?}")];
        t.ops(1);
        for _ in 0..RETRIES {
            match &outcome {
                Err(e) if e.code == "unavailable" => {
                    outcome = device.json(&["put", &big_s, &target]).await;
                    attempts.push(format!("{outcome:?}"));
                    t.ops(1);
                }
                _ => break,
            }
        }
        let done = outcome.map_err(|e| {
            format!(
                "the put never completed after {} died under it: {e} (attempts: {attempts:?})",
                node_id(receiving)
            )
        })?;
        t.check(done["sha256"] == sha.as_str(), || {
            format!("the finished put acknowledged {}", done["sha256"])
        })?;
        Ok::<_, Failure>(())
    }
    .await;
    cluster
        .start(Member::Server(receiving))
        .await
        .ctx("restart")?;
    away?;

    // Once the killed node is back and every node holds every write: one
    // file, one version, complete, wherever it is read.
    probe
        .until_ready(cluster.server(receiving), Duration::from_secs(60))
        .await?;
    converged(cluster, Duration::from_secs(60)).await?;
    for i in 0..n {
        let via = device.at(cluster.server(i));
        let listing = via.json(&["ls", &folder]).await.ctx("ls")?;
        t.ops(1);
        let paths: Vec<_> = listing
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (e["path"].clone(), e["version"].clone()))
            .collect();
        t.check(
            paths.len() == 1 && paths[0].0.as_str().is_some_and(|p| p.ends_with("big.bin")),
            || format!("after the failover {} lists {listing}", node_id(i)),
        )?;
        let history = via.json(&["history", &target]).await.ctx("history")?;
        t.ops(1);
        t.check(history.as_array().is_some_and(|h| h.len() == 1), || {
            format!(
                "the file was committed more than once: history on {} is {history}",
                node_id(i)
            )
        })?;
    }
    let back = dir.join("failover.back");
    let got = device
        .at(cluster.server(receiving))
        .json(&["get", &target, &back.display().to_string()])
        .await
        .ctx("get through the node that was killed")?;
    t.ops(1);
    t.check(
        got["sha256"] == sha.as_str() && file_sha(&back)? == sha,
        || "the file read through the restarted node differs".into(),
    )?;
    Ok(t)
}

/// Scenario 5 on a replicated service cluster: node-1 is the one killed.
pub async fn consistency(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    // The scenario before may have left a node catching up.
    settle(cluster, crate::cluster::SETTLE).await?;
    let probe = Probe::new(cluster.ca()).ctx("probe")?;
    let devices: Vec<Device> = (0..4)
        .map(|d| {
            Device::new(
                dir,
                "cc-user",
                &format!("dev{d}"),
                cluster.front(),
                cluster.ca(),
            )
        })
        .collect();
    devices[0].enrol(true).await.ctx("register")?;
    for d in &devices[1..] {
        d.enrol(false).await.ctx("login")?;
    }
    let folder = devices[0]
        .create_folder("crash", None)
        .await
        .ctx("folder create")?;
    t.ops(5);

    // Each device commits 25 files in turn; the acknowledged ones are noted.
    // (path, sha, acknowledged)
    let attempts: Arc<Mutex<Vec<(String, String, bool)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let src = dir.join("crash-src");
    let commits = try_join_all(devices.iter().enumerate().map(|(d, device)| {
        let (attempts, folder, src) = (attempts.clone(), folder.clone(), src.clone());
        let failures = failures.clone();
        let in_flight = in_flight.clone();
        async move {
            for k in 0..25 {
                let name = format!("f-{d}-{k}.bin");
                let size = [10, 70_000, (1 << 20) + 3][(d + k) % 3];
                let local = src.join(&name);
                let sha = write_file(&local, &name, size)?;
                in_flight.fetch_add(1, Ordering::SeqCst);
                let r = device
                    .json(&[
                        "put",
                        &local.display().to_string(),
                        &format!("{folder}:{name}"),
                    ])
                    .await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let acked = matches!(&r, Ok(v) if v["sha256"] == sha.as_str());
                if let Err(e) = &r {
                    failures
                        .lock()
                        .expect("not poisoned")
                        .push(format!("{name}: {e}"));
                }
                attempts
                    .lock()
                    .expect("not poisoned")
                    .push((name, sha, acked));
            }
            Ok::<_, Failure>(())
        }
    }));
    let killer = async {
        // Kill after a third of the commits, come back at once.
        poll(
            Duration::from_secs(120),
            Duration::from_millis(5),
            "commits under way",
            || {
                let n = attempts.lock().expect("not poisoned").len();
                async move { Ok((n >= 33).then_some(())) }
            },
        )
        .await?;
        let interrupted = in_flight.load(Ordering::SeqCst);
        cluster.kill(Member::Server(0)).await.ctx("kill -9")?;
        cluster.start(Member::Server(0)).await.ctx("restart")?;
        Ok::<_, Failure>(interrupted)
    };
    let (c, k) = tokio::join!(commits, killer);
    c?;
    let interrupted = k?;
    t.faults += 1;
    probe
        .until_ready(cluster.server(0), Duration::from_secs(60))
        .await?;
    converged(cluster, Duration::from_secs(60)).await?;

    let attempts = attempts.lock().expect("not poisoned").clone();
    t.ops(attempts.len());
    let acked = attempts.iter().filter(|a| a.2).count();
    t.check(attempts.len() == 100, || {
        format!("{} commits attempted", attempts.len())
    })?;
    // Commits were under way when the server died (whether their clients'
    // retries then got them acknowledged or not).
    t.check(interrupted > 0, || {
        "the kill interrupted no commit: the scenario tested nothing".into()
    })?;
    t.check(acked >= 60, || {
        format!("only {acked} of 100 commits acknowledged around one crash")
    })?;
    // A commit that failed, failed for want of its server — not for another
    // reason the crash cannot explain.
    let failures = failures.lock().expect("not poisoned").clone();
    t.check(
        failures.iter().all(|f| f.contains(": unavailable: ")),
        || format!("commits failed for other reasons than the crash: {failures:?}"),
    )?;

    // Read through the node that was killed: every acknowledged file is there
    // and intact; an unacknowledged one is either absent or whole — never
    // torn; and none was committed twice (a commit retried through another
    // node made into a second version or a conflict copy).
    let reader = &devices[0].at(cluster.server(0));
    let listing = reader
        .json(&["ls", &folder])
        .await
        .ctx("ls after the crash")?;
    t.ops(1);
    for entry in listing.as_array().into_iter().flatten() {
        let path = entry["path"]
            .as_str()
            .unwrap_or("?")
            .trim_start_matches('/');
        t.check(
            attempts.iter().any(|a| a.0 == path) && entry["version"] == 1,
            || format!("after the crash the folder holds {entry}: not one of the 100 commits, or committed twice"),
        )?;
    }
    let out = dir.join("crash-out");
    std::fs::create_dir_all(&out).ctx("mkdir")?;
    for (name, sha, was_acked) in &attempts {
        let local = out.join(name);
        let r = reader
            .json(&[
                "get",
                &format!("{folder}:{name}"),
                &local.display().to_string(),
            ])
            .await;
        t.ops(1);
        match r {
            Ok(v) => t.check(
                v["sha256"] == sha.as_str() && file_sha(&local)? == *sha,
                || format!("{name} came back as {} — torn or wrong", v["sha256"]),
            )?,
            Err(e) if !was_acked && e.code == "not_found" => t.checks += 1,
            Err(e) => {
                return Err(format!(
                    "{name} (acknowledged: {was_acked}) cannot be read after the crash: {e}"
                ));
            }
        }
    }
    Ok(t)
}
