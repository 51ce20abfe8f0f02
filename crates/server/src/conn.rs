//! One client connection: TLS handshake, then request/response frames until the
//! client leaves, breaks the framing, idles out, or the server shuts down.

use coffer_net::conn::{ConnError, Connection, Timeouts};
use coffer_net::{Stream, tls};
use coffer_proto::{DecodeError, Frame, Header, Limits, Request, Response};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::Server;
use crate::dispatch::Session;

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

pub(crate) async fn serve<S: Stream>(server: &Server, stream: S, shutdown: CancellationToken) {
    let config = &server.config;
    let tls = match tls::accept(&server.acceptor, stream, config.handshake_timeout).await {
        Ok(tls) => tls,
        Err(e) => {
            debug!(error = %e, "TLS handshake failed");
            return;
        }
    };
    let mut conn = Connection::new(tls, Limits::default(), timeouts(server, false));
    let mut session = Session::default();
    loop {
        let read = tokio::select! {
            // Shutdown closes connections between requests, never during one.
            _ = shutdown.cancelled() => break,
            read = conn.read_frame() => read,
        };
        let raw = match read {
            Ok(Some(raw)) => raw,
            Ok(None) => break,
            Err(ConnError::Decode(e)) => {
                // The framing itself is broken: say why, then close, because
                // the byte stream can no longer be trusted to be in step.
                info!(error = %e, "closing: bad frame");
                reply_and_close(&mut conn, 0, e).await;
                break;
            }
            Err(e) => {
                if e.is_disconnect() {
                    debug!(error = %e, "connection ended");
                } else {
                    info!(error = %e, "closing");
                }
                break;
            }
        };
        let header = match Header::parse(&raw.header) {
            Ok(header) => header,
            Err(e) => {
                info!(error = %e, "closing: bad header");
                reply_and_close(&mut conn, 0, e).await;
                break;
            }
        };
        let id = header.id;
        let was_open = session.open();
        let reply = match Frame::<Request>::from_header(header, raw.body) {
            Ok(request) => {
                debug!(
                    id,
                    kind = coffer_proto::Message::kind(&request.msg),
                    "request"
                );
                session.handle(server, request)
            }
            // The frame was well-formed; only its content is wrong. Answer it
            // and keep the connection.
            Err(e) => crate::dispatch::Reply {
                close: !session.open(),
                frame: Frame::new(id, Response::error(e.code(), e.to_string())),
            },
        };
        if let Err(e) = conn.send(&reply.frame).await {
            debug!(error = %e, "could not answer");
            break;
        }
        if reply.close {
            break;
        }
        if !was_open && session.open() {
            conn.set_timeouts(timeouts(server, true));
        }
    }
    let _ = conn.shutdown().await;
}

async fn reply_and_close<S: Stream>(conn: &mut Connection<S>, id: u64, error: DecodeError) {
    let frame = Frame::new(id, Response::error(error.code(), error.to_string()));
    let _ = conn.send(&frame).await;
}
