//! One client connection: TLS handshake, then request/response frames — and,
//! once subscribed, pushed events — until the client leaves, breaks the
//! framing, idles out, its session ends, or the server shuts down.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use coffer_net::conn::{ConnError, Connection, Timeouts};
use coffer_net::{Stream, tls};
use coffer_proto::event::{CaughtUp, MemberChanged};
use coffer_proto::{DecodeError, Event, Frame, Header, Limits, Request, Response};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Server;
use crate::dispatch::{Reply, Session};
use crate::error::Result;
use crate::handlers::{format_cursor, store_chunk};
use crate::store::{StoredEvent, query};

/// Events read from the database per round while catching up.
const CATCH_UP_PAGE: u32 = 500;

fn timeouts(server: &Server, open: bool) -> Timeouts {
    let c = &server.config;
    Timeouts {
        // Until `hello`, a connection gets the short deadline: an idle socket
        // that never said who it is should not hold a slot for minutes.
        idle: if open {
            c.idle_timeout
        } else {
            c.hello_timeout
        },
        frame: c.frame_timeout,
        write: c.write_timeout,
    }
}

/// What the loop woke up for.
enum Input {
    Frame(Result<Option<coffer_proto::RawFrame>, ConnError>),
    Event(Result<Arc<StoredEvent>, RecvError>),
    Stored(Result<(usize, Box<Reply>), tokio::task::JoinError>),
    Shutdown,
}

/// What to do after handling one input.
enum Next {
    Continue,
    Close,
}

/// Bytes of one connection's chunks being stored at once (16 chunks of the
/// default size): hashing and fsyncs overlap, and the writer commits their
/// receipts together. It bounds what a connection holds in memory beyond its
/// read buffer. A peer link stores the chunks it is sent under the same bound.
pub(crate) const CHUNK_BYTES_IN_FLIGHT: usize = 16 << 20;

pub(crate) async fn serve<S: Stream>(
    server: Arc<Server>,
    stream: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let tls = match tls::accept(&server.acceptor, stream, server.config.handshake_timeout).await {
        Ok(tls) => tls,
        Err(e) => {
            debug!(error = %e, "TLS handshake failed");
            return;
        }
    };
    let server = &server;
    // Only cluster peers present a certificate (the CA verified it): such a
    // connection is a peer link, never a client's.
    if let Some(certs) = tls.get_ref().1.peer_certificates() {
        let node = certs
            .first()
            .and_then(|leaf| coffer_certs::node_id_of(leaf));
        let conn = Connection::new(tls, Limits::default(), timeouts(server, false));
        crate::cluster::link::serve(server, conn, node, shutdown).await;
        return;
    }
    let mut conn = Connection::new(tls, Limits::default(), timeouts(server, false));
    let mut session = Session::new(peer);
    let mut events = server.store.events();
    let mut pusher = Pusher::default();
    // Chunk uploads being stored; their answers go out as they finish, each
    // with its request's id.
    let mut storing: JoinSet<(usize, Box<Reply>)> = JoinSet::new();
    let mut in_flight = 0usize;
    loop {
        if session.catch_up {
            session.catch_up = false;
            match pusher.catch_up(server, &mut conn, &mut session).await {
                Ok(Next::Continue) => {}
                Ok(Next::Close) => break,
                Err(e) => {
                    warn!(error = %e, "catching up a subscriber failed");
                    break;
                }
            }
        }
        let input = tokio::select! {
            // Shutdown closes connections between requests, never during one.
            _ = shutdown.cancelled() => Input::Shutdown,
            // With the window full, answer a chunk before reading the next one.
            read = conn.read_frame(), if in_flight < CHUNK_BYTES_IN_FLIGHT => Input::Frame(read),
            Some(stored) = storing.join_next(), if !storing.is_empty() => Input::Stored(stored),
            event = events.recv(), if session.signed_in.is_some() => Input::Event(event),
        };
        let next = match input {
            Input::Shutdown => Next::Close,
            Input::Frame(read) => {
                let storing = (&mut storing, &mut in_flight);
                request(server, &mut conn, &mut session, storing, read).await
            }
            Input::Stored(Ok((size, reply))) => {
                in_flight -= size;
                send(&mut conn, *reply).await
            }
            Input::Stored(Err(e)) => {
                warn!(error = %e, "storing a chunk failed inside the server");
                Next::Close
            }
            Input::Event(Ok(event)) => {
                match pusher.push(server, &mut conn, &mut session, &event).await {
                    Ok(next) => next,
                    Err(e) => {
                        debug!(error = %e, "could not push an event");
                        Next::Close
                    }
                }
            }
            Input::Event(Err(RecvError::Lagged(missed))) => {
                // The live stream overflowed; the database has everything.
                debug!(missed, "subscriber fell behind; catching up from the log");
                session.catch_up = session.subscription.is_some();
                Next::Continue
            }
            Input::Event(Err(RecvError::Closed)) => Next::Close,
        };
        if let Next::Close = next {
            break;
        }
    }
    // Chunks already being stored finish and are answered, if the client is still there.
    while let Some(Ok((_, reply))) = storing.join_next().await {
        if let Next::Close = send(&mut conn, *reply).await {
            break;
        }
    }
    let _ = conn.shutdown().await;
}

