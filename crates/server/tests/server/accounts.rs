//! Accounts, sessions, tokens, devices, admin, rate limits.

use std::time::Duration;

use coffer_proto::event::EndReason;
use coffer_proto::request::{
    Auth, DeviceRegister, DeviceRemove, DeviceRename, Login, PublicKeyGet, SessionRevoke,
    UserDisable,
};
use coffer_proto::types::{LoginSecret, Sha256, Token, UserRole};
use coffer_proto::{ErrorCode, Event, Request, Response};

use super::support::{Harness, Identity, error, hello};

fn login(name: &str, secret: LoginSecret) -> Request {
    Request::Login(Login {
        username: name.into(),
        login_secret: secret,
        device_id: None,
    })
}

#[tokio::test]
async fn register_login_whoami_and_the_first_user_is_admin() {
    let s = Harness::start().await;
    let mut alice = s.user("Alice").await;
    let Response::Whoami(me) = alice.ok(Request::Whoami).await else {
        panic!()
    };
    assert_eq!(
        (me.username.as_str(), me.role, me.node_id.as_str()),
        ("alice", UserRole::Admin, "node-1")
    );
    let mut bob = s.user("bob").await;
    let Response::Whoami(me) = bob.ok(Request::Whoami).await else {
        panic!()
    };
    assert_eq!(me.role, UserRole::User);

    // The same registration again (a client retrying) is answered as the
    // first was; another with the name is refused.
    let mut again = s.client().await;
    let answer = again.conn.call(Identity::new("Alice").register()).await;
    assert!(
        matches!(&answer, Response::Registered(r) if r.username == "alice" && r.role == UserRole::Admin),
        "{answer:?}"
    );
    // Usernames are case-insensitive: "ALICE" is taken.
    let mut c = s.client().await;
    let e = error(c.conn.call(Identity::new("ALICE").register()).await);
    assert_eq!(e.code, ErrorCode::Conflict);
    // Names outside the rules.
    for bad in ["ab", "a b", &"x".repeat(33), "é-user"] {
        let e = error(c.conn.call(Identity::new(bad).register()).await);
        assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}");
    }
}

#[tokio::test]
async fn wrong_password_is_401_unknown_user_404_and_failures_are_rate_limited() {
    let s = Harness::start_with(|c| {
        c.login_failures_per_user = 3;
        c.login_failures_per_address = 1000;
    })
    .await;
    let alice = Identity::new("alice");
    s.user("alice").await;
    s.user("bob").await;
    let mut c = s.client().await;
    let wrong = LoginSecret(Sha256([0; 32]));
    let e = error(c.conn.call(login("alice", wrong)).await);
    assert_eq!((e.code, e.status), (ErrorCode::Unauthorized, 401));
    let e = error(c.conn.call(login("nobody", wrong)).await);
    assert_eq!((e.code, e.status), (ErrorCode::NotFound, 404));
    // Two more failures reach the limit for alice: then even the right
    // password is refused until the window passes…
    for _ in 0..2 {
        error(c.conn.call(login("alice", wrong)).await);
    }
    let e = error(c.conn.call(login("alice", alice.secret())).await);
    assert_eq!((e.code, e.status), (ErrorCode::RateLimited, 429));
    // …while bob still logs in.
    let bob = Identity::new("bob");
    assert!(matches!(
        c.conn.call(login("bob", bob.secret())).await,
        Response::Session(_)
    ));
}

