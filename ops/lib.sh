# shellcheck shell=bash disable=SC2034,SC2016
# Shared by ops/up.sh, ops/down.sh and ops/kafka-cli.sh: paths, ports, "is it ours?", health checks.
# Sourced, not run. Everything lives in the checkout's ignored .local/ folder.

OPS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$OPS_DIR/.." && pwd)
LOCAL=${OPS_LOCAL_DIR:-$ROOT/.local}
RUN_DIR=$LOCAL/run
LOG_DIR=$LOCAL/logs
KAFKA_DIR=$LOCAL/kafka
KAFKA_LIBS=$KAFKA_DIR/libs
KAFKA_DATA=$KAFKA_DIR/data
KAFKA_CONF=$KAFKA_DIR/server.properties
KAFKA_PIDFILE=$RUN_DIR/kafka.pid
KAFKA_LOG=$LOG_DIR/kafka.log
KAFKA_OUT=$LOG_DIR/kafka.out
REDIS_DIR=$LOCAL/redis
REDIS_CONF=$REDIS_DIR/redis.conf
REDIS_PIDFILE=$RUN_DIR/redis.pid
REDIS_LOG=$LOG_DIR/redis.log

# The contract (docs/contract.md §2) is 127.0.0.1:9092 and 127.0.0.1:6379. The OPS_* overrides exist only
# so these scripts can be tested next to a running stack (another checkout, other ports).
KAFKA_HOST=127.0.0.1
KAFKA_PORT=${OPS_KAFKA_PORT:-9092}
# Controllers listen 10000 above their broker (19092, and 19093-19094 in the cluster): never on
# a port a broker of either mode uses, so the two modes cannot collide (docs/contract.md §9).
KAFKA_CONTROLLER_PORT=${OPS_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 10000))}
KAFKA_BOOTSTRAP=$KAFKA_HOST:$KAFKA_PORT
KAFKA_LOGS_DIR=$LOG_DIR
# The three-broker cluster (`make up BROKERS=3`): node N serves clients on KAFKA_PORT+N-1.
CLUSTER_DIR=$KAFKA_DIR/cluster
CLUSTER_NODES=(1 2 3)
CLUSTER_BOOTSTRAP=$KAFKA_HOST:$KAFKA_PORT,$KAFKA_HOST:$((KAFKA_PORT + 1)),$KAFKA_HOST:$((KAFKA_PORT + 2))
REDIS_HOST=127.0.0.1
REDIS_PORT=${OPS_REDIS_PORT:-6379}
# Redis Cluster (`make up REDIS=cluster`), instead of the single Redis: six nodes (three primaries,
# three replicas) on 127.0.0.1:7000-7005, their cluster bus 10000 above (17000-17005). Node <port>
# works in redis/cluster/<port>/ (redis.conf, nodes.conf, appendonlydir), pid file run/redis-<port>.pid,
# log logs/redis-<port>.log.
REDIS_CLUSTER_DIR=$REDIS_DIR/cluster
REDIS_CLUSTER_PORTS=()
for _n in 0 1 2 3 4 5; do REDIS_CLUSTER_PORTS+=($((${OPS_REDIS_CLUSTER_PORT:-7000} + _n))); done
unset _n
REDIS_CLUSTER_URL=redis+cluster://$(IFS=,; printf '%s' "${REDIS_CLUSTER_PORTS[*]/#/$REDIS_HOST:}")
HEALTH_TOPIC=__vickrey_healthcheck
INSTALL_HINT="apt-get install -y openjdk-17-jre-headless maven"

# Point the kafka_* functions at node N of the cluster: its ports, configuration, data, pid, logs.
use_node() {
  local n=$1
  NODE_ID=$n
  KAFKA_PORT=$((${OPS_KAFKA_PORT:-9092} + n - 1))
  KAFKA_CONTROLLER_PORT=$((${OPS_KAFKA_PORT:-9092} + 10000 + n - 1))
  KAFKA_CONF=$CLUSTER_DIR/node$n/server.properties
  KAFKA_DATA=$CLUSTER_DIR/node$n/data
  KAFKA_PIDFILE=$RUN_DIR/kafka-$n.pid
  KAFKA_LOGS_DIR=$LOG_DIR/kafka-$n
  KAFKA_LOG=$KAFKA_LOGS_DIR/kafka.log
  KAFKA_OUT=$KAFKA_LOGS_DIR/kafka.out
}

# Point the redis_* functions at the Redis Cluster node on `port`: its directory, configuration, pid, log.
use_redis_node() {
  REDIS_NODE=$1
  REDIS_PORT=$1
  REDIS_DIR=$REDIS_CLUSTER_DIR/$1
  REDIS_CONF=$REDIS_DIR/redis.conf
  REDIS_PIDFILE=$RUN_DIR/redis-$1.pid
  REDIS_LOG=$LOG_DIR/redis-$1.log
}

# Live pids of the Redis Cluster's nodes that make up started, one per line as "<port> <pid>".
redis_cluster_pids() {
  local port pid
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    pid=$( (use_redis_node "$port"; QUIET_STALE=1 our_pid redis) )
    [[ -n $pid ]] && printf '%s %s\n' "$port" "$pid"
  done
  return 0
}

# Live pids of the cluster's nodes that make up started, one per line as "<node> <pid>".
cluster_pids() {
  local n pid
  for n in "${CLUSTER_NODES[@]}"; do
    pid=$( (use_node "$n"; QUIET_STALE=1 our_pid kafka) )
    [[ -n $pid ]] && printf '%s %s\n' "$n" "$pid"
  done
  return 0
}

