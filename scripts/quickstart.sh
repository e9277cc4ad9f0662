#!/usr/bin/env bash
# Installs longdraft and runs the main job: train a draft for the shipped Shakespeare target on
# CPU, export it, measure its real acceptance length by speculative decoding, and plot training.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
longdraft train examples/shakespeare/draft.yaml "$@"
