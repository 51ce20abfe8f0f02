#!/usr/bin/env bash
# Builds the images `coffer-server:local` and `coffer-balancer:local` FROM scratch
# with statically linked release binaries. The compose file and the conformance
# suite's containers cluster both use exactly these images.
set -euo pipefail
cd "$(dirname "$0")/.."

triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --quiet --target "$triple" -p coffer-server -p coffer-balancer

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for bin in coffer-server coffer-balancer; do
    cp "$target_dir/$triple/release/$bin" "$stage/"
    docker build --quiet --tag "$bin:local" --file "deploy/${bin#coffer-}.Dockerfile" "$stage" >/dev/null
    echo "built $bin:local"
done
