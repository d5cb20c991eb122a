#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each, one after another, and prints a
# table of executions per target. Stops at the first target that finds a crash and leaves the
# input in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                  # every target, FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh token svid       # only these
#   FUZZ_SECONDS=600 scripts/fuzz.sh # ten minutes each
#   FUZZ_JOBS=2 scripts/fuzz.sh      # two targets at a time (one core each)
#
# Needs cargo-fuzz (installed here if missing) and nightly Rust, or stable with RUSTC_BOOTSTRAP=1
# (set here when no nightly toolchain is installed). Seeds: the committed ones in fuzz/corpus/<target>/, plus certificates, bundles,
# tokens and audit logs made fresh by the release binary at each run (no key is kept: they go
# to a temporary directory and are copied in as inputs, never as keys).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${FUZZ_SECONDS:-60}
JOBS=${FUZZ_JOBS:-1}
ALL=(spiffe_id svid bundle_pem bundle_jwks policy_parse token enroll_request audit_log)
[[ $SECONDS_EACH =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: FUZZ_SECONDS=$SECONDS_EACH: give whole seconds, like 600" >&2; exit 2; }
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: FUZZ_JOBS=$JOBS: give a positive integer" >&2; exit 2; }

targets=("$@")
((${#targets[@]})) || targets=("${ALL[@]}")
for t in "${targets[@]}"; do
  [[ " ${ALL[*]} " == *" $t "* ]] || { echo "fuzz: no target '$t'; targets: ${ALL[*]}" >&2; exit 2; }
done

# cargo-fuzz needs nightly flags (sanitizers); on a machine with stable only, RUSTC_BOOTSTRAP
# lets stable accept them.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  FUZZ=(cargo +nightly fuzz)
else
  echo "fuzz: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# Fresh seeds from the real CA: a leaf and its chain (DER and PEM), the bundle as PEM and JWKS,
# a token, and an audit log with a checkpoint-free chain.
target=${CARGO_TARGET_DIR:-$ROOT/target}
bin=$target/release/meshgate
[ -x "$bin" ] || bin=$target/debug/meshgate
[ -x "$bin" ] || { cargo build --release --locked && bin=$target/release/meshgate; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" ca init --dir "$work/ca" --trust-domain fuzz.example >/dev/null
"$bin" ca issue --dir "$work/ca" --spiffe-id spiffe://fuzz.example/ns/a/sa/b --out "$work/svid" >/dev/null
"$bin" ca bundle --dir "$work/ca" --format pem >"$work/bundle.pem"
"$bin" ca bundle --dir "$work/ca" --format spiffe >"$work/bundle.json"
"$bin" ca token create --dir "$work/ca" --spiffe-id spiffe://fuzz.example/ns/a/sa/c \
  --ca-url https://127.0.0.1:8443 >"$work/token.txt" 2>/dev/null || true
seed() { # target file...
  local dir=$work/corpus/$1
  shift
  mkdir -p "$dir"
  for f in "$@"; do [ -s "$f" ] && cp "$f" "$dir/"; done
  return 0
}
der_of() { openssl x509 -in "$1" -outform DER -out "$2" 2>/dev/null || true; }
awk '/BEGIN CERT/{n++} n==1' "$work/svid/svid.pem" >"$work/leaf.pem"
der_of "$work/leaf.pem" "$work/leaf.der"
seed svid "$work/leaf.der"
seed bundle_pem "$work/bundle.pem" "$work/svid/svid.pem"
seed bundle_jwks "$work/bundle.json"
seed token "$work/token.txt"
seed audit_log "$work/ca/audit.jsonl"
printf 'spiffe://fuzz.example/ns/a/sa/b' >"$work/id.txt"
seed spiffe_id "$work/id.txt"
# A CSR for the ID the enroll_request target expects, as raw DER (first byte 0) and in a body.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/csr.key" \
  -subj / -addext subjectAltName=URI:spiffe://bank.example/ns/shop/sa/checkout \
  -out "$work/csr.pem" 2>/dev/null
rm -f "$work/csr.key"
{ printf '\0'; openssl req -in "$work/csr.pem" -outform DER; } >"$work/csr.bin"
python3 -c 'import json,sys; print(json.dumps({"token": open(sys.argv[1]).read().strip(), "csr": open(sys.argv[2]).read()}))' \
  "$work/token.txt" "$work/csr.pem" | { printf x; cat; } >"$work/enroll.json"
seed enroll_request "$work/csr.bin" "$work/enroll.json"

results=()
run_one() {
  local t=$1 corpus=$work/corpus/$1 log=$work/$1.log
  mkdir -p "$corpus" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "== $t: ${SECONDS_EACH}s" >&2
  # -rss_limit_mb bounds a leak; the timeout bounds a hang in one input.
  if ! (cd fuzz && "${FUZZ[@]}" run "$t" "$corpus" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1) >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    return 1
  fi
  local runs cov
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  echo "$t ${runs:-?} ${cov:-?}" >"$work/$t.result"
}

# Build every target first, so the time given is fuzzing time.
(cd fuzz && "${FUZZ[@]}" build) >&2

failed=0
pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if ((${#pids[@]} >= JOBS)); then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done

printf '\n| target | seconds | executions | coverage (edges) |\n|---|---|---|---|\n'
for t in "${targets[@]}"; do
  if [ -f "$work/$t.result" ]; then
    read -r _ runs cov <"$work/$t.result"
    printf '| %s | %s | %s | %s |\n' "$t" "$SECONDS_EACH" "$runs" "$cov"
  else
    printf '| %s | %s | FAILED | |\n' "$t" "$SECONDS_EACH"
  fi
done
exit $failed
