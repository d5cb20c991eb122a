#!/usr/bin/env bash
# Whole-system benchmark of meshgate against its peers in the same run (STYLE.md point 9).
#
#   scripts/bench.sh            full run, about 10 minutes after the build
#   scripts/bench.sh --quick    under 3 minutes; ends with the one-line meshgate/best-peer ratio
#
# With the same load, on loopback, one worker per proxy process (per-core comparison):
#   throughput  wrk (HTTP/1.1 keep-alive) at 32 and 256 connections against
#               direct      the service itself (an nginx answering "ok"),
#               nginx       plain HTTP → nginx client sidecar → HTTP/1.1 over mTLS (TLS 1.3,
#                           client certificate verified, keep-alive pool) → nginx server sidecar → service,
#               haproxy     the same with two HAProxy sidecars,
#               meshgate    plain HTTP → shop's gateway outbound → HTTP/2 over mTLS (SPIFFE IDs
#                           checked both ways, policy per request) → payments' inbound → service,
#               floor       for reference, not a peer: the same path through a pair of meshgate's
#                           design that does nothing but forward, on meshgate's own crates (tokio
#                           on one thread, hyper, tokio-rustls; gateway/examples/floor_pair.rs):
#                           the distance to it is what meshgate's own work costs;
#   handshakes  meshgate-loadgen: new connections, full TLS 1.3 mTLS handshakes with client
#               certificates and no resumption, against the payments inbound, the nginx server
#               sidecar and the HAProxy server sidecar;
#   memory      RSS (VmRSS) of a fresh gateway inbound, nginx and HAProxy server when idle and with
#               1,000 and 10,000 idle mTLS connections (full mode; --quick does 1,000 only);
#   CA          the CA enrollment example (ca/examples/enroll_load.rs), when this checkout has it.
#
# Results: a markdown table on stdout, and JSON in target/bench/results/<UTC time>.json (with the
# raw wrk outputs and the configurations in target/bench/). Everything listens on 127.0.0.1, on
# free ports picked at start; all load stops by itself within bounded time; everything started
# is stopped at the end, on failure and on interrupt.
#
# Settings (environment; --quick changes the defaults shown in brackets):
#   BENCH_DURATION=10s [5s]  BENCH_ROUNDS=3 [1]  BENCH_WARMUP=2s [1s]  BENCH_CONNECTIONS="32 256"
#   BENCH_THREADS=2  BENCH_HS_DURATION=10s [4s]  BENCH_HS_CONCURRENCY=32
#   BENCH_IDLE="1000 10000" [1000]  BENCH_KEEP=1 (keep the temporary directory, for debugging)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/bench/configs.sh
. "$ROOT/scripts/bench/configs.sh"

MODE=full
for arg in "$@"; do
  case $arg in
    --quick) MODE=quick ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "bench: unknown argument $arg (expected --quick or nothing)" >&2
      exit 2
      ;;
  esac
done
if [ "$MODE" = quick ]; then
  d_duration=5s d_rounds=1 d_warmup=1s d_hs=4s d_idle="1000"
else
  d_duration=10s d_rounds=3 d_warmup=2s d_hs=10s d_idle="1000 10000"
fi
DURATION=${BENCH_DURATION:-$d_duration}
ROUNDS=${BENCH_ROUNDS:-$d_rounds}
WARMUP=${BENCH_WARMUP:-$d_warmup}
CONNECTIONS=${BENCH_CONNECTIONS:-32 256}
THREADS=${BENCH_THREADS:-2}
HS_DURATION=${BENCH_HS_DURATION:-$d_hs}
HS_CONCURRENCY=${BENCH_HS_CONCURRENCY:-32}
IDLE_COUNTS=${BENCH_IDLE:-$d_idle}
KEEP=${BENCH_KEEP:-0}
OUT=$ROOT/target/bench
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/meshgate
LOADGEN=$TARGET_DIR/release/meshgate-loadgen
ENROLL_EXAMPLE=ca/examples/enroll_load.rs
FLOOR_EXAMPLE=gateway/examples/floor_pair.rs
FLOOR=$TARGET_DIR/release/examples/floor_pair

