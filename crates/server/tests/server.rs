//! The server in-process on port 0 (and the binary once), spoken to over TLS
//! by a minimal test client.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coffer_conformance::Process;
use coffer_net::conn::{Connection, Timeouts};
use coffer_net::{Listener, Net, SystemClock, TokioNet, tls};
use coffer_proto::request::Hello;
use coffer_proto::{ErrorCode, Frame, Limits, PROTOCOL_VERSION, RawFrame, Request, Response};
use coffer_server::{Config, Server};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

struct Running {
    addr: SocketAddr,
    ca: std::path::PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _data: tempfile::TempDir,
}

async fn start() -> Running {
    let data = tempfile::tempdir().unwrap();
    let config = Config {
        data: data.path().to_owned(),
        hello_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let server = Arc::new(Server::new(config, Arc::new(SystemClock)).unwrap());
    let ca = server.ca_path().unwrap().to_owned();
    let listener = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(listener, shutdown.clone()));
    Running {
        addr,
        ca,
        shutdown,
        task,
        _data: data,
    }
}

async fn connect(addr: SocketAddr, ca: &Path) -> Connection<Tls> {
    let roots = tls::load_roots(ca).unwrap();
    let config = tls::client_config(roots, None, Arc::new(SystemClock)).unwrap();
    let tcp = TokioNet.connect(addr).await.unwrap();
    let stream = tls::connect(
        &tokio_rustls::TlsConnector::from(config),
        ServerName::try_from("localhost").unwrap(),
        tcp,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    Connection::new(stream, Limits::default(), Timeouts::default())
}

async fn call(conn: &mut Connection<Tls>, id: u64, request: Request) -> Frame<Response> {
    conn.send(&Frame::new(id, request)).await.unwrap();
    conn.recv::<Response>().await.unwrap().expect("an answer")
}

fn hello() -> Request {
    Request::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        agent: "server-test".into(),
    })
}

