//! Three real servers (in-process, one CA) behind the balancer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use coffer_balancer::{Balancer, Options, Strategy};
use coffer_certs::{Ca, Kind, Validity};
use coffer_client::{Client, ClientTimeouts, Endpoint};
use coffer_conformance::Process;
use coffer_net::{Listener, Net, SystemClock, TokioNet, tls};
use coffer_server::{Config, Server};
use rustls_pki_types::ServerName;
use tokio_util::sync::{CancellationToken, DropGuard};

struct Cluster {
    servers: Vec<SocketAddr>,
    ca: PathBuf,
    _guards: Vec<DropGuard>,
    _dir: tempfile::TempDir,
}

/// Three servers, node-1..node-3, with certificates from one CA.
async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let ca = Ca::generate("test CA", Validity::days_from(now, 2)).unwrap();
    ca.write(dir.path(), false).unwrap();
    let issued = ca
        .issue(
            Kind::Server,
            "localhost",
            &["localhost".into(), "127.0.0.1".into()],
            Validity::days_from(now, 2),
        )
        .unwrap();
    let (cert, key) = issued.write(dir.path(), "server", false).unwrap();
    let mut servers = Vec::new();
    let mut guards = Vec::new();
    for n in 1..=3 {
        let config = Config {
            data: dir.path().join(format!("node-{n}")),
            node_id: format!("node-{n}"),
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            ca: Some(dir.path().join("ca.pem")),
            ..Config::default()
        };
        let server = Arc::new(Server::new(config, Arc::new(SystemClock)).unwrap());
        let listener = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        servers.push(listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(listener, shutdown.clone()));
        guards.push(shutdown.drop_guard());
    }
    Cluster {
        servers,
        ca: dir.path().join("ca.pem"),
        _guards: guards,
        _dir: dir,
    }
}

async fn balance(
    backends: Vec<SocketAddr>,
    strategy: Strategy,
) -> (SocketAddr, Arc<Balancer>, DropGuard) {
    let balancer = Arc::new(Balancer::new(backends, strategy, Options::default()).unwrap());
    let listener = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(balancer.clone().run(TokioNet, listener, shutdown.clone()));
    (addr, balancer, shutdown.drop_guard())
}

fn endpoint(addr: SocketAddr, ca: &Path) -> Endpoint {
    Endpoint {
        addr,
        name: ServerName::try_from("localhost").unwrap(),
        tls: tls::client_config(tls::load_roots(ca).unwrap(), None, Arc::new(SystemClock)).unwrap(),
        ca_label: ca.display().to_string(),
        timeouts: ClientTimeouts::default(),
    }
}

/// Connects through the balancer; the welcome says which node answered.
async fn land(addr: SocketAddr, ca: &Path) -> Client {
    Client::connect(&TokioNet, &endpoint(addr, ca))
        .await
        .unwrap()
}

#[tokio::test]
async fn round_robin_spreads_thirty_connections_ten_ten_ten() {
    let c = cluster().await;
    let (addr, balancer, _guard) = balance(c.servers.clone(), Strategy::RoundRobin).await;
    let mut landed = BTreeMap::new();
    for _ in 0..30 {
        let client = land(addr, &c.ca).await;
        // TLS end to end: the server's certificate verified through the balancer.
        assert!(client.ping().await.unwrap().ready);
        *landed.entry(client.welcome().node_id.clone()).or_insert(0) += 1;
    }
    assert_eq!(landed.into_values().collect::<Vec<_>>(), [10, 10, 10]);
    assert!(
        balancer
            .stats()
            .iter()
            .all(|s| s.total == 10 && s.failures == 0)
    );
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 2 s");
}

#[tokio::test]
async fn least_connections_follows_held_connections() {
    let c = cluster().await;
    let (addr, balancer, _guard) = balance(c.servers.clone(), Strategy::LeastConnections).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(land(addr, &c.ca).await);
    }
    let nodes: Vec<_> = held.iter().map(|c| c.welcome().node_id.clone()).collect();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"], "ties rotate");
    // node-2's client leaves: it is now the least busy, whatever the rotation says.
    drop(held.remove(1));
    wait_for(|| balancer.stats()[1].active == 0).await;
    let refill = land(addr, &c.ca).await;
    assert_eq!(refill.welcome().node_id, "node-2");
    // All hold one again: a tie, broken by rotation after node-2.
    let next = land(addr, &c.ca).await;
    assert_eq!(next.welcome().node_id, "node-3");
    assert_eq!(
        balancer
            .stats()
            .iter()
            .map(|s| s.active)
            .collect::<Vec<_>>(),
        [1, 1, 2]
    );
    drop((held, refill, next));
}

#[tokio::test]
async fn a_dead_backend_costs_no_client_connection() {
    let c = cluster().await;
    let dead = {
        let l = TokioNet.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        l.local_addr().unwrap()
    };
    let backends = vec![c.servers[0], dead, c.servers[2]];
    let (addr, balancer, _guard) = balance(backends, Strategy::RoundRobin).await;
    for _ in 0..9 {
        let client = land(addr, &c.ca).await;
        assert!(client.ping().await.unwrap().ready);
    }
    let stats = balancer.stats();
    assert_eq!(stats[1].total, 0);
    assert!(stats[1].failures >= 3, "{stats:?}");
    assert_eq!(stats[0].total + stats[2].total, 9);
}

#[test]
fn bad_backend_lists_are_refused() {
    assert!(Balancer::new(vec![], Strategy::RoundRobin, Options::default()).is_err());
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert!(Balancer::new(vec![a, a], Strategy::RoundRobin, Options::default()).is_err());
}

#[tokio::test]
async fn the_binary_balances_and_refuses_bad_configs() {
    let c = cluster().await;
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    for s in &c.servers {
        args.extend(["--backend".to_owned(), s.to_string()]);
    }
    let child = Process::start(Path::new(env!("CARGO_BIN_EXE_coffer-balancer")), args).unwrap();
    let addr = child.addr();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3 {
        seen.insert(land(addr, &c.ca).await.welcome().node_id.clone());
    }
    assert_eq!(seen.len(), 3);
    drop(child);

    let dup = Command::new(env!("CARGO_BIN_EXE_coffer-balancer"))
        .args(["--backend", "127.0.0.1:9", "--backend", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("listed twice"));
}
