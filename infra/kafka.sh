#!/usr/bin/env bash
# Local single-node Apache Kafka broker (KRaft, broker+controller) on loopback, without Docker.
#
#   infra/kafka.sh install   fetch the pinned broker jars from Maven Central (idempotent)
#   infra/kafka.sh start     render server.properties, format storage once, start, wait until ready
#   infra/kafka.sh stop      graceful stop (SIGTERM), SIGKILL after KAFKA_STOP_TIMEOUT seconds
#   infra/kafka.sh status    exit 0 when running and answering, 1 when running but not answering,
#                            3 when not running
#   infra/kafka.sh reset     stop and delete the instance's data directory
#
# KAFKA_SASL_USERS="admin:<password>,api:<password>,..." makes the client listener SASL_PLAINTEXT with
# SCRAM-SHA-256 and SCRAM-SHA-512 only: the users are created when the storage is formatted
# (kafka-storage format --add-scram); the first one is the broker's own (a super user) and the probe's.
#
# Several instances can run side by side: give each its own KAFKA_PORT, KAFKA_CONTROLLER_PORT and
# KAFKA_DATA_DIR. All variables are documented in infra/README.md. The life cycle (pid file, waits, stop,
# status, reset) is infra/lib.sh, shared with infra/redis.sh.
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(dirname "$INFRA_DIR")"
CACHE_DIR="${PULSE_CACHE_DIR:-$INFRA_DIR/.cache}"

# Keep in sync with <kafka.version> in infra/pom.xml and the apache/kafka tag in docker-compose.yml.
KAFKA_VERSION="${KAFKA_VERSION:-4.0.2}"
KAFKA_HOME="${KAFKA_HOME:-$CACHE_DIR/kafka-$KAFKA_VERSION}"
KAFKA_LIBS="$KAFKA_HOME/libs"

KAFKA_HOST="${KAFKA_HOST:-127.0.0.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
if [[ -n "${KAFKA_DATA_DIR:-}" ]]; then
  KAFKA_LOG_FILE="${KAFKA_LOG_FILE:-$KAFKA_DATA_DIR/kafka.log}"
else
  KAFKA_DATA_DIR="$CACHE_DIR/kafka-data"
  KAFKA_LOG_FILE="${KAFKA_LOG_FILE:-$CACHE_DIR/kafka.log}"
fi
KAFKA_NUM_PARTITIONS="${KAFKA_NUM_PARTITIONS:-${EVENTS_PARTITIONS:-8}}"
# one node of a cluster (infra/kafka-cluster.sh sets these): its id, every voter (id@host:controller_port,...),
# the replication factor and min.insync.replicas of every topic, and the cluster id all nodes are formatted with
KAFKA_NODE_ID="${KAFKA_NODE_ID:-1}"
KAFKA_QUORUM_VOTERS="${KAFKA_QUORUM_VOTERS:-$KAFKA_NODE_ID@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT}"
KAFKA_REPLICATION="${KAFKA_REPLICATION:-1}"
KAFKA_MIN_ISR="${KAFKA_MIN_ISR:-1}"
KAFKA_CLUSTER_ID="${KAFKA_CLUSTER_ID:-}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
KAFKA_CDS="${KAFKA_CDS:-1}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT_DIR/.venv/bin/python" ]]; then PYTHON="$ROOT_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi

KAFKA_SASL_USERS="${KAFKA_SASL_USERS:-}"
PROPS_FILE="$KAFKA_DATA_DIR/server.properties"
PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
META_DIR="$KAFKA_DATA_DIR/logs"
LOG4J_CONF="$INFRA_DIR/kafka/log4j2.properties"
CDS_ARCHIVE="$KAFKA_HOME/kafka-cds.jsa"

# shellcheck source=infra/lib.sh
source "$INFRA_DIR/lib.sh"
SERVICE=kafka
SVC_HOST="$KAFKA_HOST"
SVC_PORTS="$KAFKA_PORT $KAFKA_CONTROLLER_PORT"
SVC_DATA_DIR="$KAFKA_DATA_DIR"
SVC_LOG_FILE="$KAFKA_LOG_FILE"
SVC_START_TIMEOUT="$KAFKA_START_TIMEOUT"
SVC_STOP_TIMEOUT="$KAFKA_STOP_TIMEOUT"
# a kafka.Kafka JVM on this instance's config
SVC_CMDLINE="kafka\.Kafka $PROPS_FILE"

