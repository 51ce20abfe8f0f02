//! Scenarios 8 to 11: the servers are one service. Each runs on a replicated
//! cluster of three nodes with write quorum 2 (`scenarios::service`).
//!
//! - **landing** (8): devices log in through the balancer; their connections
//!   land on every server (the balancer's counts say so) and every server
//!   accepts every session;
//! - **read anywhere** (9): files uploaded through one node download
//!   byte-identical through each other node;
//! - **rebuild** (10): a node whose data directory is wiped rebuilds from its
//!   peers; it reports ready only once it holds everything, and then serves
//!   every earlier user and file, including those written while it was down;
//! - **partition** (11): one node cut off from the two others; writes on the
//!   majority side are acknowledged, writes on the minority side are answered
//!   `unavailable`; after the heal every node holds the same files and
//!   `coffer ping --json` shows every peer linked and caught up.
//!
//! Where a step needs another node to hold what was just written, the
//! scenario first waits until the servers say every node holds every write
//! ([`converged`]) and then checks strictly: a node that claims to hold a
//! write and does not serve it fails the check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::cluster::{Cluster, Member, Probe, converged, node_id, settle};
use crate::device::{CommandError, Device};
use crate::scenario::{Context as _, Failure, Tally, backends, file_sha, poll, write_file};

/// How long replication may take to bring every node level.
const CONVERGE: Duration = Duration::from_secs(60);

/// A folder's files as one node lists them: path → (kind, size, version).
pub type Listing = BTreeMap<String, (String, u64, u64)>;

/// `ls FOLDER --recursive` on `device`, as a map.
pub async fn listing(device: &Device, folder: &str) -> Result<Listing, CommandError> {
    let out = device.json(&["ls", folder, "--recursive"]).await?;
    let mut map = Listing::new();
    for entry in out.as_array().into_iter().flatten() {
        let path = entry["path"].as_str().unwrap_or("?");
        map.insert(
            path.trim_start_matches('/').to_owned(),
            (
                entry["kind"].as_str().unwrap_or("?").to_owned(),
                entry["size"].as_u64().unwrap_or(0),
                entry["version"].as_u64().unwrap_or(0),
            ),
        );
    }
    Ok(map)
}

/// Gets `folder:path` through `device` into `dir` and checks it against
/// `sha` (the reply's digest and the bytes on disk); `who` names the node for
/// the failure.
async fn fetch_checked(
    t: &mut Tally,
    device: &Device,
    folder: &str,
    path: &str,
    sha: &str,
    dir: &Path,
    who: &str,
) -> Result<(), Failure> {
    let local = dir.join(format!("{who}-{}", path.replace('/', "_")));
    let out = device
        .json(&[
            "get",
            &format!("{folder}:{path}"),
            &local.display().to_string(),
        ])
        .await
        .ctx(&format!("get {path} through {who}"))?;
    t.ops(1);
    let on_disk = file_sha(&local)?;
    t.check(out["sha256"] == sha && on_disk == sha, || {
        format!(
            "{path} through {who}: reply {} on disk {on_disk}, uploaded {sha}",
            out["sha256"]
        )
    })
}

/// Registers `user`'s first device through the balancer and waits until
/// every node holds the account.
async fn member(
    t: &mut Tally,
    cluster: &impl Cluster,
    dir: &Path,
    user: &str,
    device: &str,
) -> Result<Device, Failure> {
    let d = Device::new(dir, user, device, cluster.front(), cluster.ca());
    d.enrol(true).await.ctx(&format!("register {user}"))?;
    t.ops(1);
    Ok(d)
}

