//! What each request does.
//!
//! This server version implements the opening (`hello`) and readiness
//! (`ping`); every other request of the protocol is answered with a
//! `bad_request` error naming it, and the connection stays usable.

use coffer_proto::response::{Pong, Welcome};
use coffer_proto::{ErrorCode, Frame, Limits, Message, PROTOCOL_VERSION, Request, Response};

use crate::Server;

/// The state of one connection's conversation.
#[derive(Debug, Default)]
pub(crate) struct Session {
    said_hello: bool,
}

/// What to send back, and whether to close afterwards.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) frame: Frame<Response>,
    pub(crate) close: bool,
}

impl Reply {
    fn keep(id: u64, msg: Response) -> Reply {
        Reply {
            frame: Frame::new(id, msg),
            close: false,
        }
    }

    fn close(id: u64, msg: Response) -> Reply {
        Reply {
            frame: Frame::new(id, msg),
            close: true,
        }
    }
}

impl Session {
    /// Whether `hello` has been exchanged (the connection is past its opening).
    pub(crate) fn open(&self) -> bool {
        self.said_hello
    }

    pub(crate) fn handle(&mut self, server: &Server, request: Frame<Request>) -> Reply {
        let id = request.id;
        match request.msg {
            Request::Hello(hello) => {
                if self.said_hello {
                    return Reply::keep(
                        id,
                        Response::error(ErrorCode::BadRequest, "hello was already exchanged"),
                    );
                }
                if hello.protocol != PROTOCOL_VERSION {
                    return Reply::close(
                        id,
                        Response::error(
                            ErrorCode::BadRequest,
                            format!(
                                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                                hello.protocol
                            ),
                        ),
                    );
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
                )
            }
            _ if !self.said_hello => Reply::close(
                id,
                Response::error(ErrorCode::BadRequest, "the first request must be hello"),
            ),
            Request::Ping => Reply::keep(
                id,
                Response::Pong(Pong {
                    // Serving means ready: this version has no store or peers to wait for.
                    ready: true,
                    node_id: server.config.node_id.clone(),
                    time_ms: server.clock.now_ms(),
                }),
            ),
            other => Reply::keep(
                id,
                Response::error(
                    ErrorCode::BadRequest,
                    format!("`{}` is not supported by this server version", other.kind()),
                ),
            ),
        }
    }
}
