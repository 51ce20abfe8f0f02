//! Uploads (chunk checks, resume, base versions), downloads, listing, history,
//! moves, deletes, single-file shares, garbage collection, and bad paths.

use std::time::Duration;

use bytes::Bytes;
use coffer_proto::request::{
    ChunkGet, Delete, FileShare, List, Move, PathRef, Restore, ShareRef, Stat, UploadChunk,
    UploadCommit, UploadRef,
};
use coffer_proto::types::{Blob, EntryKind, Scope, Sha256};
use coffer_proto::{ErrorCode, Request, Response};

use super::support::{Harness, Identity, TestFile, content, error, missing_list};

fn list(id: &str, dir: Option<&str>, recursive: bool) -> Request {
    Request::List(List {
        folder_id: id.into(),
        dir: dir.map(str::to_owned),
        recursive,
        deleted: false,
        cursor: None,
        limit: None,
    })
}

fn paths(response: Response) -> Vec<String> {
    let Response::Listing(l) = response else {
        panic!("{response:?}")
    };
    l.entries.into_iter().map(|e| e.path).collect()
}

#[tokio::test]
async fn an_interrupted_upload_resumes_on_a_new_connection() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let (f, key) = alice.folder("f").await;
    let data = content(5 * 65_536 + 17, 3);
    let file = TestFile::new(&f.folder_id, "big.bin", &data, &key);
    let (answer, chunks) = alice.begin(&file).await;
    let Response::Upload(upload) = answer.msg else {
        panic!()
    };
    assert_eq!((upload.chunk_count, upload.missing), (6, 6));
    assert_eq!(missing_list(6, &answer.body), [0, 1, 2, 3, 4, 5]);
    for i in [0, 2] {
        assert!(matches!(
            alice.send_chunk(&upload.upload_id, i, &chunks[i as usize]).await,
            Response::ChunkAck(a) if a.index == i
        ));
    }
    // The connection drops mid-upload.
    drop(alice);

    let mut again = s.client().await;
    again.login(Identity::new("alice")).await;
    // Beginning the same upload again finds it, with what is still missing.
    let (answer, _) = again.begin(&file).await;
    let Response::Upload(resumed) = answer.msg else {
        panic!()
    };
    assert_eq!(resumed.upload_id, upload.upload_id);
    assert_eq!(missing_list(6, &answer.body), [1, 3, 4, 5]);
    // So does asking by id.
    let by_id = again
        .conn
        .call_with(
            Request::UploadResume(UploadRef {
                upload_id: upload.upload_id.clone(),
            }),
            Bytes::new(),
        )
        .await;
    assert_eq!(missing_list(6, &by_id.body), [1, 3, 4, 5]);
    // Committing early is refused, with what is missing.
    let e = error(
        again
            .conn
            .call(Request::UploadCommit(UploadCommit {
                upload_id: upload.upload_id.clone(),
                meta: None,
            }))
            .await,
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("4 of 6 chunks"), "{}", e.message);
    for i in [1, 3, 4, 5] {
        again
            .send_chunk(&upload.upload_id, i, &chunks[i as usize])
            .await;
    }
    let commit = Request::UploadCommit(UploadCommit {
        upload_id: upload.upload_id.clone(),
        meta: None,
    });
    let Response::Entry(entry) = again.ok(commit.clone()).await else {
        panic!()
    };
    assert_eq!(
        (entry.version, entry.size, entry.chunk_count),
        (1, data.len() as u64, 6)
    );
    // A retried commit answers with the same version, not a second one.
    let Response::Entry(same) = again.ok(commit).await else {
        panic!()
    };
    assert_eq!(same, entry);
    assert_eq!(
        again.get(&f.folder_id, "big.bin", &key).await.unwrap(),
        data
    );
}

