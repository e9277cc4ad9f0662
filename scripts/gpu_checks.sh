#!/usr/bin/env bash
# Every GPU check in one run (for a lent single-GPU machine): CUDA attention kernels against the
# reference (fp32 and bf16), fast-path timing, and the realistic-size memory search on one GPU.
# Writes JSON to ${OUT:-gpu_results}/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
timeout 240 python3 scripts/gpu_check_attention.py --seq-len 8192 --iters 5 | tee "$out/attention_check.json"
timeout 240 python3 -m longdraft.cli bench memory --realistic --sp 1 --json | tee "$out/memory_realistic_sp1.json"
timeout 180 python3 scripts/gpu_train_smoke.py 30 | tee "$out/train_smoke.json"
