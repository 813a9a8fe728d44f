#!/usr/bin/env bash
# check.sh: offline validation of everything in observability/ (for CI).
#
#   observability/check.sh          exit 0 when every check passes, 1 otherwise
#
# Needs promtool (Debian package prometheus) and python3; no network, no running
# Prometheus or Grafana. Checks:
#   1. promtool check config  prometheus.yml and prometheus.local.yml (also loads alerts.yml)
#   2. the two Prometheus files differ only in their targets and comments
#   3. promtool check rules   alerts.yml
#   4. promtool test rules    alerts.test.yml
#   5. every dashboard JSON parses (python3 -m json.tool), has a uid and panels, and
#      every PromQL query in it parses (promtool check rules on a generated rule file)
#   6. the Grafana provisioning YAML files parse (promtool has no check for them; a
#      YAML parse via python3 when PyYAML is there, else a non-empty check)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE"

command -v promtool >/dev/null || { echo "check.sh: promtool not found (apt-get install prometheus)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "check.sh: python3 not found" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failed=0
step() { printf '\n== %s\n' "$*"; }
run() { # run a check; remember a failure and go on, so one CI log shows them all
  if "$@"; then echo "   ok"; else echo "   FAILED: $*" >&2; failed=1; fi
}

step "promtool check config"
run promtool check config prometheus.yml
run promtool check config prometheus.local.yml

step "prometheus.yml and prometheus.local.yml differ only in targets"
strip() { sed -e 's/#.*//' -e '/targets:/d' -e '/^[[:space:]]*$/d' "$1"; }
run diff <(strip prometheus.yml) <(strip prometheus.local.yml)

step "promtool check rules"
run promtool check rules alerts.yml

step "promtool test rules"
run promtool test rules alerts.test.yml

step "Grafana dashboards: JSON and PromQL"
shopt -s nullglob
dashboards=(grafana/dashboards/*.json)
if [[ ${#dashboards[@]} == 0 ]]; then
  echo "   FAILED: no dashboards in grafana/dashboards" >&2
  failed=1
fi
for d in "${dashboards[@]}"; do
  run python3 -m json.tool "$d" /dev/null
  # Grafana variables are not PromQL: give them plain values, then let promtool parse
  # each query as a recording rule.
  if python3 - "$d" "$TMP/$(basename "$d" .json).rules.yml" <<'PY'; then
import json, sys
src, out = sys.argv[1], sys.argv[2]
dash = json.load(open(src))
problems = []
for key in ("uid", "title", "panels"):
    if not dash.get(key):
        problems.append(f"dashboard has no {key}")
exprs = []
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append((p.get("title", "?"), t["expr"]))
walk(dash.get("panels", []))
if not exprs:
    problems.append("no PromQL queries found")
subs = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$sale": ".*", "${sale}": ".*"}
with open(out, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, e) in enumerate(exprs):
        for k, v in subs.items():
            e = e.replace(k, v)
        if "$" in e:
            problems.append(f"panel {title!r}: unknown variable in {e!r}")
        f.write(f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}\n")
for p in problems:
    print("   " + p, file=sys.stderr)
print(f"   {len(exprs)} queries in {src}")
sys.exit(1 if problems else 0)
PY
    run promtool check rules "$TMP/$(basename "$d" .json).rules.yml"
  else
    echo "   FAILED: $d" >&2
    failed=1
  fi
done

step "Grafana provisioning YAML"
for y in grafana/provisioning/*/*.yml; do
  if python3 -c 'import yaml' 2>/dev/null; then
    run python3 -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); assert d and d.get("apiVersion") == 1, "no apiVersion: 1"' "$y"
  else
    run test -s "$y"
  fi
done

echo
if [[ $failed != 0 ]]; then
  echo "observability/check.sh: FAILED" >&2
  exit 1
fi
echo "observability/check.sh: all checks passed"
