#!/usr/bin/env bash
# metrics-cost.sh: what recording metrics costs POST /buy, measured in one run.
#
# Two `yoink serve` processes on the same stores, the same binary and flags but one:
#   on    the default: the Prometheus recorder installed, every request counted (route,
#         status, latency histogram, reservation outcome by sale, in-flight gauge);
#   off   `--metrics off`: no recorder, every metric call a no-op.
# (Both with --metrics-listen off: the API's own /metrics is enough here.)
# Two loads through each, each a fresh user per request (loadtest/buy.lua), the same wrk
# settings, RUNS rounds alternating which process goes first, medians printed:
#   open      a sale with 10^12 units: every buy runs the reserve script and gets 202;
#   sold-out  a sold-out sale: buys answered 409 from the instance's memory (no Redis
#             call), the cheapest buy there is, so metrics weigh the most there.
# Then the ratios on/off per load (1.00: metrics cost nothing measurable).
#
# It never touches the shared Redis on 6379: its own redis-server on a free port. Its
# PostgreSQL database yoink_metricscost_<pid> lives on PGHOST:PGPORT and is dropped at
# exit. Before measuring it checks that `off` really records nothing (an empty
# /metrics) and `on` does.
#
# Usage:  loadtest/metrics-cost.sh
#         SKIP_BUILD=1 RUNS=1 DURATION=5s loadtest/metrics-cost.sh
#
# Environment (defaults in brackets):
#   RUNS          rounds of the four loads                      [3]
#   DURATION      each measured wrk run                         [10s]
#   WARMUP        wrk warm-up of each process before each round [2s]
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

private_run metrics-cost

resolve_yoink

log "starting a private redis-server"
private_stores "metricscost:"
"$YOINK" sale create --id open --stock 1000000000000 >"$TMP/sale.log" 2>&1 || die "sale open"
"$YOINK" sale create --id gone --stock 1 >>"$TMP/sale.log" 2>&1 || die "sale gone"

PORT_ON=$(free_port)
PORT_OFF=$(free_port)
log "yoink serve (metrics on) on $PORT_ON, yoink serve --metrics off on $PORT_OFF"
serve_on "$PORT_ON" "$TMP/serve-on.log"
serve_on "$PORT_OFF" "$TMP/serve-off.log" --metrics off

buy() { # buy PORT SALE USER: prints the status
  curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$1/buy" \
    -H 'Content-Type: application/json' -d "{\"sale_id\":\"$2\",\"user_id\":\"$3\",\"quantity\":1}"
}
code=$(buy "$PORT_ON" gone the-one)
[[ $code == 202 ]] || die "the only unit of sale gone: $code"
for port in "$PORT_ON" "$PORT_OFF"; do
  code=$(buy "$port" gone "late-$port")
  [[ $code == 409 ]] || die "sale gone should be sold out on $port: $code"
done
curl -s "http://127.0.0.1:$PORT_ON/metrics" | grep -q '^yoink_reservations_total{outcome="sold_out",sale="gone"} [1-9]' \
  || die "metrics on: /metrics does not count the sold-out buy of sale gone"
[[ -z $(curl -s "http://127.0.0.1:$PORT_OFF/metrics") ]] \
  || die "metrics off: /metrics is not empty (was the recorder installed anyway?)"

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
  printf '  %-13s %10s req/s  p99 %8s ms\n' "$name" "$rps" "$p99"
}

for round in $(seq "$RUNS"); do
  echo "round $round of $RUNS (wrk -t1 -c$CONNECTIONS -d$DURATION, fresh user per request)"
  order=(on off)
  (( round % 2 == 0 )) && order=(off on)
  for mode in "${order[@]}"; do
    port=$PORT_ON
    [[ $mode == off ]] && port=$PORT_OFF
    SALE_ID=open "${WRK[@]}" -d"$WARMUP" "http://127.0.0.1:$port" >/dev/null 2>&1 || true
    measure "open-$mode" open "$port"
    measure "soldout-$mode" gone "$port"
  done
done

echo
echo "==================== metrics cost on POST /buy (medians of $RUNS) ===================="
for load in open soldout; do
  printf '%-34s %10s req/s  p99 %s ms\n' "$load, metrics on" "$(col "$load-on" 1)" "$(col "$load-on" 2)"
  printf '%-34s %10s req/s  p99 %s ms\n' "$load, metrics off" "$(col "$load-off" 1)" "$(col "$load-off" 2)"
  printf '%-34s %s\n' "$load: on / off (req/s)" "$(ratio "$(col "$load-on" 1)" "$(col "$load-off" 1)" 3)"
done
printf '%-34s %s\n' "machine" "nproc=$(nproc)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
printf '%-34s %s\n' "load average" "$(cut -d' ' -f1-3 /proc/loadavg)"
echo "======================================================================================"
