#!/usr/bin/env bash
# Memory per idle proxied WebSocket: Portico's RSS with N idle WebSockets open through it,
# minus its RSS before, divided by N.
#
# Usage: loadtest/ws-idle-rss.sh [N]   (default 10000; needs ~3N file descriptors)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
N=${1:-10000}
THREADS=${THREADS:-2}
# Portico needs two descriptors per proxied socket; raise the limit when allowed (root).
ulimit -Hn $((N * 3 + 1000)) 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
cargo build --quiet --release --bin portico --example ws_idle

ORIGIN=127.0.0.1:18291
PROXY=127.0.0.1:18290
target/release/examples/ws_idle server "$ORIGIN" &
PIDS+=($!)
cat > "$WORK/portico.toml" <<CFG
[server]
threads = $THREADS
access_log = false
log_level = "warn"
[[listeners]]
address = "$PROXY"
max_connections = $((N * 2))
[admin]
enabled = false
[upstreams.ws]
backends = ["$ORIGIN"]
CFG
target/release/portico run -c "$WORK/portico.toml" 2>"$WORK/portico.err" &
PORTICO=$!
PIDS+=($PORTICO)
sleep 0.5
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
before=$(rss "$PORTICO")
mkfifo "$WORK/out"
target/release/examples/ws_idle clients "$PROXY" "$N" 20 > "$WORK/out" &
PIDS+=($!)
read -r line < "$WORK/out"
sleep 2
after=$(rss "$PORTICO")
echo "$line idle WebSockets through Portico (threads=$THREADS)"
echo "Portico RSS: before ${before} KiB, with $N idle sockets ${after} KiB"
awk -v b="$before" -v a="$after" -v n="$N" 'BEGIN { printf "per idle proxied WebSocket: %.1f KiB (client and upstream side together)\n", (a - b) / n }'
