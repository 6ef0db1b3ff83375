#!/usr/bin/env bash
# benches/compare.sh — wsgate vs nginx vs HAProxy (and the echo backend directly), side by side.
#
#   benches/compare.sh [RESULTS.md]          # full run, about 10 min after the build (< 15)
#   QUICK=1 benches/compare.sh               # 1–2 min sanity pass
#
# Method: the proxy under test runs alone on CPU $PROXY_CPU with one worker (taskset; nginx
# worker_processes 1, HAProxy nbthread 1, wsgate --threads 1); the load generator and the echo
# backend share CPU $LOAD_CPU. TLS 1.3 only, TLS_AES_128_GCM_SHA256, X25519, one ECDSA P-256
# certificate, no session resumption or tickets, logging off, tunnel timeouts 1 h. Targets are
# alternated within each repetition (A B C A B C …); each cell is the median over $REPS runs.
# Memory: a fresh proxy process per run, VmRSS before and with $IDLE_N idle tunnels.
#
# Environment (defaults in brackets):
#   QUICK [0]        1: REPS=1, DUR=1s, WARMUP=0.3s, IDLE_N=1000
#   REPS [3]         repetitions per scenario and target
#   LAT_REPS [7]     repetitions of the latency scenario (at least REPS): its p99 swings with
#                    the machine's noisy seconds, so it gets more runs than the CPU rows need
#   DUR [5s]         measured window per run;  WARMUP [1s] before it
#   TARGETS ["wsgate nginx haproxy direct direct-tls"]
#   SCENARIOS ["handshake latency throughput bulk idle"]  e.g. SCENARIOS=latency REPS=7
#   HS_CONC [48]     handshake workers
#   LAT_RATE [5000] LAT_CONNS [100] LAT_SIZE [64]
#   TP_CONNS [1000] TP_SIZE [64] TP_WINDOW [4]
#   BULK_SIZE [65536] BULK_WINDOW [8]
#   IDLE_N [5000]    tunnels for the memory run
#   PROXY_CPU [0] LOAD_CPU [1]
#   LOAD_SCHED [batch]  batch: in the runs that go as fast as they can (handshake, throughput,
#                    bulk) the load generator and the echo backend are SCHED_BATCH (chrt), so a
#                    proxy's write does not make the woken one preempt the other on the load
#                    CPU (a context switch per few messages, paid by the load side alone);
#                    other: as any process (the method before the 2026-12-07 14:09 reading)
#   WSGATE_PORT [8443] NGINX_PORT [8444] HAPROXY_PORT [8445]  the proxies' listeners (loopback)
#   BACKEND_PORT [9001] BACKEND_TLS_PORT [9443]               the echo backend's, ws and wss
#   OUT [benches/results.md, or the first argument]  the markdown table is written here too
#   KEEP_TMP [0]     1: keep the temp dir (configs, logs, raw JSON)
#   VERIFY [0]       1: the client verifies the certificate (--ca); 0: --insecure, which spares
#                    the load generator the signature check (the proxy's work is the same)
#   BACKEND_TLS [0]  1: the proxies speak TLS to the echo backend (its wss:// listener), each
#                    verifying its certificate against a test CA for the name localhost
#                    (wsgate backend_tls, nginx proxy_ssl_verify, HAProxy verify required),
#                    with their default session reuse towards it
#                    mutual: as 1, and the echo backend requires a client certificate, each
#                    proxy showing a test client CA's leaf (wsgate backend_tls cert/key, nginx
#                    proxy_ssl_certificate, HAProxy crt); direct-tls is left out (the load tool
#                    shows no certificate to the echo backend)
#   CLIENT_CERTS [0] 1: each proxy requires a client certificate of a test device CA (wsgate
#                    tls.client_ca, nginx ssl_verify_client on, HAProxy verify required) and
#                    tells the backend of it in a header; the load tool shows a leaf of it
#                    crl: as 1, and each proxy checks it against the CA's revocation list,
#                    which revokes another leaf (wsgate tls.client_crl, nginx ssl_crl,
#                    HAProxy crl-file)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { echo "benches/compare.sh: $*" >&2; exit 2; }
QUICK=${QUICK:-0}
# Only 0 and 1: `QUICK=yes` must not quietly start the full 10-minute run.
[[ $QUICK =~ ^[01]$ ]] || usage "QUICK must be 0 or 1, not '$QUICK'"
if [[ $QUICK == 1 ]]; then
  REPS=${REPS:-1}; DUR=${DUR:-1s}; WARMUP=${WARMUP:-0.3s}; IDLE_N=${IDLE_N:-1000}
