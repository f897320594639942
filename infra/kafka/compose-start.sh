#!/bin/sh
# The Kafka broker of infra/docker-compose.yml (entrypoint of the apache/kafka container): KRaft
# broker+controller whose client listeners take SASL/SCRAM only. Renders the broker config from the
# environment, formats the data volume once with the SCRAM users (kafka-storage.sh format --add-scram),
# writes the health check's client config, then runs the broker.
#
# Users (SCRAM-SHA-256 and SCRAM-SHA-512): admin (the broker itself, topic creation, operators; super user),
# api, worker, learner: one per service, their passwords from KAFKA_<USER>_PASSWORD. A password is set when
# the volume is formatted; to change it later: kafka-configs.sh --alter --add-config
# 'SCRAM-SHA-256=[password=...]' --entity-type users --entity-name <user> (docs/security.md).
set -eu
# where the image keeps Kafka, the data volume and this script's output (a test points them elsewhere)
bin="${KAFKA_BIN:-/opt/kafka/bin}"
data="${KAFKA_DATA:-/var/lib/kafka/data}"
conf="${PULSE_KAFKA_CONF:-/tmp/pulse-kafka}"

for user in admin api worker learner; do
  var="KAFKA_$(echo "$user" | tr a-z A-Z)_PASSWORD"
  eval "value=\${$var:-}"
  case "$value" in
    "" | CHANGE_ME*)
      echo "kafka: $var must be set to a random secret (not empty, not the CHANGE_ME placeholder of .env.example)" >&2
      exit 1 ;;
    *[!A-Za-z0-9._~+/=-]*)
      echo "kafka: $var may hold only A-Z a-z 0-9 . _ ~ + / = - (it is written into SCRAM and JAAS configs)" >&2
      exit 1 ;;
  esac
done

mkdir -p "$conf"
umask 077
jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$KAFKA_ADMIN_PASSWORD\";"
cat >"$conf/server.properties" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:9093
controller.listener.names=CONTROLLER
# INTERNAL for the other containers, EXTERNAL for tools on the host; the controller listens on loopback only
listeners=INTERNAL://:29092,EXTERNAL://:9092,CONTROLLER://localhost:9093
advertised.listeners=INTERNAL://kafka:29092,EXTERNAL://localhost:${KAFKA_HOST_PORT:-9092}
listener.security.protocol.map=INTERNAL:SASL_PLAINTEXT,EXTERNAL:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256
listener.name.internal.scram-sha-256.sasl.jaas.config=$jaas
listener.name.internal.scram-sha-512.sasl.jaas.config=$jaas
listener.name.external.scram-sha-256.sasl.jaas.config=$jaas
listener.name.external.scram-sha-512.sasl.jaas.config=$jaas
super.users=User:admin
log.dirs=$data
num.partitions=${EVENTS_PARTITIONS:-8}
auto.create.topics.enable=false
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
log.retention.hours=${KAFKA_LOG_RETENTION_HOURS:-168}
PROPERTIES

cat >"$conf/admin.properties" <<PROPERTIES
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-256
sasl.jaas.config=$jaas
PROPERTIES

set --
for user in admin api worker learner; do
  eval "value=\${KAFKA_$(echo "$user" | tr a-z A-Z)_PASSWORD}"
  set -- "$@" --add-scram "SCRAM-SHA-256=[name=$user,password=$value]" \
    --add-scram "SCRAM-SHA-512=[name=$user,password=$value]"
done
"$bin/kafka-storage.sh" format --ignore-formatted --cluster-id "${CLUSTER_ID:?}" \
  --config "$conf/server.properties" "$@"
exec "$bin/kafka-server-start.sh" "$conf/server.properties"
