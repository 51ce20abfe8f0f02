//! Accounts, sessions, keys and the event subscription.

use coffer_proto::request::{
    Auth, KeysPublish, Login, PublicKeyGet, Register, SessionRevoke, Subscribe, UserDisable,
};
use coffer_proto::response::{
    Pong, PrivateKey, PublicKey, Session as SessionResponse, Sessions, Subscribed, Users, Whoami,
};
use coffer_proto::types::{Blob, Kdf, UserRole};
use coffer_proto::{ErrorCode, Response, name};

use super::{Answer, answer, unexpected};
use crate::Server;
use crate::auth::{self, Claims};
use crate::dispatch::{Session, SignedIn};
use crate::error::{Error, Result, bad_request, forbidden, not_found, unauthorized};
use crate::store::{Applied, Change, query};
use coffer_net::blocking;

/// Largest public key accepted (an RSA-2048 SubjectPublicKeyInfo is 294 bytes).
const MAX_PUBLIC_KEY: usize = 2048;
/// Largest wrapped private key accepted.
const MAX_WRAPPED_PRIVATE_KEY: usize = 8192;

pub(super) async fn ping(server: &Server) -> Answer {
    let now = server.clock.now_ms();
    let mut peers = std::collections::BTreeMap::new();
    if server.membership.len() > 1 {
        let held = server.store.cursors().await?;
        let linked = server.outbox.linked();
        for (peer, _) in server.membership.peers() {
            let (behind_records, behind_ms) = server.followers.behind(peer, &held, now);
            peers.insert(
                peer.to_owned(),
                coffer_proto::response::PeerLag {
                    linked: linked.iter().any(|l| l == peer),
                    caught_up: server.outbox.caught_up_with(peer),
                    behind_records,
                    behind_ms,
                },
            );
        }
    }
    answer(Response::Pong(Pong {
        ready: server.ready(),
        node_id: server.config.node_id.clone(),
        time_ms: now,
        peers,
    }))
}

fn check_keys(public_key: &Blob, wrapped_private_key: &Blob, kdf: &Kdf) -> Result<()> {
    if public_key.0.is_empty() || public_key.0.len() > MAX_PUBLIC_KEY {
        return Err(bad_request(format!(
            "a public key has 1 to {MAX_PUBLIC_KEY} bytes"
        )));
    }
    if wrapped_private_key.0.is_empty() || wrapped_private_key.0.len() > MAX_WRAPPED_PRIVATE_KEY {
        return Err(bad_request(format!(
            "a wrapped private key has 1 to {MAX_WRAPPED_PRIVATE_KEY} bytes"
        )));
    }
    if kdf.alg.is_empty() || kdf.alg.len() > 32 || kdf.salt.0.len() > 64 {
        return Err(bad_request(
            "KDF parameters: an algorithm name of up to 32 bytes, a salt of up to 64",
        ));
    }
    Ok(())
}

fn username(raw: &str) -> Result<String> {
    name::normalize_username(raw).map_err(|e| bad_request(e.to_string()))
}

pub(super) async fn register(server: &Server, r: Register) -> Answer {
    let username = username(&r.username)?;
    check_keys(&r.public_key, &r.wrapped_private_key, &r.kdf)?;
    // One node registers each name, so that two people cannot take it on two
    // nodes at once; the others forward to it.
    let owner = server.membership.owner(&username);
    let r = Register { username, ..r };
    let registered = if owner == server.config.node_id {
        register_owned(server, r).await?
    } else {
        crate::cluster::link::forward_register(server, owner, r).await?
    };
    answer(Response::Registered(registered))
}

