//! The `coffer-balancer` binary: flags and files refused with a reason,
//! SIGHUP reload, SIGTERM drain, and a whole coffer session through it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use coffer_conformance::process::bin_dir;
use coffer_conformance::{Process, free_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{backends, connect, endpoint, servers, spread, until};

const BALANCER: &str = env!("CARGO_BIN_EXE_coffer-balancer");

/// Runs the binary expecting it to refuse to start; its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(BALANCER).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configurations_are_refused_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![], "no backends"),
        (
            vec![
                "--backend".into(),
                "127.0.0.1:9".into(),
                "--backend".into(),
                "127.0.0.1:9".into(),
            ],
            "listed twice",
        ),
        (vec!["--backend".into(), "nowhere".into()], "not an address"),
        (
            vec![
                "--backend".into(),
                "127.0.0.1:9".into(),
                "--rise".into(),
                "0".into(),
            ],
            "rise and fall",
        ),
        (
            vec![
                "--config".into(),
                file("dup.toml", "backends = [\"127.0.0.1:1\", \"127.0.0.1:1\"]"),
            ],
            "listed twice",
        ),
        (
            vec![
                "--config".into(),
                file("addr.toml", "backends = [\"host:port\"]"),
            ],
            "not an address",
        ),
        (
            vec![
                "--config".into(),
                file("typo.toml", "backend = [\"127.0.0.1:1\"]"),
            ],
            "unknown field",
        ),
        (
            vec!["--config".into(), file("empty.toml", "")],
            "no backends",
        ),
        (
            vec![
                "--config".into(),
                dir.path().join("missing.toml").display().to_string(),
            ],
            "missing.toml",
        ),
    ];
    for (args, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = refused(&args);
        assert!(
            stderr.contains(says),
            "{args:?}: expected {says:?} in {stderr}"
        );
    }
}

fn signal(process: &Process, signal: Signal) {
    kill(Pid::from_raw(process.pid() as i32), signal).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_without_dropping_connections_and_sigterm_lets_them_finish() {
    let servers = servers(3);
    let addrs = servers.addrs();
    let ca = servers.ca();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let admin = SocketAddr::new(loopback, free_port(loopback).unwrap());
    let path = servers.dir().join("balancer.toml");
    let write = |backends: &[String]| {
        let list: Vec<String> = backends.iter().map(|b| format!("{b:?}")).collect();
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"{admin}\"\nca = {:?}\nbackends = [{}]\nshutdown_grace = \"30s\"\n\
             [health]\ninterval = \"300ms\"\nfast_interval = \"100ms\"\n",
            ca.display().to_string(),
            list.join(", ")
        );
        std::fs::write(&path, text).unwrap();
    };
    let two: Vec<String> = addrs[..2].iter().map(ToString::to_string).collect();
    write(&two);
    let log = servers.dir().join("balancer.log");
    let mut balancer = Process::start_with(
        Path::new(BALANCER),
        vec!["--config".into(), path.display().to_string()],
        &[("COFFER_LOG", "debug,rustls=warn")],
        Some(&log),
    )
    .unwrap();
    let front = balancer.addr();
    let up = |n: usize| async move {
        let view = backends(admin).await;
        view.len() == n
            && view
                .iter()
                .all(|b| b["state"] == "up" && b["last_error"].is_null())
    };
    until(Duration::from_secs(20), "two backends up", || up(2)).await;
    let held = coffer_client::Client::connect(
        &coffer_net::TokioNet,
        &endpoint(front, ca, Duration::from_secs(60)),
    )
    .await
    .unwrap();

    // A bad file: logged and ignored; the running configuration stays.
    std::fs::write(&path, "backends = [\"127.0.0.1:1\", \"127.0.0.1:1\"]").unwrap();
    signal(&balancer, Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listed: Vec<String> = backends(admin)
        .await
        .iter()
        .map(|b| b["addr"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, two);
    if let Err(e) = held.ping().await {
        panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap());
    }

    // A good one: three backends, and the held connection carries on.
    let three: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    write(&three);
    signal(&balancer, Signal::SIGHUP);
    until(Duration::from_secs(20), "three backends up", || up(3)).await;
    assert!(held.ping().await.unwrap().ready);
    assert_eq!(spread(front, ca, 3).await.len(), 3);

    // SIGTERM: no new connections, the open one finishes, then it exits.
    signal(&balancer, Signal::SIGTERM);
    until(Duration::from_secs(10), "no longer accepting", || async {
        tokio::net::TcpStream::connect(front).await.is_err()
    })
    .await;
    if let Err(e) = held.ping().await {
        panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap());
    }
    drop(held);
    let status = tokio::task::spawn_blocking(move || balancer.terminate().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(connect(front, ca).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_coffer_session_runs_through_the_balancer() {
    let servers = servers(1);
    let ca = servers.ca().display().to_string();
    let args = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--ca".into(),
        ca.clone(),
        "--backend".into(),
        servers.addrs()[0].to_string(),
    ];
    let balancer = Process::start(Path::new(BALANCER), args).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let coffer = bin_dir().unwrap().join("coffer");
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(&coffer)
            .args(args)
            .arg("--home")
            .arg(dir.path().join("home"))
            .env(
                "COFFER_SERVER",
                format!("localhost:{}", balancer.addr().port()),
            )
            .env("COFFER_CA", &ca)
            .env_remove("COFFER_PASSWORD")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "coffer {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    tokio::task::block_in_place(|| {
        run(
            &[
                "register",
                "alice",
                "--device",
                "laptop",
                "--mac",
                "02:00:00:00:00:01",
                "--password-stdin",
            ],
            Some("correct horse battery\n"),
        );
        run(&["logout"], None);
        run(
            &["login", "alice", "--password-stdin"],
            Some("correct horse battery\n"),
        );
        run(&["folder", "create", "docs"], None);
        // Three chunks and a bit: several requests on several pooled connections.
        let content: Vec<u8> = (0..3 * 1024 * 1024 + 4321u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(dir.path().join("report.bin"), &content).unwrap();
        run(
            &[
                "put",
                &dir.path().join("report.bin").display().to_string(),
                "docs:report.bin",
            ],
            None,
        );
        assert!(run(&["ls", "docs"], None).contains("report.bin"));
        let back = dir.path().join("back.bin");
        run(
            &["get", "docs:report.bin", &back.display().to_string()],
            None,
        );
        assert!(
            std::fs::read(&back).unwrap() == content,
            "downloaded bytes differ"
        );
    });
}
