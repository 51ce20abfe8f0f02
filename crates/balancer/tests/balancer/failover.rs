//! Backends that die, freeze, never answer, show the wrong certificate, or
//! leave the configuration.

use std::sync::Arc;
use std::time::Duration;

use coffer_balancer::{BackendSpec, Config, Strategy};
use coffer_certs::{Ca, Kind, Validity};
use coffer_client::Client;
use coffer_net::{SystemClock, TokioNet};
use coffer_server::Server;
use tokio_util::sync::CancellationToken;

use crate::support::{
    Load, all_up, backend, backends, config, connect, endpoint, rig, servers, spread, state_becomes,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_goes_down_no_new_connection_fails_and_a_restart_comes_back() {
    let mut servers = servers(3);
    let addrs = servers.addrs();
    let rig = rig(config(&addrs, Strategy::RoundRobin), servers.ca()).await;
    all_up(&rig).await;

    // Clients keep connecting throughout.
    let load = Load::start(rig.addr, servers.ca());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = tokio::time::Instant::now();
    servers.procs[1].kill();
    let took = state_becomes(&rig, addrs[1], "down", Duration::from_secs(10)).await;
    eprintln!("killed backend marked down after {took:?} (fall × interval = 900 ms)");
    let total_when_down = backend(rig.admin, addrs[1]).await["total"].clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.none_failed_since(killed).await;
    let dead = backend(rig.admin, addrs[1]).await;
    assert_eq!(
        dead["total"], total_when_down,
        "nothing proxied to it once down"
    );
    assert!(dead["failures"].as_u64().unwrap() >= 1, "{dead}");

    // Back on the same address: re-admitted after `rise` good checks.
    tokio::task::block_in_place(|| servers.procs[1].restart()).unwrap();
    state_becomes(&rig, addrs[1], "up", Duration::from_secs(10)).await;
    let landed = spread(rig.addr, servers.ca(), 6).await;
    assert_eq!(landed.get("node-2"), Some(&2), "{landed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_backend_is_routed_around_its_connections_closed_and_it_is_readmitted() {
    let servers = servers(3);
    let addrs = servers.addrs();
    let rig = rig(config(&addrs, Strategy::RoundRobin), servers.ca()).await;
    all_up(&rig).await;
    let ca = servers.ca();
    // A client on node-2 with a long request deadline: if the balancer left
    // its connection hanging, its next request would hang with it.
    let long = endpoint(rig.addr, ca, Duration::from_secs(120));
    let _first = Client::connect(&TokioNet, &long).await.unwrap();
    let held = Client::connect(&TokioNet, &long).await.unwrap();
    assert_eq!(held.welcome().node_id, "node-2");

    // Clients keep connecting throughout: those sent to the frozen backend
    // before it is marked down are moved to another when it does not answer.
    let load = Load::start(rig.addr, ca);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The instant is taken once the process is wholly stopped: the
    // connection in progress then may have begun its TLS session on it.
    servers.procs[1].pause().unwrap();
    let frozen = tokio::time::Instant::now();
    let took = state_becomes(&rig, addrs[1], "down", Duration::from_secs(30)).await;
    eprintln!("frozen backend marked down after {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // As with a kill, the one connection whose TLS session was already under
    // way on the frozen backend cannot be moved; every later one must land.
    load.none_failed_since(frozen).await;
    let error = backend(rig.admin, addrs[1]).await["last_error"].clone();
    assert!(
        error.as_str().is_some_and(|e| e.contains("within")),
        "{error}"
    );
    let ping = tokio::time::timeout(Duration::from_secs(10), held.ping())
        .await
        .expect("its connection is closed, not left hanging");
    assert!(ping.is_err());

    let landed = spread(rig.addr, ca, 9).await;
    assert_eq!(landed.get("node-2"), None, "{landed:?}");
    servers.procs[1].resume().unwrap();
    state_becomes(&rig, addrs[1], "up", Duration::from_secs(30)).await;
    let landed = spread(rig.addr, ca, 6).await;
    assert_eq!(landed.get("node-2"), Some(&2), "{landed:?}");
}

/// A server with a certificate from a CA the balancer does not trust.
async fn stranger(dir: &std::path::Path) -> (std::net::SocketAddr, tokio_util::sync::DropGuard) {
    let now = time::OffsetDateTime::now_utc();
    let ca = Ca::generate("another CA", Validity::days_from(now, 2)).unwrap();
    let issued = ca
        .issue(
            Kind::Server,
            "localhost",
            &["localhost".into(), "127.0.0.1".into()],
            Validity::days_from(now, 2),
        )
        .unwrap();
    let (cert, key) = issued.write(dir, "stranger", false).unwrap();
    let config = coffer_server::Config {
        data: dir.join("stranger-data"),
        node_id: "stranger".into(),
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..coffer_server::Config::default()
    };
    let server = Arc::new(Server::new(config, Arc::new(SystemClock)).unwrap());
    let stop = CancellationToken::new();
    let (addr, _) = server.spawn_local(stop.clone()).await.unwrap();
    (addr, stop.drop_guard())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_that_never_answer_or_do_not_verify_are_down() {
    let servers = servers(2);
    let dir = tempfile::tempdir().unwrap();
    // Accepts and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let (untrusted, _stranger) = stranger(dir.path()).await;
    let good = servers.addrs()[0];
    let mut config = config(&[good, silent_addr, untrusted], Strategy::RoundRobin);
    // A real server, under a name its certificate does not carry.
    let wrong_name = servers.addrs()[1];
    config.backends.push(BackendSpec {
        addr: wrong_name,
        name: Some("not-this-server".into()),
    });
    let rig = rig(config, servers.ca()).await;

    for (addr, says) in [
        (silent_addr, "within"),
        (untrusted, "certificate"),
        (wrong_name, "certificate"),
    ] {
        state_becomes(&rig, addr, "down", Duration::from_secs(15)).await;
        let b = backend(rig.admin, addr).await;
        let error = b["last_error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(says), "{addr}: {error}");
    }
    assert_eq!(backend(rig.admin, good).await["state"], "up");
    let landed = spread(rig.addr, servers.ca(), 6).await;
    assert_eq!(
        landed.into_iter().collect::<Vec<_>>(),
        [("node-1".to_owned(), 6)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_connections_and_a_bad_one_changes_nothing() {
    let servers = servers(3);
    let addrs = servers.addrs();
    let rig = rig(config(&addrs[..2], Strategy::RoundRobin), servers.ca()).await;
    all_up(&rig).await;
    let ca = servers.ca();
    let _first = connect(rig.addr, ca).await.unwrap();
    let held = connect(rig.addr, ca).await.unwrap();
    assert_eq!(held.welcome().node_id, "node-2");

    let mut bad = config(&addrs, Strategy::RoundRobin);
    bad.backends.push(bad.backends[0].clone());
    let refused = rig.balancer.reload(bad, None).unwrap_err();
    assert!(refused.to_string().contains("listed twice"), "{refused}");
    let listed = |v: Vec<serde_json::Value>| {
        v.iter()
            .map(|b| b["addr"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let before: Vec<String> = addrs[..2].iter().map(ToString::to_string).collect();
    assert_eq!(listed(backends(rig.admin).await), before);

    // node-2 leaves the configuration, node-3 joins, the strategy changes.
    let next = Config {
        strategy: Strategy::LeastConnections,
        ..config(&[addrs[0], addrs[2]], Strategy::RoundRobin)
    };
    let verifier = coffer_balancer::Verifier::new(
        coffer_net::tls::load_roots(ca).unwrap(),
        Arc::new(SystemClock),
    )
    .unwrap();
    rig.balancer.reload(next, Some(verifier)).unwrap();
    let after: Vec<String> = [addrs[0], addrs[2]]
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(listed(backends(rig.admin).await), after);
    all_up(&rig).await;
    // The connection to the removed backend goes on.
    assert!(held.ping().await.unwrap().ready);
    let landed = spread(rig.addr, ca, 4).await;
    assert_eq!(landed.get("node-2"), None, "{landed:?}");
    assert!(
        landed.get("node-3").is_some_and(|&n| n >= 2),
        "least busy first: {landed:?}"
    );
    assert!(
        held.ping().await.unwrap().ready,
        "still serving the held connection"
    );
}
