#!/usr/bin/env bash
# The usual kafka-*.sh tools without a Kafka distribution: runs them from the jars ops/up.sh cached
# in .local/kafka/libs, with --bootstrap-server 127.0.0.1:9092 added unless you pass one.
#
#   bash ops/kafka-cli.sh topics --list
#   bash ops/kafka-cli.sh topics --describe --topic chat.intents
#   bash ops/kafka-cli.sh console-consumer --topic ad.decisions --from-beginning --max-messages 5
#   echo '{"x":1}' | bash ops/kafka-cli.sh console-producer --topic scratch
#   bash ops/kafka-cli.sh consumer-groups --list
#   bash ops/kafka-cli.sh get-offsets --topic chat.intents
#   bash ops/kafka-cli.sh configs --describe --entity-type topics --entity-name chat.intents
#   bash ops/kafka-cli.sh org.apache.kafka.tools.SomeOtherTool ...   (any class on the classpath)
set -euo pipefail
# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -f $KAFKA_LIBS/.complete ]] || die "no Kafka jars in $(rel "$KAFKA_LIBS") yet: run 'make up' once"
command -v java >/dev/null 2>&1 || die "java not found. Install it with: $INSTALL_HINT"

tool=${1:-}
[[ -n $tool ]] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift
case $tool in
  topics) cls=org.apache.kafka.tools.TopicCommand ;;
  console-producer) cls=org.apache.kafka.tools.ConsoleProducer ;;
  console-consumer) cls=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  consumer-groups) cls=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  groups) cls=org.apache.kafka.tools.GroupsCommand ;;
  get-offsets) cls=org.apache.kafka.tools.GetOffsetShell ;;
  configs) cls=kafka.admin.ConfigCommand ;;
  delete-records) cls=org.apache.kafka.tools.DeleteRecordsCommand ;;
  transactions) cls=org.apache.kafka.tools.TransactionsCommand ;;
  metadata-quorum) cls=org.apache.kafka.tools.MetadataQuorumCommand ;;
  log-dirs) cls=org.apache.kafka.tools.LogDirsCommand ;;
  features) cls=org.apache.kafka.tools.FeatureCommand ;;
  broker-api-versions) cls=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
  storage) cls=kafka.tools.StorageTool ;;
  *.*) cls=$tool ;;
  *) die "unknown tool '$tool' (see: bash ops/kafka-cli.sh)" ;;
esac

args=("$@")
case $tool in
  storage | *.*) ;;
  *)
    if [[ " ${args[*]} " != *" --bootstrap-server "* && " ${args[*]} " != *" --bootstrap-controller "* ]]; then
      args=(--bootstrap-server "$KAFKA_BOOTSTRAP" "${args[@]}")
    fi
    ;;
esac
exec "${KAFKA_TOOL[@]}" "$cls" "${args[@]}"
