#!/usr/bin/env bash
# redis-memory.sh: Redis bytes per reservation, as a published figure.
#
# One sale of RESERVATIONS units on a private redis-server, bought out through
# `yoink serve` by wrk (loadtest/buy.lua, a fresh buyer per request). Redis's
# used_memory above the empty server, divided by the reservations taken, at three
# moments:
#   in flight   sold out, nothing projected yet: every entry still in the stream;
#   projected   `yoink project` wrote every order and trimmed the stream (streams.md,
#               "What Redis keeps"): what a live sale costs once PostgreSQL has it;
#   archived    `yoink sale end`, then `yoink sale archive --yes`: the keys left under
#               the sale's hash tag (the target is 0) and the memory.
# Per reservation twice: the sale's own keys (MEMORY USAGE summed), and used_memory
# (which also holds the shared order-events stream the relay writes, and allocator pages).
# Each moment also lists MEMORY USAGE of the sale's largest keys.
#
# It never touches the shared Redis on 6379. Its database yoink_redismem_<pid> lives on
# PGHOST:PGPORT and is dropped at exit.
#
# Usage:  loadtest/redis-memory.sh
#         SKIP_BUILD=1 RESERVATIONS=50000 loadtest/redis-memory.sh
#
# Environment (defaults in brackets):
#   RESERVATIONS  units of the sale, all bought                 [200000]
#   CONNECTIONS   wrk connections                               [500]
#   YOINK_BIN / SKIP_BUILD   as in reserve-ceiling.sh (lib.sh)
#   PGHOST PGPORT PGUSER     [127.0.0.1 5432 postgres]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/loadtest/lib.sh"

RESERVATIONS=${RESERVATIONS:-200000}
CONNECTIONS=${CONNECTIONS:-500}

need redis-server; need redis-cli; need wrk; need curl; need psql; need python3

private_run redis-memory
SALE=mem

resolve_yoink

log "a private redis-server, yoink serve"
private_stores "mem:"

