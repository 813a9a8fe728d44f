#!/usr/bin/env bash
# reserve-cost.sh: how many microseconds does reserve.lua spend inside Redis per fresh
# reservation, on an empty sale and on a sale with 1M reservations already recorded,
# next to a minimal reference script (GET stock, HGET limit, DECRBY, HINCRBY, XADD of
# 4 fields) measured in the same run?
#
# Each figure is `INFO commandstats` usec_per_call of EVALSHA after CONFIG RESETSTAT,
# with redis-benchmark driving one script on one sale. Redis 7 also counts the commands
# a script runs in commandstats, so every measurement prints a per-command breakdown
# (calls and µs per script call); what is left of the script's time is Lua itself
# (interpreter, argument and reply conversion). Every measurement runs RUNS times, and
# the summary gives medians.
#
# It never touches the shared Redis on 6379: it starts its own redis-server on a free
# port (--save '' --appendonly no) and stops it at the end.
#
# Usage:  loadtest/reserve-cost.sh
#         RESERVE_LUA="/tmp/old.lua services/core/src/scripts/reserve.lua" loadtest/reserve-cost.sh
#           (compares several versions of the script, interleaved in the same run)
#
# Environment (defaults in brackets):
#   RESERVE_LUA      space-separated reserve.lua files to measure    [services/core/src/scripts/reserve.lua]
#   RUNS             runs of each measurement                        [3]
#   BENCH_REQUESTS   calls per measurement (-n)                      [200000]
#   BENCH_CLIENTS    redis-benchmark connections (-c)                [50]
#   BENCH_PIPELINE   redis-benchmark pipeline depth (-P)             [1]
#   FILL             reservations recorded in the big sale first     [1000000]
#   LIMIT            the sales' per-user limit (0 = none)            [0]
#   WINDOW           1: the sales opened an hour ago and close in a day; 0: no window [0]
#   FLOOR            1: every call sends the floor 1.1, the position the probe left, as
#                    the API sends the highest position it saw; 0: "0" "0", no floor [0]
#   (The defaults are those of reserve-ceiling.sh Part A; LIMIT=5 WINDOW=1 FLOOR=1 is a
#   sale as the API runs it, where the script has more to compare.)
#   IDEM=1           every call sends an Idempotency-Key too (else "") [0]
#   REDIS_NICE       niceness of the private redis-server (e.g. -10, needs root): on a
#                    box busy with other work, fewer preemptions land inside a call [unset]
#   CALLGRIND=1      run the private redis-server under valgrind's callgrind and also
#                    count the instructions Redis executes per call (client I/O
#                    included): the same on a busy box as on an idle one, so it compares
#                    two scripts where µs cannot. About 50 times slower: use it with
#                    BENCH_REQUESTS=10000 and a smaller FILL.
#   KEEP_TMP=1       keep the temporary directory (logs) after the run
#
# Exit codes: 0 measured; 1 a step failed (redis-server, a probe call, redis-benchmark,
# or a run that did not take fresh reservations); 2 bad environment.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPTS="$ROOT/services/core/src/scripts"
# shellcheck source=lib.sh
source "$ROOT/loadtest/lib.sh"

RESERVE_LUA=${RESERVE_LUA:-$SCRIPTS/reserve.lua}
RUNS=${RUNS:-3}
BENCH_REQUESTS=${BENCH_REQUESTS:-200000}
BENCH_CLIENTS=${BENCH_CLIENTS:-50}
BENCH_PIPELINE=${BENCH_PIPELINE:-1}
FILL=${FILL:-1000000}
LIMIT=${LIMIT:-0}
IDEM=${IDEM:-0}
WINDOW=${WINDOW:-0}
FLOOR=${FLOOR:-0}
STARTS_AT=0 ENDS_AT=0
if [[ $WINDOW == 1 ]]; then
  STARTS_AT=$(( $(date +%s) * 1000 - 3600000 )) ENDS_AT=$(( $(date +%s) * 1000 + 86400000 ))
fi
STOCK=1000000000000

