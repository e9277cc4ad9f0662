"""RoPE of the whole sequence: every shard of a sample, at every TTT step, rotates each position
exactly as one device holding the sample does, for every RoPE variant transformers knows, under
U x R = 1, 2 and 4 and both shard orders."""

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from longdraft.data.loss_mask import pack_loss_mask
from longdraft.model.ttt import rope_at_step
from longdraft.sharding.layout import ShardLayout
from longdraft.sharding.reader import read_shard
from longdraft.sharding.split import split_sample
from tests.draft_factory import HIDDEN, batch_of, random_samples, tiny_draft, tiny_target_config

MAX_POSITIONS, ORIGINAL = 64, 32
# Below the original length, between it and max_position_embeddings, past it: `longrope` switches
# factors past ORIGINAL, `dynamic` grows its base past MAX_POSITIONS.
LENGTHS = (20, 50, 97)
GRIDS = [(1, 1), (2, 1), (1, 2), (4, 1), (2, 2), (1, 4)]  # (U, R): U x R = 1, 2, 4
K = 3
VARIANTS = {
    "default": {},
    "linear": {"factor": 2.0},
    "dynamic": {"factor": 2.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "longrope": {
        "short_factor": [1.0 + 0.1 * i for i in range(4)],  # head_dim 8: 4 frequencies
        "long_factor": [2.0 + 0.5 * i for i in range(4)],
        "original_max_position_embeddings": ORIGINAL,
    },
    "llama3": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": ORIGINAL,
    },
    "proportional": {"partial_rotary_factor": 0.5},
}


def test_every_installed_rope_variant_is_checked():
    assert set(ROPE_INIT_FUNCTIONS) | {"default"} == set(VARIANTS)


def _params(variant: str) -> dict:
    return {"rope_type": variant, "rope_theta": 10000.0, **VARIANTS[variant]}


def _one_device(variant: str, length: int, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[upto, D]`` of the target's own rotary module handed the whole sample (positions
    0..L-1) in one call; positions past L (look-ahead of the last queries, tail padding) rotate with
    the frequencies that call picked."""
    ref = LlamaRotaryEmbedding(
        tiny_target_config(max_position_embeddings=MAX_POSITIONS, rope_parameters=_params(variant))
    )
    x = torch.zeros(1, 1, HIDDEN)
    cos, sin = ref(x, torch.arange(length)[None])
    freqs = torch.arange(upto)[None, :, None].float() * ref.inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    ext_cos, ext_sin = emb.cos() * ref.attention_scaling, emb.sin() * ref.attention_scaling
    assert torch.equal(ext_cos[:, :length], cos) and torch.equal(ext_sin[:, :length], sin)
    return ext_cos[0], ext_sin[0]


def _draft(variant: str):
    model, _ = tiny_draft(max_position_embeddings=MAX_POSITIONS, rope_parameters=_params(variant))
    return model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("order", ["contiguous", "zigzag"])
def test_every_shard_rotates_like_one_device(variant, order):
    model = _draft(variant)
    for length in LENGTHS:
        sample = random_samples([length], seed=length)[0]
        tensors = {name: sample[name] for name in ("input_ids", "aux_hidden", "last_hidden")}
        packed = pack_loss_mask(sample["loss_mask"].long().tolist())
        for u, r in GRIDS:
            layout = ShardLayout(length, u, r, K, order)
            ref_cos, ref_sin = _one_device(variant, length, layout.padded_length + K)
            for rank, shard in enumerate(split_sample(tensors, layout)):
                batch = read_shard(shard, layout, rank, packed)
                x = torch.zeros(1, batch.positions.numel(), HIDDEN)
                for k in range(K):
                    cos, sin = rope_at_step(model, batch, x, k)
                    where = batch.positions + k
                    label = f"{variant} {order} L={length} U={u} R={r} rank {rank} step {k}"
                    assert torch.equal(cos[0], ref_cos[where]) and torch.equal(sin[0], ref_sin[where]), label


@pytest.mark.parametrize("variant", ["dynamic", "longrope"])
def test_a_micro_batch_of_samples_of_different_lengths_rotates_each_by_its_own(variant):
    model = _draft(variant)
    lengths = (97, 20)
    batch = batch_of(random_samples(lengths), K)  # one device, two samples stacked (right-padded)
    assert batch.lengths == lengths
    x = torch.zeros(2, batch.positions.numel(), HIDDEN)
    for k in range(K):
        cos, sin = rope_at_step(model, batch, x, k)
        where = batch.positions + k
        for row, length in enumerate(lengths):
            ref_cos, ref_sin = _one_device(variant, length, int(where.max()) + 1)
            assert torch.equal(cos[row], ref_cos[where]) and torch.equal(sin[row], ref_sin[where]), (row, k)
