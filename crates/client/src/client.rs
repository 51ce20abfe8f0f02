//! One connection to a server: TLS, `hello`, then requests and their answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coffer_net::conn::{Connection, Timeouts};
use coffer_net::tls::{self, CertProblem, HandshakeError};
use coffer_net::{Net, Stream};
use coffer_proto::request::Hello;
use coffer_proto::response::{Pong, Welcome};
use coffer_proto::{Frame, Limits, PROTOCOL_VERSION, Request, Response};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::ClientError;

/// Deadlines of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// TLS handshake.
    pub handshake: Duration,
    /// From sending a request to its answer's first byte.
    pub request: Duration,
    /// Receiving or sending one frame.
    pub frame: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            request: Duration::from_secs(60),
            frame: Duration::from_secs(60),
        }
    }
}

/// Where a server is and how to trust it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its address.
    pub addr: SocketAddr,
    /// The name its certificate must carry (a host name or an IP address).
    pub name: ServerName<'static>,
    /// TLS configuration trusting the deployment CA only.
    pub tls: Arc<rustls::ClientConfig>,
    /// How to name the trusted CA in messages (usually its file).
    pub ca_label: String,
    /// Deadlines.
    pub timeouts: ClientTimeouts,
}

/// A connection that has exchanged `hello`.
#[derive(Debug)]
pub struct Client<S> {
    conn: Connection<TlsStream<S>>,
    next_id: u64,
    welcome: Welcome,
}

impl<S: Stream> Client<S> {
    /// Connects, verifies the server's certificate, and says hello.
    pub async fn connect<N: Net<Stream = S>>(
        net: &N,
        endpoint: &Endpoint,
    ) -> Result<Self, ClientError> {
        let t = endpoint.timeouts;
        let addr = endpoint.addr;
        let tcp = match tokio::time::timeout(t.connect, net.connect(addr)).await {
            Err(_) => {
                return Err(ClientError::ConnectTimeout {
                    addr,
                    after: t.connect,
                });
            }
            Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
            Ok(Ok(tcp)) => tcp,
        };
        let connector = TlsConnector::from(endpoint.tls.clone());
        let stream = tls::connect(&connector, endpoint.name.clone(), tcp, t.handshake)
            .await
            .map_err(|source| match source {
                HandshakeError::Certificate(CertProblem::NotSigned) => ClientError::Untrusted {
                    ca: endpoint.ca_label.clone(),
                },
                HandshakeError::Certificate(problem) => ClientError::Certificate { problem },
                source => ClientError::Handshake { addr, source },
            })?;
        let timeouts = Timeouts {
            idle: t.request,
            frame: t.frame,
            write: t.frame,
        };
        let mut client = Client {
            conn: Connection::new(stream, Limits::default(), timeouts),
            next_id: 1,
            welcome: Welcome {
                protocol: 0,
                server: String::new(),
                node_id: String::new(),
                max_header: 0,
                max_body: 0,
            },
        };
        let hello = Request::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent: concat!("coffer/", env!("CARGO_PKG_VERSION")).to_owned(),
        });
        match client.call(hello).await?.msg {
            Response::Welcome(welcome) => client.welcome = welcome,
            other => {
                return Err(ClientError::Protocol(format!(
                    "`{other:?}` in answer to hello"
                )));
            }
        }
        Ok(client)
    }

    /// What the server said in its `welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends a request and waits for its answer. An `error` answer becomes
    /// [`ClientError::Server`].
    pub async fn call(&mut self, request: Request) -> Result<Frame<Response>, ClientError> {
        self.call_with_body(request, Bytes::new()).await
    }

    /// Like [`Client::call`], with a body.
    pub async fn call_with_body(
        &mut self,
        request: Request,
        body: Bytes,
    ) -> Result<Frame<Response>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.conn.send(&Frame::with_body(id, request, body)).await?;
        let answer = self
            .conn
            .recv::<Response>()
            .await?
            .ok_or(ClientError::Closed)?;
        if let Response::Error(body) = answer.msg {
            return Err(ClientError::Server(body));
        }
        if answer.id != id {
            return Err(ClientError::Protocol(format!(
                "answer to request {} while waiting for {id}",
                answer.id
            )));
        }
        Ok(answer)
    }

    /// Asks the server whether it is ready.
    pub async fn ping(&mut self) -> Result<Pong, ClientError> {
        match self.call(Request::Ping).await?.msg {
            Response::Pong(pong) => Ok(pong),
            other => Err(ClientError::Protocol(format!(
                "`{other:?}` in answer to ping"
            ))),
        }
    }
}
