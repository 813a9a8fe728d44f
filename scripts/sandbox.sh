# shellcheck shell=bash
# sandbox.sh: sourced by scripts that run the real `yoink` binary against the local
# Redis and PostgreSQL without touching anyone else's data. After
#   source scripts/sandbox.sh NAME
# the environment points yoink at a database of its own (yoink_NAME_PID), a Redis key
# prefix of its own (NAME PID:) and a free port; `sandbox_start CMD...` runs a yoink
# process in the background, logging to $SANDBOX_TMP; on exit everything is stopped and
# the database, keys and logs are removed. Never flushes or stops a shared server.

SANDBOX_NAME=$1
SANDBOX_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
YOINK_BIN=${YOINK_BIN:-$SANDBOX_ROOT/target/debug/yoink}
[[ -x $YOINK_BIN ]] || { echo "$SANDBOX_NAME: $YOINK_BIN missing (cargo build -p yoink)" >&2; exit 1; }

SANDBOX_DB="yoink_${SANDBOX_NAME}_$$"
SANDBOX_PREFIX="${SANDBOX_NAME}$$:"
SANDBOX_TMP=$(mktemp -d)
SANDBOX_PIDS=()
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$SANDBOX_DB"
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export YOINK_KEY_PREFIX="$SANDBOX_PREFIX"
SANDBOX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
export YOINK_LISTEN="127.0.0.1:$SANDBOX_PORT"
export YOINK_ADMIN_TOKEN="${SANDBOX_NAME}-$$"
export YOINK_PROJECTOR_METRICS_LISTEN=off
export RUST_LOG=${RUST_LOG:-warn}

sandbox_cleanup() {
  for pid in "${SANDBOX_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  redis-cli -u "$REDIS_URL" --scan --pattern "${SANDBOX_PREFIX}*" \
    | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $SANDBOX_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$SANDBOX_TMP"
}
trap sandbox_cleanup EXIT

# Prints the tail of every log, then fails.
sandbox_fail() {
  echo "$SANDBOX_NAME: FAILED: $*" >&2
  for f in "$SANDBOX_TMP"/*.log; do [[ -e $f ]] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  exit 1
}

# sandbox_start LOGNAME ARGS...: `yoink ARGS...` in the background.
sandbox_start() {
  local log=$1
  shift
  "$YOINK_BIN" "$@" >"$SANDBOX_TMP/$log.log" 2>&1 &
  SANDBOX_PIDS+=($!)
}

# Waits until the API answers /healthz.
sandbox_wait_api() {
  for _ in $(seq 1 100); do curl -sf "http://$YOINK_LISTEN/healthz" >/dev/null && return 0; sleep 0.1; done
  sandbox_fail "API not up on $YOINK_LISTEN"
}
