//! Scenario 2: the authorization matrix. For every actor — owner, editor,
//! viewer, stranger, removed member, revoked session, expired session, forged
//! token — and every operation on a folder and on a single-file share,
//! exactly the allowed ones succeed; the denied ones fail with the right code
//! and leave the folder as it was.

use std::path::Path;

use crate::cluster::Cluster;
use crate::device::{Device, mint_token, token_claims};
use crate::scenario::{Context as _, Failure, Tally, write_file};

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
    Manage,
    /// Being the recipient of the single-file share.
    Recipient,
}

/// What an actor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Owner,
    Editor,
    Viewer,
    Stranger,
    Removed,
    /// No valid session at all (revoked, expired, forged).
    NoSession,
}

impl Standing {
    fn may(self, need: Need) -> bool {
        matches!(
            (self, need),
            (Standing::Owner, Need::Read | Need::Write | Need::Manage)
                | (Standing::Editor, Need::Read | Need::Write)
                | (Standing::Viewer, Need::Read)
                | (Standing::Stranger, Need::Recipient)
        )
    }
}

const OPS: [(&str, Need); 12] = [
    ("ls", Need::Read),
    ("get", Need::Read),
    ("history", Need::Read),
    ("info", Need::Read),
    ("put", Need::Write),
    ("mkdir", Need::Write),
    ("rm", Need::Write),
    ("mv", Need::Write),
    ("restore", Need::Write),
    ("share-file", Need::Write),
    ("share-folder", Need::Manage),
    ("get-shared", Need::Recipient),
];

