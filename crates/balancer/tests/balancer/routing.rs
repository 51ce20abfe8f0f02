//! Where connections go while every backend is healthy, drained, or full.

use std::time::Duration;

use coffer_balancer::{Config, Strategy};
use tokio::io::AsyncReadExt;

use crate::support::{
    all_up, backend, backends, config, connect, http, metric, rig, servers, spread, until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_lands_thirty_connections_ten_ten_ten() {
    let servers = servers(3);
    let rig = rig(config(&servers.addrs(), Strategy::RoundRobin), servers.ca()).await;
    all_up(&rig).await;
    let landed = spread(rig.addr, servers.ca(), 30).await;
    assert_eq!(landed.into_values().collect::<Vec<_>>(), [10, 10, 10]);
    // The operator's view agrees.
    let view = backends(rig.admin).await;
    assert_eq!(view.len(), 3);
    for (b, addr) in view.iter().zip(servers.addrs()) {
        assert_eq!(b["addr"], addr.to_string());
        assert_eq!(b["state"], "up");
        assert_eq!(b["total"], 10, "{b}");
        assert_eq!(b["failures"], 0, "{b}");
        assert!(b["bytes_in"].as_u64().unwrap() > 0 && b["bytes_out"].as_u64().unwrap() > 0);
    }
    // Every connection closed: none is left counted as active.
    until(
        Duration::from_secs(5),
        "connections counted closed",
        || async { backends(rig.admin).await.iter().all(|b| b["active"] == 0) },
    )
    .await;
    let (status, metrics) = http(rig.admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    for addr in servers.addrs() {
        let sample = |name: &str| format!("coffer_balancer_backend_{name}{{backend=\"{addr}\"}}");
        assert_eq!(
            metric(rig.admin, &sample("connections_total")).await,
            Some(10.0)
        );
        assert_eq!(metric(rig.admin, &sample("up")).await, Some(1.0));
        assert_eq!(
            metric(rig.admin, &sample("connect_failures_total")).await,
            Some(0.0)
        );
    }
    assert_eq!(
        metric(
            rig.admin,
            "coffer_balancer_client_connections_accepted_total"
        )
        .await,
        Some(30.0)
    );
    // Prometheus text: every line a comment or `name[{labels}] value`.
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').expect(line);
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_connections_to_the_least_busy() {
    let servers = servers(3);
    let rig = rig(
        config(&servers.addrs(), Strategy::LeastConnections),
        servers.ca(),
    )
    .await;
    all_up(&rig).await;
    let ca = servers.ca();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(rig.addr, ca).await.unwrap());
    }
    let nodes: Vec<_> = held.iter().map(|c| c.welcome().node_id.clone()).collect();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"], "ties rotate");
    // Two more on node-1 and node-3 (ties rotate), then node-2 is the least busy.
    held.push(connect(rig.addr, ca).await.unwrap());
    held.push(connect(rig.addr, ca).await.unwrap());
    let actives = |v: Vec<serde_json::Value>| {
        v.iter()
            .map(|b| b["active"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(actives(backends(rig.admin).await), [2, 2, 1]);
    let next = connect(rig.addr, ca).await.unwrap();
    assert_eq!(
        next.welcome().node_id,
        "node-3",
        "the least busy, whatever the rotation says"
    );
    // node-2's clients leave: every new one goes there until it catches up.
    held.push(next);
    held.retain(|c| c.welcome().node_id != "node-2");
    until(Duration::from_secs(5), "node-2 idle", || async {
        actives(backends(rig.admin).await) == [2, 0, 2]
    })
    .await;
    for _ in 0..2 {
        held.push(connect(rig.addr, ca).await.unwrap());
        assert_eq!(held.last().unwrap().welcome().node_id, "node-2");
    }
    assert_eq!(actives(backends(rig.admin).await), [2, 2, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_gets_no_new_connections_and_keeps_its_own() {
    let servers = servers(3);
    let addrs = servers.addrs();
    let rig = rig(config(&addrs, Strategy::RoundRobin), servers.ca()).await;
    all_up(&rig).await;
    let ca = servers.ca();
    let _first = connect(rig.addr, ca).await.unwrap();
    let on_node_2 = connect(rig.addr, ca).await.unwrap();
    assert_eq!(on_node_2.welcome().node_id, "node-2");

    let (status, body) = http(rig.admin, "POST", &format!("/backends/{}/drain", addrs[1])).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"draining\""), "{body}");
    let landed = spread(rig.addr, ca, 12).await;
    assert_eq!(landed.get("node-2"), None, "{landed:?}");
    assert_eq!(landed.values().sum::<usize>(), 12);
    // Its established connection finishes its work.
    assert!(on_node_2.ping().await.unwrap().ready);
    let drained = backend(rig.admin, addrs[1]).await;
    assert_eq!(
        (drained["state"].as_str(), drained["active"].as_u64()),
        (Some("draining"), Some(1))
    );

    let (status, _) = http(
        rig.admin,
        "POST",
        &format!("/backends/{}/undrain", addrs[1]),
    )
    .await;
    assert_eq!(status, 200);
    let landed = spread(rig.addr, ca, 6).await;
    assert_eq!(landed.get("node-2"), Some(&2), "{landed:?}");

    // The admin API refuses what it does not know.
    assert_eq!(
        http(rig.admin, "POST", "/backends/127.0.0.1:1/drain")
            .await
            .0,
        404
    );
    assert_eq!(
        http(rig.admin, "POST", "/backends/nowhere/drain").await.0,
        400
    );
    assert_eq!(
        http(rig.admin, "GET", &format!("/backends/{}/drain", addrs[1]))
            .await
            .0,
        405
    );
    assert_eq!(http(rig.admin, "DELETE", "/backends").await.0, 405);
    assert_eq!(http(rig.admin, "GET", "/nothing").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_says_nothing_is_closed_before_any_backend_sees_it() {
    let servers = servers(1);
    let rig = rig(
        Config {
            first_byte_timeout: Duration::from_millis(300),
            ..config(&servers.addrs(), Strategy::RoundRobin)
        },
        servers.ca(),
    )
    .await;
    all_up(&rig).await;
    let mut silent = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the balancer closes a silent client");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(backends(rig.admin).await[0]["total"], 0);
    assert_eq!(
        metric(
            rig.admin,
            "coffer_balancer_client_connections_timed_out_total"
        )
        .await,
        Some(1.0)
    );
    // Others are served meanwhile.
    connect(rig.addr, servers.ca()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_maximum_are_closed_on_arrival() {
    let servers = servers(1);
    let rig = rig(
        Config {
            max_connections: 2,
            ..config(&servers.addrs(), Strategy::RoundRobin)
        },
        servers.ca(),
    )
    .await;
    all_up(&rig).await;
    let ca = servers.ca();
    let a = connect(rig.addr, ca).await.unwrap();
    let _b = connect(rig.addr, ca).await.unwrap();
    assert!(connect(rig.addr, ca).await.is_err());
    drop(a);
    until(Duration::from_secs(5), "a place frees up", || async {
        metric(rig.admin, "coffer_balancer_client_connections").await == Some(1.0)
    })
    .await;
    connect(rig.addr, ca).await.unwrap();
    // Exactly the one refused above.
    assert_eq!(
        metric(
            rig.admin,
            "coffer_balancer_client_connections_rejected_total"
        )
        .await,
        Some(1.0)
    );
}