# Not lib.sh's need: a missing tool is a bad environment, exit 2 (see the header).
need() { command -v "$1" >/dev/null 2>&1 || { echo "reserve-cost: $1 is not installed" >&2; exit 2; }; }
need redis-server; need redis-cli; need redis-benchmark; need python3
CALLGRIND=${CALLGRIND:-0}
if [[ $CALLGRIND == 1 ]]; then need valgrind; need callgrind_control; need callgrind_annotate; fi
for f in $RESERVE_LUA; do [[ -r $f ]] || { echo "reserve-cost: cannot read $f" >&2; exit 2; }; done
[[ $RUNS =~ ^[1-9][0-9]*$ && $BENCH_REQUESTS =~ ^[1-9][0-9]*$ && $FILL =~ ^[0-9]+$ ]] \
  || { echo "reserve-cost: RUNS, BENCH_REQUESTS and FILL must be integers" >&2; exit 2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/yoink-cost.XXXXXX")
REDIS_PID=""
cleanup() {
  local rc=$?
  set +e
  if [[ -n $REDIS_PID ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill "$REDIS_PID" 2>/dev/null
    wait "$REDIS_PID" 2>/dev/null
  fi
  if [[ $rc != 0 ]]; then
    for f in "$TMP"/*.log; do
      [[ -s $f ]] || continue
      echo "---- last lines of $f" >&2
      tail -n 20 "$f" >&2
    done
  fi
  if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "reserve-cost: logs kept in $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

REDIS_PORT=$(free_port)
log "starting private redis-server on 127.0.0.1:$REDIS_PORT"
NICE_CMD=()
[[ -n ${REDIS_NICE:-} ]] && NICE_CMD=(nice -n "$REDIS_NICE")
# Under callgrind, nothing is counted until a measurement switches it on.
[[ $CALLGRIND == 1 ]] && NICE_CMD+=(valgrind --tool=callgrind --instr-atstart=no
  "--callgrind-out-file=$TMP/callgrind.out.%p" "--log-file=$TMP/valgrind.log")
"${NICE_CMD[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  --protected-mode yes --daemonize no --dir "$TMP" --logfile "$TMP/redis.log" &
REDIS_PID=$!
RCLI=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
for _ in $(seq 300); do
  [[ $("${RCLI[@]}" PING 2>/dev/null) == PONG ]] && break
  kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited"
  sleep 0.1
done
[[ $("${RCLI[@]}" PING 2>/dev/null) == PONG ]] || die "redis-server did not answer"

# The minimal reference: stock, a per-buyer limit, the writes and a 4-field event, no
# window, no idempotency, no position, no record.
MINIMAL_LUA='local limit = tonumber(redis.call("HGET", KEYS[1], "limit"))
local stock = tonumber(redis.call("GET", KEYS[2]) or "0")
if stock < 1 then return redis.error_reply("SOLD_OUT") end
local held = redis.call("HINCRBY", KEYS[3], ARGV[2], 1)
if limit > 0 and held > limit then return redis.error_reply("LIMIT_EXCEEDED") end
redis.call("DECRBY", KEYS[2], 1)
return redis.call("XADD", KEYS[4], "*", "type", "reserved", "reservation_id", ARGV[1],
  "user_id", ARGV[2], "quantity", "1", "sale_id", ARGV[3])'
# (That is 5 fields: the brief's "4 fields" plus the type; close enough to be the floor.)

sale_keys() { # sale id -> the seven KEYS of reserve.lua
  local p="{sale:$1}"
  echo "$p:meta $p:stock $p:buyers $p:idem $p:reservations $p:events $p:holds"
}
# Creates a sale and reserves one unit of it by hand with the script: the call must
# reserve (or the benchmark would time errors), and the sale is then at position 1.1,
# the floor the measured calls send with FLOOR=1.
new_sale() { # sale id, sha of reserve.lua
  local k probe
  read -r -a k <<<"$(sale_keys "$1")"
  [[ $("${RCLI[@]}" EVAL "$(cat "$SCRIPTS/create_sale.lua")" 2 "${k[0]}" "${k[1]}" \
    "$STOCK" "$LIMIT" "$STARTS_AT" "$ENDS_AT" 0 0) == 1 ]] || die "create_sale.lua did not create $1"
  probe=$("${RCLI[@]}" EVALSHA "$2" 7 "${k[@]}" 01900000-0000-7000-8000-000000000000 "$1" \
    probe-user 1 "" 0 0)
  [[ $(head -n1 <<<"$probe") == reserved ]] || die "probe EVALSHA on $1 did not reserve: $probe"
}

# redis-benchmark replaces every __rand_int__ with a random 12-digit number (about 2^31
# distinct values), so the reservation id takes two of them (36 characters like a UUID;
# the script never parses it) and the user one: each call is a fresh reservation of a
# (nearly always) new user.
bench() { # log name, -n, sha, keys...(7), then the sale id
  local name=$1 n=$2 sha=$3
  shift 3
  local keys=("${@:1:7}") sale=$8
  local idem=""
  [[ $IDEM == 1 ]] && idem="k-__rand_int__"
  redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n "$n" -c "$BENCH_CLIENTS" \
    -P "$BENCH_PIPELINE" -r 100000000000 --csv \
    EVALSHA "$sha" 7 "${keys[@]}" 0__rand_int__-7000-8000-__rand_int__ "$sale" \
    u-__rand_int__ 1 "$idem" "$FLOOR" "$FLOOR" >"$TMP/$name.csv" 2>"$TMP/$name.log" \
    || die "redis-benchmark failed ($name)"
}

# Prints "evalsha_usec_per_call" and then one line per command the scripts ran:
# "name calls_per_script usec_per_script" (after CONFIG RESETSTAT, one script measured).
commandstats() {
  "${RCLI[@]}" INFO commandstats | tr -d '\r' | python3 -c '
import re, sys
stats = {}
for line in sys.stdin:
    m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+),usec_per_call=([0-9.]+)", line)
    if m:
        stats[m.group(1)] = (int(m.group(2)), int(m.group(3)))
calls, usec = stats.get("evalsha", (0, 0))
if calls == 0:
    sys.exit("no EVALSHA calls counted")
print("%.3f" % (usec / calls))
inner = 0.0
for name, (c, u) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
    if name == "evalsha" or name.startswith(("config", "info")):
        continue
    inner += u / calls
    print("%s %.2f %.3f" % (name, c / calls, u / calls))
print("(lua+rest) - %.3f" % (usec / calls - inner))
'
}

# Redis CPU seconds so far (user + sys, all threads). Unlike usec_per_call it leaves out
# the time Redis waited for a core, so it moves less when the box is busy.
redis_cpu() { "${RCLI[@]}" INFO cpu | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.3f", s }'; }

measure() { # label, sha, sale id -> appends "label usec" to results; prints the breakdown
  local label=$1 sha=$2 sale=$3 k before after out c0 c1 cpu
  read -r -a k <<<"$(sale_keys "$sale")"
  before=$("${RCLI[@]}" HGET "${k[0]}" seq)
  "${RCLI[@]}" CONFIG RESETSTAT >/dev/null
  c0=$(redis_cpu)
  if [[ $CALLGRIND == 1 ]]; then
    callgrind_control -z "$REDIS_PID" >/dev/null && callgrind_control -i on "$REDIS_PID" >/dev/null \
      || die "callgrind_control failed"
  fi
  bench "$label" "$BENCH_REQUESTS" "$sha" "${k[@]}" "$sale"
  c1=$(redis_cpu)
  local instr=""
  if [[ $CALLGRIND == 1 ]]; then
    callgrind_control -i off "$REDIS_PID" >/dev/null && callgrind_control -d "$REDIS_PID" >/dev/null \
      || die "callgrind_control failed"
    local dump
    dump=$(ls -t "$TMP"/callgrind.out.*.* | head -n1)
    instr=$(callgrind_annotate "$dump" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
    [[ -n $instr ]] || die "no instruction count in $dump"
    instr=$(awk -v i="$instr" -v n="$BENCH_REQUESTS" 'BEGIN { printf "%.0f", i / n }')
    echo "$label $instr" >>"$TMP/instr"
    rm -f "$dump"
  fi
  out=$(commandstats) || die "no commandstats for $label"
  after=$("${RCLI[@]}" HGET "${k[0]}" seq)
  local errors
  errors=$("${RCLI[@]}" INFO errorstats | grep -c '^errorstat_' || true)
  [[ $errors == 0 ]] || die "$label: errors during the run: $("${RCLI[@]}" INFO errorstats | tr -d '\r' | grep '^errorstat_')"
  if [[ -n $before ]]; then # reserve.lua: every call must have been a fresh reservation
    [[ $((after - before)) -gt $((BENCH_REQUESTS * 99 / 100)) ]] \
      || die "$label: only $((after - before)) of $BENCH_REQUESTS calls reserved"
  fi
  local usec
  usec=$(head -n1 <<<"$out")
  cpu=$(awk -v a="$c0" -v b="$c1" -v n="$BENCH_REQUESTS" 'BEGIN { printf "%.3f", (b - a) * 1e6 / n }')
  echo "$label $usec" >>"$TMP/results"
  echo "$label $cpu" >>"$TMP/cpu"
  printf '%-44s %8s µs/call inside Redis   (Redis CPU %s µs per call, network included%s)\n' \
    "$label" "$usec" "$cpu" "${instr:+; $instr instructions per call}"
  tail -n +2 <<<"$out" | awk '{ printf "      %-14s %5s calls  %7s µs\n", $1, $2, $3 }'
}

# ---------------------------------------------------------------- set up
MIN_SHA=$("${RCLI[@]}" SCRIPT LOAD "$MINIMAL_LUA")
[[ $MIN_SHA =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD of the minimal script answered '$MIN_SHA'"
SHAS=()
i=0
for f in $RESERVE_LUA; do
  sha=$("${RCLI[@]}" SCRIPT LOAD "$(cat "$f")")
  [[ $sha =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD of $f answered '$sha'"
  SHAS+=("$sha")
  # The big sale: FILL reservations recorded with this very script.
  new_sale "big$i" "$sha"
  if [[ $FILL -gt 0 ]]; then
    log "filling sale big$i with $FILL reservations ($f)"
    read -r -a k <<<"$(sale_keys "big$i")"
    old_pipeline=$BENCH_PIPELINE
    BENCH_PIPELINE=32
    bench "fill$i" "$FILL" "$sha" "${k[@]}" "big$i"
    BENCH_PIPELINE=$old_pipeline
    log "sale big$i: $("${RCLI[@]}" HLEN "${k[4]}") reservations, $("${RCLI[@]}" XLEN "${k[5]}") events"
  fi
  i=$((i + 1))
done
{
  read -r -a k <<<"$(sale_keys minimal)"
  "${RCLI[@]}" HSET "${k[0]}" limit 0 >/dev/null
  "${RCLI[@]}" SET "${k[1]}" "$STOCK" >/dev/null
}
log "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- runs
for run in $(seq "$RUNS"); do
  echo "---- run $run of $RUNS"
  i=0
  for f in $RESERVE_LUA; do
    name=$(basename "$f")
    [[ $(wc -w <<<"$RESERVE_LUA") -gt 1 ]] && name="$i:$name"
    new_sale "empty$i-$run" "${SHAS[$i]}"
    measure "$name empty-sale" "${SHAS[$i]}" "empty$i-$run"
    measure "$name 1M-sale" "${SHAS[$i]}" "big$i"
    i=$((i + 1))
  done
  measure "minimal" "$MIN_SHA" minimal
done

# ---------------------------------------------------------------- summary
echo
echo "==================== reserve.lua cost (median of $RUNS runs, µs per call inside Redis) ===================="
python3 - "$TMP/results" "$TMP/cpu" "$TMP/instr" <<'EOF'
import os, statistics, sys
def read(path):
    rows = {}
    for line in open(path):
        label, usec = line.rsplit(" ", 1)
        rows.setdefault(label, []).append(float(usec))
    return rows
tables = [("inside Redis (usec_per_call)", "µs", read(sys.argv[1])),
          ("Redis CPU per call, network included", "µs", read(sys.argv[2]))]
if os.path.exists(sys.argv[3]):
    tables.append(("instructions Redis executed per call (callgrind, network included)", "",
                   read(sys.argv[3])))
for title, unit, rows in tables:
    print(title)
    minimal = statistics.median(rows["minimal"])
    for label, values in rows.items():
        m = statistics.median(values)
        print("  %-42s %9.2f %s  (runs: %s)  %.2fx minimal" % (
            label, m, unit, " ".join("%.2f" % v for v in values), m / minimal))
EOF
echo "settings: -n $BENCH_REQUESTS -c $BENCH_CLIENTS -P $BENCH_PIPELINE, fill $FILL, limit $LIMIT, window $WINDOW, floor $FLOOR, idempotency key: $([[ $IDEM == 1 ]] && echo yes || echo no)"
echo "machine: nproc=$(nproc)  load average now: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the box skews every figure)"
