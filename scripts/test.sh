#!/usr/bin/env bash
# Runs every test of Yoink against real Redis and PostgreSQL (started, or installed,
# when missing): the observability and compose checks, a k6 smoke of the whole
# pipeline, then every cargo test (last, so its summary closes the output).
set -euo pipefail
cd "$(dirname "$0")/.."
YOINK_NEED="k6 promtool docker-compose pyyaml" scripts/ensure-services.sh

echo "== observability: Prometheus config, alert rules and their unit tests, dashboards"
observability/check.sh

echo "== compose: docker-compose config"
docker-compose -f compose/docker-compose.yml config -q
docker-compose -f compose/docker-compose.yml --profile loadtest config -q

echo "== smoke: k6 against yoink serve + yoink project"
cargo build -p yoink
loadtest/smoke.sh

echo "== cargo test"
cargo test --workspace "$@"
