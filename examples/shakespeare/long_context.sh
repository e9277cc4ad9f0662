#!/usr/bin/env bash
# Why train long: drafts for the long-context target (target_long, 4096 tokens), one trained on
# 256-token passages (draft_short.yaml, one device) and two on 4096-token passages with sequence
# parallelism through the Ray pipeline (draft_long.yaml, SP = 2): with the short draft's token
# budget (200 steps) and with its number of steps (400). All are measured at 256 / 1024 / 2048 /
# 4096 tokens of context on the held-out plays. Writes runs/long_context/ (each draft's
# eval_context.json, and the chart eval_context_both.png). About 50 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=disabled
python3 examples/shakespeare/make_data.py --long-passages runs/long_context/train_4096.jsonl
longdraft train examples/shakespeare/draft_short.yaml
longdraft train examples/shakespeare/draft_long.yaml
longdraft train examples/shakespeare/draft_long.yaml training.num_steps=400 output.dir=runs/long_context/long_400
python3 - <<'PY'
import json
from longdraft.eval.context import plot_context

runs = "runs/long_context"
reports = {"trained at 256 tokens (400 steps)": json.load(open(f"{runs}/short/eval_context.json")),
           "at 4096, SP = 2, same tokens (200 steps)": json.load(open(f"{runs}/long/eval_context.json")),
           "at 4096, SP = 2, same steps (400)": json.load(open(f"{runs}/long_400/eval_context.json"))}
print("plot:", plot_context(reports, f"{runs}/eval_context_both.png"))
for label, report in reports.items():
    print(label + ": " + ", ".join(f"{r['context_length']}: {r['acceptance_length']:.2f}" for r in report["by_length"]))
PY
