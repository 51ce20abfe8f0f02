//! One connection to a server: TLS, `hello`, then requests — any number in
//! flight at once, each answer matched to its request by id — and the events
//! the server pushes.
//!
//! A reader task routes every incoming frame: answers to the request waiting
//! for them, pushed events (id 0) to [`Client::events`]. A writer task sends
//! frames in the order requests are made. When the connection fails, every
//! request in flight gets the error and the client reports itself closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use coffer_net::conn::{Connection, Timeouts};
use coffer_net::tls::{self, CertProblem, HandshakeError};
use coffer_net::{ConnError, Net, Stream};
use coffer_proto::request::Hello;
use coffer_proto::response::{Pong, Welcome};
use coffer_proto::{Event, Frame, Header, Limits, PROTOCOL_VERSION, Request, Response};
use rustls_pki_types::ServerName;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;

use crate::error::ClientError;

/// Deadlines of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// TLS handshake.
    pub handshake: Duration,
    /// From sending a request to its answer.
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

impl Endpoint {
    /// An endpoint that trusts only the CA certificates in the PEM file `ca`
    /// (certificate validity judged by the system clock).
    pub fn trusting(
        addr: SocketAddr,
        name: ServerName<'static>,
        ca: &std::path::Path,
        timeouts: ClientTimeouts,
    ) -> Result<Endpoint, tls::TlsConfigError> {
        let roots = tls::load_roots(ca)?;
        Ok(Endpoint {
            addr,
            name,
            tls: tls::client_config(roots, None, Arc::new(coffer_net::SystemClock))?,
            ca_label: ca.display().to_string(),
            timeouts,
        })
    }
}

type Waiter = oneshot::Sender<Result<Frame<Response>, ClientError>>;

/// Requests waiting for their answers, by id.
#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    /// Set when the connection has failed: later requests fail at once.
    failed: Option<String>,
}

