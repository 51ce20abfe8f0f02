//! `just sim`: many seeds of the simulation, or one seed replayed.
//!
//! - `SIM_SEEDS` (default 200) seeds from `SIM_SEED_BASE` (default 0), spread
//!   over `SIM_THREADS` threads (default: one per core); a seed's run is the
//!   same whichever thread runs it and whatever runs beside it;
//! - `TURMOIL_SEED=<seed>` runs that one seed and prints its trace;
//! - `SIM_WORLD=balancer` or `SIM_WORLD=files` runs only that world of each
//!   seed (default: both);
//! - `SIM_LOG=<filter>` (`debug`, `coffer_balancer=debug`, …) prints the
//!   servers', balancer's and clients' logs on stderr, stamped with simulated
//!   time and the host: for a replay, since every seed logs.
//!
//! Exits non-zero when a seed violates an invariant, printing the lowest such
//! seed's violations and its replay command.

#![allow(clippy::print_stdout)] // a command-line tool reports on stdout

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use coffer_sim::{FaultCounts, Options, Report, run};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the seeds that passed add up to.
#[derive(Default)]
struct Totals {
    seeds: u64,
    ops: usize,
    checked: u32,
    probes: u32,
    faults: FaultCounts,
    /// Thread-seconds spent in each world.
    world_secs: Vec<f64>,
}

/// A seed that did not pass.
struct Failure {
    seed: u64,
    /// What went wrong, a line each.
    why: Vec<String>,
    /// The failing world's trace, for a replay.
    trace: Vec<String>,
}

/// Runs every world of `seed`; each report with the time its world took.
fn one_seed(seed: u64, worlds: &[Options]) -> Result<Vec<(Report, f64)>, Failure> {
    let mut reports = Vec::with_capacity(worlds.len());
    for options in worlds {
        let started = Instant::now();
        let report = run(seed, options).map_err(|e| Failure {
            seed,
            why: vec![format!("seed {seed}: the simulation failed to run: {e}")],
            trace: Vec::new(),
        })?;
        if !report.violations.is_empty() {
            let mut why = vec![format!(
                "seed {seed}: {} violation(s)",
                report.violations.len()
            )];
            why.extend(report.violations.iter().map(|v| format!("  {v}")));
            return Err(Failure {
                seed,
                why,
                trace: report.trace,
            });
        }
        reports.push((report, started.elapsed().as_secs_f64()));
    }
    Ok(reports)
}

/// Log lines stamped with the simulated time instead of the wall clock.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>9.3}s", t.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn main() -> ExitCode {
    if let Ok(filter) = std::env::var("SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(SimTime)
            .with_writer(std::io::stderr)
            .init();
    }
    // Each seed runs both worlds on three replicated servers: pings through
    // the balancer, and the files workload.
    let worlds: Vec<Options> = match std::env::var("SIM_WORLD").as_deref() {
        Ok("balancer") => vec![Options::default()],
        Ok("files") => vec![Options::service()],
        _ => vec![Options::default(), Options::service()],
    };
    if let Some(seed) = std::env::var("TURMOIL_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return match one_seed(seed, &worlds) {
            Ok(reports) => {
                for line in reports.iter().flat_map(|(r, _)| &r.trace) {
                    println!("{line}");
                }
                println!("seed {seed} passed");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                for line in failure.trace.iter().chain(&failure.why) {
                    println!("{line}");
                }
                println!("replay: TURMOIL_SEED={seed} just sim");
                ExitCode::FAILURE
            }
        };
    }
    let base = env_u64("SIM_SEED_BASE", 0);
    let count = env_u64("SIM_SEEDS", 200);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let threads = env_u64("SIM_THREADS", cores).clamp(1, count.max(1));

    let started = Instant::now();
    let next = AtomicU64::new(base);
    let stop = AtomicBool::new(false);
    let totals = Mutex::new(Totals {
        world_secs: vec![0.0; worlds.len()],
        ..Totals::default()
    });
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= base + count {
                        break;
                    }
                    match one_seed(seed, &worlds) {
                        Ok(reports) => {
                            let mut t = totals.lock().expect("no thread panics holding it");
                            t.seeds += 1;
                            for (i, (r, secs)) in reports.iter().enumerate() {
                                t.world_secs[i] += secs;
                                t.ops += r.ops.len();
                                t.checked += r.checked_reads;
                                t.probes += r.probes;
                                t.faults.add(&r.faults);
                            }
                        }
                        Err(failure) => {
                            stop.store(true, Ordering::Relaxed);
                            failures
                                .lock()
                                .expect("no thread panics holding it")
                                .push(failure);
                        }
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let failures = failures.into_inner().expect("no thread panicked");
    if let Some(failure) = failures.into_iter().min_by_key(|f| f.seed) {
        // The violations only: the replay prints the whole trace.
        for line in &failure.why {
            println!("{line}");
        }
        println!("replay: TURMOIL_SEED={} just sim", failure.seed);
        return ExitCode::FAILURE;
    }
    let t = totals.into_inner().expect("no thread panicked");
    println!(
        "{} seeds passed in {secs:.1} s ({:.1} seeds/s, {threads} threads): {} client operations, \
         {} reads checked against acknowledged uploads, {} unauthorized reads refused, \
         {} faults ({:?})",
        t.seeds,
        t.seeds as f64 / secs,
        t.ops,
        t.checked,
        t.probes,
        t.faults.total(),
        t.faults
    );
    // Each world's share of the run, as the seeds per second it would make
    // alone on these threads: the balancer world is the default topology.
    if worlds.len() > 1 {
        let shares: Vec<String> = worlds
            .iter()
            .zip(&t.world_secs)
            .map(|(options, world_secs)| {
                let name = if options.files { "files" } else { "balancer" };
                let alone = t.seeds as f64 * threads as f64 / world_secs.max(f64::MIN_POSITIVE);
                format!("{name} world {world_secs:.1} thread-s (alone ~{alone:.1} seeds/s)")
            })
            .collect();
        println!("time by world: {}", shares.join(", "));
    }
    ExitCode::SUCCESS
}
