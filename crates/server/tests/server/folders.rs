//! Folders, invitations, roles and key rotation: the sharing story.

use coffer_proto::request::{FolderRef, FolderSetRole, FolderShare, FolderUnshare, List};
use coffer_proto::types::{Blob, EpochKey, MemberKey, MemberStatus, Role};
use coffer_proto::{ErrorCode, Request, Response};

use super::support::{Harness, Identity, TestFile, content, error};

fn folder_ref(id: &str) -> FolderRef {
    FolderRef {
        folder_id: id.into(),
    }
}

fn list(id: &str) -> Request {
    Request::List(List {
        folder_id: id.into(),
        dir: None,
        recursive: true,
        deleted: false,
        cursor: None,
        limit: None,
    })
}

#[tokio::test]
async fn the_whole_sharing_story() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let (team, key) = alice.folder("team").await;
    let id = team.folder_id.as_str();
    assert_eq!((team.role, team.epoch), (Role::Owner, 1));
    alice
        .put(&TestFile::new(
            id,
            "docs/plan.txt",
            &content(150_000, 1),
            &key,
        ))
        .await
        .unwrap();

    // A stranger learns nothing about the folder, not even that it exists.
    bob.refused(list(id), ErrorCode::NotFound).await;
    bob.refused(Request::FolderInfo(folder_ref(id)), ErrorCode::NotFound)
        .await;
    let Response::Folders(none) = bob.ok(Request::FolderList).await else {
        panic!()
    };
    assert!(none.folders.is_empty());

    // Alice invites bob as a viewer, with the folder key wrapped for him.
    let bob_id = Identity::new("bob");
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(5);
    let for_bob = bob_id.keys.public().wrap_folder_key(&mut rng, &key);
    let share = |role| {
        Request::FolderShare(FolderShare {
            folder_id: id.into(),
            username: "bob".into(),
            role,
            keys: vec![EpochKey {
                epoch: 1,
                wrapped_key: Blob(for_bob.clone()),
            }],
        })
    };
    // Not as owner, not with a missing epoch, not by a non-owner.
    alice
        .refused(share(Role::Owner), ErrorCode::BadRequest)
        .await;
    alice
        .refused(
            Request::FolderShare(FolderShare {
                folder_id: id.into(),
                username: "bob".into(),
                role: Role::Viewer,
                keys: vec![],
            }),
            ErrorCode::BadRequest,
        )
        .await;
    alice.ok(share(Role::Viewer)).await;
    // Sent again (its answer lost, or `unavailable`), it is the same
    // invitation, done; another invitation of bob, with keys of its own, is
    // refused.
    alice.ok(share(Role::Viewer)).await;
    alice
        .refused(
            Request::FolderShare(FolderShare {
                folder_id: id.into(),
                username: "bob".into(),
                role: Role::Viewer,
                keys: vec![EpochKey {
                    epoch: 1,
                    wrapped_key: Blob(bob_id.keys.public().wrap_folder_key(&mut rng, &key)),
                }],
            }),
            ErrorCode::Conflict,
        )
        .await;

    // The invitation waits for bob; until he accepts he has no access.
    let Response::Invites(invites) = bob.ok(Request::InviteList).await else {
        panic!()
    };
    assert_eq!(invites.invites.len(), 1);
    assert_eq!(
        (invites.invites[0].from.as_str(), invites.invites[0].role),
        ("alice", Role::Viewer)
    );
    bob.refused(list(id), ErrorCode::NotFound).await;
    let Response::Folder(joined) = bob.ok(Request::InviteAccept(folder_ref(id))).await else {
        panic!()
    };
    assert_eq!(joined.role, Role::Viewer);
    // Accepted again: the same answer.
    assert_eq!(
        bob.ok(Request::InviteAccept(folder_ref(id))).await,
        Response::Folder(joined)
    );

    // Bob reads; the key alice wrapped for him opens the file.
    let Response::FolderKeys(keys) = bob.ok(Request::FolderKeys(folder_ref(id))).await else {
        panic!()
    };
    let unwrapped = bob_id
        .keys
        .unwrap_folder_key(&mut rng, keys.keys[0].wrapped_key.as_bytes())
        .unwrap();
    assert_eq!(
        bob.get(id, "docs/plan.txt", &unwrapped).await.unwrap(),
        content(150_000, 1)
    );

    // A viewer cannot write.
    let e = bob
        .put(&TestFile::new(id, "bob.txt", b"hi", &unwrapped))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert_eq!(e.message, "bob is a viewer of \"team\"");
    assert_eq!(error(bob.mkdir(id, "x").await).code, ErrorCode::Forbidden);

    // Promoted to editor, he can.
    alice
        .ok(Request::FolderSetRole(FolderSetRole {
            folder_id: id.into(),
            username: "bob".into(),
            role: Role::Editor,
        }))
        .await;
    bob.put(&TestFile::new(id, "bob.txt", b"hi", &unwrapped))
        .await
        .unwrap();

    let Response::FolderDetail(detail) = alice.ok(Request::FolderInfo(folder_ref(id))).await else {
        panic!()
    };
    let members: Vec<_> = detail
        .members
        .iter()
        .map(|m| (m.username.as_str(), m.role, m.status))
        .collect();
    assert_eq!(
        members,
        [
            ("alice", Role::Owner, MemberStatus::Active),
            ("bob", Role::Editor, MemberStatus::Active)
        ]
    );

    // Unshare: bob goes, the key rotates; the new key is wrapped for the
    // remaining members, exactly.
    let new_key = coffer_crypto::FolderKey::generate(&mut rng);
    let alice_id = Identity::new("alice");
    let rotation = |epoch, keys| {
        Request::FolderUnshare(FolderUnshare {
            folder_id: id.into(),
            username: "bob".into(),
            epoch,
            keys,
        })
    };
    let for_alice = MemberKey {
        username: "alice".into(),
        wrapped_key: Blob(alice_id.keys.public().wrap_folder_key(&mut rng, &new_key)),
    };
    alice
        .refused(rotation(3, vec![for_alice.clone()]), ErrorCode::Conflict)
        .await;
    alice
        .refused(
            rotation(
                2,
                vec![
                    for_alice.clone(),
                    MemberKey {
                        username: "bob".into(),
                        wrapped_key: Blob(vec![1; 256]),
                    },
                ],
            ),
            ErrorCode::BadRequest,
        )
        .await;
    let Response::Folder(rotated) = alice.ok(rotation(2, vec![for_alice.clone()])).await else {
        panic!()
    };
    assert_eq!(rotated.epoch, 2);
    // Sent again, the rotation is done: the same folder, still at epoch 2;
    // another removal of bob, bringing epoch 2 under another key, finds him
    // gone.
    assert_eq!(
        alice.ok(rotation(2, vec![for_alice])).await,
        Response::Folder(rotated)
    );
    alice
        .refused(
            rotation(
                2,
                vec![MemberKey {
                    username: "alice".into(),
                    wrapped_key: Blob(alice_id.keys.public().wrap_folder_key(&mut rng, &new_key)),
                }],
            ),
            ErrorCode::NotFound,
        )
        .await;
    bob.refused(list(id), ErrorCode::NotFound).await;

    // The server refuses new content under the old key…
    let mut stale = TestFile::new(id, "after.txt", b"new", &key);
    stale.epoch = 1;
    assert_eq!(
        alice.put(&stale).await.unwrap_err().code,
        ErrorCode::Conflict
    );
    // …and takes it under the new one.
    let mut fresh = TestFile::new(id, "after.txt", b"new", &new_key);
    fresh.epoch = 2;
    alice.put(&fresh).await.unwrap();
    assert_eq!(alice.get(id, "after.txt", &new_key).await.unwrap(), b"new");

    // The owner cannot be removed, nor leave.
    alice
        .refused(
            Request::FolderUnshare(FolderUnshare {
                folder_id: id.into(),
                username: "alice".into(),
                epoch: 3,
                keys: vec![],
            }),
            ErrorCode::Forbidden,
        )
        .await;
    alice
        .refused(Request::FolderLeave(folder_ref(id)), ErrorCode::Forbidden)
        .await;
}

