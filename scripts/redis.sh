#!/usr/bin/env bash
# A throwaway redis-server for manual runs: 127.0.0.1, a free port, no persistence.
#   scripts/redis.sh start   # prints the URL, e.g. redis://127.0.0.1:40123/
#   scripts/redis.sh stop
#   scripts/redis.sh url
# State (pid, port, log) lives in ${MESSENGER_REDIS_DIR:-/tmp/messenger-redis}.
set -euo pipefail
dir="${MESSENGER_REDIS_DIR:-/tmp/messenger-redis}"
bin="${REDIS_SERVER:-redis-server}"

running() { [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }
url() { echo "redis://127.0.0.1:$(cat "$dir/port")/"; }

case "${1:-}" in
  start)
    if running; then url; exit 0; fi
    command -v "$bin" >/dev/null 2>&1 || {
      echo "redis-server not found: apt-get install -y redis-server (scripts/test.sh does it)" >&2
      exit 1
    }
    mkdir -p "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$bin" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
      --daemonize yes --pidfile "$dir/pid" --logfile "$dir/redis.log"
    echo "$port" > "$dir/port"
    for _ in $(seq 1 100); do
      if running && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then url; exit 0; fi
      sleep 0.05
    done
    echo "redis-server did not start; see $dir/redis.log" >&2
    exit 1
    ;;
  stop)
    if running; then kill "$(cat "$dir/pid")"; fi
    rm -f "$dir/pid" "$dir/port"
    ;;
  url)
    running && url || { echo "not running" >&2; exit 1; }
    ;;
  *)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
esac
