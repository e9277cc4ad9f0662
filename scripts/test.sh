#!/usr/bin/env bash
# Installs longdraft and runs the whole test suite inside a loopback-only network namespace,
# so gloo, Ray, Mooncake and vLLM can only ever talk to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh vllm
# Lint, import order and format first: seconds, and a failure names file and line.
python3 -m ruff check .
python3 -m ruff format --check .
export HF_HUB_OFFLINE=1 GLOO_SOCKET_IFNAME=lo RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
  exec unshare -n sh -c 'ip link set lo up && python3 -m pytest -q -ra "$@"' sh "$@"
fi
echo "note: not root, running without a private network namespace" >&2
exec python3 -m pytest -q -ra "$@"