svc_installed() { [[ -f "$KAFKA_LIBS/.complete" ]]; }

svc_install() {
  if svc_installed; then
    log "kafka $KAFKA_VERSION already installed in $KAFKA_LIBS"
    return 0
  fi
  command -v "$MVN" >/dev/null || die "maven ($MVN) not found; install it (apt-get install -y maven)"
  local t0 tmp
  t0="$(now)"
  mkdir -p "$KAFKA_HOME"
  tmp="$(mktemp -d "$KAFKA_HOME/libs.tmp.XXXXXX")"
  log "fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its runtime dependencies from Maven Central"
  if ! "$MVN" -q -B -Dstyle.color=never -f "$INFRA_DIR/pom.xml" dependency:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.mvn.log" 2>&1; then
    cat "$tmp.mvn.log" >&2
    rm -rf "$tmp" "$tmp.mvn.log"
    die "maven could not fetch the broker jars"
  fi
  rm -f "$tmp.mvn.log"
  ls "$tmp" >"$tmp/.complete"
  if svc_installed; then
    rm -rf "$tmp"  # a concurrent install won the race
  else
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
  fi
  log "installed $(grep -c '\.jar$' "$KAFKA_LIBS/.complete") jars into $KAFKA_LIBS in $(elapsed "$t0") s"
}

# sasl_users: "name password" lines of KAFKA_SASL_USERS, checked (they go into JAAS and SCRAM configs)
sasl_users() {
  local entry name password
  local -a entries
  IFS=',' read -r -a entries <<<"$KAFKA_SASL_USERS"
  for entry in "${entries[@]}"; do
    name="${entry%%:*}"
    password="${entry#*:}"
    [[ "$name" =~ ^[A-Za-z0-9_-]+$ && "$entry" == *:* ]] || die "KAFKA_SASL_USERS: '$name' is not a user name (A-Z a-z 0-9 _ -)"
    [[ "$password" =~ ^[A-Za-z0-9._~+/=-]+$ ]] || die "KAFKA_SASL_USERS: the password of '$name' may hold only A-Z a-z 0-9 . _ ~ + / = -"
    printf '%s %s\n' "$name" "$password"
  done
}

svc_ready() {
  if [[ -z "$KAFKA_SASL_USERS" ]]; then
    "$PYTHON" "$INFRA_DIR/probe.py" kafka "$KAFKA_HOST:$KAFKA_PORT" "$@"
    return
  fi
  local name password
  read -r name password < <(sasl_users)
  PULSE_PROBE_SASL_PASSWORD="$password" "$PYTHON" "$INFRA_DIR/probe.py" kafka "$KAFKA_HOST:$KAFKA_PORT" \
    --sasl-mechanism SCRAM-SHA-256 --sasl-username "$name" "$@"
}

render_properties() {
  [[ -z "$KAFKA_SASL_USERS" ]] || sasl_users >/dev/null  # in this shell: a bad entry stops the start
  mkdir -p "$KAFKA_DATA_DIR" "$META_DIR"
  sed -e "s|@KAFKA_HOST@|$KAFKA_HOST|g" \
      -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
      -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
      -e "s|@KAFKA_LOG_DIRS@|$META_DIR|g" \
      -e "s|@KAFKA_NUM_PARTITIONS@|$KAFKA_NUM_PARTITIONS|g" \
      -e "s|@KAFKA_NODE_ID@|$KAFKA_NODE_ID|g" \
      -e "s|@KAFKA_QUORUM_VOTERS@|$KAFKA_QUORUM_VOTERS|g" \
      -e "s|@KAFKA_REPLICATION@|$KAFKA_REPLICATION|g" \
      -e "s|@KAFKA_MIN_ISR@|$KAFKA_MIN_ISR|g" \
      -e "s|@KAFKA_CLIENT_PROTOCOL@|$([[ -n "$KAFKA_SASL_USERS" ]] && echo SASL_PLAINTEXT || echo PLAINTEXT)|g" \
      "$INFRA_DIR/kafka/server.properties" >"$PROPS_FILE.tmp"
  if [[ -n "$KAFKA_SASL_USERS" ]]; then
    local name password jaas mechanism
    read -r name password < <(sasl_users)
    jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$name\" password=\"$password\";"
    {
      echo
      echo "############################# SASL/SCRAM (KAFKA_SASL_USERS) #############################"
      echo "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512"
      echo "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256"
      for mechanism in scram-sha-256 scram-sha-512; do
        echo "listener.name.client.$mechanism.sasl.jaas.config=$jaas"
      done
      echo "super.users=User:$name"
    } >>"$PROPS_FILE.tmp"
  fi
  chmod 600 "$PROPS_FILE.tmp"
  mv "$PROPS_FILE.tmp" "$PROPS_FILE"
}

