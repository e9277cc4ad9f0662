"""The test-time-training (TTT) unroll of the draft over one shard, with its loss.

A shard is ``n_seg`` segments of ``c`` query positions followed by ``K`` look-ahead positions (on one
device: one segment holding the whole padded sequence). At step ``k`` query ``t`` of a segment uses
input token ``t+k+1``, target row ``t+k+1``, loss mask ``t+k`` and RoPE position ``position[t] + k``
(ARCHITECTURE.md, "EAGLE-3 alignment"), so slicing the segment at offset ``k`` or ``k+1`` is all the left
shifting there is, and no rank needs data from another.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from longdraft.attention.factory import AttentionBackend
from longdraft.model.draft import Eagle3Draft
from longdraft.model.loss import soft_cross_entropy_steps, target_argmax_in_vocab
from longdraft.sharding.batch import ShardBatch
from longdraft.step_meter import StepMeter
from longdraft.target.logits import LogitTransform

STEP_WEIGHT_DECAY = 0.8


def queries_per_segment(batch: ShardBatch, ttt_length: int) -> int:
    c = batch.input_ids.shape[2] - ttt_length
    if c <= 0:
        raise ValueError(
            f"a shard segment has {batch.input_ids.shape[2]} positions, which must exceed training.ttt_length={ttt_length}"
        )
    if batch.positions.numel() != batch.input_ids.shape[1] * c:
        raise ValueError(f"{batch.positions.numel()} query positions given, expected {batch.input_ids.shape[1] * c}")
    return c


def _queries(x: torch.Tensor, offset: int, c: int) -> torch.Tensor:
    """Positions ``offset .. offset+c`` of every segment, flattened to ``[B, n_seg*c, ...]``."""
    sliced = x[:, :, offset : offset + c]
    return sliced.reshape(x.shape[0], -1, *x.shape[3:])


@torch.no_grad()
def target_ok(
    batch: ShardBatch, target_lm_head: torch.Tensor, t2d: torch.Tensor, chunk_size: int, precision: str = "fp32"
) -> torch.Tensor:
    """Per position: a real target exists and its argmax is inside the draft vocab. ``[B, n_seg, c+K]``.
    The one pass over the full target vocabulary: run once per micro-batch per step, shared by all K steps."""
    ok = batch.is_real.bool().clone()
    if bool(t2d.all()):
        return ok
    rows = ok.nonzero(as_tuple=True)
    ok[rows] = target_argmax_in_vocab(batch.last_hidden[rows], target_lm_head, t2d, chunk_size, precision)
    return ok


def step_valid_masks(batch: ShardBatch, ok: torch.Tensor, ttt_length: int) -> list[torch.Tensor]:
    """For each TTT step ``k``: which queries carry loss, ``[B, n_seg*c]`` bool."""
    c = queries_per_segment(batch, ttt_length)
    mask = batch.loss_mask.bool()
    return [_queries(mask, k, c) & _queries(ok, k + 1, c) for k in range(ttt_length)]


@dataclass
class UnrollResult:
    loss: torch.Tensor  # weighted sum of per-step losses, normalised by the given counts
    loss_sums: torch.Tensor  # [K] fp32, detached: local sum of per-position soft cross-entropy
    correct: torch.Tensor  # [K] int64: local top-1 agreements
    counts: torch.Tensor  # [K] int64: local valid positions
    chains: torch.Tensor  # [K] int64: local positions whose steps 0..k are all valid and right


def ttt_unroll(
    model: Eagle3Draft,
    batch: ShardBatch,
    valid: list[torch.Tensor],
    normalisers: torch.Tensor,
    target_lm_head_draft_rows: torch.Tensor,
    backend: AttentionBackend,
    loss_chunk_size: int = 1024,
    activation_checkpointing: bool = False,
    meter: StepMeter | None = None,
    loss_precision: str = "fp32",
    target_logits: LogitTransform | None = None,
) -> UnrollResult:
    """Run the K-step unroll; ``normalisers[k]`` is the global valid count of step k (>= 1);
    ``meter`` (optional) adds the loss's time (the attention backend times its own);
    ``loss_precision``: the logits matmuls' precision (``soft_cross_entropy_steps``)."""
    ttt_length = len(valid)
    c = queries_per_segment(batch, ttt_length)
    feature = model.fc(_queries(batch.aux_hidden, 0, c).to(model.fc.weight.dtype))  # features stay bf16 until here
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    target_row = _target_rows(batch, c)
    normed, rows_used = [], []
    for k in range(ttt_length):
        embedding = model.embed(_queries(batch.input_ids, k + 1, c))
        cos, sin = rope_at_step(model, batch, feature, k)
        if activation_checkpointing:
            feature, key, value = checkpoint(
                _step, model, embedding, feature, cos, sin, backend, len(keys), *keys, *values, use_reentrant=False
            )
            keys.append(key)
            values.append(value)
        else:
            feature = model.layer_step(embedding, feature, cos, sin, keys, values, backend)
        normed.append(model.norm(feature[valid[k]]))
        rows_used.append(target_row[valid[k]] + k + 1)  # step k scores query t against target row t+k+1
    # One loss over all steps: each target distribution is computed once, not once per step.
    sums, agrees = soft_cross_entropy_steps(
        normed,
        rows_used,
        model.lm_head.weight,
        batch.last_hidden.reshape(-1, batch.last_hidden.shape[-1]),
        target_lm_head_draft_rows,
        loss_chunk_size,
        meter,
        loss_precision,
        target_logits,  # the target's own logit transform (TargetSpec.logits)
    )
    weights = torch.tensor([STEP_WEIGHT_DECAY**k for k in range(ttt_length)], device=sums.device)
    loss = (weights * sums / normalisers).sum()
    corrects, counts, chains = [], [], []
    chain = valid[0].clone()  # per query: every step so far valid and its draft argmax right
    for rows, agree in zip(valid, agrees):
        right = torch.zeros_like(rows)
        right[rows] = agree
        chain &= right
        corrects.append(agree.sum())
        counts.append(rows.sum())
        chains.append(chain.sum())
    # A shard without loss tokens must still run every collective of the backward (ARCHITECTURE.md, invariant 1).
    loss = loss + 0.0 * feature.float().sum()
    return UnrollResult(loss, sums.detach(), torch.stack(corrects), torch.stack(counts), torch.stack(chains))


def rope_at_step(model: Eagle3Draft, batch: ShardBatch, x: torch.Tensor, k: int):
    """cos/sin of TTT step ``k``: each query's global position + k, with the frequencies of its
    sample's global length (never of the positions this shard happens to hold)."""
    positions = (batch.positions + k).unsqueeze(0).expand(batch.batch_size, -1)
    return model.rope(x, positions, batch.lengths)


def _target_rows(batch: ShardBatch, c: int) -> torch.Tensor:
    """Per query ``[B, n_seg*c]``: the flat row of ``last_hidden`` at its own position (step 0 adds 1)."""
    bsz, n_seg, length = batch.input_ids.shape
    segment_start = torch.arange(bsz * n_seg, device=batch.input_ids.device).view(bsz, n_seg, 1) * length
    offsets = torch.arange(c, device=batch.input_ids.device).view(1, 1, c)
    return (segment_start + offsets).reshape(bsz, n_seg * c)


def _step(model, embedding, feature, cos, sin, backend, n_prev, *kv):
    keys, values = list(kv[:n_prev]), list(kv[n_prev:])
    out = model.layer_step(embedding, feature, cos, sin, keys, values, backend)
    return out, keys[-1], values[-1]
