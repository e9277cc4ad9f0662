#!/usr/bin/env bash
# Every GPU check in one call (a lent single-GPU machine, no network, no Ray, no vLLM), in order of
# importance, within GPU_CHECKS_TOTAL_S seconds (default 470: the call's 8 minutes less start-up):
#   1. the whole training loop under a real process group of one rank (NCCL, then cpu:gloo,cuda:nccl):
#      the loop's and the step's reductions, bucketed gradients, checkpoints and resume on CUDA;
#   2. `longdraft plan` at Llama-3.1-8B draft dimensions, bf16: (U, R) = (8, 1) and (4, 2) at 131,072
#      tokens (16,384 per rank), (2, 1) at 32,768: peak memory (estimate and measured) and step time;
#   3. the CUDA attention kernels against the reference (fp32, bf16), the train smoke test, the
#      realistic-size memory search (the checks this script always ran).
# A failed or timed-out check does not stop the others. Each check prints one JSON line
# {"check", "ok", "rc", "seconds", ...} (also appended to $OUT/results.jsonl); its output is in
# $OUT/<check>.out / .err. GPU_CHECKS_ONLY=plan runs only the plan checks (e.g. on CPU, which then
# estimates: `GPU_CHECKS_ONLY=plan scripts/gpu_checks.sh`).
set -u -o pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-lo}" MASTER_ADDR=127.0.0.1
total_s="${GPU_CHECKS_TOTAL_S:-470}"
only="${GPU_CHECKS_ONLY:-}"
started=$(date +%s)
results="$out/results.jsonl"
: >"$results"

# check NAME LIMIT_S SUMMARY CMD...: runs CMD with at most LIMIT_S (less if the total is nearly spent);
# SUMMARY is "plan" to add the plan's key numbers from its JSON output, else "-".
check() {
  local name=$1 limit=$2 summary=$3
  shift 3
  local left=$((total_s - ($(date +%s) - started)))
  if ((left < 15)); then
    echo "{\"check\": \"$name\", \"ok\": false, \"skipped\": \"total time limit ${total_s} s reached\"}" | tee -a "$results"
    return
  fi
  ((limit > left)) && limit=$left
  local t0 rc
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.out" 2>"$out/$name.err"
  rc=$?
  python3 - "$name" "$rc" "$t0" "$limit" "$summary" "$out/$name.out" "$out/$name.err" <<'EOF' | tee -a "$results"
import json, sys, time
name, rc, t0, limit, summary, out_path, err_path = sys.argv[1:]
rc = int(rc)
line = {"check": name, "ok": rc == 0, "rc": rc, "seconds": round(time.time() - float(t0), 1)}
if rc in (124, 137):
    line["timed_out_after_s"] = int(limit)
text = open(out_path, errors="replace").read()
if summary == "plan" and rc == 0:
    p = json.loads(text)
    line["plan"] = {
        "layout": p["layout"], "seq_len": p["seq_len"], "precision": p["precision"],
        "estimate_peak_gib": round(p["estimate"]["peak_bytes"]["total"] / 2**30, 2) if p["estimate"] else None,
        "measured_peak_gib": round(p["measured"]["peak_bytes"]["total"] / 2**30, 2) if p["measured"] else None,
        "allocator_peak_gib": round(p["measured"]["allocator_peak_bytes"] / 2**30, 2)
        if p["measured"] and p["measured"]["allocator_peak_bytes"] else None,
        "activations_gib": round((p["measured"] or p["estimate"])["peak_bytes"]["activations"] / 2**30, 2),
        "step_time_s": p["step_time_s"], "measured_skipped": p["measured_skipped"], "fits": p["fits"],
        "device_memory": p["device_memory_source"],
    }
else:
    line["stdout_tail"] = text[-600:]
    if rc != 0:
        line["stderr_tail"] = open(err_path, errors="replace").read()[-800:]
print(json.dumps(line))
EOF
}

if [[ -z "$only" ]]; then
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") | tee "$out/gpu.txt"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$out/gpu.txt"
  check loop_nccl 120 - python3 scripts/gpu_nccl_loop.py --backend nccl --timeout 110
  check loop_gloo_nccl 90 - python3 scripts/gpu_nccl_loop.py --backend cpu:gloo,cuda:nccl --timeout 80
fi
if [[ -z "$only" || "$only" == plan ]]; then
  llama=examples/plan/llama31_8b/plan_128k.yaml
  check plan_u8r1_128k 110 plan python3 -m longdraft.cli plan "$llama" --random-weights --json
  check plan_u4r2_128k 110 plan python3 -m longdraft.cli plan "$llama" --random-weights --json \
    training.sp_ulysses_size=4 training.sp_ring_size=2
  check plan_u2r1_32k 80 plan python3 -m longdraft.cli plan "$llama" --random-weights --json --world 2 \
    training.max_seq_length=32768 training.sp_ulysses_size=2
fi
if [[ -z "$only" ]]; then
  check attention_check 120 - python3 scripts/gpu_check_attention.py --seq-len 8192 --iters 5
  check train_smoke 120 - python3 scripts/gpu_train_smoke.py 30
  check memory_realistic_sp1 150 - python3 -m longdraft.cli bench memory --realistic --sp 1 --json
fi
echo "{\"check\": \"all\", \"seconds\": $(($(date +%s) - started)), \"results\": \"$results\"}"
