#!/usr/bin/env bash
# Scans the TLS of a real CA (`ca serve`) and a real gateway inbound with sslscan, an
# independent client, and checks what meshgate promises: TLS 1.3 only, only the three TLS 1.3
# AEAD suites, the x25519/P-256/P-384 groups, no compression, no renegotiation, not vulnerable to Heartbleed, and a client
# certificate demanded by the gateway. With TLS_SCAN_TESTSSL=1 it also runs testssl.sh (a few
# minutes) and fails on any finding it rates MEDIUM or worse.
#
# Everything listens on 127.0.0.1 only, on free ports; every process it starts is stopped at
# the end. Output: a summary on stdout, the scanners' reports in target/tls-scan/.
# Exit status: 0 all checks hold, 1 a check failed, 2 could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/tls-scan
TD=scan.example
GW_ID=spiffe://$TD/ns/scan/sa/api

die() {
  echo "tls-scan: $*" >&2
  exit 2
}

SUDO=()
[ "$(id -u)" -ne 0 ] && SUDO=(sudo)
need=()
command -v sslscan >/dev/null || need+=(sslscan)
command -v curl >/dev/null || need+=(curl)
if [ "${TLS_SCAN_TESTSSL:-0}" = 1 ] && ! command -v testssl >/dev/null; then need+=(testssl.sh); fi
if ((${#need[@]})); then
  echo "tls-scan: installing ${need[*]}" >&2
  "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq "${need[@]}" >/dev/null ||
    die "could not install ${need[*]}"
fi

target=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${MESHGATE_BIN:-}
if [ -z "$BIN" ]; then
  BIN=$target/release/meshgate
  [ -x "$BIN" ] || BIN=$target/debug/meshgate
  [ -x "$BIN" ] || { cargo build --release --locked >&2 && BIN=$target/release/meshgate; }
fi
[ -x "$BIN" ] || die "no meshgate binary at $BIN"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/meshgate-tls-scan.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

USED=" "
# Ports are taken below the kernel's ephemeral range, where a client connection's own local
# port (which no connect test sees) cannot make a server's bind fail.
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
((EPHEMERAL_LOW > 12000)) || die "the ephemeral port range starts at $EPHEMERAL_LOW; need room below it"
# Sets the variable named $1 to a free port of 127.0.0.1 (not one given out before): nothing
# listens on it and it can be bound.
free_port() {
  local p
  for p in $(shuf -i "10000-$((EPHEMERAL_LOW - 1))" -n 200); do
    [[ $USED == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
      python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$p" 2>/dev/null; then
      USED+="$p "
      printf -v "$1" '%s' "$p"
      return
    fi
  done
  die "no free port on 127.0.0.1"
}
for v in CA_PORT CA_ADMIN GW_PORT GW_ADMIN UP_PORT; do free_port "$v"; done

# Waits (at most 120 s) for URL to answer 200 while the process with pid $3 runs.
wait_ready() { # url what pid
  local deadline=$((SECONDS + 120))
  until curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; do
    if ! kill -0 "$3" 2>/dev/null || ((SECONDS >= deadline)); then
      tail -n 20 "$WORK"/*.log >&2 || true
      kill -0 "$3" 2>/dev/null || die "$2 exited before it was ready (its log is above)"
      die "$2 was not ready within 120 s (its log is above)"
    fi
    sleep 0.2
  done
}

"$BIN" ca init --dir "$WORK/ca" --trust-domain "$TD" >/dev/null
"$BIN" ca serve --dir "$WORK/ca" --listen "127.0.0.1:$CA_PORT" --admin "127.0.0.1:$CA_ADMIN" \
  >"$WORK/ca.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$CA_ADMIN/healthz" "the CA" "${PIDS[-1]}"

mkdir -p "$WORK/gw"
cat >"$WORK/gw/policy.toml" <<EOF
service = "$GW_ID"
EOF
cat >"$WORK/gw/gateway.toml" <<EOF
spiffe_id = "$GW_ID"
state_dir = "state"

[ca]
url = "https://127.0.0.1:$CA_PORT"

[inbound]
listen = "127.0.0.1:$GW_PORT"
upstream = "http://127.0.0.1:$UP_PORT"
policy = ["policy.toml"]

[admin]
listen = "127.0.0.1:$GW_ADMIN"
EOF
(
  umask 077
  "$BIN" ca token create --dir "$WORK/ca" --spiffe-id "$GW_ID" \
    --ca-url "https://127.0.0.1:$CA_PORT" >"$WORK/gw/token"
)
"$BIN" gateway run --config "$WORK/gw/gateway.toml" --bootstrap-token-file "$WORK/gw/token" \
  >"$WORK/gw.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$GW_ADMIN/readyz" "the gateway" "${PIDS[-1]}"

rm -rf "$OUT"
mkdir -p "$OUT"
failures=0
fail() {
  echo "  FAIL: $*"
  failures=$((failures + 1))
}
ok() { echo "  ok:   $*"; }

# The checks on one sslscan report ($1: name, $2: report file).
check_sslscan() {
  local name=$1 report=$2 proto state line suites
  echo "$name"
  for proto in SSLv2 SSLv3 TLSv1.0 TLSv1.1 TLSv1.2; do
    state=$(awk -v p="$proto" '$1 == p {print $2}' "$report" | head -1)
    if [ "$state" = disabled ]; then ok "$proto disabled"; else fail "$proto: '${state:-not reported}'"; fi
  done
  state=$(awk '$1 == "TLSv1.3" {print $2}' "$report" | head -1)
  if [ "$state" = enabled ]; then ok "TLSv1.3 enabled"; else fail "TLSv1.3: '${state:-not reported}'"; fi
  # Accepted suites: "Preferred|Accepted  TLSv1.3  256 bits  TLS_AES_256_GCM_SHA384 ...".
  suites=$(awk '($1 == "Preferred" || $1 == "Accepted") {print $2 " " $5}' "$report" | sort -u)
  [ -n "$suites" ] || fail "no accepted cipher suite reported"
  while read -r line; do
    [ -z "$line" ] && continue
    case $line in
      "TLSv1.3 TLS_AES_128_GCM_SHA256" | "TLSv1.3 TLS_AES_256_GCM_SHA384" | "TLSv1.3 TLS_CHACHA20_POLY1305_SHA256")
        ok "suite $line" ;;
      *) fail "unexpected suite: $line" ;;
    esac
  done <<<"$suites"
  # TLS 1.3 has no compression; sslscan's own OpenSSL may not be able to test it at all.
  if grep -q "Compression disabled" "$report"; then
    ok "no compression"
  elif grep -q "does not support compression" "$report" && [ "$state" = enabled ]; then
    ok "no compression (TLS 1.3 has none; sslscan cannot offer it)"
  else
    fail "compression not reported disabled"
  fi
  if grep -q "Session renegotiation not supported" "$report"; then ok "no renegotiation"; else fail "renegotiation not reported unsupported"; fi
  # Key exchange: "TLSv1.3  128 bits  x25519".
  while read -r line; do
    [ -z "$line" ] && continue
    case $line in
      x25519 | secp256r1 | secp384r1) ok "group $line" ;;
      *) fail "unexpected key exchange group: $line" ;;
    esac
  done < <(sed -n '/Server Key Exchange Group/,/^$/p' "$report" | awk '$1 ~ /^TLSv/ {print $4}')
  if grep -qi "vulnerable to heartbleed" "$report" && ! grep -qi "not vulnerable to heartbleed" "$report"; then
    fail "heartbleed"
  else
    ok "not vulnerable to heartbleed"
  fi
}

scan() { # name port
  sslscan --no-colour --show-sigs "127.0.0.1:$2" >"$OUT/$1.sslscan.txt" 2>&1 ||
    die "sslscan failed on $1 (127.0.0.1:$2): $(tail -3 "$OUT/$1.sslscan.txt")"
  check_sslscan "$1 (127.0.0.1:$2)" "$OUT/$1.sslscan.txt"
}
scan ca "$CA_PORT"
scan gateway-inbound "$GW_PORT"

# The gateway must demand a client certificate: openssl without one gets no application data.
echo "gateway-inbound client certificate"
reply=$(printf 'GET / HTTP/1.1\r\nHost: x\r\n\r\n' |
  timeout 10 openssl s_client -connect "127.0.0.1:$GW_PORT" -tls1_3 -quiet 2>&1 || true)
if grep -qiE "certificate required|alert|error" <<<"$reply" && ! grep -q "^HTTP/" <<<"$reply"; then
  ok "refused without a client certificate"
else
  fail "answered without a client certificate: $(head -3 <<<"$reply")"
fi

# testssl.sh findings that follow from what an X.509-SVID is, each with its reason; any other
# finding rated MEDIUM or worse fails the scan.
EXPECTED_TESTSSL='{
  "cert_trust": "an SVID names its workload by URI SAN (SPIFFE ID), not by the DNS name scanned",
  "cert_expirationStatus": "SVIDs live 1 h by design and are renewed at half-life",
  "cert_notAfter": "SVIDs live 1 h by design",
  "cert_revocation": "no CRL or OCSP: revocation is pushed through /v1/revocations and short lifetimes",
  "security_headers": "not a browser site: no HSTS or other browser headers on the CA API or a gateway"
}'
if [ "${TLS_SCAN_TESTSSL:-0}" = 1 ]; then
  "$BIN" ca bundle --dir "$WORK/ca" --format pem >"$WORK/bundle.pem"
  for t in "ca:$CA_PORT" "gateway-inbound:$GW_PORT"; do
    name=${t%%:*} port=${t##*:}
    echo "$name (testssl.sh)"
    rm -f "$OUT/$name.testssl.json"
    timeout 600 testssl --quiet --color 0 --warnings off --severity MEDIUM --add-ca "$WORK/bundle.pem" \
      --jsonfile "$OUT/$name.testssl.json" "127.0.0.1:$port" >"$OUT/$name.testssl.txt" 2>&1 || true
    while IFS= read -r l; do
      case $l in
        ok*) ok "${l#ok }" ;;
        *) fail "$l" ;;
      esac
    done < <(python3 - "$OUT/$name.testssl.json" "$EXPECTED_TESTSSL" <<'PY'
import json, sys
try:
    findings = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    print(f"testssl.sh wrote no readable JSON ({e})")
    sys.exit()
expected = json.loads(sys.argv[2])
for f in findings:
    if f.get("severity") not in ("MEDIUM", "HIGH", "CRITICAL"):
        continue
    fid, sev, text = f.get("id"), f.get("severity"), f.get("finding")
    if fid in expected:
        print(f"ok {fid} ({sev}, by design: {expected[fid]})")
    else:
        print(f"{fid}: {sev}: {text}")
PY
    )
  done
fi

echo
if ((failures)); then
  echo "tls-scan: $failures check(s) failed; reports in $OUT"
  exit 1
fi
echo "tls-scan: all checks hold (TLS 1.3 only, AEAD suites only) on the CA and a gateway inbound; reports in $OUT"
