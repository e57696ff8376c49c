#!/usr/bin/env bash
# Stop what ops/up.sh started -- and nothing else. A service counts as ours only when its pid file
# in .local/run/ names a live process that is still our broker / our redis-server (checked through
# /proc, so a recycled pid or a Kafka/Redis started some other way is never touched).
# Graceful: SIGTERM, wait up to OPS_STOP_TIMEOUT seconds (default 30), then SIGKILL.
# Data (.local/kafka/data, .local/redis, the Redis Cluster's .local/redis/cluster) is kept;
# `rm -rf .local/kafka/data .local/redis` resets it.
set -euo pipefail
# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STOP_TIMEOUT=${OPS_STOP_TIMEOUT:-30}

stop_one() {
  local svc=$1 pidfile addr pid i label=${SVC_LABEL:-$1}
  if [[ $svc == kafka ]]; then pidfile=$KAFKA_PIDFILE addr=$KAFKA_BOOTSTRAP; else pidfile=$REDIS_PIDFILE addr=$REDIS_HOST:$REDIS_PORT; fi
  pid=$(our_pid "$svc")
  if [[ -z $pid ]]; then
    if port_open "${addr%:*}" "${addr##*:}"; then
      say "$label: something listens on $addr but make up did not start it -- left running"
    else
      say "$label: not running (nothing to stop)"
    fi
    return 0
  fi
  say "$label: stopping pid $pid (SIGTERM) ..."
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
    pid_alive "$pid" || break
    sleep 0.2
  done
  if pid_alive "$pid"; then
    say "$label: still running after ${STOP_TIMEOUT}s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    pid_alive "$pid" && { warn "error: $label pid $pid survived SIGKILL"; return 1; }
    say "$label: killed (data kept; it recovers its logs on the next make up)"
  else
    say "$label: stopped cleanly after $(((i + 4) / 5))s"
  fi
  rm -f "$pidfile"
}

main() {
  mkdir -p "$RUN_DIR"
  take_lock
  local rc=0 n
  if [[ -n $(cluster_pids) ]]; then  # the three-broker cluster of `make up BROKERS=3`
    # All at once: one by one, the last broker waits out STOP_TIMEOUT for a controller quorum
    # that its stopped peers no longer give it.
    local -a stopping=()
    for n in "${CLUSTER_NODES[@]}"; do
      (use_node "$n"; SVC_LABEL="kafka node $n" stop_one kafka) &
      stopping+=($!)
    done
    for n in "${stopping[@]}"; do wait "$n" || rc=1; done
  fi
  stop_one kafka || rc=1
  if [[ -n $(redis_cluster_pids) ]]; then  # the Redis Cluster of `make up REDIS=cluster`, all at once
    local port
    local -a stopping_redis=()
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
      (use_redis_node "$port"; SVC_LABEL="redis node $port" stop_one redis) &
      stopping_redis+=($!)
    done
    for port in "${stopping_redis[@]}"; do wait "$port" || rc=1; done
  fi
  stop_one redis || rc=1
  return $rc
}

main "$@"
