#!/usr/bin/env bash
# Runs every test of Yoink against real Redis and PostgreSQL (started when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
cargo test --workspace --all-targets "$@"
