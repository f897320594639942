#!/usr/bin/env bash
# Local Redis server on loopback (Debian's redis-server), configured by infra/redis/redis.conf.
#
#   infra/redis.sh install   apt-get install redis-server when it is missing
#   infra/redis.sh start     start daemonized on REDIS_PORT, wait until it answers PING
#   infra/redis.sh stop      graceful stop (SIGTERM: AOF flushed), SIGKILL after REDIS_STOP_TIMEOUT
#   infra/redis.sh status    exit 0 when running and answering, 1 when running but not answering,
#                            3 when not running
#   infra/redis.sh reset     stop and delete the instance's data directory
#
# One instance per port; data (AOF), pid file and log live in REDIS_DATA_DIR
# (default infra/.cache/redis-<port>). All variables are documented in infra/README.md.
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(dirname "$INFRA_DIR")"
CACHE_DIR="${PULSE_CACHE_DIR:-$INFRA_DIR/.cache}"

REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
REDIS_PORT="${REDIS_PORT:-6379}"
REDIS_DATA_DIR="${REDIS_DATA_DIR:-$CACHE_DIR/redis-$REDIS_PORT}"
REDIS_MAXMEMORY="${REDIS_MAXMEMORY:-1gb}"
REDIS_START_TIMEOUT="${REDIS_START_TIMEOUT:-15}"
REDIS_STOP_TIMEOUT="${REDIS_STOP_TIMEOUT:-15}"
REDIS_SERVER="${REDIS_SERVER:-redis-server}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT_DIR/.venv/bin/python" ]]; then PYTHON="$ROOT_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi

CONF="$INFRA_DIR/redis/redis.conf"
PID_FILE="$REDIS_DATA_DIR/redis.pid"
LOG_FILE="$REDIS_DATA_DIR/redis.log"

log() { printf '[redis.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

cmd_install() {
  if command -v "$REDIS_SERVER" >/dev/null; then
    log "$("$REDIS_SERVER" --version)"
    return 0
  fi
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "redis-server is missing and we are not root; run: apt-get install -y redis-server"
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y --no-install-recommends redis-server >&2; then
    "${sudo[@]}" apt-get update >&2
    "${sudo[@]}" apt-get install -y --no-install-recommends redis-server >&2
  fi
  # Debian starts a system-wide service on 6379 where an init system runs; this project starts its own.
  log "installed: $("$REDIS_SERVER" --version)"
}

running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: redis sets its process title to "redis-server host:port".
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE -- "redis-server.*:$REDIS_PORT( |$)" || return 1
  printf '%s\n' "$pid"
}

ready() { "$PYTHON" "$INFRA_DIR/probe.py" redis "$REDIS_HOST:$REDIS_PORT" "$@"; }

port_busy() { (exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT") 2>/dev/null; }

cmd_start() {
  local t0 pid
  t0="$(now)"
  if pid="$(running_pid)"; then
    ready --timeout "$REDIS_START_TIMEOUT" || die "running (pid $pid) but not answering PING; see $LOG_FILE"
    log "already running (pid $pid) on $REDIS_HOST:$REDIS_PORT"
    return 0
  fi
  command -v "$REDIS_SERVER" >/dev/null || cmd_install
  port_busy && die "port $REDIS_HOST:$REDIS_PORT is already in use by another process"
  mkdir -p "$REDIS_DATA_DIR"
  rm -f "$PID_FILE"
  if ! "$REDIS_SERVER" "$CONF" \
      --bind "$REDIS_HOST" --port "$REDIS_PORT" --dir "$REDIS_DATA_DIR" \
      --pidfile "$PID_FILE" --logfile "$LOG_FILE" --daemonize yes \
      --maxmemory "$REDIS_MAXMEMORY"; then
    tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
    die "redis-server failed to start (log: $LOG_FILE)"
  fi
  local deadline
  deadline=$(awk -v a="$t0" -v t="$REDIS_START_TIMEOUT" 'BEGIN { printf "%d", a + t }')
  until ready; do
    if (($(date +%s) >= deadline)); then
      tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
      die "redis not answering PING on $REDIS_HOST:$REDIS_PORT after ${REDIS_START_TIMEOUT}s (log: $LOG_FILE)"
    fi
    sleep 0.05
  done
  pid="$(running_pid || echo '?')"
  log "redis ready on $REDIS_HOST:$REDIS_PORT (pid $pid) in $(elapsed "$t0") s; data: $REDIS_DATA_DIR"
}

cmd_stop() {
  local pid t0
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    log "not running on port $REDIS_PORT"
    return 0
  fi
  t0="$(now)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$(($(date +%s) + REDIS_STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if (($(date +%s) >= deadline)); then
      log "no graceful stop after ${REDIS_STOP_TIMEOUT}s, sending SIGKILL to $pid"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$PID_FILE"
  log "stopped (pid $pid) in $(elapsed "$t0") s"
}

cmd_status() {
  local pid
  if ! pid="$(running_pid)"; then
    echo "redis: not running on port $REDIS_PORT"
    return 3
  fi
  if ready; then
    echo "redis: running (pid $pid), ready on $REDIS_HOST:$REDIS_PORT"
    return 0
  fi
  echo "redis: running (pid $pid), NOT answering on $REDIS_HOST:$REDIS_PORT"
  return 1
}

cmd_reset() {
  cmd_stop
  rm -rf "$REDIS_DATA_DIR"
  log "removed $REDIS_DATA_DIR"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  *)
    echo "usage: $0 {install|start|stop|status|reset}" >&2
    exit 2
    ;;
esac
