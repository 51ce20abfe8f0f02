//! Framed connections over in-memory pipes (deadlines on paused time), and TLS
//! over real loopback sockets with certificates from `coffer-certs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coffer_certs::{Ca, Kind, Validity};
use coffer_net::tls::{self, CertProblem, HandshakeError, Identity};
use coffer_net::{Clock, ConnError, Connection, Listener, Net, SystemClock, Timeouts, TokioNet};
use coffer_proto::request::{Hello, UploadChunk};
use coffer_proto::types::Sha256;
use coffer_proto::{DecodeError, Frame, Limits, Request, Response};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn hello(id: u64) -> Frame<Request> {
    Frame::new(
        id,
        Request::Hello(Hello {
            protocol: 1,
            agent: "test".into(),
        }),
    )
}

fn timeouts() -> Timeouts {
    Timeouts {
        idle: Duration::from_secs(10),
        frame: Duration::from_secs(2),
        write: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn frames_cross_a_pipe_in_small_pieces() {
    // A 7-byte pipe forces every frame to arrive in many reads.
    let (a, b) = duplex(7);
    let mut client = Connection::new(a, Limits::default(), timeouts());
    let mut server = Connection::new(b, Limits::default(), timeouts());
    let chunk = Frame::with_body(
        2,
        Request::UploadChunk(UploadChunk {
            upload_id: "u".into(),
            index: 0,
            sha256: Sha256([1; 32]),
            md5: None,
        }),
        Bytes::from(vec![42u8; 5000]),
    );
    let sent = chunk.clone();
    let writer = tokio::spawn(async move {
        client.send(&hello(1)).await.unwrap();
        client.send(&sent).await.unwrap();
        client.shutdown().await.unwrap();
    });
    assert_eq!(server.recv::<Request>().await.unwrap().unwrap(), hello(1));
    assert_eq!(server.recv::<Request>().await.unwrap().unwrap(), chunk);
    // A clean close between frames is "no more frames", not an error.
    assert!(server.recv::<Request>().await.unwrap().is_none());
    writer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_hits_the_idle_deadline() {
    let (_a, b) = duplex(64);
    let mut server = Connection::new(b, Limits::default(), timeouts());
    let err = server.read_frame().await.unwrap_err();
    assert!(
        matches!(err, ConnError::Idle(d) if d == Duration::from_secs(10)),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_trickling_peer_hits_the_frame_deadline() {
    let (mut a, b) = duplex(64);
    let mut server = Connection::new(b, Limits::default(), timeouts());
    let bytes = hello(1).encode().unwrap().to_vec();
    let trickle = tokio::spawn(async move {
        // One byte every 500 ms: each read is quick, the frame never completes in time.
        for byte in bytes {
            a.write_all(&[byte]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let err = server.read_frame().await.unwrap_err();
    assert!(matches!(err, ConnError::SlowFrame(_)), "{err}");
    trickle.abort();
}

#[tokio::test]
async fn an_oversized_frame_is_refused_from_its_prefix() {
    let (mut a, b) = duplex(64);
    let limits = Limits {
        max_header: 1024,
        max_body: 1024,
    };
    let mut server = Connection::new(b, limits, timeouts());
    // Announce a 1 MiB body, send only the prefix, keep the pipe open: the
    // verdict must come without waiting for (or buffering) the body.
    a.write_all(&[0, 0, 0, 2, 0, 0x10, 0, 0]).await.unwrap();
    let err = server.read_frame().await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnError::Decode(DecodeError::BodyTooLarge {
                len: 0x0010_0000,
                max: 1024
            })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn closing_mid_frame_is_truncation() {
    let (mut a, b) = duplex(64);
    let mut server = Connection::new(b, Limits::default(), timeouts());
    let bytes = hello(1).encode().unwrap().to_vec();
    a.write_all(&bytes[..bytes.len() - 3]).await.unwrap();
    drop(a);
    let err = server.read_frame().await.unwrap_err();
    assert!(
        matches!(err, ConnError::Truncated { buffered } if buffered == bytes.len() - 3),
        "{err}"
    );
    assert!(err.is_disconnect());
}

#[tokio::test]
async fn garbage_headers_are_typed_errors_and_the_writer_refuses_oversize() {
    let (a, b) = duplex(1 << 16);
    let mut client = Connection::new(a, Limits::default(), timeouts());
    let mut server = Connection::new(b, Limits::default(), timeouts());
    let raw = coffer_proto::RawFrame {
        header: Bytes::from_static(b"[1, 2]"),
        body: Bytes::new(),
    };
    client.write_frame(&raw).await.unwrap();
    let err = server.recv::<Request>().await.unwrap_err();
    assert!(
        matches!(err, ConnError::Decode(DecodeError::HeaderNotObject { .. })),
        "{err}"
    );

    let small = Limits {
        max_header: 1024,
        max_body: 10,
    };
    let (c, _d) = duplex(64);
    let mut tight = Connection::new(c, small, timeouts());
    let big = Frame::with_body(
        1,
        Response::Chunk(coffer_proto::response::ChunkInfo {
            hash: Sha256([0; 32]),
        }),
        Bytes::from(vec![0; 11]),
    );
    assert!(matches!(tight.send(&big).await, Err(ConnError::Encode(_))));
}

#[tokio::test]
async fn split_halves_keep_buffered_bytes() {
    let (a, b) = duplex(1 << 16);
    let mut client = Connection::new(a, Limits::default(), timeouts());
    let server = Connection::new(b, Limits::default(), timeouts());
    client.send(&hello(1)).await.unwrap();
    client.send(&hello(2)).await.unwrap();
    let (mut reader, mut writer) = server.into_split();
    assert_eq!(reader.recv::<Request>().await.unwrap().unwrap().id, 1);
    assert_eq!(reader.recv::<Request>().await.unwrap().unwrap().id, 2);
    writer.send(&Frame::new(1, Response::Ok)).await.unwrap();
    assert_eq!(
        client.recv::<Response>().await.unwrap().unwrap().msg,
        Response::Ok
    );
}

// ---------- TLS ----------

struct Pki {
    ca: Ca,
    roots: Arc<rustls::RootCertStore>,
    server: Identity,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn pki() -> Pki {
    let ca = Ca::generate("test CA", Validity::days_from(now(), 30)).unwrap();
    let roots = tls::roots_from_pem(ca.cert_pem().as_bytes()).unwrap();
    let issued = ca
        .issue(
            Kind::Server,
            "localhost",
            &["127.0.0.1".into()],
            Validity::days_from(now(), 30),
        )
        .unwrap();
    let server =
        Identity::from_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
    Pki { ca, roots, server }
}

fn clock() -> coffer_net::SharedClock {
    Arc::new(SystemClock)
}

/// A clock far in the future, where every test certificate has expired.
#[derive(Debug)]
struct Future;
impl Clock for Future {
    fn now(&self) -> Duration {
        SystemClock.now() + Duration::from_secs(400 * 86_400)
    }
}

/// Accepts one TLS connection and reports what the handshake gave.
async fn serve_once(
    config: Arc<rustls::ServerConfig>,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<Option<Vec<u8>>, HandshakeError>>,
) {
    let mut listener = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut tls =
            tls::accept(&TlsAcceptor::from(config), stream, Duration::from_secs(5)).await?;
        let peer_cert = tls.get_ref().1.peer_certificates().map(|c| c[0].to_vec());
        let mut byte = [0u8; 1];
        let _ = tls.read(&mut byte).await;
        let _ = tls.write_all(b"k").await;
        Ok(peer_cert)
    });
    (addr, task)
}

async fn dial(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, HandshakeError> {
    let stream = TokioNet.connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tls::connect(
        &TlsConnector::from(config),
        name,
        stream,
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn a_client_trusts_only_its_ca() {
    let pki = pki();
    let server_config = tls::server_config(&pki.server, None, clock(), None).unwrap();

    let (addr, server) = serve_once(server_config.clone()).await;
    let mut ok = dial(
        addr,
        tls::client_config(pki.roots.clone(), None, clock()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(ok.get_ref().1.alpn_protocol(), Some(tls::ALPN));
    // The suite preferred: SHA-256 key schedule, AES-128-GCM records.
    assert_eq!(
        ok.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    ok.write_all(b"x").await.unwrap();
    assert!(
        server.await.unwrap().unwrap().is_none(),
        "no client certificate was sent"
    );

    let other = pki_other_roots();
    let (addr, _server) = serve_once(server_config.clone()).await;
    let err = dial(addr, tls::client_config(other, None, clock()).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HandshakeError::Certificate(CertProblem::NotSigned)),
        "{err}"
    );

    // The client reads certificate validity from its Clock: in 400 days the
    // 30-day certificate has expired.
    let (addr, _server) = serve_once(server_config).await;
    let err = dial(
        addr,
        tls::client_config(pki.roots.clone(), None, Arc::new(Future)).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, HandshakeError::Certificate(CertProblem::Expired)),
        "{err}"
    );

    // The right CA, the wrong name: said as such, not as an unknown CA.
    let (addr, _server) =
        serve_once(tls::server_config(&pki.server, None, clock(), None).unwrap()).await;
    let stream = TokioNet.connect(addr).await.unwrap();
    let config = tls::client_config(pki.roots.clone(), None, clock()).unwrap();
    let err = tls::connect(
        &TlsConnector::from(config),
        ServerName::try_from("elsewhere.example").unwrap(),
        stream,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, HandshakeError::Certificate(CertProblem::WrongName { expected, presented })
            if expected == "elsewhere.example" && presented.contains("127.0.0.1")),
        "{err}"
    );
}

fn pki_other_roots() -> Arc<rustls::RootCertStore> {
    let other = Ca::generate("other CA", Validity::days_from(now(), 30)).unwrap();
    tls::roots_from_pem(other.cert_pem().as_bytes()).unwrap()
}

#[tokio::test]
async fn peers_present_certificates_and_clients_need_none() {
    let pki = pki();
    let server_config =
        tls::server_config(&pki.server, Some(pki.roots.clone()), clock(), None).unwrap();
    let peer = pki
        .ca
        .issue(Kind::Peer, "node-2", &[], Validity::days_from(now(), 30))
        .unwrap();
    let peer_id = Identity::from_pem(peer.chain_pem.as_bytes(), peer.key_pem.as_bytes()).unwrap();

    let (addr, server) = serve_once(server_config.clone()).await;
    let mut conn = dial(
        addr,
        tls::client_config(pki.roots.clone(), Some(&peer_id), clock()).unwrap(),
    )
    .await
    .unwrap();
    conn.write_all(b"x").await.unwrap();
    let cert = server
        .await
        .unwrap()
        .unwrap()
        .expect("the peer's certificate");
    assert_eq!(coffer_certs::node_id_of(&cert).as_deref(), Some("node-2"));

    // A client without a certificate still gets in (and is no peer).
    let (addr, server) = serve_once(server_config.clone()).await;
    let mut conn = dial(
        addr,
        tls::client_config(pki.roots.clone(), None, clock()).unwrap(),
    )
    .await
    .unwrap();
    conn.write_all(b"x").await.unwrap();
    assert!(server.await.unwrap().unwrap().is_none());

    // A certificate from another CA is refused by the server.
    let rogue_ca = Ca::generate("rogue", Validity::days_from(now(), 30)).unwrap();
    let rogue = rogue_ca
        .issue(Kind::Peer, "node-9", &[], Validity::days_from(now(), 30))
        .unwrap();
    let rogue_id =
        Identity::from_pem(rogue.chain_pem.as_bytes(), rogue.key_pem.as_bytes()).unwrap();
    let (addr, server) = serve_once(server_config).await;
    let client = dial(
        addr,
        tls::client_config(pki.roots.clone(), Some(&rogue_id), clock()).unwrap(),
    )
    .await;
    // TLS 1.3 clients may finish before the server's verdict; the server side is authoritative.
    drop(client);
    let err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, HandshakeError::Certificate(CertProblem::NotSigned)),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_instead_of_tls_is_a_protocol_error() {
    let pki = pki();
    let (addr, server) =
        serve_once(tls::server_config(&pki.server, None, clock(), None).unwrap()).await;
    let mut raw = TokioNet.connect(addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert!(matches!(&err, HandshakeError::Protocol(_)), "{err}");
}

#[tokio::test]
async fn bad_pem_is_a_clear_error() {
    assert!(Identity::from_pem(b"nope", b"nope").is_err());
    assert!(tls::roots_from_pem(b"").is_err());
    let err = tls::load_roots(std::path::Path::new("/nonexistent/ca.pem")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

/// One exchange with the server at `addr` (so that the tickets it sends after
/// the handshake are read): how the handshake went.
async fn handshake_kind(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<rustls::HandshakeKind> {
    let mut stream = dial(addr, config).await.unwrap();
    stream.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.unwrap();
    stream.get_ref().1.handshake_kind()
}

/// Behind the balancer a client's next connection lands on another server:
/// with tickets from the cluster secret it resumes there. A server with
/// another secret, or servers with only their own session caches, run the
/// whole handshake.
#[tokio::test]
async fn a_session_resumes_on_any_server_sharing_the_secret() {
    use coffer_net::tickets::SharedTickets;
    use rustls::HandshakeKind::{Full, Resumed};

    let pki = pki();
    let server = |secret: Option<u8>| {
        let tickets = secret.map(|b| SharedTickets::new(&[b; 32], clock()));
        tls::server_config(&pki.server, None, clock(), tickets).unwrap()
    };
    let client = tls::client_config(pki.roots.clone(), None, clock()).unwrap();
    let mut kinds = Vec::new();
    for secret in [Some(1), Some(1), Some(1), Some(2), None, None] {
        let (addr, _server) = serve_once(server(secret)).await;
        kinds.push(handshake_kind(addr, client.clone()).await);
    }
    assert_eq!(
        kinds,
        [Full, Resumed, Resumed, Full, Full, Full].map(Some),
        "secret 1 on three servers, then secret 2, then two servers without shared tickets"
    );
}