# java_cmd <jvm options...> -- <main class and arguments...>: the command, NUL-separated.
java_cmd() {
  local -a opts=()
  while (($#)) && [[ "$1" != "--" ]]; do opts+=("$1"); shift; done
  shift
  printf '%s\0' "$JAVA" "${opts[@]}" "-Dlog4j2.configurationFile=$LOG4J_CONF" -cp "$KAFKA_LIBS/*" "$@"
}

# Class-data-sharing archive of the broker's classes: the first broker that stops gracefully leaves
# one (about 50 MB) in KAFKA_HOME; later starts map it and save about a second of class loading.
cds_opts() {
  [[ "$KAFKA_CDS" == "1" ]] || return 0
  if [[ -s "$CDS_ARCHIVE" ]]; then
    printf '%s\n' "-XX:SharedArchiveFile=$CDS_ARCHIVE"
  else
    printf '%s\n' "-XX:ArchiveClassesAtExit=$KAFKA_DATA_DIR/kafka-cds.jsa"
  fi
}

svc_after_stop() {  # publish the class-data archive a graceful stop left
  local dumped="$KAFKA_DATA_DIR/kafka-cds.jsa"
  if [[ -s "$dumped" && ! -s "$CDS_ARCHIVE" ]]; then
    if ! { cp "$dumped" "$CDS_ARCHIVE.tmp.$$" && mv -f "$CDS_ARCHIVE.tmp.$$" "$CDS_ARCHIVE"; }; then
      rm -f "$CDS_ARCHIVE.tmp.$$"
    fi
  fi
  rm -f "$dumped"
}

format_storage() {
  [[ -f "$META_DIR/meta.properties" ]] && return 0
  local cluster_id="$KAFKA_CLUSTER_ID"
  [[ -n "$cluster_id" ]] || cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  while [[ "$cluster_id" == -* ]]; do
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  local -a cmd scram=()
  local name password
  while read -r name password; do
    scram+=(--add-scram "SCRAM-SHA-256=[name=$name,password=$password]"
            --add-scram "SCRAM-SHA-512=[name=$name,password=$password]")
  done < <([[ -n "$KAFKA_SASL_USERS" ]] && sasl_users)
  # A short-lived tool: quick-start JVM flags.
  mapfile -d '' -t cmd < <(java_cmd -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dpulse.kafka.log.level=WARN -- \
    kafka.tools.StorageTool format --ignore-formatted --cluster-id "$cluster_id" --config "$PROPS_FILE" "${scram[@]}")
  if ! "${cmd[@]}" >>"$KAFKA_LOG_FILE" 2>&1; then
    tail -n 30 "$KAFKA_LOG_FILE" >&2 || true
    die "formatting storage in $META_DIR failed (log: $KAFKA_LOG_FILE)"
  fi
  printf '%s\n' "$cluster_id" >"$KAFKA_DATA_DIR/cluster.id"
}

svc_launch() {
  command -v "$JAVA" >/dev/null || die "java ($JAVA) not found; Kafka $KAFKA_VERSION needs Java 17+"
  : >"$KAFKA_LOG_FILE"
  render_properties
  format_storage

  local -a heap jvm cds cmd
  read -r -a heap <<<"$KAFKA_HEAP_OPTS"
  read -r -a jvm <<<"$KAFKA_JVM_OPTS"
  mapfile -t cds < <(cds_opts)
  mapfile -d '' -t cmd < <(java_cmd "${heap[@]}" "${jvm[@]}" "${cds[@]}" -- kafka.Kafka "$PROPS_FILE")
  # New session: the broker outlives this script and the caller's process group.
  # shellcheck disable=SC2016  # $$ and $@ expand in the child shell, on purpose
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "${cmd[@]}" \
    >>"$KAFKA_LOG_FILE" 2>&1 </dev/null &
  local launcher=$!
  local waited=0
  while [[ ! -s "$PID_FILE" ]] && ((waited < 50)); do sleep 0.02; waited=$((waited + 1)); done
  [[ -s "$PID_FILE" ]] || die "broker process did not start"
  disown "$launcher" 2>/dev/null || true
}

lib_main "$@"
