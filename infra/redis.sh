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
# REDIS_ACL=1: the default user is off and the users of infra/redis/users.acl.template (admin, api, worker,
# learner) get REDIS_<USER>_PASSWORD, rendered by infra/redis/render-acl.sh into $REDIS_DATA_DIR/users.acl.
#
# REDIS_CLUSTER_NODE=1: a node of a Redis Cluster (cluster-enabled, its nodes.conf in REDIS_DATA_DIR,
# REDIS_CLUSTER_NODE_TIMEOUT ms before a failover); infra/redis-cluster.sh starts and joins six of them.
#
# One instance per port; data (AOF), pid file and log live in REDIS_DATA_DIR
# (default infra/.cache/redis-<port>). All variables are documented in infra/README.md. The life cycle
# (pid file, waits, stop, status, reset) is infra/lib.sh, shared with infra/kafka.sh.
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

# shellcheck source=infra/lib.sh
source "$INFRA_DIR/lib.sh"
SERVICE=redis
SVC_HOST="$REDIS_HOST"
SVC_PORTS="$REDIS_PORT"
SVC_DATA_DIR="$REDIS_DATA_DIR"
SVC_LOG_FILE="$LOG_FILE"
SVC_START_TIMEOUT="$REDIS_START_TIMEOUT"
SVC_STOP_TIMEOUT="$REDIS_STOP_TIMEOUT"
# redis sets its process title to "redis-server host:port"
SVC_CMDLINE="redis-server.*:$REDIS_PORT( |$)"

svc_installed() { command -v "$REDIS_SERVER" >/dev/null; }

svc_install() {
  if svc_installed; then
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

svc_ready() { "$PYTHON" "$INFRA_DIR/probe.py" redis "$REDIS_HOST:$REDIS_PORT" "$@"; }

svc_launch() {
  local -a acl=()
  if [[ "${REDIS_ACL:-0}" == "1" ]]; then
    sh "$INFRA_DIR/redis/render-acl.sh" "$INFRA_DIR/redis/users.acl.template" "$REDIS_DATA_DIR/users.acl" ||
      die "the ACL users need their passwords (REDIS_<USER>_PASSWORD)"
    acl=(--aclfile "$REDIS_DATA_DIR/users.acl")
  fi
  local -a cluster=()
  if [[ "${REDIS_CLUSTER_NODE:-0}" == "1" ]]; then
    cluster=(--cluster-enabled yes --cluster-config-file "$REDIS_DATA_DIR/nodes.conf"
             --cluster-node-timeout "${REDIS_CLUSTER_NODE_TIMEOUT:-2000}")
  fi
  if ! "$REDIS_SERVER" "$CONF" \
      --bind "$REDIS_HOST" --port "$REDIS_PORT" --dir "$REDIS_DATA_DIR" \
      --pidfile "$PID_FILE" --logfile "$LOG_FILE" --daemonize yes \
      --maxmemory "$REDIS_MAXMEMORY" "${acl[@]}" "${cluster[@]}"; then
    log_tail 20
    die "redis-server failed to start (log: $LOG_FILE)"
  fi
}

lib_main "$@"
