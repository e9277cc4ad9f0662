"""longdraft's target distribution equals the HF model's own softmax (fp32, 1e-5) for families that
transform their logits (Gemma-2/3 soft-cap, Granite scaling), and the vLLM capture's final norm
equals the model's own (Gemma's ``(1 + w)·x̂``). Tiny random models from transformers' config classes,
saved and read back through `TargetSpec`, as a run reads them."""

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from longdraft.engines.final_norm import rms_norm
from longdraft.model.loss import soft_cross_entropy_steps
from longdraft.model.target_head import TargetHead
from longdraft.target.spec import TargetSpec

SMALL = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
FAMILIES = {
    "gemma2": lambda: Gemma2ForCausalLM(
        Gemma2Config(**SMALL, num_key_value_heads=1, head_dim=16, final_logit_softcapping=3.0, sliding_window=4)
    ),
    "gemma3": lambda: Gemma3ForCausalLM(
        Gemma3TextConfig(**SMALL, num_key_value_heads=1, head_dim=16, final_logit_softcapping=3.0, sliding_window=4)
    ),
    "granite": lambda: GraniteForCausalLM(GraniteConfig(**SMALL, num_key_value_heads=1, logits_scaling=6.0)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=1)),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    torch.manual_seed(0)
    model = FAMILIES[request.param]()
    with torch.no_grad():  # logits large enough that a missing soft-cap or scaling shows; a norm weight not 0
        model.lm_head.weight.mul_(60.0)
        model.model.norm.weight.normal_(0.0, 0.5)
    model = model.float().eval()
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    ids = torch.randint(0, SMALL["vocab_size"], (1, 11), generator=torch.Generator().manual_seed(1))
    seen = {}
    norm = model.model.norm
    norm.register_forward_pre_hook(lambda m, args: seen.__setitem__("residual", args[0][0].detach()))
    norm.register_forward_hook(lambda m, args, out: seen.__setitem__("normed", out[0].detach()))
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    return request.param, TargetSpec.load(path), seen, torch.softmax(logits, -1)


def test_the_final_norm_is_the_models_own(family):
    name, spec, seen, _ = family
    assert spec.norm_kind == ("one_plus_weight" if name.startswith("gemma") else "weight")
    ours = rms_norm(seen["residual"], spec.final_norm_weight(), spec.final_norm_eps, spec.norm_kind)
    torch.testing.assert_close(ours, seen["normed"], atol=1e-5, rtol=0)


def test_the_target_distribution_is_the_models_own_softmax(family):
    name, spec, seen, hf_probs = family
    assert spec.logits.is_identity == (name == "llama")
    _, head = spec.embedding_and_head()
    target = TargetHead.cut(head, torch.arange(head.shape[0]), spec.logits)  # the whole vocab as draft vocab
    hidden = seen["normed"]
    # The loss against a draft whose logits are 0 everywhere but a one-hot direction: its gradient with
    # respect to the draft states is (softmax(draft) - p_target) @ W, so p_target is recovered exactly.
    n, vocab = hidden.shape[0], head.shape[0]
    x = torch.zeros(n, vocab, requires_grad=True)
    weight = torch.eye(vocab)
    sums, _ = soft_cross_entropy_steps(
        [x], [torch.arange(n)], weight, hidden, target.draft_rows, 4, None, "fp32", target.logits
    )
    sums.sum().backward()
    ours = 1.0 / vocab - x.grad  # d/dx of H(p, softmax(x)) at x = 0 is 1/V - p
    torch.testing.assert_close(ours, hf_probs, atol=1e-5, rtol=0)
