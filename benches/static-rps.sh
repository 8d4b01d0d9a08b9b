#!/usr/bin/env bash
# Static files: requests per second of Portico and nginx serving the same directory, side by
# side on this machine, for a 1 KiB and a 100 KiB file (wrk, keep-alive, no compression).
#
# Usage: benches/static-rps.sh [DURATION_SECONDS] [CONNECTIONS]
# Needs: nginx, wrk (apt-get install nginx-light wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
DURATION=${1:-5}
CONNS=${2:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
need nginx wrk
cargo build --quiet --release --bin portico

ROOT="$WORK/dist"
mkdir -p "$ROOT/assets"
head -c 1024 /dev/urandom > "$ROOT/assets/small-1a2b3c4d.js"
head -c $((100 * 1024)) /dev/urandom > "$ROOT/assets/large-5e6f7a8b.js"
PORT=18390

cat > "$WORK/nginx.conf" <<CFG
worker_processes $THREADS;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=1000 inactive=20s;
  open_file_cache_valid 1s;
  etag on;
  server {
    listen 127.0.0.1:$PORT backlog=4096;
    root $ROOT;
    location /assets/ { add_header Cache-Control "public, max-age=31536000, immutable"; }
  }
}
CFG
cat > "$WORK/portico.toml" <<CFG
[server]
threads = $THREADS
access_log = false
log_level = "warn"
[[listeners]]
address = "127.0.0.1:$PORT"
[admin]
enabled = false
[upstreams.none]
backends = ["127.0.0.1:9"]
[[routes]]
static = { root = "$ROOT" }
CFG

measure() { # label path
  wrk -t2 -c"$CONNS" -d1s "http://127.0.0.1:$PORT$2" >/dev/null 2>&1 || true
  local out rps
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PORT$2")
  rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%d", $2}')
  echo "$1 $rps" >> "$WORK/results"
  printf '  %-24s %10s req/s\n' "$1" "$rps"
}

: > "$WORK/results"
echo "static files, wrk -t2 -c$CONNS, ${DURATION}s per run, $ROUNDS rounds, $THREADS server threads, $(nproc) cores"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  nginx -p "$WORK" -c "$WORK/nginx.conf" & pid=$!; sleep 0.5
  measure "nginx 1KiB" /assets/small-1a2b3c4d.js
  measure "nginx 100KiB" /assets/large-5e6f7a8b.js
  kill "$pid"; wait "$pid" 2>/dev/null || true
  target/release/portico run -c "$WORK/portico.toml" 2>"$WORK/portico.err" & pid=$!; sleep 0.5
  measure "portico 1KiB" /assets/small-1a2b3c4d.js
  measure "portico 100KiB" /assets/large-5e6f7a8b.js
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
echo
echo "best of $ROUNDS, ratio to nginx (higher is better):"
for size in 1KiB 100KiB; do
  n=$(awk -v s="$size" '$1 == "nginx" && $2 == s {print $3}' "$WORK/results" | sort -n | tail -1)
  p=$(awk -v s="$size" '$1 == "portico" && $2 == s {print $3}' "$WORK/results" | sort -n | tail -1)
  awk -v s="$size" -v n="$n" -v p="$p" 'BEGIN { printf "  %-8s nginx %8d  portico %8d  ratio %.2f\n", s, n, p, p / n }'
done
