"""The vLLM columns of the support table (`longdraft.testing.families`), each row backed here.

Per family, as its declaration says:
- vLLM producer: the vLLM engine's features equal the HF engine's (1e-4) on the family's tiny
  target, or vLLM refuses to start it with the declared reason;
- vLLM serving: a draft trained on the family (HF engine) and exported is served by vLLM's EAGLE-3
  with the same output as greedy decoding and an acceptance length within 5% of `longdraft eval`'s,
  or vLLM refuses it with the declared reason. The drafts train a few steps only (the suite's
  budget), so acceptance is near 1: this backs "vLLM serves this family's export, as longdraft eval
  measures it"; that vLLM reads the right target layers is test_vllm_serving.py's (a real target).

Each check needs its own vLLM engine: one engine runs one speculative method, and the capture
(``extract_hidden_states``) and EAGLE-3 serving are two. vLLM reports a failure of its worker only in
its log (the client sees "Engine core initialization failed"), so a refusal is read from the
captured output.
"""

import json
import re

import pytest
import torch
import vllm  # noqa: F401  (a broken install must fail, not skip)
from safetensors.torch import load_file

from longdraft.config import config_from_dict
from longdraft.engines.hf import HFTargetEngine
from longdraft.engines.vllm_engine import EngineError, VLLMTargetEngine
from longdraft.eval.vllm_serve import serve_with_vllm
from longdraft.run import run_training
from longdraft.testing.families import FAMILIES, PASS, VOCAB_SIZE, build_family_target
from longdraft.testing.tiny_target import write_tiny_jsonl

LENGTHS = [5, 37, 130]  # one prompt past the sliding window, one longer than a prefill chunk of 32
AUX = [0, 3, 7]  # the last layer's output is also the last hidden state's input
PROMPTS, NEW_TOKENS, K = 4, 16, 3
FAILED = re.compile(r"vLLM could not start the target .*(Engine core initialization failed|not supported)")


def _declared_reason(status: str) -> str:
    """vLLM's own words in a declaration such as 'vLLM 0.32 (CPU): <vLLM's message>'."""
    return status.split(": ", 1)[1]


def _log(capfd) -> str:
    """What vLLM's processes wrote (its logger writes to stdout, tracebacks to stderr)."""
    out, err = capfd.readouterr()
    return out + err


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB_SIZE, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    built: dict = {}

    def target(name: str):
        if name not in built:
            built[name] = build_family_target(name, root / name, seed=3)
        return built[name]

    return target


def _peaked(target, seed: int = 0) -> None:
    """Redraw the target's matrices with std 0.3: its next-token distributions become peaked (at the
    default 0.02 they are near uniform and greedy decoding follows noise), so a short training
    teaches the draft something and an acceptance length means something."""
    from safetensors.torch import save_file

    path = target / "model.safetensors"
    tensors = load_file(path)
    gen = torch.Generator().manual_seed(seed)
    for name, t in tensors.items():
        if t.dim() >= 2:
            tensors[name] = (torch.randn(t.shape, generator=gen) * 0.3).to(t.dtype)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_vllm_producer(name, targets, capfd):
    declared = FAMILIES[name].vllm_producer
    target = targets(name)
    if declared != PASS:
        with pytest.raises(EngineError, match=FAILED):
            VLLMTargetEngine(target, AUX, dtype="fp32", max_length=200, max_num_batched_tokens=32)
        assert _declared_reason(declared) in _log(capfd)
        return
    engine = VLLMTargetEngine(target, AUX, dtype="fp32", max_length=200, max_num_batched_tokens=32)
    try:
        batch = [_ids(n, seed) for seed, n in enumerate(LENGTHS)]
        got = engine.prefill(batch)
    finally:
        engine.close()
    hf = HFTargetEngine(target, AUX, dtype="fp32")
    want = hf.prefill(batch)
    hf.close()
    hidden = hf.hidden_size
    for g, w, n in zip(got, want, LENGTHS):
        assert g.aux_hidden.shape == w.aux_hidden.shape == (n, 3 * hidden)
        assert g.last_hidden.shape == w.last_hidden.shape == (n, hidden)
        assert _rel(g.aux_hidden, w.aux_hidden) < 1e-4 and _rel(g.last_hidden, w.last_hidden) < 1e-4, name
    # The capture numbering is right only if a neighbouring layer would be clearly different.
    assert _rel(got[-1].aux_hidden[:, hidden : 2 * hidden], want[-1].aux_hidden[:, 2 * hidden :]) > 1e-2


