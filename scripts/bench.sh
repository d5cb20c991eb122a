#!/usr/bin/env bash
# Whole-system benchmark of meshgate against a peer in the same run (STYLE.md point 9): wrk sends
# HTTP/1.1 on loopback (a) straight to an nginx upstream, (b) through a pair of meshgate gateways
# (shop's outbound route → HTTP/2 over mTLS → payments' inbound, with SPIFFE ID checks and
# policy), and (c) through a pair of nginx sidecars doing mTLS with the same SVIDs (HTTP/1.1 over
# TLS 1.3, keep-alive pools, no SPIFFE ID authorization and no policy). It prints requests/s,
# p50/p99 latency, the ratios meshgate/nginx and meshgate/direct, and the peak RSS and CPU time of
# every proxy process, and writes the table to target/bench/report.txt with the raw wrk outputs.
#
# Everything listens on 127.0.0.1 only, on free ports picked at start. Settings (environment):
#   BENCH_DURATION=10s  BENCH_CONNECTIONS=32  BENCH_THREADS=2  BENCH_ROUNDS=3  BENCH_WARMUP=2s
#   BENCH_NGINX_WORKERS=auto  BENCH_KEEP=1 (keep the temporary directory, for debugging)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10s}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-2s}
NGINX_WORKERS=${BENCH_NGINX_WORKERS:-auto}
KEEP=${BENCH_KEEP:-0}
OUT=$ROOT/target/bench
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/meshgate

TD=bench.example
SHOP=spiffe://$TD/ns/shop/sa/checkout
PAYMENTS=spiffe://$TD/ns/payments/sa/api
PAYMENTS_DNS=payments.$TD # nginx checks a DNS name, not the SPIFFE ID
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
    *ms) echo 1 ;;
    *s) echo "${d%s}" ;;
    *m) echo $((${d%m} * 60)) ;;
    *h) echo $((${d%h} * 3600)) ;;
    *) echo "$d" ;;
  esac
}
[[ $(seconds "$DURATION") =~ ^[0-9]+$ ]] || die "BENCH_DURATION=$DURATION: use a whole number with s or m, like 10s"
[[ $(seconds "$WARMUP") =~ ^[0-9]+$ ]] || die "BENCH_WARMUP=$WARMUP: use a whole number with s, like 2s"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ && $THREADS =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] ||
  die "BENCH_CONNECTIONS, BENCH_THREADS and BENCH_ROUNDS must be positive integers"
((THREADS <= CONNECTIONS)) || die "BENCH_THREADS ($THREADS) must not exceed BENCH_CONNECTIONS ($CONNECTIONS)"