/// Registers an account whose name this node owns: here, or forwarded by a peer.
pub(crate) async fn register_owned(
    server: &Server,
    r: Register,
) -> Result<coffer_proto::response::Registered> {
    let username = username(&r.username)?;
    // A forwarded registration bypasses the connection's check: a node
    // catching up may not yet hold the account it would create again.
    if !server.ready() {
        return Err(crate::dispatch::catching_up(server));
    }
    if server.membership.owner(&username) != server.config.node_id {
        return Err(Error::refused(
            ErrorCode::Unavailable,
            format!(
                "{} does not register the name {username}",
                server.config.node_id
            ),
        ));
    }
    check_keys(&r.public_key, &r.wrapped_private_key, &r.kdf)?;
    if let Some(registered) = registered_before(server, &username, &r).await? {
        return Ok(registered);
    }
    let mut salt = [0u8; 16];
    server.random(&mut salt);
    let cost = server.config.bcrypt_cost;
    let secret = r.login_secret;
    let login_hash = blocking(move || auth::hash_login(&secret, cost, salt)).await?;
    let change = Change::Register {
        username,
        login_hash,
        public_key: r.public_key,
        wrapped_private_key: r.wrapped_private_key,
        kdf: r.kdf,
        admin: server.config.admin.clone(),
    };
    match server.store.write(change).await? {
        Applied::Registered(registered) => Ok(registered),
        other => Err(unexpected(other)),
    }
}

/// The account, if this very registration was already made: the same keys,
/// the same KDF and a login secret its stored hash accepts. A client that
/// retries after `unavailable` (the write stayed, but too few nodes held it
/// in time) is answered as the first time rather than told the name is
/// taken. Only its own registrant can repeat it: the wrapped private key
/// never leaves its owner's sessions.
async fn registered_before(
    server: &Server,
    username: &str,
    r: &Register,
) -> Result<Option<coffer_proto::response::Registered>> {
    let name = username.to_owned();
    let Some(user) = server
        .store
        .read(move |conn| query::user(conn, &name))
        .await?
    else {
        return Ok(None);
    };
    let same_keys = user.public_key == r.public_key.0
        && user.wrapped_private_key == r.wrapped_private_key.0
        && serde_json::to_string(&r.kdf).is_ok_and(|kdf| kdf == user.kdf);
    if !same_keys {
        return Ok(None);
    }
    let secret = r.login_secret;
    let hash = user.login_hash;
    let matches = blocking(move || auth::check_login(&secret, &hash)).await;
    Ok(matches.then_some(coffer_proto::response::Registered {
        username: user.username,
        role: user.role,
    }))
}

/// Opens a session for `username` and binds it to the connection.
async fn open_session(
    server: &Server,
    session: &mut Session,
    username: String,
    device_id: Option<String>,
) -> Answer {
    let session_id = server.new_id("s");
    let expires_ms = server.clock.now_ms() + server.config.session_ttl.as_millis() as u64;
    server
        .store
        .write(Change::SessionOpen {
            session_id: session_id.clone(),
            username: username.clone(),
            device_id: device_id.clone(),
            expires_ms,
        })
        .await?;
    bind(server, session, session_id, username, device_id, expires_ms).await
}

async fn bind(
    server: &Server,
    session: &mut Session,
    session_id: String,
    username: String,
    device_id: Option<String>,
    expires_ms: u64,
) -> Answer {
    let token = auth::issue(
        &server.token_key,
        &Claims {
            sid: session_id.clone(),
            usr: username.clone(),
            exp: expires_ms,
        },
    );
    let name = username.clone();
    let role = server
        .store
        .read(move |conn| Ok(query::user(conn, &name)?.map(|u| u.role)))
        .await?
        .unwrap_or(UserRole::User);
    // Every later line of this connection's log says who it is.
    tracing::Span::current().record("user", username.as_str());
    session.signed_in = Some(SignedIn {
        session_id: session_id.clone(),
        username: username.clone(),
        device_id: device_id.clone(),
    });
    answer(Response::Session(SessionResponse {
        token,
        session_id,
        username,
        role,
        device_id,
        expires_ms,
    }))
}

