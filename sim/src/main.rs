//! `just sim`: many seeds of the simulation, or one seed replayed.
//!
//! - `SIM_SEEDS` (default 200) seeds from `SIM_SEED_BASE` (default 0);
//! - `TURMOIL_SEED=<seed>` runs that one seed and prints its trace.
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
    let options = Options::default();
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
    for &seed in &seeds {
        let report = match run(seed, &options) {
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
        faults.backend_partitions += report.faults.backend_partitions;
        faults.backend_holds += report.faults.backend_holds;
        faults.client_partitions += report.faults.client_partitions;
        faults.crashes += report.faults.crashes;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} seeds passed in {secs:.1} s ({:.1} seeds/s): {ops} client operations, {} faults ({faults:?})",
        seeds.len(),
        seeds.len() as f64 / secs,
        faults.total()
    );
    ExitCode::SUCCESS
}
