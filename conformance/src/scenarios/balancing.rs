//! Scenario 3: load balancing. Round-robin spreads evenly; least-connections
//! follows held connections; a killed backend is detected and no new
//! connection fails meanwhile; a paused backend is detected; a restarted one
//! is re-admitted; a drained one gets nothing new until undrained.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cluster::{Cluster, Member, Probe};
use crate::scenario::{Context as _, Failure, Tally, admin, backend_state, poll};

/// How long the balancer may take to see a change (health checks every
/// 500 ms, three failures or two successes, a check timeout of 2 s).
const DETECTION: Duration = Duration::from_secs(15);

/// Makes `n` connections through the balancer (counted in `t`): how many
/// landed on each node.
async fn spread(
    t: &mut Tally,
    probe: &Probe,
    cluster: &impl Cluster,
    n: usize,
) -> Result<BTreeMap<String, usize>, Failure> {
    let mut landed = BTreeMap::new();
    for k in 0..n {
        let node = probe
            .ping(cluster.front())
            .await
            .ctx(&format!("ping {k} through the balancer"))?;
        *landed.entry(node).or_insert(0) += 1;
    }
    t.ops(n);
    Ok(landed)
}

async fn until_state(cluster: &impl Cluster, i: usize, want: &str) -> Result<(), Failure> {
    let (admin_addr, backend) = (cluster.admin(), cluster.backend(i));
    poll(
        DETECTION,
        Duration::from_millis(100),
        &format!("node-{} {want}", i + 1),
        || async move {
            let (state, _) = backend_state(admin_addr, backend).await?;
            Ok((state == want).then_some(()))
        },
    )
    .await
}

/// `POST /backends/<backend i>/<action>` to the admin endpoint, which must
/// answer 200.
async fn post(
    t: &mut Tally,
    cluster: &impl Cluster,
    i: usize,
    action: &str,
) -> Result<(), Failure> {
    let path = format!("/backends/{}/{action}", cluster.backend(i));
    let (status, body) = admin(cluster.admin(), "POST", &path).await?;
    t.check(status == 200, || format!("POST {path}: {status} {body}"))
}

