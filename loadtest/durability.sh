#!/usr/bin/env bash
# durability.sh: what each `serve --durability` level costs POST /buy, measured in one run.
#
# Four settings, each on a fresh private Redis (and a private replica where needed) and
# a fresh database, driven by the same wrk load (loadtest/buy.lua, a new buyer per
# request) at each connection count in CONNECTIONS_LIST:
#   none        Redis keeps nothing on disk (--save '' --appendonly no), --durability none
#   everysec    AOF fsynced every second (--appendonly yes --appendfsync everysec), none
#   local       AOF fsynced before every reply (--appendfsync always), --durability local
#   replica     no persistence on the primary, one replica on loopback, --durability
#               replica (group-committed WAIT 1 <YOINK_DURABILITY_TIMEOUT_MS>)
# Then a table: req/s, p50, p99, non-2xx (503 not_durable shows up there), and each
# level's req/s as a ratio of `none` at the same connection count.
#
# It never touches the shared Redis on 6379; PostgreSQL is the one at PGHOST:PGPORT,
# with private databases yoink_dur_<pid>_<n> that this script drops.
#
# Environment (defaults in brackets):
#   CONNECTIONS_LIST  wrk connection counts                          ["50 1000"]
#   DURATION          measured wrk run per setting and count          [10s]
#   WARMUP            wrk warm-up before each measured run            [3s]
#   LEVELS            which settings, in order                        ["none everysec local replica"]
#   YOINK_DURABILITY_TIMEOUT_MS  WAIT timeout for `replica`           [100]
#   YOINK_BIN / SKIP_BUILD=1 / KEEP_TMP=1 / PGHOST PGPORT PGUSER      as in reserve-ceiling.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/loadtest/lib.sh"
CONNECTIONS_LIST=${CONNECTIONS_LIST:-"50 1000"}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
LEVELS=${LEVELS:-"none everysec local replica"}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
export PGHOST PGPORT PGUSER
export YOINK_DURABILITY_TIMEOUT_MS=${YOINK_DURABILITY_TIMEOUT_MS:-100}
STOCK=1000000000000

need redis-server; need redis-cli; need wrk; need curl; need psql; need python3


