#!/usr/bin/env bash
# CPU per proxied request: Portico vs nginx vs HAProxy, side by side on this machine.
#
# One nginx origin answers a small fixed response. Each proxy in turn sits in front of it
# with upstream keep-alive and is loaded by wrk (keep-alive clients). The proxy's CPU time
# (user+system, all its processes, from /proc) divided by the requests wrk completed gives
# CPU per request; the table reports it with the ratio to nginx.
#
# Usage: benches/proxy-cpu.sh [DURATION_SECONDS] [CONNECTIONS] [PORTICO_BINARY...]
#   Several Portico binaries (e.g. built with different allocators) are measured in turn.
# Needs: nginx, haproxy, wrk (apt-get install nginx-light haproxy wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

DURATION=${1:-10}
CONNS=${2:-64}
shift 2 || true
BINARIES=("$@")
if [ ${#BINARIES[@]} -eq 0 ]; then
  cargo build --quiet --release --bin portico
  BINARIES=(target/release/portico)
fi
# A bare pingora proxy (proxy/examples/plain_pingora.rs) shows what Portico adds to a pingora hop.
cargo build --quiet --release --example plain_pingora
PLAIN=target/release/examples/plain_pingora
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}

need nginx haproxy wrk


ORIGIN_PORT=18081
PROXY_PORT=18080

# --- origin: nginx returning 64 bytes, keep-alive without a request cap.
mkdir -p "$WORK/origin"
cat > "$WORK/origin/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$ORIGIN_PORT reuseport backlog=4096;
    location / { return 200 "0123456789012345678901234567890123456789012345678901234567890123"; }
  }
}
EOF
nginx -p "$WORK/origin" -c "$WORK/origin/nginx.conf" &
PIDS+=($!)
sleep 0.5

cpu_ticks() { # sum of utime+stime (clock ticks) over the given pids
  local total=0
  for p in "$@"; do
    if [ -r "/proc/$p/stat" ]; then
      # fields 14 and 15, after the command name (which may hold spaces)
      local rest
      rest=$(sed 's/^.*) //' "/proc/$p/stat")
      total=$((total + $(echo "$rest" | awk '{print $12 + $13}')))
    fi
  done
  echo "$total"
}

descendants() { # pid and its children
  echo "$1"
  pgrep -P "$1" || true
}

HZ=$(getconf CLK_TCK)
RESULTS="$WORK/results"
: > "$RESULTS"

measure() { # name pid
  local name=$1 pid=$2
  # warm up connections and caches
  wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$PROXY_PORT/" >/dev/null 2>&1 || true
  local pids
  pids=$(descendants "$pid")
  local before after out reqs
  before=$(cpu_ticks $pids)
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PROXY_PORT/")
  after=$(cpu_ticks $pids)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local errors
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  local rps=$(( reqs / DURATION ))
  local us
  us=$(awk -v t=$((after - before)) -v hz="$HZ" -v r="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / r }')
  echo "$name $us $rps ${errors:-}" >> "$RESULTS"
  printf '  %-28s %8s us/req %8s req/s %s\n' "$name" "$us" "$rps" "${errors:-}"
}

run_nginx() {
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx/nginx.conf" <<EOF
worker_processes $THREADS;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$PROXY_PORT backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
  nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
  local pid=$!
  sleep 0.5
  measure "nginx ($THREADS workers)" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_haproxy() {
  cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread $THREADS
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$PROXY_PORT
  default_backend be
backend be
  server o 127.0.0.1:$ORIGIN_PORT
EOF
  haproxy -f "$WORK/haproxy.cfg" -db 2>"$WORK/haproxy.err" &
  local pid=$!
  sleep 0.5
  measure "haproxy (nbthread $THREADS)" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_plain() {
  "$PLAIN" "127.0.0.1:$PROXY_PORT" "127.0.0.1:$ORIGIN_PORT" "$THREADS" 2>"$WORK/plain.err" &
  local pid=$!
  sleep 0.5
  measure "plain pingora (threads $THREADS)" "$pid"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}

run_portico() { # binary label
  cat > "$WORK/portico.toml" <<EOF
[server]
threads = $THREADS
work_stealing = ${WORK_STEALING:-false}
access_log = false
log_level = "warn"
[[listeners]]
address = "127.0.0.1:$PROXY_PORT"
[admin]
enabled = false
[upstreams.origin]
backends = ["127.0.0.1:$ORIGIN_PORT"]
EOF
  "$1" run -c "$WORK/portico.toml" 2>"$WORK/portico.err" &
  local pid=$!
  sleep 0.5
  measure "$2" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "CPU per proxied request, wrk -t2 -c$CONNS, ${DURATION}s per run, $ROUNDS rounds, $(nproc) cores"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  run_nginx
  run_haproxy
  run_plain
  for b in "${BINARIES[@]}"; do
    run_portico "$b" "portico $(basename "$b") (threads $THREADS)"
  done
done

echo
echo "median over $ROUNDS rounds (CPU per request; ratio to nginx, lower is better)"
python3 - "$RESULTS" <<'EOF'
import sys, statistics, re
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r'(.*?) ([0-9.]+) ([0-9]+)( .*)?$', line.strip())
    if not m: continue
    rows.setdefault(m.group(1), []).append((float(m.group(2)), int(m.group(3))))
base = statistics.median(u for u, _ in rows[next(k for k in rows if k.startswith("nginx"))])
print(f"{'proxy':32} {'us/req':>8} {'req/s':>8} {'vs nginx':>9}")
for name, vals in rows.items():
    us = statistics.median(u for u, _ in vals)
    rps = statistics.median(r for _, r in vals)
    print(f"{name:32} {us:8.1f} {rps:8.0f} {us/base:8.2f}x")
EOF
