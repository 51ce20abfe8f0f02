//! Scenarios 4 and 5: a server killed under a client's feet.
//!
//! - **failover**: kill the server a multi-chunk upload is going to. Until the
//!   servers replicate (one server serves the users), the documented outcome
//!   is that `put` fails as `unavailable`, nothing half-written is visible
//!   once the server is back, and running the same `put` again resumes and
//!   completes.
//! - **crash consistency**: kill -9 the server during 100 commits from four
//!   devices, restart it, and find every acknowledged file intact and no torn
//!   one.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::try_join_all;

use crate::cluster::{Cluster, Member, Probe};
use crate::device::Device;
use crate::scenario::{Context as _, Failure, Tally, file_sha, poll, write_file};

/// The failover upload's size in MiB: as many chunks of the default size.
const BIG_MIB: u32 = 96;

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

/// Scenario 4 on a one-server service cluster.
pub async fn failover(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
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

    // Start the upload; once the server has receipts for some chunks, kill it.
    let store = cluster.data_dir(0);
    let before = received_chunks(&store);
    let put = tokio::spawn({
        let (device, big_s, target) = (device.clone(), big_s.clone(), target.clone());
        async move { device.run(&["put", &big_s, &target]).await }
    });
    poll(
        Duration::from_secs(60),
        Duration::from_millis(5),
        "chunks arriving",
        || {
            let store = store.clone();
            async move { Ok((received_chunks(&store) > before + 2).then_some(())) }
        },
    )
    .await?;
    cluster.kill(Member::Server(0)).await.ctx("kill")?;
    t.faults += 1;
    let out = put.await.ctx("the put task")?;
    t.ops(1);
    t.check(matches!(&out, Err(e) if e.code == "unavailable"), || {
        format!("put whose server died mid-upload ended {out:?}, expected `unavailable`")
    })?;

    cluster.start(Member::Server(0)).await.ctx("restart")?;
    probe
        .until_ready(cluster.front(), Duration::from_secs(30))
        .await?;
    // Nothing half-written is visible.
    let listing = device
        .json(&["ls", &folder])
        .await
        .ctx("ls after restart")?;
    t.ops(1);
    t.check(listing.as_array().is_some_and(|a| a.is_empty()), || {
        format!("after the crash the folder shows {listing}")
    })?;
    let half = device
        .run(&["get", &target, &dir.join("half.bin").display().to_string()])
        .await;
    t.ops(1);
    t.check(matches!(&half, Err(e) if e.code == "not_found"), || {
        format!("get of the interrupted upload: {half:?}")
    })?;

    // Running the same put again resumes and completes.
    let done = device
        .json(&["put", &big_s, &target])
        .await
        .ctx("put again")?;
    t.ops(1);
    t.check(done["sha256"] == sha.as_str(), || {
        format!("resumed put acknowledged {}", done["sha256"])
    })?;
    // It picked up where the first run stopped: what reached the store
    // before the kill is not sent again.
    let sent = done["chunks_sent"].as_u64().unwrap_or(u64::MAX);
    t.check(done["resumed"] == true && sent < u64::from(BIG_MIB), || {
        format!("the second put did not resume: {done}")
    })?;
    let back = dir.join("failover.back");
    let got = device
        .json(&["get", &target, &back.display().to_string()])
        .await
        .ctx("get")?;
    t.ops(1);
    t.check(
        got["sha256"] == sha.as_str() && file_sha(&back)? == sha,
        || "the resumed file differs".into(),
    )?;
    Ok(t)
}

/// Scenario 5 on a one-server service cluster.
pub async fn consistency(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
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
    let in_flight = Arc::new(AtomicUsize::new(0));
    let src = dir.join("crash-src");
    let commits = try_join_all(devices.iter().enumerate().map(|(d, device)| {
        let (attempts, folder, src) = (attempts.clone(), folder.clone(), src.clone());
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
        .until_ready(cluster.front(), Duration::from_secs(30))
        .await?;

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

    // Every acknowledged file is there and intact; an unacknowledged one is
    // either absent or whole — never torn.
    let reader = &devices[0];
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
