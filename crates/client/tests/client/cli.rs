//! The `coffer` binary: accounts, folders, sharing and file commands as two
//! or three people would use them.

use std::os::unix::fs::PermissionsExt;

use coffer_crypto::PublicKey;
use serde_json::Value;

use super::support::{Env, content, sha256_hex};

/// Bob's public key as the server holds it, and its fingerprint.
fn fingerprint_on_server(env: &Env, user: &str) -> String {
    let db = rusqlite::Connection::open(env.server.data.join("coffer.db")).unwrap();
    let der: Vec<u8> = db
        .query_row(
            "SELECT public_key FROM users WHERE username = ?1",
            [user],
            |r| r.get(0),
        )
        .unwrap();
    PublicKey::from_der(&der).unwrap().fingerprint()
}

/// Who holds a wrapped key of `folder_id` at `epoch`, by the server's database.
fn key_holders(env: &Env, folder_id: &str, epoch: i64) -> Vec<String> {
    let db = rusqlite::Connection::open(env.server.data.join("coffer.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT username FROM folder_keys WHERE folder_id = ?1 AND epoch = ?2 ORDER BY username")
        .unwrap();
    stmt.query_map(rusqlite::params![folder_id, epoch], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn labels(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["label"].as_str().unwrap().to_owned(),
                f["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_share_a_folder_from_invitation_to_revocation() {
    let env = Env::start().await;
    env.register("alice", "alice").await;
    env.register("bob", "bob").await;

    let me = env.json("alice", &["whoami"]).await;
    assert_eq!(me["user"], "alice");
    assert_eq!(me["device"], "alice");
    assert_eq!(me["server_node"], "node-1");

    // Alice makes a folder and puts a file in it.
    let created = env.json("alice", &["folder", "create", "team"]).await;
    let folder_id = created["folder_id"].as_str().unwrap().to_owned();
    assert_eq!(created["label"], "team");
    let plan = content(10_000, 1);
    let put = env
        .put("alice", "plan.txt", &plan, "team:docs/plan.txt")
        .await;
    assert_eq!(put["path"], "docs/plan.txt");
    assert_eq!(put["size"], 10_000);
    assert_eq!(put["sha256"], sha256_hex(&plan));
    assert_eq!(put["version"], 1);

    // She invites bob as a viewer, after being shown his key's fingerprint.
    let shared = env.json("alice", &["folder", "share", "team", "bob"]).await;
    assert_eq!(shared["role"], "viewer");
    assert_eq!(shared["fingerprint"], fingerprint_on_server(&env, "bob"));

    // Bob sees the invitation, accepts it and reads the file.
    let invites = env.json("bob", &["invites"]).await;
    assert_eq!(
        invites,
        serde_json::json!([{"folder_id": folder_id, "label": "team", "from": "alice", "role": "viewer"}])
    );
    env.ok("bob", &["invite", "accept", "team"]).await;
    assert_eq!(env.json("bob", &["invites"]).await, serde_json::json!([]));
    assert_eq!(
        labels(&env.json("bob", &["folder", "list"]).await),
        [("team".into(), "viewer".into())]
    );
    let ls = env.json("bob", &["ls", "team:docs"]).await;
    assert_eq!(ls[0]["path"], "docs/plan.txt");
    assert_eq!(ls[0]["kind"], "file");
    assert_eq!(ls[0]["size"], 10_000);
    let got = env
        .json(
            "bob",
            &[
                "get",
                "team:docs/plan.txt",
                env.path("bob-plan.txt").to_str().unwrap(),
            ],
        )
        .await;
    assert_eq!(got["sha256"], sha256_hex(&plan));
    assert_eq!(std::fs::read(env.path("bob-plan.txt")).unwrap(), plan);

    // A viewer cannot write, remove or rename.
    std::fs::write(env.path("bob.txt"), b"bob was here").unwrap();
    let bob_txt = env.path("bob.txt");
    let bob_txt = bob_txt.to_str().unwrap();
    assert_eq!(
        env.fails("bob", &["put", bob_txt, "team:bob.txt"]).await,
        "error: forbidden: bob is a viewer of \"team\""
    );
    assert!(
        env.fails("bob", &["rm", "team:docs/plan.txt"])
            .await
            .starts_with("error: forbidden: ")
    );
    assert!(
        env.fails("bob", &["mv", "team:docs/plan.txt", "team:x.txt"])
            .await
            .starts_with("error: forbidden: ")
    );
    assert!(
        env.fails("bob", &["folder", "share", "team", "alice"])
            .await
            .starts_with("error: forbidden: ")
    );

    // Promoted to editor, he can.
    env.ok("alice", &["folder", "role", "team", "bob", "editor"])
        .await;
    let put = env.json("bob", &["put", bob_txt, "team:bob.txt"]).await;
    assert_eq!(put["version"], 1);
    env.ok(
        "alice",
        &[
            "get",
            "team:bob.txt",
            env.path("from-bob.txt").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        std::fs::read(env.path("from-bob.txt")).unwrap(),
        b"bob was here"
    );

    // Unsharing rotates the key: the new epoch is wrapped for alice only, and
    // bob can reach nothing in the folder any more.
    assert_eq!(key_holders(&env, &folder_id, 1), ["alice", "bob"]);
    let info = env.json("alice", &["folder", "info", "team"]).await;
    assert_eq!(info["epoch"], 1);
    let unshared = env
        .json("alice", &["folder", "unshare", "team", "bob"])
        .await;
    assert_eq!(unshared["epoch"], 2);
    assert_eq!(
        key_holders(&env, &folder_id, 1),
        ["alice"],
        "bob's wrapped keys go with him"
    );
    assert_eq!(key_holders(&env, &folder_id, 2), ["alice"]);
    let secret = content(5_000, 2);
    env.put("alice", "after.txt", &secret, "team:after.txt")
        .await;
    assert_eq!(labels(&env.json("bob", &["folder", "list"]).await), []);
    let denied = env
        .fails(
            "bob",
            &[
                "get",
                "team:after.txt",
                env.path("stolen.txt").to_str().unwrap(),
            ],
        )
        .await;
    assert!(denied.starts_with("error: not_found: "), "{denied}");
    assert!(!env.path("stolen.txt").exists());
    let denied = env
        .fails(
            "bob",
            &[
                "get",
                &format!("{folder_id}:after.txt"),
                env.path("stolen.txt").to_str().unwrap(),
            ],
        )
        .await;
    assert!(denied.starts_with("error: not_found: "), "{denied}");
    assert!(!env.path("stolen.txt").exists());
    // Alice still reads everything: old files under the old key, new under the new.
    env.ok(
        "alice",
        &[
            "get",
            "team:docs/plan.txt",
            env.path("a1.txt").to_str().unwrap(),
        ],
    )
    .await;
    env.ok(
        "alice",
        &[
            "get",
            "team:after.txt",
            env.path("a2.txt").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(std::fs::read(env.path("a1.txt")).unwrap(), plan);
    assert_eq!(std::fs::read(env.path("a2.txt")).unwrap(), secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_have_versions_moves_directories_and_single_shares() {
    let env = Env::start().await;
    env.register("alice", "alice").await;
    env.register("carol", "carol").await;
    env.ok("alice", &["folder", "create", "home"]).await;
    let local = env.path("todo.txt");
    let local_str = local.to_str().unwrap();

    // Three versions, newest first in the history; restoring makes a fourth.
    for text in ["one", "two", "three"] {
        std::fs::write(&local, text).unwrap();
        env.ok("alice", &["put", local_str, "home:todo.txt"]).await;
    }
    let history = env.json("alice", &["history", "home:todo.txt"]).await;
    let versions: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(history[0]["size"], 5);
    assert_eq!(history[0]["device"], "alice");
    let restored = env
        .json("alice", &["restore", "home:todo.txt", "--version", "1"])
        .await;
    assert_eq!(restored["version"], 4);
    let out = env.path("out.txt");
    env.ok("alice", &["get", "home:todo.txt", out.to_str().unwrap()])
        .await;
    assert_eq!(std::fs::read(&out).unwrap(), b"one");
    env.ok(
        "alice",
        &[
            "get",
            "home:todo.txt",
            out.to_str().unwrap(),
            "--version",
            "2",
        ],
    )
    .await;
    assert_eq!(std::fs::read(&out).unwrap(), b"two");

    // Directories, moves and removal.
    env.ok("alice", &["mkdir", "home:archive"]).await;
    env.ok("alice", &["mv", "home:todo.txt", "home:archive/todo.txt"])
        .await;
    let root = env.json("alice", &["ls", "home"]).await;
    let root: Vec<(&str, &str)> = root
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), e["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(root, [("archive", "dir")]);
    // A directory given as the destination: the file keeps its name there.
    let dir = env.path("downloads");
    std::fs::create_dir(&dir).unwrap();
    let got = env
        .json(
            "alice",
            &["get", "home:archive/todo.txt", dir.to_str().unwrap()],
        )
        .await;
    assert_eq!(got["path"], dir.join("todo.txt").to_str().unwrap());
    env.ok("alice", &["rm", "home:archive/todo.txt"]).await;
    assert_eq!(
        env.json("alice", &["ls", "home:archive"]).await,
        serde_json::json!([])
    );
    let gone = env
        .fails(
            "alice",
            &["get", "home:archive/todo.txt", out.to_str().unwrap()],
        )
        .await;
    assert!(gone.starts_with("error: not_found: "), "{gone}");

    // One file shared read-only with carol, who is in no folder of alice's.
    let report = content(70_000, 9);
    env.put("alice", "report.bin", &report, "home:report.bin")
        .await;
    let share = env
        .json("alice", &["share", "home:report.bin", "carol"])
        .await;
    assert_eq!(share["fingerprint"], fingerprint_on_server(&env, "carol"));
    let list = env.json("carol", &["shared"]).await;
    assert_eq!(list[0]["from"], "alice");
    assert_eq!(list[0]["size"], 70_000);
    let id = list[0]["share_id"].as_str().unwrap();
    assert_eq!(id, share["share_id"].as_str().unwrap());
    let carol_dir = env.path("carol");
    std::fs::create_dir(&carol_dir).unwrap();
    env.ok(
        "carol",
        &["get", &format!("shared:{id}"), carol_dir.to_str().unwrap()],
    )
    .await;
    assert_eq!(std::fs::read(carol_dir.join("report.bin")).unwrap(), report);
    assert!(
        env.fails("carol", &["ls", "home"])
            .await
            .starts_with("error: not_found: ")
    );
}

/// Alice logs in on a second device, her phone, reading the password from stdin.
const PHONE_LOGIN: [&str; 7] = [
    "login",
    "alice",
    "--device",
    "phone",
    "--mac",
    "02:00:00:00:00:99",
    "--password-stdin",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_elsewhere_needs_the_password_and_logging_out_forgets_the_keys() {
    let env = Env::start().await;
    env.register("alice", "alice").await;
    env.ok("alice", &["folder", "create", "notes"]).await;
    env.put("alice", "n.txt", b"remember the milk", "notes:n.txt")
        .await;

    // The home is private to its owner.
    let state = env.home("alice").join("state.db");
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(env.home("alice"))
            .unwrap()
            .permissions()
            .mode()
            & 0o077,
        0
    );

    // A second device: the wrong password is a plain refusal, and leaves nothing.
    let out = env.run("phone", &PHONE_LOGIN, Some("nope\n")).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: unauthorized: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        env.fails("phone", &["whoami"])
            .await
            .starts_with("error: unauthorized: not logged in")
    );

    // The right one fetches and unwraps the private key: the phone reads files.
    let out = env.run("phone", &PHONE_LOGIN, Some("pw-alice\n")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ok(
        "phone",
        &["get", "notes:n.txt", env.path("p.txt").to_str().unwrap()],
    )
    .await;
    assert_eq!(
        std::fs::read(env.path("p.txt")).unwrap(),
        b"remember the milk"
    );
    let devices = env.json("phone", &["device", "list"]).await;
    let mut names: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alice", "phone"]);

    // Logging out ends the session and takes the key off the device.
    let private_key_der = {
        let db = rusqlite::Connection::open(env.home("phone").join("state.db")).unwrap();
        let der: Vec<u8> = db
            .query_row("SELECT private_key FROM account", [], |r| r.get(0))
            .unwrap();
        der
    };
    env.ok("phone", &["logout"]).await;
    assert!(
        env.fails("phone", &["ls", "notes"])
            .await
            .starts_with("error: unauthorized: not logged in")
    );
    let left = std::fs::read(env.home("phone").join("state.db")).unwrap();
    assert!(
        !left.windows(64).any(|w| w == &private_key_der[100..164]),
        "the private key is still in the home's database file"
    );
    // Logging in again finds the same device by its MAC.
    let out = env
        .run(
            "phone",
            &[
                "login",
                "alice",
                "--mac",
                "02:00:00:00:00:99",
                "--password-stdin",
            ],
            Some("pw-alice\n"),
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.json("phone", &["whoami"]).await["device"], "phone");
    assert_eq!(
        env.json("phone", &["device", "list"])
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_ca_is_refused_by_name() {
    let env = Env::start().await;
    let other = super::support::start().await;
    let out = env
        .run("x", &["--ca", other.ca.to_str().unwrap(), "ping"], None)
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: unauthorized: the server's certificate is not signed by CA {}",
            other.ca.display()
        )
    );
    // The right one works, and usage errors are one line too.
    assert!(env.ok("x", &["ping"]).await.starts_with("node-1 ready"));
    let err = env.fails("x", &["whoami"]).await;
    assert!(
        err.starts_with("error: unauthorized: not logged in"),
        "{err}"
    );
}