SUDO=()
[ "$(id -u)" -ne 0 ] && SUDO=(sudo)
PIDS=()   # every process this script started, in start order
NAMES=()
WORK=""
OUR_POLICY_RC=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local all=() i pid
  ((rc == 0 || ${#PIDS[@]} == 0)) || echo "bench: stopping what it started (exit $rc)" >&2
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
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  echo "installing from Debian: ${need[*]}" >&2
  # Debian's nginx package starts its own server on port 80 of every address; a policy-rc.d
  # that refuses service starts keeps it from doing so (only if none is in place already).
  if [[ " ${need[*]} " == *" nginx "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
    OUR_POLICY_RC=1
    printf '#!/bin/sh\n# meshgate scripts/bench.sh: no service starts while it installs nginx\nexit 101\n' |
      "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
  fi
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if ((OUR_POLICY_RC)); then
    "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
    OUR_POLICY_RC=0
    echo "note: Debian's nginx service was installed but not started (systemctl disable nginx keeps it off at boot)" >&2
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

step "cargo build --release --locked"
cargo build --release --locked
[ -x "$BIN" ] || die "no binary at $BIN after the build"

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
for v in CA_PORT CA_ADMIN UP_PORT SHOP_ADMIN SHOP_OUT PAY_ADMIN PAY_IN NGX_CLIENT NGX_SERVER; do
  pick_port "$v"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/meshgate-bench.XXXXXX")
mkdir -p "$OUT"
rm -rf "$OUT"/*.txt "$OUT/config"
RUN_START=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

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

# ---------------------------------------------------------------------------------------------
step "CA on 127.0.0.1:$CA_PORT (admin $CA_ADMIN)"
CA=$WORK/ca
"$BIN" ca init --dir "$CA" --trust-domain "$TD" >"$WORK/ca-init.log"
start ca "$BIN" ca serve --dir "$CA" --listen "127.0.0.1:$CA_PORT" --admin "127.0.0.1:$CA_ADMIN"
wait_http "http://127.0.0.1:$CA_ADMIN/healthz"

step "upstream: nginx on 127.0.0.1:$UP_PORT"
# The parts of an nginx config every instance shares; $1 is its directory.
nginx_head() {
  cat <<EOF
daemon off;
worker_processes $NGINX_WORKERS;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
http {
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
EOF
}
start_nginx() {
  local name=$1 dir=$WORK/$1
  "$NGINX" -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" ||
    die "nginx rejected $dir/nginx.conf"
  start "$name" "$NGINX" -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf"
}

mkdir -p "$WORK/upstream/tmp"
{
  nginx_head "$WORK/upstream"
  cat <<EOF
  access_log off;
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { default_type text/plain; return 200 "ok\n"; }
  }
}
EOF
} >"$WORK/upstream/nginx.conf"
start_nginx upstream
wait_http "http://127.0.0.1:$UP_PORT$BENCH_PATH"

# ---------------------------------------------------------------------------------------------
step "meshgate gateways: shop outbound 127.0.0.1:$SHOP_OUT → payments inbound 127.0.0.1:$PAY_IN"
mkdir -p "$WORK/shop" "$WORK/payments"
cat >"$WORK/payments/policy.toml" <<EOF
service = "$PAYMENTS"
mode = "enforce"

[[allow]]
name = "shop calls the benchmark path"
from = ["$SHOP"]
methods = ["GET"]
paths = ["$BENCH_PATH"]
EOF
"$BIN" policy check "$WORK/payments/policy.toml" >/dev/null
cat >"$WORK/payments/gateway.toml" <<EOF
spiffe_id = "$PAYMENTS"
state_dir = "state"

[ca]
url = "https://127.0.0.1:$CA_PORT"

[inbound]
listen = "127.0.0.1:$PAY_IN"
upstream = "http://127.0.0.1:$UP_PORT"
policy = ["policy.toml"]

[admin]
listen = "127.0.0.1:$PAY_ADMIN"

[audit]
path = "audit.jsonl"
EOF
cat >"$WORK/shop/gateway.toml" <<EOF
spiffe_id = "$SHOP"
state_dir = "state"

[ca]
url = "https://127.0.0.1:$CA_PORT"

[[outbound]]
name = "payments"
listen = "127.0.0.1:$SHOP_OUT"
target = "127.0.0.1:$PAY_IN"
expected_peer = "$PAYMENTS"

[admin]
listen = "127.0.0.1:$SHOP_ADMIN"

[audit]
path = "audit.jsonl"
EOF
for svc in payments shop; do
  id=$PAYMENTS
  [ "$svc" = shop ] && id=$SHOP
  (
    umask 077
    "$BIN" ca token create --dir "$CA" --spiffe-id "$id" --ca-url "https://127.0.0.1:$CA_PORT" \
      >"$WORK/$svc/token"
  )
  start "gw-$svc" "$BIN" gateway run --config "$WORK/$svc/gateway.toml" \
    --bootstrap-token-file "$WORK/$svc/token"
done
wait_http "http://127.0.0.1:$PAY_ADMIN/readyz"
wait_http "http://127.0.0.1:$SHOP_ADMIN/readyz"

# ---------------------------------------------------------------------------------------------
step "nginx pair: client sidecar 127.0.0.1:$NGX_CLIENT → mTLS → server sidecar 127.0.0.1:$NGX_SERVER"
"$BIN" ca issue --dir "$CA" --spiffe-id "$SHOP" --out "$WORK/nginx-client/svid" >/dev/null
"$BIN" ca issue --dir "$CA" --spiffe-id "$PAYMENTS" --dns "$PAYMENTS_DNS" \
  --out "$WORK/nginx-server/svid" >/dev/null
for side in client server; do
  s=$WORK/nginx-$side/svid
  # svid.pem is the leaf followed by its chain; bundle.pem holds the roots.
  awk '/BEGIN/{n++} n==1' "$s/svid.pem" >"$s/leaf.pem"
  awk '/BEGIN/{n++} n>=2' "$s/svid.pem" >"$s/chain.pem"
  openssl verify -CAfile "$s/bundle.pem" -untrusted "$s/chain.pem" "$s/leaf.pem" >/dev/null ||
    die "openssl does not verify the SVID in $s"
  mkdir -p "$WORK/nginx-$side/tmp"
done

c=$WORK/nginx-client
{
  nginx_head "$c"
  cat <<EOF
  access_log $c/access.log;
  upstream server_sidecar {
    server 127.0.0.1:$NGX_SERVER;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGX_CLIENT;
    location / {
      proxy_pass https://server_sidecar;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate $c/svid/svid.pem;
      proxy_ssl_certificate_key $c/svid/key.pem;
      proxy_ssl_trusted_certificate $c/svid/bundle.pem;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 3;
      proxy_ssl_name $PAYMENTS_DNS;
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse off;
    }
  }
}
EOF
} >"$c/nginx.conf"

s=$WORK/nginx-server
{
  nginx_head "$s"
  cat <<EOF
  log_format mtls '\$remote_addr "\$request" \$status client_verify=\$ssl_client_verify conn=\$connection conn_requests=\$connection_requests';
  access_log $s/access.log mtls;
  upstream app {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGX_SERVER ssl;
    ssl_certificate $s/svid/svid.pem;
    ssl_certificate_key $s/svid/key.pem;
    ssl_client_certificate $s/svid/bundle.pem;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} >"$s/nginx.conf"
start_nginx nginx-server
start_nginx nginx-client

# ---------------------------------------------------------------------------------------------
step "checks: each path answers 200 ok"
DIRECT_URL="http://127.0.0.1:$UP_PORT$BENCH_PATH"
MESH_URL="http://127.0.0.1:$SHOP_OUT$BENCH_PATH"
NGINX_URL="http://127.0.0.1:$NGX_CLIENT$BENCH_PATH"
wait_http "$NGINX_URL"
for url in "$DIRECT_URL" "$MESH_URL" "$NGINX_URL"; do
  body=$(curl -fsS --max-time 5 "$url") || die "$url failed"
  [ "$body" = ok ] || die "$url answered '$body', not 'ok'"
done
# The payments gateway decided by policy; the server sidecar saw a verified client certificate
# and refuses a client without one.
# (Builds before 3390ebb wrote colour escapes even into a file: strip any first.)
sed 's/\x1b\[[0-9;]*m//g' "$WORK/gw-payments.log" | grep 'decision[":= ]*allow' >/dev/null ||
  die "the payments gateway logged no allow decision; its log: $(tail -n 5 "$WORK/gw-payments.log")"
grep -q 'client_verify=SUCCESS' "$s/access.log" || die "the server sidecar saw no verified client certificate"
code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://127.0.0.1:$NGX_SERVER$BENCH_PATH" || true)
[ "$code" = 400 ] || die "the server sidecar answered $code to a client without a certificate (want 400)"
denied=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$SHOP_OUT/other" || true)
[ "$denied" = 403 ] || die "meshgate answered $denied to a path the policy does not allow (want 403)"

# ---------------------------------------------------------------------------------------------
# CPU time (s) of a process and of its children (nginx workers), from /proc/PID/stat.
TICKS=$(getconf CLK_TCK)
cpu_of() {
  local p total=0
  for p in "$1" $(children "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    # Fields after the command name (which may hold spaces): utime is 14th, stime 15th overall.
    total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}
PROXIES=(gw-shop gw-payments nginx-client nginx-server)
declare -A CPU0
for n in "${PROXIES[@]}"; do CPU0[$n]=$(cpu_of "$(pid_of "$n")"); done

declare -A REQS # requests served per path, warm-up included (for CPU per request)
WRK_BOUND=$(($(seconds "$DURATION") + 30))
run_wrk() { # name url duration outfile
  timeout --foreground "$WRK_BOUND" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$3" --latency --timeout 5s "$2" >"$4" ||
    die "wrk against $1 ($2) failed or ran over ${WRK_BOUND}s; output: $(cat "$4")"
  check_alive
  local n
  n=$(awk '/requests in/ {print $1}' "$4")
  REQS[$1]=$((${REQS[$1]:-0} + ${n:-0}))
}
declare -A URL=([direct]=$DIRECT_URL [meshgate]=$MESH_URL [nginx]=$NGINX_URL)
PATHS=(direct meshgate nginx)

step "warm-up: $WARMUP per path"
for p in "${PATHS[@]}"; do run_wrk "$p" "${URL[$p]}" "$WARMUP" "$WORK/warmup-$p.txt"; done

for ((r = 1; r <= ROUNDS; r++)); do
  # A different order each round, so that a slow spell of the shared machine does not always
  # fall on the same path.
  order=("${PATHS[@]:$(((r - 1) % 3))}" "${PATHS[@]:0:$(((r - 1) % 3))}")
  for p in "${order[@]}"; do
    step "round $r/$ROUNDS: $p (wrk -t$THREADS -c$CONNECTIONS -d$DURATION)"
    run_wrk "$p" "${URL[$p]}" "$DURATION" "$OUT/wrk-$p-$r.txt"
  done
done

# Peak RSS (VmHWM, kB) and CPU, read before anything stops.
hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
declare -A RSS RSS_MASTER NWORKERS CPU
for n in "${PROXIES[@]}"; do
  pid=$(pid_of "$n")
  CPU[$n]=$(($(cpu_of "$pid") - ${CPU0[$n]}))
  case $n in
    gw-*) RSS[$n]=$(hwm "$pid") ;;
    nginx-*)
      sum=0 count=0
      for w in $(children "$pid"); do
        sum=$((sum + $(hwm "$w")))
        count=$((count + 1))
      done
      RSS[$n]=$sum NWORKERS[$n]=$count RSS_MASTER[$n]=$(hwm "$pid")
      ;;
  esac
done
check_alive
# The configurations, for the record (no keys, no tokens).
mkdir -p "$OUT/config"
for f in upstream/nginx.conf nginx-client/nginx.conf nginx-server/nginx.conf \
  shop/gateway.toml payments/gateway.toml payments/policy.toml; do
  cp "$WORK/$f" "$OUT/config/${f//\//-}"
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
declare -A RPS P50 P99 ERR LOW HIGH
for p in "${PATHS[@]}"; do
  rps="" p50="" p99="" err=0
  for ((r = 1; r <= ROUNDS; r++)); do
    read -r a b c e < <(wrk_stats "$OUT/wrk-$p-$r.txt")
    rps+="$a " p50+="$b " p99+="$c " err=$((err + e))
  done
  RPS[$p]=$(median <<<"$rps") P50[$p]=$(median <<<"$p50") P99[$p]=$(median <<<"$p99") ERR[$p]=$err
  LOW[$p]=$(tr ' ' '\n' <<<"$rps" | grep . | sort -g | head -n1)
  HIGH[$p]=$(tr ' ' '\n' <<<"$rps" | grep . | sort -g | tail -n1)
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
us_per_req() { awk -v t="$1" -v hz="$TICKS" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "n/a" }'; }

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit+=" (with uncommitted changes)"
{
  echo "meshgate whole-system benchmark, $(date -u +%Y-%m-%dT%H:%MZ), meshgate $commit"
  echo "machine: $(nproc) cores ($cpu_model), load average before the run: $LOAD_START"
  echo "tools:   $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $(openssl version | cut -d' ' -f1-2)"
  echo "load:    wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, HTTP/1.1 keep-alive, GET $BENCH_PATH (upstream answers \"ok\"),"
  echo "         $ROUNDS rounds in rotating order after a $WARMUP warm-up; medians over the rounds"
  echo
  printf '%-44s %10s %21s %9s %9s %7s\n' "path" "req/s" "req/s range" "p50 ms" "p99 ms" "errors"
  for p in "${PATHS[@]}"; do
    case $p in
      direct) label="direct: wrk -> nginx upstream" ;;
      meshgate) label="meshgate pair: h2 + mTLS across the hop" ;;
      nginx) label="nginx pair: HTTP/1.1 + mTLS across the hop" ;;
    esac
    printf '%-44s %10.0f %10.0f - %-8.0f %9.3f %9.3f %7d\n' "$label" "${RPS[$p]}" "${LOW[$p]}" "${HIGH[$p]}" \
      "${P50[$p]}" "${P99[$p]}" "${ERR[$p]}"
  done
  for p in "${PATHS[@]}"; do
    [ "${ERR[$p]}" -eq 0 ] || echo "WARNING: $p had ${ERR[$p]} socket errors or non-2xx answers; its numbers are not comparable"
  done
  echo
  printf '%-24s %10s %9s %9s\n' "ratio" "req/s" "p50" "p99"
  printf '%-24s %10s %9s %9s\n' "meshgate / nginx pair" "$(ratio "${RPS[meshgate]}" "${RPS[nginx]}")" \
    "$(ratio "${P50[meshgate]}" "${P50[nginx]}")" "$(ratio "${P99[meshgate]}" "${P99[nginx]}")"
  printf '%-24s %10s %9s %9s\n' "meshgate / direct" "$(ratio "${RPS[meshgate]}" "${RPS[direct]}")" \
    "$(ratio "${P50[meshgate]}" "${P50[direct]}")" "$(ratio "${P99[meshgate]}" "${P99[direct]}")"
  printf '%-24s %10s %9s %9s\n' "nginx pair / direct" "$(ratio "${RPS[nginx]}" "${RPS[direct]}")" \
    "$(ratio "${P50[nginx]}" "${P50[direct]}")" "$(ratio "${P99[nginx]}" "${P99[direct]}")"
  echo
  echo "proxy processes (peak RSS = VmHWM; CPU = user+system over warm-up and rounds)"
  printf '%-44s %-38s %8s %12s\n' "process" "peak RSS" "CPU s" "CPU us/req"
  mesh_cpu=$((${CPU[gw-shop]} + ${CPU[gw-payments]}))
  ngx_cpu=$((${CPU[nginx-client]} + ${CPU[nginx-server]}))
  for n in gw-shop gw-payments; do
    label="meshgate gateway, shop (outbound)"
    [ "$n" = gw-payments ] && label="meshgate gateway, payments (inbound)"
    printf '%-44s %-38s %8.2f %12s\n' "$label" "$(mib "${RSS[$n]}")" "$(awk -v t="${CPU[$n]}" -v hz="$TICKS" 'BEGIN{print t/hz}')" \
      "$(us_per_req "${CPU[$n]}" "${REQS[meshgate]}")"
  done
  for n in nginx-client nginx-server; do
    label="nginx client sidecar"
    [ "$n" = nginx-server ] && label="nginx server sidecar"
    printf '%-44s %-38s %8.2f %12s\n' "$label" \
      "$(mib "${RSS[$n]}") (${NWORKERS[$n]} workers) + $(mib "${RSS_MASTER[$n]}") master" \
      "$(awk -v t="${CPU[$n]}" -v hz="$TICKS" 'BEGIN{print t/hz}')" "$(us_per_req "${CPU[$n]}" "${REQS[nginx]}")"
  done
  mesh_rss=$((${RSS[gw-shop]} + ${RSS[gw-payments]}))
  ngx_rss=$((${RSS[nginx-client]} + ${RSS[nginx-server]} + ${RSS_MASTER[nginx-client]} + ${RSS_MASTER[nginx-server]}))
  ngx_workers=$((${RSS[nginx-client]} + ${RSS[nginx-server]}))
  printf '%-44s %-38s %8s %12s\n' "meshgate pair / nginx pair" \
    "$(ratio "$mesh_rss" "$ngx_workers") (workers), $(ratio "$mesh_rss" "$ngx_rss") (all)" "" \
    "$(ratio "$(us_per_req "$mesh_cpu" "${REQS[meshgate]}")" "$(us_per_req "$ngx_cpu" "${REQS[nginx]}")")"
  echo "(nginx's figures add the VmHWM of forked processes, so pages they share are counted once per process.)"
  echo
  echo "What differs: the meshgate pair checks the peer's SPIFFE ID both ways (the route's"
  echo "expected_peer, and the policy on the inbound, asked for every request), adds"
  echo "x-forwarded-client-cert and records denials in its audit log. The nginx pair verifies the"
  echo "certificate chains against the same bundle and the server's DNS name only: nginx does not"
  echo "check SPIFFE IDs, so it does no SPIFFE ID authorization and no policy, and less work. Across"
  echo "the hop meshgate multiplexes one HTTP/2 connection; the nginx pair keeps a pool of HTTP/1.1"
  echo "connections. Both sides log one access line per request."
  echo "Everything (wrk, upstream, proxies, CA) shares the same $(nproc) cores."
} | tee "$OUT/report.txt"
echo >&2
echo "report: $OUT/report.txt (raw wrk outputs: $OUT/wrk-*.txt); run took $((SECONDS - RUN_START)) s after the build" >&2