#[tokio::test]
async fn chunks_that_do_not_match_are_refused() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let (f, key) = alice.folder("f").await;
    let data = content(70_000, 4);
    let file = TestFile::new(&f.folder_id, "a.bin", &data, &key);
    let (answer, chunks) = alice.begin(&file).await;
    let Response::Upload(upload) = answer.msg else {
        panic!()
    };
    let chunk = |index, sha256, body: &[u8], md5| {
        (
            Request::UploadChunk(UploadChunk {
                upload_id: upload.upload_id.clone(),
                index,
                sha256,
                md5,
            }),
            Bytes::copy_from_slice(body),
        )
    };
    let good = Sha256(coffer_crypto::content_address(&chunks[0]));
    let mut flipped = chunks[0].clone();
    flipped[40] ^= 1;
    for (request, body, code) in [
        // Bytes that do not hash to the announced SHA-256.
        (chunk(0, good, &flipped, None), ErrorCode::ChecksumMismatch),
        // A chunk hashed right, but not the one the upload announced at this index.
        (
            chunk(
                0,
                Sha256(coffer_crypto::content_address(&chunks[1])),
                &chunks[1],
                None,
            ),
            ErrorCode::ChecksumMismatch,
        ),
        // A wrong MD5 offered beside a right SHA-256.
        (
            chunk(0, good, &chunks[0], Some("00".repeat(16))),
            ErrorCode::ChecksumMismatch,
        ),
        // An index past the end.
        (chunk(9, good, &chunks[0], None), ErrorCode::BadRequest),
    ]
    .map(|((r, b), c)| (r, b, c))
    {
        let e = error(alice.conn.call_with(request, body).await.msg);
        assert_eq!(e.code, code, "{e:?}");
    }
    // The right MD5 passes.
    let md5 = {
        use md5::Digest;
        hex::encode(md5::Md5::digest(&chunks[0]))
    };
    let (request, body) = chunk(0, good, &chunks[0], Some(md5));
    assert!(matches!(
        alice.conn.call_with(request, body).await.msg,
        Response::ChunkAck(_)
    ));
}

#[tokio::test]
async fn commits_check_the_base_version() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let (f, key) = alice.folder("f").await;
    let id = f.folder_id.as_str();
    let v1 = alice
        .put(&TestFile::new(id, "notes.txt", b"one", &key))
        .await
        .unwrap();
    // Writing a path that exists, as if new, conflicts.
    let e = alice
        .put(&TestFile::new(id, "notes.txt", b"two", &key))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    let mut second = TestFile::new(id, "notes.txt", b"two", &key);
    second.base = Some(v1.vv.clone());
    let v2 = alice.put(&second).await.unwrap();
    assert_eq!(v2.version, 2);
    // Another writer still at version 1 is told the file moved on.
    let mut late = TestFile::new(id, "notes.txt", b"three", &key);
    late.base = Some(v1.vv);
    assert_eq!(
        alice.put(&late).await.unwrap_err().code,
        ErrorCode::Conflict
    );
    assert_eq!(alice.get(id, "notes.txt", &key).await.unwrap(), b"two");
}

