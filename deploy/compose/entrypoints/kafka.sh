#!/bin/bash
# Entrypoint of localhost/invoicing-kafka (deploy/container/Containerfile.kafka).
#
#   kafka       (the default) format the KRaft storage on first start, then
#               run the combined broker and controller in the foreground
#   provision   apply SCRAM credentials and ACLs through the Admin API
#               (deploy/kafka/Provision.java), retrying until the broker answers
#
# Everything secret arrives as files under KAFKA_CONFIG_DIR (written by
# deploy/compose/prepare.py): server.properties (it holds the broker's own
# JAAS lines), admin-password, cluster-id, and for `provision`
# admin.properties and provision.txt.
set -euo pipefail

CONFIG_DIR=${KAFKA_CONFIG_DIR:-/etc/kafka}
DATA=${KAFKA_DATA_DIR:-/var/lib/kafka/data}
CLASSPATH="/opt/kafka/libs/*"
MECHANISM=SCRAM-SHA-512

say() { echo "[kafka-entrypoint] $*" >&2; }

format_once() {
    if [[ -f "$DATA/meta.properties" ]]; then
        return
    fi
    local cluster_id password
    cluster_id=$(<"$CONFIG_DIR/cluster-id")
    password=$(<"$CONFIG_DIR/admin-password")
    say "formatting $DATA for cluster $cluster_id (first start)"
    # The super user's SCRAM credential must exist before the broker starts:
    # its own connections use it. StorageTool reads it from its arguments
    # only; this one command, inside the container, is where it shows.
    java -cp "$CLASSPATH" kafka.tools.StorageTool format -t "$cluster_id" -c "$CONFIG_DIR/server.properties" \
        --add-scram "$MECHANISM=[name=admin,password=$password]" > /dev/null
}

case "${1:-kafka}" in
kafka)
    format_once
    # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of options
    # The parallel collector and transparent huge pages for the heap, as the
    # local stack runs it (docs/performance.md).
    exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} -XX:+UseParallelGC -XX:+UseTransparentHugePages \
        -Dlog4j2.configurationFile=/opt/kafka/log4j2.properties \
        -cp "$CLASSPATH" kafka.Kafka "$CONFIG_DIR/server.properties"
    ;;
provision)
    attempts=${KAFKA_PROVISION_ATTEMPTS:-60}
    for ((i = 1; i <= attempts; i++)); do
        # Commands on stdin: passwords never show in a process listing.
        if java -cp "$CLASSPATH" /opt/kafka/Provision.java "$CONFIG_DIR/admin.properties" \
            < "$CONFIG_DIR/provision.txt"; then
            say "principals and ACLs applied"
            exit 0
        fi
        say "provisioning failed (attempt $i of $attempts); the broker may still be starting"
        sleep 3
    done
    exit 1
    ;;
*)
    exec "$@"
    ;;
esac
