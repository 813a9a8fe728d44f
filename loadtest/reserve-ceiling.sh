#!/usr/bin/env bash
# reserve-ceiling.sh: how close does POST /buy get to what Redis can do?
#
# Part A (the ceiling): the reserve Lua script alone, driven by redis-benchmark against
#   a private redis-server. One sale lives in one hash slot, so this is the most one
#   sale can ever take on one Redis core, whatever the API does.
# Part B (the API): `yoink serve` on the same private Redis, driven by wrk through
#   POST /buy with a distinct user per request (loadtest/buy.lua).
# Then a summary: ceiling req/s, /buy req/s, p50, p99, /buy ÷ ceiling, and the machine.
#
# It never touches the shared Redis on 6379: it starts its own redis-server on a free
# port (--save '' --appendonly no). PostgreSQL is the one at PGHOST:PGPORT, with a
# private database yoink_bench_<pid> that yoink creates and this script drops.
#
# Usage:  loadtest/reserve-ceiling.sh            (both parts)
#         PART=a loadtest/reserve-ceiling.sh     (ceiling only, needs no yoink binary)
#
# Environment (defaults in brackets):
#   PART             all | a | b                                   [all]
#   DURATION         wrk measured run                              [20s]
#   WARMUP           wrk warm-up run before it (0 = none)          [5s]
#   CONNECTIONS      wrk connections                               [1000]
#   THREADS          wrk threads                                   [1]
#   WRK_TIMEOUT      wrk per-request timeout                       [5s]
#   BENCH_REQUESTS   redis-benchmark calls (-n)                    [1000000]
#   BENCH_CLIENTS    redis-benchmark connections (-c)              [50]
#   BENCH_PIPELINE   redis-benchmark pipeline depth (-P)           [1]
#   STOCK            stock of both benchmark sales                 [1000000000000]
#   YOINK_BIN        yoink binary; when unset the script runs
#                    `cargo build --release -p yoink` and uses target/release/yoink
#   SKIP_BUILD=1     use target/release/yoink as it is, no cargo build
#   PGHOST PGPORT PGUSER                                           [127.0.0.1 5432 postgres]
#   PIN_REDIS PIN_YOINK PIN_WRK  CPU lists for `taskset -c` (unset = no pinning). On a
#                    2-core box all three share the cores; pinning only moves the
#                    contention around, so it is off by default (see loadtest/README.md).
#   KEEP_TMP=1       keep the temporary directory (logs) after the run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPTS="$ROOT/services/core/src/scripts"
# shellcheck source=lib.sh
source "$ROOT/loadtest/lib.sh"

PART=${PART:-all}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-5s}
CONNECTIONS=${CONNECTIONS:-1000}
THREADS=${THREADS:-1}
WRK_TIMEOUT=${WRK_TIMEOUT:-5s}
BENCH_REQUESTS=${BENCH_REQUESTS:-1000000}
BENCH_CLIENTS=${BENCH_CLIENTS:-50}
BENCH_PIPELINE=${BENCH_PIPELINE:-1}
STOCK=${STOCK:-1000000000000}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
export PGHOST PGPORT PGUSER

case "$PART" in all | a | b) ;; *) echo "PART must be all, a or b" >&2; exit 2 ;; esac
run_a() { [[ $PART == all || $PART == a ]]; }
run_b() { [[ $PART == all || $PART == b ]]; }


need redis-server; need redis-cli; need python3
run_a && need redis-benchmark
run_b && { need wrk; need curl; need psql; }

# taskset prefix for a CPU list, or nothing.
pin() { if [[ -n ${1:-} ]]; then printf 'taskset -c %s' "$1"; fi; }
[[ -n ${PIN_REDIS:-}${PIN_YOINK:-}${PIN_WRK:-} ]] && need taskset


TMP=$(mktemp -d "${TMPDIR:-/tmp}/yoink-bench.XXXXXX")
REDIS_PID=""
YOINK_PID=""
DB_NAME="yoink_bench_$$"
DB_CREATED=0

