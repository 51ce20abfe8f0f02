//! `coffer put` of a large file into a replicated cluster of three nodes
//! (write quorum two) against the same into a single node, and how long the
//! cluster takes, after each acknowledged put, until every node holds it.
//!
//! `cargo bench -p coffer-client --bench cluster`. `BENCH_MIB` sets the file
//! size (default 256), `BENCH_RUNS` the runs of each (default 3). Each is
//! measured with the client talking to the first node directly, and through
//! a balancer in front of every node (in this process, as a deployment runs
//! one), which the figure asks for; the balancer passes each byte
//! through once more in both cases. Figures are MB/s (10^6 bytes per
//! second).
//!
//! Each server runs on a runtime of its own, as in a process of its own.
//! First they share the host's cores with each other, the balancer and the
//! client: three nodes then do three times the storing on the cores one
//! node had to itself. Then each node runs on a processor budget of its own
//! (`BENCH_NODE_CORES`, default 0.4 cores; a control group of Linux's `cpu`
//! controller), the single node on the same budget, as each would be on a
//! machine of its own: the cluster's figure against the single node's then
//! measures what replication costs a node, not what three nodes cost one
//! host. That pass is skipped, saying why, where no such group can be made
//! (it needs root and version 1 of the controller).

#![allow(clippy::print_stdout)] // a bench reports on stdout

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    Coffer, CpuBudget, Front, Local, LocalCluster, MIB, cpu_seconds, env_number, host, median,
    write_file,
};

/// One put: MB/s, and the processor time it took (servers, client) over
/// its wall time — how many of the host's cores it kept busy.
struct Put {
    mb_per_s: f64,
    servers_cpu: f64,
    client_cpu: f64,
    seconds: f64,
}

impl Put {
    fn cores(&self) -> f64 {
        (self.servers_cpu + self.client_cpu) / self.seconds
    }
}

/// Registers, makes a folder, then puts `file` `runs` times.
fn puts(
    coffer: &Coffer<'_>,
    file: &Path,
    bytes: f64,
    runs: usize,
    mut after: impl FnMut(),
) -> Vec<Put> {
    coffer.sign_up_with_folder();
    (0..runs)
        .map(|run| {
            let target = format!("bench:large-{run}.bin");
            let (servers, client) = cpu_seconds();
            let (_, seconds) = coffer.run(&["put", file.to_str().unwrap(), &target], None);
            let (servers_after, client_after) = cpu_seconds();
            after();
            Put {
                mb_per_s: bytes / seconds / 1e6,
                servers_cpu: servers_after - servers,
                client_cpu: client_after - client,
                seconds,
            }
        })
        .collect()
}

/// Whether every peer of the node `coffer` talks to has acknowledged all it
/// holds (what `ping --json` reports under `peers`).
fn caught_up(coffer: &Coffer<'_>) -> bool {
    let (pong, _) = coffer.run(&["ping"], None);
    pong["peers"]
        .as_object()
        .is_some_and(|peers| peers.values().all(|p| p["behind_records"] == 0))
}

/// How the `coffer` process reaches the servers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Direct,
    Balancer,
}

impl Route {
    /// As reported, and as the scratch directories are named.
    fn name(self) -> (&'static str, &'static str) {
        match self {
            Route::Direct => ("direct", "direct"),
            Route::Balancer => ("through the balancer", "balanced"),
        }
    }

    /// A balancer in front of `backends` when this route has one.
    fn front(self, backends: &[String], ca: &Path) -> Option<Front> {
        (self == Route::Balancer).then(|| Front::start(backends, ca))
    }
}

/// The puts into one node, the puts into three, how long after each of
/// the latter every node held it (ms), and, when the nodes had processor
/// budgets, what each used and how long it was held back, over the sign-up
/// and every put (s).
struct Compared {
    alone: Vec<Put>,
    replicated: Vec<Put>,
    lags: Vec<f64>,
    budgets: Vec<(String, Spent)>,
}

/// What a node on a budget used of it.
struct Spent {
    used: f64,
    throttled: f64,
}

impl Spent {
    fn of(budget: &CpuBudget) -> Spent {
        Spent {
            used: budget.used_seconds(),
            throttled: budget.throttled_seconds(),
        }
    }
}

/// Processor budgets for the single node and for each node of the
/// cluster; none for either when the nodes share the host.
type Budgets = (Option<Arc<CpuBudget>>, Vec<Arc<CpuBudget>>);

/// Budgets of `cores` for the single node and for each of `nodes`, or why
/// this host cannot give them.
fn budgets(tag: &str, cores: f64, nodes: usize) -> Result<Budgets, String> {
    let single = CpuBudget::new(&format!("single-{tag}"), cores)?;
    let each = (1..=nodes)
        .map(|n| CpuBudget::new(&format!("node-{n}-{tag}"), cores))
        .collect::<Result<_, _>>()?;
    Ok((Some(single), each))
}

