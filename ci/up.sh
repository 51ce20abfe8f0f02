#!/usr/bin/env bash
# Starts a replicated cluster of three coffer-server processes
# (node-1..3 on 127.0.0.2-4:8000, each following the two others, writes
# acknowledged once two hold them) behind a coffer-balancer (127.0.0.1:7000),
# with a CA, a peer certificate per node and the cluster secret under
# certs/dev/, and data under coffer-up/. The account named admin is the
# cluster's admin. Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
bin=target/release
dir=certs/dev
data=coffer-up
mkdir -p "$dir" "$data"
[ -f "$dir/ca.pem" ] || "$bin/coffer-certs" ca --out "$dir"
for n in 1 2 3; do
    # A peer certificate names its node id, which the other nodes check; it
    # serves clients too, directly or through the balancer.
    [ -f "$dir/node-$n.pem" ] || "$bin/coffer-certs" peer --ca "$dir" --name "node-$n" \
        --san localhost --san 127.0.0.1 --san "127.0.0.$((n + 1))" --out "$dir"
done
[ -f "$dir/secret" ] || head -c 32 /dev/urandom > "$dir/secret"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for n in 1 2 3; do
    peers=()
    for m in 1 2 3; do
        [ "$m" = "$n" ] || peers+=(--peer "node-$m=127.0.0.$((m + 1)):8000")
    done
    "$bin/coffer-server" --listen "127.0.0.$((n + 1)):8000" --data "$data/node-$n" --node-id "node-$n" \
        --tls-cert "$dir/node-$n.pem" --tls-key "$dir/node-$n.key" --ca "$dir/ca.pem" \
        --cluster-secret-file "$dir/secret" --admin admin "${peers[@]}" &
    pids+=($!)
done
"$bin/coffer-balancer" --listen 127.0.0.1:7000 --admin 127.0.0.1:7001 --ca "$dir/ca.pem" \
    --backend 127.0.0.2:8000 --backend 127.0.0.3:8000 --backend 127.0.0.4:8000 &
pids+=($!)
echo "cluster up: coffer --server 127.0.0.1:7000 --ca $dir/ca.pem ping --json (peers linked and caught up)"
echo "balancer admin: curl 127.0.0.1:7001/backends (and /metrics)"
wait
