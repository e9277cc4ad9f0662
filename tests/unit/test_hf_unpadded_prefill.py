"""The HF producer prefills without padding: the same features as a right-padded, masked batch, and
no tensor of L x L elements (the [B, 1, L, L] mask that is 64 GiB at 128K) is ever built."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from longdraft.engines.hf import HFTargetEngine, equal_length_groups, hf_device_map

LENGTH = 200  # longer than every other dimension of the tiny target (hidden 32, 3 x hidden 96, MLP 64)


@pytest.fixture(scope="module")
def target_dir(tiny_target):
    return tiny_target(num_layers=8, seed=5, initializer_range=0.2)


@pytest.fixture(scope="module")
def engine(target_dir):
    return HFTargetEngine(target_dir, device="cpu", dtype="fp32")


def _ids(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


class _SquareTensors(TorchDispatchMode):
    """Records the shape of every tensor an op returns that has two dimensions of at least ``n``."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.shapes = n, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and sum(d >= self.n for d in t.shape) >= 2:
                self.shapes.append((str(func), tuple(t.shape)))
        return out


def test_no_tensor_of_length_by_length_is_built(engine):
    text = engine.model.config
    assert max(3 * text.hidden_size, text.intermediate_size, text.num_attention_heads * text.head_dim) < LENGTH
    batch = _ids([LENGTH, LENGTH - 40, LENGTH], engine.vocab_size, seed=1)
    with _SquareTensors(LENGTH - 40) as seen:
        feats = engine.prefill(batch)
    assert [f.length for f in feats] == [LENGTH, LENGTH - 40, LENGTH]
    assert seen.shapes == []


@torch.no_grad()
def test_features_equal_a_padded_masked_batch(engine, target_dir):
    reference = AutoModelForCausalLM.from_pretrained(target_dir, local_files_only=True, dtype=torch.float32).eval()
    lengths = [37, 5, 37, 1, 20]
    batch = _ids(lengths, engine.vocab_size, seed=2)
    ids = torch.zeros(len(batch), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, seq in enumerate(batch):  # right padding, as the producer did before
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
    states = reference.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert max(engine.aux_layers) < engine.num_layers - 1  # hidden_states[i + 1] is layer i's raw output
    feats = engine.prefill(batch)
    for b, (n, f) in enumerate(zip(lengths, feats)):
        aux = torch.cat([states[i + 1][b, :n] for i in engine.aux_layers], dim=-1)
        torch.testing.assert_close(f.aux_hidden, aux, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f.last_hidden, states[-1][b, :n], atol=1e-5, rtol=1e-5)


def test_groups_keep_every_index_once_by_length():
    assert equal_length_groups([5, 3, 5, 1, 3]) == [[0, 2], [1, 4], [3]]


def test_device_map_spreads_only_a_producer_of_several_gpus():
    cuda = torch.device("cuda", 0)
    assert hf_device_map(None, cuda, 2) == "auto"
    assert hf_device_map(None, cuda, 1) is None
    assert hf_device_map(None, cuda, 0.25) is None
    assert hf_device_map(None, torch.device("cpu"), 4) is None
    assert hf_device_map("balanced", cuda, 1) == "balanced"  # an explicit map is the user's
