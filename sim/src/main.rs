//! `just sim`: many seeds of the simulation, or one seed replayed.
//!
//! - `SIM_SEEDS` (default 200) seeds from `SIM_SEED_BASE` (default 0);
//! - `TURMOIL_SEED=<seed>` runs that one seed and prints its trace;
//! - `SIM_WORLD=balancer` or `SIM_WORLD=files` runs only that world of each
//!   seed (default: both).
//!
//! Exits non-zero on the first seed that violates an invariant, printing the
//! violations and the replay command.

#![allow(clippy::print_stdout)] // a command-line tool reports on stdout

use std::process::ExitCode;
use std::time::Instant;

use coffer_sim::{FaultCounts, Options, run};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    // Each seed runs both worlds: the balancer's three servers with pings,
    // and the files workload against one server.
    let worlds: Vec<Options> = match std::env::var("SIM_WORLD").as_deref() {
        Ok("balancer") => vec![Options::default()],
        Ok("files") => vec![Options::service()],
        _ => vec![Options::default(), Options::service()],
    };
    let single = std::env::var("TURMOIL_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let seeds: Vec<u64> = match single {
        Some(seed) => vec![seed],
        None => {
            let base = env_u64("SIM_SEED_BASE", 0);
            (base..base + env_u64("SIM_SEEDS", 200)).collect()
        }
    };
    let started = Instant::now();
    let mut faults = FaultCounts::default();
    let mut ops = 0;
    let (mut checked, mut probes) = (0, 0);
    for &seed in &seeds {
        for options in &worlds {
            let report = match run(seed, options) {
                Ok(report) => report,
                Err(e) => {
                    println!("seed {seed}: the simulation failed to run: {e}");
                    println!("replay: TURMOIL_SEED={seed} just sim");
                    return ExitCode::FAILURE;
                }
            };
            if single.is_some() {
                for line in &report.trace {
                    println!("{line}");
                }
            }
            if !report.violations.is_empty() {
                println!("seed {seed}: {} violation(s)", report.violations.len());
                for v in &report.violations {
                    println!("  {v}");
                }
                println!("{}", report.replay());
                return ExitCode::FAILURE;
            }
            ops += report.ops.len();
            checked += report.checked_reads;
            probes += report.probes;
            faults.add(&report.faults);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} seeds passed in {secs:.1} s ({:.1} seeds/s): {ops} client operations, \
         {checked} reads checked against acknowledged uploads, {probes} unauthorized reads refused, \
         {} faults ({faults:?})",
        seeds.len(),
        seeds.len() as f64 / secs,
        faults.total()
    );
    ExitCode::SUCCESS
}
