#!/usr/bin/env bash
# Start local Kafka 4.1.1 (KRaft, combined broker+controller, node 1) on 127.0.0.1:9092 and Redis on
# 127.0.0.1:6379 -- each only unless something already answers there -- and wait until both really
# answer (Redis PING; Kafka a produce/consume round trip). No Docker needed: Kafka's jars come from
# Maven Central (ops/kafka/pom.xml) into .local/kafka/libs once, Redis is the system redis-server.
#
#   bash ops/up.sh            start what is missing, wait, print where everything is  (make up)
#   BROKERS=3 bash ops/up.sh  the same with a three-broker cluster on 127.0.0.1:9092-9094 (make up BROKERS=3)
#   REDIS=cluster bash ops/up.sh  a Redis Cluster on 127.0.0.1:7000-7005 instead of the single Redis
#                             (make up REDIS=cluster; either broker mode)
#   bash ops/up.sh --status   only say whether each answers                           (make status)
#
# State, all under the ignored .local/: kafka/{libs,data,server.properties,cluster.id},
# redis/{redis.conf,appendonlydir}, run/{kafka,redis}.pid, logs/{kafka.log,kafka.out,redis.log};
# the Redis Cluster's nodes in redis/cluster/<port>/, run/redis-<port>.pid, logs/redis-<port>.log.
# Settings: VICKREY_UP_TIMEOUT (seconds to wait, default 90), KAFKA_HEAP_OPTS (default
# "-Xms512m -Xmx1g"), KAFKA_JVM_PERFORMANCE_OPTS. ops/down.sh stops only what this started.
set -euo pipefail
# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TIMEOUT=${VICKREY_UP_TIMEOUT:-90}
BROKERS=${BROKERS:-1}
REDIS_MODE=${REDIS:-single}

# ---------------------------------------------------------------------------------------- status
status() {
  local rc=0 pid
  # shellcheck disable=SC2034  # read by our_pid in lib.sh
  QUIET_STALE=1
  pid=$(our_pid kafka)
  if [[ -n $(cluster_pids) ]]; then
    cluster_status || rc=1
  elif HEALTH_ERR=/dev/null kafka_answers; then
    say "kafka  $KAFKA_BOOTSTRAP  answers (produce/consume round trip ok)$(owner "$pid" "$KAFKA_LOG")"
  elif [[ -n $pid ]]; then
    say "kafka  $KAFKA_BOOTSTRAP  NOT answering yet (started by make up, pid $pid; log $(rel "$KAFKA_LOG"))"; rc=1
  else
    say "kafka  $KAFKA_BOOTSTRAP  NOT answering (make up starts it)"; rc=1
  fi
  pid=$(our_pid redis)
  if [[ -n $(redis_cluster_pids) ]]; then
    redis_cluster_status || rc=1
  elif redis_answers; then
    say "redis  $REDIS_HOST:$REDIS_PORT  answers (PING)$(owner "$pid" "$REDIS_LOG")"
  elif [[ -n $pid ]]; then
    say "redis  $REDIS_HOST:$REDIS_PORT  NOT answering (started by make up, pid $pid; log $(rel "$REDIS_LOG"))"; rc=1
  else
    say "redis  $REDIS_HOST:$REDIS_PORT  NOT answering (make up starts it)"; rc=1
  fi
  return $rc
}

owner() {
  if [[ -n $1 ]]; then printf ' -- started by make up, pid %s, log %s' "$1" "$(rel "$2")"
  else printf ' -- not started by make up (make down leaves it alone)'; fi
}

