//! Pushed events: live to subscribers, caught up from a cursor after being
//! offline, and only for folders the subscriber belongs to.

use coffer_proto::event::{Change, MemberChange};
use coffer_proto::request::{Delete, FolderShare, FolderUnshare, Move, Subscribe};
use coffer_proto::types::{Blob, EpochKey, MemberKey, Role};
use coffer_proto::{Event, Request, Response};

use super::support::{Client, Harness, Identity, TestFile};

async fn subscribe(client: &mut Client, cursor: Option<String>) -> String {
    let Response::Subscribed(s) = client.ok(Request::Subscribe(Subscribe { cursor })).await else {
        panic!()
    };
    s.cursor
}

/// Events until `caught_up`, which is returned last.
async fn until_caught_up(client: &mut Client) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let event = client.conn.event().await;
        let done = matches!(event, Event::CaughtUp(_));
        events.push(event);
        if done {
            return events;
        }
    }
}

fn file_change(event: &Event) -> (Change, String) {
    match event {
        Event::FileChanged(e) => (e.change, e.path.clone()),
        other => panic!("expected a file change, got {other:?}"),
    }
}

async fn invite(alice: &mut Client, folder_id: &str, who: &str) {
    alice
        .ok(Request::FolderShare(FolderShare {
            folder_id: folder_id.into(),
            username: who.into(),
            role: Role::Editor,
            keys: vec![EpochKey {
                epoch: 1,
                wrapped_key: Blob(vec![1; 256]),
            }],
        }))
        .await;
}

#[tokio::test]
async fn members_see_changes_live_and_strangers_do_not() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let mut mallory = s.user("mallory").await;
    let (f, key) = alice.folder("team").await;
    let id = f.folder_id.as_str();
    let mut carol = s.user("carol").await;
    subscribe(&mut carol, None).await;
    until_caught_up(&mut carol).await;
    invite(&mut alice, id, "bob").await;
    invite(&mut alice, id, "carol").await;
    let Event::Invited(invited) = carol.conn.event().await else {
        panic!()
    };
    assert_eq!(
        (
            invited.invite.folder_id.as_str(),
            invited.invite.from.as_str()
        ),
        (id, "alice")
    );
    bob.ok(Request::InviteAccept(coffer_proto::request::FolderRef {
        folder_id: id.into(),
    }))
    .await;

    subscribe(&mut bob, None).await;
    until_caught_up(&mut bob).await;
    subscribe(&mut mallory, None).await;
    until_caught_up(&mut mallory).await;

    alice
        .put(&TestFile::new(id, "dir/a.txt", b"a", &key))
        .await
        .unwrap();
    // The parent directory first, then the file.
    assert_eq!(
        file_change(&bob.conn.event().await),
        (Change::Created, "dir".into())
    );
    let created = bob.conn.event().await;
    assert_eq!(file_change(&created), (Change::Created, "dir/a.txt".into()));
    alice
        .ok(Request::Move(Move {
            folder_id: id.into(),
            from: "dir/a.txt".into(),
            to: "b.txt".into(),
            base: None,
            write_id: None,
        }))
        .await;
    let Event::FileChanged(moved) = bob.conn.event().await else {
        panic!()
    };
    assert_eq!(
        (moved.change, moved.path.as_str(), moved.from.as_deref()),
        (Change::Moved, "b.txt", Some("dir/a.txt"))
    );
    alice
        .ok(Request::Delete(Delete {
            folder_id: id.into(),
            path: "b.txt".into(),
            base: None,
            write_id: None,
        }))
        .await;
    assert_eq!(
        file_change(&bob.conn.event().await),
        (Change::Deleted, "b.txt".into())
    );

    // Mallory, who is in no folder of alice's, heard nothing: the next thing
    // she hears is about her own folder.
    mallory.folder("mine").await;
    let Event::MemberChanged(own) = mallory.conn.event().await else {
        panic!()
    };
    assert_eq!(
        (own.username.as_str(), own.change),
        ("mallory", MemberChange::Joined)
    );
}

#[tokio::test]
async fn an_offline_device_catches_up_from_its_cursor() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let (f, key) = alice.folder("f").await;
    let id = f.folder_id.as_str();
    let mut phone = s.client().await;
    phone.login(Identity::new("alice")).await;
    let cursor = subscribe(&mut phone, None).await;
    until_caught_up(&mut phone).await;
    drop(phone);

    for (i, path) in ["one.txt", "two.txt", "three.txt"].into_iter().enumerate() {
        alice
            .put(&TestFile::new(id, path, &[i as u8; 10], &key))
            .await
            .unwrap();
    }

    let mut phone = s.client().await;
    phone.login(Identity::new("alice")).await;
    subscribe(&mut phone, Some(cursor)).await;
    let events = until_caught_up(&mut phone).await;
    let changes: Vec<_> = events[..events.len() - 1].iter().map(file_change).collect();
    assert_eq!(
        changes,
        [
            (Change::Created, "one.txt".to_owned()),
            (Change::Created, "two.txt".to_owned()),
            (Change::Created, "three.txt".to_owned())
        ]
    );
    // The caught-up cursor is the last event's; resubscribing from it replays nothing.
    let Event::CaughtUp(done) = events.last().unwrap() else {
        panic!()
    };
    let Event::FileChanged(last) = &events[events.len() - 2] else {
        panic!()
    };
    assert_eq!(done.cursor, last.cursor);
    subscribe(&mut phone, Some(done.cursor.clone())).await;
    assert_eq!(until_caught_up(&mut phone).await.len(), 1);
    // A cursor that is not one of ours is refused.
    let e = super::support::error(
        phone
            .conn
            .call(Request::Subscribe(Subscribe {
                cursor: Some("yesterday".into()),
            }))
            .await,
    );
    assert_eq!(e.code, coffer_proto::ErrorCode::BadRequest);
}

#[tokio::test]
async fn a_removed_member_is_told_and_then_hears_nothing_more() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let (f, key) = alice.folder("f").await;
    let id = f.folder_id.as_str();
    invite(&mut alice, id, "bob").await;
    bob.ok(Request::InviteAccept(coffer_proto::request::FolderRef {
        folder_id: id.into(),
    }))
    .await;
    subscribe(&mut bob, None).await;
    until_caught_up(&mut bob).await;
    alice
        .ok(Request::FolderUnshare(FolderUnshare {
            folder_id: id.into(),
            username: "bob".into(),
            epoch: 2,
            keys: vec![MemberKey {
                username: "alice".into(),
                wrapped_key: Blob(vec![2; 256]),
            }],
        }))
        .await;
    let Event::MemberChanged(removed) = bob.conn.event().await else {
        panic!()
    };
    assert_eq!(
        (removed.username.as_str(), removed.change),
        ("bob", MemberChange::Removed)
    );
    let mut fresh = TestFile::new(id, "after.txt", b"x", &key);
    fresh.epoch = 2;
    alice.put(&fresh).await.unwrap();
    // The next event bob hears is about his own new folder, not alice's file.
    bob.folder("bobs").await;
    let Event::MemberChanged(own) = bob.conn.event().await else {
        panic!()
    };
    assert_ne!(own.folder_id, id);
}
