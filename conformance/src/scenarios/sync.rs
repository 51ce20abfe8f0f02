//! Scenario 7: two devices running `coffer sync` converge after creates,
//! modifies, deletes and moves — also across a node (node-1) killed and
//! restarted while one of them keeps changing files. Both run through the
//! balancer, so their connections, subscriptions included, land on
//! different nodes: events of changes made through one node reach a device
//! subscribed on another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::cluster::{Cluster, Member, Probe};
use crate::device::Device;
use crate::scenario::{Context as _, Failure, Tally, poll, tree, write_file};

const CONVERGE: Duration = Duration::from_secs(90);

/// The daemon's own files and conflict copies are not content.
fn skip(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.starts_with(".coffer") || name.ends_with(".part") || name.ends_with(".tmp")
}

/// Waits until both trees are equal and equal to `expected`; if they never
/// are, the failure tells what `coffer status` says on each device.
async fn converge(
    devices: (&Device, &Device),
    a: &Path,
    b: &Path,
    expected: &BTreeMap<String, String>,
    what: &str,
) -> Result<(), Failure> {
    let settled = poll(CONVERGE, Duration::from_millis(200), what, || async move {
        let (ta, tb) = (tree(a, skip)?, tree(b, skip)?);
        if ta == *expected && tb == *expected {
            Ok(Some(()))
        } else {
            let diff: Vec<_> = expected
                .keys()
                .chain(ta.keys())
                .chain(tb.keys())
                .filter(|k| ta.get(*k) != expected.get(*k) || tb.get(*k) != expected.get(*k))
                .take(5)
                .collect();
            Err(format!("differing: {diff:?}"))
        }
    })
    .await;
    if let Err(e) = settled {
        let mut status = Vec::new();
        for d in [devices.0, devices.1] {
            let out = d.run(&["status"]).await;
            status.push(format!(
                "{}: {}",
                d.name,
                out.unwrap_or_else(|e| e.to_string()).trim()
            ));
        }
        return Err(format!("{e}; coffer status: {}", status.join("; ")));
    }
    Ok(())
}

struct Daemon(tokio::process::Child);

impl Daemon {
    fn start(device: &Device) -> Result<Daemon, Failure> {
        device
            .command(&["sync"])
            .ctx("coffer sync")?
            .spawn()
            .map(Daemon)
            .ctx("start coffer sync")
    }

    /// SIGTERM, and its exit status must be a success.
    async fn stop(mut self) -> Result<(), Failure> {
        let pid = self.0.id().ok_or("the daemon already exited")?;
        nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM).ctx("SIGTERM")?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.0.wait())
            .await
            .map_err(|_| "the daemon ignored SIGTERM for 30 s".to_owned())?
            .ctx("wait")?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the daemon exited with {status}"))
        }
    }
}

/// Runs the scenario on a replicated service cluster.
pub async fn run(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    // The scenario before may have left a node catching up.
    crate::cluster::settle(cluster, crate::cluster::SETTLE).await?;
    let probe = Probe::new(cluster.ca()).ctx("probe")?;
    let a = Device::new(dir, "sy-user", "laptop", cluster.front(), cluster.ca());
    let b = Device::new(dir, "sy-user", "desktop", cluster.front(), cluster.ca());
    let (root_a, root_b): (PathBuf, PathBuf) = (dir.join("sync-a"), dir.join("sync-b"));
    std::fs::create_dir_all(&root_a).ctx("mkdir")?;
    std::fs::create_dir_all(&root_b).ctx("mkdir")?;
    a.enrol(true).await.ctx("register")?;
    b.enrol(false).await.ctx("login")?;
    let folder = a
        .create_folder("synced", Some(&root_a))
        .await
        .ctx("folder create --path")?;
    b.run(&["folder", "attach", &folder, &root_b.display().to_string()])
        .await
        .ctx("attach")?;
    t.ops(4);

    let daemon_a = Daemon::start(&a)?;
    let daemon_b = Daemon::start(&b)?;
    let mut expected = BTreeMap::new();

    // Creates, nested directories, a multi-chunk file.
    for (rel, size) in [
        ("a.txt", 10),
        ("docs/b.txt", 5000),
        ("docs/deep/c.bin", (2 << 20) + 7),
        ("empty", 0),
    ] {
        expected.insert(
            rel.to_owned(),
            write_file(&root_a.join(rel), &format!("{rel} v1"), size)?,
        );
    }
    t.ops(4);
    converge(
        (&a, &b),
        &root_a,
        &root_b,
        &expected,
        "creates on A reach B",
    )
    .await?;
    t.checks += 1;

    // Modify on B, delete and move on A.
    expected.insert(
        "a.txt".into(),
        write_file(&root_b.join("a.txt"), "a.txt v2", 20)?,
    );
    std::fs::remove_file(root_a.join("empty")).ctx("rm")?;
    expected.remove("empty");
    std::fs::create_dir_all(root_a.join("moved")).ctx("mkdir")?;
    std::fs::rename(root_a.join("docs/b.txt"), root_a.join("moved/b.txt")).ctx("mv")?;
    let b_sha = expected.remove("docs/b.txt").expect("was there");
    expected.insert("moved/b.txt".into(), b_sha);
    t.ops(3);
    converge(
        (&a, &b),
        &root_a,
        &root_b,
        &expected,
        "a modify on B, a delete and a move on A",
    )
    .await?;
    t.checks += 1;

    // Node-1 dies; B keeps changing files; node-1 comes back.
    cluster.kill(Member::Server(0)).await.ctx("kill")?;
    t.faults += 1;
    expected.insert(
        "offline.txt".into(),
        write_file(&root_b.join("offline.txt"), "written while down", 3000)?,
    );
    expected.insert(
        "docs/deep/c.bin".into(),
        write_file(&root_b.join("docs/deep/c.bin"), "c.bin v2", (2 << 20) + 9)?,
    );
    t.ops(2);
    cluster.start(Member::Server(0)).await.ctx("restart")?;
    probe
        .until_ready(cluster.front(), Duration::from_secs(30))
        .await?;
    converge(
        (&a, &b),
        &root_a,
        &root_b,
        &expected,
        "changes made while the server was down",
    )
    .await?;
    t.checks += 1;

    daemon_a.stop().await?;
    daemon_b.stop().await?;
    t.checks += 2;
    Ok(t)
}