#[tokio::test]
async fn invitations_can_be_declined_and_members_can_leave() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let (f, _) = alice.folder("shared").await;
    let invite = Request::FolderShare(FolderShare {
        folder_id: f.folder_id.clone(),
        username: "bob".into(),
        role: Role::Editor,
        keys: vec![EpochKey {
            epoch: 1,
            wrapped_key: Blob(vec![7; 256]),
        }],
    });
    let mut carol = s.user("carol").await;
    let decline = Request::InviteDecline(folder_ref(&f.folder_id));
    let leave = Request::FolderLeave(folder_ref(&f.folder_id));
    alice.ok(invite.clone()).await;
    bob.ok(decline.clone()).await;
    // Sent again (its answer lost), a decline is done; from someone never
    // invited it is not found, as before.
    bob.ok(decline.clone()).await;
    carol.refused(decline, ErrorCode::NotFound).await;
    bob.refused(
        Request::InviteAccept(folder_ref(&f.folder_id)),
        ErrorCode::NotFound,
    )
    .await;
    alice.ok(invite).await;
    bob.ok(Request::InviteAccept(folder_ref(&f.folder_id)))
        .await;
    bob.ok(leave.clone()).await;
    bob.refused(list(&f.folder_id), ErrorCode::NotFound).await;
    // So is a leave.
    bob.ok(leave.clone()).await;
    carol.refused(leave, ErrorCode::NotFound).await;
    // Inviting someone who does not exist.
    alice
        .refused(
            Request::FolderShare(FolderShare {
                folder_id: f.folder_id.clone(),
                username: "nobody".into(),
                role: Role::Viewer,
                keys: vec![],
            }),
            ErrorCode::NotFound,
        )
        .await;
    // Labels are unique per owner, not across owners.
    let create = |label: &str, key: u8| {
        Request::FolderCreate(coffer_proto::request::FolderCreate {
            label: label.into(),
            wrapped_key: Blob(vec![key; 256]),
            write_id: None,
        })
    };
    alice
        .refused(create("shared", 1), ErrorCode::Conflict)
        .await;
    bob.folder("shared").await;
    // A folder made, asked for again with its own key (the request sent
    // again), is the same folder; with another key, a clash.
    let made = alice.ok(create("again", 2)).await;
    assert_eq!(alice.ok(create("again", 2)).await, made);
    alice.refused(create("again", 3), ErrorCode::Conflict).await;
}
