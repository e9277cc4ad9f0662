#!/usr/bin/env bash
# Why train long: the quick-start draft (trained on 256-token passages) against a draft trained on
# 2048-token passages with the same token budget, both measured at 128 ... 1900 tokens of context
# on the held-out plays. Writes runs/shakespeare_long/ (eval_context.json of each, and the chart
# runs/shakespeare_long/eval_context_both.png). About 15 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LENGTHS=128,256,512,1024,1900
[ -f runs/shakespeare/final/config.json ] || longdraft train examples/shakespeare/draft.yaml
python3 examples/shakespeare/make_data.py --long-passages runs/shakespeare_long/train_long.jsonl
longdraft train examples/shakespeare/draft_long.yaml
longdraft eval --target examples/shakespeare/target --draft runs/shakespeare/final \
  --data examples/shakespeare/data/heldout_plays.jsonl --context-lengths "$LENGTHS" --num-prompts 32 \
  --check-greedy --out runs/shakespeare_long/eval_context_short.json
python3 - <<'PY'
import json
from longdraft.eval.context import plot_context

runs = "runs/shakespeare_long"
reports = {"trained at 256 tokens (quick start)": json.load(open(f"{runs}/eval_context_short.json")),
           "trained at 2048 tokens": json.load(open(f"{runs}/eval_context.json"))}
print("plot:", plot_context(reports, f"{runs}/eval_context_both.png"))
for label, report in reports.items():
    print(label + ": " + ", ".join(f"{r['context_length']}: {r['acceptance_length']:.2f}" for r in report["by_length"]))
PY
