#!/usr/bin/env bash
# sold-out.sh: what the sold-out fast path buys, measured in one run.
#
# Three loads through POST /buy, each a fresh user per request (loadtest/buy.lua), the
# same wrk settings, RUNS rounds, medians printed:
#   open    a sale with 10^12 units: every buy runs the reserve script and gets 202;
#   before  a sold-out sale on a `yoink serve --sold-out-recheck-ms 0`: every buy still
#           runs the script to hear 409 (the behaviour before the fast path);
#   after   the same sold-out sale on a `yoink serve` with the default window: buys are
#           answered 409 from the instance's memory of Redis's last sold_out (at most one
#           script call per window).
# Then the ratios after/open (the issue's target: >= 2) and after/before.
#
# It never touches the shared Redis on 6379: its own redis-server on a free port. Its
# PostgreSQL database yoink_soldout_<pid> lives on PGHOST:PGPORT and is dropped at exit.
#
# Usage:  loadtest/sold-out.sh
#         SKIP_BUILD=1 RUNS=1 DURATION=5s loadtest/sold-out.sh
#
# Environment (defaults in brackets):
#   RUNS          rounds of the three loads                     [3]
#   DURATION      each measured wrk run                         [10s]
#   WARMUP        wrk warm-up before each round's loads         [2s]
#   CONNECTIONS   wrk connections                               [1000]
#   YOINK_BIN / SKIP_BUILD   as in reserve-ceiling.sh (lib.sh)
#   PGHOST PGPORT PGUSER     [127.0.0.1 5432 postgres]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/loadtest/lib.sh"

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-1000}

need redis-server; need redis-cli; need wrk; need curl; need psql; need python3

private_run sold-out

resolve_yoink

log "starting a private redis-server"
private_stores "soldout:"
"$YOINK" sale create --id open --stock 1000000000000 >"$TMP/sale.log" 2>&1 || die "sale open"
"$YOINK" sale create --id gone --stock 1 >>"$TMP/sale.log" 2>&1 || die "sale gone"

PORT_BEFORE=$(free_port)
PORT_AFTER=$(free_port)
log "yoink serve --sold-out-recheck-ms 0 on $PORT_BEFORE, default window on $PORT_AFTER"
serve_on "$PORT_BEFORE" "$TMP/serve-before.log" --sold-out-recheck-ms 0
serve_on "$PORT_AFTER" "$TMP/serve-after.log"

code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$PORT_AFTER/buy" \
  -H 'Content-Type: application/json' -d '{"sale_id":"gone","user_id":"the-one","quantity":1}')
[[ $code == 202 ]] || die "the only unit of sale gone: $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$PORT_BEFORE/buy" \
  -H 'Content-Type: application/json' -d '{"sale_id":"gone","user_id":"late","quantity":1}')
[[ $code == 409 ]] || die "sale gone should be sold out: $code"

WRK=(wrk -t1 -c"$CONNECTIONS" --timeout 5s --latency -s "$ROOT/loadtest/buy.lua")
# measure NAME SALE PORT: one wrk run; appends "rps p99" to $TMP/NAME.txt.
measure() {
  local name=$1 sale=$2 port=$3 out
  out=$(SALE_ID=$sale "${WRK[@]}" -d"$DURATION" "http://127.0.0.1:$port" 2>&1) || die "wrk $name: $out"
  local line
  line=$(grep '^YOINK_WRK ' <<<"$out" | tail -n1)
  [[ -n $line ]] || die "wrk $name printed no YOINK_WRK line"
  local rps p99
  rps=$(sed -n 's/.* rps=\([^ ]*\).*/\1/p' <<<"$line")
  p99=$(sed -n 's/.* p99_ms=\([^ ]*\).*/\1/p' <<<"$line")
  echo "$rps $p99" >>"$TMP/$name.txt"
  printf '  %-7s %10s req/s  p99 %8s ms\n' "$name" "$rps" "$p99"
}

calls() { "${RCLI[@]}" INFO commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p'; }
for round in $(seq "$RUNS"); do
  echo "round $round of $RUNS (wrk -t1 -c$CONNECTIONS -d$DURATION, fresh user per request)"
  SALE_ID=open "${WRK[@]}" -d"$WARMUP" "http://127.0.0.1:$PORT_AFTER" >/dev/null 2>&1 || true
  measure open open "$PORT_AFTER"
  c0=$(calls)
  measure before gone "$PORT_BEFORE"
  c1=$(calls)
  measure after gone "$PORT_AFTER"
  c2=$(calls)
  echo "  script calls: before $((c1 - c0)), after $((c2 - c1))"
done

OPEN=$(col open 1) BEFORE=$(col before 1) AFTER=$(col after 1)
echo
echo "==================== sold-out fast path (medians of $RUNS) ===================="
printf '%-40s %10s req/s  p99 %s ms\n' "open sale (202, script per buy)" "$OPEN" "$(col open 2)"
printf '%-40s %10s req/s  p99 %s ms\n' "sold out, before (script per buy)" "$BEFORE" "$(col before 2)"
printf '%-40s %10s req/s  p99 %s ms\n' "sold out, after (fast path)" "$AFTER" "$(col after 2)"
printf '%-40s %s\n' "after / open (target >= 2)" "$(ratio "$AFTER" "$OPEN")"
printf '%-40s %s\n' "after / before" "$(ratio "$AFTER" "$BEFORE")"
printf '%-40s %s\n' "before / open" "$(ratio "$BEFORE" "$OPEN")"
printf '%-40s %s\n' "machine" "nproc=$(nproc)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
printf '%-40s %s\n' "load average" "$(cut -d' ' -f1-3 /proc/loadavg)"
echo "==============================================================================="