/// Runs the scenario against `cluster` with scratch space under `dir`.
pub async fn run(cluster: &mut impl Cluster, dir: &Path) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    // The scenario before may have left a node catching up.
    crate::cluster::settle(cluster, crate::cluster::SETTLE).await?;
    let dev = |user: &str, name: &str| Device::new(dir, user, name, cluster.front(), cluster.ca());
    let owner = dev("az-owner", "main");
    owner.enrol(true).await.ctx("register owner")?;
    let others = [
        "az-editor",
        "az-viewer",
        "az-stranger",
        "az-removed",
        "az-target",
    ];
    let mut devices = Vec::new();
    for user in others {
        let d = dev(user, "main");
        d.enrol(true).await.ctx(&format!("register {user}"))?;
        devices.push(d);
    }
    let [editor, viewer, stranger, removed, _target] = &devices[..] else {
        unreachable!("five users")
    };
    let folder = owner
        .create_folder("authz", None)
        .await
        .ctx("folder create")?;
    let at = |path: &str| format!("{folder}:{path}");

    // Content: a document everyone tries to read, and per actor a file to
    // delete, one to move and one with two versions to restore.
    let actors = [
        "owner", "editor", "viewer", "stranger", "removed", "revoked", "expired", "forged",
    ];
    let src = dir.join("authz-src");
    let doc = src.join("doc.txt");
    write_file(&doc, "authz doc", 5000)?;
    let doc_s = doc.display().to_string();
    owner
        .run(&["put", &doc_s, &at("doc.txt")])
        .await
        .ctx("put doc")?;
    for a in actors {
        for kind in ["rm", "mv", "restore"] {
            let local = src.join(format!("{kind}-{a}"));
            write_file(&local, &format!("{kind} {a} v1"), 100)?;
            let l = local.display().to_string();
            owner
                .run(&["put", &l, &at(&format!("{kind}-{a}.txt"))])
                .await
                .ctx("put")?;
        }
        let local = src.join(format!("restore-{a}-v2"));
        write_file(&local, &format!("restore {a} v2"), 120)?;
        let l = local.display().to_string();
        owner
            .run(&["put", &l, &at(&format!("restore-{a}.txt"))])
            .await
            .ctx("put v2")?;
    }
    t.ops(2 + 4 * actors.len());

    // Members: an editor, a viewer, and one removed after joining.
    for (member, role) in [(editor, "editor"), (viewer, "viewer"), (removed, "editor")] {
        owner
            .run(&["folder", "share", &folder, &member.user, "--role", role])
            .await
            .ctx("share")?;
        member
            .run(&["invite", "accept", &folder])
            .await
            .ctx("accept")?;
    }
    owner
        .run(&["folder", "unshare", &folder, &removed.user])
        .await
        .ctx("unshare")?;
    // The stranger receives the document alone, read-only.
    let share = owner
        .json(&["share", &at("doc.txt"), &stranger.user])
        .await
        .ctx("share file")?;
    let share_id = share["share_id"].as_str().ok_or("no share_id")?.to_owned();
    t.ops(8);

    // Sessions that are not valid: revoked, expired (signed with the real
    // secret, past its expiry), forged (signed with another key).
    let revoked = dev("az-owner", "revoked");
    revoked.enrol(false).await.ctx("login to revoke")?;
    let sid = token_claims(&revoked.token()?)
        .and_then(|c| c["sid"].as_str().map(str::to_owned))
        .ok_or("a token without a session id")?;
    owner
        .run(&["sessions", "--revoke", &sid])
        .await
        .ctx("revoke a session")?;
    let expired = dev("az-owner", "expired");
    expired.enrol(false).await.ctx("login to expire")?;
    let claims = token_claims(&expired.token()?).ok_or("unreadable token")?;
    let sid = claims["sid"].as_str().ok_or("no sid")?;
    expired.set_token(&mint_token(cluster.secret(), sid, "az-owner", 1_000))?;
    let forged = dev("az-owner", "forged");
    forged.enrol(false).await.ctx("login to forge")?;
    let claims = token_claims(&forged.token()?).ok_or("unreadable token")?;
    let sid = claims["sid"].as_str().ok_or("no sid")?;
    let far = claims["exp"].as_u64().ok_or("no exp")? + 3_600_000;
    forged.set_token(&mint_token(&[0x5a; 32], sid, "az-owner", far))?;
    t.ops(6);

    // The owner goes last, so every denial meets the state the owner set up.
    let table: [(&str, &Device, Standing); 8] = [
        ("editor", editor, Standing::Editor),
        ("viewer", viewer, Standing::Viewer),
        ("stranger", stranger, Standing::Stranger),
        ("removed", removed, Standing::Removed),
        ("revoked", &revoked, Standing::NoSession),
        ("expired", &expired, Standing::NoSession),
        ("forged", &forged, Standing::NoSession),
        ("owner", &owner, Standing::Owner),
    ];
    let upload = src.join("upload");
    write_file(&upload, "authz upload", 700)?;
    let upload_s = upload.display().to_string();
    let mut denied = 0;
    for (actor, device, standing) in table {
        let out = dir.join("authz-out").join(actor);
        std::fs::create_dir_all(&out).ctx("mkdir")?;
        for (op, need) in OPS {
            let local = out.join(op).display().to_string();
            let args: Vec<String> = match op {
                "ls" => vec!["ls".into(), folder.clone()],
                "get" => vec!["get".into(), at("doc.txt"), local],
                "history" => vec!["history".into(), at("doc.txt")],
                "info" => vec!["folder".into(), "info".into(), folder.clone()],
                "put" => vec![
                    "put".into(),
                    upload_s.clone(),
                    at(&format!("new-{actor}.txt")),
                ],
                "mkdir" => vec!["mkdir".into(), at(&format!("dir-{actor}"))],
                "rm" => vec!["rm".into(), at(&format!("rm-{actor}.txt"))],
                "mv" => vec![
                    "mv".into(),
                    at(&format!("mv-{actor}.txt")),
                    at(&format!("moved-{actor}.txt")),
                ],
                "restore" => vec![
                    "restore".into(),
                    at(&format!("restore-{actor}.txt")),
                    "--version".into(),
                    "1".into(),
                ],
                "share-file" => vec!["share".into(), at("doc.txt"), "az-target".into()],
                "share-folder" => vec![
                    "folder".into(),
                    "share".into(),
                    folder.clone(),
                    "az-target".into(),
                    "--role".into(),
                    "viewer".into(),
                ],
                "get-shared" => vec!["get".into(), format!("shared:{share_id}"), local],
                _ => unreachable!("every op has its command"),
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let result = device.run(&args).await;
            t.ops(1);
            let allowed = standing.may(need);
            match (&result, allowed) {
                (Ok(_), true) => t.checks += 1,
                (Err(e), false) => {
                    let expected: &[&str] = match standing {
                        Standing::NoSession => &["unauthorized"],
                        _ => &["forbidden", "not_found"],
                    };
                    t.check(expected.contains(&e.code.as_str()), || {
                        format!("{actor} {op}: denied with `{e}`, expected one of {expected:?}")
                    })?;
                    // The expired token is refused for its expiry, not for a
                    // signature the suite got wrong.
                    if actor == "expired" {
                        t.check(e.message.contains("expired"), || {
                            format!("expired {op}: denied with `{e}`, not for its expiry")
                        })?;
                    }
                    denied += 1;
                }
                (Ok(out), false) => {
                    let out: String = out.trim().chars().take(160).collect();
                    return Err(format!("{actor} may not {op}, yet it succeeded: {out}"));
                }
                (Err(e), true) => return Err(format!("{actor} may {op}, yet it failed: {e}")),
            }
        }
    }

    // The folder holds exactly what the allowed operations did.
    let listing = owner
        .json(&["ls", &folder, "--recursive"])
        .await
        .ctx("final ls")?;
    let paths: Vec<String> = listing
        .as_array()
        .ok_or("ls is not a list")?
        .iter()
        .filter_map(|e| {
            e["path"]
                .as_str()
                .map(|p| p.trim_start_matches('/').to_owned())
        })
        .collect();
    let has = |p: &str| paths.iter().any(|q| q == p);
    for (actor, _, standing) in table {
        let wrote = standing.may(Need::Write);
        for (path, present_if_wrote) in [
            (format!("new-{actor}.txt"), true),
            (format!("dir-{actor}"), true),
            (format!("rm-{actor}.txt"), false),
            (format!("mv-{actor}.txt"), false),
            (format!("moved-{actor}.txt"), true),
        ] {
            let expected = present_if_wrote == wrote;
            t.check(has(&path) == expected, || {
                format!(
                    "after the matrix, {path} is {} (listing: {paths:?})",
                    if expected { "missing" } else { "present" }
                )
            })?;
        }
    }
    t.ops(1);
    t.check(denied > 40, || format!("only {denied} denials exercised"))?;
    Ok(t)
}
