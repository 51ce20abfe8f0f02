//! `coffer put` of a large file into a replicated cluster of three nodes
//! (write quorum two) against the same into a single node, and how long the
//! cluster takes, after each acknowledged put, until every node holds it.
//!
//! `cargo bench -p coffer-client --bench cluster`. `BENCH_MIB` sets the file
//! size (default 256), `BENCH_RUNS` the runs of each (default 3). The client
//! talks to the first node directly; a balancer in front would add the same
//! cost to both. Figures are MB/s (10^6 bytes per second).

#![allow(clippy::print_stdout)] // a bench reports on stdout

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Coffer, LocalCluster, MIB, cpu_seconds, env_number, host, median, write_file};

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

    let single = support::Local::start(&dir.path().join("single"));
    let home = dir.path().join("home-single");
    let alone = puts(&single.coffer(&home), &file, bytes, runs, || {});
    drop(single);

    let cluster = LocalCluster::start(&dir.path().join("cluster"), 3);
    let home = dir.path().join("home-cluster");
    let coffer = cluster.coffer(0, &home);
    let mut lags = Vec::new();
    let replicated = puts(&coffer, &file, bytes, runs, || {
        let acked = Instant::now();
        while !caught_up(&coffer) {
            assert!(
                acked.elapsed() < Duration::from_secs(120),
                "the cluster never caught up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        lags.push(acked.elapsed().as_secs_f64() * 1000.0);
    });
    drop(cluster);

    for run in 0..runs {
        let (a, r) = (&alone[run], &replicated[run]);
        println!(
            "run {run}: single node {:.0} MB/s, 3 nodes (quorum 2) {:.0} MB/s, all 3 hold it {:.0} ms after the put",
            a.mb_per_s, r.mb_per_s, lags[run]
        );
        println!(
            "  processor time: single node {:.1} s servers + {:.1} s client over {:.1} s ({:.2} cores busy); \
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
    let cores = |puts: &[Put]| median(puts.iter().map(Put::cores).collect());
    println!(
        "cores busy during a put (median): single node {:.2}, 3 nodes {:.2}, of {} on this host",
        cores(&alone),
        cores(&replicated),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let rate = |puts: Vec<Put>| median(puts.into_iter().map(|p| p.mb_per_s).collect());
    let (alone, replicated) = (rate(alone), rate(replicated));
    println!("single node: {alone:.0} MB/s (median of {runs})");
    println!(
        "3 nodes, write quorum 2: {replicated:.0} MB/s (median of {runs}), {:.2}x the single node",
        replicated / alone
    );
    println!(
        "replication lag after an acknowledged put: {:.0} ms (median; time until every node has acknowledged every record and chunk)",
        median(lags)
    );
}
