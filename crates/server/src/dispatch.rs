//! One connection's conversation: its state (hello said? signed in as whom?
//! subscribed?), the access check every request passes, and the routing to
//! handlers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use coffer_proto::request::UploadChunk;
use coffer_proto::response::Welcome;
use coffer_proto::types::UserRole;
use coffer_proto::{ErrorCode, Frame, Limits, Message, PROTOCOL_VERSION, Request, Response};
use rusqlite::OptionalExtension;
use tracing::warn;

use crate::Server;
use crate::access::{self, Need, Requirement};
use crate::error::{Error, Result, forbidden, not_found, unauthorized};
use crate::handlers;
use crate::store::one;
use crate::store::query;

/// Who a connection is signed in as.
#[derive(Debug, Clone)]
pub(crate) struct SignedIn {
    pub(crate) session_id: String,
    pub(crate) username: String,
    pub(crate) device_id: Option<String>,
}

/// What a connection sending an upload's chunks keeps of it, so that each chunk
/// is checked without reading the upload again.
#[derive(Debug)]
pub(crate) struct UploadInUse {
    pub(crate) chunk_count: u32,
    pub(crate) chunk_size: u32,
    /// The chunk list, when this connection began a listed upload.
    pub(crate) announced: Option<Bytes>,
}

/// The state of one connection's conversation.
#[derive(Debug)]
pub(crate) struct Session {
    said_hello: bool,
    pub(crate) peer: SocketAddr,
    pub(crate) signed_in: Option<SignedIn>,
    /// The cursor to push events after, once subscribed.
    pub(crate) subscription: Option<i64>,
    /// Set by `subscribe`: the connection catches up from the cursor next.
    pub(crate) catch_up: bool,
    pub(crate) uploads: HashMap<String, Arc<UploadInUse>>,
}

/// What to send back, and whether to close afterwards.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) frame: Frame<Response>,
    pub(crate) close: bool,
}

impl Reply {
    fn keep(id: u64, msg: Response, body: Bytes) -> Reply {
        Reply {
            frame: Frame::with_body(id, msg, body),
            close: false,
        }
    }

    pub(crate) fn error(id: u64, error: &Error, close: bool) -> Reply {
        Reply {
            frame: Frame::new(id, Response::Error(error.to_body())),
            close,
        }
    }
}

impl Session {
    pub(crate) fn new(peer: SocketAddr) -> Session {
        Session {
            said_hello: false,
            peer,
            signed_in: None,
            subscription: None,
            catch_up: false,
            uploads: HashMap::new(),
        }
    }

    /// Whether `hello` has been exchanged.
    pub(crate) fn open(&self) -> bool {
        self.said_hello
    }

    /// The signed-in user, or `unauthorized`.
    pub(crate) fn user(&self) -> Result<&SignedIn> {
        self.signed_in
            .as_ref()
            .ok_or_else(|| unauthorized("log in first"))
    }

    pub(crate) async fn handle(&mut self, server: &Server, request: Frame<Request>) -> Reply {
        let id = request.id;
        if !self.said_hello {
            return self.hello(server, id, request.msg);
        }
        if matches!(request.msg, Request::Hello(_)) {
            return Reply::error(
                id,
                &crate::error::bad_request("hello was already exchanged"),
                false,
            );
        }
        if !matches!(request.msg, Request::Ping) && !server.ready() {
            return Reply::error(id, &catching_up(server), false);
        }
        if let Err(e) = self.authorize(server, &request.msg).await {
            return Reply::error(id, &e, false);
        }
        let kind = request.msg.kind();
        match handlers::route(server, self, request.msg, request.body).await {
            Ok((msg, body)) => Reply::keep(id, msg, body),
            Err(e) => {
                if e.is_internal() {
                    warn!(request = kind, error = %e, "request failed inside the server");
                }
                Reply::error(id, &e, false)
            }
        }
    }

    /// Checks a chunk upload so that it can be stored concurrently with the
    /// connection's other chunks; on failure, the reply to send instead.
    pub(crate) async fn chunk_job(
        &mut self,
        server: &Server,
        id: u64,
        chunk: UploadChunk,
        body: Bytes,
    ) -> Result<handlers::ChunkJob, Reply> {
        let request = Request::UploadChunk(chunk);
        if !self.said_hello {
            return Err(self.hello(server, id, request));
        }
        if !server.ready() {
            return Err(Reply::error(id, &catching_up(server), false));
        }
        if let Err(e) = self.authorize(server, &request).await {
            return Err(Reply::error(id, &e, false));
        }
        let Request::UploadChunk(chunk) = request else {
            unreachable!("built above")
        };
        handlers::prepare_chunk(server, self, chunk, body)
            .await
            .map_err(|e| Reply::error(id, &e, false))
    }