#[tokio::test]
async fn tokens_open_sessions_on_other_connections_until_revoked() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let token = alice.token();

    let mut other = s.client().await;
    let Response::Session(session) = other
        .conn
        .call(Request::Auth(Auth {
            token: token.clone(),
        }))
        .await
    else {
        panic!()
    };
    assert_eq!(session.username, "alice");
    assert!(matches!(
        other.conn.call(Request::Whoami).await,
        Response::Whoami(_)
    ));

    // Forged and garbage tokens.
    let mut stranger = s.client().await;
    let mut forged = token.expose().to_owned();
    forged.replace_range(5..6, if &forged[5..6] == "A" { "B" } else { "A" });
    for bad in [Token(forged), Token("v1.x.y".into()), Token(String::new())] {
        let e = error(stranger.conn.call(Request::Auth(Auth { token: bad })).await);
        assert_eq!(e.code, ErrorCode::Unauthorized);
    }

    // Two sessions listed; revoking the first ends it everywhere.
    let mut second = s.client().await;
    second.login(Identity::new("alice")).await;
    let Response::Sessions(list) = alice.ok(Request::SessionList).await else {
        panic!()
    };
    assert_eq!(list.sessions.len(), 2);
    assert_eq!(list.sessions.iter().filter(|s| s.current).count(), 1);
    let first = list
        .sessions
        .iter()
        .find(|s| s.current)
        .unwrap()
        .session_id
        .clone();
    second
        .ok(Request::SessionRevoke(SessionRevoke {
            session_id: first.clone(),
        }))
        .await;
    // Every connection of the revoked session is told, then closed.
    for conn in [&mut alice, &mut other] {
        let ended = conn.conn.event().await;
        assert!(
            matches!(&ended, Event::SessionEnded(e) if e.session_id == first && e.reason == EndReason::Revoked)
        );
        assert!(conn.conn.inner.recv::<Response>().await.unwrap().is_none());
    }
    let e = error(stranger.conn.call(Request::Auth(Auth { token })).await);
    assert_eq!(e.code, ErrorCode::Unauthorized);
    assert!(matches!(
        second.conn.call(Request::Whoami).await,
        Response::Whoami(_)
    ));

    // Logout ends the current session.
    second.ok(Request::Logout).await;
    assert_eq!(
        error(second.conn.call(Request::Whoami).await).code,
        ErrorCode::Unauthorized
    );
}

#[tokio::test]
async fn sessions_expire_and_refresh_extends_them() {
    let s = Harness::start_with(|c| c.session_ttl = Duration::from_secs(60)).await;
    let mut alice = s.user("alice").await;
    s.clock.advance(Duration::from_secs(40));
    let Response::Session(renewed) = alice.ok(Request::Refresh).await else {
        panic!()
    };
    s.clock.advance(Duration::from_secs(40));
    // 80 s after login, the refreshed session lives on.
    assert!(matches!(
        alice.conn.call(Request::Whoami).await,
        Response::Whoami(_)
    ));
    let mut other = s.client().await;
    assert!(matches!(
        other
            .conn
            .call(Request::Auth(Auth {
                token: renewed.token.clone()
            }))
            .await,
        Response::Session(_)
    ));
    s.clock.advance(Duration::from_secs(61));
    assert_eq!(
        error(alice.conn.call(Request::Whoami).await).code,
        ErrorCode::Unauthorized
    );
    let e = error(
        s.client()
            .await
            .conn
            .call(Request::Auth(Auth {
                token: renewed.token,
            }))
            .await,
    );
    assert_eq!(e.code, ErrorCode::Unauthorized);
}

/// A registration and a creation named by the client's write id: sent
/// again, the device or folder made the first time; the same id from
/// another user names another device; a write id of the wrong form is
/// refused; sent again once the device is removed, refused.
#[tokio::test]
async fn named_creations_sent_again_answer_what_they_made() {
    use coffer_proto::request::{FolderCreate, upload_id};
    use coffer_proto::types::Blob;

    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let device = |write_id: String| {
        Request::DeviceRegister(DeviceRegister {
            name: "laptop".into(),
            mac: "aa:bb:cc:dd:ee:01".into(),
            write_id: Some(write_id),
        })
    };
    let named = upload_id([9; 16]);
    let Response::Device(first) = alice.ok(device(named.clone())).await else {
        panic!()
    };
    // Renamed, then sent again: the device, as it is now.
    alice
        .ok(Request::DeviceRename(DeviceRename {
            device_id: first.device_id.clone(),
            name: "desk".into(),
        }))
        .await;
    let Response::Device(again) = alice.ok(device(named.clone())).await else {
        panic!()
    };
    assert_eq!(
        (&again.device_id, again.name.as_str()),
        (&first.device_id, "desk")
    );
    let Response::Device(bobs) = bob.ok(device(named.clone())).await else {
        panic!()
    };
    assert_ne!(bobs.device_id, first.device_id);
    alice
        .refused(device("u123".into()), ErrorCode::BadRequest)
        .await;
    let create = Request::FolderCreate(FolderCreate {
        label: "docs".into(),
        wrapped_key: Blob(vec![3; 256]),
        write_id: Some(upload_id([8; 16])),
    });
    let Response::Folder(made) = alice.ok(create.clone()).await else {
        panic!()
    };
    assert_eq!(alice.ok(create).await, Response::Folder(made));
    alice
        .ok(Request::DeviceRemove(DeviceRemove {
            device_id: first.device_id.clone(),
        }))
        .await;
    // The removal ended the session on that device: a new one.
    let mut alice = s.client().await;
    alice.login(Identity::new("alice")).await;
    alice.refused(device(named), ErrorCode::Conflict).await;
}

