//! The protocol's envelope: hello first, typed answers to bad frames, TLS
//! garbage, shutdown, and the binary on its defaults.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use coffer_conformance::Process;
use coffer_net::{Net, TokioNet};
use coffer_proto::request::Hello;
use coffer_proto::{ErrorCode, Frame, PROTOCOL_VERSION, RawFrame, Request, Response};
use tokio::io::AsyncWriteExt;

use super::support::{Conn, Harness, error, hello};

fn code(frame: &Frame<Response>) -> ErrorCode {
    error(frame.msg.clone()).code
}

#[tokio::test]
async fn hello_then_ping() {
    let s = Harness::start().await;
    let mut conn = s.connect().await;
    let Response::Welcome(w) = conn.call(hello()).await else {
        panic!()
    };
    assert_eq!(
        (w.protocol, w.node_id.as_str()),
        (PROTOCOL_VERSION, "node-1")
    );
    let Response::Pong(pong) = conn.call(Request::Ping).await else {
        panic!()
    };
    assert!(pong.ready && pong.time_ms > 1_600_000_000_000);
}

#[tokio::test]
async fn hello_comes_first_and_speaks_our_version() {
    let s = Harness::start().await;
    let mut conn = s.connect().await;
    let answer = conn.call_with(Request::Ping, Bytes::new()).await;
    assert_eq!(code(&answer), ErrorCode::BadRequest);
    assert!(
        conn.inner.recv::<Response>().await.unwrap().is_none(),
        "closed after the refusal"
    );

    let mut conn = s.connect().await;
    let old = Request::Hello(Hello {
        protocol: 0,
        agent: "old".into(),
    });
    assert_eq!(
        code(&conn.call_with(old, Bytes::new()).await),
        ErrorCode::BadRequest
    );
    assert!(conn.inner.recv::<Response>().await.unwrap().is_none());
}

#[tokio::test]
async fn bad_requests_are_answered_and_the_connection_survives() {
    let s = Harness::start().await;
    let mut conn = s.connect().await;
    conn.call(hello()).await;
    // Unknown type, wrong field type, body on a bodiless message: each answered
    // with the request's id, and the connection goes on.
    for (id, header, body) in [
        (7, r#"{"id":7,"type":"teleport"}"#, &b""[..]),
        (8, r#"{"id":8,"type":"stat","folder_id":1,"path":"a"}"#, b""),
        (9, r#"{"id":9,"type":"ping"}"#, b"unexpected"),
        (10, r#"{"id":10,"type":"login","username":"x"}"#, b""),
    ] {
        let raw = RawFrame {
            header: Bytes::from(header),
            body: Bytes::copy_from_slice(body),
        };
        conn.inner.write_frame(&raw).await.unwrap();
        let answer = conn.inner.recv::<Response>().await.unwrap().unwrap();
        assert_eq!((answer.id, code(&answer)), (id, ErrorCode::BadRequest));
    }
    // A valid request without a session.
    let e = error(conn.call(Request::Whoami).await);
    assert_eq!(e.code, ErrorCode::Unauthorized);
    assert!(matches!(conn.call(Request::Ping).await, Response::Pong(_)));
}

#[tokio::test]
async fn broken_framing_gets_an_error_then_the_door() {
    let s = Harness::start().await;
    // A header that is not JSON.
    let mut conn = s.connect().await;
    conn.call(hello()).await;
    let raw = RawFrame {
        header: Bytes::from_static(b"{oops"),
        body: Bytes::new(),
    };
    conn.inner.write_frame(&raw).await.unwrap();
    let answer = conn.inner.recv::<Response>().await.unwrap().unwrap();
    assert_eq!((answer.id, code(&answer)), (0, ErrorCode::BadRequest));
    assert!(conn.inner.recv::<Response>().await.unwrap().is_none());

    // A prefix announcing a body over the limit: refused before it is sent.
    let mut conn = s.connect().await;
    conn.call(hello()).await;
    let stream = conn.inner.get_mut();
    stream.write_all(&[0, 0, 0, 2]).await.unwrap();
    stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let answer = conn.inner.recv::<Response>().await.unwrap().unwrap();
    assert_eq!(code(&answer), ErrorCode::TooLarge);
    assert!(conn.inner.recv::<Response>().await.unwrap().is_none());
}

#[tokio::test]
async fn garbage_instead_of_tls_does_not_disturb_others() {
    let s = Harness::start().await;
    let mut raw = TokioNet.connect(s.addr).await.unwrap();
    raw.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    raw.write_all(b"\r\n\r\nnot tls at all").await.unwrap();
    let mut conn = s.connect().await;
    conn.call(hello()).await;
    assert!(matches!(conn.call(Request::Ping).await, Response::Pong(_)));
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let s = Harness::start().await;
    let mut conn = s.connect().await;
    conn.call(hello()).await;
    s.shutdown.cancel();
    assert!(
        conn.inner.recv::<Response>().await.unwrap().is_none(),
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
    let mut conn = Conn::open(server.addr(), &ca).await;
    conn.call(hello()).await;
    assert!(matches!(conn.call(Request::Ping).await, Response::Pong(_)));
    drop(conn);
    assert!(server.terminate().unwrap().success(), "exit 0 on SIGTERM");

    let server = spawn();
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        ca_pem,
        "the development CA is reused"
    );
    let mut conn = Conn::open(server.addr(), &ca).await;
    conn.call(hello()).await;
}