TD=bench.example
SHOP=spiffe://$TD/ns/shop/sa/checkout
PAYMENTS=spiffe://$TD/ns/payments/sa/api
PAYMENTS_DNS=payments.$TD # nginx and HAProxy check a DNS name, not the SPIFFE ID
BENCH_PATH=/bench

die() {
  echo "bench: $*" >&2
  exit 1
}
step() { echo "== $*" >&2; }

# Durations as wrk takes them (10s, 1m) to whole seconds, for time bounds.
seconds() {
  local d=$1
  case $d in
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *) echo "$d" ;;
  esac
}
for v in DURATION WARMUP HS_DURATION; do
  [[ $(seconds "${!v}") =~ ^[0-9]+$ ]] || die "BENCH_$v=${!v}: use a whole number with s or m, like 10s"
done
[[ $THREADS =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ && $HS_CONCURRENCY =~ ^[1-9][0-9]*$ ]] ||
  die "BENCH_THREADS, BENCH_ROUNDS and BENCH_HS_CONCURRENCY must be positive integers"
for c in $CONNECTIONS; do
  [[ $c =~ ^[1-9][0-9]*$ ]] && ((THREADS <= c)) || die "BENCH_CONNECTIONS: $c is not a whole number of at least BENCH_THREADS ($THREADS)"
done
for n in $IDLE_COUNTS; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "BENCH_IDLE: $n is not a positive whole number"; done