    fn hello(&mut self, server: &Server, id: u64, msg: Request) -> Reply {
        let refuse = |message: String| Reply {
            frame: Frame::new(id, Response::error(ErrorCode::BadRequest, message)),
            close: true,
        };
        let Request::Hello(hello) = msg else {
            return refuse("the first request must be hello".to_owned());
        };
        if hello.protocol != PROTOCOL_VERSION {
            return refuse(format!(
                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                hello.protocol
            ));
        }
        self.said_hello = true;
        let limits = Limits::default();
        Reply::keep(
            id,
            Response::Welcome(Welcome {
                protocol: PROTOCOL_VERSION,
                server: concat!("coffer-server/", env!("CARGO_PKG_VERSION")).to_owned(),
                node_id: server.config.node_id.clone(),
                max_header: limits.max_header,
                max_body: limits.max_body,
            }),
            Bytes::new(),
        )
    }

    /// Enforces [`access::requirement`]: a live session, and the role the
    /// request needs, read in one go.
    async fn authorize(&mut self, server: &Server, request: &Request) -> Result<()> {
        let requirement = access::requirement(request);
        if requirement == Requirement::Anyone {
            return Ok(());
        }
        let signed_in = self.user()?.clone();
        let now = server.clock.now_ms();
        let need = match requirement {
            Requirement::Anyone | Requirement::Session => Check::Session,
            Requirement::Admin => Check::Admin,
            Requirement::Folder(folder_id, need) => Check::Folder(folder_id.to_owned(), need),
            Requirement::Share(share_id) => Check::Share(share_id.to_owned()),
            Requirement::Upload(upload_id) => Check::Upload(upload_id.to_owned()),
        };
        let result = server
            .store
            .read(move |conn| {
                let session = query::session(conn, &signed_in.session_id)?;
                let user = query::user(conn, &signed_in.username)?;
                match (session, user) {
                    (Some(s), Some(u)) if !s.revoked && s.expires_ms > now && !u.disabled => {
                        check(conn, &signed_in.username, u.role, need)
                    }
                    _ => Err(unauthorized("the session has ended; log in again")),
                }
            })
            .await;
        if let Err(Error::Refused {
            code: ErrorCode::Unauthorized,
            ..
        }) = &result
        {
            self.signed_in = None;
        }
        result
    }
}

/// What [`Session::authorize`] checks beyond a live session (owned, to cross
/// into the blocking read).
enum Check {
    Session,
    Admin,
    Folder(String, Need),
    Share(String),
    Upload(String),
}

fn check(conn: &rusqlite::Connection, username: &str, role: UserRole, need: Check) -> Result<()> {
    match need {
        Check::Session => Ok(()),
        Check::Admin if role == UserRole::Admin => Ok(()),
        Check::Admin => Err(forbidden("only an admin may do this")),
        Check::Folder(folder_id, need) => {
            access::require(conn, username, &folder_id, need).map(|_| ())
        }
        Check::Share(share_id) => {
            let found: bool = one(
                conn,
                "SELECT EXISTS (SELECT 1 FROM file_shares WHERE share_id = ?1 AND recipient = ?2)",
                [&share_id, username],
                |r| r.get(0),
            )?;
            if found {
                Ok(())
            } else {
                Err(not_found(format!("no file shared with you as {share_id}")))
            }
        }
        Check::Upload(upload_id) => {
            let folder_id: Option<String> = one(
                conn,
                "SELECT folder_id FROM uploads WHERE upload_id = ?1 AND username = ?2",
                [&upload_id, username],
                |r| r.get(0),
            )
            .optional()?;
            let folder_id = folder_id.ok_or_else(|| not_found(format!("no upload {upload_id}")))?;
            access::require(conn, username, &folder_id, Need::Write).map(|_| ())
        }
    }
}

/// Why a node in a cluster refuses requests until it has caught up with its
/// peers: what it holds may be stale, and what it wrote could clash with
/// records it has not yet received back.
pub(crate) fn catching_up(server: &Server) -> crate::error::Error {
    crate::error::Error::refused(
        coffer_proto::ErrorCode::Unavailable,
        format!(
            "{} is catching up with its peers; try again or another node",
            server.config.node_id
        ),
    )
}
