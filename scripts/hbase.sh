#!/usr/bin/env bash
# A real single-node HBase and its Thrift2 gateway for development and tests.
#
#   scripts/hbase.sh fetch    resolve the jars from Maven Central into the cache (once)
#   scripts/hbase.sh start    start HMaster (standalone: master, region server and
#                             ZooKeeper in one JVM) and the Thrift2 server on free ports,
#                             wait until a real Thrift2 call answers, print
#                             HBASE_THRIFT=127.0.0.1:PORT (also written to $RUN_DIR/thrift.addr)
#   scripts/hbase.sh stop     stop both JVMs (by the pids recorded in $RUN_DIR)
#   scripts/hbase.sh status   say what is running
#   scripts/hbase.sh restart-thrift   stop and start only the Thrift2 gateway (same port)
#   scripts/hbase.sh stop-thrift | start-thrift   the gateway alone
#   scripts/hbase.sh gateway-start NAME [PORT]    an extra Thrift2 gateway on the running
#                             HBase (tests kill and restart it); prints HBASE_THRIFT=...
#   scripts/hbase.sh gateway-kill NAME            kill -9 that extra gateway
#
# Environment:
#   MESSENGER_CACHE      jar cache root (default ~/.cache/messenger)
#   HBASE_RUN_DIR        run dir with config, data, logs and pids (default target/hbase-run)
#   HBASE_PROFILE        test (default): small heaps, C1 JIT only, for quick start-up in
#                        the test suite; tuned: what an operator would run for load
#                        (full tiered JIT, G1, 4 GiB + 1 GiB heaps pre-touched, more
#                        handlers and gateway workers, larger memstores). The benchmarks
#                        in docs/benchmarks.md use tuned.
#   HBASE_MASTER_HEAP    default 1g (tuned: 4g);  HBASE_THRIFT_HEAP default 512m (tuned: 1g)
#   HBASE_START_TIMEOUT  seconds to wait for readiness (default 180)
set -euo pipefail

HBASE_VERSION=2.6.1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${MESSENGER_CACHE:-$HOME/.cache/messenger}/hbase-$HBASE_VERSION"
LIB="$CACHE/lib"
RUN_DIR="${HBASE_RUN_DIR:-$ROOT/target/hbase-run}"
PROFILE="${HBASE_PROFILE:-test}"
case "$PROFILE" in
  test)
    MASTER_HEAP="${HBASE_MASTER_HEAP:-1g}"
    THRIFT_HEAP="${HBASE_THRIFT_HEAP:-512m}"
    # C1 only and the serial collector: the JVMs start in seconds on 2 shared cores.
    JVM_FLAGS=(-XX:+UseSerialGC -XX:TieredStopAtLevel=1)
    ;;
  tuned)
    MASTER_HEAP="${HBASE_MASTER_HEAP:-4g}"
    THRIFT_HEAP="${HBASE_THRIFT_HEAP:-1g}"
    # Full tiered JIT (C2), G1 with a short pause goal, heap committed up front.
    JVM_FLAGS=(-XX:+UseG1GC -XX:MaxGCPauseMillis=50 -XX:+AlwaysPreTouch -XX:+ParallelRefProcEnabled)
    ;;
  *) echo "[hbase.sh] ERROR: HBASE_PROFILE must be test or tuned, not $PROFILE" >&2; exit 2 ;;
esac
START_TIMEOUT="${HBASE_START_TIMEOUT:-180}"

log() { echo "[hbase.sh] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Flags bin/hbase adds on JDK 11+ (add_jdk11_jvm_flags).
JDK17_FLAGS=(
  -Dorg.apache.hbase.thirdparty.io.netty.tryReflectionSetAccessible=true
  --add-modules jdk.unsupported
  --add-opens java.base/java.io=ALL-UNNAMED
  --add-opens java.base/java.nio=ALL-UNNAMED
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens java.base/java.lang=ALL-UNNAMED
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens java.base/java.util=ALL-UNNAMED
  --add-opens java.base/java.util.concurrent=ALL-UNNAMED
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
  --add-exports java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-exports java.base/sun.net.dns=ALL-UNNAMED
  --add-exports java.base/sun.net.util=ALL-UNNAMED
)

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
  log "resolving HBase $HBASE_VERSION from Maven Central into $LIB (first run only, a few minutes)"
  rm -rf "$LIB"; mkdir -p "$LIB"
  if ! mvn -q -B -f "$HERE/hbase/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIB" >"$CACHE/fetch.log" 2>&1; then
    tail -n 40 "$CACHE/fetch.log" >&2
    die "maven could not resolve HBase $HBASE_VERSION (log: $CACHE/fetch.log)"
  fi
  touch "$CACHE/.complete"
  log "fetched $(ls "$LIB" | wc -l) jars"
}