say() { printf '%s\n' "$*"; }
warn() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Path relative to the checkout when inside it (shorter messages).
rel() { case $1 in "$ROOT"/*) printf '%s' "${1#"$ROOT"/}" ;; *) printf '%s' "$1" ;; esac; }

# Serialise up/down: several engineers (and parallel `make test` runs) may call `make up` at once.
take_lock() {
  mkdir -p "$RUN_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$RUN_DIR/ops.lock"
    if ! flock -w 300 9; then die "another ops/up.sh or ops/down.sh has held $(rel "$RUN_DIR/ops.lock") for 5 minutes"; fi
  fi
}

# A pid that exists and is not a zombie (in containers, PID 1 may never reap a killed broker).
pid_alive() {
  local pid=$1 stat
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

read_pidfile() { local p; p=$(head -c 32 "$1" 2>/dev/null | tr -dc 0-9); printf '%s' "$p"; }

cmdline_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null; }

# Ours = alive, and it is the java running kafka.Kafka on OUR server.properties.
kafka_pid_is_ours() {
  local pid=$1 cmd
  pid_alive "$pid" || return 1
  cmd=$(cmdline_of "$pid")
  [[ $cmd == *java* && $cmd == *" kafka.Kafka $KAFKA_CONF"* ]]
}

# Ours = alive, a redis-server (Redis rewrites its process title, and on Debian the binary is a
# symlink to redis-check-rdb), working in OUR .local/redis (the `dir` of our redis.conf).
redis_pid_is_ours() {
  local pid=$1 cmd cwd
  pid_alive "$pid" || return 1
  cmd=$(cmdline_of "$pid")
  [[ $cmd == redis-server* || $cmd == */redis-server* ]] || return 1
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
  [[ $cwd == "$(cd "$REDIS_DIR" 2>/dev/null && pwd -P)" ]]
}

# Prints our live pid for a service (kafka|redis), or nothing (and removes a stale pid file).
our_pid() {
  local svc=$1 pidfile pid
  if [[ $svc == kafka ]]; then pidfile=$KAFKA_PIDFILE; else pidfile=$REDIS_PIDFILE; fi
  [[ -f $pidfile ]] || return 0
  pid=$(read_pidfile "$pidfile")
  if [[ -n $pid ]] && "${svc}_pid_is_ours" "$pid"; then
    printf '%s' "$pid"
  else
    rm -f "$pidfile"
    [[ ${QUIET_STALE:-} ]] || warn "($svc: removed stale pid file $(rel "$pidfile")${pid:+, pid $pid is gone or is not ours})"
  fi
}

port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

redis_answers() {
  local out
  if command -v redis-cli >/dev/null 2>&1; then
    out=$(timeout 3 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null) || return 1
    [[ $out == PONG ]]
  else
    # RESP by hand: an inline PING answers "+PONG\r\n".
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1; printf "PING\r\n" >&3; IFS= read -r l <&3; [[ ${l%$'"'"'\r'"'"'} == +PONG ]]' \
      "$REDIS_HOST" "$REDIS_PORT" 2>/dev/null
  fi
}

java_major() {
  local v
  v=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
  v=${v#1.}
  printf '%s' "${v%%[.+-]*}"
}

# Runs a Kafka command-line class from the cached jars (quick-starting JVM, warnings to stderr only):
#   "${KAFKA_TOOL[@]}" org.apache.kafka.tools.TopicCommand --list ...   (an array, so `timeout` can run it)
KAFKA_TOOL=(java -Xms64m -Xmx512m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$OPS_DIR/kafka/tools-log4j2.yaml" -cp "$KAFKA_LIBS/*")

# A real produce -> consume round trip through $HEALTH_TOPIC (auto-created on first use), partition 0.
# kcat when present (fast); otherwise a Kafka tool from the cached jars (a JVM start, ~1.5 s).
# Returns 0 when the token produced now is read back. Diagnostics go to $HEALTH_ERR when set.
kafka_answers() {
  local err=${HEALTH_ERR:-/dev/null} token
  port_open "$KAFKA_HOST" "$KAFKA_PORT" || { echo "nothing listens on $KAFKA_BOOTSTRAP" >>"$err"; return 1; }
  token="vickrey-health-$(hostname 2>/dev/null || echo host)-$$-$RANDOM-$(date +%s%N)"
  local tool=${OPS_HEALTH_TOOL:-auto}   # auto | kcat | java (to test the fallback)
  if [[ $tool == auto ]]; then if command -v kcat >/dev/null 2>&1; then tool=kcat; else tool=java; fi; fi
  if [[ $tool == kcat ]]; then
    printf '%s\n' "$token" | timeout 15 kcat -b "$KAFKA_BOOTSTRAP" -P -t "$HEALTH_TOPIC" -p 0 \
      -X message.timeout.ms=10000 -X socket.connection.setup.timeout.ms=3000 >>"$err" 2>&1 || return 1
    timeout 15 kcat -b "$KAFKA_BOOTSTRAP" -C -t "$HEALTH_TOPIC" -p 0 -o -25 -e -q \
      -X socket.connection.setup.timeout.ms=3000 2>>"$err" | grep -qxF "$token"
  elif [[ -f $KAFKA_LIBS/.complete ]] && command -v java >/dev/null 2>&1; then
    # No kcat: Kafka's EndToEndLatency tool produces one record and checks it reads the same bytes
    # back (creating the topic when missing) -- one JVM, about 1.5 s.
    timeout 30 "${KAFKA_TOOL[@]}" org.apache.kafka.tools.EndToEndLatency "$KAFKA_BOOTSTRAP" "$HEALTH_TOPIC" 1 all 64 >>"$err" 2>&1
  else
    # Neither kcat nor the jars (Kafka not started by us): settle for "the port accepts connections".
    echo "(no kcat and no cached Kafka jars: only checked that $KAFKA_BOOTSTRAP accepts connections)" >>"$err"
    return 0
  fi
}