#[tokio::test]
async fn devices_are_unique_per_user_by_name_and_mac() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let laptop = alice.device("laptop", "AA-BB-CC-DD-EE-01").await;
    let Response::Whoami(me) = alice.ok(Request::Whoami).await else {
        panic!()
    };
    assert_eq!(
        (me.device_id.as_deref(), me.device_name.as_deref()),
        (Some(laptop.as_str()), Some("laptop"))
    );
    // Registered again with its name and MAC (the request sent again, or the
    // machine set up anew): the same device.
    assert_eq!(alice.device("laptop", "aa:bb:cc:dd:ee:01").await, laptop);
    for (name, mac) in [
        ("laptop", "aa:bb:cc:dd:ee:02"),
        ("phone", "aa:bb:cc:dd:ee:01"),
    ] {
        alice
            .refused(
                Request::DeviceRegister(DeviceRegister {
                    name: name.into(),
                    mac: mac.into(),
                    write_id: None,
                }),
                ErrorCode::Conflict,
            )
            .await;
    }
    alice
        .refused(
            Request::DeviceRegister(DeviceRegister {
                name: "x".into(),
                mac: "not-a-mac".into(),
                write_id: None,
            }),
            ErrorCode::BadRequest,
        )
        .await;
    // Another user may reuse both.
    let mut bob = s.user("bob").await;
    bob.device("laptop", "aa:bb:cc:dd:ee:01").await;
    // Bob cannot touch alice's device.
    bob.refused(
        Request::DeviceRename(DeviceRename {
            device_id: laptop.clone(),
            name: "mine".into(),
        }),
        ErrorCode::NotFound,
    )
    .await;
    bob.refused(
        Request::DeviceRemove(DeviceRemove {
            device_id: laptop.clone(),
        }),
        ErrorCode::NotFound,
    )
    .await;
    let Response::Device(d) = alice
        .ok(Request::DeviceRename(DeviceRename {
            device_id: laptop.clone(),
            name: "old laptop".into(),
        }))
        .await
    else {
        panic!()
    };
    assert_eq!(d.name, "old laptop");

    // Removing the device ends the sessions running on it.
    let mut phone = s.client().await;
    phone.login(Identity::new("alice")).await;
    phone.device("phone", "aa:bb:cc:dd:ee:03").await;
    let remove = Request::DeviceRemove(DeviceRemove {
        device_id: laptop.clone(),
    });
    phone.ok(remove.clone()).await;
    let ended = alice.conn.event().await;
    assert!(
        matches!(&ended, Event::SessionEnded(e) if e.reason == EndReason::DeviceRemoved),
        "{ended:?}"
    );
    assert!(alice.conn.inner.recv::<Response>().await.unwrap().is_none());
    // The removal sent again (its answer lost) is done; for another user
    // the device is still unknown.
    phone.ok(remove.clone()).await;
    bob.refused(remove, ErrorCode::NotFound).await;
    let Response::Devices(list) = phone.ok(Request::DeviceList).await else {
        panic!()
    };
    assert_eq!(list.devices.len(), 1);
}

