#!/usr/bin/env bash
# The main job on a dev box: build Yoink, start the API on the local Redis and
# PostgreSQL, create a sale, make one purchase with curl, then keep serving (Ctrl-C stops).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
cargo build --release -p yoink
bin=target/release/yoink

export YOINK_LISTEN=${YOINK_LISTEN:-127.0.0.1:8080}
export YOINK_ADMIN_TOKEN=${YOINK_ADMIN_TOKEN:-dev-admin-token}
sale=${SALE_ID:-demo-$(date +%s)}

"$bin" migrate
"$bin" serve &
api=$!
trap 'kill $api 2>/dev/null; wait $api 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 100); do curl -sf "http://$YOINK_LISTEN/readyz" >/dev/null && break; sleep 0.1; done

echo "== create sale $sale (100 units, 2 per buyer)"
curl -s -X POST "http://$YOINK_LISTEN/sales" -H "Authorization: Bearer $YOINK_ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d "{\"sale_id\":\"$sale\",\"stock\":100,\"limit_per_user\":2}"
echo
echo "== buy one unit"
reply=$(curl -s -X POST "http://$YOINK_LISTEN/buy" -H 'Content-Type: application/json' \
  -H "Idempotency-Key: demo-$sale" -d "{\"sale_id\":\"$sale\",\"user_id\":\"alice\",\"quantity\":1}")
echo "$reply"
id=$(printf '%s' "$reply" | sed -n 's/.*"reservation_id":"\([^"]*\)".*/\1/p')
echo "== the reservation"
curl -s "http://$YOINK_LISTEN/reservations/$id"
echo
echo "== the sale"
curl -s "http://$YOINK_LISTEN/sales/$sale"
echo
echo "API on http://$YOINK_LISTEN (metrics on /metrics); Ctrl-C stops it."
wait $api
