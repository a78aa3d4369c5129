#!/usr/bin/env bash
# Local real services for `make test`: a single-node Apache Kafka (KRaft, broker+controller in one JVM)
# and a Redis, both bound to 127.0.0.1 only. No Docker: Kafka's jars come from Maven Central via
# deploy/local/kafka-pom.xml (cached under .cache/kafka-libs/<version>/), redis-server from apt if missing.
#
# Kafka has two client listeners: PLAINTEXT on the broker port and SASL_SSL on the SASL port (mechanisms
# SCRAM-SHA-512 and PLAIN, one user `npspulse` for both). Each start makes a throwaway CA and a broker
# certificate for 127.0.0.1/localhost (keytool, under .cache/run/kafka/tls/) and a random password, kept
# in .cache/run/services.env (mode 600) and shown only by `env`. Inter-broker traffic stays PLAINTEXT.
#
# Usage: deploy/local/services.sh start|stop|status|env|restart-kafka
#
# `restart-kafka` stops the running broker (SIGTERM, like `stop`) and starts it again on the same ports with
# the same data, cluster and SASL user (a fresh TLS certificate and CA in the same files); Redis is left alone.
# For fault tests: NPSPULSE_KAFKA_DOWN_SECONDS (default 0) keeps the broker down that long in between.
#
# `env` prints exports for the tests:
#   NPSPULSE_KAFKA_BOOTSTRAP             PLAINTEXT bootstrap, 127.0.0.1:<broker port>
#   NPSPULSE_REDIS_URL                   redis://127.0.0.1:<redis port>/0
#   NPSPULSE_TEST_SASL_SSL_BOOTSTRAP     SASL_SSL bootstrap, 127.0.0.1:<SASL port>
#   NPSPULSE_TEST_SASL_USERNAME          the SASL user (SCRAM-SHA-512 and PLAIN)
#   NPSPULSE_TEST_SASL_PASSWORD          its password (random per start)
#   NPSPULSE_TEST_SSL_CAFILE             PEM file of the CA that signed the broker certificate
#
# Environment:
#   NPSPULSE_KAFKA_PORT             broker port (default 19092)
#   NPSPULSE_KAFKA_CONTROLLER_PORT  KRaft controller port (default: broker port + 1)
#   NPSPULSE_KAFKA_SASL_PORT        SASL_SSL listener port (default: broker port + 2)
#   NPSPULSE_REDIS_PORT             redis port (default 6390)
#   NPSPULSE_KAFKA_HEAP             JVM heap flags (default "-Xms256m -Xmx768m")
#   NPSPULSE_READY_TIMEOUT          seconds to wait for each service to answer (default 90)
#   NPSPULSE_STOP_TIMEOUT           seconds between SIGTERM and SIGKILL for Kafka (default 20)
#   PYTHON                          interpreter with confluent_kafka for the readiness probe
#                                   (default .venv/bin/python; falls back to a TCP check)
#   JAVA_HOME                       optional; otherwise `java` from PATH
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
POM="$SCRIPT_DIR/kafka-pom.xml"
CACHE_DIR="$ROOT/.cache"
RUN_DIR="$CACHE_DIR/run"
STATE_FILE="$RUN_DIR/services.env"

READY_TIMEOUT="${NPSPULSE_READY_TIMEOUT:-90}"
STOP_TIMEOUT="${NPSPULSE_STOP_TIMEOUT:-20}"
KAFKA_HEAP="${NPSPULSE_KAFKA_HEAP:--Xms256m -Xmx768m}"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# The one place the Kafka version lives is the pom's <kafka.version> property.
kafka_version() {
  local v
  v="$(sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' "$POM" | head -n1)"
  [[ -n "$v" ]] || die "could not read <kafka.version> from $POM"
  printf '%s' "$v"
}

# Ports (and the SASL credentials): while services run, the values recorded at start win (so `env`/`stop`
# from another shell agree).
load_ports() {
  KAFKA_PORT="${NPSPULSE_KAFKA_PORT:-19092}"
  CONTROLLER_PORT="${NPSPULSE_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
  SASL_PORT="${NPSPULSE_KAFKA_SASL_PORT:-$((KAFKA_PORT + 2))}"
  SASL_USERNAME="npspulse"
  SASL_PASSWORD=""
  REDIS_PORT="${NPSPULSE_REDIS_PORT:-6390}"
  if [[ -f "$STATE_FILE" ]]; then
    # shellcheck disable=SC1090
    source "$STATE_FILE"
  fi
}

