#!/usr/bin/env bash
# compose.yaml's kafka-setup step, as the admin user over TLS: creates the topic catalogue (EVENT_TOPICS with
# MIEUX_TOPIC_PARTITIONS partitions, DLQ_TOPICS with DLQ_PARTITIONS; replication MIEUX_TOPIC_REPLICATION,
# min.insync.replicas MIN_INSYNC_REPLICAS, kept forever), then each Kafka user's ACLs from ACLS, one line per
# user: `<user> write=<topics> read=<topics> group=<groups>` (comma-separated), or `prefix-topics=<prefix>
# prefix-groups=<prefix>`. Both are idempotent: run again, it changes nothing.
set -euo pipefail
umask 077
bin=/opt/kafka/bin
cfg=/tmp/admin.properties
cat > "$cfg" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${ADMIN_PASSWORD}";
ssl.truststore.type=PEM
ssl.truststore.location=/etc/kafka/tls/ca.crt
EOF

create() {  # topic partitions
  "$bin/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$cfg" --create --if-not-exists \
    --topic "$1" --partitions "$2" --replication-factor "$MIEUX_TOPIC_REPLICATION" \
    --config min.insync.replicas="$MIN_INSYNC_REPLICAS" --config retention.ms=-1 --config retention.bytes=-1
}
for t in $EVENT_TOPICS; do create "$t" "$MIEUX_TOPIC_PARTITIONS"; done
for t in $DLQ_TOPICS; do create "$t" "$DLQ_PARTITIONS"; done

allow() {  # user, then kafka-acls.sh arguments
  local user="$1"
  shift
  "$bin/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$cfg" --add \
    --allow-principal "User:${user}" "$@" > /dev/null
}
each() {  # flag, comma-separated names: --flag name --flag name ...
  local flag="$1" out=() name
  for name in ${2//,/ }; do out+=("$flag" "$name"); done
  printf '%s\n' "${out[@]}"
}
while read -r user specs; do
  [[ -n "$user" ]] || continue
  for spec in $specs; do
    kind="${spec%%=*}"
    names="${spec#*=}"
    mapfile -t args < <(each "$([[ $kind == group || $kind == prefix-groups ]] && echo --group || echo --topic)" "$names")
    case "$kind" in
      write) allow "$user" --operation Write --operation Describe "${args[@]}" ;;
      read) allow "$user" --operation Read --operation Describe "${args[@]}" ;;
      group) allow "$user" --operation Read --operation Describe "${args[@]}" ;;
      prefix-topics)
        allow "$user" --resource-pattern-type prefixed --operation Read --operation Write --operation Describe \
          --operation DescribeConfigs "${args[@]}" ;;
      prefix-groups) allow "$user" --resource-pattern-type prefixed --operation Read --operation Describe "${args[@]}" ;;
      *) echo "unknown ACL kind: $kind" >&2; exit 1 ;;
    esac
  done
  echo "ACLs of User:${user}"
done <<< "$ACLS"

"$bin/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$cfg" --describe --topic 'mieux\..*' \
  | grep -c PartitionCount
