#!/usr/bin/env bash
# The main job: a flash sale as a user sees it (`yoink demo`). 10,000 units, 1,000
# buyers at once, 50,000 buys through the real API; a live display, then the drain,
# a reconcile and the report. Exit 0 only if nothing was oversold or lost.
#
# It uses REDIS_URL / DATABASE_URL (default: this machine's Redis and PostgreSQL,
# started when missing) and falls back to private throwaway instances. Flags go to the
# demo: scripts/run.sh --stock 500 --buyers 100 --requests 5000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
cargo build --release -p yoink
exec target/release/yoink demo "$@"
