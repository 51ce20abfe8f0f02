# Coffer tasks. `just --list` shows them all.

# Run the test suite exactly as CI does (fmt, clippy, tests).
ci:
    .ci/run

# Tests only.
test:
    cargo test --workspace

# The simulation over many seeds: SIM_SEEDS (default 200) from SIM_SEED_BASE (default 0),
# on SIM_THREADS threads (default one per core); SIM_WORLD=balancer|files runs one world.
# Replay one seed with its trace: TURMOIL_SEED=<seed> just sim
sim:
    cargo run --release -p coffer-sim

# The conformance suite against the real binaries: as processes, and as
# containers where a Docker engine answers (images built by deploy/build-images.sh).
conformance:
    cargo test -p coffer-conformance -- --nocapture

# The images FROM scratch that deploy/compose.yaml and the suite run.
images:
    deploy/build-images.sh

# Benchmarks: the chunk envelope next to raw AES-256-CFB and HMAC-SHA256; the
# server's chunk ingest and small-file commits (server pinned to one core);
# `coffer put` and `get` of a 1 GiB file against a local server.
bench: bench-balancer
    cargo bench -p coffer-crypto --bench envelope
    cargo bench -p coffer-server --bench ingest
    cargo bench -p coffer-client --bench transfer

# The sync daemon between two devices of one account against a local server:
# 1 KiB latency, files per second, peak RSS over 100,000 files.
bench-sync:
    cargo bench -p coffer-client --bench sync

# `coffer put` of a 256 MiB file into three replicated nodes (write quorum 2)
# against one node, straight and through a balancer, sharing the host's cores
# and then each node on a processor budget of its own (a cgroup; needs root);
# replication lag.
bench-cluster:
    cargo bench -p coffer-client --bench cluster

# The balancer against a direct connection and HAProxy 2.6 (`mode tcp`, from
# Debian's packages, installed here if missing): throughput, p50/p99 round
# trips, memory per idle connection.
bench-balancer:
    command -v haproxy >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy)
    cargo bench -p coffer-balancer --bench proxy

# A local cluster on loopback: three servers behind a balancer, one CA. Ctrl-C stops it.
up:
    ci/up.sh
