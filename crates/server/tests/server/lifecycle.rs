//! Restarts on the same data directory, schema versions, shutdown mid-upload.

use coffer_proto::request::UploadRef;
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
        .ok(Request::UploadCommit(UploadRef {
            upload_id: upload.upload_id,
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