def _train(root, target):
    """A draft trained on the target (HF engine, the target's dtype), exported and evaluated by `longdraft eval`."""
    train = write_tiny_jsonl(root / "train.jsonl", num_conversations=24, num_texts=8)
    heldout = write_tiny_jsonl(root / "heldout.jsonl", num_conversations=PROMPTS, num_texts=2, seed=1)
    out = root / "run"
    cfg = config_from_dict(
        {
            "data": {"train_path": str(train), "eval_path": str(heldout)},
            "model": {"target_path": str(target), "draft_vocab_size": 200, "aux_layers": AUX},
            "training": {
                "device": "cpu",
                "max_seq_length": 64,
                "ttt_length": K,
                "batch_size": 4,
                "micro_batch_size": 4,
                "num_steps": 8,
                "lr": 1e-2,
                "warmup_steps": 3,
                "min_lr": 1e-3,
                "eval_every": 1000,
            },
            "eval": {"enabled": True, "num_prompts": PROMPTS, "max_new_tokens": NEW_TOKENS},
            "output": {"dir": str(out), "plot": False},
        }
    )
    run_training(cfg)
    return out / "final", heldout, json.loads((out / "eval.json").read_text())["real"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_vllm_serving(name, targets, tmp_path, capfd):
    declared = FAMILIES[name].vllm_serving
    target = build_family_target(name, tmp_path / "target", seed=3)
    _peaked(target)
    draft, heldout, ours = _train(tmp_path, target)

    def serve():
        return serve_with_vllm(
            target,
            draft,
            heldout,
            num_prompts=PROMPTS,
            max_new_tokens=NEW_TOKENS,
            num_draft_tokens=K,
            dtype="fp32",
            check_greedy=True,
        )

    if declared != PASS:
        with pytest.raises(Exception, match="Engine core initialization failed"):
            serve()
        assert _declared_reason(declared) in _log(capfd)
        return
    export = json.loads((draft / "config.json").read_text())
    assert export["eagle_aux_hidden_state_layer_ids"] == [i + 1 for i in AUX]  # vLLM numbering
    assert ours["matches_greedy"] is True, ours
    served = serve()
    assert served["matches_greedy"] is True
    assert served["acceptance_length"] == pytest.approx(ours["acceptance_length"], rel=0.05), (served, ours)


@pytest.mark.timeout(600)
def test_vllm_serves_a_bf16_export_of_a_bf16_target(tmp_path):
    target = build_family_target("llama-3.1", tmp_path / "target", dtype=torch.bfloat16, seed=3)
    _peaked(target)
    draft, heldout, ours = _train(tmp_path, target)
    export = json.loads((draft / "config.json").read_text())
    assert export["dtype"] == export["torch_dtype"] == "bfloat16"
    tensors = load_file(draft / "model.safetensors")
    assert {t.dtype for name, t in tensors.items() if name not in ("d2t", "t2d")} == {torch.bfloat16}
    served = serve_with_vllm(
        target, draft, heldout, num_prompts=PROMPTS, max_new_tokens=NEW_TOKENS, num_draft_tokens=K, dtype="auto"
    )
    # vLLM's bf16 kernels round differently from HF's, so outputs may part after a near tie: the
    # acceptance is compared loosely.
    assert served["acceptance_length"] == pytest.approx(ours["acceptance_length"], rel=0.15), (served, ours)
