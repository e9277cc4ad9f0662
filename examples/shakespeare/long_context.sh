#!/usr/bin/env bash
# Why train long, and why a window: four drafts for the long-context target (target_long, 4096
# tokens), measured by real speculative decoding at 256 / 1024 / 2048 / 4096 tokens of context on
# the held-out plays (32 prompts per length):
#   short         draft_short.yaml: 400 steps x 8 x 256-token passages, one device
#   short_window  the same with model.draft_window = 128 (attention sees the last 128 keys)
#   long          draft_long.yaml: 200 steps x one 4096-token passage (the same tokens), Ray
#                 pipeline with 2 trainer ranks (Ulysses SP = 2); it also measures τ at every
#                 length every 50 steps while it trains (eval.every, in metrics.jsonl)
#   long_window   the same with model.draft_window = 128
# Writes runs/long_context/<draft>/ (eval_context.json, metrics.jsonl, ...) and the chart
# runs/long_context/eval_context_windows.png. A draft whose eval_context.json exists is not trained
# again (delete its folder to redo it). About an hour on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=disabled
runs=runs/long_context
window=128
train() {  # train DRAFT CONFIG [overrides...], unless DRAFT was measured already
  local draft=$1 config=$2
  shift 2
  if [ -f "$runs/$draft/eval_context.json" ]; then echo "$draft: measured already"; return; fi
  echo "== $draft ($(date +%H:%M:%S))"
  longdraft train "examples/shakespeare/$config" "output.dir=$runs/$draft" "$@"
}
[ -f "$runs/train_4096.jsonl" ] || python3 examples/shakespeare/make_data.py --long-passages "$runs/train_4096.jsonl"
train long draft_long.yaml eval.every=50
train short draft_short.yaml
train short_window draft_short.yaml "model.draft_window=$window"
train long_window draft_long.yaml "model.draft_window=$window"
python3 -m longdraft.eval.context_chart "$runs" \
  "short=trained at 256 tokens" "short_window=trained at 256, window $window" \
  "long=trained at 4096 (SP = 2)" "long_window=trained at 4096 (SP = 2), window $window" \
  --curve long --out "$runs/eval_context_windows.png"