fn error_code(frame: &Frame<Response>) -> ErrorCode {
    match &frame.msg {
        Response::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn hello_then_ping() {
    let s = start().await;
    let mut conn = connect(s.addr, &s.ca).await;
    let welcome = call(&mut conn, 1, hello()).await;
    assert_eq!(welcome.id, 1);
    let Response::Welcome(w) = welcome.msg else {
        panic!("{welcome:?}")
    };
    assert_eq!(
        (w.protocol, w.node_id.as_str()),
        (PROTOCOL_VERSION, "node-1")
    );
    let pong = call(&mut conn, 2, Request::Ping).await;
    assert!(matches!(pong.msg, Response::Pong(p) if p.ready && p.time_ms > 1_600_000_000_000));
    assert_eq!(pong.id, 2);
}

#[tokio::test]
async fn hello_comes_first_and_speaks_our_version() {
    let s = start().await;
    let mut conn = connect(s.addr, &s.ca).await;
    let answer = call(&mut conn, 1, Request::Ping).await;
    assert_eq!(error_code(&answer), ErrorCode::BadRequest);
    assert!(
        conn.recv::<Response>().await.unwrap().is_none(),
        "closed after the refusal"
    );

    let mut conn = connect(s.addr, &s.ca).await;
    let old = Request::Hello(Hello {
        protocol: 0,
        agent: "old".into(),
    });
    let answer = call(&mut conn, 1, old).await;
    assert_eq!(error_code(&answer), ErrorCode::BadRequest);
    assert!(conn.recv::<Response>().await.unwrap().is_none());
}

#[tokio::test]
async fn bad_requests_are_answered_and_the_connection_survives() {
    let s = start().await;
    let mut conn = connect(s.addr, &s.ca).await;
    call(&mut conn, 1, hello()).await;
    // Unknown type, wrong field type, body on a bodiless message: each answered
    // with the request's id, and the connection goes on.
    for (id, header, body) in [
        (7, r#"{"id":7,"type":"teleport"}"#, &b""[..]),
        (8, r#"{"id":8,"type":"stat","folder_id":1,"path":"a"}"#, b""),
        (9, r#"{"id":9,"type":"ping"}"#, b"unexpected"),
    ] {
        let raw = RawFrame {
            header: Bytes::from(header),
            body: Bytes::copy_from_slice(body),
        };
        conn.write_frame(&raw).await.unwrap();
        let answer = conn.recv::<Response>().await.unwrap().unwrap();
        assert_eq!(answer.id, id);
        assert_eq!(error_code(&answer), ErrorCode::BadRequest);
    }
    // A valid request this version does not serve is refused by name.
    let answer = call(&mut conn, 10, Request::Whoami).await;
    assert!(matches!(&answer.msg, Response::Error(e) if e.message.contains("whoami")));
    assert!(matches!(
        call(&mut conn, 11, Request::Ping).await.msg,
        Response::Pong(_)
    ));
}

#[tokio::test]
async fn broken_framing_gets_an_error_then_the_door() {
    let s = start().await;
    // A header that is not JSON.
    let mut conn = connect(s.addr, &s.ca).await;
    call(&mut conn, 1, hello()).await;
    let raw = RawFrame {
        header: Bytes::from_static(b"{oops"),
        body: Bytes::new(),
    };
    conn.write_frame(&raw).await.unwrap();
    let answer = conn.recv::<Response>().await.unwrap().unwrap();
    assert_eq!((answer.id, error_code(&answer)), (0, ErrorCode::BadRequest));
    assert!(conn.recv::<Response>().await.unwrap().is_none());

    // A prefix announcing a body over the limit: refused before it is sent.
    let mut conn = connect(s.addr, &s.ca).await;
    call(&mut conn, 1, hello()).await;
    let huge = u32::MAX.to_be_bytes();
    let stream = conn.get_mut();
    stream.write_all(&[0, 0, 0, 2]).await.unwrap();
    stream.write_all(&huge).await.unwrap();
    stream.flush().await.unwrap();
    let answer = conn.recv::<Response>().await.unwrap().unwrap();
    assert_eq!(error_code(&answer), ErrorCode::TooLarge);
    assert!(conn.recv::<Response>().await.unwrap().is_none());
}

#[tokio::test]
async fn garbage_instead_of_tls_does_not_disturb_others() {
    let s = start().await;
    let mut raw = TokioNet.connect(s.addr).await.unwrap();
    raw.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    raw.write_all(b"\r\n\r\nnot tls at all").await.unwrap();
    let mut conn = connect(s.addr, &s.ca).await;
    call(&mut conn, 1, hello()).await;
    assert!(matches!(
        call(&mut conn, 2, Request::Ping).await.msg,
        Response::Pong(_)
    ));
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let s = start().await;
    let mut conn = connect(s.addr, &s.ca).await;
    call(&mut conn, 1, hello()).await;
    s.shutdown.cancel();
    assert!(
        conn.recv::<Response>().await.unwrap().is_none(),
        "idle connection closed"
    );
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("run returns once connections are closed")
        .unwrap()
        .unwrap();
    assert!(
        TokioNet.connect(s.addr).await.is_err(),
        "no longer accepting"
    );
}

/// The binary on embedded defaults (but port 0 and a temporary data
/// directory): prints `listening on`, answers over TLS with the CA it made,
/// exits 0 on SIGTERM, and reuses its CA when started again.
#[tokio::test]
async fn the_binary_starts_on_defaults_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let spawn = || {
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.path().to_str().unwrap(),
        ];
        Process::start(
            Path::new(env!("CARGO_BIN_EXE_coffer-server")),
            args.map(str::to_owned).into(),
        )
        .unwrap()
    };
    let mut server = spawn();
    let ca = data.path().join("tls/ca.pem");
    let ca_pem = std::fs::read(&ca).unwrap();
    let mut conn = connect(server.addr(), &ca).await;
    call(&mut conn, 1, hello()).await;
    assert!(matches!(
        call(&mut conn, 2, Request::Ping).await.msg,
        Response::Pong(_)
    ));
    drop(conn);
    assert!(server.terminate().unwrap().success(), "exit 0 on SIGTERM");

    let server = spawn();
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        ca_pem,
        "the development CA is reused"
    );
    let mut conn = connect(server.addr(), &ca).await;
    call(&mut conn, 1, hello()).await;
}