fi
REPS=${REPS:-3}
if [[ $QUICK == 1 ]]; then LAT_REPS=${LAT_REPS:-$REPS}; fi
LAT_REPS=${LAT_REPS:-7}
DUR=${DUR:-5s}
WARMUP=${WARMUP:-1s}
TARGETS=${TARGETS:-"wsgate nginx haproxy direct direct-tls"}
SCENARIOS=${SCENARIOS:-"handshake latency throughput bulk idle"}
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }
HS_CONC=${HS_CONC:-48}
LAT_RATE=${LAT_RATE:-5000}; LAT_CONNS=${LAT_CONNS:-100}; LAT_SIZE=${LAT_SIZE:-64}
TP_CONNS=${TP_CONNS:-1000}; TP_SIZE=${TP_SIZE:-64}; TP_WINDOW=${TP_WINDOW:-4}
BULK_SIZE=${BULK_SIZE:-65536}; BULK_WINDOW=${BULK_WINDOW:-8}
IDLE_N=${IDLE_N:-5000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
LOAD_SCHED=${LOAD_SCHED:-batch}
OUT=${1:-${OUT:-$ROOT/benches/results.md}}
KEEP_TMP=${KEEP_TMP:-0}
VERIFY=${VERIFY:-0}
BACKEND_TLS=${BACKEND_TLS:-0}
CLIENT_CERTS=${CLIENT_CERTS:-0}
# Checked before any use: a count that is not one fails here, not as bash's "unbound
# variable" or as the table's crash after every run has been made.
for name in REPS LAT_REPS HS_CONC LAT_RATE LAT_CONNS LAT_SIZE TP_CONNS TP_SIZE TP_WINDOW \
  BULK_SIZE BULK_WINDOW IDLE_N; do
  [[ ${!name} =~ ^[1-9][0-9]*$ ]] || usage "$name must be a whole number of at least 1, not '${!name}'"
done
((LAT_REPS >= REPS)) || LAT_REPS=$REPS
[[ $VERIFY =~ ^[01]$ ]] || usage "VERIFY must be 0 or 1, not '$VERIFY'"
[[ $KEEP_TMP =~ ^[01]$ ]] || usage "KEEP_TMP must be 0 or 1, not '$KEEP_TMP'"
[[ $CLIENT_CERTS =~ ^(0|1|crl)$ ]] || usage "CLIENT_CERTS must be 0, 1 or crl, not '$CLIENT_CERTS'"
[[ $BACKEND_TLS =~ ^(0|1|mutual)$ ]] || usage "BACKEND_TLS must be 0, 1 or mutual, not '$BACKEND_TLS'"
[[ $LOAD_SCHED =~ ^(batch|other)$ ]] || usage "LOAD_SCHED must be batch or other, not '$LOAD_SCHED'"
if [[ $BACKEND_TLS == mutual ]]; then TARGETS=${TARGETS//direct-tls/}; fi

BACKEND_PORT=${BACKEND_PORT:-9001}
BACKEND_TLS_PORT=${BACKEND_TLS_PORT:-9443}
declare -A PORT=([wsgate]=${WSGATE_PORT:-8443} [nginx]=${NGINX_PORT:-8444} [haproxy]=${HAPROXY_PORT:-8445})

log() { printf '[compare %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v chrt >/dev/null || die "chrt (util-linux) is needed to set the load side's scheduling policy"

# --- build ---------------------------------------------------------------------------------------
log "building release"
(cd "$ROOT" && cargo build --release --workspace) >&2
# Where cargo put them: CARGO_TARGET_DIR or a config may move the target folder, and an old
# build left in $ROOT/target must not be measured instead.
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BENCH=$TARGET_DIR/release/wsgate-bench
WSGATE=$TARGET_DIR/release/wsgate
[[ -x $BENCH && -x $WSGATE ]] || die "$BENCH or $WSGATE missing after build"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP=$(mktemp -d /tmp/wsgate-compare.XXXXXX)
mkdir -p "$TMP/results"
declare -A PIDS=()          # target -> "pid pid…" of the running proxy
BACKEND_PIDS=()

stop_pids() {
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
cleanup() {
  local t
  for t in "${!PIDS[@]}"; do stop_pids ${PIDS[$t]}; done
  stop_pids "${BACKEND_PIDS[@]}"
  if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_holder() { # port -> what listens there already (empty if nothing does)
  if command -v ss >/dev/null; then
    ss -ltnpH "sport = :$1" 2>/dev/null | head -1
  elif (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "something (install iproute2's ss to see what)"
  fi
}
wait_port() { # port timeout_s [pid: give up early if it exits]
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null && return 1
    sleep 0.05
  done
  return 1
}

# --- certificate ---------------------------------------------------------------------------------
log "making an ECDSA P-256 certificate in $TMP"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/combined.pem"
# The echo backend's certificate: the same one, or with BACKEND_TLS=1 a leaf of a test CA the
# proxies are told to trust (a CA, as an operator's internal one is).
BACKEND_CERT=$TMP/cert.pem BACKEND_KEY=$TMP/key.pem
test_ca() { # name file-prefix: a P-256 CA certificate and key in $TMP
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=$1" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$TMP/$2-ca.key" -out "$TMP/$2-ca.pem" 2>/dev/null
}
test_leaf() { # ca-prefix prefix subject-CN extensions: a P-256 leaf of that CA, $TMP/PREFIX-{cert,key}.pem
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$3" \
    -keyout "$TMP/$2-key.pem" -out "$TMP/$2.csr" 2>/dev/null
  printf "basicConstraints=critical,CA:FALSE\n$4\n" >"$TMP/$2.ext"
  openssl x509 -req -in "$TMP/$2.csr" -CA "$TMP/$1-ca.pem" -CAkey "$TMP/$1-ca.key" \
    -CAcreateserial -days 30 -extfile "$TMP/$2.ext" -out "$TMP/$2-cert.pem" 2>/dev/null
}
if [[ $BACKEND_TLS != 0 ]]; then
  test_ca "bench backend CA" backend
  test_leaf backend backend localhost 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth'
  BACKEND_CERT=$TMP/backend-cert.pem BACKEND_KEY=$TMP/backend-key.pem
fi
# With BACKEND_TLS=mutual, the proxies' client certificate: a leaf of a second test CA, the
# one the echo backend requires.
ECHO_CLIENT_CA=()
if [[ $BACKEND_TLS == mutual ]]; then
  test_ca "bench client CA" client
  test_leaf client client proxy 'extendedKeyUsage=clientAuth'
  cat "$TMP/client-cert.pem" "$TMP/client-key.pem" >"$TMP/client-combined.pem"
  ECHO_CLIENT_CA=(--tls-client-ca "$TMP/client-ca.pem")
fi
# With CLIENT_CERTS=1, the load tool's certificate, of a device CA the proxies require.
NGINX_CLIENTS="" NGINX_TELL="" HAPROXY_CLIENTS="" HAPROXY_TELL="" WSGATE_CLIENTS=""
if [[ $CLIENT_CERTS != 0 ]]; then
  test_ca "bench device CA" device
  test_leaf device device device-7 'subjectAltName=DNS:device-7\nextendedKeyUsage=clientAuth'
  NGINX_CLIENTS="ssl_client_certificate $TMP/device-ca.pem; ssl_verify_client on;"
  NGINX_TELL="proxy_set_header X-Forwarded-Client-Cert \"Hash=\$ssl_client_fingerprint;Subject=\\\"\$ssl_client_s_dn\\\"\";"
  HAPROXY_CLIENTS=" ca-file $TMP/device-ca.pem verify required"
  HAPROXY_TELL='  http-request set-header X-Forwarded-Client-Cert "Hash=%[ssl_c_sha1,hex];Subject=\"%[ssl_c_s_dn]\""'
  WSGATE_CLIENTS="client_ca = \"device-ca.pem\""
fi
# With CLIENT_CERTS=crl, the device CA's revocation list, revoking a leaf other than the load
# tool's.
if [[ $CLIENT_CERTS == crl ]]; then
  test_leaf device revoked device-8 'extendedKeyUsage=clientAuth'
  : >"$TMP/device-index.txt"; echo 01 >"$TMP/device-crlnumber"
  printf '[ca]\ndefault_ca = d\n[d]\ndatabase = %s\ncrlnumber = %s\ndefault_md = sha256\ndefault_crl_days = 7\n' \
    "$TMP/device-index.txt" "$TMP/device-crlnumber" >"$TMP/device-ca.cnf"
  ca=(-config "$TMP/device-ca.cnf" -cert "$TMP/device-ca.pem" -keyfile "$TMP/device-ca.key")
  openssl ca "${ca[@]}" -revoke "$TMP/revoked-cert.pem" 2>/dev/null
  openssl ca "${ca[@]}" -gencrl -out "$TMP/device-crl.pem" 2>/dev/null
  NGINX_CLIENTS="$NGINX_CLIENTS ssl_crl $TMP/device-crl.pem;"
  HAPROXY_CLIENTS="$HAPROXY_CLIENTS crl-file $TMP/device-crl.pem"
  WSGATE_CLIENTS="$WSGATE_CLIENTS
client_crl = \"device-crl.pem\""
fi
# What the proxies are pointed at, and how they speak to it.
NGINX_UPSTREAM="http://127.0.0.1:$BACKEND_PORT" NGINX_UPSTREAM_TLS=""
HAPROXY_SERVER="127.0.0.1:$BACKEND_PORT"
WSGATE_BACKEND="backends = [\"127.0.0.1:$BACKEND_PORT\"]"
if [[ $BACKEND_TLS != 0 ]]; then
  NGINX_UPSTREAM="https://127.0.0.1:$BACKEND_TLS_PORT"
  NGINX_UPSTREAM_TLS="proxy_ssl_verify on; proxy_ssl_trusted_certificate $TMP/backend-ca.pem;
      proxy_ssl_name localhost; proxy_ssl_server_name on; proxy_ssl_protocols TLSv1.3;"
  HAPROXY_SERVER="127.0.0.1:$BACKEND_TLS_PORT ssl verify required ca-file $TMP/backend-ca.pem sni str(localhost) verifyhost localhost ssl-min-ver TLSv1.3"
  WSGATE_BACKEND="backends = [\"127.0.0.1:$BACKEND_TLS_PORT\"]
backend_tls = { ca = \"backend-ca.pem\", server_name = \"localhost\" }"
fi
if [[ $BACKEND_TLS == mutual ]]; then
  NGINX_UPSTREAM_TLS+="
      proxy_ssl_certificate $TMP/client-cert.pem; proxy_ssl_certificate_key $TMP/client-key.pem;"
  HAPROXY_SERVER+=" crt $TMP/client-combined.pem"
  WSGATE_BACKEND="backends = [\"127.0.0.1:$BACKEND_TLS_PORT\"]
backend_tls = { ca = \"backend-ca.pem\", server_name = \"localhost\", cert = \"client-cert.pem\", key = \"client-key.pem\" }"
fi

# --- proxies -------------------------------------------------------------------------------------
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  if [[ " $TARGETS " == *" nginx "* || " $TARGETS " == *" haproxy "* ]]; then
    log "installing nginx and haproxy"
    (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx haproxy) >&2
  fi
fi

mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"
cat >"$TMP/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log crit;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/tmp/body;
  proxy_temp_path $TMP/nginx/tmp/proxy;
  fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
  uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
  scgi_temp_path $TMP/nginx/tmp/scgi;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  server {
    listen 127.0.0.1:${PORT[nginx]} ssl;
    ssl_certificate $TMP/cert.pem;
    ssl_certificate_key $TMP/key.pem;
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
    ssl_conf_command NumTickets 0;
    ssl_ecdh_curve X25519;
    ssl_session_cache off;
    ssl_session_tickets off;
    $NGINX_CLIENTS
    location / {
      $NGINX_TELL
      proxy_pass $NGINX_UPSTREAM;
      $NGINX_UPSTREAM_TLS
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
EOF

cat >"$TMP/openssl-no-tickets.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_module
[ssl_module]
system_default = system_default_sect
[system_default_sect]
NumTickets = 0
EOF

cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9500
  tune.ssl.cachesize 0
  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256
defaults
  mode http
  timeout connect 5s
  timeout client 3600s
  timeout server 3600s
  timeout tunnel 3600s
frontend fe
  bind 127.0.0.1:${PORT[haproxy]} ssl crt $TMP/combined.pem curves X25519$HAPROXY_CLIENTS
$HAPROXY_TELL
  default_backend be
backend be
  server echo $HAPROXY_SERVER maxconn 9500
EOF

cat >"$TMP/wsgate.toml" <<EOF
[proxy]
listen = ["127.0.0.1:${PORT[wsgate]}"]
[tls]
certificates = [ { cert = "cert.pem", key = "key.pem" } ]
# As nginx (ssl_protocols TLSv1.3) and HAProxy (ssl-min-ver TLSv1.3): no TLS 1.2.
min_version = "1.3"
# As nginx (ssl_session_tickets off) and HAProxy (no-tls-tickets) are set up: no tickets sent.
session_resumption = false
$WSGATE_CLIENTS
[timeouts]
idle = "3600s"
[limits]
max_connections = 100000
[[route]]
name = "echo"
path = "/"
$WSGATE_BACKEND
EOF

start_proxy() { # target -> sets PIDS[target]; returns 1 if it does not come up
  local t=$1 pid
  case $t in
    wsgate)
      [[ -x $WSGATE ]] || return 1
      # Logging off: warnings only (the access log is at info).
      RUST_LOG=warn taskset -c "$PROXY_CPU" "$WSGATE" run --config "$TMP/wsgate.toml" --threads 1 \
        >"$TMP/wsgate.log" 2>&1 &
      pid=$!; PIDS[$t]=$pid ;;
    nginx)
      taskset -c "$PROXY_CPU" nginx -c "$TMP/nginx.conf" -p "$TMP/nginx" \
        >"$TMP/nginx/logs/stdout.log" 2>&1 &
      pid=$!; PIDS[$t]=$pid ;;
    haproxy)
      # `no-tls-tickets` with the cache off still sends TLS 1.3 tickets (haproxy#1103,
      # openssl#8077): OpenSSL's NumTickets = 0 is what stops them, as nginx is told.
      OPENSSL_CONF=$TMP/openssl-no-tickets.cnf taskset -c "$PROXY_CPU" \
        haproxy -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
      pid=$!; PIDS[$t]=$pid ;;
    *) return 0 ;;
  esac
  local logfile=$TMP/$t.log
  [[ $t == nginx ]] && logfile=$TMP/nginx/logs/stdout.log
  # Alive after its port opened: the port is its own, not another process's.
  if ! wait_port "${PORT[$t]}" 10 "$pid" || ! kill -0 "$pid" 2>/dev/null; then
    log "$t did not come up on port ${PORT[$t]}; skipping it: $(tail -2 "$logfile" 2>/dev/null)"
    stop_pids $pid; unset "PIDS[$t]"; return 1
  fi
  if [[ $t == nginx ]]; then
    # The master plus its worker: CPU and RSS are summed over both. The master listens before
    # it forks the worker, so an open port does not mean the worker exists yet: wait for it.
    local workers="" tries=0
    while [[ -z $workers ]] && ((tries++ < 100)); do
      workers=$(pgrep -P "$pid" | tr '\n' ' ')
      [[ -n $workers ]] || sleep 0.05
    done
    if [[ -z $workers ]]; then
      log "nginx started no worker; skipping it"
      stop_pids $pid; unset "PIDS[$t]"; return 1
    fi
    PIDS[$t]="$pid $workers"
  fi
}
stop_proxy() {
  local t=$1
  [[ -n ${PIDS[$t]:-} ]] && stop_pids ${PIDS[$t]}
  unset "PIDS[$t]"
}

url_of() { # target
  case $1 in
    direct) echo "ws://127.0.0.1:$BACKEND_PORT/" ;;
    direct-tls) echo "wss://127.0.0.1:$BACKEND_TLS_PORT/" ;;
    *) echo "wss://127.0.0.1:${PORT[$1]}/" ;;
  esac
}
pids_of() { # target -> "--pid X --pid Y"
  local p out=""
  case $1 in
    direct) out="--pid ${BACKEND_PIDS[0]}" ;;
    direct-tls) out="--pid ${BACKEND_PIDS[1]}" ;;
    *) for p in ${PIDS[$1]:-}; do out+=" --pid $p"; done ;;
  esac
  echo "$out"
}
tls_opts() { # wss: verify against the test certificate only with VERIFY=1 (costs the client CPU)
  [[ $(url_of "$1") == wss://* ]] || return 0
  if [[ $VERIFY == 1 ]]; then echo "--ca $TMP/cert.pem --sni localhost"; else echo "--insecure"; fi
  if [[ $CLIENT_CERTS != 0 ]]; then echo "--cert $TMP/device-cert.pem --key $TMP/device-key.pem"; fi
}

# --- backend -------------------------------------------------------------------------------------
# A port already taken would be measured as the target (or fail it in odd ways): refuse.
busy=""
for t in $TARGETS; do
  [[ -n ${PORT[$t]:-} ]] || continue
  holder=$(port_holder "${PORT[$t]}")
  [[ -z $holder ]] || busy+=$'\n'"  ${PORT[$t]} ($t): $holder"
done
for p in $BACKEND_PORT $BACKEND_TLS_PORT; do
  holder=$(port_holder "$p")
  [[ -z $holder ]] || busy+=$'\n'"  $p (echo backend): $holder"
done
[[ -z $busy ]] || die "ports already in use, stop what holds them first:$busy"
taskset -c "$LOAD_CPU" "$BENCH" echo --listen "127.0.0.1:$BACKEND_PORT" >"$TMP/echo.log" 2>&1 &
BACKEND_PIDS+=($!)
taskset -c "$LOAD_CPU" "$BENCH" echo --listen "127.0.0.1:$BACKEND_TLS_PORT" \
  --tls-cert "$BACKEND_CERT" --tls-key "$BACKEND_KEY" "${ECHO_CLIENT_CA[@]}" >"$TMP/echo-tls.log" 2>&1 &
BACKEND_PIDS+=($!)
wait_port $BACKEND_PORT 10 || die "echo backend did not start: $(cat "$TMP/echo.log")"
wait_port $BACKEND_TLS_PORT 10 || die "TLS echo backend did not start: $(cat "$TMP/echo-tls.log")"

ACTIVE=()
for t in $TARGETS; do
  if start_proxy "$t"; then ACTIVE+=("$t"); fi
done
((${#ACTIVE[@]})) || die "no target came up"
log "targets: ${ACTIVE[*]}; reps=$REPS dur=$DUR warmup=$WARMUP load_sched=$LOAD_SCHED"

# The load side's scheduling policy in a scenario (see LOAD_SCHED): the fixed-rate latency run
# keeps the default, where a woken task preempts at once (its timing is what it measures), as
# does the idle run (no load to speak of).
load_policy() { # scenario -> chrt policy option
  case $1 in
    handshake | throughput | bulk) [[ $LOAD_SCHED == batch ]] && echo --batch && return ;;
  esac
  echo --other
}

run_one() { # scenario target rep args…
  local sc=$1 t=$2 rep=$3; shift 3
  local out="$TMP/results/$sc.$t.$rep.json" policy p
  policy=$(load_policy "$sc")
  for p in "${BACKEND_PIDS[@]}"; do
    # A backend gone fails the run itself, which is recorded as failed like any other.
    chrt --all-tasks "$policy" --pid 0 "$p" 2>/dev/null || log "chrt $policy on the echo backend ($p) failed"
  done
  # shellcheck disable=SC2046
  if ! chrt "$policy" 0 taskset -c "$LOAD_CPU" "$BENCH" "$sc" "$(url_of "$t")" $(tls_opts "$t") $(pids_of "$t") \
      --json "$@" >"$out.raw" 2>"$out.err"; then
    log "$sc on $t failed: $(tail -1 "$out.err")"
    FAILED+=("$sc/$t")
    printf '{"error": %s}\n' "$(tail -1 "$out.err" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')" >"$out"
    return 0
  fi
  tail -1 "$out.raw" >"$out"
}

FAILED=()
COMMON=(--duration "$DUR" --warmup "$WARMUP")
for ((rep = 1; rep <= REPS; rep++)); do
  if want handshake; then
    for t in "${ACTIVE[@]}"; do
      log "rep $rep: handshake $t"
      run_one handshake "$t" "$rep" "${COMMON[@]}" -c "$HS_CONC"
    done
  fi
  if want latency; then
    for t in "${ACTIVE[@]}"; do
      log "rep $rep: latency $t"
      run_one latency "$t" "$rep" "${COMMON[@]}" -c "$LAT_CONNS" -r "$LAT_RATE" -s "$LAT_SIZE"
    done
  fi
  if want throughput; then
    for t in "${ACTIVE[@]}"; do
      log "rep $rep: throughput $t"
      run_one throughput "$t" "$rep" "${COMMON[@]}" -c "$TP_CONNS" -s "$TP_SIZE" -w "$TP_WINDOW"
    done
  fi
  if want bulk; then
    for t in "${ACTIVE[@]}"; do
      log "rep $rep: bulk $t"
      run_one bulk "$t" "$rep" "${COMMON[@]}" -s "$BULK_SIZE" -w "$BULK_WINDOW"
    done
  fi
done

# The latency row's extra repetitions, alternated the same way.
if want latency; then
  for ((rep = REPS + 1; rep <= LAT_REPS; rep++)); do
    for t in "${ACTIVE[@]}"; do
      log "rep $rep: latency $t"
      run_one latency "$t" "$rep" "${COMMON[@]}" -c "$LAT_CONNS" -r "$LAT_RATE" -s "$LAT_SIZE"
    done
  done
fi

# Memory: a fresh proxy process for every run.
if want idle; then
  for ((rep = 1; rep <= REPS; rep++)); do
    for t in "${ACTIVE[@]}"; do
      [[ $t == direct* ]] && continue
      stop_proxy "$t"
      start_proxy "$t" || continue
      sleep 0.5
      log "rep $rep: idle $t (n=$IDLE_N)"
      run_one idle "$t" "$rep" -n "$IDLE_N" --concurrency 64 --settle 1s --hold 1.5s
    done
  done
fi

# --- table ---------------------------------------------------------------------------------------
LAT_RATE=$LAT_RATE LAT_CONNS=$LAT_CONNS LAT_SIZE=$LAT_SIZE TP_CONNS=$TP_CONNS TP_SIZE=$TP_SIZE BULK_SIZE=$BULK_SIZE \
  IDLE_N=$IDLE_N DUR=$DUR WARMUP=$WARMUP QUICK=$QUICK BACKEND_TLS=$BACKEND_TLS CLIENT_CERTS=$CLIENT_CERTS \
  LOAD_SCHED=$LOAD_SCHED \
  python3 - "$TMP/results" "$OUT" "$REPS" "${ACTIVE[*]}" "$LAT_REPS" <<'PY'
import datetime, glob, json, os, statistics, sys
env = os.environ
res_dir, out, reps, active = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
lat_reps = int(sys.argv[5])
has_latency = bool(glob.glob(os.path.join(res_dir, "latency.*.json")))
lat_note = f" ({lat_reps} for the fixed-rate echo rows)" if has_latency and lat_reps > reps else ""
runs = {}
for f in glob.glob(os.path.join(res_dir, "*.json")):
    sc, t, rep, _ = os.path.basename(f).rsplit(".", 3)
    try:
        with open(f) as fh:
            runs.setdefault((sc, t), []).append(json.load(fh))
    except (OSError, ValueError):
        pass

def med(sc, t, key):
    vals = [r[key] for r in runs.get((sc, t), []) if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None

def errs(sc, t):
    return sum(r.get("errors", 0) or 0 for r in runs.get((sc, t), [])) + \
        sum(1 for r in runs.get((sc, t), []) if "error" in r)

def size(n):
    n = int(n)
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"

# The labels say what was run: the scenario settings come from the script's environment.
lat = f"{int(env['LAT_RATE']):,} msg/s, {int(env['LAT_CONNS']):,} tunnels"
tp = f"{int(env['TP_CONNS']):,} tunnels"
rows = [
    ("Upgrade: proxy CPU µs per handshake", "handshake", "proxy_cpu_us_per_handshake", "low"),
    ("Upgrade: handshakes/s", "handshake", "handshakes_per_s", "high"),
    ("Upgrade: p99 ms per handshake", "handshake", "handshake_p99_us", "low", 1e-3),
    (f"Echo latency p50 µs ({lat})", "latency", "p50_us", "low"),
    (f"Echo latency p99 µs ({lat})", "latency", "p99_us", "low"),
    # The same work per message as the row below, but at a rate the proxy keeps up with
    # without batching: what a proxy below saturation, most of them most of the time, spends.
    (f"Echo at a fixed rate: proxy CPU µs per {size(env['LAT_SIZE'])} message ({lat})", "latency", "proxy_cpu_us_per_msg", "low"),
    (f"Echo: proxy CPU µs per {size(env['TP_SIZE'])} message ({tp})", "throughput", "proxy_cpu_us_per_msg", "low"),
    (f"Echo: msgs/s ({tp})", "throughput", "msgs_per_s", "high"),
    (f"Bulk: MB/s each way (1 tunnel × {size(env['BULK_SIZE'])})", "bulk", "mb_per_s", "high"),
    ("Bulk: proxy CPU µs per MB", "bulk", "proxy_cpu_us_per_mb", "low"),
    (f"Idle: KiB RSS per tunnel ({int(env['IDLE_N']):,} tunnels)", "idle", "proxy_rss_kib_per_tunnel", "low"),
    ("Idle: kernel slab KiB per tunnel (system-wide)", "idle", "kernel_slab_kib_per_tunnel", "low"),
    ("Load generator CPU % in handshake run", "handshake", "tool_cpu_pct", None),
    ("Load generator CPU % in echo run", "throughput", "tool_cpu_pct", None),
    ("Load CPU busy % in handshake run (tool + backend)", "handshake", "load_cpu_busy_pct", None),
    ("Load CPU busy % in echo run (tool + backend)", "throughput", "load_cpu_busy_pct", None),
]
names = {"wsgate": "wsgate", "nginx": "nginx", "haproxy": "HAProxy",
         "direct": "backend ws", "direct-tls": "backend wss"}
cols = [t for t in ["wsgate", "nginx", "haproxy", "direct", "direct-tls"] if t in active]
ratio_cols = [t for t in ("nginx", "haproxy") if "wsgate" in active and t in active]

def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"

head = ["Metric"] + [names[c] for c in cols] + [f"wsgate/{names[c]}" for c in ratio_cols]
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
ran = {sc for (sc, _t) in runs}
for row in rows:
    label, sc, key, _better = row[:4]
    if sc not in ran:
        continue
    scale = row[4] if len(row) > 4 else 1
    vals = {c: med(sc, c, key) for c in cols}
    vals = {c: (v * scale if v is not None else None) for c, v in vals.items()}
    cells = [label] + [fmt(vals[c]) for c in cols]
    for c in ratio_cols:
        a, b = vals.get("wsgate"), vals.get(c)
        if _better is None:
            cells.append("")
        else:
            cells.append(f"{a / b:.2f}×" if a is not None and b not in (None, 0) else "n/a")
    lines.append("| " + " | ".join(cells) + " |")

quick = " (QUICK=1: a sanity pass, not a reading)" if env["QUICK"] == "1" else ""
notes = [
    "",
    f"Run of {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC{quick}: "
    f"{env['DUR']} measured after {env['WARMUP']} of warm-up per run.",
    f"Median of {reps} run(s) per cell{lat_note}; targets alternated within each repetition.",
    "Proxy alone on one CPU with one worker; load generator and echo backend share the other.",
    *(["LOAD_SCHED=batch: in the handshake, throughput and bulk runs the load generator and the",
       "echo backend are SCHED_BATCH (no wake-up preemption between them on the load CPU)."]
      if env.get("LOAD_SCHED") == "batch" else
      ["LOAD_SCHED=other: the load generator and the echo backend run SCHED_OTHER throughout."]),
    *(["BACKEND_TLS=1: each proxy speaks TLS to the echo backend, verifying its certificate."]
      if env.get("BACKEND_TLS") == "1" else []),
    *(["CLIENT_CERTS=1: each proxy requires the load tool's client certificate (a P-256 leaf of a",
       "test CA) and tells the backend of it in a header."]
      if env.get("CLIENT_CERTS") == "1" else []),
    *(["CLIENT_CERTS=crl: as CLIENT_CERTS=1, and each proxy checks the certificate against the",
       "test CA's revocation list (one entry, another leaf)."]
      if env.get("CLIENT_CERTS") == "crl" else []),
    *(["BACKEND_TLS=mutual: each proxy speaks TLS to the echo backend, verifying its certificate,",
       "and shows it a client certificate, which the echo backend requires."]
      if env.get("BACKEND_TLS") == "mutual" else []),
    "Idle rows: fresh proxy process per run; direct targets are not measured (n/a).",
    "For the backend columns, 'proxy CPU' is the echo backend's own CPU.",
    "Load CPU busy % is the whole load CPU (load generator and echo backend): at 90 % or more",
    "the run is client-bound, and its rate says more about the client than the proxy (the",
    "proxy's CPU per operation still holds).",
    "Ratios are wsgate divided by the other proxy (lower is better for CPU, latency, memory;",
    "higher is better for rates and MB/s).",
]
bound = [(sc, t, v) for (sc, t) in sorted(runs)
         if sc != "idle" and (v := med(sc, t, "load_cpu_busy_pct")) is not None and v >= 90]
if bound:
    notes.append("Client-bound runs (load CPU busy ≥ 90 %): " +
                 ", ".join(f"{sc}/{names.get(t, t)} ({v:.0f} %)" for sc, t, v in bound))
else:
    notes.append("No run was client-bound (load CPU busy < 90 % in every scenario).")
bad = [(sc, t, errs(sc, t)) for (sc, t) in sorted(runs) if errs(sc, t)]
if bad:
    notes.append("Errors: " + ", ".join(f"{sc}/{names.get(t, t)}: {n}" for sc, t, n in bad))
text = "\n".join(lines + notes) + "\n"
print(text)
with open(out, "w") as fh:
    fh.write(text)
PY
log "table written to $OUT"
if ((${#FAILED[@]})); then
  die "${#FAILED[@]} run(s) failed: ${FAILED[*]} (their cells are medians of the others, or n/a)"
fi
