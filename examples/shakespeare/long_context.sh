#!/usr/bin/env bash
# Why train long, and why a window: drafts for the long-context target (target_long, 4096 tokens),
# measured by real speculative decoding at 256 / 1024 / 2048 / 4096 tokens of context on the
# held-out plays (32 prompts per length, 64 new tokens, 7 draft tokens):
#   long_400      draft_long.yaml for 400 steps: one 4096-token passage a step through the Ray
#                 pipeline, 2 trainer ranks (Ulysses SP = 2); it measures τ at every length every
#                 100 steps while it trains (eval.every: metrics.jsonl, metrics.png)
#   short         draft_short.yaml: 400 steps x 8 x 256-token passages, one device (half the tokens)
#   short_window  the same with model.draft_window = 128 (attention sees the last 128 keys)
#   long          draft_long.yaml: 200 steps x 4096 tokens (the short drafts' tokens); eval.every = 50
#   long_window   the same with model.draft_window = 128
# Writes runs/long_context/<draft>/ (eval_context.json, metrics.jsonl, ...) and two charts:
# eval_context_lengths.png (trained short or long) and eval_context_windows.png (full attention or a
# window, with long_400's τ curve). A draft whose eval_context.json exists is not trained again
# (delete its folder to redo it). About 75 minutes on 2 CPU cores.
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
train long_400 draft_long.yaml training.num_steps=400 eval.every=100
train short draft_short.yaml
train short_window draft_short.yaml "model.draft_window=$window"
train long draft_long.yaml eval.every=50
train long_window draft_long.yaml "model.draft_window=$window"
chart() { python3 -m longdraft.eval.context_chart "$runs" "$@"; }
chart "short=trained at 256 tokens (400 steps x 8 x 256)" "long=trained at 4096, SP = 2, same tokens (200 steps)" \
  "long_400=trained at 4096, SP = 2, same steps (400)" --out "$runs/eval_context_lengths.png"
chart "short=at 256" "short_window=at 256, window $window" "long=at 4096 (200 steps)" \
  "long_window=at 4096 (200 steps), window $window" "long_400=at 4096 (400 steps)" --curve long_400 \
  --out "$runs/eval_context_windows.png"