#[tokio::test]
async fn admins_list_users_and_disable_accounts() {
    let s = Harness::start_with(|c| c.admin = Some("Carol".into())).await;
    let mut alice = s.user("alice").await;
    let mut carol = s.user("carol").await;
    // With an admin configured, the first user is not admin.
    alice.refused(Request::UserList, ErrorCode::Forbidden).await;
    let Response::Users(users) = carol.ok(Request::UserList).await else {
        panic!()
    };
    assert_eq!(
        users
            .users
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        ["alice", "carol"]
    );
    carol
        .ok(Request::UserDisable(UserDisable {
            username: "alice".into(),
            disabled: true,
        }))
        .await;
    let ended = alice.conn.event().await;
    assert!(
        matches!(&ended, Event::SessionEnded(e) if e.reason == EndReason::AccountDisabled),
        "{ended:?}"
    );
    let mut again = s.client().await;
    let e = error(
        again
            .conn
            .call(login("alice", Identity::new("alice").secret()))
            .await,
    );
    assert_eq!(e.code, ErrorCode::Forbidden);
    carol
        .ok(Request::UserDisable(UserDisable {
            username: "alice".into(),
            disabled: false,
        }))
        .await;
    again.login(Identity::new("alice")).await;
}

#[tokio::test]
async fn keys_are_stored_opaque_and_private_keys_go_to_their_owner_only() {
    let s = Harness::start().await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let Response::PublicKey(pk) = bob
        .ok(Request::PublicKeyGet(PublicKeyGet {
            username: "Alice".into(),
        }))
        .await
    else {
        panic!()
    };
    let identity = Identity::new("alice");
    assert_eq!(pk.public_key.0, identity.keys.public().to_der());
    let Response::PrivateKey(private) = alice.ok(Request::PrivateKeyGet).await else {
        panic!()
    };
    // What the server returns unwraps with alice's password, and only with it.
    let kdf = coffer_crypto::KdfParams {
        m_cost_kib: private.kdf.m_cost_kib,
        t_cost: private.kdf.t_cost,
        p_cost: private.kdf.p_cost,
        salt: private.kdf.salt.0.clone(),
    };
    let keys = coffer_crypto::UserKeys::unwrap(
        private.wrapped_private_key.as_bytes(),
        "alice",
        "pw-alice",
        &kdf,
    )
    .unwrap();
    assert_eq!(keys.public(), identity.keys.public());
    bob.refused(
        Request::PublicKeyGet(PublicKeyGet {
            username: "nobody".into(),
        }),
        ErrorCode::NotFound,
    )
    .await;
    // Before logging in, none of this.
    let mut anon = s.client().await;
    assert_eq!(
        error(anon.conn.call(Request::PrivateKeyGet).await).code,
        ErrorCode::Unauthorized
    );
    let _ = hello();
}

/// Everything the server binary logs, at the most verbose level and as JSON,
/// while users register, log in, use tokens and upload: no token, login
/// secret or password appears in it.
#[tokio::test]
async fn secrets_never_reach_the_logs() {
    use std::path::Path;

    use coffer_conformance::Process;

    use super::support::{Client, Conn, TestFile};

    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("server.log");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--bcrypt-cost",
        "4",
        "--log-format",
        "json",
        "--data",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([data.path().join("d").display().to_string()])
    .collect();
    let server = Process::start_with(
        Path::new(env!("CARGO_BIN_EXE_coffer-server")),
        args,
        &[("COFFER_LOG", "trace")],
        Some(&log_path),
    )
    .unwrap();
    let ca = data.path().join("d/tls/ca.pem");
    let client = async || {
        let mut conn = Conn::open(server.addr(), &ca).await;
        conn.call(hello()).await;
        Client { conn, user: None }
    };
    let identity = Identity::new("alice");
    let mut alice = client().await;
    alice.ok(identity.register()).await;
    alice.login(Identity::new("alice")).await;
    let token = alice.token();
    let mut other = client().await;
    other
        .conn
        .call(Request::Auth(Auth {
            token: token.clone(),
        }))
        .await;
    let wrong = LoginSecret(Sha256([0x5a; 32]));
    other.conn.call(login("alice", wrong)).await;
    let (f, key) = alice.folder("f").await;
    alice
        .put(&TestFile::new(&f.folder_id, "a.txt", b"plaintext", &key))
        .await
        .unwrap();
    drop((alice, other, server));

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("upload_commit"),
        "the log records requests: {log}"
    );
    let secrets = [
        token.expose().to_owned(),
        token.expose().split('.').nth(2).unwrap().to_owned(),
        identity.secret().0.to_hex(),
        wrong.0.to_hex(),
        identity.password.clone(),
    ];
    for secret in secrets {
        assert!(!log.contains(&secret), "a secret reached the log");
    }
}