TMP=$(mktemp -d "${TMPDIR:-/tmp}/yoink-durability.XXXXXX")
PIDS=()
DBS=()
cleanup() {
  local rc=$?
  set +e
  stop_all
  for db in "${DBS[@]}"; do
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 \
      || echo "durability: could not drop database $db, drop it by hand" >&2
  done
  if [[ $rc != 0 ]]; then
    for f in "$TMP"/*.log; do [[ -s $f ]] && { echo "---- $f" >&2; tail -n 20 "$f" >&2; }; done
  fi
  if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "durability: logs kept in $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
# Stops every process this script started (their exit codes are not failures).
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

resolve_yoink

# start_redis NAME ARGS...: a private redis-server in $TMP/NAME; sets STARTED_PORT.
# (Not a $(...) function: the server would hold the substitution's pipe open.)
start_redis() {
  local name=$1 port
  shift
  port=$(free_port)
  mkdir -p "$TMP/$name"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize no \
    --dir "$TMP/$name" --logfile "$TMP/$name.log" "$@" </dev/null >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do
    [[ $(redis-cli -p "$port" PING 2>/dev/null) == PONG ]] && break
    sleep 0.1
  done
  [[ $(redis-cli -p "$port" PING 2>/dev/null) == PONG ]] || die "redis-server $name did not answer"
  STARTED_PORT=$port
}

declare -A RPS P50 P99 NON2XX
run=0
for level in $LEVELS; do
  for conns in $CONNECTIONS_LIST; do
    run=$((run + 1))
    primary_args=() serve_level=none
    case "$level" in
      none) ;;
      everysec) primary_args=(--appendonly yes --appendfsync everysec) ;;
      local) primary_args=(--appendonly yes --appendfsync always) serve_level=local ;;
      replica) serve_level=replica ;;
      *) die "unknown level $level" ;;
    esac
    start_redis "redis-$run" "${primary_args[@]}"
    REDIS_PORT=$STARTED_PORT
    if [[ $level == replica ]]; then
      start_redis "replica-$run" --replicaof 127.0.0.1 "$REDIS_PORT"
      replica_port=$STARTED_PORT
      for _ in $(seq 100); do
        redis-cli -p "$replica_port" INFO replication | grep -q 'master_link_status:up' && break
        sleep 0.1
      done
      redis-cli -p "$replica_port" INFO replication | grep -q 'master_link_status:up' \
        || die "replica never linked"
    fi
    db="yoink_dur_$$_$run"
    DBS+=("$db")
    API_PORT=$(free_port)
    BASE="http://127.0.0.1:$API_PORT"
    export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
    export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$db"
    export YOINK_KEY_PREFIX="dur:" YOINK_ADMIN_TOKEN="dur-$$" RUST_LOG=${RUST_LOG:-warn}
    "$YOINK" migrate >"$TMP/migrate-$run.log" 2>&1 || die "yoink migrate failed"
    "$YOINK" serve --listen "127.0.0.1:$API_PORT" --durability "$serve_level" \
      </dev/null >"$TMP/serve-$run.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 300); do
      [[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz") == 200 ]] && break
      sleep 0.2
    done
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz") == 200 ]] \
      || die "yoink serve --durability $serve_level not ready ($(curl -s "$BASE/readyz"))"
    code=$(curl -s -o "$TMP/create-$run.json" -w '%{http_code}' -X POST "$BASE/sales" \
      -H "Authorization: Bearer $YOINK_ADMIN_TOKEN" -H 'Content-Type: application/json' \
      -d "{\"sale_id\":\"dur\",\"stock\":$STOCK}")
    [[ $code == 201 ]] || die "POST /sales answered $code"
    WRK=(wrk -t1 -c"$conns" --timeout 5s --latency -s "$ROOT/loadtest/buy.lua")
    log "$level, $conns connections: warm-up $WARMUP, then wrk -d$DURATION"
    SALE_ID=dur "${WRK[@]}" -d"$WARMUP" "$BASE" >"$TMP/wrk-warmup-$run.log" 2>&1 || die "wrk warm-up failed"
    SALE_ID=dur "${WRK[@]}" -d"$DURATION" "$BASE" >"$TMP/wrk-$run.log" 2>&1 || die "wrk failed"
    line=$(grep '^YOINK_WRK ' "$TMP/wrk-$run.log" | tail -n1)
    [[ -n $line ]] || die "wrk printed no YOINK_WRK line"
    field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    key="$level/$conns"
    RPS[$key]=$(field rps) P50[$key]=$(field p50_ms) P99[$key]=$(field p99_ms) NON2XX[$key]=$(field non_2xx)
    echo "$level  -c$conns  ${RPS[$key]} req/s  p50 ${P50[$key]} ms  p99 ${P99[$key]} ms  non-2xx ${NON2XX[$key]}" >&2
    stop_all
  done
done

echo
echo "==================== POST /buy by durability level ===================="
echo "| level | Redis | connections | req/s | p50 ms | p99 ms | non-2xx | req/s vs none |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for level in $LEVELS; do
  case "$level" in
    none) redis="no AOF, no snapshots" ;;
    everysec) redis="AOF, appendfsync everysec" ;;
    local) redis="AOF, appendfsync always" ;;
    replica) redis="1 replica on loopback, WAIT 1 ${YOINK_DURABILITY_TIMEOUT_MS}" ;;
  esac
  for conns in $CONNECTIONS_LIST; do
    key="$level/$conns"
    base=${RPS[none/$conns]:-0}
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$level" "$redis" "$conns" "${RPS[$key]}" \
      "${P50[$key]}" "${P99[$key]}" "${NON2XX[$key]}" "$(ratio "${RPS[$key]}" "$base")"
  done
done
echo
echo "machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); wrk, yoink and Redis share it"
echo "disk under $TMP: $(df -h "$TMP" | awk 'NR==2 { print $1 " (" $2 ")" }')"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