#[tokio::test]
async fn listing_stat_history_restore_move_and_delete() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let (f, key) = alice.folder("f").await;
    let id = f.folder_id.as_str();
    alice
        .put(&TestFile::new(id, "a/b/c.txt", b"deep", &key))
        .await
        .unwrap();
    alice
        .put(&TestFile::new(id, "top.txt", b"v1", &key))
        .await
        .unwrap();
    assert!(
        matches!(alice.mkdir(id, "empty").await, Response::Entry(e) if e.kind == EntryKind::Dir)
    );
    // Parents were made; listings are by directory or recursive.
    assert_eq!(
        paths(alice.ok(list(id, None, false)).await),
        ["a", "empty", "top.txt"]
    );
    assert_eq!(paths(alice.ok(list(id, Some("a"), false)).await), ["a/b"]);
    assert_eq!(
        paths(alice.ok(list(id, None, true)).await),
        ["a", "a/b", "a/b/c.txt", "empty", "top.txt"]
    );
    alice
        .refused(list(id, Some("nowhere"), false), ErrorCode::NotFound)
        .await;
    // Pages follow the cursor.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let Response::Listing(page) = alice
            .ok(Request::List(List {
                folder_id: id.into(),
                dir: None,
                recursive: true,
                deleted: false,
                cursor: cursor.clone(),
                limit: Some(2),
            }))
            .await
        else {
            panic!()
        };
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.into_iter().map(|e| e.path));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "a/b", "a/b/c.txt", "empty", "top.txt"]);

    // History and restore.
    let Response::Entry(v1) = alice
        .ok(Request::Stat(Stat {
            folder_id: id.into(),
            path: "top.txt".into(),
            version: None,
            inline: false,
        }))
        .await
    else {
        panic!()
    };
    let mut edit = TestFile::new(id, "top.txt", b"v2!", &key);
    edit.base = Some(v1.vv.clone());
    alice.put(&edit).await.unwrap();
    let history = async |alice: &mut super::support::Client| {
        let request = Request::History(PathRef {
            folder_id: id.into(),
            path: "top.txt".into(),
        });
        let Response::History(h) = alice.ok(request).await else {
            panic!()
        };
        h.versions
            .iter()
            .map(|v| (v.version, v.size, v.deleted))
            .collect::<Vec<_>>()
    };
    assert_eq!(history(&mut alice).await, [(2, 3, false), (1, 2, false)]);
    alice
        .ok(Request::Restore(Restore {
            folder_id: id.into(),
            path: "top.txt".into(),
            version: 1,
            write_id: None,
        }))
        .await;
    assert_eq!(alice.get(id, "top.txt", &key).await.unwrap(), b"v1");
    assert_eq!(
        history(&mut alice).await,
        [(3, 2, false), (2, 3, false), (1, 2, false)]
    );

    // A move keeps the content and leaves a tombstone; a directory moves whole.
    alice
        .ok(Request::Move(Move {
            folder_id: id.into(),
            from: "a".into(),
            to: "z/moved".into(),
            base: None,
            write_id: None,
        }))
        .await;
    assert_eq!(
        alice.get(id, "z/moved/b/c.txt", &key).await.unwrap(),
        b"deep"
    );
    assert_eq!(
        alice.get(id, "a/b/c.txt", &key).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    alice
        .refused(
            Request::Move(Move {
                folder_id: id.into(),
                from: "top.txt".into(),
                to: "empty".into(),
                base: None,
                write_id: None,
            }),
            ErrorCode::Conflict,
        )
        .await;
    // Delete leaves a tombstone in history and frees the name.
    alice
        .ok(Request::Delete(Delete {
            folder_id: id.into(),
            path: "top.txt".into(),
            base: None,
            write_id: None,
        }))
        .await;
    assert_eq!(history(&mut alice).await[0], (4, 0, true));
    assert_eq!(paths(alice.ok(list(id, None, false)).await), ["empty", "z"]);
    alice
        .put(&TestFile::new(id, "top.txt", b"again", &key))
        .await
        .unwrap();
    alice
        .refused(
            Request::Delete(Delete {
                folder_id: id.into(),
                path: "missing".into(),
                base: None,
                write_id: None,
            }),
            ErrorCode::NotFound,
        )
        .await;
    // A delete the client named, sent again (its answer lost), answers the
    // tombstone it made; a name of another form is refused.
    let named = |write_id: &str| {
        Request::Delete(Delete {
            folder_id: id.into(),
            path: "top.txt".into(),
            base: None,
            write_id: Some(write_id.into()),
        })
    };
    let write_id = coffer_proto::request::upload_id([3; 16]);
    let first = alice.ok(named(&write_id)).await;
    assert_eq!(alice.ok(named(&write_id)).await, first);
    alice.refused(named("u123"), ErrorCode::BadRequest).await;
}

