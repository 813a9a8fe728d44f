#!/usr/bin/env bash
# A dev box serving for real: build Yoink, start the API and a projector on the local
# Redis and PostgreSQL, create a sale, buy with curl, watch the reservation become an
# order, reconcile the two stores, then keep serving (Ctrl-C stops everything).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
cargo build --release -p yoink
bin=target/release/yoink

export YOINK_LISTEN=${YOINK_LISTEN:-127.0.0.1:8080}
export YOINK_ADMIN_TOKEN=${YOINK_ADMIN_TOKEN:-dev-admin-token}
sale=${SALE_ID:-demo-$(date +%s)}

"$bin" migrate
"$bin" serve --no-migrate &
api=$!
"$bin" project --metrics-listen "${YOINK_PROJECTOR_METRICS_LISTEN:-127.0.0.1:9101}" &
projector=$!
trap 'kill $api $projector 2>/dev/null; wait $api $projector 2>/dev/null' EXIT INT TERM
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
echo "== the reservation, once the projector has written its order"
for _ in $(seq 1 50); do
  status=$(curl -s "http://$YOINK_LISTEN/reservations/$id")
  case "$status" in *'"confirmed"'*) break ;; esac
  sleep 0.1
done
echo "$status"
echo "== the sale"
curl -s "http://$YOINK_LISTEN/sales/$sale"
echo
echo "== reconcile Redis against PostgreSQL"
"$bin" reconcile --sale "$sale" --grace 1 || true
echo "API on http://$YOINK_LISTEN (metrics on /metrics), projector metrics on :9101; Ctrl-C stops."
wait $api
