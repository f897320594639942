#!/usr/bin/env bash
# A local Redis Cluster on loopback: REDIS_CLUSTER_MASTERS masters with REDIS_CLUSTER_REPLICAS replicas each
# (3 and 1: six redis-server processes), each one infra/redis.sh instance with REDIS_CLUSTER_NODE=1.
#
#   infra/redis-cluster.sh start    start every node, join them (redis-cli --cluster create) once, wait
#                                   until every node says cluster_state:ok
#   infra/redis-cluster.sh stop     stop every node (their nodes.conf and data stay: start rejoins them)
#   infra/redis-cluster.sh status   exit 0 when every node runs and the cluster is ok, 1 otherwise
#   infra/redis-cluster.sh reset    stop and delete every node's data
#
# REDIS_CLUSTER_PORTS: the nodes' ports (default 7000..7005); the first REDIS_CLUSTER_MASTERS become masters.
# Data in REDIS_CLUSTER_DIR/<port> (default infra/.cache/redis-cluster/<port>). Clients take any node as the
# seed: REDIS_CLUSTER=1 REDIS_URL=redis://127.0.0.1:7000/0 (docs/cluster.md).
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${PULSE_CACHE_DIR:-$INFRA_DIR/.cache}"
REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
REDIS_CLUSTER_MASTERS="${REDIS_CLUSTER_MASTERS:-3}"
REDIS_CLUSTER_REPLICAS="${REDIS_CLUSTER_REPLICAS:-1}"
REDIS_CLUSTER_PORTS="${REDIS_CLUSTER_PORTS:-7000 7001 7002 7003 7004 7005}"
REDIS_CLUSTER_DIR="${REDIS_CLUSTER_DIR:-$CACHE_DIR/redis-cluster}"
REDIS_CLUSTER_TIMEOUT="${REDIS_CLUSTER_TIMEOUT:-30}"
REDIS_CLI="${REDIS_CLI:-redis-cli}"

log() { printf '[redis-cluster.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

read -r -a PORTS <<<"$REDIS_CLUSTER_PORTS"
need=$((REDIS_CLUSTER_MASTERS * (REDIS_CLUSTER_REPLICAS + 1)))
((${#PORTS[@]} == need)) || die "REDIS_CLUSTER_PORTS has ${#PORTS[@]} ports; $REDIS_CLUSTER_MASTERS masters x $((REDIS_CLUSTER_REPLICAS + 1)) need $need"

node() {  # node <port> <redis.sh command>
  REDIS_CLUSTER_NODE=1 REDIS_HOST="$REDIS_HOST" REDIS_PORT="$1" REDIS_DATA_DIR="$REDIS_CLUSTER_DIR/$1" \
    bash "$INFRA_DIR/redis.sh" "$2"
}

cluster_ok() {  # every node answers and says cluster_state:ok
  local p
  for p in "${PORTS[@]}"; do
    "$REDIS_CLI" -h "$REDIS_HOST" -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

known_nodes() { "$REDIS_CLI" -h "$REDIS_HOST" -p "${PORTS[0]}" cluster info 2>/dev/null |
  sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p'; }

cmd_start() {
  local p pids=() failed=0
  for p in "${PORTS[@]}"; do node "$p" start & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  ((failed == 0)) || die "a node did not start"
  if [[ "$(known_nodes)" != "${#PORTS[@]}" ]]; then
    local -a addrs=()
    for p in "${PORTS[@]}"; do addrs+=("$REDIS_HOST:$p"); done
    log "creating the cluster: ${addrs[*]} ($REDIS_CLUSTER_MASTERS masters, $REDIS_CLUSTER_REPLICAS replica(s) each)"
    "$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas "$REDIS_CLUSTER_REPLICAS" --cluster-yes >&2 ||
      die "redis-cli --cluster create failed"
  fi
  local deadline=$(($(date +%s) + REDIS_CLUSTER_TIMEOUT))
  until cluster_ok; do
    (($(date +%s) < deadline)) || die "cluster not ok after ${REDIS_CLUSTER_TIMEOUT}s"
    sleep 0.1
  done
  log "cluster ok on $REDIS_HOST ports ${PORTS[*]}"
}

cmd_stop() { local p; for p in "${PORTS[@]}"; do node "$p" stop; done; }

cmd_status() {
  local p rc=0
  for p in "${PORTS[@]}"; do node "$p" status >/dev/null || rc=1; done
  if ((rc == 0)) && cluster_ok; then echo "redis-cluster: ok on ports ${PORTS[*]}"; return 0; fi
  echo "redis-cluster: NOT ok (ports ${PORTS[*]})"
  return 1
}

cmd_reset() { local p; for p in "${PORTS[@]}"; do node "$p" reset; done; rm -rf "$REDIS_CLUSTER_DIR"; }

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  *) echo "usage: $0 {start|stop|status|reset}" >&2; exit 2 ;;
esac