cleanup() {
  local rc=$?
  set +e
  if [[ -n $YOINK_PID ]] && kill -0 "$YOINK_PID" 2>/dev/null; then
    kill "$YOINK_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$YOINK_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$YOINK_PID" 2>/dev/null
    wait "$YOINK_PID" 2>/dev/null
  fi
  if [[ -n $REDIS_PID ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill "$REDIS_PID" 2>/dev/null
    wait "$REDIS_PID" 2>/dev/null
  fi
  if [[ $DB_CREATED == 1 ]]; then
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 \
      || echo "reserve-ceiling: could not drop database $DB_NAME, drop it by hand" >&2
  fi
  if [[ $rc != 0 ]]; then
    for f in "$TMP"/*.log; do
      [[ -s $f ]] || continue
      echo "---- last lines of $f" >&2
      tail -n 20 "$f" >&2
    done
  fi
  if [[ ${KEEP_TMP:-0} == 1 ]]; then
    echo "reserve-ceiling: logs kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- yoink binary
YOINK=""
if run_b; then resolve_yoink; fi

# ---------------------------------------------------------------- private Redis
# 1-, 5- and 15-minute load averages (after any build), printed in the summary.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
REDIS_PORT=$(free_port)
log "starting private redis-server on 127.0.0.1:$REDIS_PORT"
# shellcheck disable=SC2046
$(pin "${PIN_REDIS:-}") redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
  --save '' --appendonly no --protected-mode yes --daemonize no \
  --dir "$TMP" --logfile "$TMP/redis.log" &
REDIS_PID=$!
RCLI=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
for _ in $(seq 50); do
  [[ $("${RCLI[@]}" PING 2>/dev/null) == PONG ]] && break
  kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited"
  sleep 0.1
done
[[ $("${RCLI[@]}" PING 2>/dev/null) == PONG ]] || die "redis-server did not answer"

# Redis CPU seconds so far (user + sys, all threads), and wall-clock seconds.
redis_cpu() { "${RCLI[@]}" INFO cpu | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.3f", s }'; }
now() { date +%s.%N; }
pct() { awk -v c0="$1" -v c1="$2" -v t0="$3" -v t1="$4" 'BEGIN { printf "%.0f", 100 * (c1 - c0) / (t1 - t0) }'; }
# Microseconds Redis spent per EVALSHA since the last CONFIG RESETSTAT (whole script).
evalsha_usec() { "${RCLI[@]}" INFO commandstats | sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\).*/\1/p'; }
evalsha_calls() { "${RCLI[@]}" INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p'; }

sale_keys() { # sale prefix -> the seven KEYS of reserve.lua
  local p="$2{sale:$1}"
  echo "$p:meta $p:stock $p:buyers $p:idem $p:reservations $p:events $p:holds"
}

CEIL_RPS="" CEIL_P50="" CEIL_P99="" CEIL_FRESH="" CEIL_CPU="" CEIL_USEC="" CEIL_CORE=""
# ---------------------------------------------------------------- Part A: ceiling
if run_a; then
  SALE_A="ceiling"
  read -r -a KEYS_A <<<"$(sale_keys "$SALE_A" "")"
  created=$("${RCLI[@]}" EVAL "$(cat "$SCRIPTS/create_sale.lua")" 2 "${KEYS_A[0]}" "${KEYS_A[1]}" \
    "$STOCK" 0 0 0 0 0)
  [[ $created == 1 ]] || die "create_sale.lua answered '$created'"
  SHA=$("${RCLI[@]}" SCRIPT LOAD "$(cat "$SCRIPTS/reserve.lua")")
  [[ $SHA =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD answered '$SHA'"

  # One call by hand: it must reserve, or the benchmark would time errors.
  # The last two arguments are the position floor (epoch, seq): 0 0, no floor.
  probe=$("${RCLI[@]}" EVALSHA "$SHA" 7 "${KEYS_A[@]}" 01900000-0000-7000-8000-000000000000 \
    "$SALE_A" probe-user 1 "" 0 0)
  [[ $(head -n1 <<<"$probe") == reserved ]] || die "probe EVALSHA did not reserve: $probe"

  # redis-benchmark replaces every __rand_int__ with its own random 12-digit number.
  # They come from random(), so only about 2^31 distinct values: one per id would
  # collide a few hundred times in a million calls, and a reservation id reused with
  # another user is an IDEMPOTENCY_MISMATCH error, on which redis-benchmark exits. So
  # the reservation id (36 characters, the length of a UUID; the script never parses
  # it) takes two independent numbers (~62 bits): each call is a new reservation of a
  # (nearly always) new user, and the script does the full work (checks, DECRBY,
  # HINCRBY x3, XADD, HSET). A user drawn twice just holds 2 units (limit 0).
  log "Part A: redis-benchmark -n $BENCH_REQUESTS -c $BENCH_CLIENTS -P $BENCH_PIPELINE EVALSHA reserve.lua"
  before=$("${RCLI[@]}" HGET "${KEYS_A[0]}" reserved)
  "${RCLI[@]}" CONFIG RESETSTAT >/dev/null
  c0=$(redis_cpu) t0=$(now)
  # shellcheck disable=SC2046
  $(pin "${PIN_WRK:-}") redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" \
    -n "$BENCH_REQUESTS" -c "$BENCH_CLIENTS" -P "$BENCH_PIPELINE" -r 100000000000 --csv \
    EVALSHA "$SHA" 7 "${KEYS_A[@]}" \
    0__rand_int__-7000-8000-__rand_int__ "$SALE_A" u-__rand_int__ 1 "" 0 0 \
    >"$TMP/redis-benchmark.csv" 2>"$TMP/redis-benchmark.log"
  c1=$(redis_cpu) t1=$(now)
  after=$("${RCLI[@]}" HGET "${KEYS_A[0]}" reserved)
  CEIL_CPU=$(pct "$c0" "$c1" "$t0" "$t1")
  CEIL_USEC=$(evalsha_usec)
  # What one Redis core could do if the client cost nothing: 1 s / time per call.
  CEIL_CORE=$(awk -v u="$CEIL_USEC" 'BEGIN { if (u > 0) printf "%.0f", 1e6 / u; else print "n/a" }')
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  row=$(grep -v '^"test"' "$TMP/redis-benchmark.csv" | tail -n1)
  [[ -n $row ]] || die "no result from redis-benchmark"
  read -r CEIL_RPS CEIL_P50 CEIL_P99 < <(python3 -c '
import csv, sys
r = next(csv.reader([sys.argv[1]]))
print(r[1], r[4], r[6])' "$row")
  CEIL_FRESH=$((after - before))
  errors=$("${RCLI[@]}" INFO errorstats | grep -c '^errorstat_' || true)
  echo "Part A  reserve.lua via EVALSHA: ${CEIL_RPS} calls/s  p50 ${CEIL_P50} ms  p99 ${CEIL_P99} ms  (redis-benchmark -c $BENCH_CLIENTS -P $BENCH_PIPELINE)"
  echo "        fresh reservations: $CEIL_FRESH of $BENCH_REQUESTS calls (any missing: replays of a repeated random id)  error kinds seen: $errors"
  echo "        Redis: ${CEIL_USEC} µs per script call inside Redis (=> ${CEIL_CORE}/s if Redis had a core to itself), Redis CPU ${CEIL_CPU}% of one core during the run"
  [[ $CEIL_FRESH -gt $((BENCH_REQUESTS * 9 / 10)) ]] \
    || die "only $CEIL_FRESH of $BENCH_REQUESTS calls reserved; the ceiling figure is not the script's real work"
  # Free Part A's memory before Part B (UNLINK frees in the background).
  "${RCLI[@]}" UNLINK "${KEYS_A[@]}" >/dev/null
fi

API_CPU="" API_USEC="" API_CALLS="" API_RPS="" API_P50="" API_P90="" API_P99="" API_MAX="" API_NON2XX="" API_SOCKERR="" API_RESERVED=""
# ---------------------------------------------------------------- Part B: POST /buy
if run_b; then
  API_PORT=$(free_port)
  PREFIX="bench:"
  SALE_B="bench-buy"
  ADMIN_TOKEN="bench-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB_NAME"
  export YOINK_KEY_PREFIX="$PREFIX"
  export YOINK_ADMIN_TOKEN="$ADMIN_TOKEN"
  export RUST_LOG=${RUST_LOG:-warn}
  BASE="http://127.0.0.1:$API_PORT"

  log "Part B: yoink migrate (database $DB_NAME)"
  DB_CREATED=1 # from here on the trap drops it (IF EXISTS)
  "$YOINK" migrate >"$TMP/migrate.log" 2>&1 || die "yoink migrate failed (its log is printed below)"

  log "Part B: yoink serve on $BASE"
  # shellcheck disable=SC2046
  $(pin "${PIN_YOINK:-}") "$YOINK" serve --listen "127.0.0.1:$API_PORT" >"$TMP/yoink.log" 2>&1 &
  YOINK_PID=$!
  ready=0
  for _ in $(seq 300); do
    kill -0 "$YOINK_PID" 2>/dev/null || die "yoink serve exited"
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz") == 200 ]]; then ready=1; break; fi
    sleep 0.2
  done
  [[ $ready == 1 ]] || die "yoink serve not ready after 60 s"

  # The sale through the admin API; `yoink sale create` when that is refused.
  code=$(curl -s -o "$TMP/create.json" -w '%{http_code}' -X POST "$BASE/sales" \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "{\"sale_id\":\"$SALE_B\",\"stock\":$STOCK,\"limit_per_user\":0}")
  if [[ $code != 201 ]]; then
    log "POST /sales answered $code ($(head -c 200 "$TMP/create.json")); trying yoink sale create"
    "$YOINK" sale create --id "$SALE_B" --stock "$STOCK" --limit-per-user 0 >"$TMP/sale-create.log" 2>&1 \
      || die "could not create sale $SALE_B"
  fi
  code=$(curl -s -o "$TMP/probe.json" -w '%{http_code}' -X POST "$BASE/buy" \
    -H 'Content-Type: application/json' -d "{\"sale_id\":\"$SALE_B\",\"user_id\":\"probe\",\"quantity\":1}")
  [[ $code == 202 ]] || die "probe POST /buy answered $code: $(head -c 300 "$TMP/probe.json")"

  META_B="${PREFIX}{sale:$SALE_B}:meta"
  WRK=(wrk -t"$THREADS" -c"$CONNECTIONS" --timeout "$WRK_TIMEOUT" --latency -s "$ROOT/loadtest/buy.lua")
  if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
    log "Part B: warm-up wrk -t$THREADS -c$CONNECTIONS -d$WARMUP"
    # shellcheck disable=SC2046
    SALE_ID=$SALE_B $(pin "${PIN_WRK:-}") "${WRK[@]}" -d"$WARMUP" "$BASE" >"$TMP/wrk-warmup.log" 2>&1 \
      || die "wrk warm-up failed"
  fi
  sleep 1
  before=$("${RCLI[@]}" HGET "$META_B" reserved)
  "${RCLI[@]}" CONFIG RESETSTAT >/dev/null
  c0=$(redis_cpu) t0=$(now)
  log "Part B: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency -s loadtest/buy.lua"
  # shellcheck disable=SC2046
  SALE_ID=$SALE_B $(pin "${PIN_WRK:-}") "${WRK[@]}" -d"$DURATION" "$BASE" | tee "$TMP/wrk.log" >&2
  c1=$(redis_cpu) t1=$(now)
  # yoink's memory: peak resident set over its life (warm-up and run), and now.
  API_PEAK_MIB=$(awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$YOINK_PID/status" 2>/dev/null || echo "?")
  API_RSS_MIB=$(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$YOINK_PID/status" 2>/dev/null || echo "?")
  after=$("${RCLI[@]}" HGET "$META_B" reserved)
  API_CPU=$(pct "$c0" "$c1" "$t0" "$t1")
  API_USEC=$(evalsha_usec) API_CALLS=$(evalsha_calls)
  line=$(grep '^YOINK_WRK ' "$TMP/wrk.log" | tail -n1)
  [[ -n $line ]] || die "wrk printed no YOINK_WRK line"
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
  API_RPS=$(field rps) API_P50=$(field p50_ms) API_P90=$(field p90_ms) API_P99=$(field p99_ms)
  API_MAX=$(field max_ms) API_NON2XX=$(field non_2xx) API_SOCKERR=$(field socket_errors)
  API_REQS=$(field requests) API_SECS=$(field duration_s)
  API_RESERVED=$((after - before))
  API_RESERVED_RPS=$(awk -v n="$API_RESERVED" -v s="$API_SECS" 'BEGIN { printf "%.1f", n / s }')
  echo "Part B  POST /buy: ${API_RPS} req/s  p50 ${API_P50} ms  p99 ${API_P99} ms  ($API_REQS requests, non-2xx $API_NON2XX, socket errors $API_SOCKERR)"
  echo "        units reserved during the run (Redis meta.reserved): $API_RESERVED = ${API_RESERVED_RPS}/s"
  echo "        Redis: ${API_CALLS:-0} EVALSHA calls, ${API_USEC:-?} µs each inside Redis, Redis CPU ${API_CPU}% of one core during the run"
  curl -s "$BASE/metrics" | grep -E '^yoink_reservations_total' | sed 's/^/        (cumulative, incl. warm-up) /' || true
fi

# ---------------------------------------------------------------- summary
cpu_model=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
echo
echo "==================== Yoink reserve ceiling summary ===================="
printf '%-34s %s\n' "ceiling (reserve.lua EVALSHA)" "${CEIL_RPS:-(not run)} calls/s  (p50 ${CEIL_P50:--} ms, p99 ${CEIL_P99:--} ms; -c $BENCH_CLIENTS -P $BENCH_PIPELINE -n $BENCH_REQUESTS)"
printf '%-34s %s\n' "ceiling Redis-side" "${CEIL_USEC:--} µs/call inside Redis => ${CEIL_CORE:--}/s on a dedicated core; Redis CPU ${CEIL_CPU:--}%"
printf '%-34s %s\n' "POST /buy (wrk)" "${API_RPS:-(not run)} req/s  (-t$THREADS -c$CONNECTIONS -d$DURATION, warm-up $WARMUP)"
printf '%-34s %s\n' "POST /buy p50 / p90 / p99 / max" "${API_P50:--} / ${API_P90:--} / ${API_P99:--} / ${API_MAX:--} ms"
printf '%-34s %s\n' "POST /buy non-2xx / socket errors" "${API_NON2XX:--} / ${API_SOCKERR:--}"
printf '%-34s %s\n' "POST /buy units reserved/s" "${API_RESERVED_RPS:--}"
printf '%-34s %s\n' "yoink serve memory" "peak RSS ${API_PEAK_MIB:--} MiB, ${API_RSS_MIB:--} MiB after the run"
printf '%-34s %s\n' "POST /buy Redis CPU" "${API_CPU:--}% of one core (${API_USEC:--} µs per EVALSHA)"
if [[ -n $CEIL_RPS && -n $API_RPS ]]; then
  printf '%-34s %s\n' "ratio /buy / ceiling" "$(ratio "$API_RPS" "$CEIL_RPS")  (reserved/s / ceiling: $(ratio "$API_RESERVED_RPS" "$CEIL_RPS"))"
else
  printf '%-34s %s\n' "ratio /buy / ceiling" "n/a (PART=$PART)"
fi
printf '%-34s %s\n' "machine" "nproc=$(nproc)  cpu: ${cpu_model:-unknown}"
printf '%-34s %s\n' "load average" "before: $LOAD_BEFORE  after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)  (other work on the box skews every figure)"
printf '%-34s %s\n' "pinning" "redis=${PIN_REDIS:-none} yoink=${PIN_YOINK:-none} load generator=${PIN_WRK:-none}"
echo "free -g:"
free -g
echo "========================================================================"
