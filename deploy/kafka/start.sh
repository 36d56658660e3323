#!/usr/bin/env bash
# A broker of compose.yaml (apache/kafka, KRaft: broker and controller), TLS on every listener:
#   BROKER     :9092  SSL, mutual TLS: the other brokers (principal: the certificate's CN, kafka-N)
#   CLIENT     :9093  SASL_SSL, SCRAM-SHA-512: the services, ops, admin (the set-up step)
#   CONTROLLER :9094  SSL, mutual TLS: the KRaft quorum
# ACLs (StandardAuthorizer), nothing allowed without one; super users: the brokers and admin.
# The SCRAM users (SCRAM_USERS: name=password ...) are created when the node's storage is formatted, at its
# first start; to change a password later use kafka-configs.sh --alter --entity-type users as admin.
# Reads NODE_ID, CLUSTER_ID, CONTROLLER_QUORUM_VOTERS, SCRAM_USERS and /etc/kafka/tls/{ca.crt,tls.crt,tls.key}.
#
#   start.sh          write the configuration, format the storage once, run the broker
#   start.sh health   exit 0 when the broker answers on its CLIENT listener (compose's health check)
set -euo pipefail
umask 077
conf=/tmp/kafka
host="kafka-${NODE_ID}"

if [[ "${1:-}" == health ]]; then
  exec /opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server "${host}:9093" \
    --command-config "$conf/admin.properties" > /dev/null
fi

mkdir -p "$conf"
# Kafka's PEM key store: the key (PKCS#8, unencrypted) and its certificate in one file
cat /etc/kafka/tls/tls.key /etc/kafka/tls/tls.crt > "$conf/keystore.pem"

admin_password=""
scram=()
for pair in $SCRAM_USERS; do
  name="${pair%%=*}"
  password="${pair#*=}"
  [[ "$name" == admin ]] && admin_password="$password"
  scram+=(--add-scram "SCRAM-SHA-512=[name=${name},password=${password}]")
done

cat > "$conf/server.properties" <<EOF
process.roles=broker,controller
node.id=${NODE_ID}
controller.quorum.voters=${CONTROLLER_QUORUM_VOTERS}
listeners=BROKER://:9092,CLIENT://:9093,CONTROLLER://:9094
advertised.listeners=BROKER://${host}:9092,CLIENT://${host}:9093
listener.security.protocol.map=BROKER:SSL,CLIENT:SASL_SSL,CONTROLLER:SSL
inter.broker.listener.name=BROKER
controller.listener.names=CONTROLLER
log.dirs=/var/lib/kafka/data

ssl.keystore.type=PEM
ssl.keystore.location=${conf}/keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=/etc/kafka/tls/ca.crt
ssl.client.auth=required
ssl.enabled.protocols=TLSv1.3,TLSv1.2
ssl.principal.mapping.rules=RULE:^CN=([^,]+)\$/\$1/,DEFAULT
listener.name.client.ssl.client.auth=none
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;

authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:kafka-1;User:kafka-2;User:kafka-3;User:admin

default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
EOF

# the health check's client: admin over the CLIENT listener
cat > "$conf/admin.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${admin_password}";
ssl.truststore.type=PEM
ssl.truststore.location=/etc/kafka/tls/ca.crt
EOF

if [[ ! -f /var/lib/kafka/data/meta.properties ]]; then
  /opt/kafka/bin/kafka-storage.sh format --cluster-id "$CLUSTER_ID" --config "$conf/server.properties" "${scram[@]}"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$conf/server.properties"
