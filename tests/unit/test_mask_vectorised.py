"""The vectorised mask builders equal the simple per-token loops they replaced."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from longdraft.data.loss_mask import pack_loss_mask, unpack_loss_mask
from longdraft.data.tokenize import mask_from_offsets


def reference_pack(values: list) -> list[int]:
    runs, current, length = [], 0, 0
    for i, v in enumerate(values):
        bit = int(v)
        if bit not in (0, 1):
            raise ValueError(f"loss mask value at position {i} is {v!r}; expected 0 or 1")
        if bit == current:
            length += 1
        else:
            runs.append(length)
            current, length = bit, 1
    if values:
        runs.append(length)
    return runs


def reference_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    mask, j = [0] * len(offsets), 0
    for t, (s, e) in enumerate(offsets):
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if j < len(spans) and s < spans[j][1] and e > spans[j][0] and e > s:
            mask[t] = 1
    return mask


@pytest.mark.parametrize("seed", range(40))
def test_pack_equals_the_loop_on_random_masks(seed):
    rng = random.Random(seed)
    n = rng.choice([0, 1, 2, 7, 100, 3000])
    p = rng.random()
    mask = [int(rng.random() < p) for _ in range(n)]
    expected = reference_pack(mask)
    assert pack_loss_mask(mask) == expected
    assert pack_loss_mask([bool(b) for b in mask]) == expected
    assert pack_loss_mask(torch.tensor(mask, dtype=torch.long)) == expected
    assert pack_loss_mask(np.asarray(mask, dtype=np.int8)) == expected
    assert unpack_loss_mask(expected).tolist() == mask


def test_pack_edge_cases_and_bad_values_match_the_loop():
    for mask in ([], [0], [1], [1, 1], [0, 0], [1, 0], [0, 1]):
        assert pack_loss_mask(mask) == reference_pack(mask)
    for bad in ([0, 1, 2, 1], [3], [1, 0, -1]):
        with pytest.raises(ValueError) as ours:
            pack_loss_mask(bad)
        with pytest.raises(ValueError) as ref:
            reference_pack(bad)
        assert str(ours.value) == str(ref.value)


def _random_offsets(rng: random.Random, n: int) -> list[tuple[int, int]]:
    offsets, pos = [], 0
    for _ in range(n):
        kind = rng.random()
        if kind < 0.1:
            offsets.append((pos, pos))  # an empty range (a special token added by the tokenizer)
        elif kind < 0.15:
            offsets.append((0, 0))  # a range that goes backwards
        else:
            width = rng.randint(1, 6)
            pos += rng.randint(0, 2)
            offsets.append((pos, pos + width))
            pos += width
    return offsets


def _random_spans(rng: random.Random, length: int) -> list[tuple[int, int]]:
    cuts = sorted(rng.sample(range(length + 1), k=min(length + 1, 2 * rng.randint(0, 6))))
    return [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts) - 1, 2)]


@pytest.mark.parametrize("seed", range(60))
def test_mask_from_offsets_equals_the_loop(seed):
    rng = random.Random(seed)
    offsets = _random_offsets(rng, rng.choice([0, 1, 5, 50, 800]))
    spans = _random_spans(rng, max((e for _, e in offsets), default=0) + 3)
    assert mask_from_offsets(offsets, spans).tolist() == reference_mask(offsets, spans)
