#!/usr/bin/env bash
# Label Studio 1.23 for Caravan, in its own virtualenv so its pins never fight the project's.
#
#   scripts/labelstudio.sh install   # .venv-labelstudio (once; stamped by .venv-labelstudio/.installed)
#   scripts/labelstudio.sh start     # on 127.0.0.1, data under $CARAVAN_HOME/labelstudio, waits for /health
#   scripts/labelstudio.sh stop      # by the PID recorded at start
#   scripts/labelstudio.sh status    # prints the URL if it answers /health, exits 1 otherwise
#
# Environment (working local defaults; set real secrets in a real deployment):
#   LABEL_STUDIO_PORT (8080)  CARAVAN_HOME (.caravan in the working directory, as pipelines/settings.py
#   reads it)  LABEL_STUDIO_DATA_DIR ($CARAVAN_HOME/labelstudio: its database, media, pid and log)
#   LABEL_STUDIO_USERNAME / LABEL_STUDIO_PASSWORD / LABEL_STUDIO_USER_TOKEN: the admin account
#   and its API token, created at first start with no browser.
#   For PostgreSQL set DJANGO_DB=default and POSTGRE_NAME/USER/PASSWORD/HOST/PORT (see docs/labeling.md).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LS_VENV="${LS_VENV:-$ROOT/.venv-labelstudio}"
LS_VERSION_SPEC="${LS_VERSION_SPEC:-label-studio==1.23.*}"
PYTHON="${PYTHON:-python3.11}"
CARAVAN_HOME="$(realpath -m "${CARAVAN_HOME:-.caravan}")"
DATA_DIR="$(realpath -m "${LABEL_STUDIO_DATA_DIR:-$CARAVAN_HOME/labelstudio}")"
PORT="${LABEL_STUDIO_PORT:-8080}"
PID_FILE="$DATA_DIR/labelstudio.pid"
LOG_FILE="$DATA_DIR/labelstudio.log"
START_TIMEOUT_S="${LABEL_STUDIO_START_TIMEOUT_S:-180}"

die() { echo "labelstudio.sh: $*" >&2; exit 1; }

health_ok() {
  "$PYTHON" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/health", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

cmd_install() {
  if [[ -f "$LS_VENV/.installed" ]]; then
    echo "Label Studio already installed in $LS_VENV"
    return
  fi
  "$PYTHON" -m venv "$LS_VENV"
  "$LS_VENV/bin/pip" install --quiet --upgrade pip
  "$LS_VENV/bin/pip" install --quiet "$LS_VERSION_SPEC"
  # Import check only: `label-studio --version` looks up the latest release over the network.
  "$LS_VENV/bin/python" -c "import label_studio" >/dev/null
  touch "$LS_VENV/.installed"
  echo "Label Studio installed in $LS_VENV"
}

running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

cmd_start() {
  [[ -x "$LS_VENV/bin/label-studio" ]] || die "Label Studio is not installed: run 'make labelstudio-install'"
  local url="http://127.0.0.1:$PORT"
  if pid="$(running_pid)"; then
    echo "Label Studio already running (pid $pid) at $url"
    return
  fi
  mkdir -p "$DATA_DIR"
  export LABEL_STUDIO_BASE_DATA_DIR="$DATA_DIR"
  export LABEL_STUDIO_USERNAME="${LABEL_STUDIO_USERNAME:-admin@caravan.local}"
  export LABEL_STUDIO_PASSWORD="${LABEL_STUDIO_PASSWORD:-caravan-admin}"
  export LABEL_STUDIO_USER_TOKEN="${LABEL_STUDIO_USER_TOKEN:-caravan-local-dev-token}"
  export LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true
  export LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="${LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK:-true}"
  export LOCAL_FILES_SERVING_ENABLED="${LOCAL_FILES_SERVING_ENABLED:-true}"
  export LOCAL_FILES_DOCUMENT_ROOT="${LOCAL_FILES_DOCUMENT_ROOT:-$DATA_DIR}"
  # Caravan's webhook receiver listens on 127.0.0.1, which Label Studio's SSRF guard blocks by
  # default; this server itself only listens on 127.0.0.1. Set it to true for a shared deployment.
  export SSRF_PROTECTION_ENABLED="${SSRF_PROTECTION_ENABLED:-false}"
  # No phoning home: no release check against the package index, no analytics, no Sentry.
  export LATEST_VERSION_CHECK=false SENTRY_DSN="" FRONTEND_SENTRY_DSN="" COLLECT_ANALYTICS=0
  # set -m: the server gets its own process group, so stop can end it and its workers together.
  set -m
  "$LS_VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "$PORT" \
    --data-dir "$DATA_DIR" >"$LOG_FILE" 2>&1 &
  local pid=$!
  set +m
  echo "$pid" >"$PID_FILE"
  local waited=0
  until health_ok "$url"; do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$LOG_FILE" >&2; rm -f "$PID_FILE"; die "Label Studio exited during start (log: $LOG_FILE)"; }
    ((waited >= START_TIMEOUT_S)) && { cmd_stop; die "Label Studio did not answer $url/health within ${START_TIMEOUT_S}s (log: $LOG_FILE)"; }
    sleep 1; waited=$((waited + 1))
  done
  echo "Label Studio running (pid $pid) at $url"
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    echo "Label Studio not running"
    return
  fi
  # The PID leads its own process group (started under set -m): end the group, then wait.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  echo "Label Studio stopped (pid $pid)"
}

cmd_status() {
  local url="http://127.0.0.1:$PORT"
  if pid="$(running_pid)" && health_ok "$url"; then
    echo "Label Studio running (pid $pid) at $url"
  else
    echo "Label Studio not running"
    return 1
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "usage: $0 install|start|stop|status" ;;
esac
