#!/usr/bin/env bash
# A persistent local chain for Caravan: anvil from the npm package @foundry-rs/anvil-linux-amd64.
#
#   scripts/anvil.sh start    # on 127.0.0.1, state in $CARAVAN_HOME/chain/state.json, waits until it answers
#   scripts/anvil.sh stop     # SIGTERM by the recorded PID (anvil writes its state on the way out)
#   scripts/anvil.sh status   # prints the RPC URL and chain id if it answers, exits 1 otherwise
#
# Records survive restarts: anvil loads the state file at start, dumps it every
# CARAVAN_ANVIL_STATE_INTERVAL_S seconds and at exit. Its funded dev accounts (public test keys,
# local use only) are written to $CARAVAN_HOME/chain/anvil.json, where `Chain.from_env` finds the
# default signing key when CARAVAN_PRIVATE_KEY is unset and the chain is this local anvil. The pid
# and log files sit beside them: nothing is written outside the chain dir.
#
# Environment: CARAVAN_ANVIL_PORT (8545)
#              CARAVAN_HOME (.caravan in the working directory, as pipelines/settings.py reads it)
#              CARAVAN_CHAIN_DIR ($CARAVAN_HOME/chain)
#              CARAVAN_ANVIL_BIN (the npm package's binary)  CARAVAN_ANVIL_STATE_INTERVAL_S (5)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CARAVAN_HOME="$(realpath -m "${CARAVAN_HOME:-.caravan}")"
CHAIN_DIR="$(realpath -m "${CARAVAN_CHAIN_DIR:-$CARAVAN_HOME/chain}")"
PORT="${CARAVAN_ANVIL_PORT:-8545}"
BIN="${CARAVAN_ANVIL_BIN:-$ROOT/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil}"
INTERVAL="${CARAVAN_ANVIL_STATE_INTERVAL_S:-5}"
PID_FILE="$CHAIN_DIR/anvil.pid"
LOG_FILE="$CHAIN_DIR/anvil.log"
URL="http://127.0.0.1:$PORT"

die() { echo "anvil.sh: $*" >&2; exit 1; }

chain_id() {
  curl -fsS --max-time 2 -H 'Content-Type: application/json' \
    -d '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$URL" 2>/dev/null \
    | sed -n 's/.*"result":"\(0x[0-9a-fA-F]*\)".*/\1/p' || true
}

running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

cmd_start() {
  [[ -x "$BIN" ]] || die "anvil binary not found at $BIN: run 'npm ci' (or 'make setup'), or set CARAVAN_ANVIL_BIN"
  if pid="$(running_pid)"; then
    echo "anvil already running (pid $pid) at $URL"
    return
  fi
  [[ -z "$(chain_id)" ]] || die "something else already answers at $URL: stop it or set CARAVAN_ANVIL_PORT"
  mkdir -p "$CHAIN_DIR"
  set -m  # own process group: stop ends anvil alone, never its caller
  "$BIN" --host 127.0.0.1 --port "$PORT" --state "$CHAIN_DIR/state.json" --state-interval "$INTERVAL" \
    --config-out "$CHAIN_DIR/anvil.json" >>"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  set +m
  for _ in $(seq 1 150); do
    if [[ -n "$(chain_id)" ]]; then
      echo "anvil running (pid $(cat "$PID_FILE")) at $URL, chain id $(( $(chain_id) )), state $CHAIN_DIR/state.json"
      return
    fi
    kill -0 "$(cat "$PID_FILE")" 2>/dev/null || { rm -f "$PID_FILE"; die "anvil exited at start; see $LOG_FILE"; }
    sleep 0.2
  done
  cmd_stop
  die "anvil did not answer at $URL within 30 s; see $LOG_FILE"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    echo "anvil is not running"
    return
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 75); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; echo "anvil stopped (state in $CHAIN_DIR/state.json)"; return; }
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
  echo "anvil did not stop within 15 s and was killed; state as of its last periodic dump" >&2
}

cmd_status() {
  local id
  id="$(chain_id)"
  [[ -n "$id" ]] || { echo "anvil is not answering at $URL" >&2; exit 1; }
  echo "$URL chain id $(( id ))"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "usage: scripts/anvil.sh start|stop|status" ;;
esac
