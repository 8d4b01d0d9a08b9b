# Shared by the scripts in benches/ and loadtest/ (sourced, not run): tool checks, and a
# scratch directory plus background processes cleaned up on exit.

# need TOOL...: fails with the install hint when a tool is missing.
need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || {
      echo "missing $tool (apt-get install nginx-light haproxy wrk)" >&2
      exit 1
    }
  done
}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