pub(super) async fn login(server: &Server, session: &mut Session, r: Login) -> Answer {
    let ip = session.peer.ip();
    // A name that cannot exist is an unknown user, said the same way.
    let username =
        name::normalize_username(&r.username).unwrap_or_else(|_| r.username.to_lowercase());
    server.limiter.check(&username, ip)?;
    let name = username.clone();
    let user = server
        .store
        .read(move |conn| query::user(conn, &name))
        .await?;
    // Exactly one bcrypt check whatever happens, so that the answer's timing
    // does not tell an unknown user from a wrong password.
    let hash = user
        .as_ref()
        .map_or_else(|| server.dummy_hash.clone(), |u| u.login_hash.clone());
    let secret = r.login_secret;
    let matches = blocking(move || auth::check_login(&secret, &hash)).await;
    let Some(user) = user else {
        server.limiter.failed(&username, ip);
        return Err(not_found(format!("no user {username}")));
    };
    if !matches {
        server.limiter.failed(&username, ip);
        return Err(unauthorized(format!("wrong password for {username}")));
    }
    if user.disabled {
        return Err(forbidden(format!("the account {username} is disabled")));
    }
    server.limiter.succeeded(&username);
    open_session(server, session, username, r.device_id).await
}

pub(super) async fn auth(server: &Server, session: &mut Session, r: Auth) -> Answer {
    let now = server.clock.now_ms();
    let claims = auth::verify(&server.token_key, &r.token, now)?;
    let sid = claims.sid.clone();
    let row = server
        .store
        .read(move |conn| query::session(conn, &sid))
        .await?;
    match row {
        Some(s) if !s.revoked && s.expires_ms > now && s.username == claims.usr => {
            bind(
                server,
                session,
                s.session_id,
                s.username,
                s.device_id,
                s.expires_ms.min(claims.exp),
            )
            .await
        }
        _ => Err(unauthorized("the session has ended; log in again")),
    }
}

pub(super) async fn refresh(server: &Server, session: &mut Session) -> Answer {
    let me = session.user()?.clone();
    let expires_ms = server.clock.now_ms() + server.config.session_ttl.as_millis() as u64;
    server
        .store
        .write(Change::SessionExtend {
            session_id: me.session_id.clone(),
            expires_ms,
        })
        .await?;
    bind(
        server,
        session,
        me.session_id,
        me.username,
        me.device_id,
        expires_ms,
    )
    .await
}

pub(super) async fn logout(server: &Server, session: &mut Session) -> Answer {
    let me = session.user()?.clone();
    server
        .store
        .write(Change::SessionRevoke {
            username: me.username,
            session_id: me.session_id,
        })
        .await?;
    session.signed_in = None;
    session.subscription = None;
    answer(Response::Ok)
}

pub(super) async fn whoami(server: &Server, session: &Session) -> Answer {
    let me = session.user()?.clone();
    let node_id = server.config.node_id.clone();
    server
        .store
        .read(move |conn| {
            let user =
                query::user(conn, &me.username)?.ok_or_else(|| unauthorized("no such account"))?;
            let device_name = match &me.device_id {
                Some(id) => query::device(conn, &me.username, id)?.map(|d| d.name),
                None => None,
            };
            Ok((
                Response::Whoami(Whoami {
                    username: me.username,
                    role: user.role,
                    session_id: me.session_id,
                    device_id: me.device_id,
                    device_name,
                    node_id,
                }),
                Default::default(),
            ))
        })
        .await
}

pub(super) async fn sessions(server: &Server, session: &Session) -> Answer {
    let me = session.user()?.clone();
    let now = server.clock.now_ms();
    let sessions = server
        .store
        .read(move |conn| query::sessions(conn, &me.username, now, &me.session_id))
        .await?;
    answer(Response::Sessions(Sessions { sessions }))
}

pub(super) async fn revoke(server: &Server, session: &mut Session, r: SessionRevoke) -> Answer {
    let me = session.user()?.clone();
    server
        .store
        .write(Change::SessionRevoke {
            username: me.username,
            session_id: r.session_id.clone(),
        })
        .await?;
    if r.session_id == me.session_id {
        session.signed_in = None;
        session.subscription = None;
    }
    answer(Response::Ok)
}

