#!/usr/bin/env bash
# Runs every test of Yoink against real Redis and PostgreSQL (started, or installed,
# when missing): the observability and compose checks, a k6 smoke of the whole
# pipeline, schemathesis fuzzing of the API, then every cargo test (last, so its
# summary closes the output).
set -euo pipefail
cd "$(dirname "$0")/.."
YOINK_NEED="k6 st promtool docker-compose pyyaml prometheus prometheus-redis-exporter prometheus-postgres-exporter" scripts/ensure-services.sh

echo "== observability: Prometheus config, alert rules and their unit tests, dashboards"
observability/check.sh

echo "== compose: docker-compose config"
docker-compose -f compose/docker-compose.yml config -q
docker-compose -f compose/docker-compose.yml --profile loadtest config -q

echo "== smoke: k6 against yoink serve + yoink project"
cargo build -p yoink
loadtest/smoke.sh

echo "== fuzz: schemathesis against yoink serve, from services/api/openapi.yaml"
scripts/fuzz-api.sh
# The fuzzer's cache holds this machine's paths: it stays in the sandbox, never here.
if [ -e .schemathesis ] || [ -n "$(git ls-files .schemathesis 2>/dev/null)" ]; then
  echo "test.sh: .schemathesis/ appeared in the repository (run the fuzzer from its sandbox)" >&2
  exit 1
fi

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace "$@" 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one summary per test binary, the
# last of which is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { if (p == 0) { print "cargo test: no test ran" > "/dev/stderr"; exit 1 }
           printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