# A JDK tool (java, keytool): from $JAVA_HOME if set, else from PATH; dies with the hint if missing.
jdk_tool() {  # name, hint
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/$1" ]]; then
    printf '%s' "$JAVA_HOME/bin/$1"
  elif command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  else
    die "$1 not found ($2)"
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Alive = exists and is not a zombie (daemons get re-parented; in containers PID 1 may reap them late).
pid_alive() {
  local stat
  [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0   # no procfs: trust kill -0
  stat="${stat##*) }"
  [[ "${stat%% *}" != "Z" ]]
}

# Only trust a pid file if the process still looks like ours (guards against pid reuse).
read_pid() {  # file, pattern-in-cmdline
  local file="$1" pattern="$2" pid
  [[ -f "$file" ]] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  pid_alive "$pid" || return 1
  if [[ -r "/proc/$pid/cmdline" ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"; then
    return 1
  fi
  printf '%s' "$pid"
}

# --------------------------------------------------------------------------------------------- Kafka

ensure_kafka_libs() {
  local version libs tmp
  version="$(kafka_version)"
  libs="$CACHE_DIR/kafka-libs/$version"
  KAFKA_LIBS="$libs"
  if [[ -f "$libs/.complete" && -f "$libs/kafka_2.13-$version.jar" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found; needed once to fetch Kafka $version jars (apt-get install -y maven)"
  log "fetching Apache Kafka $version jars from Maven Central into ${libs#"$ROOT"/} (one-time) ..."
  mkdir -p "$CACHE_DIR/kafka-libs"
  tmp="$(mktemp -d "$CACHE_DIR/kafka-libs/.fetch-$version.XXXXXX")"
  local t0=$SECONDS
  if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
    cat "$tmp.log" >&2 || true
    rm -rf "$tmp" "$tmp.log"
    die "maven could not fetch the Kafka jars (see output above)"
  fi
  [[ -f "$tmp/kafka_2.13-$version.jar" ]] || { rm -rf "$tmp" "$tmp.log"; die "kafka_2.13-$version.jar missing after fetch"; }
  touch "$tmp/.complete"
  rm -rf "$libs" "$tmp.log"
  mv "$tmp" "$libs"   # atomic-ish: a half-finished fetch never looks complete
  log "fetched $(find "$libs" -name '*.jar' | wc -l) jars in $((SECONDS - t0))s"
}

write_kafka_config() {
  local dir="$1" keystore_password="$2"
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
# generated by deploy/local/services.sh; single-node KRaft (combined broker+controller) on loopback
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${CONTROLLER_PORT}
listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT},CONTROLLER://127.0.0.1:${CONTROLLER_PORT},SASL_SSL://127.0.0.1:${SASL_PORT}
advertised.listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT},SASL_SSL://127.0.0.1:${SASL_PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
# SASL_SSL: server certificate only (no client certificates); SCRAM users live in the cluster metadata
# (added at format time), PLAIN users in the JAAS line.
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=${dir}/tls/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=${keystore_password}
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_${SASL_USERNAME}="${SASL_PASSWORD}";
log.dirs=${dir}/data
auto.create.topics.enable=true
delete.topic.enable=true
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=1
EOF
  cat >"$dir/log4j.properties" <<EOF
# everything goes to ${dir}/server.log, nothing to the terminal
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=${dir}/server.log
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.authorizer.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.kafka.log.LogCleaner=WARN
EOF
}

# Alphanumeric only: safe inside the JAAS line, the --add-scram argument and shell exports.
random_secret() {
  local secret
  secret="$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  printf '%s' "${secret:0:32}"
}

# A throwaway CA (ca.pem, for clients) and the broker's key + certificate chain (broker.p12) with
# SAN IP:127.0.0.1 and DNS:localhost, so clients verify the hostname they dial. EC keys and parallel
# keytool runs keep this to a couple of seconds; it runs while the storage is formatted.
generate_tls() {  # dir, keystore password
  local dir="$1" pass="$2" keytool kt first second
  keytool="$(jdk_tool keytool "it ships with the JDK/JRE that runs Kafka")"
  kt=("$keytool" -J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC)
  mkdir -p "$dir"
  "${kt[@]}" -genkeypair -alias ca -keyalg EC -groupname secp256r1 -validity 30 -dname "CN=npspulse local test CA" \
    -ext bc:c -ext ku:c=keyCertSign,cRLSign -keystore "$dir/ca.p12" -storetype PKCS12 -storepass "$pass" &
  first=$!
  "${kt[@]}" -genkeypair -alias broker -keyalg EC -groupname secp256r1 -validity 30 -dname "CN=127.0.0.1" \
    -keystore "$dir/broker.p12" -storetype PKCS12 -storepass "$pass" &
  second=$!
  wait "$first"
  wait "$second"
  "${kt[@]}" -exportcert -rfc -alias ca -keystore "$dir/ca.p12" -storepass "$pass" -file "$dir/ca.pem" &
  first=$!
  "${kt[@]}" -certreq -alias broker -keystore "$dir/broker.p12" -storepass "$pass" |
    "${kt[@]}" -gencert -rfc -alias ca -keystore "$dir/ca.p12" -storepass "$pass" -outfile "$dir/broker.pem" \
      -validity 30 -ext "SAN=IP:127.0.0.1,DNS:localhost" -ext ku:c=digitalSignature -ext eku=serverAuth
  wait "$first"
  cat "$dir/broker.pem" "$dir/ca.pem" >"$dir/broker-chain.pem"
  "${kt[@]}" -importcert -noprompt -alias broker -file "$dir/broker-chain.pem" -keystore "$dir/broker.p12" \
    -storepass "$pass"
  rm -f "$dir/ca.p12"   # the CA key is not needed once the broker certificate is signed
  [[ -s "$dir/ca.pem" && -s "$dir/broker.p12" ]]
}

# Kafka's Uuid: 16 random bytes, URL-safe base64 without padding; Kafka itself re-rolls ids starting with '-'.
random_cluster_id() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ ${#id} -eq 22 && "$id" != -* ]] && { printf '%s' "$id"; return; }
  done
}

kafka_log_tail() {
  local dir="$RUN_DIR/kafka"
  for f in "$dir/tls.log" "$dir/format.log" "$dir/kafka.out" "$dir/server.log"; do
    [[ -s "$f" ]] || continue
    printf -- '----- tail %s -----\n' "${f#"$ROOT"/}" >&2
    tail -n 40 "$f" >&2
  done
}

pick_probe_python() {
  local candidates=() c
  if [[ -n "${PYTHON:-}" ]]; then candidates+=("$PYTHON"); fi
  candidates+=("$ROOT/.venv/bin/python")
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import confluent_kafka' >/dev/null 2>&1; then
      printf '%s' "$c"
      return 0
    fi
  done
  return 1
}

# A real metadata request: the broker must list itself (i.e. it registered with the KRaft controller).
# With a second argument, the same over SASL_SSL (SCRAM-SHA-512, CA-verified; credentials from the env).
PROBE_PY='
import os, sys
from confluent_kafka.admin import AdminClient
a = AdminClient({"bootstrap.servers": sys.argv[1], "socket.timeout.ms": 3000, "log_level": 0})
md = a.list_topics(timeout=3)
if md.brokers and len(sys.argv) > 2:
    a = AdminClient({"bootstrap.servers": sys.argv[2], "security.protocol": "SASL_SSL",
                     "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": os.environ["PROBE_SASL_USERNAME"],
                     "sasl.password": os.environ["PROBE_SASL_PASSWORD"], "ssl.ca.location": os.environ["PROBE_CAFILE"],
                     "socket.timeout.ms": 3000, "log_level": 0})
    md = a.list_topics(timeout=3)
sys.exit(0 if md.brokers else 1)
'

start_kafka() {
  local java version dir cluster_id pid probe_py deadline keystore_password tls_pid
  java="$(jdk_tool java "need Java 11+ for Kafka; e.g. apt-get install -y openjdk-17-jre-headless")"
  ensure_kafka_libs
  version="$(kafka_version)"
  dir="$RUN_DIR/kafka"
  keystore_password="$(random_secret)"
  write_kafka_config "$dir" "$keystore_password"
  generate_tls "$dir/tls" "$keystore_password" >"$dir/tls.log" 2>&1 &
  tls_pid=$!

  # A fresh start wipes the run dir; a restart (restart-kafka) keeps the data and so its cluster id.
  cluster_id="$(sed -n 's/^cluster\.id=//p' "$dir/data/meta.properties" 2>/dev/null || true)"
  [[ -n "$cluster_id" ]] || cluster_id="$(random_cluster_id)"
  if ! "$java" -Xmx256m -XX:TieredStopAtLevel=1 -Dlog4j.configuration="file:$dir/log4j.properties" \
      -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$dir/server.properties" --ignore-formatted \
      --add-scram "SCRAM-SHA-512=[name=$SASL_USERNAME,password=$SASL_PASSWORD]" >"$dir/format.log" 2>&1; then
    wait "$tls_pid" || true
    kafka_log_tail
    die "kafka-storage format failed"
  fi
  if ! wait "$tls_pid"; then
    kafka_log_tail
    die "generating the TLS CA and broker certificate with keytool failed"
  fi

  log "starting Kafka $version (KRaft) on 127.0.0.1:$KAFKA_PORT, SASL_SSL :$SASL_PORT (controller :$CONTROLLER_PORT), cluster id $cluster_id"
  # shellcheck disable=SC2086  # KAFKA_HEAP is a list of JVM flags
  nohup "$java" $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dkafka.logs.dir="$dir" -Dlog4j.configuration="file:$dir/log4j.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" \
    </dev/null >"$dir/kafka.out" 2>&1 &
  pid=$!
  echo "$pid" >"$RUN_DIR/kafka.pid"

  probe_py="$(pick_probe_python || true)"
  if [[ -z "$probe_py" ]]; then
    log "no python with confluent_kafka (PYTHON=${PYTHON:-unset}, .venv/bin/python); using a TCP check for readiness"
  fi
  deadline=$((SECONDS + READY_TIMEOUT))
  while :; do
    if ! pid_alive "$pid"; then
      kafka_log_tail
      die "Kafka exited during startup"
    fi
    if port_in_use "$KAFKA_PORT" && port_in_use "$SASL_PORT"; then
      if [[ -n "$probe_py" ]]; then
        if PROBE_SASL_USERNAME="$SASL_USERNAME" PROBE_SASL_PASSWORD="$SASL_PASSWORD" PROBE_CAFILE="$dir/tls/ca.pem" \
            timeout 10 "$probe_py" -c "$PROBE_PY" "127.0.0.1:$KAFKA_PORT" "127.0.0.1:$SASL_PORT" >/dev/null 2>&1; then
          break
        fi
      else
        sleep 3   # port open is not the same as ready; give the broker a moment to register/unfence
        pid_alive "$pid" && break
      fi
    fi
    if ((SECONDS >= deadline)); then
      kafka_log_tail
      die "Kafka did not become ready within ${READY_TIMEOUT}s"
    fi
    sleep 0.5
  done
  log "Kafka ready (pid $pid)"
}

stop_kafka() {
  local pid i
  pid="$(read_pid "$RUN_DIR/kafka.pid" "kafka.Kafka")" || { rm -f "$RUN_DIR/kafka.pid"; return 0; }
  log "stopping Kafka (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    pid_alive "$pid" || break
    sleep 0.1
  done
  if pid_alive "$pid"; then
    log "Kafka did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  fi
  rm -f "$RUN_DIR/kafka.pid"
}

# --------------------------------------------------------------------------------------------- Redis

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "redis-server is not installed and we are not root (install redis-server)"
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || die "redis-server is not installed and apt-get is unavailable (install redis-server)"
  log "installing redis-server with apt-get (one-time) ..."
  local aptlog
  aptlog="$(mktemp)"
  if ! { "${sudo[@]}" apt-get update -qq &&
         "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; } \
       >"$aptlog" 2>&1; then
    cat "$aptlog" >&2
    rm -f "$aptlog"
    die "apt-get install redis-server failed"
  fi
  rm -f "$aptlog"
  command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get install"
}

start_redis() {
  local dir="$RUN_DIR/redis" deadline
  ensure_redis
  mkdir -p "$dir"
  log "starting Redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$REDIS_PORT"
  # --daemonize: redis-server forks and returns once the listener is set up; pidfile is the daemon's pid.
  if ! redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
      --save '' --appendonly no --dir "$dir" \
      --daemonize yes --pidfile "$RUN_DIR/redis.pid" --logfile "$dir/redis.log" >"$dir/start.out" 2>&1; then
    cat "$dir/start.out" >&2
    die "redis-server failed to start"
  fi
  deadline=$((SECONDS + READY_TIMEOUT))
  until [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]; do
    if ((SECONDS >= deadline)); then
      tail -n 40 "$dir/redis.log" >&2 || true
      die "Redis did not answer PING within ${READY_TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "Redis ready (pid $(cat "$RUN_DIR/redis.pid" 2>/dev/null || echo '?'))"
}

stop_redis() {
  local pid i
  pid="$(read_pid "$RUN_DIR/redis.pid" "redis-server")" || { rm -f "$RUN_DIR/redis.pid"; return 0; }
  log "stopping Redis (pid $pid)"
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  fi
  for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$RUN_DIR/redis.pid"
}

# --------------------------------------------------------------------------------------------- commands

cmd_start() {
  # Leftovers from an interrupted run: stop them (using their recorded ports) before wiping the run dir.
  if [[ -d "$RUN_DIR" ]]; then
    load_ports
    stop_kafka
    stop_redis
  fi
  unset KAFKA_PORT CONTROLLER_PORT SASL_PORT SASL_USERNAME SASL_PASSWORD REDIS_PORT
  rm -f "$STATE_FILE"
  load_ports   # fresh values from the environment / defaults

  local p
  for p in "$KAFKA_PORT" "$CONTROLLER_PORT" "$SASL_PORT" "$REDIS_PORT"; do
    if port_in_use "$p"; then
      die "port $p on 127.0.0.1 is already in use (override with NPSPULSE_KAFKA_PORT / NPSPULSE_KAFKA_CONTROLLER_PORT / NPSPULSE_KAFKA_SASL_PORT / NPSPULSE_REDIS_PORT)"
    fi
  done

  case "$RUN_DIR" in "$ROOT"/.cache/*) rm -rf "$RUN_DIR" ;; *) die "refusing to wipe unexpected run dir $RUN_DIR" ;; esac
  mkdir -p "$RUN_DIR"
  chmod 700 "$RUN_DIR"   # it holds the SASL password, the keystore and its password
  SASL_PASSWORD="$(random_secret)"
  printf 'KAFKA_PORT=%s\nCONTROLLER_PORT=%s\nSASL_PORT=%s\nSASL_USERNAME=%s\nSASL_PASSWORD=%s\nREDIS_PORT=%s\n' \
    "$KAFKA_PORT" "$CONTROLLER_PORT" "$SASL_PORT" "$SASL_USERNAME" "$SASL_PASSWORD" "$REDIS_PORT" >"$STATE_FILE"
  chmod 600 "$STATE_FILE"

  local t0=$SECONDS
  start_redis   # quick, and an apt install (if any) happens before the JVM is competing for the CPU
  start_kafka
  log "all services up in $((SECONDS - t0))s; logs in ${RUN_DIR#"$ROOT"/}/"
}

cmd_stop() {
  load_ports
  stop_kafka
  stop_redis
  log "stopped"
}

cmd_restart_kafka() {
  load_ports
  [[ -f "$STATE_FILE" ]] || die "services were not started (start them with: $0 start)"
  stop_kafka
  sleep "${NPSPULSE_KAFKA_DOWN_SECONDS:-0}"
  rm -rf "$RUN_DIR/kafka/tls"   # start_kafka makes a new CA and broker keystore (new keystore password)
  start_kafka
}

cmd_status() {
  load_ports
  local rc=0 pid
  if pid="$(read_pid "$RUN_DIR/kafka.pid" "kafka.Kafka")"; then
    echo "kafka: running (pid $pid) bootstrap 127.0.0.1:$KAFKA_PORT, SASL_SSL 127.0.0.1:$SASL_PORT (user $SASL_USERNAME)"
  else
    echo "kafka: stopped"; rc=1
  fi
  if pid="$(read_pid "$RUN_DIR/redis.pid" "redis-server")"; then
    echo "redis: running (pid $pid) redis://127.0.0.1:$REDIS_PORT/0"
  else
    echo "redis: stopped"; rc=1
  fi
  return "$rc"
}

cmd_env() {
  load_ports
  echo "export NPSPULSE_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
  echo "export NPSPULSE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
  if [[ -n "$SASL_PASSWORD" ]]; then   # only known while services run (recorded at start)
    echo "export NPSPULSE_TEST_SASL_SSL_BOOTSTRAP=127.0.0.1:$SASL_PORT"
    printf 'export NPSPULSE_TEST_SASL_USERNAME=%q\n' "$SASL_USERNAME"
    printf 'export NPSPULSE_TEST_SASL_PASSWORD=%q\n' "$SASL_PASSWORD"
    printf 'export NPSPULSE_TEST_SSL_CAFILE=%q\n' "$RUN_DIR/kafka/tls/ca.pem"
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  restart-kafka) cmd_restart_kafka ;;
  *) echo "usage: $0 start|stop|status|env|restart-kafka" >&2; exit 2 ;;
esac
