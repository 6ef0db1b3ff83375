#!/usr/bin/env bash
# What `balance` does to a backend added while tunnels are open (docs/configuration.md#balance):
# two backends hold 2,000 idle tunnels between them, a third is added by a reload, then 1,500
# new tunnels open; wsgate_backend_connections_open says where each tunnel went. Once with
# round-robin, once with least-connections. Counts, not timings: the same on any machine.
#
#   bash benches/balance.sh            # about a minute after the release build
#
# Ports (loopback): 31543 wsgate, 31990 its admin endpoint, 31911-31913 the echo backends.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
(cd "$ROOT" && cargo build --release --workspace) >&2
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BENCH=$TARGET_DIR/release/wsgate-bench
WSGATE=$TARGET_DIR/release/wsgate
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 20000

# The config with `balance` and these backends (quoted host:port, comma-separated).
config() {
  cat > "$WORK/wsgate.toml" <<EOF
[proxy]
listen = ["127.0.0.1:31543"]
[tls]
certificates = [{ cert = "$ROOT/certs/localhost.crt", key = "$ROOT/certs/localhost.key" }]
[admin]
listen = "127.0.0.1:31990"
[[route]]
name = "chat"
path = "/"
balance = "$1"
backends = [$2]
EOF
}

metrics() { curl -sf 127.0.0.1:31990/metrics; }

# Holds `count` idle tunnels in the background until killed; returns once all are open.
hold() {
  local log=$WORK/idle-$1.log
  "$BENCH" idle wss://127.0.0.1:31543/ -k -n "$1" --hold 600s > "$log" 2>&1 &
  PIDS+=($!)
  until grep -q READY "$log"; do
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
  done
}

for port in 31911 31912 31913; do
  "$BENCH" echo --listen "127.0.0.1:$port" > /dev/null 2>&1 &
  PIDS+=($!)
done

for balance in round_robin least_connections; do
  config "$balance" '"127.0.0.1:31911", "127.0.0.1:31912"'
  "$WSGATE" run --config "$WORK/wsgate.toml" > "$WORK/wsgate.log" 2>&1 &
  proxy=$!
  until metrics > /dev/null; do sleep 0.1; done
  hold 2000
  first=${#PIDS[@]}
  config "$balance" '"127.0.0.1:31911", "127.0.0.1:31912", "127.0.0.1:31913"'
  until metrics | grep -q '^wsgate_config_generation 2'; do sleep 0.1; done
  hold 1500
  echo "$balance: $(metrics | grep '^wsgate_backend_connections_open' | sort |
    sed 's/.*backend="\([^"]*\)"} /\1 /' | tr '\n' ' ')"
  # The tunnels first, so that the next run's proxy starts with none.
  for pid in "${PIDS[@]:first-1}"; do kill "$pid" 2>/dev/null || true; done
  PIDS=("${PIDS[@]:0:first-1}")
  kill "$proxy"
  wait "$proxy" 2>/dev/null || true
done