async fn send<S: Stream>(conn: &mut Connection<S>, reply: Reply) -> Next {
    if let Err(e) = conn.send(&reply.frame).await {
        debug!(error = %e, "could not answer");
        return Next::Close;
    }
    if reply.close {
        Next::Close
    } else {
        Next::Continue
    }
}

/// Reads and answers one request — or, for a chunk, starts storing it.
async fn request<S: Stream>(
    server: &Arc<Server>,
    conn: &mut Connection<S>,
    session: &mut Session,
    (storing, in_flight): (&mut JoinSet<(usize, Box<Reply>)>, &mut usize),
    read: Result<Option<coffer_proto::RawFrame>, ConnError>,
) -> Next {
    let raw = match read {
        Ok(Some(raw)) => raw,
        Ok(None) => return Next::Close,
        Err(ConnError::Decode(e)) => {
            // The framing itself is broken: say why, then close, because the
            // byte stream can no longer be trusted to be in step.
            info!(error = %e, "closing: bad frame");
            reply_and_close(conn, 0, e).await;
            return Next::Close;
        }
        Err(e) => {
            if e.is_disconnect() {
                debug!(error = %e, "connection ended");
            } else {
                info!(error = %e, "closing");
            }
            return Next::Close;
        }
    };
    let header = match Header::parse(&raw.header) {
        Ok(header) => header,
        Err(e) => {
            info!(error = %e, "closing: bad header");
            reply_and_close(conn, 0, e).await;
            return Next::Close;
        }
    };
    let id = header.id;
    let was_open = session.open();
    let request = match Frame::<Request>::from_header(header, raw.body) {
        Ok(request) => request,
        // The frame was well-formed; only its content is wrong. Answer it and
        // keep the connection (unless it never said hello).
        Err(e) => {
            let reply = Reply {
                close: !was_open,
                frame: Frame::new(id, Response::error(e.code(), e.to_string())),
            };
            return send(conn, reply).await;
        }
    };
    debug!(
        id,
        kind = coffer_proto::Message::kind(&request.msg),
        "request"
    );
    if let Request::UploadChunk(chunk) = request.msg {
        let size = request.body.len();
        return match session.chunk_job(server, id, chunk, request.body).await {
            Ok(job) => {
                *in_flight += size;
                let server = server.clone();
                storing.spawn(async move {
                    let reply = match store_chunk(&server, job).await {
                        Ok((msg, body)) => Reply {
                            frame: Frame::with_body(id, msg, body),
                            close: false,
                        },
                        Err(e) => Reply::error(id, &e, false),
                    };
                    (size, Box::new(reply))
                });
                Next::Continue
            }
            Err(reply) => send(conn, reply).await,
        };
    }
    // Any other request sees the connection's chunks already stored: a commit
    // sent after its chunks finds them.
    while let Some(stored) = storing.join_next().await {
        match stored {
            Ok((size, reply)) => {
                *in_flight -= size;
                if let Next::Close = send(conn, *reply).await {
                    return Next::Close;
                }
            }
            Err(e) => {
                warn!(error = %e, "storing a chunk failed inside the server");
                return Next::Close;
            }
        }
    }
    let reply = session.handle(server, request).await;
    let next = send(conn, reply).await;
    if !was_open && session.open() {
        conn.set_timeouts(timeouts(server, true));
    }
    next
}

