#!/usr/bin/env bash
# vs-node.sh: POST /buy of Yoink against the case study's Node.js peer
# (../shared/peers/yoink-node, strategy v4: Lua + BullMQ, 202), the same wrk load on the
# same machine, RUNS alternating rounds, medians and the ratio.
#
# The load is the peer's own `wrk-happy.sh` shape: wrk -t2 -cCONNECTIONS -dDURATION, a
# fresh buyer per request, stock that never runs out. The peer is measured by its own
# script (copied to a temp dir, `npm ci` once); Yoink by `yoink serve` + `yoink project`
# on a private Redis and a database of its own, driven by loadtest/buy.lua with the same
# wrk flags. Each side prints req/s, p50, p99 and the server's RSS after the run.
#
# Usage:  loadtest/vs-node.sh
#         SKIP_BUILD=1 RUNS=1 DURATION=5 loadtest/vs-node.sh
#
# Environment (defaults in brackets):
#   RUNS          alternating rounds (peer, then Yoink)          [3]
#   DURATION      seconds of each wrk run                        [10]
#   CONNECTIONS   wrk connections                                [1000]
#   PEER_DIR      the peer's sources                             [../shared/peers/yoink-node]
#   WITH_PROJECTOR  1: a `yoink project` writes the orders to PostgreSQL during the
#                 run, as the peer's in-process worker does; 0: `yoink serve` alone,
#                 the orders wait in the stream                  [1]
#   YOINK_BIN / SKIP_BUILD   as in reserve-ceiling.sh (lib.sh)
#   PGHOST PGPORT PGUSER     [127.0.0.1 5432 postgres]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/loadtest/lib.sh"

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-1000}
PEER_DIR=${PEER_DIR:-$ROOT/../shared/peers/yoink-node}
WITH_PROJECTOR=${WITH_PROJECTOR:-1}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
export PGHOST PGPORT PGUSER

need redis-server; need redis-cli; need wrk; need curl; need psql; need node; need npm; need python3
[[ -f $PEER_DIR/wrk-happy.sh ]] || die "no peer at $PEER_DIR (set PEER_DIR)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/yoink-vs-node.XXXXXX")
PIDS=()
DB_NAME="yoink_vsnode_$$"
PEER_REDIS_PORT=$(free_port)

cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  redis-cli -p "$PEER_REDIS_PORT" shutdown nosave >/dev/null 2>&1
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS yoink_peer_vs WITH (FORCE)" >/dev/null 2>&1
  [[ $rc == 0 ]] || print_logs "$TMP"
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

resolve_yoink

log "the peer: copying $PEER_DIR and running npm ci"
cp -r "$PEER_DIR" "$TMP/peer"
rm -rf "$TMP/peer/node_modules"
(cd "$TMP/peer" && npm ci --no-audit --no-fund >"$TMP/npm.log" 2>&1) || die "npm ci failed"
psql -X -q -d postgres -c "CREATE DATABASE yoink_peer_vs" >/dev/null || die "createdb"

log "Yoink: private redis-server, yoink serve + yoink project"
start_private_redis "$TMP"
PIDS+=("$REDIS_PID")
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB_NAME"
export RUST_LOG=${RUST_LOG:-warn}
"$YOINK" migrate >"$TMP/migrate.log" 2>&1 || die "yoink migrate"
"$YOINK" sale create --id vs-node --stock 1000000000000 >"$TMP/sale.log" 2>&1 || die "sale"
API_PORT=$(free_port)
"$YOINK" serve --listen "127.0.0.1:$API_PORT" --metrics-listen off >"$TMP/serve.log" 2>&1 &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
PROJECT_PID=
if [[ $WITH_PROJECTOR == 1 ]]; then
  "$YOINK" project --metrics-listen off >"$TMP/project.log" 2>&1 &
  PROJECT_PID=$!
  PIDS+=("$PROJECT_PID")
fi
for _ in $(seq 300); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$API_PORT/readyz") == 200 ]] && break
  sleep 0.2
done
ulimit -n 65536 2>/dev/null || true

# field NAME LINE: the value of NAME=... in a line of key=value pairs.
field() { sed -n "s/.*[ ]$1=\([^ ]*\).*/\1/p" <<<" $2"; }
# ms WRK_VALUE: wrk's "12.34ms" / "1.20s" / "900.00us" in milliseconds.
ms() { python3 -c 'import sys,re
v=sys.argv[1]; m=re.match(r"([0-9.]+)(us|ms|s)$", v)
print("?" if not m else round(float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)], 2))' "$1"; }

