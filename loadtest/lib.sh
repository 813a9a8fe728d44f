# shellcheck shell=bash
# lib.sh: sourced by the load-test scripts (reserve-ceiling.sh, durability.sh, sold-out.sh,
# vs-node.sh). The caller defines log, die and need, and sets ROOT to the repository.

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Sets YOINK to the binary to measure: $YOINK_BIN, else target/release/yoink, built first
# (before anything is measured, so the compiler never competes with a run) unless
# SKIP_BUILD=1.
resolve_yoink() {
  if [[ -n ${YOINK_BIN:-} ]]; then
    YOINK=$YOINK_BIN
  else
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
      need cargo
      log "building yoink (cargo build --release -p yoink)"
      (cd "$ROOT" && cargo build --release -p yoink) >&2
    fi
    YOINK="$ROOT/target/release/yoink"
  fi
  [[ -x $YOINK ]] || die "no yoink binary at $YOINK"
}

# start_private_redis DIR: a redis-server on a free loopback port that keeps nothing
# (--save '' --appendonly no), logging to DIR/redis.log; never the shared one on 6379.
# Sets REDIS_PORT and REDIS_PID (the caller stops it) and waits for PONG, or dies.
start_private_redis() {
  REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize no --dir "$1" --logfile "$1/redis.log" &
  REDIS_PID=$!
  for _ in $(seq 50); do
    [[ $(redis-cli -p "$REDIS_PORT" PING 2>/dev/null) == PONG ]] && return 0
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited"
    sleep 0.1
  done
  die "redis-server did not answer"
}

# print_logs DIR: the last lines of every non-empty DIR/*.log (for a run that failed).
print_logs() {
  local f
  for f in "$1"/*.log; do
    [[ -s $f ]] || continue
    echo "---- last lines of $f" >&2
    tail -n 20 "$f" >&2
  done
}