free_port() {
  python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

alive() { [ -f "$RUN_DIR/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

write_conf() {
  local zk=$1 master=$2 rs=$3
  local THRIFT_WORKERS=16 HANDLERS=16 TUNED_XML=""
  if [ "$PROFILE" = tuned ]; then
    # Enough gateway workers for every pooled connection of a few servers (a Thrift2
    # connection holds a worker), handlers for the parallel seq claims, 256 MiB
    # memstores so a benchmark's writes are not throttled by flushes, and a bigger
    # block cache for the reads that follow.
    THRIFT_WORKERS=128 HANDLERS=64
    TUNED_XML="
  <property><name>hbase.hregion.memstore.flush.size</name><value>268435456</value></property>
  <property><name>hbase.hregion.memstore.block.multiplier</name><value>8</value></property>
  <property><name>hbase.hstore.blockingStoreFiles</name><value>64</value></property>
  <property><name>hfile.block.cache.size</name><value>0.3</value></property>"
  fi
  mkdir -p "$RUN_DIR/conf" "$RUN_DIR/data" "$RUN_DIR/tmp" "$RUN_DIR/zk" "$RUN_DIR/logs"
  cat >"$RUN_DIR/conf/hbase-site.xml" <<XML
<?xml version="1.0"?>
<configuration>
  <property><name>hbase.cluster.distributed</name><value>false</value></property>
  <property><name>hbase.rootdir</name><value>file://$RUN_DIR/data</value></property>
  <property><name>hbase.tmp.dir</name><value>$RUN_DIR/tmp</value></property>
  <property><name>hbase.zookeeper.property.dataDir</name><value>$RUN_DIR/zk</value></property>
  <property><name>hbase.zookeeper.quorum</name><value>127.0.0.1</value></property>
  <property><name>hbase.zookeeper.property.clientPort</name><value>$zk</value></property>
  <property><name>hbase.master.port</name><value>$master</value></property>
  <property><name>hbase.regionserver.port</name><value>$rs</value></property>
  <property><name>hbase.master.info.port</name><value>-1</value></property>
  <property><name>hbase.regionserver.info.port</name><value>-1</value></property>
  <property><name>hbase.thrift.info.port</name><value>-1</value></property>
  <property><name>hbase.unsafe.stream.capability.enforce</name><value>false</value></property>
  <property><name>hbase.wal.provider</name><value>filesystem</value></property>
  <property><name>hbase.thrift.server.socket.read.timeout</name><value>86400000</value></property>
  <property><name>hbase.thrift.minWorkerThreads</name><value>$THRIFT_WORKERS</value></property>
  <property><name>hbase.regionserver.handler.count</name><value>$HANDLERS</value></property>$TUNED_XML
  <property><name>hbase.master.wait.on.regionservers.mintostart</name><value>1</value></property>
  <property><name>zookeeper.session.timeout</name><value>30000</value></property>
  <!-- The gateway's own HBase client must give up well inside the adapter's claim lease
       (30 s): a conditional put cannot land long after the adapter stopped waiting. -->
  <property><name>hbase.rpc.timeout</name><value>5000</value></property>
  <property><name>hbase.client.operation.timeout</name><value>10000</value></property>
</configuration>
XML
  cat >"$RUN_DIR/conf/log4j2.properties" <<'L4J'
status = warn
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{ISO8601} %-5p [%t] %c{2}: %m%n
rootLogger = INFO,console
logger.zk.name = org.apache.zookeeper
logger.zk.level = WARN
logger.hadoop.name = org.apache.hadoop
logger.hadoop.level = WARN
logger.hbase.name = org.apache.hadoop.hbase
logger.hbase.level = INFO
L4J
}

java_bg() { # name heap main args...
  local name=$1 heap=$2 main=$3; shift 3
  local xms=()
  [ "$PROFILE" = tuned ] && xms=(-Xms"$heap")
  nohup java "${xms[@]}" -Xmx"$heap" "${JVM_FLAGS[@]}" "${JDK17_FLAGS[@]}" \
    -Dlog4j2.configurationFile="$RUN_DIR/conf/log4j2.properties" \
    -Dhbase.log.dir="$RUN_DIR/logs" \
    -cp "$RUN_DIR/conf:$LIB/*" "$main" "$@" >"$RUN_DIR/logs/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
}

# A real Thrift2 call (getTableNamesByNamespace) through the hbase-thrift jar's own client
# classes would need a JVM start per probe; instead send the call as raw Thrift binary
# protocol bytes from python and check that a reply (not an exception) comes back.
probe() { # port
  python3 - "$1" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
def s(b): return struct.pack(">i", len(b)) + b
name = b"getTableNamesByNamespace"
# message begin (strict binary, CALL, seq 1), arg 1: string "hbase", stop
msg = struct.pack(">I", 0x80010001) + s(name) + struct.pack(">i", 1)
msg += b"\x0b" + struct.pack(">h", 1) + s(b"hbase") + b"\x00"
try:
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    c.sendall(msg)
    data = b""
    while len(data) < 64:
        chunk = c.recv(4096)
        if not chunk: break
        data += chunk
        if b"meta" in data: break
    c.close()
except Exception as e:
    print("probe:", e, file=sys.stderr); sys.exit(1)
# a REPLY (type 2) that names hbase:meta means the gateway reached the region server
ok = len(data) > 8 and data[3] == 2 and b"meta" in data
sys.exit(0 if ok else 1)
PY
}

start_thrift() { # port
  java_bg thrift "$THRIFT_HEAP" org.apache.hadoop.hbase.thrift2.ThriftServer start -p "$1"
  echo "$1" >"$RUN_DIR/thrift.port"
}

wait_ready() { # port
  local port=$1 t0=$SECONDS
  while ! probe "$port" 2>/dev/null; do
    if ! alive master; then
      tail -n 40 "$RUN_DIR/logs/master.log" >&2
      die "HMaster exited (log: $RUN_DIR/logs/master.log)"
    fi
    if ! alive thrift; then
      tail -n 40 "$RUN_DIR/logs/thrift.log" >&2
      die "Thrift2 server exited (log: $RUN_DIR/logs/thrift.log)"
    fi
    if (( SECONDS - t0 > START_TIMEOUT )); then
      log "master log tail:"; tail -n 30 "$RUN_DIR/logs/master.log" >&2
      log "thrift log tail:"; tail -n 30 "$RUN_DIR/logs/thrift.log" >&2
      die "not ready after ${START_TIMEOUT}s; run '$0 stop' and check the logs in $RUN_DIR/logs"
    fi
    sleep 1
  done
}

start() {
  if alive master && alive thrift && [ -f "$RUN_DIR/thrift.addr" ]; then
    log "already running"; echo "HBASE_THRIFT=$(cat "$RUN_DIR/thrift.addr")"; return 0
  fi
  need python3 "apt-get install -y python3"
  fetch
  stop_quiet
  rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
  local zk master rs thrift t0=$SECONDS
  zk=$(free_port); master=$(free_port); rs=$(free_port); thrift=$(free_port)
  write_conf "$zk" "$master" "$rs"
  log "starting HMaster (zk $zk, master $master, rs $rs) and Thrift2 on $thrift, profile $PROFILE; logs in $RUN_DIR/logs"
  java_bg master "$MASTER_HEAP" org.apache.hadoop.hbase.master.HMaster start
  start_thrift "$thrift"
  wait_ready "$thrift"
  echo "127.0.0.1:$thrift" >"$RUN_DIR/thrift.addr"
  log "ready in $((SECONDS - t0))s"
  echo "HBASE_THRIFT=127.0.0.1:$thrift"
}

kill_pid() { # name
  if alive "$1"; then
    local pid; pid=$(cat "$RUN_DIR/$1.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/$1.pid"
}

stop_quiet() {
  [ -d "$RUN_DIR" ] || return 0
  for f in "$RUN_DIR"/gw-*.pid; do [ -e "$f" ] && kill_pid "$(basename "$f" .pid)"; done
  kill_pid thrift; kill_pid master
}

stop() { stop_quiet; log "stopped"; }

status() {
  local rc=0
  for n in master thrift; do
    if alive "$n"; then log "$n running (pid $(cat "$RUN_DIR/$n.pid"))"; else log "$n not running"; rc=1; fi
  done
  if [ -f "$RUN_DIR/thrift.addr" ]; then
    if probe "$(cat "$RUN_DIR/thrift.port")"; then log "Thrift2 answers at $(cat "$RUN_DIR/thrift.addr")"; else log "Thrift2 does not answer"; rc=1; fi
  fi
  return $rc
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  stop-thrift) kill_pid thrift; log "thrift stopped" ;;
  start-thrift)
    port=$(cat "$RUN_DIR/thrift.port"); start_thrift "$port"; wait_ready "$port"; log "thrift up on $port" ;;
  restart-thrift)
    kill_pid thrift; port=$(cat "$RUN_DIR/thrift.port"); start_thrift "$port"; wait_ready "$port"; log "thrift up on $port" ;;
  gateway-start)
    name=${2:?name}; port=${3:-$(free_port)}
    alive master || die "HBase is not running in $RUN_DIR"
    java_bg "gw-$name" "$THRIFT_HEAP" org.apache.hadoop.hbase.thrift2.ThriftServer start -p "$port"
    t0=$SECONDS
    until probe "$port" 2>/dev/null; do
      alive "gw-$name" || { tail -n 30 "$RUN_DIR/logs/gw-$name.log" >&2; die "gateway $name exited"; }
      (( SECONDS - t0 > START_TIMEOUT )) && die "gateway $name not ready after ${START_TIMEOUT}s"
      sleep 0.5
    done
    echo "HBASE_THRIFT=127.0.0.1:$port" ;;
  gateway-kill)
    name=${2:?name}
    if alive "gw-$name"; then kill -9 "$(cat "$RUN_DIR/gw-$name.pid")"; fi
    rm -f "$RUN_DIR/gw-$name.pid"; log "gateway $name killed" ;;
  *) echo "usage: $0 fetch|start|stop|status|stop-thrift|start-thrift|restart-thrift|gateway-start NAME [PORT]|gateway-kill NAME" >&2; exit 2 ;;
esac