# Where the machine's CPU goes during Yoink's run: clock ticks of each process
# (utime + stime in /proc/PID/stat), PostgreSQL as all of its processes, wrk through
# the shell's reaped-children times, idle from /proc/stat.
TICKS=$(getconf CLK_TCK)
ticks() { local t=0 pid; for pid in "$@"; do [[ -r /proc/$pid/stat ]] && t=$((t + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done; echo "$t"; }
pg_ticks() { ticks $(pgrep -u postgres 2>/dev/null); }
# `times` runs in this shell (a subshell would report its own children, none).
children_ticks() { awk -v hz="$TICKS" 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.0f", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * hz }' "$TMP/times"; }
idle_ticks() { awk '/^cpu / { print $5 + $6 }' /proc/stat; }
# Sets SNAP (called directly, never in $(...), for the same reason).
snapshot() { times >"$TMP/times"; SNAP="$(ticks "$SERVE_PID") $(ticks "$REDIS_PID") $(ticks $PROJECT_PID) $(pg_ticks) $(children_ticks) $(idle_ticks) $(date +%s.%N)"; }
# share BEFORE AFTER: each part as % of the machine (all cores) over the interval.
share() { python3 -c 'import sys,os
b=[float(x) for x in sys.argv[1].split()]; a=[float(x) for x in sys.argv[2].split()]
hz=float(sys.argv[3]); cores=os.cpu_count(); wall=a[6]-b[6]
d=[(a[i]-b[i])/hz/(wall*cores)*100 for i in range(6)]
print("serve %.0f%%, Redis %.0f%%, projector %.0f%%, PostgreSQL %.0f%%, wrk %.0f%%, idle %.0f%%, rest %.0f%% (of %d cores)" % (d[0], d[1], d[2], d[3], d[4], d[5], 100-sum(d), cores))' "$1" "$2" "$TICKS"; }

for round in $(seq "$RUNS"); do
  echo "round $round of $RUNS (wrk -t2 -c$CONNECTIONS -d${DURATION}s, a fresh buyer per request)"
  line=$(cd "$TMP/peer" && DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/yoink_peer_vs" \
    REDIS_PORT=$PEER_REDIS_PORT ./wrk-happy.sh v4 "$CONNECTIONS" "$DURATION" 2>"$TMP/peer.log" | tail -n1) \
    || die "the peer's wrk-happy.sh failed"
  p_rps=$(field rps "$line") p_p99=$(ms "$(field p99 "$line")") p_rss=$(field rss_mb "$line")
  echo "$p_rps $p_p99 $p_rss" >>"$TMP/peer.txt"
  printf '  %-6s %10s req/s  p99 %8s ms  RSS %5s MB  (%s)\n' peer "$p_rps" "$p_p99" "$p_rss" "$line"

  snapshot; before=$SNAP
  SALE_ID=vs-node wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$ROOT/loadtest/buy.lua" \
    "http://127.0.0.1:$API_PORT" >"$TMP/yoink-wrk.txt" 2>&1 || die "wrk against yoink failed"
  snapshot; cpu=$(share "$before" "$SNAP")
  y_line=$(grep '^YOINK_WRK ' "$TMP/yoink-wrk.txt" | tail -n1)
  y_rps=$(field rps "$y_line") y_p99=$(field p99_ms "$y_line")
  y_rss=$(awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$SERVE_PID/status")
  # Every buy has stock to take: anything but 202 means the figure is not /buy's work.
  [[ $(field non_2xx "$y_line") == 0 ]] || die "yoink answered non-2xx: $y_line"
  echo "$y_rps $y_p99 $y_rss" >>"$TMP/yoink.txt"
  printf '  %-6s %10s req/s  p99 %8s ms  RSS %5s MB  (non-2xx %s)\n' yoink "$y_rps" "$y_p99" "$y_rss" "$(field non_2xx "$y_line")"
  printf '         CPU during the run: %s\n' "$cpu"
done

echo
echo "==================== Yoink vs the Node peer (v4), medians of $RUNS (projector: $WITH_PROJECTOR) ===================="
printf '%-10s %10s req/s  p99 %8s ms  RSS %5s MB\n' "node v4" "$(col peer 1)" "$(col peer 2)" "$(col peer 3)"
printf '%-10s %10s req/s  p99 %8s ms  RSS %5s MB\n' "yoink" "$(col yoink 1)" "$(col yoink 2)" "$(col yoink 3)"
printf '%-30s %s\n' "req/s yoink / node (goal >= 10)" "$(ratio "$(col yoink 1)" "$(col peer 1)")"
printf '%-30s %s\n' "machine" "nproc=$(nproc)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
printf '%-30s %s\n' "load average" "$(cut -d' ' -f1-3 /proc/loadavg)"
echo "========================================================================================"
