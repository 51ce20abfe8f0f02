//! Restarts on the same data directory, schema versions, shutdown mid-upload.

use coffer_proto::request::{UploadCommit, UploadRef};
use coffer_proto::{Request, Response};
use coffer_server::{Server, StartError, StoreError};

use super::support::{Harness, Identity, TestFile, content, missing_list};

#[tokio::test]
async fn everything_survives_a_restart() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let (f, key) = alice.folder("f").await;
    let data = content(200_000, 7);
    alice
        .put(&TestFile::new(&f.folder_id, "keep.bin", &data, &key))
        .await
        .unwrap();
    // An upload left half done.
    let half = content(140_000, 8);
    let file = TestFile::new(&f.folder_id, "half.bin", &half, &key);
    let (answer, chunks) = alice.begin(&file).await;
    let Response::Upload(upload) = answer.msg else {
        panic!()
    };
    alice.send_chunk(&upload.upload_id, 0, &chunks[0]).await;
    let token = alice.token();
    drop(alice);

    let (config, clock, dir) = s.stop().await;
    let s = Harness::start_in(config, clock, dir).await;

    let mut alice = s.client().await;
    alice.login(Identity::new("alice")).await;
    assert_eq!(
        alice.get(&f.folder_id, "keep.bin", &key).await.unwrap(),
        data
    );
    // The old token still opens the old session.
    let mut other = s.client().await;
    assert!(matches!(
        other
            .conn
            .call(Request::Auth(coffer_proto::request::Auth { token }))
            .await,
        Response::Session(_)
    ));
    // The half-done upload resumes where it stopped.
    let resumed = alice
        .conn
        .call_with(
            Request::UploadResume(UploadRef {
                upload_id: upload.upload_id.clone(),
            }),
            Default::default(),
        )
        .await;
    assert_eq!(missing_list(3, &resumed.body), [1, 2]);
    for i in [1, 2] {
        alice
            .send_chunk(&upload.upload_id, i, &chunks[i as usize])
            .await;
    }
    alice
        .ok(Request::UploadCommit(UploadCommit {
            upload_id: upload.upload_id,
            meta: None,
        }))
        .await;
    assert_eq!(
        alice.get(&f.folder_id, "half.bin", &key).await.unwrap(),
        half
    );
}

#[tokio::test]
async fn a_data_directory_from_a_newer_build_is_refused() {
    let s = Harness::start().await;
    s.user("alice").await;
    let (config, clock, _dir) = s.stop().await;
    let db = rusqlite::Connection::open(config.data.join("coffer.db")).unwrap();
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    let err = Server::new(config, clock).unwrap_err();
    assert!(
        matches!(
            err,
            StartError::Store(StoreError::NewerSchema { found: 99, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

/// kill -9 while commits stream in: after a restart every acknowledged file is
/// there, whole, and nothing half-written is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_no_acknowledged_commit() {
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use coffer_conformance::Process;
    use coffer_proto::request::List;

    use super::support::{Client, Conn, hello};

    let data = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.path().to_str().unwrap(),
        "--bcrypt-cost",
        "4",
    ]
    .map(str::to_owned)
    .into();
    let binary = Path::new(env!("CARGO_BIN_EXE_coffer-server"));
    let mut server = Process::start(binary, args.clone()).unwrap();
    let ca = data.path().join("tls/ca.pem");
    let connect = |addr| {
        let ca = ca.clone();
        async move {
            let mut conn = Conn::open(addr, &ca).await;
            conn.call(hello()).await;
            Client { conn, user: None }
        }
    };
    let mut alice = connect(server.addr()).await;
    let id = Identity::new("alice");
    alice.ok(id.register()).await;
    alice.login(Identity::new("alice")).await;
    let (folder, key) = alice.folder("f").await;

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let acknowledged = acknowledged.clone();
        let (folder_id, key) = (folder.folder_id.clone(), key.clone());
        tokio::spawn(async move {
            for i in 0..1000u32 {
                let path = format!("file-{i:04}.txt");
                let body = content(3000 + i as usize, i as u8);
                let (request, chunks) =
                    TestFile::new(&folder_id, &path, &body, &key).upload_request();
                let list: Vec<u8> = chunks
                    .iter()
                    .flat_map(|c| coffer_crypto::content_address(c))
                    .collect();
                let id = alice.conn.send(request, list.into()).await;
                let Ok(Ok((answer, _))) = tokio::time::timeout(Duration::from_secs(5), async {
                    Ok::<_, ()>(alice.conn.answer(id).await)
                })
                .await
                else {
                    return;
                };
                let Response::Upload(upload) = answer.msg else {
                    return;
                };
                if !matches!(
                    alice.send_chunk(&upload.upload_id, 0, &chunks[0]).await,
                    Response::ChunkAck(_)
                ) {
                    return;
                }
                if let Response::Entry(_) = alice
                    .conn
                    .call(Request::UploadCommit(UploadCommit {
                        upload_id: upload.upload_id,
                        meta: None,
                    }))
                    .await
                {
                    acknowledged.lock().unwrap().push((path, body));
                }
            }
        })
    };
    // Let a good number of commits through, then pull the plug.
    for _ in 0..500 {
        if acknowledged.lock().unwrap().len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    // The writer's connection is gone: it stops on its own (a panic inside a
    // dropped connection read is fine too).
    let _ = writer.await;
    let acked = acknowledged.lock().unwrap().clone();
    assert!(
        acked.len() >= 40,
        "only {} commits before the kill",
        acked.len()
    );

    let server = Process::start(binary, args).unwrap();
    let mut alice = connect(server.addr()).await;
    alice.login(Identity::new("alice")).await;
    for (path, body) in &acked {
        assert_eq!(
            &alice.get(&folder.folder_id, path, &key).await.unwrap(),
            body,
            "{path}"
        );
    }
    // Whatever else is listed (the commit in flight at the kill, at most) is whole.
    let Response::Listing(listing) = alice
        .ok(Request::List(List {
            folder_id: folder.folder_id.clone(),
            dir: None,
            recursive: true,
            deleted: false,
            cursor: None,
            limit: Some(10_000),
        }))
        .await
    else {
        panic!()
    };
    assert!(listing.entries.len() <= acked.len() + 1);
    for entry in &listing.entries {
        let i: usize = entry.path[5..9].parse().unwrap();
        assert_eq!(
            alice
                .get(&folder.folder_id, &entry.path, &key)
                .await
                .unwrap(),
            content(3000 + i, i as u8)
        );
    }
}
