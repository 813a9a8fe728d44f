# shellcheck shell=bash
# lib.sh: sourced by the load-test scripts (reserve-ceiling.sh, reserve-cost.sh,
# durability.sh, sold-out.sh, metrics-cost.sh, redis-memory.sh, vs-node.sh). The caller
# sets ROOT to the repository.

# The script's name, which its failures start with.
LOADTEST_NAME=$(basename "$0" .sh)
log() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$LOADTEST_NAME" "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed"; }

# median: the median of the numbers on stdin, one a line.
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# col NAME K: the median of column K of $TMP/NAME.txt (one run a line).
col() { cut -d' ' -f"$2" "$TMP/$1.txt" | median; }
# ratio A B [PLACES]: A / B with PLACES decimals (default 2), n/a when B is not positive.
ratio() { awk -v a="$1" -v b="$2" -v p="${3:-2}" 'BEGIN { if (b > 0) printf "%." p "f", a / b; else print "n/a" }'; }

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Sets YOINK to the binary to measure: $YOINK_BIN, else target/release/yoink, built first
# (before anything is measured, so the compiler never competes with a run) unless
# SKIP_BUILD=1.
resolve_yoink() {
  if [[ -n ${YOINK_BIN:-} ]]; then
    YOINK=$YOINK_BIN
  else
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
      need cargo
      log "building yoink (cargo build --release -p yoink)"
      (cd "$ROOT" && cargo build --release -p yoink) >&2
    fi
    YOINK="$ROOT/target/release/yoink"
  fi
  [[ -x $YOINK ]] || die "no yoink binary at $YOINK"
}

# start_private_redis DIR: a redis-server on a free loopback port that keeps nothing
# (--save '' --appendonly no), logging to DIR/redis.log; never the shared one on 6379.
# Sets REDIS_PORT and REDIS_PID (the caller stops it) and waits for PONG, or dies.
start_private_redis() {
  REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize no --dir "$1" --logfile "$1/redis.log" &
  REDIS_PID=$!
  for _ in $(seq 50); do
    [[ $(redis-cli -p "$REDIS_PORT" PING 2>/dev/null) == PONG ]] && return 0
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited"
    sleep 0.1
  done
  die "redis-server did not answer"
}

# print_logs DIR: the last lines of every non-empty DIR/*.log (for a run that failed).
print_logs() {
  local f
  for f in "$1"/*.log; do
    [[ -s $f ]] || continue
    echo "---- last lines of $f" >&2
    tail -n 20 "$f" >&2
  done
}

# private_run NAME: the frame of a measurement on private stores: PGHOST/PGPORT/PGUSER (defaults 127.0.0.1 5432 postgres,
# exported), TMP (removed at exit), PIDS (killed at exit), DB_NAME yoink_<NAME>_<pid>
# on that server, dropped at exit once the script sets DB_CREATED=1, and the logs in
# TMP printed when the run fails.
private_run() {
  RUN_NAME=$1
  PGHOST=${PGHOST:-127.0.0.1}
  PGPORT=${PGPORT:-5432}
  PGUSER=${PGUSER:-postgres}
  export PGHOST PGPORT PGUSER
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/yoink-$RUN_NAME.XXXXXX")
  PIDS=()
  DB_NAME="yoink_${RUN_NAME//-/}_$$"
  DB_CREATED=0
  trap private_run_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

private_run_cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [[ $DB_CREATED == 1 ]]; then
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 \
      || echo "$RUN_NAME: could not drop database $DB_NAME, drop it by hand" >&2
  fi
  [[ $rc == 0 ]] || print_logs "$TMP"
  rm -rf "$TMP"
  exit "$rc"
}

# serve_on PORT LOG [flags...]: starts `yoink serve` (added to PIDS) and waits until it
# is ready, or dies.
serve_on() {
  local port=$1 logfile=$2
  shift 2
  "$YOINK" serve --listen "127.0.0.1:$port" --metrics-listen off "$@" >"$logfile" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]] && return 0
    sleep 0.2
  done
  die "yoink serve on $port not ready after 60 s"
}

# private_stores KEY_PREFIX: after private_run and resolve_yoink, a private redis-server
# (in PIDS; RCLI is its redis-cli) and the database DB_NAME, migrated (dropped at exit),
# exported for every yoink command the script runs under KEY_PREFIX.
private_stores() {
  start_private_redis "$TMP"
  PIDS+=("$REDIS_PID")
  RCLI=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB_NAME"
  export YOINK_KEY_PREFIX=$1
  export RUST_LOG=${RUST_LOG:-warn}
  DB_CREATED=1
  "$YOINK" migrate >"$TMP/migrate.log" 2>&1 || die "yoink migrate failed"
}
