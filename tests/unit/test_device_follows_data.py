"""Loaded weights (read on the CPU from the checkpoint) follow the activations' device where they are
used, proven without a GPU: the activations sit on the ``meta`` device.

``meta`` refuses an elementwise op or a ``cat`` that mixes it with CPU tensors, as CUDA does, but it
lets a matmul or an embedding lookup mix them; `CudaLikeDevices` refuses those too, as CUDA does
(it allows what CUDA allows: CPU index tensors and 0-dim CPU scalars)."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from longdraft.engines.final_norm import rms_norm
from longdraft.model.loss import soft_cross_entropy_steps, target_argmax_in_vocab
from longdraft.sharding.reader import full_sequence_batch

META = torch.device("meta")
_INDEX_OPS = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default}


class CudaLikeDevices(TorchDispatchMode):
    """Refuses an op whose tensor operands sit on different devices, as CUDA does."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        operands = (args[:1] + args[2:], kwargs) if func in _INDEX_OPS else (args, kwargs)  # indices may be CPU
        devices = {
            t.device
            for t in tree_leaves(operands)
            if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)
        }
        if len(devices) > 1:
            raise RuntimeError(f"{func}: operands on {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def test_meta_refuses_what_cuda_refuses():
    with pytest.raises(RuntimeError):
        torch.ones(2, device=META) * torch.ones(2)
    with pytest.raises(RuntimeError), CudaLikeDevices():
        torch.ones(2, 3, device=META) @ torch.ones(3, 2)
    with CudaLikeDevices():  # allowed on CUDA too
        torch.ones(4, 3, device=META)[torch.tensor([0, 2])] * torch.tensor(2.0)


def test_capture_final_norm_follows_the_cached_rows():
    # vLLM's cache is on the GPU, the norm weight from target/weights.load_final_norm on the CPU.
    rows = torch.ones(5, 8, device=META, dtype=torch.bfloat16)
    out = rms_norm(rows, torch.ones(8), 1e-6)
    assert out.device == META and out.dtype == torch.bfloat16 and out.shape == (5, 8)


def test_loss_target_head_rows_follow_the_target_hidden(monkeypatch):
    # autocast knows no "meta" device; the loss only switches it off, which is a no-op here.
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())
    # The target lm_head rows as target/weights.load_embedding_and_head reads them: CPU, fp32.
    g = torch.Generator().manual_seed(0)
    head = torch.randn(6, 4, generator=g)
    hidden = torch.randn(5, 4, generator=g).to(META, torch.bfloat16)
    draft = torch.randn(3, 4, generator=g).to(META).requires_grad_()
    xs = [torch.randn(5, 4, generator=g).to(META), torch.randn(4, 4, generator=g).to(META)]
    rows = [torch.arange(5), torch.arange(1, 5)]  # index tensors may stay on the CPU, as on CUDA
    with CudaLikeDevices():
        sums, agrees = soft_cross_entropy_steps(xs, rows, draft, hidden, head[:3], chunk_size=2)
        t2d = torch.ones(6, dtype=torch.bool, device=META)
        in_vocab = target_argmax_in_vocab(hidden, head, t2d, chunk_size=2)
    assert sums.device == META and sums.shape == (2,) and [a.device for a in agrees] == [META, META]
    assert in_vocab.device == META and in_vocab.shape == (5,)


def test_shard_reading_puts_every_tensor_on_the_features_device():
    # The single-device source: token ids built on the CPU, features on the engine's output device.
    sample = {
        "input_ids": torch.arange(7),
        "aux_hidden": torch.zeros(7, 12, device=META),
        "last_hidden": torch.zeros(7, 4, device=META),
    }
    with CudaLikeDevices():
        batch = full_sequence_batch([sample], [[1, 6]], ttt_length=2)
    devices = {name: str(t.device) for name, t in vars(batch).items() if isinstance(t, torch.Tensor)}
    assert set(devices) >= {"input_ids", "aux_hidden", "last_hidden", "loss_mask", "is_real", "positions"}
    assert devices == dict.fromkeys(devices, "meta")


def test_draft_embedding_lookup_on_the_activations_device():
    # The embedding is a buffer of the draft, loaded on the CPU and moved with the model once.
    from transformers import LlamaConfig

    from longdraft.model.draft import Eagle3Draft
    from longdraft.model.draft_config import draft_config_from_target

    target = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=8, num_attention_heads=2)
    config = draft_config_from_target(target)
    model = Eagle3Draft(config, torch.randn(16, 8)).to(META)
    with CudaLikeDevices():
        out = model.embed(torch.zeros(1, 3, dtype=torch.long, device=META))
    assert out.device == META and out.shape == (1, 3, 8)