async fn reply_and_close<S: Stream>(conn: &mut Connection<S>, id: u64, error: DecodeError) {
    let frame = Frame::new(id, Response::error(error.code(), error.to_string()));
    let _ = conn.send(&frame).await;
}

/// Pushes events to a subscribed connection, in cursor order, each once.
#[derive(Default)]
struct Pusher {
    /// Folders the user is an active member of, while subscribed.
    folders: Option<HashSet<String>>,
}

impl Pusher {
    async fn refresh_folders(&mut self, server: &Server, username: &str) -> Result<()> {
        let me = username.to_owned();
        let folders = server
            .store
            .read(move |conn| query::member_folders(conn, &me))
            .await?;
        self.folders = Some(folders.into_iter().collect());
        Ok(())
    }

    /// Sends everything after the subscription's cursor from the database, then `caught_up`.
    async fn catch_up<S: Stream>(
        &mut self,
        server: &Server,
        conn: &mut Connection<S>,
        session: &mut Session,
    ) -> Result<Next> {
        let Some(me) = session.signed_in.as_ref().map(|s| s.username.clone()) else {
            return Ok(Next::Continue);
        };
        self.refresh_folders(server, &me).await?;
        loop {
            let Some(after) = session.subscription else {
                return Ok(Next::Continue);
            };
            let name = me.clone();
            let page = server
                .store
                .read(move |c| query::events_after(c, &name, after, CATCH_UP_PAGE))
                .await?;
            let full = page.len() == CATCH_UP_PAGE as usize;
            for event in &page {
                if let Next::Close = self.push(server, conn, session, event).await? {
                    return Ok(Next::Close);
                }
            }
            if !full {
                break;
            }
        }
        if let Some(cursor) = session.subscription {
            let done = Event::CaughtUp(CaughtUp {
                cursor: format_cursor(server.store.origin(), cursor),
            });
            send_event(conn, done).await?;
        }
        Ok(Next::Continue)
    }

    /// Considers one event for this connection.
    async fn push<S: Stream>(
        &mut self,
        server: &Server,
        conn: &mut Connection<S>,
        session: &mut Session,
        stored: &StoredEvent,
    ) -> Result<Next> {
        let Some(me) = session.signed_in.clone() else {
            return Ok(Next::Continue);
        };
        if let Event::SessionEnded(ended) = &stored.event {
            // Only this connection's own session ending concerns it.
            if ended.session_id == me.session_id {
                send_event(conn, stored.event.clone()).await?;
                session.signed_in = None;
                return Ok(Next::Close);
            }
            return Ok(Next::Continue);
        }
        let Some(cursor) = session.subscription else {
            return Ok(Next::Continue);
        };
        if stored.id <= cursor {
            return Ok(Next::Continue);
        }
        if self.folders.is_none() {
            self.refresh_folders(server, &me.username).await?;
        }
        let to_me = stored.username.as_deref() == Some(me.username.as_str());
        let to_my_folder = stored
            .folder_id
            .as_ref()
            .is_some_and(|f| self.folders.as_ref().is_some_and(|mine| mine.contains(f)));
        if !(to_me || to_my_folder) {
            return Ok(Next::Continue);
        }
        send_event(
            conn,
            with_cursor(stored.event.clone(), server.store.origin(), stored.id),
        )
        .await?;
        session.subscription = Some(stored.id);
        if let Event::MemberChanged(MemberChanged { username, .. }) = &stored.event
            && *username == me.username
        {
            self.refresh_folders(server, &me.username).await?;
        }
        Ok(Next::Continue)
    }
}

fn with_cursor(mut event: Event, origin: &str, id: i64) -> Event {
    let cursor = format_cursor(origin, id);
    match &mut event {
        Event::FileChanged(e) => e.cursor = cursor,
        Event::MemberChanged(e) => e.cursor = cursor,
        Event::KeyRotated(e) => e.cursor = cursor,
        Event::Invited(e) => e.cursor = cursor,
        Event::CaughtUp(e) => e.cursor = cursor,
        Event::SessionEnded(_) => {}
    }
    event
}

async fn send_event<S: Stream>(conn: &mut Connection<S>, event: Event) -> Result<()> {
    conn.send(&Frame::new(0, event))
        .await
        .map_err(|e| crate::error::Error::Io(std::io::Error::other(e.to_string())))
}