/// Scenario 8: log in through the balancer and land on every server.
pub async fn landing(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    let n = cluster.servers();
    settle(cluster, CONVERGE).await?;
    let totals = |all: Vec<serde_json::Value>| -> BTreeMap<String, u64> {
        all.iter()
            .map(|b| {
                (
                    b["addr"].as_str().unwrap_or("?").to_owned(),
                    b["total"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let before = totals(backends(cluster.admin()).await?);
    let first = member(&mut t, cluster, dir, "ld-user", "dev0").await?;
    let mut devices = vec![first];
    for k in 1..2 * n {
        let d = Device::new(
            dir,
            "ld-user",
            &format!("dev{k}"),
            cluster.front(),
            cluster.ca(),
        );
        d.enrol(false).await.ctx(&format!("login on dev{k}"))?;
        devices.push(d);
    }
    t.ops(2 * n - 1);
    // The logins' connections went to every server.
    let after = totals(backends(cluster.admin()).await?);
    for i in 0..n {
        let addr = cluster.backend(i).to_string();
        let (b, a) = (before.get(&addr), after.get(&addr));
        t.check(a > b, || {
            format!(
                "no login connection reached {} ({addr}: {b:?} → {a:?})",
                node_id(i)
            )
        })?;
    }

    // Once every node holds every write, every node accepts every session,
    // as the device it was opened for.
    converged(cluster, CONVERGE).await?;
    for d in &devices {
        for i in 0..n {
            let me = d
                .at(cluster.server(i))
                .json(&["whoami"])
                .await
                .ctx(&format!("whoami of {} on {}", d.name, node_id(i)))?;
            t.ops(1);
            t.check(
                me["user"] == "ld-user"
                    && me["device"] == d.name.as_str()
                    && me["server_node"] == node_id(i).as_str(),
                || format!("{} on {} is {me}", d.name, node_id(i)),
            )?;
        }
    }
    // Through the balancer, a device's commands are served by every node in
    // turn.
    let mut served = BTreeSet::new();
    for _ in 0..2 * n {
        let me = devices[0].json(&["whoami"]).await.ctx("whoami")?;
        t.ops(1);
        served.insert(me["server_node"].as_str().unwrap_or("?").to_owned());
    }
    t.check(served.len() == n, || {
        format!("whoami through the balancer was served by {served:?} only")
    })?;
    Ok(t)
}

/// Scenario 9: upload through one node, download through each other.
pub async fn read_anywhere(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    let n = cluster.servers();
    settle(cluster, CONVERGE).await?;
    let owner = member(&mut t, cluster, dir, "ra-user", "main").await?;
    let folder = owner
        .create_folder("anywhere", None)
        .await
        .ctx("folder create")?;
    t.ops(1);
    converged(cluster, CONVERGE).await?;

    // Each node takes uploads of its own: small, two chunks, several.
    let mut files = Vec::new();
    for i in 0..n {
        let via = owner.at(cluster.server(i));
        for (k, size) in [5000, (1 << 20) + 1, (3 << 20) + 5].into_iter().enumerate() {
            let name = format!("from-{}/f{k}.bin", node_id(i));
            let local = dir.join("ra-src").join(name.replace('/', "_"));
            let sha = write_file(&local, &name, size)?;
            let out = via
                .json(&[
                    "put",
                    &local.display().to_string(),
                    &format!("{folder}:{name}"),
                ])
                .await
                .ctx(&format!("put {name} through {}", node_id(i)))?;
            t.ops(1);
            t.check(out["sha256"] == sha.as_str(), || {
                format!("put {name} acknowledged {}", out["sha256"])
            })?;
            files.push((i, name, sha));
        }
    }
    converged(cluster, CONVERGE).await?;

    // Every other node serves each, byte for byte, and lists the same.
    let out = dir.join("ra-out");
    std::fs::create_dir_all(&out).ctx("mkdir")?;
    let mut listings = Vec::new();
    for j in 0..n {
        let via = owner.at(cluster.server(j));
        for (i, name, sha) in &files {
            if *i != j {
                fetch_checked(&mut t, &via, &folder, name, sha, &out, &node_id(j)).await?;
            }
        }
        listings.push(listing(&via, &folder).await.ctx("ls")?);
        t.ops(1);
    }
    t.check(listings.windows(2).all(|w| w[0] == w[1]), || {
        format!("the nodes list the folder differently: {listings:?}")
    })?;
    let listed: BTreeSet<&String> = listings[0]
        .iter()
        .filter(|(_, (kind, _, _))| kind == "file")
        .map(|(p, _)| p)
        .collect();
    let uploaded: BTreeSet<&String> = files.iter().map(|(_, name, _)| name).collect();
    t.check(listed == uploaded, || {
        format!("listed {listed:?}, uploaded {uploaded:?}")
    })?;
    Ok(t)
}

/// Scenario 10: wipe a node's data directory, restart it, watch it rebuild.
pub async fn rebuild(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    let n = cluster.servers();
    let victim = n - 1;
    let probe = Probe::new(cluster.ca()).ctx("probe")?;
    settle(cluster, CONVERGE).await?;
    let owner = member(&mut t, cluster, dir, "rb-owner", "main").await?;
    let friend = member(&mut t, cluster, dir, "rb-friend", "main").await?;
    let folder = owner
        .create_folder("rebuilt", None)
        .await
        .ctx("folder create")?;
    owner
        .run(&["folder", "share", &folder, &friend.user, "--role", "editor"])
        .await
        .ctx("share")?;
    friend
        .run(&["invite", "accept", &folder])
        .await
        .ctx("accept")?;
    t.ops(3);
    let mut files = BTreeMap::new();
    let put = async |t: &mut Tally, who: &Device, name: &str, size: usize| {
        let local = dir.join("rb-src").join(name);
        let sha = write_file(&local, name, size)?;
        let out = who
            .json(&[
                "put",
                &local.display().to_string(),
                &format!("{folder}:{name}"),
            ])
            .await
            .ctx(&format!("put {name}"))?;
        t.ops(1);
        t.check(out["sha256"] == sha.as_str(), || {
            format!("put {name} acknowledged {}", out["sha256"])
        })?;
        Ok::<_, Failure>(sha)
    };
    // Written through the nodes that stay (the balancer's part in uploads is
    // scenario 1's).
    let survivor = |k: usize| cluster.server(k % victim);
    for k in 0..12 {
        let name = format!("before-{k}.bin");
        let size = [100, 70_000, (2 << 20) + 3][k % 3];
        let who = if k % 2 == 0 { &owner } else { &friend };
        let via = who.at(survivor(k));
        files.insert(name.clone(), put(&mut t, &via, &name, size).await?);
    }
    converged(cluster, CONVERGE).await?;

    // The victim goes, with everything it held.
    cluster
        .kill(Member::Server(victim))
        .await
        .ctx("kill the victim")?;
    t.faults += 1;
    // Whatever happens while it is away, it is started again (the scenarios
    // after this one share the cluster).
    let away = async {
        let data = cluster.data_dir(victim);
        for entry in std::fs::read_dir(&data).ctx("the victim's data directory")? {
            let path = entry.ctx("a data directory entry")?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).ctx("wiping")?;
            } else {
                std::fs::remove_file(&path).ctx("wiping")?;
            }
        }
        let empty = std::fs::read_dir(&data).ctx("the wiped directory")?.count() == 0;
        t.check(empty, || {
            "the data directory is not empty after the wipe".into()
        })?;
        // Written while it is away (the two others make the quorum), by a
        // user who registers meanwhile too (a name the victim does not own:
        // its owner must be up to register it).
        let nodes: Vec<String> = (0..n).map(node_id).collect();
        let name = (0..1000)
            .map(|k| format!("rb-late-{k}"))
            .find(|u| owner_of(&nodes, u) != node_id(victim))
            .ok_or("no username the survivors own")?;
        let late = member(&mut t, cluster, dir, &name, "main").await?;
        let survivor = |k: usize| cluster.server(k % victim);
        for k in 0..3 {
            let name = format!("while-down-{k}.bin");
            let via = owner.at(survivor(k));
            let size = [5000, (1 << 20) + 7, 70_000][k];
            files.insert(name.clone(), put(&mut t, &via, &name, size).await?);
        }
        Ok::<_, Failure>(late)
    }
    .await;
    cluster
        .start(Member::Server(victim))
        .await
        .ctx("start the victim")?;
    let late = away?;
    // Until it says ready it serves nothing stale: a request meanwhile
    // answers `unavailable` — or, had it become ready in between, everything.
    let at_victim = owner.at(cluster.server(victim));
    let expected: BTreeSet<String> = files.keys().cloned().collect();
    let refused = AtomicUsize::new(0);
    let stale: Mutex<Option<String>> = Mutex::new(None);
    poll(
        CONVERGE,
        Duration::from_millis(20),
        "the wiped node ready",
        || {
            let (probe, addr) = (probe.clone(), cluster.server(victim));
            let (at_victim, folder, expected) = (&at_victim, &folder, &expected);
            let (refused, stale) = (&refused, &stale);
            async move {
                let pong = probe.pong(addr).await.map_err(|e| e.to_string())?;
                if pong.ready {
                    return Ok(Some(()));
                }
                match listing(at_victim, folder).await {
                    Err(e) if e.code == "unavailable" => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        Ok(None)
                    }
                    Ok(l) if l.keys().eq(expected.iter()) => Ok(None),
                    other => {
                        *stale.lock().expect("not poisoned") = Some(format!("{other:?}"));
                        Ok(Some(()))
                    }
                }
            }
        },
    )
    .await?;
    let stale = stale.into_inner().expect("not poisoned");
    t.check(stale.is_none(), || {
        format!("the wiped node, not ready yet, answered ls with {stale:?}")
    })?;
    t.ops(refused.load(Ordering::Relaxed));
    // What it holds the moment it is ready: every file, every user, every
    // membership — with no waiting for anything more.
    let listed = listing(&at_victim, &folder)
        .await
        .ctx("ls on the rebuilt node")?;
    let names: BTreeSet<String> = listed.keys().cloned().collect();
    t.ops(1);
    t.check(names == expected, || {
        format!("once ready, the rebuilt node lists {names:?}, expected {expected:?}")
    })?;
    let out = dir.join("rb-out");
    std::fs::create_dir_all(&out).ctx("mkdir")?;
    for (name, sha) in &files {
        fetch_checked(&mut t, &at_victim, &folder, name, sha, &out, "rebuilt").await?;
    }
    for who in [&owner, &friend, &late] {
        let me = who
            .at(cluster.server(victim))
            .json(&["whoami"])
            .await
            .ctx(&format!("{} on the rebuilt node", who.user))?;
        t.ops(1);
        t.check(me["user"] == who.user.as_str(), || {
            format!("{} on the rebuilt node is {me}", who.user)
        })?;
    }
    // The friend is still a member there; a stranger is not.
    let friend_ls = listing(&friend.at(cluster.server(victim)), &folder).await;
    t.check(friend_ls.is_ok(), || {
        format!("the friend cannot list the shared folder on the rebuilt node: {friend_ls:?}")
    })?;
    let stranger = late.at(cluster.server(victim)).run(&["ls", &folder]).await;
    t.check(stranger.is_err(), || {
        "a stranger lists the folder on the rebuilt node".into()
    })?;
    t.ops(2);
    // A fresh login on it works, and it writes again.
    let again = Device::new(
        dir,
        "rb-owner",
        "second",
        cluster.server(victim),
        cluster.ca(),
    );
    again.enrol(false).await.ctx("login on the rebuilt node")?;
    put(&mut t, &again, "after.bin", 5000).await?;
    converged(cluster, CONVERGE).await?;
    Ok(t)
}

/// The node of `nodes` that registers `username`: the highest rendezvous
/// weight, the first 8 bytes of SHA-256(node ‖ 0 ‖ name) read big-endian
/// (docs/ARCHITECTURE.md, membership).
fn owner_of(nodes: &[String], username: &str) -> String {
    let weight = |node: &String| {
        let digest = Sha256::new()
            .chain_update(node.as_bytes())
            .chain_update([0])
            .chain_update(username.as_bytes())
            .finalize();
        let first: [u8; 8] = digest[..8].try_into().expect("8 bytes");
        (u64::from_be_bytes(first), node.clone())
    };
    nodes
        .iter()
        .max_by_key(|n| weight(n))
        .cloned()
        .unwrap_or_default()
}

/// Scenario 11: partition one node from the others; write on both sides;
/// heal; converge.
pub async fn partition(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    let n = cluster.servers();
    let lone = n - 1;
    settle(cluster, CONVERGE).await?;
    let user = member(&mut t, cluster, dir, "pt-user", "main").await?;
    let folder = user
        .create_folder("split", None)
        .await
        .ctx("folder create")?;
    t.ops(1);
    converged(cluster, CONVERGE).await?;

    for i in 0..lone {
        cluster
            .partition(Member::Server(lone), Member::Server(i))
            .await
            .ctx("partition")?;
    }
    t.faults += 1;

    // Whatever happens while it is cut off, the links are healed (the
    // scenarios after this one share the cluster).
    let split = async {
        let src = dir.join("pt-src");
        let mut acknowledged = BTreeMap::new();
        let put = |via: Device, name: String, size: usize| {
            let (src, folder) = (src.clone(), folder.clone());
            async move {
                let local = src.join(&name);
                let sha = write_file(&local, &name, size)?;
                let r = via
                    .json(&[
                        "put",
                        &local.display().to_string(),
                        &format!("{folder}:{name}"),
                    ])
                    .await;
                Ok::<_, Failure>((r, sha))
            }
        };
        // The majority side: every write is acknowledged.
        for i in 0..lone {
            let via = user.at(cluster.server(i));
            for (name, size) in [
                (format!("majority-{}.txt", node_id(i)), 3000),
                (format!("majority-{}.bin", node_id(i)), (2 << 20) + 9),
            ] {
                let (r, sha) = put(via.clone(), name.clone(), size).await?;
                t.ops(1);
                let r = r.ctx(&format!("put {name} on the majority side"))?;
                t.check(r["sha256"] == sha.as_str(), || {
                    format!("put {name} acknowledged {}", r["sha256"])
                })?;
                acknowledged.insert(name, sha);
            }
            let dirname = format!("majority-dir-{}", node_id(i));
            via.run(&["mkdir", &format!("{folder}:{dirname}")])
                .await
                .ctx("mkdir on the majority side")?;
            t.ops(1);
            t.checks += 1;
        }

        // The minority side: no write may be acknowledged, whatever its kind.
        let alone = user.at(cluster.server(lone));
        let mut refused = |what: &str, r: Result<serde_json::Value, CommandError>| {
            t.ops(1);
            t.check(matches!(&r, Err(e) if e.code == "unavailable"), || {
                format!(
                    "{what} on the minority side ({}) answered {r:?}, expected `unavailable`",
                    node_id(lone)
                )
            })
        };
        let mut retried = BTreeMap::new();
        for (name, size) in [("minority.txt", 2000), ("minority.bin", (2 << 20) + 11)] {
            let (r, sha) = put(alone.clone(), name.into(), size).await?;
            refused(&format!("put {name}"), r)?;
            retried.insert(name.to_owned(), sha);
        }
        let r = alone
            .json(&["mkdir", &format!("{folder}:minority-dir")])
            .await;
        refused("mkdir", r)?;
        // A name another node registers: its owner is out of reach.
        let nodes: Vec<String> = (0..n).map(node_id).collect();
        let name = (0..1000)
            .map(|k| format!("pt-new-{k}"))
            .find(|u| owner_of(&nodes, u) != node_id(lone))
            .ok_or("no username owned by the majority")?;
        let newcomer = Device::new(dir, &name, "main", cluster.server(lone), cluster.ca());
        let r = newcomer.enrol(true).await.map(|()| serde_json::Value::Null);
        refused(&format!("register {name}"), r)?;

        // The user runs the refused puts again through the majority side, which
        // acknowledges them: the retry of a write the minority kept, which will
        // meet it after the heal.
        for (name, sha) in &retried {
            // The same local file, unchanged: the client may resume its upload.
            let local = src.join(name).display().to_string();
            let r = user
                .at(cluster.server(0))
                .json(&["put", &local, &format!("{folder}:{name}")])
                .await;
            t.ops(1);
            let r = r.ctx(&format!("put {name} again through {}", node_id(0)))?;
            t.check(r["sha256"] == sha.as_str(), || {
                format!("the retried put of {name} acknowledged {}", r["sha256"])
            })?;
            acknowledged.insert(name.clone(), sha.clone());
        }
        Ok::<_, Failure>((acknowledged, retried))
    }
    .await;
    for i in 0..lone {
        cluster
            .heal(Member::Server(lone), Member::Server(i))
            .await
            .ctx("heal")?;
    }
    let (acknowledged, retried) = split?;

    // Healed, every node holds the same files: every acknowledged one, each
    // refused one either everywhere or nowhere, whole, and each retried one
    // once — one version, no conflict copy.
    converged(cluster, CONVERGE).await?;
    let mut listings = Vec::new();
    for i in 0..n {
        listings.push(
            listing(&user.at(cluster.server(i)), &folder)
                .await
                .ctx("ls after the heal")?,
        );
        t.ops(1);
    }
    t.check(listings.windows(2).all(|w| w[0] == w[1]), || {
        format!("after the heal the nodes list differently: {listings:?}")
    })?;
    for name in acknowledged.keys() {
        t.check(listings[0].contains_key(name), || {
            format!(
                "acknowledged {name} is missing after the heal: {:?}",
                listings[0]
            )
        })?;
    }
    let out = dir.join("pt-out");
    std::fs::create_dir_all(&out).ctx("mkdir")?;
    for (path, (kind, _, _)) in &listings[0] {
        if kind != "file" {
            continue;
        }
        let mut shas = BTreeSet::new();
        for i in 0..n {
            let local = out.join(format!("{}-{path}", node_id(i)));
            let got = user
                .at(cluster.server(i))
                .json(&[
                    "get",
                    &format!("{folder}:{path}"),
                    &local.display().to_string(),
                ])
                .await
                .ctx(&format!("get {path} through {}", node_id(i)))?;
            t.ops(1);
            let on_disk = file_sha(&local)?;
            t.check(got["sha256"] == on_disk.as_str(), || {
                format!(
                    "{path} through {}: reply {} on disk {on_disk}",
                    node_id(i),
                    got["sha256"]
                )
            })?;
            shas.insert(on_disk);
        }
        t.check(shas.len() == 1, || {
            format!("{path} differs between the nodes: {shas:?}")
        })?;
        if let Some(sha) = acknowledged.get(path) {
            t.check(shas.contains(sha), || {
                format!("{path} is not what was acknowledged")
            })?;
        }
    }
    // What each node tells an operator: every peer linked and caught up.
    for i in 0..n {
        let pong = user
            .at(cluster.server(i))
            .json(&["ping"])
            .await
            .ctx(&format!("coffer ping --json on {}", node_id(i)))?;
        t.ops(1);
        let peers = pong["peers"].as_object().cloned().unwrap_or_default();
        let level = peers.len() == n - 1
            && peers
                .values()
                .all(|p| p["linked"] == true && p["caught_up"] == true && p["behind_records"] == 0);
        t.check(pong["ready"] == true && level, || {
            format!(
                "coffer ping --json on {} after the heal: {pong}",
                node_id(i)
            )
        })?;
    }
    // Last, so that a failure here says every other check held.
    for name in retried.keys() {
        let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
        let copies: Vec<&String> = listings[0]
            .keys()
            .filter(|p| p.starts_with(&format!("{stem}.conflict-")) && p.ends_with(ext))
            .collect();
        let version = listings[0].get(name).map(|e| e.2);
        t.check(copies.is_empty() && version == Some(1), || {
            format!(
                "{name}, refused on the minority side and put again on the majority side, \
                 is not one write after the heal: version {version:?}, conflict copies {copies:?}"
            )
        })?;
    }
    Ok(t)
}