#[tokio::test]
async fn bad_paths_are_refused() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let (f, key) = alice.folder("f").await;
    let long = "n".repeat(300);
    for bad in [
        "../escape",
        "/etc/passwd",
        "a/../../b",
        "nul\0byte",
        "CON",
        "dir/aux.txt",
        "trailing.",
        "space ",
        &long,
        "a//b",
        "",
    ] {
        let e = alice
            .put(&TestFile::new(&f.folder_id, bad, b"x", &key))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}: {e:?}");
        assert_eq!(
            error(alice.mkdir(&f.folder_id, bad).await).code,
            ErrorCode::BadRequest,
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn single_file_shares_read_one_file_only() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let mut carol = s.user("carol").await;
    let (f, key) = alice.folder("private").await;
    let id = f.folder_id.as_str();
    alice
        .put(&TestFile::new(id, "shared.txt", b"for carol", &key))
        .await
        .unwrap();
    alice
        .put(&TestFile::new(id, "secret.txt", b"not for carol", &key))
        .await
        .unwrap();
    let Response::FileShared(shared) = alice
        .ok(Request::FileShare(FileShare {
            folder_id: id.into(),
            path: "shared.txt".into(),
            username: "carol".into(),
            wrapped_key: Blob(vec![9; 256]),
        }))
        .await
    else {
        panic!()
    };
    let Response::Shared(list) = carol.ok(Request::SharedList).await else {
        panic!()
    };
    assert_eq!(list.shares.len(), 1);
    assert_eq!(
        (
            list.shares[0].from.as_str(),
            list.shares[0].path.as_str(),
            list.shares[0].size
        ),
        ("alice", "shared.txt", 9)
    );
    let manifest = carol
        .conn
        .call_with(
            Request::SharedDownload(ShareRef {
                share_id: shared.share_id.clone(),
            }),
            Bytes::new(),
        )
        .await;
    let Response::Manifest(m) = manifest.msg else {
        panic!("{manifest:?}")
    };
    assert_eq!(m.share_key, Some(Blob(vec![9; 256])));
    let hash = Sha256(manifest.body[..32].try_into().unwrap());
    let by_share = Request::ChunkGet(ChunkGet {
        scope: Scope::Share(shared.share_id.clone()),
        hash,
    });
    assert!(matches!(
        carol
            .conn
            .call_with(by_share.clone(), Bytes::new())
            .await
            .msg,
        Response::Chunk(_)
    ));
    // Not through the folder, and not another file's chunk through the share.
    carol
        .refused(
            Request::ChunkGet(ChunkGet {
                scope: Scope::Folder(id.into()),
                hash,
            }),
            ErrorCode::NotFound,
        )
        .await;
    let download = |inline| {
        Request::Download(Stat {
            folder_id: id.into(),
            path: "secret.txt".into(),
            version: None,
            inline,
        })
    };
    let secret = alice.conn.call_with(download(false), Bytes::new()).await;
    let other = Sha256(secret.body[..32].try_into().unwrap());
    // Asked for inline, a small file's one chunk follows its address.
    assert_eq!(secret.body.len(), 32);
    let inline = alice.conn.call_with(download(true), Bytes::new()).await;
    let chunk = alice
        .conn
        .call_with(
            Request::ChunkGet(ChunkGet {
                scope: Scope::Folder(id.into()),
                hash: other,
            }),
            Bytes::new(),
        )
        .await;
    assert!(matches!(chunk.msg, Response::Chunk(_)), "{:?}", chunk.msg);
    assert_eq!(&inline.body[..32], &secret.body[..]);
    assert_eq!(&inline.body[32..], &chunk.body[..]);
    carol
        .refused(
            Request::ChunkGet(ChunkGet {
                scope: Scope::Share(shared.share_id.clone()),
                hash: other,
            }),
            ErrorCode::NotFound,
        )
        .await;
    // A stranger cannot use the share; the sharer can revoke it.
    let mut mallory = s.user("mallory").await;
    mallory.refused(by_share.clone(), ErrorCode::NotFound).await;
    alice
        .ok(Request::FileShareRevoke(ShareRef {
            share_id: shared.share_id,
        }))
        .await;
    carol.refused(by_share, ErrorCode::NotFound).await;
}

/// Waits (polling, bounded) until `done` holds.
async fn eventually(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not reached within 4 s");
}