/// A connection that has exchanged `hello`.
pub struct Client {
    outgoing: mpsc::Sender<Frame<Request>>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    welcome: Welcome,
    events: Mutex<Option<mpsc::Receiver<Event>>>,
    request_timeout: Duration,
    /// When the server was last heard from (or the connection opened).
    heard: Arc<Mutex<tokio::time::Instant>>,
    tasks: [AbortHandle; 2],
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("node", &self.welcome.node_id)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Events queued for a client that does not read them; one more ends the
/// event stream (a subscriber that falls behind resubscribes from its cursor).
const EVENT_QUEUE: usize = 4096;

fn fail_all(pending: &Mutex<Pending>, closed: &AtomicBool, why: &str) {
    closed.store(true, Ordering::SeqCst);
    let mut pending = pending.lock().expect("pending lock");
    pending.failed.get_or_insert_with(|| why.to_owned());
    for (_, waiter) in pending.waiters.drain() {
        let _ = waiter.send(Err(ClientError::Lost(why.to_owned())));
    }
}

impl Client {
    /// Connects, verifies the server's certificate, and says hello.
    pub async fn connect<N: Net>(net: &N, endpoint: &Endpoint) -> Result<Client, ClientError> {
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
        let mut client = Self::start(stream, t);
        let hello = Request::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent: concat!("coffer/", env!("CARGO_PKG_VERSION")).to_owned(),
        });
        match client.call(hello).await?.msg {
            Response::Welcome(welcome) => {
                client.welcome = welcome;
                Ok(client)
            }
            other => Err(ClientError::Protocol(format!(
                "`{other:?}` in answer to hello"
            ))),
        }
    }

    fn start<S: Stream>(stream: S, t: ClientTimeouts) -> Client {
        // The client's own deadline is per request; an idle pooled connection
        // is not an error (the server closes it when it has waited enough).
        let timeouts = Timeouts {
            idle: Duration::from_secs(24 * 3600),
            frame: t.frame,
            write: t.frame,
        };
        let (mut reader, mut writer) =
            Connection::new(stream, Limits::default(), timeouts).into_split();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let closed = Arc::new(AtomicBool::new(false));
        let (outgoing, mut queue) = mpsc::channel::<Frame<Request>>(64);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let mut events_tx = Some(events_tx);

        let (p, c) = (pending.clone(), closed.clone());
        let write_task = tokio::spawn(async move {
            while let Some(frame) = queue.recv().await {
                if let Err(e) = writer.send(&frame).await {
                    fail_all(&p, &c, &e.to_string());
                    return;
                }
            }
            let _ = writer.shutdown().await;
        });
        let heard = Arc::new(Mutex::new(tokio::time::Instant::now()));
        let (p, c, h) = (pending.clone(), closed.clone(), heard.clone());
        let read_task = tokio::spawn(async move {
            loop {
                let raw = match reader.read_frame().await {
                    Ok(Some(raw)) => raw,
                    Ok(None) => return fail_all(&p, &c, "the server closed the connection"),
                    Err(e) => return fail_all(&p, &c, &e.to_string()),
                };
                *h.lock().expect("heard lock") = tokio::time::Instant::now();
                let header = match Header::parse(&raw.header) {
                    Ok(header) => header,
                    Err(e) => return fail_all(&p, &c, &format!("bad frame from the server: {e}")),
                };
                if header.id == 0 && header.kind != "error" {
                    match Frame::<Event>::from_header(header, raw.body) {
                        // A full queue means the reader fell behind: the stream
                        // ends there (after what it holds), so that the reader
                        // knows it missed events and resubscribes from the last
                        // cursor it applied — never a silent gap.
                        Ok(event) => {
                            if events_tx
                                .as_ref()
                                .is_some_and(|tx| tx.try_send(event.msg).is_err())
                            {
                                events_tx = None;
                            }
                        }
                        Err(e) => {
                            return fail_all(&p, &c, &format!("bad event from the server: {e}"));
                        }
                    }
                    continue;
                }
                let id = header.id;
                let answer = Frame::<Response>::from_header(header, raw.body)
                    .map_err(|e| ClientError::Conn(ConnError::Decode(e)));
                if id == 0 {
                    // An error about the connection itself, before closing it.
                    let why = match answer {
                        Ok(Frame {
                            msg: Response::Error(body),
                            ..
                        }) => body.to_string(),
                        _ => "the server refused the connection".to_owned(),
                    };
                    return fail_all(&p, &c, &why);
                }
                let waiter = p.lock().expect("pending lock").waiters.remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(answer);
                }
            }
        });
        Client {
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            closed,
            welcome: Welcome {
                protocol: 0,
                server: String::new(),
                node_id: String::new(),
                max_header: 0,
                max_body: 0,
            },
            events: Mutex::new(Some(events)),
            request_timeout: t.request,
            heard,
            tasks: [write_task.abort_handle(), read_task.abort_handle()],
        }
    }

    /// What the server said in its `welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Whether the connection has failed or closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The events the server pushes (after `subscribe`); can be taken once.
    /// The stream ends with the connection, or when more events arrive than
    /// wait unread (4096): the reader then resubscribes from its last cursor.
    pub fn events(&self) -> Option<mpsc::Receiver<Event>> {
        self.events.lock().expect("events lock").take()
    }

    /// Sends a request and waits for its answer. An `error` answer becomes
    /// [`ClientError::Server`].
    pub async fn call(&self, request: Request) -> Result<Frame<Response>, ClientError> {
        self.call_with_body(request, Bytes::new()).await
    }

    /// Like [`Client::call`], with a body.
    pub async fn call_with_body(
        &self,
        request: Request,
        body: Bytes,
    ) -> Result<Frame<Response>, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (waiter, answer) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("pending lock");
            if let Some(why) = &pending.failed {
                return Err(ClientError::Lost(why.clone()));
            }
            pending.waiters.insert(id, waiter);
        }
        if self
            .outgoing
            .send(Frame::with_body(id, request, body))
            .await
            .is_err()
        {
            self.pending
                .lock()
                .expect("pending lock")
                .waiters
                .remove(&id);
            return Err(ClientError::Lost("the connection is closed".into()));
        }
        let answer = match tokio::time::timeout(self.request_timeout, answer).await {
            Err(_) => {
                self.pending
                    .lock()
                    .expect("pending lock")
                    .waiters
                    .remove(&id);
                // No answer in time: the link is as good as dead (a cut
                // path never closes a connection by itself, and the idle
                // timeout is long). Give it up, so that a pool replaces it
                // rather than sending every later request into it.
                fail_all(
                    &self.pending,
                    &self.closed,
                    &format!("no answer within {:?}", self.request_timeout),
                );
                for task in &self.tasks {
                    task.abort();
                }
                return Err(ClientError::Timeout(self.request_timeout));
            }
            Ok(Err(_)) => return Err(ClientError::Lost("the connection is closed".into())),
            Ok(Ok(answer)) => answer?,
        };
        if let Response::Error(body) = answer.msg {
            return Err(ClientError::Server(body));
        }
        Ok(answer)
    }

    /// How long the server has said nothing on this connection (since it
    /// opened, if it never has).
    pub fn quiet_for(&self) -> Duration {
        self.heard.lock().expect("heard lock").elapsed()
    }

    /// Requests sent on this connection and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.pending.lock().expect("pending lock").waiters.len()
    }

    /// Asks the server whether it is ready.
    pub async fn ping(&self) -> Result<Pong, ClientError> {
        match self.call(Request::Ping).await?.msg {
            Response::Pong(pong) => Ok(pong),
            other => Err(ClientError::Protocol(format!(
                "`{other:?}` in answer to ping"
            ))),
        }
    }
}