/// Round-robin and failure handling, on a round-robin cluster of ≥ 3 servers.
pub async fn round_robin(cluster: &mut impl Cluster) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    let probe = Probe::new(cluster.ca()).ctx("probe")?;
    let n = cluster.servers();
    for i in 0..n {
        until_state(cluster, i, "up").await?;
    }

    // Even spread while all are healthy.
    let landed = spread(&mut t, &probe, cluster, 10 * n).await?;
    t.check(
        landed.len() == n && landed.values().all(|&c| c == 10),
        || format!("round-robin over {n} healthy servers landed {landed:?}"),
    )?;

    // A killed backend: no new connection fails, and it is marked down.
    cluster.kill(Member::Server(n - 1)).await.ctx("kill")?;
    t.faults += 1;
    let dead = format!("node-{n}");
    let mut during = 0;
    let detected = poll(
        DETECTION,
        Duration::from_millis(20),
        "the killed server marked down",
        || {
            let probe = probe.clone();
            let (front, admin_addr, backend) =
                (cluster.front(), cluster.admin(), cluster.backend(n - 1));
            let dead = dead.clone();
            during += 1;
            async move {
                let node = probe
                    .ping(front)
                    .await
                    .ctx("a connection while a server is dead")?;
                if node == dead {
                    return Err(format!("{dead} answered after SIGKILL"));
                }
                let (state, _) = backend_state(admin_addr, backend).await?;
                Ok((state == "down").then_some(()))
            }
        },
    )
    .await;
    t.ops(during);
    detected?;
    t.checks += during;
    let landed = spread(&mut t, &probe, cluster, 4 * (n - 1)).await?;
    t.check(
        !landed.contains_key(&dead) && landed.values().all(|&c| c == 4),
        || format!("with {dead} down, connections landed {landed:?}"),
    )?;

    // Restarted: re-admitted, and gets its share again.
    cluster.start(Member::Server(n - 1)).await.ctx("restart")?;
    until_state(cluster, n - 1, "up").await?;
    let landed = spread(&mut t, &probe, cluster, 2 * n).await?;
    t.check(landed.get(&dead) == Some(&2), || {
        format!("after re-admission, {landed:?}")
    })?;

    // A paused backend (SIGSTOP: sockets open, no answers) is detected too,
    // and clients still get through; resumed, it comes back.
    cluster.pause(Member::Server(0)).await.ctx("pause")?;
    t.faults += 1;
    until_state(cluster, 0, "down").await?;
    let landed = spread(&mut t, &probe, cluster, 2 * (n - 1)).await?;
    t.check(!landed.contains_key("node-1"), || {
        format!("a paused server got {landed:?}")
    })?;
    cluster.resume(Member::Server(0)).await.ctx("resume")?;
    until_state(cluster, 0, "up").await?;

    // Drain: no new connection lands there until undrained.
    post(&mut t, cluster, 1, "drain").await?;
    until_state(cluster, 1, "draining").await?;
    let landed = spread(&mut t, &probe, cluster, 3 * n).await?;
    t.check(!landed.contains_key("node-2"), || {
        format!("a draining server got {landed:?}")
    })?;
    post(&mut t, cluster, 1, "undrain").await?;
    until_state(cluster, 1, "up").await?;
    let landed = spread(&mut t, &probe, cluster, 3 * n).await?;
    t.check(landed.get("node-2") == Some(&3), || {
        format!("after undrain, {landed:?}")
    })?;

    // Cut off from the balancer: marked down, clients unaffected; healed: up.
    cluster
        .partition(Member::Balancer, Member::Server(n - 1))
        .await
        .ctx("partition")?;
    t.faults += 1;
    until_state(cluster, n - 1, "down").await?;
    let landed = spread(&mut t, &probe, cluster, 2 * (n - 1)).await?;
    t.check(!landed.contains_key(&dead), || {
        format!("a partitioned server got {landed:?}")
    })?;
    cluster
        .heal(Member::Balancer, Member::Server(n - 1))
        .await
        .ctx("heal")?;
    until_state(cluster, n - 1, "up").await?;
    let landed = spread(&mut t, &probe, cluster, 2 * n).await?;
    t.check(landed.get(&dead) == Some(&2), || {
        format!("after the heal, {landed:?}")
    })?;
    Ok(t)
}

/// Least-connections: held connections steer new ones, on a
/// least-connections cluster of ≥ 2 servers.
pub async fn least_connections(cluster: &mut impl Cluster) -> Result<Tally, Failure> {
    let mut t = Tally::default();
    let probe = Probe::new(cluster.ca()).ctx("probe")?;
    let n = cluster.servers();
    for i in 0..n {
        until_state(cluster, i, "up").await?;
    }
    // Hold two connections per server: each new one goes where fewest are.
    let mut held = Vec::new();
    for _ in 0..2 * n {
        let client = probe
            .connect(cluster.front())
            .await
            .ctx("hold a connection")?;
        let node = client
            .ping()
            .await
            .ctx("ping on a held connection")?
            .node_id;
        held.push((node, client));
    }
    t.ops(2 * n);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (node, _) in &held {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    t.check(
        per_node.len() == n && per_node.values().all(|&c| c == 2),
        || format!("{} held connections spread {per_node:?}", 2 * n),
    )?;
    // The balancer counts them too.
    let (admin_addr, backend) = (cluster.admin(), cluster.backend(0));
    let (_, active) = backend_state(admin_addr, backend).await?;
    t.check(active == 2, || {
        format!("node-1 has {active} active, expected 2")
    })?;

    // Close the ones on node-1: the next new ones go there.
    held.retain(|(node, _)| node != "node-1");
    poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "node-1's connections released",
        || async move {
            let (_, active) = backend_state(admin_addr, backend).await?;
            Ok((active == 0).then_some(()))
        },
    )
    .await?;
    for k in 0..2 {
        let client = probe.connect(cluster.front()).await.ctx("hold again")?;
        let node = client.ping().await.ctx("ping")?.node_id;
        t.ops(1);
        t.check(node == "node-1", || {
            format!("new connection {k} went to {node}, not the idle node-1")
        })?;
        held.push((node, client));
    }
    drop(held);
    Ok(t)
}