fn chunk_files(data: &std::path::Path) -> usize {
    walk(&data.join("chunks"))
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        if e.file_name() == "tmp" {
                            0
                        } else {
                            walk(&e.path())
                        }
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn pruned_versions_and_expired_uploads_release_their_chunks() {
    let s = Harness::start_with(|c| {
        c.keep_versions = 2;
        c.collect_interval = Duration::from_millis(50);
        c.upload_ttl = Duration::from_secs(3600);
    })
    .await;
    let mut alice = s.user("alice").await;
    let (f, key) = alice.folder("f").await;
    let id = f.folder_id.as_str();
    let mut base = None;
    for (n, len) in [(1u8, 100), (2, 200), (3, 300)] {
        let data = content(len, n);
        let mut file = TestFile::new(id, "v.txt", &data, &key);
        file.base = base.take();
        base = Some(alice.put(&file).await.unwrap().vv);
    }
    // Three single-chunk versions were stored; the oldest falls out of history
    // and its chunk is collected.
    eventually(|| chunk_files(&s.data) == 2).await;
    let Response::History(h) = alice
        .ok(Request::History(PathRef {
            folder_id: id.into(),
            path: "v.txt".into(),
        }))
        .await
    else {
        panic!()
    };
    assert_eq!(
        h.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [3, 2]
    );

    // An abandoned upload keeps its chunks until it expires.
    let data = content(1000, 9);
    let file = TestFile::new(id, "abandoned.bin", &data, &key);
    let (answer, chunks) = alice.begin(&file).await;
    let Response::Upload(upload) = answer.msg else {
        panic!()
    };
    alice.send_chunk(&upload.upload_id, 0, &chunks[0]).await;
    eventually(|| chunk_files(&s.data) == 3).await;
    s.clock.advance(Duration::from_secs(3601));
    eventually(|| chunk_files(&s.data) == 2).await;
    alice
        .refused(
            Request::UploadCommit(UploadCommit {
                upload_id: upload.upload_id,
                meta: None,
            }),
            ErrorCode::NotFound,
        )
        .await;
    assert_eq!(alice.get(id, "v.txt", &key).await.unwrap(), content(300, 3));
}

#[tokio::test]
async fn a_small_file_goes_in_one_request() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let (f, key) = alice.folder("f").await;
    let id = f.folder_id.as_str();
    let data = content(100_000, 5);
    let entry = alice
        .put_inline(&TestFile::new(id, "small/one.bin", &data, &key))
        .await
        .unwrap();
    assert_eq!((entry.version, entry.chunk_count), (1, 2));
    assert_eq!(alice.get(id, "small/one.bin", &key).await.unwrap(), data);
    // The same rules as a chunked upload: an existing path needs its base.
    let e = alice
        .put_inline(&TestFile::new(id, "small/one.bin", &data, &key))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    // Bytes that do not match the list, and a body of the wrong length.
    let file = TestFile::new(id, "bad.bin", &data, &key);
    let (mut request, chunks) = file.upload_request();
    if let Request::UploadBegin(begin) = &mut request {
        begin.commit = true;
    }
    let list: Vec<u8> = chunks
        .iter()
        .flat_map(|c| coffer_crypto::content_address(c))
        .collect();
    let mut flipped = [list.clone(), chunks.concat()].concat();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let e = error(
        alice
            .conn
            .call_with(request.clone(), Bytes::from(flipped))
            .await
            .msg,
    );
    assert_eq!(e.code, ErrorCode::ChecksumMismatch);
    let short = [list, chunks.concat()].concat()[..100].to_vec();
    let e = error(alice.conn.call_with(request, Bytes::from(short)).await.msg);
    assert_eq!(e.code, ErrorCode::BadRequest);
    alice.refused(list_request(id), ErrorCode::NotFound).await;
}

fn list_request(id: &str) -> Request {
    Request::Stat(Stat {
        folder_id: id.into(),
        path: "bad.bin".into(),
        version: None,
        inline: false,
    })
}