# ----------------------------------------------------------------------------------------- kafka
require_java() {
  local missing=()
  command -v java >/dev/null 2>&1 || missing+=(java)
  if [[ ! -f $KAFKA_LIBS/.complete || $(cat "$KAFKA_LIBS/.complete") != "$(pom_digest)" ]]; then
    command -v mvn >/dev/null 2>&1 || missing+=(mvn)
  fi
  if ((${#missing[@]})); then
    warn "error: not found: ${missing[*]}. Local Kafka needs Java 17+ and Maven (for its jars). Install them with:"
    warn "  $INSTALL_HINT"
    exit 1
  fi
  local major
  major=$(java_major)
  if [[ -z $major || $major -lt 17 ]]; then
    warn "error: Kafka 4.1 needs Java 17 or newer; 'java' here is version ${major:-unknown} ($(command -v java)). Install it with:"
    warn "  $INSTALL_HINT"
    warn "  (and select it: update-alternatives --config java)"
    exit 1
  fi
}

pom_digest() { sha256sum "$OPS_DIR/kafka/pom.xml" | cut -d' ' -f1; }

# Fetch the jars once; the marker holds the pom's digest, so editing the pom re-fetches.
ensure_kafka_libs() {
  local digest tmp
  digest=$(pom_digest)
  if [[ -f $KAFKA_LIBS/.complete && $(cat "$KAFKA_LIBS/.complete") == "$digest" ]]; then return 0; fi
  say "kafka: fetching Kafka 4.1.1 jars from Maven Central into $(rel "$KAFKA_LIBS") (once) ..."
  tmp=$KAFKA_DIR/libs.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! mvn -B -q -Dstyle.color=never -f "$OPS_DIR/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$LOG_DIR/mvn.log" 2>&1; then
    rm -rf "$tmp"
    tail -n 30 "$LOG_DIR/mvn.log" >&2 || true
    die "Maven could not fetch Kafka's jars (full output: $(rel "$LOG_DIR/mvn.log")). Is Maven Central (or your ~/.m2/settings.xml mirror) reachable?"
  fi
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "Maven finished but $tmp has no kafka_2.13 jar (see $(rel "$LOG_DIR/mvn.log"))"
  printf '%s\n' "$digest" >"$tmp/.complete"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
  say "kafka: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars cached"
}

write_server_properties() {
  local voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT node=1 rf=1 min_isr=1 n
  if [[ ${NODE_ID:-} ]]; then  # a node of the three-broker cluster (use_node)
    node=$NODE_ID rf=3 min_isr=2 voters=
    for n in "${CLUSTER_NODES[@]}"; do
      voters+="${voters:+,}$n@$KAFKA_HOST:$((${OPS_KAFKA_PORT:-9092} + 10000 + n - 1))"
    done
  fi
  mkdir -p "$(dirname "$KAFKA_CONF")"
  cat >"$KAFKA_CONF.tmp" <<EOF
# Generated by ops/up.sh at every start -- edit ops/up.sh, not this file.
# KRaft: this process is both broker and controller (node $node, static quorum of $rf).
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA

# Every topic, the internal ones included, on every broker ($rf): a write is acknowledged once
# $min_isr replicas have it, so the cluster loses nothing when one broker dies.
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
# Fewer partitions for the internal topics than the defaults (50): their creation on the first
# consumer group / first transaction is quicker, and nothing here needs more.
offsets.topic.num.partitions=12
transaction.state.log.num.partitions=12

# Topics: \`vickrey topics create\` makes the contract topics (VICKREY_PARTITIONS, default 6).
# Auto-creation stays on (Kafka's default, as in the apache/kafka image): the health check's
# scratch topic and Faust's internal topics rely on it.
num.partitions=6
auto.create.topics.enable=true
delete.topic.enable=true

# Dev box, low latency: consumer groups form at once, clients may pick short session timeouts
# (crash tests), modest threads and memory on a 2-core machine.
group.initial.rebalance.delay.ms=0
# KIP-890 verification: before appending a transactional produce, the broker asks the transaction
# coordinator whether the partition is in the transaction, and answers clients older than the
# KIP (aiokafka among them) NOT_ENOUGH_REPLICAS while the coordinator still finishes the previous
# transaction. aiokafka then retries after retry_backoff_ms: measured, a dozen such retries a
# second on a busy worker, on the path of its decisions. aiokafka always adds a partition to the
# transaction before it produces to it, which is what the check guards.
transaction.partition.verification.enable=false
group.min.session.timeout.ms=1000
# After a kill -9 the restarted broker cannot register until its old session expires (default
# 9 s, then 2 s retries); a shorter session makes that recovery quicker.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=5000
num.network.threads=3
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=33554432
# Keep the disk in check: 2 days or 1 GiB per partition, 128 MiB segments.
log.retention.hours=48
log.retention.bytes=1073741824
log.segment.bytes=134217728
log.retention.check.interval.ms=300000
EOF
  mv "$KAFKA_CONF.tmp" "$KAFKA_CONF"
}

# The cluster id is generated once and kept; storage is formatted only when it is not yet.
ensure_kafka_storage() {
  local id_file=$KAFKA_DIR/cluster.id cid
  [[ ${NODE_ID:-} ]] && id_file=$CLUSTER_DIR/cluster.id  # one id for the cluster's three nodes
  if [[ ! -s $id_file && -f $KAFKA_DATA/meta.properties ]]; then
    # Data from an earlier start but the id file is lost: reuse the id the data carries.
    sed -n 's/^cluster\.id=//p' "$KAFKA_DATA/meta.properties" >"$id_file"
  fi
  if [[ ! -s $id_file ]]; then
    cid=$("${KAFKA_TOOL[@]}" kafka.tools.StorageTool random-uuid 2>>"$KAFKA_OUT" | tail -n 1 | tr -d '[:space:]')
    [[ $cid =~ ^[A-Za-z0-9_-]{22}$ ]] || die "could not generate a Kafka cluster id (got '$cid'; see $(rel "$KAFKA_OUT"))"
    printf '%s\n' "$cid" >"$id_file"
  fi
  cid=$(tr -d '[:space:]' <"$id_file")
  if [[ ! -f $KAFKA_DATA/meta.properties ]]; then
    say "kafka: formatting $(rel "$KAFKA_DATA") (cluster id $cid)"
    mkdir -p "$KAFKA_DATA"
    "${KAFKA_TOOL[@]}" kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_CONF" --ignore-formatted \
      >>"$KAFKA_OUT" 2>&1 || { tail -n 20 "$KAFKA_OUT" >&2; die "kafka storage format failed (see $(rel "$KAFKA_OUT"))"; }
  fi
}

start_kafka() {
  require_java
  ensure_kafka_libs
  mkdir -p "$KAFKA_DIR" "$KAFKA_DATA" "$KAFKA_LOGS_DIR"
  touch "$KAFKA_OUT"
  write_server_properties
  ensure_kafka_storage
  local heap=${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}
  local perf=${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}
  local -a cmd
  # shellcheck disable=SC2206  # word splitting of the option strings is wanted
  cmd=(java $heap $perf
    -Dkafka.logs.dir="$KAFKA_LOGS_DIR"
    -Dlog4j2.configurationFile="$OPS_DIR/kafka/log4j2.yaml"
    -cp "$KAFKA_LIBS/*"
    kafka.Kafka "$KAFKA_CONF")
  printf '\n==== %s ops/up.sh starting kafka\n' "$(date -Is)" >>"$KAFKA_OUT"
  # Where this start's output begins, to show only its own lines if it dies.
  KAFKA_OUT_MARK=$(wc -l <"$KAFKA_OUT")
  KAFKA_LOG_MARK=$( { wc -l <"$KAFKA_LOG"; } 2>/dev/null || echo 0)  # no log yet on a first start
  # New session (setsid) so the broker outlives make, the terminal and Ctrl-C; the wrapper writes
  # its own pid and then execs java, so the pid file holds the java pid itself.
  rm -f "$KAFKA_PIDFILE"
  cd "$KAFKA_DIR"
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner bash
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PIDFILE" "${cmd[@]}" >>"$KAFKA_OUT" 2>&1 </dev/null 9>&- &
  cd - >/dev/null
  for _ in {1..50}; do [[ -s $KAFKA_PIDFILE ]] && break; sleep 0.1; done
  say "kafka${NODE_ID:+ node $NODE_ID}: started on $KAFKA_HOST:$KAFKA_PORT (pid $(read_pidfile "$KAFKA_PIDFILE")), heap $heap, data $(rel "$KAFKA_DATA")"
}

# ----------------------------------------------------------------------------------------- redis
ensure_redis_installed() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    local pkgs=(redis-server)
    command -v kcat >/dev/null 2>&1 || pkgs+=(kcat)
    say "redis: redis-server missing; installing ${pkgs[*]} with apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq "${pkgs[@]}"; } >"$LOG_DIR/apt.log" 2>&1; then
      tail -n 20 "$LOG_DIR/apt.log" >&2
      die "apt-get install ${pkgs[*]} failed (see $(rel "$LOG_DIR/apt.log"))"
    fi
    command -v redis-server >/dev/null 2>&1 || die "apt-get installed redis-server but it is not on PATH"
    # Debian's package may have started its own service on 6379; then that one answers and is used.
  else
    die "redis-server not found. Install it with: sudo apt-get install -y redis-server"
  fi
}

write_redis_conf() {
  mkdir -p "$REDIS_DIR"
  cat >"$REDIS_CONF.tmp" <<EOF
# Generated by ops/up.sh at every start -- edit ops/up.sh, not this file.
bind $REDIS_HOST
port $REDIS_PORT
protected-mode yes
daemonize yes
supervised no
pidfile "$REDIS_PIDFILE"
logfile "$REDIS_LOG"
loglevel notice
always-show-logo no
dir "$REDIS_DIR"
# Data survives restarts (also kill -9): append-only file, fsync once a second. No RDB snapshots:
# the AOF is the persistence and snapshots would only add fork pauses.
appendonly yes
appendfsync everysec
save ""
# The worker writes ~0.7 KB per event through the AOF (mostly kept outcomes, which it drops once
# committed), so the AOF grows fast while the data stays small. Redis rewrites the AOF (a fork, then the whole
# data set written again: ~1 s of a core here) each time it doubles past 64 MB: every few seconds
# at 5,000 events/s, stealing a core from a 2-core machine mid-benchmark (measured: 2-3 rewrites per
# 10 s latency point, p99 234/263 ms with them vs 150/98 ms without). Rewrite at 5x and 1 GB instead.
auto-aof-rewrite-percentage 400
auto-aof-rewrite-min-size 1gb
EOF
  if [[ -n ${REDIS_NODE:-} ]]; then
    cat >>"$REDIS_CONF.tmp" <<EOF
# A node of the Redis Cluster of make up REDIS=cluster: its view of the cluster (nodes, slots,
# epochs) is kept in nodes.conf beside its data, so a restarted node rejoins as it left. A primary
# that does not answer for 5 s is failed over to its replica.
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 5000
EOF
  fi
  mv "$REDIS_CONF.tmp" "$REDIS_CONF"
}

start_redis() {
  ensure_redis_installed
  write_redis_conf
  rm -f "$REDIS_PIDFILE"
  local out
  if ! out=$(cd "$REDIS_DIR" && redis-server "$REDIS_CONF" 2>&1 </dev/null 9>&-); then
    printf '%s\n' "$out" >&2
    die "redis-server did not start (see $(rel "$REDIS_LOG"))"
  fi
  for _ in {1..50}; do [[ -s $REDIS_PIDFILE ]] && break; sleep 0.1; done
  say "redis${REDIS_NODE:+ node $REDIS_NODE}: started (pid $(read_pidfile "$REDIS_PIDFILE")), data $(rel "$REDIS_DIR") (append-only file)"
}

# ----------------------------------------------------------------------- the three-broker cluster
# `make up BROKERS=3`: nodes 1-3 (KRaft, each broker and controller) on 127.0.0.1:9092-9094, state
# under .local/kafka/cluster/node<N>/, pid files .local/run/kafka-<N>.pid, logs .local/logs/kafka-<N>/.
# A node whose process is gone is started again; the others are left running.
start_cluster() {
  local n pid
  for n in "${CLUSTER_NODES[@]}"; do
    pid=$( (use_node "$n"; QUIET_STALE=1 our_pid kafka) )
    if [[ -n $pid ]]; then continue; fi
    (
      use_node "$n"
      port_open "$KAFKA_HOST" "$KAFKA_PORT" && die "something not started by make up listens on $KAFKA_HOST:$KAFKA_PORT (node $n's port)"
      start_kafka
    ) || exit 1
  done
}

# Every node alive with its port open, then a produce/consume round trip through the cluster.
wait_cluster() {
  local deadline=$((SECONDS + TIMEOUT)) n ok herr=$RUN_DIR/kafka-health.err last_note=$SECONDS
  while :; do
    ok=1
    for n in "${CLUSTER_NODES[@]}"; do
      if ! (use_node "$n"; [[ -n $(QUIET_STALE=1 our_pid kafka) ]]); then
        (
          use_node "$n"
          warn "error: Kafka node $n exited while starting. Last errors in $(rel "$KAFKA_LOG") and $(rel "$KAFKA_OUT"):"
          tail -n 15 "$KAFKA_OUT" >&2 2>/dev/null || true
          grep -E '\] (ERROR|FATAL) ' "$KAFKA_LOG" 2>/dev/null | tail -n 10 >&2 || true
        )
        exit 1
      fi
      port_open "$KAFKA_HOST" "$((${OPS_KAFKA_PORT:-9092} + n - 1))" || ok=0
    done
    if ((ok)); then
      : >"$herr"
      if KAFKA_BOOTSTRAP=$CLUSTER_BOOTSTRAP HEALTH_ERR=$herr kafka_answers; then
        say "kafka: three brokers answer (produce/consume round trip ok)"; return 0
      fi
    fi
    if ((SECONDS >= deadline)); then
      warn "error: the three-broker cluster did not answer within ${TIMEOUT}s; logs in $(rel "$LOG_DIR")/kafka-{1,2,3}/. Last health-check error:"
      tail -n 5 "$herr" >&2 2>/dev/null || true
      exit 1
    fi
    if ((SECONDS - last_note >= 10)); then
      last_note=$SECONDS; say "... waiting for the cluster ($((deadline - SECONDS))s left)"
    fi
    sleep 1
  done
}

cluster_status() {
  local n pid rc=0
  for n in "${CLUSTER_NODES[@]}"; do
    pid=$( (use_node "$n"; QUIET_STALE=1 our_pid kafka) )
    if [[ -n $pid ]]; then say "kafka  node $n  $KAFKA_HOST:$((${OPS_KAFKA_PORT:-9092} + n - 1))  running (pid $pid, log $(rel "$LOG_DIR/kafka-$n/kafka.log"))"
    else say "kafka  node $n  $KAFKA_HOST:$((${OPS_KAFKA_PORT:-9092} + n - 1))  NOT running (make up BROKERS=3 starts it)"; rc=1; fi
  done
  return $rc
}

# ----------------------------------------------------------------------------- the Redis Cluster
# `make up REDIS=cluster`: six redis-server nodes on 127.0.0.1:7000-7005 (ops/lib.sh), each with the
# single Redis's configuration plus cluster-enabled; joined once by `redis-cli --cluster create`
# (three primaries, a replica each). A node whose process is gone is started again (it rejoins from
# its nodes.conf); the others are left running.
start_redis_cluster() {
  local port pid
  ensure_redis_installed
  command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found (Debian's redis-tools, which redis-server depends on): the cluster is created with it"
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    pid=$( (use_redis_node "$port"; QUIET_STALE=1 our_pid redis) )
    if [[ -n $pid ]]; then continue; fi
    (
      use_redis_node "$port"
      port_open "$REDIS_HOST" "$REDIS_PORT" && die "something not started by make up listens on $REDIS_HOST:$REDIS_PORT (Redis Cluster node $port's port)"
      port_open "$REDIS_HOST" "$((REDIS_PORT + 10000))" && die "something not started by make up listens on $REDIS_HOST:$((REDIS_PORT + 10000)) (Redis Cluster node $port's bus port)"
      start_redis
    ) || exit 1
  done
}

# `CLUSTER INFO` of one node, one "field:value" a line (empty when it does not answer).
redis_cluster_info() { timeout 3 redis-cli -h "$REDIS_HOST" -p "$1" cluster info 2>/dev/null | tr -d '\r'; }
info_field() { sed -n "s/^$1://p" <<<"$2"; }

# Join the six nodes with `redis-cli --cluster create` when none of them knows another yet (a first
# start, or after the state was removed); leave a created cluster alone. A mix (some nodes joined,
# some that know nobody) means a node lost its nodes.conf: say how to start afresh.
ensure_redis_cluster_created() {
  local port info lone=() joined=() nodes=()
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    info=$(redis_cluster_info "$port")
    if [[ $(info_field cluster_known_nodes "$info") == 1 && $(info_field cluster_slots_assigned "$info") == 0 ]]; then
      lone+=("$port")
    else
      joined+=("$port")
    fi
    nodes+=("$REDIS_HOST:$port")
  done
  ((${#lone[@]})) || return 0
  if ((${#joined[@]})); then
    die "Redis Cluster nodes ${lone[*]} know no other node while ${joined[*]} form a cluster (a lost nodes.conf?). Start afresh: make down && rm -rf $(rel "$REDIS_CLUSTER_DIR"), then make up REDIS=cluster"
  fi
  say "redis: creating the cluster: three primaries, one replica each (redis-cli --cluster create; log $(rel "$LOG_DIR/redis-cluster-create.log"))"
  printf '\n==== %s ops/up.sh redis-cli --cluster create %s\n' "$(date -Is)" "${nodes[*]}" >>"$LOG_DIR/redis-cluster-create.log"
  if ! timeout 120 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
    >>"$LOG_DIR/redis-cluster-create.log" 2>&1 </dev/null 9>&-; then
    tail -n 15 "$LOG_DIR/redis-cluster-create.log" >&2
    die "redis-cli --cluster create failed (see $(rel "$LOG_DIR/redis-cluster-create.log"))"
  fi
}

# Every node of a cluster of six with three primaries says cluster_state:ok, and a key written
# through one node is read back through another (redis-cli -c follows the redirects).
redis_cluster_ok() {
  local port info token got
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    info=$(redis_cluster_info "$port")
    [[ $(info_field cluster_state "$info") == ok && $(info_field cluster_known_nodes "$info") == 6 &&
      $(info_field cluster_size "$info") == 3 ]] || return 1
  done
  token="vickrey-health-$$-$RANDOM-$(date +%s%N)"
  timeout 5 redis-cli -c -h "$REDIS_HOST" -p "${REDIS_CLUSTER_PORTS[0]}" set "__vickrey_healthcheck:$token" "$token" EX 60 >/dev/null 2>&1 || return 1
  got=$(timeout 5 redis-cli -c -h "$REDIS_HOST" -p "${REDIS_CLUSTER_PORTS[5]}" get "__vickrey_healthcheck:$token" 2>/dev/null | tr -d '\r')
  timeout 5 redis-cli -c -h "$REDIS_HOST" -p "${REDIS_CLUSTER_PORTS[0]}" del "__vickrey_healthcheck:$token" >/dev/null 2>&1 || true
  [[ $got == "$token" ]]
}

wait_redis_cluster() {
  local deadline=$((SECONDS + TIMEOUT)) port ok last_note=$SECONDS created=0
  while :; do
    ok=1
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
      if ! (use_redis_node "$port"; [[ -n $(QUIET_STALE=1 our_pid redis) ]]); then
        (
          use_redis_node "$port"
          warn "error: Redis Cluster node $port exited. Last lines of $(rel "$REDIS_LOG"):"
          tail -n 15 "$REDIS_LOG" >&2 2>/dev/null || true
        )
        exit 1
      fi
      (use_redis_node "$port"; redis_answers) || ok=0
    done
    if ((ok && !created)); then ensure_redis_cluster_created; created=1; fi
    if ((ok)) && redis_cluster_ok; then
      say "redis: the cluster answers (six nodes, three primaries, cluster_state ok, a key written and read)"; return 0
    fi
    if ((SECONDS >= deadline)); then
      warn "error: the Redis Cluster was not ok within ${TIMEOUT}s; logs $(rel "$LOG_DIR")/redis-70*.log. CLUSTER INFO of node ${REDIS_CLUSTER_PORTS[0]}:"
      redis_cluster_info "${REDIS_CLUSTER_PORTS[0]}" | grep -E 'cluster_(state|known_nodes|size|slots_ok)' >&2 || true
      exit 1
    fi
    if ((SECONDS - last_note >= 10)); then
      last_note=$SECONDS; say "... waiting for the Redis Cluster ($((deadline - SECONDS))s left)"
    fi
    sleep 0.5
  done
}

redis_cluster_status() {
  local port pid role rc=0 state=
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    pid=$( (use_redis_node "$port"; QUIET_STALE=1 our_pid redis) )
    if [[ -n $pid ]]; then
      role=$(timeout 3 redis-cli -h "$REDIS_HOST" -p "$port" role 2>/dev/null | head -n 1 | tr -d '\r')
      case $role in master) role=primary ;; slave) role=replica ;; "") role="not answering"; rc=1 ;; esac
      say "redis  node $port  $REDIS_HOST:$port  running, $role (pid $pid, log $(rel "$LOG_DIR/redis-$port.log"))"
      [[ -n $state ]] || state=$(info_field cluster_state "$(redis_cluster_info "$port")")
    else
      say "redis  node $port  $REDIS_HOST:$port  NOT running (make up REDIS=cluster starts it)"; rc=1
    fi
  done
  say "redis  cluster  $REDIS_CLUSTER_URL  cluster_state ${state:-unknown}"
  [[ $state == ok ]] || rc=1
  return $rc
}

# `make up` in one mode while the other runs: refuse, and say how to switch.
refuse_other_mode() {
  local single cluster again=make\ up
  [[ $BROKERS == 3 ]] && again+=" BROKERS=3"
  [[ $REDIS_MODE == cluster ]] && again+=" REDIS=cluster"
  single=$(QUIET_STALE=1 our_pid kafka)
  cluster=$(cluster_pids)
  if [[ $BROKERS == 3 && -n $single ]]; then
    die "a one-broker Kafka started by make up is running (pid $single); run 'make down' first, then '$again'"
  fi
  if [[ $BROKERS == 1 && -n $cluster ]]; then
    die "the three-broker Kafka cluster started by 'make up BROKERS=3' is running; run 'make down' first, then '$again'"
  fi
  single=$(QUIET_STALE=1 our_pid redis)
  cluster=$(redis_cluster_pids)
  if [[ $REDIS_MODE == cluster && -n $single ]]; then
    die "the single Redis started by make up is running ($REDIS_HOST:$REDIS_PORT, pid $single); run 'make down' first, then '$again'"
  fi
  if [[ $REDIS_MODE == single && -n $cluster ]]; then
    die "the Redis Cluster started by 'make up REDIS=cluster' is running; run 'make down' first, then '$again'"
  fi
}

# ------------------------------------------------------------------------------------------ main
# For each service: "ready" (answers), "wait" (ours or someone's, starting), or start it now.
plan() {
  local svc=$1 pid host port
  if [[ $svc == kafka ]]; then host=$KAFKA_HOST port=$KAFKA_PORT; else host=$REDIS_HOST port=$REDIS_PORT; fi
  pid=$(our_pid "$svc")
  if [[ $svc == kafka ]] && HEALTH_ERR=/dev/null kafka_answers; then echo ready; return; fi
  if [[ $svc == redis ]] && redis_answers; then echo ready; return; fi
  if [[ -n $pid ]]; then echo wait; return; fi           # ours, still starting (or stuck)
  if port_open "$host" "$port"; then echo foreign; return; fi  # someone else's, not answering yet
  echo start
}

wait_ready() {
  local deadline=$((SECONDS + TIMEOUT)) kafka_ok=$1 redis_ok=$2 pid last_note=$SECONDS
  local herr=$RUN_DIR/kafka-health.err
  while :; do
    if [[ $redis_ok != 1 ]] && redis_answers; then redis_ok=1; say "redis: answers PING"; fi
    if [[ $kafka_ok != 1 ]]; then
      : >"$herr"
      if HEALTH_ERR=$herr kafka_answers; then kafka_ok=1; say "kafka: produce/consume round trip ok"; fi
    fi
    [[ $kafka_ok == 1 && $redis_ok == 1 ]] && return 0
    # A foreign listener we were waiting for went away: start our own after all.
    if [[ $kafka_ok != 1 && $kafka_ours != 1 ]] && ! port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
      say "kafka: the other listener on $KAFKA_BOOTSTRAP is gone"; start_kafka; kafka_ours=1
    fi
    if [[ $redis_ok != 1 && $redis_ours != 1 ]] && ! port_open "$REDIS_HOST" "$REDIS_PORT"; then
      say "redis: the other listener on $REDIS_HOST:$REDIS_PORT is gone"; start_redis; redis_ours=1
    fi
    if [[ $kafka_ok != 1 && $kafka_ours == 1 ]]; then
      pid=$(QUIET_STALE=1 our_pid kafka)
      if [[ -z $pid ]]; then
        warn "error: the Kafka process exited while starting. Its output ($(rel "$KAFKA_OUT")) and errors ($(rel "$KAFKA_LOG")):"
        tail -n +"$((${KAFKA_OUT_MARK:-0} + 1))" "$KAFKA_OUT" 2>/dev/null | tail -n 15 >&2 || true
        tail -n +"$((${KAFKA_LOG_MARK:-0} + 1))" "$KAFKA_LOG" 2>/dev/null |
          grep -E '\] (ERROR|FATAL) |^[A-Za-z0-9_.$]+(Exception|Error)\b' | tail -n 15 >&2 || true
        exit 1
      fi
    fi
    if [[ $redis_ok != 1 && $redis_ours == 1 ]] && [[ -z $(QUIET_STALE=1 our_pid redis) ]] && ! redis_answers; then
      warn "error: redis-server exited while starting. Last lines of $(rel "$REDIS_LOG"):"
      tail -n 15 "$REDIS_LOG" >&2 2>/dev/null || true
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      [[ $redis_ok == 1 ]] || warn "error: Redis on $REDIS_HOST:$REDIS_PORT did not answer PING within ${TIMEOUT}s; see $(rel "$REDIS_LOG")"
      if [[ $kafka_ok != 1 ]]; then
        warn "error: Kafka on $KAFKA_BOOTSTRAP did not complete a produce/consume round trip within ${TIMEOUT}s; see $(rel "$KAFKA_LOG") (and $(rel "$KAFKA_OUT")). Last health-check error:"
        tail -n 5 "$herr" >&2 2>/dev/null || true
      fi
      [[ $kafka_ours == 1 || $redis_ours == 1 ]] || warn "(these were not started by make up: something else holds the port)"
      exit 1
    fi
    if ((SECONDS - last_note >= 10)); then
      last_note=$SECONDS
      say "... waiting ($((deadline - SECONDS))s left):$([[ $kafka_ok == 1 ]] || echo " kafka")$([[ $redis_ok == 1 ]] || echo " redis")"
    fi
    sleep 1
  done
}

main() {
  case ${1:-} in
    --status|status) status; exit $? ;;
    "" ) ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (use --status or nothing)" ;;
  esac
  [[ $BROKERS == 1 || $BROKERS == 3 ]] || die "BROKERS=$BROKERS: use 1 (the default) or 3"
  [[ $REDIS_MODE == single || $REDIS_MODE == cluster ]] || die "REDIS=$REDIS_MODE: use single (the default) or cluster"
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$KAFKA_DIR" "$REDIS_DIR"
  take_lock
  refuse_other_mode
  local t0=$SECONDS kplan rplan kafka_ok=0 redis_ok=0
  kafka_ours=0 redis_ours=0
  if [[ $REDIS_MODE == cluster ]]; then
    rplan=ready  # the cluster is started here and waited for below
    start_redis_cluster
  else
    rplan=$(plan redis)
  fi
  if [[ $BROKERS == 3 ]]; then
    kplan=ready  # the cluster is started and waited for below
    start_cluster
  else
    kplan=$(plan kafka)
  fi
  case $rplan in
    ready) redis_ok=1 ;;
    start) start_redis; redis_ours=1 ;;
    wait) redis_ours=1; say "redis: ours (pid $(our_pid redis)) is running but does not answer yet; waiting" ;;
    foreign) say "redis: something not started by make up listens on $REDIS_HOST:$REDIS_PORT but does not answer PING; waiting" ;;
  esac
  case $kplan in
    ready) kafka_ok=1 ;;
    start) start_kafka; kafka_ours=1 ;;
    wait) kafka_ours=1; say "kafka: ours (pid $(our_pid kafka)) is running but does not answer yet; waiting" ;;
    foreign) say "kafka: something not started by make up listens on $KAFKA_BOOTSTRAP but does not answer; waiting" ;;
  esac
  if [[ $kafka_ok != 1 || $redis_ok != 1 ]]; then
    say "waiting up to ${TIMEOUT}s for them to answer ..."
    wait_ready "$kafka_ok" "$redis_ok"
  fi
  [[ $BROKERS == 3 ]] && wait_cluster
  [[ $REDIS_MODE == cluster ]] && wait_redis_cluster
  # shellcheck disable=SC2034  # read by our_pid in lib.sh
  QUIET_STALE=1
  say "ready in $((SECONDS - t0))s:"
  if [[ $BROKERS == 3 ]]; then
    say "  kafka  $CLUSTER_BOOTSTRAP (three brokers; every topic replicated 3x, min.insync.replicas 2)"
    say "         export VICKREY_KAFKA=$CLUSTER_BOOTSTRAP"
  else
    say "  kafka  $KAFKA_BOOTSTRAP$(owner "$(our_pid kafka)" "$KAFKA_LOG")"
  fi
  if [[ $REDIS_MODE == cluster ]]; then
    say "  redis  $REDIS_CLUSTER_URL (Redis Cluster: three primaries, a replica each)"
    say "         export VICKREY_REDIS=$REDIS_CLUSTER_URL"
  else
    say "  redis  redis://$REDIS_HOST:$REDIS_PORT/0$(owner "$(our_pid redis)" "$REDIS_LOG")"
  fi
  say "  stop with: make down    state: $(rel "$LOCAL")/    Kafka CLI: bash ops/kafka-cli.sh topics --list"
}

main "$@"
