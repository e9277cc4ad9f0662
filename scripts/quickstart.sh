#!/usr/bin/env bash
# Installs longdraft and runs the main job: train a draft for the shipped Shakespeare target on
# CPU, export it, measure its real acceptance length by speculative decoding, and plot training.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
longdraft train examples/shakespeare/draft.yaml "$@"
python3 - <<'PY'
import json
e = json.load(open("runs/shakespeare/eval.json"))
real = e["real"]
rates = " ".join(f"{r:.2f}" for r in real["accept_rate_per_position"])
print(f"acceptance length tau = {real['acceptance_length']:.2f} (simulated {e['acceptance_length']['simulated']:.2f}); "
      f"per-position acceptance {rates}; output equals greedy: {real['matches_greedy']}")
PY
