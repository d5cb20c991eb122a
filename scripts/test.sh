#!/usr/bin/env bash
# Runs every test of the workspace. Sets up what the tests call besides cargo: openssl (from
# Debian, if missing) and py-spiffe (in a virtualenv under target/, pinned), used to cross-check
# the SVIDs the CA mints with independent verifiers.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v openssl >/dev/null; then
  echo "installing openssl" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq openssl >/dev/null
fi

venv=target/pyenv
if ! "$venv/bin/python" -c "import spiffe" 2>/dev/null; then
  echo "setting up $venv with py-spiffe" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
fi
export MESHGATE_PYTHON="$PWD/$venv/bin/python"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast "$@"
fi
