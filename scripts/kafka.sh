#!/usr/bin/env bash
# A real single-node Apache Kafka (4.x, KRaft: broker and controller in one JVM, no
# ZooKeeper) for development and tests, from Maven Central jars.
#
#   scripts/kafka.sh fetch     resolve the jars into the cache (once)
#   scripts/kafka.sh start     format a fresh log dir and start the broker on free ports,
#                              wait until a real Metadata request lists the broker, print
#                              KAFKA_BROKERS=127.0.0.1:PORT        (PLAINTEXT, no auth)
#                              KAFKA_SASL_BROKERS=127.0.0.1:PORT   (SASL/PLAIN, authorized)
#                              (also written to $RUN_DIR/brokers and $RUN_DIR/sasl-brokers)
#   scripts/kafka.sh stop      stop the broker (by the pid recorded in $RUN_DIR)
#   scripts/kafka.sh status    say what is running
#   scripts/kafka.sh stop-broker | start-broker   stop, or start again, the same broker on
#                              the same ports and data (tests of a broker outage)
#   scripts/kafka.sh topics ARGS...   kafka-topics (TopicCommand) against this broker
#   scripts/kafka.sh acl ARGS...      kafka-acls (AclCommand) against this broker
#   scripts/kafka.sh groups ARGS...   kafka-consumer-groups against this broker
#
# Security of the dev broker: the PLAINTEXT listener's principal (User:ANONYMOUS) is a
# super user, so plain clients may do anything (as with a broker without an authorizer);
# the SASL_PLAINTEXT listener authenticates users `admin` (password admin-secret, super
# user) and `app` (app-secret), and `app` may do only what ACLs grant it: tests use it
# for "not allowed to create a topic". Topics are never auto-created: clients create
# what they need (auto.create.topics.enable=false), as on a production cluster.
#
# Environment:
#   MESSENGER_CACHE      jar cache root (default ~/.cache/messenger)
#   KAFKA_RUN_DIR        run dir with config, data, logs and pid (default target/kafka-run)
#   KAFKA_HEAP           default 512m
#   KAFKA_PARTITIONS     default partitions of new topics (default 4)
#   KAFKA_START_TIMEOUT  seconds to wait for readiness (default 120)
set -euo pipefail

KAFKA_VERSION=4.4.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${MESSENGER_CACHE:-$HOME/.cache/messenger}/kafka-$KAFKA_VERSION"
LIB="$CACHE/lib"
RUN_DIR="${KAFKA_RUN_DIR:-$ROOT/target/kafka-run}"
HEAP="${KAFKA_HEAP:-512m}"
PARTITIONS="${KAFKA_PARTITIONS:-4}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"

log() { echo "[kafka.sh] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A missing tool is installed when we are root on Debian (fresh CI machines), else named.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "$1 missing: $2"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive $2 -qq) >&2 \
      || die "could not install $1 ($2)"
    command -v "$1" >/dev/null 2>&1 && return 0
  fi
  die "$1 not found: $2"
}

fetch() {
  if [ -f "$CACHE/.complete" ]; then
    log "jars cached in $LIB"
    return 0
  fi
  need java "apt-get install -y openjdk-17-jdk-headless"
  need mvn "apt-get install -y maven"
  mkdir -p "$CACHE"
  log "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $LIB (first run only)"
  rm -rf "$LIB"; mkdir -p "$LIB"
  if ! mvn -q -B -f "$HERE/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIB" >"$CACHE/fetch.log" 2>&1; then
    tail -n 40 "$CACHE/fetch.log" >&2
    die "maven could not resolve Kafka $KAFKA_VERSION (log: $CACHE/fetch.log)"
  fi
  touch "$CACHE/.complete"
  log "fetched $(ls "$LIB" | wc -l) jars"
}

# N distinct free ports, all bound at once so they differ.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
PY
}

alive() { [ -f "$RUN_DIR/kafka.pid" ] && kill -0 "$(cat "$RUN_DIR/kafka.pid")" 2>/dev/null; }

write_conf() { # plain controller sasl
  local plain=$1 ctl=$2 sasl=$3
  mkdir -p "$RUN_DIR/conf" "$RUN_DIR/data" "$RUN_DIR/logs"
  cat >"$RUN_DIR/conf/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$ctl
listeners=PLAINTEXT://127.0.0.1:$plain,CONTROLLER://127.0.0.1:$ctl,SASL_PLAINTEXT://127.0.0.1:$sasl
advertised.listeners=PLAINTEXT://127.0.0.1:$plain,CONTROLLER://127.0.0.1:$ctl,SASL_PLAINTEXT://127.0.0.1:$sasl
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="admin-secret" user_admin="admin-secret" user_app="app-secret";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:admin
allow.everyone.if.no.acl.found=false
log.dirs=$RUN_DIR/data
auto.create.topics.enable=false
num.partitions=$PARTITIONS
offsets.topic.replication.factor=1
offsets.topic.num.partitions=$PARTITIONS
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Small segments and short retention: a dev broker, not an archive.
log.segment.bytes=67108864
log.retention.hours=24
PROPS
  cat >"$RUN_DIR/conf/log4j2.properties" <<'L4J'
status = warn
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{ISO8601} %-5p [%t] %c{2}: %m%n
rootLogger = INFO,console
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.ak.name = org.apache.kafka
logger.ak.level = WARN
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
L4J
  echo "$plain" >"$RUN_DIR/plain.port"
  echo "$sasl" >"$RUN_DIR/sasl.port"
}

