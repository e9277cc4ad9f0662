"""Draft-vocabulary mapping: the most frequent loss-masked target tokens.

Convention shared with SGLang / vLLM EAGLE-3 loaders: `d2t[i]` is an offset, so the target id
of draft id i is `i + d2t[i]`; `t2d` is a bool mask over the target vocab.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from longdraft.data.loss_mask import unpack_loss_mask


@dataclass(frozen=True)
class VocabMapping:
    draft_to_target: torch.Tensor  # int64 [draft_vocab], ascending target ids
    d2t: torch.Tensor  # int64 [draft_vocab]: target = draft + d2t[draft]
    t2d: torch.Tensor  # bool [target_vocab]
    token_counts: torch.Tensor | None = None  # int64 [target_vocab] loss-token frequencies

    @property
    def target_vocab_size(self) -> int:
        return int(self.t2d.numel())

    @property
    def draft_vocab_size(self) -> int:
        return int(self.draft_to_target.numel())

    @property
    def is_identity(self) -> bool:
        return self.draft_vocab_size == self.target_vocab_size

    @classmethod
    def from_draft_to_target(
        cls, draft_to_target: torch.Tensor, target_vocab_size: int, token_counts: torch.Tensor | None = None
    ) -> VocabMapping:
        ids = draft_to_target.to(torch.long)
        if ids.numel() and (bool((ids[1:] <= ids[:-1]).any()) or ids[0] < 0 or ids[-1] >= target_vocab_size):
            raise ValueError("draft_to_target must be strictly ascending target ids in [0, target_vocab)")
        t2d = torch.zeros(target_vocab_size, dtype=torch.bool)
        t2d[ids] = True
        return cls(ids, ids - torch.arange(ids.numel()), t2d, token_counts)

    @classmethod
    def identity(cls, vocab_size: int) -> VocabMapping:
        return cls.from_draft_to_target(torch.arange(vocab_size), vocab_size)


def count_loss_tokens(samples: Iterable, target_vocab_size: int) -> torch.Tensor:
    """int64 [target_vocab]: how often each token id sits at a loss-masked position."""
    counts = torch.zeros(target_vocab_size, dtype=torch.long)
    for s in samples:
        ids = torch.as_tensor(s.input_ids, dtype=torch.long)
        mask = unpack_loss_mask(s.packed_loss_mask, ids.numel()).bool()
        picked = ids[mask]
        if picked.numel() and (picked.min() < 0 or picked.max() >= target_vocab_size):
            bad = picked[(picked < 0) | (picked >= target_vocab_size)][0].item()
            raise ValueError(
                f"sample {s.sample_id}: token id {bad} is outside the target vocab [0, {target_vocab_size})"
            )
        counts += torch.bincount(picked, minlength=target_vocab_size)
    return counts


def build_vocab_mapping(samples: Iterable, target_vocab_size: int, draft_vocab_size: int | None) -> VocabMapping:
    """Top-`draft_vocab_size` loss-token ids (ties: lower id first; zero-count ids fill up by id)."""
    if draft_vocab_size is None or draft_vocab_size == target_vocab_size:
        return VocabMapping.identity(target_vocab_size)
    if not 1 <= draft_vocab_size < target_vocab_size:
        raise ValueError(
            f"draft_vocab_size={draft_vocab_size}: expected 1 <= draft_vocab_size <= "
            f"target vocab size {target_vocab_size}"
        )
    counts = count_loss_tokens(samples, target_vocab_size)
    # Stable sort on -count keeps ids ascending among equal counts, so ties go to the lower id
    # and never-seen ids are taken lowest-first.
    order = torch.sort(-counts, stable=True).indices
    chosen = torch.sort(order[:draft_vocab_size]).values
    return VocabMapping.from_draft_to_target(chosen, target_vocab_size, counts)
