//! `coffer put` and `coffer get` of a large file, end to end: the real
//! `coffer` binary (a fresh process per transfer, so start-up, TLS and login
//! are counted) against an in-process server on loopback, on one machine.
//! Upload means reading, hashing and sealing every chunk on the client, then
//! verifying and durably storing it on the server; download means fetching,
//! checking every MAC, decrypting, hashing and writing the file.
//!
//! `cargo bench -p coffer-client --bench transfer` (or `just bench`).
//! `BENCH_MIB` sets the file size (default 1024), `BENCH_RUNS` the number of
//! runs of each (default 3). Figures are MB/s (10^6 bytes per second).

#![allow(clippy::print_stdout)] // a bench reports on stdout

mod support;

use support::{MIB, env_number, host, median, write_file};

fn main() {
    let size_mib = env_number("BENCH_MIB", 1024);
    let runs = env_number("BENCH_RUNS", 3).max(1);
    let dir = support::scratch();
    let server = support::Local::start(dir.path());
    let home = dir.path().join("home");
    let coffer = server.coffer(&home);
    coffer.sign_up_with_folder();

    let local = dir.path().join("large.bin");
    write_file(&local, size_mib * MIB);
    let back = dir.path().join("large.out");
    let bytes = (size_mib * MIB) as f64;
    println!(
        "{size_mib} MiB file, {runs} runs, one coffer process per transfer, on {}",
        host()
    );
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let target = format!("bench:large-{run}.bin");
        let (put, seconds) = coffer.run(&["put", local.to_str().unwrap(), &target], None);
        up.push(bytes / seconds / 1e6);
        let (got, seconds) = coffer.run(&["get", &target, back.to_str().unwrap()], None);
        down.push(bytes / seconds / 1e6);
        assert_eq!(put["sha256"], got["sha256"], "the file came back whole");
        println!(
            "run {run}: put {:.0} MB/s, get {:.0} MB/s",
            up[run], down[run]
        );
        std::fs::remove_file(&back).unwrap();
    }
    println!("coffer put: {:.0} MB/s (median of {runs})", median(up));
    println!("coffer get: {:.0} MB/s (median of {runs})", median(down));
    drop(server);
}
