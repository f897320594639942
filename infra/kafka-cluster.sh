#!/usr/bin/env bash
# A local 3-broker Kafka on loopback (KRaft, every node broker + controller), each node one infra/kafka.sh
# instance: replication factor KAFKA_REPLICATION (3) and min.insync.replicas KAFKA_MIN_ISR (2) for every
# topic, so a broker can die without losing an acknowledged (acks=all) record.
#
#   infra/kafka-cluster.sh start    start the nodes together (a quorum needs a majority), wait until each answers
#   infra/kafka-cluster.sh stop     stop every node (data stays)
#   infra/kafka-cluster.sh status   exit 0 when every node runs and answers
#   infra/kafka-cluster.sh reset    stop and delete every node's data
#
# KAFKA_CLUSTER_PORTS: "broker:controller" pairs (default 19092:19093 19094:19095 19096:19097); data in
# KAFKA_CLUSTER_DIR/<node id>. Clients: KAFKA_BOOTSTRAP=127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096.
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${PULSE_CACHE_DIR:-$INFRA_DIR/.cache}"
KAFKA_HOST="${KAFKA_HOST:-127.0.0.1}"
KAFKA_CLUSTER_PORTS="${KAFKA_CLUSTER_PORTS:-19092:19093 19094:19095 19096:19097}"
KAFKA_CLUSTER_DIR="${KAFKA_CLUSTER_DIR:-$CACHE_DIR/kafka-cluster}"
export KAFKA_REPLICATION="${KAFKA_REPLICATION:-3}" KAFKA_MIN_ISR="${KAFKA_MIN_ISR:-2}"

log() { printf '[kafka-cluster.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

read -r -a PAIRS <<<"$KAFKA_CLUSTER_PORTS"
voters=""
for i in "${!PAIRS[@]}"; do voters+="${voters:+,}$((i + 1))@$KAFKA_HOST:${PAIRS[$i]#*:}"; done

node() {  # node <index> <kafka.sh command>
  local i="$1" pair="${PAIRS[$1]}"
  KAFKA_NODE_ID=$((i + 1)) KAFKA_QUORUM_VOTERS="$voters" KAFKA_HOST="$KAFKA_HOST" \
    KAFKA_PORT="${pair%%:*}" KAFKA_CONTROLLER_PORT="${pair#*:}" KAFKA_DATA_DIR="$KAFKA_CLUSTER_DIR/$((i + 1))" \
    KAFKA_CLUSTER_ID="$(cluster_id)" bash "$INFRA_DIR/kafka.sh" "$2"
}

cluster_id() {  # one id for every node, made once
  local f="$KAFKA_CLUSTER_DIR/cluster.id"
  if [[ ! -s "$f" ]]; then
    mkdir -p "$KAFKA_CLUSTER_DIR"
    local id
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' 'AB' | tr -d '=\n')"
    printf '%s\n' "$id" >"$f.tmp.$$" && mv -n "$f.tmp.$$" "$f"; rm -f "$f.tmp.$$"
  fi
  cat "$f"
}

bootstrap() { local out="" p; for p in "${PAIRS[@]}"; do out+="${out:+,}$KAFKA_HOST:${p%%:*}"; done; echo "$out"; }

each() {  # each <command>: on every node at once, failing if one fails
  local i pids=() failed=0
  cluster_id >/dev/null
  for i in "${!PAIRS[@]}"; do node "$i" "$1" & pids+=($!); done
  for i in "${pids[@]}"; do wait "$i" || failed=1; done
  return "$failed"
}

case "${1:-}" in
  start) each start || die "a node did not start"; log "ready: KAFKA_BOOTSTRAP=$(bootstrap)" ;;
  stop) each stop ;;
  status) if each status >/dev/null; then echo "kafka-cluster: ok ($(bootstrap))"; else echo "kafka-cluster: NOT ok"; exit 1; fi ;;
  reset) each reset; rm -rf "$KAFKA_CLUSTER_DIR" ;;
  *) echo "usage: $0 {start|stop|status|reset}" >&2; exit 2 ;;
esac
