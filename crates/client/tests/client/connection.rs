//! One connection: hello, ping, typed failures; the binary's error lines.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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

/// A relay to `target` that can die without a word and come back: after
/// [`Relay::restart`], connections it accepted before are answered with a
/// reset when the client next sends on them — what a host that lost power and
/// rebooted does — while new ones are relayed as before.
struct Relay {
    addr: SocketAddr,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _task: tokio_util::sync::DropGuard,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let (g, s) = (generation.clone(), stop.clone());
        tokio::spawn(s.clone().run_until_cancelled_owned(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let born = g.load(Ordering::SeqCst);
                let g = g.clone();
                tokio::spawn(s.clone().run_until_cancelled_owned(async move {
                    let mut server = tokio::net::TcpStream::connect(target).await.unwrap();
                    let (mut a, mut b) = ([0u8; 16384], [0u8; 16384]);
                    loop {
                        tokio::select! {
                            n = client.read(&mut a) => {
                                let Ok(n @ 1..) = n else { return };
                                if g.load(Ordering::SeqCst) != born {
                                    // Rebooted since: this connection is unknown here.
                                    let _ = client.set_zero_linger();
                                    return;
                                }
                                if server.write_all(&a[..n]).await.is_err() { return }
                            }
                            n = server.read(&mut b) => {
                                let Ok(n @ 1..) = n else { return };
                                if client.write_all(&b[..n]).await.is_err() { return }
                            }
                        }
                    }
                }));
            }
        }));
        Relay {
            addr,
            generation,
            _task: stop.drop_guard(),
        }
    }

    fn restart(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_request_that_cannot_run_twice_never_goes_into_a_connection_that_died_quietly() {
    use coffer_client::Pool;
    use coffer_proto::request::Login;
    use coffer_proto::types::{LoginSecret, Sha256};
    let s = start().await;
    let relay = Relay::start(s.addr).await;
    let pool = Pool::new(TokioNet, endpoint(relay.addr, &s.ca), 1);
    // `login` is not retried (it makes a session); here it fails, but as the
    // server's answer, which is what matters.
    let login = || {
        Request::Login(Login {
            username: "nobody".into(),
            login_secret: LoginSecret(Sha256([1; 32])),
            device_id: None,
        })
    };
    let answered = |r: Result<_, ClientError>| match r {
        Err(ClientError::Server(body)) => body.code,
        other => panic!("not the server's answer: {other:?}"),
    };
    assert_eq!(
        answered(pool.call(login(), Default::default()).await),
        ErrorCode::NotFound
    );
    // The path dies and comes back while the pool's connection is quiet.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    relay.restart();
    assert_eq!(
        answered(pool.call(login(), Default::default()).await),
        ErrorCode::NotFound
    );
}