java_run() { # main args... (foreground, tools)
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$RUN_DIR/conf/log4j2.properties" \
    -cp "$LIB/*" "$@"
}

# A real Metadata request (v4) over the PLAINTEXT listener: ready when the reply lists
# at least one registered broker.
probe() { # port
  python3 - "$1" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
body = struct.pack(">hhi", 3, 4, 1) + struct.pack(">h", 5) + b"probe" + struct.pack(">i", -1) + b"\x01"
try:
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(struct.pack(">i", len(body)) + body)
    head = b""
    while len(head) < 4:
        chunk = c.recv(4 - len(head))
        if not chunk: sys.exit(1)
        head += chunk
    n = struct.unpack(">i", head)[0]
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk: sys.exit(1)
        data += chunk
    c.close()
except Exception as e:
    print("probe:", e, file=sys.stderr); sys.exit(1)
corr, _throttle, brokers = struct.unpack(">iii", data[:12])
sys.exit(0 if corr == 1 and brokers >= 1 else 1)
PY
}

launch() {
  nohup java -Xmx"$HEAP" -Xms"$HEAP" -XX:+UseSerialGC \
    -Dlog4j2.configurationFile="$RUN_DIR/conf/log4j2.properties" \
    -Dkafka.logs.dir="$RUN_DIR/logs" \
    -cp "$LIB/*" kafka.Kafka "$RUN_DIR/conf/server.properties" \
    >>"$RUN_DIR/logs/kafka.log" 2>&1 &
  echo $! >"$RUN_DIR/kafka.pid"
}

wait_ready() {
  local port t0=$SECONDS
  port=$(cat "$RUN_DIR/plain.port")
  while ! probe "$port" 2>/dev/null; do
    if ! alive; then
      tail -n 40 "$RUN_DIR/logs/kafka.log" >&2
      die "the broker exited (log: $RUN_DIR/logs/kafka.log)"
    fi
    if (( SECONDS - t0 > START_TIMEOUT )); then
      tail -n 30 "$RUN_DIR/logs/kafka.log" >&2
      die "not ready after ${START_TIMEOUT}s; run '$0 stop' and check $RUN_DIR/logs/kafka.log"
    fi
    sleep 0.2
  done
}

print_addrs() {
  echo "KAFKA_BROKERS=$(cat "$RUN_DIR/brokers")"
  echo "KAFKA_SASL_BROKERS=$(cat "$RUN_DIR/sasl-brokers")"
}

start() {
  if alive && [ -f "$RUN_DIR/brokers" ]; then
    log "already running"; print_addrs; return 0
  fi
  need python3 "apt-get install -y python3"
  fetch
  stop_quiet
  rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
  local plain ctl sasl cluster t0=$SECONDS
  read -r plain ctl sasl < <(free_ports 3)
  write_conf "$plain" "$ctl" "$sasl"
  # A cluster id as `kafka-storage random-uuid` makes it (16 random bytes, URL-safe
  # base64 without padding), without a JVM start.
  cluster=$(python3 -c 'import base64,os; print(base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="))')
  if ! java_run kafka.tools.StorageTool format --standalone -t "$cluster" \
      -c "$RUN_DIR/conf/server.properties" >"$RUN_DIR/logs/format.log" 2>&1; then
    tail -n 20 "$RUN_DIR/logs/format.log" >&2
    die "formatting the KRaft log dir failed (log: $RUN_DIR/logs/format.log)"
  fi
  log "starting Kafka $KAFKA_VERSION (plaintext $plain, sasl $sasl, controller $ctl); logs in $RUN_DIR/logs"
  launch
  wait_ready
  echo "127.0.0.1:$plain" >"$RUN_DIR/brokers"
  echo "127.0.0.1:$sasl" >"$RUN_DIR/sasl-brokers"
  log "ready in $((SECONDS - t0))s"
  print_addrs
}

stop_quiet() {
  [ -d "$RUN_DIR" ] || return 0
  if alive; then
    local pid; pid=$(cat "$RUN_DIR/kafka.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/kafka.pid"
}

stop() { stop_quiet; log "stopped"; }

status() {
  if alive; then
    log "broker running (pid $(cat "$RUN_DIR/kafka.pid"))"
    if probe "$(cat "$RUN_DIR/plain.port")"; then print_addrs; else log "the broker does not answer yet"; return 1; fi
  else
    log "not running"; return 1
  fi
}

tool() { # main args...
  [ -f "$RUN_DIR/brokers" ] || die "no broker in $RUN_DIR: run '$0 start' first"
  local main=$1; shift
  java_run "$main" --bootstrap-server "$(cat "$RUN_DIR/brokers")" "$@"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  stop-broker) stop_quiet; log "broker stopped (data and ports kept: '$0 start-broker')" ;;
  start-broker)
    [ -f "$RUN_DIR/conf/server.properties" ] || die "no broker in $RUN_DIR: run '$0 start' first"
    alive && { log "already running"; print_addrs; exit 0; }
    launch; wait_ready; log "broker up again"; print_addrs ;;
  topics) shift; tool org.apache.kafka.tools.TopicCommand "$@" ;;
  acl) shift; tool org.apache.kafka.tools.AclCommand "$@" ;;
  groups) shift; tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand "$@" ;;
  *) echo "usage: $0 fetch|start|stop|status|stop-broker|start-broker|topics ARGS|acl ARGS|groups ARGS" >&2; exit 2 ;;
esac
