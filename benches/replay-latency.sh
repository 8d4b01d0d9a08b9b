#!/usr/bin/env bash
# What a fly-replay costs: the same request answered directly vs. replayed to another region.
#
# One nginx process plays two replicas: "a1" in the local region (ams) and "p1" in iad. On
# a1, /replay answers `409` + `fly-replay: region=iad` and / answers 200; p1 answers 200.
# Portico (region ams) fronts both. wrk loads, in turn:
#   direct      GET /           a1 answers             (one upstream round trip)
#   replay      GET /replay     a1 asks, p1 answers    (two round trips, one Portico request)
#   replay-body POST /replay    same with a 4 KiB body (the body is re-sent from the buffer)
# and the table shows requests/s, mean and p99 latency, and the CPU Portico spent per request.
#
# Usage: benches/replay-latency.sh [DURATION_SECONDS] [CONNECTIONS]
# Needs: nginx, wrk (apt-get install nginx-light wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

DURATION=${1:-5}
CONNS=${2:-32}
THREADS=${THREADS:-2}
need nginx wrk
cargo build --quiet --release --bin portico


A1=18191
P1=18192
PROXY=18190
BODY64="0123456789012345678901234567890123456789012345678901234567890123"

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
  client_body_buffer_size 64k;
  server {
    listen 127.0.0.1:$A1 backlog=4096;
    location /replay { add_header fly-replay "region=iad" always; return 409 "a1 says replay"; }
    location / { return 200 "$BODY64"; }
  }
  server {
    listen 127.0.0.1:$P1 backlog=4096;
    location / { return 200 "$BODY64"; }
  }
}
EOF
nginx -p "$WORK/origin" -c "$WORK/origin/nginx.conf" &
PIDS+=($!)

cat > "$WORK/portico.toml" <<EOF
[server]
threads = $THREADS
region = "ams"
primary_region = "iad"
access_log = false
log_level = "warn"
[[listeners]]
address = "127.0.0.1:$PROXY"
[admin]
enabled = false
[upstreams.web]
backends = [
  { address = "127.0.0.1:$A1", id = "a1", region = "ams" },
  { address = "127.0.0.1:$P1", id = "p1", region = "iad" },
]
EOF
target/release/portico run -c "$WORK/portico.toml" 2>"$WORK/portico.err" &
PORTICO=$!
PIDS+=($PORTICO)
sleep 0.7

# A POST body for wrk.
cat > "$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF

# Sanity: the replay really happens (p1 answers, not a1's 409).
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PROXY/replay")
[ "$code" = 200 ] || { echo "replay sanity check failed: HTTP $code" >&2; cat "$WORK/portico.err" >&2; exit 1; }

cpu_ticks() {
  local rest
  rest=$(sed 's/^.*) //' "/proc/$1/stat")
  echo "$rest" | awk '{print $12 + $13}'
}
HZ=$(getconf CLK_TCK)

run() { # label path [wrk args...]
  local label=$1 path=$2
  shift 2
  wrk -t2 -c"$CONNS" -d1s "$@" "http://127.0.0.1:$PROXY$path" >/dev/null 2>&1 || true
  local before after out reqs
  before=$(cpu_ticks "$PORTICO")
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$@" "http://127.0.0.1:$PROXY$path")
  after=$(cpu_ticks "$PORTICO")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local mean p99 non2xx us
  mean=$(echo "$out" | awk '/Latency/ && !/Distribution/ {print $2; exit}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  us=$(awk -v t=$((after - before)) -v hz="$HZ" -v r="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / r }')
  printf '%-12s %10s %10s %10s %12s %10s\n' "$label" "$((reqs / DURATION))" "$mean" "$p99" "$us" "${non2xx:-0}"
}

echo "fly-replay cost, wrk -t2 -c$CONNS, ${DURATION}s each, Portico threads=$THREADS, $(nproc) cores"
printf '%-12s %10s %10s %10s %12s %10s\n' case "req/s" mean p99 "cpu us/req" non-2xx
run direct /
run replay /replay
run replay-body /replay -s "$WORK/post.lua"
