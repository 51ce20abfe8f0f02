//! One connection: hello, ping, typed failures; the binary's error lines.

use std::net::SocketAddr;
use std::path::Path;

use super::support::start;
use coffer_client::{Client, ClientError, ClientTimeouts, Endpoint};
use coffer_net::{Listener, Net, TokioNet};
use coffer_proto::{ErrorCode, Request};
use rustls_pki_types::ServerName;

fn endpoint(addr: SocketAddr, ca: &Path) -> Endpoint {
    let name = ServerName::try_from("localhost").unwrap();
    Endpoint::trusting(addr, name, ca, ClientTimeouts::default()).unwrap()
}

#[tokio::test]
async fn connects_says_hello_and_pings() {
    let s = start().await;
    let client = Client::connect(&TokioNet, &endpoint(s.addr, &s.ca))
        .await
        .unwrap();
    assert_eq!(client.welcome().node_id, "node-1");
    let pong = client.ping().await.unwrap();
    assert!(pong.ready);
    // Error answers become typed errors; the connection stays usable.
    let err = client.call(Request::Whoami).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server(body) if body.code == ErrorCode::Unauthorized),
        "{err}"
    );
    assert!(client.ping().await.is_ok());
}

#[tokio::test]
async fn another_ca_is_refused_with_a_clear_message() {
    let s = start().await;
    let other = start().await; // a second server: its own development CA
    let err = Client::connect(&TokioNet, &endpoint(s.addr, &other.ca))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("the server's certificate is not signed by CA "),
        "{text}"
    );
    assert!(text.contains(&other.ca.display().to_string()), "{text}");
    assert_eq!(err.code(), ErrorCode::Unauthorized);
}

#[tokio::test]
async fn a_certificate_for_other_names_is_said_to_be_so() {
    let s = start().await;
    let endpoint = Endpoint {
        name: ServerName::try_from("elsewhere.example").unwrap(),
        ..endpoint(s.addr, &s.ca)
    };
    let err = Client::connect(&TokioNet, &endpoint).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("the server's certificate is not valid for elsewhere.example (it names ")
            && text.contains("localhost"),
        "{text}"
    );
    assert_eq!(err.code(), ErrorCode::Unauthorized);
}

#[tokio::test]
async fn nobody_listening_is_unavailable() {
    let s = start().await;
    let free = {
        let l = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        l.local_addr().unwrap()
    };
    let err = Client::connect(&TokioNet, &endpoint(free, &s.ca))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(err.is_transient());
}

async fn coffer(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(args)
        .env_remove("COFFER_CA")
        .env_remove("COFFER_SERVER")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_binary_pings_and_reports_failures_in_one_line() {
    let s = start().await;
    let other = start().await;
    let addr = s.addr.to_string();
    let ca = s.ca.to_str().unwrap();

    let ok = coffer(&["ping", "--server", &addr, "--ca", ca]).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("node-1 ready"));

    let json = coffer(&["--json", "ping", "--server", &addr, "--ca", ca]).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (v["node_id"].as_str(), v["ready"].as_bool()),
        (Some("node-1"), Some(true))
    );

    for (args, expected) in [
        (
            vec!["ping", "--server", &addr],
            "error: bad_request: no CA given",
        ),
        (
            vec![
                "ping",
                "--server",
                &addr,
                "--ca",
                other.ca.to_str().unwrap(),
            ],
            "error: unauthorized: the server's certificate is not signed by CA",
        ),
        (
            vec!["ping", "--server", "127.0.0.1:1", "--ca", ca],
            "error: unavailable: cannot connect",
        ),
    ] {
        let out = coffer(&args).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(expected), "{stderr}");
    }
}
