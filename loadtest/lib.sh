# shellcheck shell=bash
# lib.sh: sourced by the load-test scripts (reserve-ceiling.sh, durability.sh). The caller
# defines log, die and need, and sets ROOT to the repository.

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