pub(super) async fn users(server: &Server) -> Answer {
    let users = server.store.read(query::users).await?;
    answer(Response::Users(Users { users }))
}

pub(super) async fn disable(server: &Server, session: &Session, r: UserDisable) -> Answer {
    let me = session.user()?;
    let target = username(&r.username)?;
    if target == me.username && r.disabled {
        return Err(bad_request("an admin cannot disable their own account"));
    }
    server
        .store
        .write(Change::UserDisable {
            username: target,
            disabled: r.disabled,
        })
        .await?;
    answer(Response::Ok)
}

pub(super) async fn publish_keys(server: &Server, session: &Session, r: KeysPublish) -> Answer {
    let me = session.user()?;
    check_keys(&r.public_key, &r.wrapped_private_key, &r.kdf)?;
    server
        .store
        .write(Change::KeysPublish {
            username: me.username.clone(),
            public_key: r.public_key,
            wrapped_private_key: r.wrapped_private_key,
            kdf: r.kdf,
        })
        .await?;
    answer(Response::Ok)
}

pub(super) async fn public_key(server: &Server, r: PublicKeyGet) -> Answer {
    let name = username(&r.username)?;
    let user = server
        .store
        .read(move |conn| query::user(conn, &name))
        .await?;
    let user = user.ok_or_else(|| not_found(format!("no user {}", r.username)))?;
    answer(Response::PublicKey(PublicKey {
        username: user.username,
        public_key: Blob(user.public_key),
    }))
}

pub(super) async fn private_key(server: &Server, session: &Session) -> Answer {
    let me = session.user()?.username.clone();
    let user = server
        .store
        .read(move |conn| query::user(conn, &me))
        .await?;
    let user = user.ok_or_else(|| unauthorized("no such account"))?;
    let kdf: Kdf = serde_json::from_str(&user.kdf)
        .map_err(|e| Error::Io(std::io::Error::other(format!("stored KDF parameters: {e}"))))?;
    answer(Response::PrivateKey(PrivateKey {
        wrapped_private_key: Blob(user.wrapped_private_key),
        kdf,
    }))
}

/// Parses a cursor given by a client: the id of the last event it processed.
/// The event id a cursor of this database names. A cursor names the
/// database that numbered it (its origin): event ids are this node's own, so
/// one from another node of the cluster — or from this one before its data
/// was wiped — is refused, and the client lists everything afresh.
fn parse_cursor(cursor: &str, origin: &str) -> Result<i64> {
    let (id, from) = cursor
        .strip_prefix('e')
        .and_then(|rest| rest.split_once('@'))
        .and_then(|(n, from)| Some((n.parse::<i64>().ok().filter(|n| *n >= 0)?, from)))
        .ok_or_else(|| {
            Error::refused(
                ErrorCode::BadRequest,
                format!("{cursor:?} is not a cursor of this server"),
            )
        })?;
    if from != origin {
        return Err(Error::refused(
            ErrorCode::BadRequest,
            format!(
                "{cursor:?} is a cursor of another server ({from}); subscribe without one and list afresh"
            ),
        ));
    }
    Ok(id)
}

/// The cursor of event `id` of the database `origin`.
pub(crate) fn format_cursor(origin: &str, id: i64) -> String {
    format!("e{id}@{origin}")
}

pub(super) async fn subscribe(server: &Server, session: &mut Session, r: Subscribe) -> Answer {
    session.user()?;
    let after = match &r.cursor {
        Some(cursor) => parse_cursor(cursor, server.store.origin())?,
        None => server.store.read(query::last_event).await?,
    };
    session.subscription = Some(after);
    session.catch_up = true;
    answer(Response::Subscribed(Subscribed {
        cursor: format_cursor(server.store.origin(), after),
    }))
}