#[tokio::test]
async fn streamed_uploads_and_chunks_named_by_reference() {
    use coffer_proto::request::UploadCommit;
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let (f, key) = alice.folder("f").await;
    let id = f.folder_id.as_str();
    let v1_data = content(3 * 65_536, 1);
    let v1 = TestFile::new(id, "doc.bin", &v1_data, &key);
    let (mut request, chunks) = v1.upload_request();
    let Request::UploadBegin(begin) = &mut request else {
        panic!()
    };
    let meta = std::mem::take(&mut begin.meta);
    // Streamed: no list, no metadata yet.
    let answer = alice.conn.call_with(request, Bytes::new()).await;
    let Response::Upload(upload) = answer.msg else {
        panic!("{answer:?}")
    };
    assert_eq!(missing_list(3, &answer.body), [0, 1, 2]);
    for (i, chunk) in chunks.iter().enumerate() {
        assert!(matches!(
            alice.send_chunk(&upload.upload_id, i as u32, chunk).await,
            Response::ChunkAck(_)
        ));
    }
    // An index keeps the chunk it got.
    assert_eq!(
        error(alice.send_chunk(&upload.upload_id, 0, &chunks[1]).await).code,
        ErrorCode::ChecksumMismatch
    );
    let commit = |meta| {
        Request::UploadCommit(UploadCommit {
            upload_id: upload.upload_id.clone(),
            meta,
        })
    };
    alice.refused(commit(None), ErrorCode::BadRequest).await;
    let Response::Entry(first) = alice.ok(commit(Some(meta))).await else {
        panic!()
    };
    assert_eq!(alice.get(id, "doc.bin", &key).await.unwrap(), v1_data);

    // Version 2 changes only the middle chunk: the others are named, not sent.
    let mut v2_data = v1_data.clone();
    v2_data[65_536 + 10] ^= 0xff;
    let mut v2 = TestFile::new(id, "doc.bin", &v2_data, &key);
    v2.base = Some(first.vv.clone());
    let (mut request, v2_chunks) = v2.upload_request();
    assert_eq!(
        (
            v2_chunks[0] == chunks[0],
            v2_chunks[1] == chunks[1],
            v2_chunks[2] == chunks[2]
        ),
        (true, false, true)
    );
    let Request::UploadBegin(begin) = &mut request else {
        panic!()
    };
    let meta = std::mem::take(&mut begin.meta);
    let Response::Upload(upload) = alice.conn.call_with(request, Bytes::new()).await.msg else {
        panic!()
    };
    for i in [0u32, 2] {
        let by_reference = Request::UploadChunk(UploadChunk {
            upload_id: upload.upload_id.clone(),
            index: i,
            sha256: Sha256(coffer_crypto::content_address(&v2_chunks[i as usize])),
            md5: None,
        });
        assert!(matches!(
            alice.conn.call_with(by_reference, Bytes::new()).await.msg,
            Response::ChunkAck(_)
        ));
    }
    // A chunk the folder does not hold cannot be named: its bytes must come.
    let unheld = Request::UploadChunk(UploadChunk {
        upload_id: upload.upload_id.clone(),
        index: 1,
        sha256: Sha256(coffer_crypto::content_address(&v2_chunks[1])),
        md5: None,
    });
    assert_eq!(
        error(alice.conn.call_with(unheld, Bytes::new()).await.msg).code,
        ErrorCode::NotFound
    );
    alice.send_chunk(&upload.upload_id, 1, &v2_chunks[1]).await;
    alice
        .ok(Request::UploadCommit(UploadCommit {
            upload_id: upload.upload_id,
            meta: Some(meta),
        }))
        .await;
    assert_eq!(alice.get(id, "doc.bin", &key).await.unwrap(), v2_data);
}

#[tokio::test]
async fn a_listing_of_long_paths_is_paged_to_fit_the_header_limit() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let (f, _) = alice.folder("f").await;
    let id = f.folder_id.as_str();
    // 40 directories with 3,000-byte paths: about 120 KB of listing, more
    // than one 64 KiB header holds.
    let long = |i: usize| format!("{}/{i:03}", vec!["d".repeat(200); 14].join("/"));
    for i in 0..40 {
        alice
            .ok(Request::Mkdir(PathRef {
                folder_id: id.into(),
                path: long(i),
            }))
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let request = Request::List(List {
            folder_id: id.into(),
            dir: None,
            recursive: true,
            deleted: false,
            cursor: cursor.take(),
            limit: None,
        });
        let Response::Listing(page) = alice.ok(request).await else {
            panic!()
        };
        pages += 1;
        seen.extend(page.entries.into_iter().map(|e| e.path));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert!(pages >= 2, "{pages} pages");
    for i in 0..40 {
        assert!(seen.contains(&long(i)), "{i} missing");
    }
    assert_eq!(
        seen.len(),
        40 + 14,
        "the 40 and their 14 parents, once each"
    );
}
