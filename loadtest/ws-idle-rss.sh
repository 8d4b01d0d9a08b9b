#!/usr/bin/env bash
# Memory per idle proxied WebSocket: the proxy's RSS with N idle WebSockets open through it,
# minus its RSS before, divided by N. Measured for Portico, for a bare pingora proxy
# (proxy/examples/plain_pingora.rs, what pingora itself costs), and for nginx when installed.
#
# Usage: loadtest/ws-idle-rss.sh [N]   (default 10000; the proxy needs ~2N file descriptors)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
N=${1:-10000}
THREADS=${THREADS:-2}
# Proxies need two descriptors per proxied socket; raise the limit when allowed (root).
ulimit -Hn $((N * 3 + 1000)) 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
cargo build --quiet --release --bin portico --example ws_idle --example plain_pingora

ORIGIN=127.0.0.1:18291
PROXY=127.0.0.1:18290
target/release/examples/ws_idle server "$ORIGIN" &
PIDS+=($!)
rss() { # RSS of a process and its children (nginx's workers), KiB
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$total"
}

measure() { # label pid
  local label=$1 pid=$2 before after line
  sleep 0.5
  before=$(rss "$pid")
  rm -f "$WORK/out"
  mkfifo "$WORK/out"
  target/release/examples/ws_idle clients "$PROXY" "$N" 8 > "$WORK/out" &
  local client=$!
  read -r line < "$WORK/out"
  sleep 2
  after=$(rss "$pid")
  awk -v l="$label" -v b="$before" -v a="$after" -v n="$N" -v r="$line" \
    'BEGIN { printf "  %-28s %s: RSS %d -> %d KiB, %.1f KiB per idle WebSocket\n", l, r, b, a, (a - b) / n }'
  wait "$client" 2>/dev/null || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "idle proxied WebSockets, N=$N, $THREADS threads/workers"
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
measure "portico" $!

target/release/examples/plain_pingora "$PROXY" "$ORIGIN" "$THREADS" 2>"$WORK/plain.err" &
measure "plain pingora" $!

if command -v nginx >/dev/null; then
  cat > "$WORK/nginx.conf" <<CFG
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
worker_rlimit_nofile $((N * 3));
events { worker_connections $((N * 3)); }
http {
  access_log off;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  server {
    listen $PROXY backlog=4096;
    location / {
      proxy_pass http://$ORIGIN;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 1h;
    }
  }
}
CFG
  nginx -p "$WORK" -c "$WORK/nginx.conf" &
  measure "nginx (1 worker)" $!
fi