used() { "${RCLI[@]}" INFO memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'; }
meta() { "${RCLI[@]}" HGET "${YOINK_KEY_PREFIX}{sale:$SALE}:meta" "$1"; }
tagged_keys() { "${RCLI[@]}" --scan --pattern "${YOINK_KEY_PREFIX}{sale:$SALE}*"; }
# largest_keys: MEMORY USAGE of every key under the sale's tag, largest first.
largest_keys() {
  local key
  for key in $(tagged_keys); do
    printf '%12s  %s\n' "$("${RCLI[@]}" MEMORY USAGE "$key" SAMPLES 0)" "$key"
  done | sort -rn | head -n 6
}
per_reservation() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.0f", (a - b) / n }'; }
# sale_bytes [SAMPLES]: MEMORY USAGE summed over every key under the sale's tag; exact
# (SAMPLES 0, every element walked) unless given Redis's default sample of 5, which is
# what reconcile --watch's yoink_sale_redis_memory_bytes reads.
sale_bytes() {
  local key total=0 samples=${1:-0}
  for key in $(tagged_keys); do
    total=$((total + $("${RCLI[@]}" MEMORY USAGE "$key" SAMPLES "$samples")))
  done
  echo "$total"
}
EVENTS_OUT="${YOINK_KEY_PREFIX}yoink:order-events"

BASELINE=$(used)
"$YOINK" sale create --id "$SALE" --stock "$RESERVATIONS" >"$TMP/sale.log" 2>&1 || die "sale create"
API_PORT=$(free_port)
serve_on "$API_PORT" "$TMP/serve.log"

log "buying out $RESERVATIONS units (wrk -c$CONNECTIONS, a fresh buyer per request)"
for _ in $(seq 60); do
  SALE_ID=$SALE wrk -t1 -c"$CONNECTIONS" -d5s --timeout 5s -s "$ROOT/loadtest/buy.lua" \
    "http://127.0.0.1:$API_PORT" >>"$TMP/wrk.log" 2>&1 || die "wrk failed"
  [[ $(meta reserved) -ge $RESERVATIONS ]] && break
done
TAKEN=$(meta reserved)
[[ $TAKEN -ge $RESERVATIONS ]] || die "only $TAKEN of $RESERVATIONS reserved"
STREAM="${YOINK_KEY_PREFIX}{sale:$SALE}:events"
IN_FLIGHT=$(used)
IN_FLIGHT_SALE=$(sale_bytes)
IN_FLIGHT_SAMPLED=$(sale_bytes 5)
IN_FLIGHT_LEN=$("${RCLI[@]}" XLEN "$STREAM")
IN_FLIGHT_KEYS=$(largest_keys)

log "yoink project: every order, then the stream trimmed"
# Trimming paced for a measurement (the defaults trim 10,000 entries every 5 s).
YOINK_TRIM_INTERVAL_MS=200 YOINK_TRIM_BATCH=50000 \
  "$YOINK" project --metrics-listen off >"$TMP/project.log" 2>&1 &
PIDS+=($!)
orders() { psql -X -At -d "$DB_NAME" -c "SELECT count(*) FROM orders WHERE sale_id = '$SALE'"; }
for _ in $(seq 600); do
  [[ $(orders) -ge $TAKEN && $("${RCLI[@]}" XLEN "$STREAM") -le 101 ]] && break
  sleep 0.5
done
[[ $(orders) -ge $TAKEN ]] || die "orders: $(orders) of $TAKEN after 300 s"
PROJECTED=$(used)
PROJECTED_SALE=$(sale_bytes)
PROJECTED_SAMPLED=$(sale_bytes 5)
ORDER_EVENTS_LEN=$("${RCLI[@]}" XLEN "$EVENTS_OUT")
ORDER_EVENTS_BYTES=$("${RCLI[@]}" MEMORY USAGE "$EVENTS_OUT" SAMPLES 0)
PROJECTED_LEN=$("${RCLI[@]}" XLEN "$STREAM")
PROJECTED_KEYS=$(largest_keys)

log "yoink sale end, yoink sale archive --yes"
"$YOINK" sale end --id "$SALE" >"$TMP/end.log" 2>&1 || die "yoink sale end: $(cat "$TMP/end.log")"
archived=0
for _ in $(seq 60); do
  if "$YOINK" sale archive --id "$SALE" --yes >"$TMP/archive.log" 2>&1; then
    archived=1
    break
  fi
  sleep 1
done
[[ $archived == 1 ]] || die "yoink sale archive refused for 60 s: $(cat "$TMP/archive.log")"
sleep 1 # UNLINK frees large values in the background
ARCHIVED=$(used)
ARCHIVED_KEYS=$(tagged_keys | wc -l)

echo
echo "==================== Redis memory per reservation ($TAKEN reservations, one sale) ===================="
echo "the sale's keys (MEMORY USAGE of every key under its tag), and Redis's used_memory above the empty server:"
printf '%-30s sale keys %10s B = %4s B/reservation   used_memory +%10s B = %4s B/reservation  (stream %s entries)\n' \
  "in flight (nothing projected)" "$IN_FLIGHT_SALE" "$(per_reservation "$IN_FLIGHT_SALE" 0 "$TAKEN")" \
  "$((IN_FLIGHT - BASELINE))" "$(per_reservation "$IN_FLIGHT" "$BASELINE" "$TAKEN")" "$IN_FLIGHT_LEN"
printf '%-30s sale keys %10s B = %4s B/reservation   used_memory +%10s B = %4s B/reservation  (stream %s entries)\n' \
  "projected and trimmed" "$PROJECTED_SALE" "$(per_reservation "$PROJECTED_SALE" 0 "$TAKEN")" \
  "$((PROJECTED - BASELINE))" "$(per_reservation "$PROJECTED" "$BASELINE" "$TAKEN")" "$PROJECTED_LEN"
printf '%-30s %s entries, %s B (shared by every sale; capped by --order-events-max-len)\n' \
  "  of which order events" "$ORDER_EVENTS_LEN" "$ORDER_EVENTS_BYTES"
printf '%-30s in flight %s B (%s of exact), projected and trimmed %s B (%s of exact)\n' \
  "sampled (yoink_sale_redis_memory_bytes)" "$IN_FLIGHT_SAMPLED" "$(ratio "$IN_FLIGHT_SAMPLED" "$IN_FLIGHT_SALE" 3)" \
  "$PROJECTED_SAMPLED" "$(ratio "$PROJECTED_SAMPLED" "$PROJECTED_SALE" 3)"
printf '%-30s %s keys under the sale tag; used_memory +%s B (the order events and allocator pages stay)\n' \
  "archived" "$ARCHIVED_KEYS" "$((ARCHIVED - BASELINE))"
echo "largest keys, in flight:"; echo "$IN_FLIGHT_KEYS"
echo "largest keys, projected and trimmed:"; echo "$PROJECTED_KEYS"
printf '%-34s %s\n' "target" "<= 400 bytes per reservation during a sale; 0 keys after archive"
printf '%-34s %s\n' "machine" "nproc=$(nproc)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "========================================================================================"
