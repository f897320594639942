# The life cycle infra/kafka.sh and infra/redis.sh share (sourced, not run): start, stop, status, reset,
# pid files, logs and waiting until ready. A script sets these, then calls `lib_main "$@"`:
#
#   SERVICE        name in messages ("kafka", "redis")
#   SVC_HOST       address the service listens on; SVC_PORTS: the ports it needs free to start
#   SVC_DATA_DIR   the instance's directory (removed by reset); PID_FILE, SVC_LOG_FILE inside or beside it
#   SVC_START_TIMEOUT, SVC_STOP_TIMEOUT   seconds
#   SVC_CMDLINE    extended regex the pid's /proc cmdline must match (guards against a recycled pid)
#
# and defines these functions:
#
#   svc_install          install what is missing (idempotent)
#   svc_installed        exit 0 when nothing needs installing
#   svc_launch           start the process in the background; it (or its launcher) writes PID_FILE
#   svc_ready [--timeout S]   exit 0 once the service answers
#   svc_after_stop       optional: run after a stop (e.g. publish a cache)
#
# shellcheck shell=bash

log() { printf '[%s.sh] %s\n' "$SERVICE" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# Prints the pid when this instance's process is alive (and is what PID_FILE says it is).
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE -- "$SVC_CMDLINE" || return 1
  printf '%s\n' "$pid"
}

port_busy() { (exec 3<>"/dev/tcp/$SVC_HOST/$1") 2>/dev/null; }

log_tail() { tail -n "${1:-30}" "$SVC_LOG_FILE" >&2 2>/dev/null || true; }

# wait_started <t0>: until svc_ready, failing when the process exits or SVC_START_TIMEOUT (from t0) passes.
wait_started() {
  local t0="$1" deadline pid
  deadline=$(awk -v a="$t0" -v t="$SVC_START_TIMEOUT" 'BEGIN { printf "%d", a + t }')
  until svc_ready; do
    if [[ -s "$PID_FILE" ]]; then
      pid="$(<"$PID_FILE")"
      if ! kill -0 "$pid" 2>/dev/null; then
        log_tail 40
        rm -f "$PID_FILE"
        die "$SERVICE exited during startup (log: $SVC_LOG_FILE)"
      fi
    fi
    if (($(date +%s) >= deadline)); then
      log_tail 40
      [[ -n "${pid:-}" ]] && kill -KILL "$pid" 2>/dev/null
      rm -f "$PID_FILE"
      die "$SERVICE not ready on $SVC_HOST:${SVC_PORTS%% *} after ${SVC_START_TIMEOUT}s (log: $SVC_LOG_FILE)"
    fi
    sleep 0.05
  done
}

cmd_start() {
  local t0 pid p
  t0="$(now)"
  if pid="$(running_pid)"; then
    svc_ready --timeout "$SVC_START_TIMEOUT" || die "running (pid $pid) but not answering; see $SVC_LOG_FILE"
    log "already running (pid $pid) on $SVC_HOST:${SVC_PORTS%% *}"
    return 0
  fi
  svc_installed || svc_install
  for p in $SVC_PORTS; do
    port_busy "$p" && die "port $SVC_HOST:$p is already in use by another process"
  done
  mkdir -p "$SVC_DATA_DIR" "$(dirname "$SVC_LOG_FILE")"
  rm -f "$PID_FILE"
  svc_launch
  wait_started "$t0"
  pid="$(running_pid || echo '?')"
  log "$SERVICE ready on $SVC_HOST:${SVC_PORTS%% *} (pid $pid) in $(elapsed "$t0") s; log: $SVC_LOG_FILE"
}

# Graceful stop (SIGTERM), SIGKILL after SVC_STOP_TIMEOUT seconds.
cmd_stop() {
  local pid t0
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    log "not running ($SVC_DATA_DIR)"
    return 0
  fi
  t0="$(now)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$(($(date +%s) + SVC_STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if (($(date +%s) >= deadline)); then
      log "no graceful stop after ${SVC_STOP_TIMEOUT}s, sending SIGKILL to $pid"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$PID_FILE"
  if declare -F svc_after_stop >/dev/null; then svc_after_stop; fi
  log "stopped (pid $pid) in $(elapsed "$t0") s"
}

# exit 0 when running and answering, 1 when running but not answering, 3 when not running
cmd_status() {
  local pid
  if ! pid="$(running_pid)"; then
    echo "$SERVICE: not running ($SVC_DATA_DIR)"
    return 3
  fi
  if svc_ready; then
    echo "$SERVICE: running (pid $pid), ready on $SVC_HOST:${SVC_PORTS%% *}"
    return 0
  fi
  echo "$SERVICE: running (pid $pid), NOT answering on $SVC_HOST:${SVC_PORTS%% *}"
  return 1
}

cmd_reset() {
  cmd_stop
  rm -rf "$SVC_DATA_DIR"
  log "removed $SVC_DATA_DIR"
}

lib_main() {
  case "${1:-}" in
    install) svc_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    *)
      echo "usage: $0 {install|start|stop|status|reset}" >&2
      exit 2
      ;;
  esac
}
