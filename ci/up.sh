#!/usr/bin/env bash
# Starts three coffer-server processes (127.0.0.2-4:8000) behind a
# coffer-balancer (127.0.0.1:7000), with certificates from one CA under
# certs/dev/ and data under coffer-up/. Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
bin=target/release
dir=certs/dev
data=coffer-up
mkdir -p "$dir" "$data"
[ -f "$dir/ca.pem" ] || "$bin/coffer-certs" ca --out "$dir"
[ -f "$dir/server.pem" ] || "$bin/coffer-certs" server --ca "$dir" --name server \
    --san localhost --san 127.0.0.1 --san 127.0.0.2 --san 127.0.0.3 --san 127.0.0.4 --out "$dir"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for n in 1 2 3; do
    "$bin/coffer-server" --listen "127.0.0.$((n + 1)):8000" --data "$data/node-$n" --node-id "node-$n" \
        --tls-cert "$dir/server.pem" --tls-key "$dir/server.key" --ca "$dir/ca.pem" &
    pids+=($!)
done
"$bin/coffer-balancer" --listen 127.0.0.1:7000 --admin 127.0.0.1:7001 --ca "$dir/ca.pem" \
    --backend 127.0.0.2:8000 --backend 127.0.0.3:8000 --backend 127.0.0.4:8000 &
pids+=($!)
echo "cluster up: coffer --server 127.0.0.1:7000 --ca $dir/ca.pem ping"
echo "balancer admin: curl 127.0.0.1:7001/backends (and /metrics)"
wait