SUDO=()
[ "$(id -u)" -ne 0 ] && SUDO=(sudo)
PIDS=() # every process this script started, in start order
NAMES=()
WORK=""
OUR_POLICY_RC=0
LG_PID="" # a load generator running in the background, if any

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local all=() i pid
  ((rc == 0 || ${#PIDS[@]} == 0)) || echo "bench: stopping what it started (exit $rc)" >&2
  [ -z "$LG_PID" ] || kill -TERM "$LG_PID" 2>/dev/null || true
  # nginx masters' workers too, in case a master has to be killed and leaves them behind.
  for pid in "${PIDS[@]}"; do
    all+=("$pid")
    mapfile -t -O "${#all[@]}" all < <(children "$pid")
  done
  for ((i = ${#all[@]} - 1; i >= 0; i--)); do kill -TERM "${all[i]}" 2>/dev/null || true; done
  local deadline=$((SECONDS + 10))
  for pid in "${all[@]}"; do
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
      echo "bench: pid $pid did not stop on SIGTERM; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  if ((OUR_POLICY_RC)); then "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d || true; fi
  if [ -n "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# The direct children of a process (nginx workers of a master).
children() {
  { grep -H '^PPid:' /proc/[0-9]*/status 2>/dev/null || true; } |
    awk -v p="$1" '$2 == p { split($1, a, "/"); print a[3] }'
}

# ---------------------------------------------------------------------------------------------
step "tools"
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
if ((${#need[@]})); then
  echo "installing from Debian: ${need[*]}" >&2
  # Debian's nginx and haproxy packages start their own servers; a policy-rc.d that refuses
  # service starts keeps them from doing so (only if none is in place already).
  if [[ " ${need[*]} " == *" nginx "* || " ${need[*]} " == *" haproxy "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
    OUR_POLICY_RC=1
    printf '#!/bin/sh\n# meshgate scripts/bench.sh: no service starts while it installs packages\nexit 101\n' |
      "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
  fi
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if ((OUR_POLICY_RC)); then
    "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    OUR_POLICY_RC=0
    echo "note: Debian's nginx/haproxy services were installed but not started" >&2
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

# 10,000 idle connections need as many descriptors in the server and in the load generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
IDLE_RUN=""
for n in $IDLE_COUNTS; do
  if [ "$NOFILE" != unlimited ] && ((n + 200 > NOFILE)); then
    echo "note: skipping $n idle connections: the open-file limit is $NOFILE (ulimit -Hn)" >&2
  else
    IDLE_RUN+="$n "
  fi
done
MAX_IDLE=0
for n in $IDLE_RUN; do ((n > MAX_IDLE)) && MAX_IDLE=$n; done
MEM_CONNS=$((MAX_IDLE + 1000))
# HAProxy reserves two descriptors per connection (front and back) and refuses to start when the
# limit does not allow that, so under a hard limit of 20,000 it takes fewer than 10,000.
HAP_MEM_CONNS=$MEM_CONNS
if [ "$NOFILE" != unlimited ] && ((HAP_MEM_CONNS * 2 + 100 > NOFILE)); then HAP_MEM_CONNS=$(((NOFILE - 100) / 2)); fi

HAVE_ENROLL=0 HAVE_FLOOR=0
[ -f "$ENROLL_EXAMPLE" ] && HAVE_ENROLL=1
[ -f "$FLOOR_EXAMPLE" ] && HAVE_FLOOR=1
step "cargo build --release --locked (meshgate, meshgate-loadgen$( ((HAVE_ENROLL)) && echo ", the CA enrollment example")$( ((HAVE_FLOOR)) && echo ", the floor pair"))"
cargo build --release --locked -p meshgate -p meshgate-loadgen
((HAVE_ENROLL)) && cargo build --release --locked -p meshgate-ca --example enroll_load
((HAVE_FLOOR)) && cargo build --release --locked -p meshgate-gateway --example floor_pair
[ -x "$BIN" ] && [ -x "$LOADGEN" ] || die "no binaries at $BIN and $LOADGEN after the build"

# ---------------------------------------------------------------------------------------------
# Ports: free on 127.0.0.1 now, below the usual ephemeral range (32768+) so that no client
# socket of the run takes one.
USED_PORTS=" "
pick_port() {
  local p _
  for _ in $(seq 1 500); do
    p=$((20000 + RANDOM % 12000))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      printf -v "$1" '%s' "$p"
      return
    fi
  done
  die "no free port found on 127.0.0.1"
}
for v in CA_PORT CA_ADMIN UP_PORT SHOP_ADMIN SHOP_OUT PAY_ADMIN PAY_IN MEM_ADMIN MEM_IN \
  NGX_CLIENT NGX_SERVER NGX_MEM HAP_CLIENT HAP_SERVER HAP_MEM FLOOR_OUT FLOOR_IN; do
  pick_port "$v"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/meshgate-bench.XXXXXX")
mkdir -p "$OUT/results"
rm -rf "$OUT"/*.txt "$OUT/config"
RUN_START=$SECONDS
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
ROWS=$WORK/rows.jsonl # one JSON object per measurement, assembled at the end
: >"$ROWS"

# Starts a long-running process in the background, its output in $WORK/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
}

pid_of() {
  local i
  for i in "${!NAMES[@]}"; do [ "${NAMES[i]}" = "$1" ] && echo "${PIDS[i]}" && return; done
  die "no process named $1"
}

# Fails with the log's tail when a process we started has died.
check_alive() {
  local i st
  for i in "${!NAMES[@]}"; do
    if ! alive "${PIDS[i]}"; then
      st=0
      wait "${PIDS[i]}" || st=$?
      echo "bench: ${NAMES[i]} (pid ${PIDS[i]}) has exited with status $st; the last lines of its log" \
        "other than access-log lines:" >&2
      { sed 's/\x1b\[[0-9;]*m//g' "$WORK/${NAMES[i]}.log" | grep -v 'meshgate::access' || true; } | tail -n 20 >&2
      exit 1
    fi
  done
}

# Waits (at most 30 s) for URL to answer 200.
wait_http() {
  local url=$1 deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    check_alive
    ((SECONDS < deadline)) || die "$url did not answer 200 within 30 s"
    sleep 0.2
  done
}

# Waits (at most 30 s) for something to listen on a port.
wait_port() {
  local deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    check_alive
    ((SECONDS < deadline)) || die "nothing listens on 127.0.0.1:$1 after 30 s"
    sleep 0.2
  done
}

start_nginx() { # name: its config is $WORK/name/nginx.conf
  local name=$1 dir=$WORK/$1
  mkdir -p "$dir/tmp"
  "$NGINX" -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" ||
    die "nginx rejected $dir/nginx.conf"
  start "$name" "$NGINX" -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf"
}

start_haproxy() { # name: its config is $WORK/name/haproxy.cfg
  local dir=$WORK/$1
  "$HAPROXY" -c -q -f "$dir/haproxy.cfg" || die "haproxy rejected $dir/haproxy.cfg"
  start "$1" "$HAPROXY" -db -f "$dir/haproxy.cfg"
}

# ---------------------------------------------------------------------------------------------
step "CA on 127.0.0.1:$CA_PORT (admin $CA_ADMIN)"
CA=$WORK/ca
"$BIN" ca init --dir "$CA" --trust-domain "$TD" >"$WORK/ca-init.log"
start ca "$BIN" ca serve --dir "$CA" --listen "127.0.0.1:$CA_PORT" --admin "127.0.0.1:$CA_ADMIN"
wait_http "http://127.0.0.1:$CA_ADMIN/healthz"

step "service: nginx on 127.0.0.1:$UP_PORT"
mkdir -p "$WORK/upstream"
nginx_upstream_conf "$WORK/upstream" "$UP_PORT" >"$WORK/upstream/nginx.conf"
start_nginx upstream
wait_http "http://127.0.0.1:$UP_PORT$BENCH_PATH"

# ---------------------------------------------------------------------------------------------
step "meshgate: shop outbound $SHOP_OUT → payments inbound $PAY_IN; a fresh inbound $MEM_IN for memory"
mkdir -p "$WORK/shop" "$WORK/payments" "$WORK/gw-mem"
policy_conf "$PAYMENTS" "$SHOP" "$BENCH_PATH" >"$WORK/payments/policy.toml"
cp "$WORK/payments/policy.toml" "$WORK/gw-mem/policy.toml"
"$BIN" policy check "$WORK/payments/policy.toml" >/dev/null
gateway_inbound_conf "$PAYMENTS" "$CA_PORT" "$PAY_IN" "$UP_PORT" "$PAY_ADMIN" 4096 >"$WORK/payments/gateway.toml"
gateway_inbound_conf "$PAYMENTS" "$CA_PORT" "$MEM_IN" "$UP_PORT" "$MEM_ADMIN" "$MEM_CONNS" >"$WORK/gw-mem/gateway.toml"
gateway_outbound_conf "$SHOP" "$CA_PORT" "$SHOP_OUT" "$PAY_IN" "$PAYMENTS" "$SHOP_ADMIN" >"$WORK/shop/gateway.toml"
for svc in payments shop gw-mem; do
  id=$PAYMENTS
  [ "$svc" = shop ] && id=$SHOP
  (
    umask 077
    "$BIN" ca token create --dir "$CA" --spiffe-id "$id" --ca-url "https://127.0.0.1:$CA_PORT" \
      >"$WORK/$svc/token"
  )
  start "gw-${svc#gw-}" "$BIN" gateway run --worker-threads 1 --config "$WORK/$svc/gateway.toml" \
    --bootstrap-token-file "$WORK/$svc/token"
done
for port in "$PAY_ADMIN" "$SHOP_ADMIN" "$MEM_ADMIN"; do wait_http "http://127.0.0.1:$port/readyz"; done

# ---------------------------------------------------------------------------------------------
step "SVIDs for the nginx and HAProxy sidecars and for the load generator (ca issue)"
issue() { # dir id [dns]
  local out=$WORK/$1/svid
  "$BIN" ca issue --dir "$CA" --spiffe-id "$2" ${3:+--dns "$3"} --out "$out" >/dev/null
  # svid.pem is the leaf followed by its chain; HAProxy wants chain and key in one file.
  cat "$out/svid.pem" "$out/key.pem" >"$out/crt.pem"
  chmod 600 "$out/crt.pem"
}
for side in nginx-client haproxy-client loadgen; do issue "$side" "$SHOP"; done
for side in nginx-server nginx-mem haproxy-server haproxy-mem; do issue "$side" "$PAYMENTS" "$PAYMENTS_DNS"; done

step "nginx pair: $NGX_CLIENT → mTLS → $NGX_SERVER; HAProxy pair: $HAP_CLIENT → mTLS → $HAP_SERVER"
nginx_server_conf "$WORK/nginx-server" "$NGX_SERVER" "$UP_PORT" 4096 >"$WORK/nginx-server/nginx.conf"
nginx_server_conf "$WORK/nginx-mem" "$NGX_MEM" "$UP_PORT" "$MEM_CONNS" >"$WORK/nginx-mem/nginx.conf"
nginx_client_conf "$WORK/nginx-client" "$NGX_CLIENT" "$NGX_SERVER" "$PAYMENTS_DNS" >"$WORK/nginx-client/nginx.conf"
haproxy_server_conf "$WORK/haproxy-server" "$HAP_SERVER" "$UP_PORT" 4096 >"$WORK/haproxy-server/haproxy.cfg"
haproxy_server_conf "$WORK/haproxy-mem" "$HAP_MEM" "$UP_PORT" "$HAP_MEM_CONNS" >"$WORK/haproxy-mem/haproxy.cfg"
haproxy_client_conf "$WORK/haproxy-client" "$HAP_CLIENT" "$HAP_SERVER" "$PAYMENTS_DNS" >"$WORK/haproxy-client/haproxy.cfg"
for n in nginx-server nginx-mem nginx-client; do start_nginx "$n"; done
for n in haproxy-server haproxy-mem haproxy-client; do start_haproxy "$n"; done
for port in "$NGX_SERVER" "$NGX_MEM" "$HAP_SERVER" "$HAP_MEM"; do wait_port "$port"; done

if ((HAVE_FLOOR)); then
  step "floor pair (reference): $FLOOR_OUT → HTTP/2 over mTLS → $FLOOR_IN → service"
  "$FLOOR" init "$WORK/floor" # a CA and two leaves minted now, with rcgen
  start floor-in "$FLOOR" inbound "$WORK/floor" "127.0.0.1:$FLOOR_IN" "127.0.0.1:$UP_PORT"
  wait_port "$FLOOR_IN"
  start floor-out "$FLOOR" outbound "$WORK/floor" "127.0.0.1:$FLOOR_OUT" "127.0.0.1:$FLOOR_IN"
  wait_port "$FLOOR_OUT"
fi

# ---------------------------------------------------------------------------------------------
step "checks: each path answers 200 ok; every server requires and verifies a client certificate"
declare -A URL=(
  [direct]="http://127.0.0.1:$UP_PORT$BENCH_PATH"
  [nginx]="http://127.0.0.1:$NGX_CLIENT$BENCH_PATH"
  [haproxy]="http://127.0.0.1:$HAP_CLIENT$BENCH_PATH"
  [meshgate]="http://127.0.0.1:$SHOP_OUT$BENCH_PATH"
)
PATHS=(direct nginx haproxy meshgate)
PEERS=(nginx haproxy)
PAIRS=("${PEERS[@]}" meshgate) # the proxy pairs whose processes are measured
if ((HAVE_FLOOR)); then
  URL[floor]="http://127.0.0.1:$FLOOR_OUT$BENCH_PATH"
  PATHS+=(floor)
  PAIRS+=(floor)
fi
for p in "${PATHS[@]}"; do
  wait_http "${URL[$p]}"
  body=$(curl -fsS --max-time 5 "${URL[$p]}") || die "${URL[$p]} failed"
  [ "$body" = ok ] || die "$p: ${URL[$p]} answered '$body', not 'ok'"
done
sed 's/\x1b\[[0-9;]*m//g' "$WORK/gw-payments.log" | grep 'decision[":= ]*allow' >/dev/null ||
  die "the payments gateway logged no allow decision; its log: $(tail -n 5 "$WORK/gw-payments.log")"
# nginx writes its access log in batches (buffer=64k flush=1s, as the gateways batch theirs).
for _ in $(seq 1 30); do
  grep -q 'client_verify=SUCCESS' "$WORK/nginx-server/access.log" 2>/dev/null && break
  sleep 0.2
done
grep -q 'client_verify=SUCCESS' "$WORK/nginx-server/access.log" || die "the nginx server sidecar saw no verified client certificate"
grep -q 'client_cert=1 verify=0' "$WORK/haproxy-server.log" || die "the HAProxy server sidecar saw no verified client certificate"
denied=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$SHOP_OUT/other" || true)
[ "$denied" = 403 ] || die "meshgate answered $denied to a path the policy does not allow (want 403)"
code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://127.0.0.1:$NGX_SERVER$BENCH_PATH" || true)
[ "$code" = 400 ] || die "the nginx server sidecar answered $code to a client without a certificate (want 400)"
REFUSING=("$HAP_SERVER" "$PAY_IN")
((HAVE_FLOOR)) && REFUSING+=("$FLOOR_IN")
for port in "${REFUSING[@]}"; do
  code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://127.0.0.1:$port$BENCH_PATH" || true)
  [ "$code" = 000 ] || die "127.0.0.1:$port answered $code to a client without a certificate (want a refused handshake)"
done

# ---------------------------------------------------------------------------------------------
# CPU time (clock ticks) of a process and of its children (nginx workers), from /proc/PID/stat.
TICKS=$(getconf CLK_TCK)
cpu_of() { # pid [user]: user and system time, or with "user" the user time alone
  local p total=0 fields='$12 + $13'
  [ "${2:-}" = user ] && fields='$12'
  for p in "$1" $(children "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    # Fields after the command name (which may hold spaces): utime is 14th, stime 15th overall.
    total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk "{print $fields}")))
  done
  echo "$total"
}
# Resident memory (kB) of a process plus its children (an nginx master and its worker).
rss_of() {
  local p total=0
  for p in "$1" $(children "$1"); do
    [ -r "/proc/$p/status" ] || continue
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
  done
  echo "$total"
}
declare -A PAIR=([nginx]="nginx-client nginx-server" [haproxy]="haproxy-client haproxy-server" [meshgate]="gw-shop gw-payments"
  [floor]="floor-out floor-in")
declare -A CPU0 USER0
for p in "${PAIRS[@]}"; do
  for n in ${PAIR[$p]}; do
    CPU0[$n]=$(cpu_of "$(pid_of "$n")")
    USER0[$n]=$(cpu_of "$(pid_of "$n")" user)
  done
done

# ---------------------------------------------------------------------------------------------
# One wrk output → "req_per_s p50_ms p99_ms errors".
wrk_stats() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0
      if (v ~ /m$/) return v * 60000; if (v ~ /s$/) return v * 1000; return v
    }
    /Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    END { printf "%s %s %s %d\n", rps, p50, p99, err }' "$1"
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A REQS # requests served per path, warm-ups included (for CPU per request)
WRK_BOUND=$(($(seconds "$DURATION") + 30))
run_wrk() { # path connections duration outfile
  timeout --foreground "$WRK_BOUND" wrk -t"$THREADS" -c"$2" -d"$3" --latency --timeout 5s "${URL[$1]}" >"$4" ||
    die "wrk against $1 (${URL[$1]}) failed or ran over ${WRK_BOUND}s; output: $(cat "$4")"
  check_alive
  local n
  n=$(awk '/requests in/ {print $1}' "$4")
  REQS[$1]=$((${REQS[$1]:-0} + ${n:-0}))
}

for c in $CONNECTIONS; do
  step "throughput at $c connections: warm-up $WARMUP per path"
  for p in "${PATHS[@]}"; do run_wrk "$p" "$c" "$WARMUP" "$WORK/warmup-$p-$c.txt"; done
  for ((r = 1; r <= ROUNDS; r++)); do
    # A different order each round, so that a slow spell of the shared machine does not always
    # fall on the same path.
    k=$(((r - 1) % ${#PATHS[@]}))
    for p in "${PATHS[@]:k}" "${PATHS[@]:0:k}"; do
      step "round $r/$ROUNDS at $c connections: $p (wrk -t$THREADS -c$c -d$DURATION)"
      run_wrk "$p" "$c" "$DURATION" "$OUT/wrk-$p-c$c-$r.txt"
    done
  done
  for p in "${PATHS[@]}"; do
    rps="" p50="" p99="" err=0
    for ((r = 1; r <= ROUNDS; r++)); do
      read -r a b d e < <(wrk_stats "$OUT/wrk-$p-c$c-$r.txt")
      rps+="$a " p50+="$b " p99+="$d " err=$((err + e))
    done
    jq -nc --arg path "$p" --argjson c "$c" --argjson rps "$(median <<<"$rps")" \
      --argjson p50 "$(median <<<"$p50")" --argjson p99 "$(median <<<"$p99")" --argjson err "$err" \
      --arg all "$rps" \
      '{kind: "throughput", path: $path, connections: $c, rps: $rps, p50_ms: $p50, p99_ms: $p99,
        errors: $err, rps_rounds: ($all | split(" ") | map(select(. != "") | tonumber))}' >>"$ROWS"
  done
done

# Peak RSS (VmHWM) and CPU of the proxies over the throughput runs, before anything else runs.
for p in "${PAIRS[@]}"; do
  for n in ${PAIR[$p]}; do
    pid=$(pid_of "$n") hwm=0
    for q in "$pid" $(children "$pid"); do hwm=$((hwm + $(awk '/^VmHWM:/ {print $2}' "/proc/$q/status"))); done
    jq -nc --arg pair "$p" --arg proc "$n" --argjson hwm "$hwm" \
      --argjson cpu "$(awk -v t="$(($(cpu_of "$pid") - ${CPU0[$n]}))" -v hz="$TICKS" 'BEGIN { print t / hz }')" \
      --argjson user "$(awk -v t="$(($(cpu_of "$pid" user) - ${USER0[$n]}))" -v hz="$TICKS" 'BEGIN { print t / hz }')" \
      --argjson reqs "${REQS[$p]}" \
      '{kind: "proxy", pair: $pair, process: $proc, peak_rss_kb: $hwm, cpu_s: $cpu, user_s: $user,
        cpu_us_per_req: (if $reqs > 0 then ($cpu * 1e6 / $reqs * 10 | round / 10) else null end),
        user_us_per_req: (if $reqs > 0 then ($user * 1e6 / $reqs * 10 | round / 10) else null end)}' >>"$ROWS"
  done
done

# ---------------------------------------------------------------------------------------------
declare -A HS_PORT=([meshgate]=$PAY_IN [nginx]=$NGX_SERVER [haproxy]=$HAP_SERVER)
declare -A MEM_PORT=([meshgate]=$MEM_IN [nginx]=$NGX_MEM [haproxy]=$HAP_MEM)
declare -A MEM_PROC=([meshgate]=gw-mem [nginx]=nginx-mem [haproxy]=haproxy-mem)
lg_target() { # port → the loadgen's target arguments
  local s=$WORK/loadgen/svid
  echo --addr "127.0.0.1:$1" --cert "$s/svid.pem" --key "$s/key.pem" --ca "$s/bundle.pem" --server-id "$PAYMENTS"
}
HS_BOUND=$(($(seconds "$HS_DURATION") + 30))
for ((r = 1; r <= ROUNDS; r++)); do
  for t in meshgate nginx haproxy; do
    step "handshakes round $r/$ROUNDS: $t (meshgate-loadgen handshake -c $HS_CONCURRENCY for $HS_DURATION)"
    # shellcheck disable=SC2046
    timeout "$HS_BOUND" "$LOADGEN" handshake $(lg_target "${HS_PORT[$t]}") \
      --concurrency "$HS_CONCURRENCY" --duration "$HS_DURATION" >"$WORK/hs-$t-$r.json" 2>"$WORK/hs-$t-$r.err" ||
      die "meshgate-loadgen handshake against $t failed: $(cat "$WORK/hs-$t-$r.err")"
    check_alive
  done
done
for t in meshgate nginx haproxy; do
  jq -sc --arg t "$t" '{kind: "handshake", target: $t,
      handshakes_per_sec: (map(.handshakes_per_sec) | sort | .[length / 2 | floor]),
      errors: (map(.errors) | add), rounds: map(.handshakes_per_sec)}' "$WORK"/hs-"$t"-*.json >>"$ROWS"
done

# ---------------------------------------------------------------------------------------------
# Fresh server processes (they served one check each): RSS idle, then with N idle mTLS
# connections held by the load generator.
for t in meshgate nginx haproxy; do
  pid=$(pid_of "${MEM_PROC[$t]}")
  idle_kb=$(rss_of "$pid")
  jq -nc --arg t "$t" --argjson kb "$idle_kb" '{kind: "memory", server: $t, connections: 0, rss_kb: $kb}' >>"$ROWS"
  for n in $IDLE_RUN; do
    if [ "$t" = haproxy ] && ((n + 20 > HAP_MEM_CONNS)); then
      echo "note: HAProxy not measured with $n connections: at the open-file limit of $NOFILE it takes $HAP_MEM_CONNS" >&2
      jq -nc --arg t "$t" --argjson n "$n" --arg why "open-file limit $NOFILE: HAProxy maxconn $HAP_MEM_CONNS" \
        '{kind: "memory", server: $t, connections: $n, rss_kb: null, skipped: $why}' >>"$ROWS"
      continue
    fi
    step "memory: $t with $n idle mTLS connections"
    f=$WORK/idle-$t-$n
    # shellcheck disable=SC2046
    timeout 300 "$LOADGEN" idle $(lg_target "${MEM_PORT[$t]}") --connections "$n" --concurrency 64 \
      --hold 3s >"$f.out" 2>"$f.err" &
    LG_PID=$!
    until grep -q '^ready' "$f.out" 2>/dev/null; do
      alive "$LG_PID" || break
      sleep 0.2
    done
    sleep 2 # let the server settle after the last handshake
    kb=$(rss_of "$pid")
    wait "$LG_PID" || die "meshgate-loadgen idle against $t failed: $(cat "$f.err")"
    LG_PID=""
    check_alive
    report=$(tail -n 1 "$f.out")
    jq -nc --arg t "$t" --argjson n "$n" --argjson kb "$kb" --argjson idle "$idle_kb" --argjson r "$report" \
      '{kind: "memory", server: $t, connections: $n, rss_kb: $kb,
        per_conn_kb: ((($kb - $idle) / $n) * 100 | round / 100),
        opened: $r.opened, errors: $r.errors, closed_by_peer: $r.closed_by_peer}' >>"$ROWS"
    sleep 1
  done
done

# ---------------------------------------------------------------------------------------------
CA_JSON=null
if ((HAVE_ENROLL)); then
  if [ "$MODE" = quick ]; then args=(--clients 8 --enrollments 200 --renewals 200); else args=(--clients 32 --enrollments 4000 --renewals 2000); fi
  step "CA enrollment: enroll_load ${args[*]}"
  timeout 300 "$TARGET_DIR/release/examples/enroll_load" "${args[@]}" >"$WORK/enroll.out" 2>"$WORK/enroll.err" ||
    die "the CA enrollment example failed: $(tail -n 5 "$WORK/enroll.err")"
  CA_JSON=$(grep '^{' "$WORK/enroll.out" | tail -n 1)
  jq -e . >/dev/null <<<"$CA_JSON" || die "the CA enrollment example printed no JSON line: $(cat "$WORK/enroll.out")"
else
  echo "CA enrollment bench: not available in this checkout" >&2
fi

# The configurations, for the record (no keys, no tokens).
mkdir -p "$OUT/config"
for f in upstream/nginx.conf nginx-client/nginx.conf nginx-server/nginx.conf nginx-mem/nginx.conf \
  haproxy-client/haproxy.cfg haproxy-server/haproxy.cfg haproxy-mem/haproxy.cfg \
  shop/gateway.toml payments/gateway.toml gw-mem/gateway.toml payments/policy.toml; do
  cp "$WORK/$f" "$OUT/config/${f//\//-}"
done

# ---------------------------------------------------------------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit+="+changes"
RESULT=$OUT/results/$(date -u +%Y%m%dT%H%M%SZ).json
jq -s --arg mode "$MODE" --arg at "$STARTED_AT" --arg commit "$commit" --arg load "$LOAD_START" \
  --arg cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" --argjson cores "$(nproc)" \
  --arg wrk "$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)" --arg nginx "$("$NGINX" -v 2>&1 | sed 's/.*: //')" \
  --arg haproxy "$("$HAPROXY" -v | head -n1 | cut -d' ' -f1-3)" --arg duration "$DURATION" --argjson rounds "$ROUNDS" \
  --arg threads "$THREADS" --arg hs "$HS_DURATION" --argjson hsc "$HS_CONCURRENCY" --argjson ca "$CA_JSON" \
  --argjson seconds "$((SECONDS - RUN_START))" -f "$ROOT/scripts/bench/summary.jq" "$ROWS" >"$RESULT"
jq -r -f "$ROOT/scripts/bench/table.jq" "$RESULT" | tee "$OUT/report.md"
echo >&2
echo "results: $RESULT (report: $OUT/report.md, raw wrk outputs: $OUT/wrk-*.txt); measurements took $((SECONDS - RUN_START)) s after the build" >&2
jq -r '.summary_line' "$RESULT"
