#!/usr/bin/env bash
# The CI job: formatting, lints, and the README's test command, each timed.
# Runs from a clean clone with nothing but the Rust toolchain installed.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0

started=$(date +%s)
step() {
    local name=$1
    shift
    local t0
    t0=$(date +%s)
    echo "==> $name: $*"
    "$@"
    echo "==> $name took $(( $(date +%s) - t0 )) s"
}

# rustfmt and clippy ship with the toolchain here; add them if a runner lacks them.
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        step "install $component" rustup component add "$component"
    fi
done

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step test cargo test --workspace
echo "==> CI passed in $(( $(date +%s) - started )) s"
