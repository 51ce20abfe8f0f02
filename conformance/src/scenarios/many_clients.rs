//! Scenario 1: many devices of many users at once through the balancer —
//! registrations, logins, shares, uploads and downloads — and every download
//! matches the SHA-256 of what was uploaded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures_util::future::try_join_all;

use crate::cluster::Cluster;
use crate::device::Device;
use crate::scenario::{Context as _, Failure, Tally, file_sha, write_file};

/// Users and devices per user.
const USERS: usize = 5;
const DEVICES: usize = 4;

/// Sizes around the chunk boundary (1 MiB) and a multi-chunk one.
const SIZES: [usize; 6] = [0, 1, 4095, 1 << 20, (1 << 20) + 1, (3 << 20) + 5];

/// Runs the scenario against `cluster` with scratch space under `dir`.
pub async fn run(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    // The scenario before may have left a node catching up.
    crate::cluster::settle(cluster, crate::cluster::SETTLE).await?;
    let users: Vec<String> = (0..USERS).map(|u| format!("mc{u}")).collect();
    let devices: Vec<Vec<Device>> = users
        .iter()
        .map(|u| {
            (0..DEVICES)
                .map(|d| Device::new(dir, u, &format!("dev{d}"), cluster.front(), cluster.ca()))
                .collect()
        })
        .collect();

    // Every user registers on a first device and logs in on the others; all
    // users at once.
    try_join_all(devices.iter().map(|ds| async move {
        ds[0]
            .enrol(true)
            .await
            .ctx(&format!("register {}", ds[0].user))?;
        try_join_all(ds[1..].iter().map(|d| async move {
            d.enrol(false)
                .await
                .ctx(&format!("login {} on {}", d.user, d.name))
        }))
        .await?;
        Ok::<_, Failure>(())
    }))
    .await?;
    t.ops(USERS * DEVICES);

    // Each user's folder, shared with the next user as an editor.
    let mut folders = Vec::new();
    for ds in &devices {
        let label = format!("{}-box", ds[0].user);
        folders.push(
            ds[0]
                .create_folder(&label, None)
                .await
                .ctx("folder create")?,
        );
    }
    for u in 0..USERS {
        let next = (u + 1) % USERS;
        devices[u][0]
            .run(&[
                "folder",
                "share",
                &folders[u],
                &users[next],
                "--role",
                "editor",
            ])
            .await
            .ctx("folder share")?;
        devices[next][0]
            .run(&["invite", "accept", &folders[u]])
            .await
            .ctx("invite accept")?;
    }
    t.ops(3 * USERS);

    // Every device uploads one file to its user's folder and one to the folder
    // shared with it, all at once.
    let uploads: Vec<(usize, usize, String, String, String)> =
        try_join_all(devices.iter().enumerate().flat_map(|(u, ds)| {
            let folders = &folders;
            ds.iter().enumerate().flat_map(move |(d, device)| {
                [u, (u + USERS - 1) % USERS]
                    .into_iter()
                    .enumerate()
                    .map(move |(k, owner)| {
                        let folder = folders[owner].clone();
                        async move {
                            let name = format!("from-{}-{}-{k}.bin", device.user, device.name);
                            let size = SIZES[(u * DEVICES + d + k) % SIZES.len()];
                            let local = dir.join("src").join(&name);
                            let sha = write_file(&local, &name, size)?;
                            let local_s = local.display().to_string();
                            let out = device
                                .json(&["put", &local_s, &format!("{folder}:{name}")])
                                .await
                                .ctx(&format!("put {name}"))?;
                            if out["sha256"] != sha.as_str() {
                                return Err(format!(
                                    "put {name} acknowledged {} for {sha}",
                                    out["sha256"]
                                ));
                            }
                            Ok::<_, Failure>((owner, u, folder, name, sha))
                        }
                    })
            })
        }))
        .await?;
    t.ops(uploads.len());
    t.checks += uploads.len();

    // Every device downloads every file of its own folder uploaded by another
    // device, and of the folder shared with it; each must match.
    let uploads = Arc::new(uploads);
    let results: Vec<usize> = try_join_all(devices.iter().enumerate().flat_map(|(u, ds)| {
        let uploads = uploads.clone();
        ds.iter().map(move |device| {
            let uploads = uploads.clone();
            async move {
                let mine = format!("from-{}-{}-", device.user, device.name);
                let readable: Vec<_> = uploads
                    .iter()
                    .filter(|(owner, _, _, name, _)| {
                        (*owner == u || *owner == (u + USERS - 1) % USERS)
                            && !name.starts_with(&mine)
                    })
                    .take(6)
                    .collect();
                let mut checked = 0;
                for (_, _, folder, name, sha) in readable {
                    let local = dir
                        .join("dst")
                        .join(format!("{}-{}", device.user, device.name))
                        .join(name);
                    std::fs::create_dir_all(local.parent().expect("has a parent")).ctx("mkdir")?;
                    let local_s = local.display().to_string();
                    let out = device
                        .json(&["get", &format!("{folder}:{name}"), &local_s])
                        .await
                        .ctx(&format!("{} gets {name}", device.user))?;
                    let on_disk = file_sha(&local)?;
                    if out["sha256"] != sha.as_str() || on_disk != *sha {
                        return Err(format!(
                            "{} got {name} with SHA-256 {} (on disk {on_disk}), uploaded {sha}",
                            device.user, out["sha256"]
                        ));
                    }
                    checked += 1;
                }
                Ok::<_, Failure>(checked)
            }
        })
    }))
    .await?;
    let downloads: usize = results.iter().sum();
    t.ops(downloads);
    t.checks += downloads;

    // A stranger to a folder reads nothing of it.
    let stranger = &devices[2][0];
    let denied = stranger.run(&["ls", &folders[0]]).await;
    t.ops(1);
    t.check(denied.is_err(), || {
        format!("{} listed a folder it has no part in", stranger.user)
    })?;

    let per_folder: BTreeMap<&str, usize> =
        uploads
            .iter()
            .fold(BTreeMap::new(), |mut m, (_, _, f, _, _)| {
                *m.entry(f.as_str()).or_default() += 1;
                m
            });
    t.check(per_folder.len() == USERS, || {
        format!("uploads spread over {per_folder:?}")
    })?;
    Ok(t)
}