fn compare(
    route: Route,
    (single_budget, node_budgets): Budgets,
    dir: &Path,
    file: &Path,
    bytes: f64,
    runs: usize,
) -> Compared {
    let capped = if single_budget.is_some() {
        "-capped"
    } else {
        ""
    };
    let tag = format!("{}{capped}", route.name().1);
    let mut spent = Vec::new();
    let single = Local::start_on(&dir.join(format!("single-{tag}")), single_budget.clone());
    let front = route.front(std::slice::from_ref(&single.addr), &single.ca);
    let home = dir.join(format!("home-single-{tag}"));
    let coffer = Coffer {
        addr: front.as_ref().map_or(&single.addr, |f| &f.addr).clone(),
        ca: &single.ca,
        home: &home,
    };
    let alone = puts(&coffer, file, bytes, runs, || {});
    drop(front);
    drop(single);
    if let Some(budget) = single_budget {
        spent.push(("single node".to_owned(), Spent::of(&budget)));
    }

    let cluster = LocalCluster::start(&dir.join(format!("cluster-{tag}")), 3, node_budgets.clone());
    let front = route.front(&cluster.addrs, &cluster.ca);
    let home = dir.join(format!("home-cluster-{tag}"));
    let coffer = Coffer {
        addr: front
            .as_ref()
            .map_or(&cluster.addrs[0], |f| &f.addr)
            .clone(),
        ca: &cluster.ca,
        home: &home,
    };
    // Asked of each node itself: through the balancer, the put may have
    // gone to any of them.
    let nodes: Vec<Coffer<'_>> = (0..cluster.addrs.len())
        .map(|node| cluster.coffer(node, &home))
        .collect();
    let mut lags = Vec::new();
    let replicated = puts(&coffer, file, bytes, runs, || {
        let acked = Instant::now();
        while !nodes.iter().all(caught_up) {
            assert!(
                acked.elapsed() < Duration::from_secs(120),
                "the cluster never caught up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        lags.push(acked.elapsed().as_secs_f64() * 1000.0);
    });
    drop(front);
    drop(cluster);
    for (n, budget) in node_budgets.iter().enumerate() {
        spent.push((format!("node-{}", n + 1), Spent::of(budget)));
    }
    Compared {
        alone,
        replicated,
        lags,
        budgets: spent,
    }
}

fn report(heading: &str, compared: Compared) {
    let Compared {
        alone,
        replicated,
        lags,
        budgets,
    } = compared;
    println!("{heading}:");
    for run in 0..alone.len() {
        let (a, r) = (&alone[run], &replicated[run]);
        println!(
            "  run {run}: single node {:.0} MB/s, 3 nodes (quorum 2) {:.0} MB/s, all 3 hold it {:.0} ms after the put",
            a.mb_per_s, r.mb_per_s, lags[run]
        );
        println!(
            "    processor time: single node {:.1} s servers + {:.1} s client over {:.1} s ({:.2} cores busy); \
             3 nodes {:.1} s servers + {:.1} s client over {:.1} s ({:.2} cores busy)",
            a.servers_cpu,
            a.client_cpu,
            a.seconds,
            a.cores(),
            r.servers_cpu,
            r.client_cpu,
            r.seconds,
            r.cores()
        );
    }
    let runs = alone.len();
    let cores = |puts: &[Put]| median(puts.iter().map(Put::cores).collect());
    println!(
        "  cores busy during a put (median): single node {:.2}, 3 nodes {:.2}, of {} on this host",
        cores(&alone),
        cores(&replicated),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let rate = |puts: Vec<Put>| median(puts.into_iter().map(|p| p.mb_per_s).collect());
    let (alone, replicated) = (rate(alone), rate(replicated));
    println!("  single node: {alone:.0} MB/s (median of {runs})");
    println!(
        "  3 nodes, write quorum 2: {replicated:.0} MB/s (median of {runs}), {:.2}x the single node",
        replicated / alone
    );
    println!(
        "  replication lag after an acknowledged put: {:.0} ms (median; time until every node has acknowledged every record and chunk)",
        median(lags)
    );
    if !budgets.is_empty() {
        let spent: Vec<String> = budgets
            .iter()
            .map(|(node, s)| {
                format!(
                    "{node} {:.1} s used, {:.1} s held back",
                    s.used, s.throttled
                )
            })
            .collect();
        println!(
            "  on its budget, over the sign-up and every put: {}",
            spent.join(", ")
        );
    }
}

/// Each node's processor budget when `BENCH_NODE_CORES` does not set one:
/// three nodes, the balancer and the client must fit in this host's two
/// cores with room to spare, or the host, not the budget, sets the pace.
const DEFAULT_NODE_CORES: f64 = 0.4;

fn main() {
    let size_mib = env_number("BENCH_MIB", 256);
    let runs = env_number("BENCH_RUNS", 3).max(1);
    let dir = support::scratch();
    let file = dir.path().join("large.bin");
    write_file(&file, size_mib * MIB);
    let bytes = (size_mib * MIB) as f64;
    println!(
        "{size_mib} MiB file, {runs} runs, one coffer process per put, on {}",
        host()
    );
    for route in [Route::Direct, Route::Balancer] {
        let compared = compare(route, (None, Vec::new()), dir.path(), &file, bytes, runs);
        report(route.name().0, compared);
    }
    // Each node as on a machine of its own, as deployed: on this host, a
    // processor budget of its own, the same for the single node and for
    // each of the three. Direct, the first node is the writer of every put,
    // so what each used tells the writer's work from a follower's.
    let cores = std::env::var("BENCH_NODE_CORES")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(DEFAULT_NODE_CORES);
    for route in [Route::Direct, Route::Balancer] {
        let (name, tag) = route.name();
        let heading = format!("{name}, each node on a budget of {cores} cores");
        match budgets(tag, cores, 3) {
            Ok(budgets) => {
                let compared = compare(route, budgets, dir.path(), &file, bytes, runs);
                report(&heading, compared);
            }
            Err(why) => println!("{heading}: skipped ({why})"),
        }
    }
}
