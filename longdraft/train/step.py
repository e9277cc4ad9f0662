"""One optimizer step over this rank's micro-batches, and the evaluation pass."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from longdraft.attention.factory import AttentionBackend
from longdraft.config import Config
from longdraft.model.draft import Eagle3Draft
from longdraft.model.loss import resolve_loss_precision
from longdraft.model.target_head import TargetHead
from longdraft.model.ttt import STEP_WEIGHT_DECAY, step_valid_masks, target_ok, ttt_unroll
from longdraft.parallel.reduction import SumReducer
from longdraft.sharding.batch import ShardBatch
from longdraft.step_meter import StepMeter


@dataclass
class StepSettings:
    ttt_length: int
    loss_chunk_size: int = 1024
    activation_checkpointing: bool = False
    max_grad_norm: float = 0.5
    precision: str = "fp32"
    grad_bucket_mb: float = 25.0
    loss_precision: str = "fp32"  # resolved: fp32, tf32 or bf16 (never auto)

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> StepSettings:
        t = cfg.training
        return cls(
            t.ttt_length,
            t.loss_chunk_size,
            t.activation_checkpointing,
            t.max_grad_norm,
            resolve_precision(t.precision, device),
            t.grad_bucket_mb,
            resolve_loss_precision(t.loss_precision, device),
        )


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast (fp32 master weights) on CUDA, fp32 on CPU, where bf16 kernels are slow."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_for(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_metrics(sums: torch.Tensor, correct: torch.Tensor, counts: torch.Tensor, chains: torch.Tensor) -> dict:
    """Per-step loss/accuracy from global sums and counts (never means of means).

    Two simulated acceptance lengths (draft tokens accepted per verification, bonus token not
    counted): ``sim_acc_len = Σ_k Π_{j≤k} acc_j`` treats the steps' errors as independent;
    ``chain_acc_len = Σ_k chains_k / count_0`` counts, per position, the steps 0..k that are all
    right, as a verifier accepts drafts in a row."""
    denom = counts.clamp(min=1).double()
    loss_k = (sums.double() / denom).tolist()
    acc_k = (correct.double() / denom).tolist()
    weights = [STEP_WEIGHT_DECAY**k for k in range(len(loss_k))]
    sim_acc_len, running = 0.0, 1.0
    for acc in acc_k:
        running *= acc
        sim_acc_len += running
    return {
        "loss": sum(w * loss for w, loss in zip(weights, loss_k)),
        "loss_k": loss_k,
        "acc_k": acc_k,
        "sim_acc_len": sim_acc_len,
        "chain_acc_len": float(chains.sum().double() / denom[0]),
        "loss_tokens": int(counts[0].item()),
        "count_k": [int(c) for c in counts.tolist()],
    }


def _valid_masks(model, batches, target: TargetHead, settings):
    """Per micro-batch, once per step: the full-vocabulary pass, shared by every TTT step and chunk."""
    masks = []
    for batch in batches:
        ok = target_ok(batch, target.full, model.t2d, settings.loss_chunk_size, settings.loss_precision)
        masks.append(step_valid_masks(batch, ok, settings.ttt_length))
        del batch, ok  # before the next micro-batch is copied in
    return masks


def _as_target_head(target: TargetHead | torch.Tensor, model: Eagle3Draft) -> TargetHead:
    """A bare head tensor (benchmarks, tests) is cut here, per call; a run passes the ``TargetHead``
    its setup cut once."""
    return target if isinstance(target, TargetHead) else TargetHead.cut(target, model.draft_to_target)


def train_step(
    model: Eagle3Draft,
    batches: list[ShardBatch],
    backend: AttentionBackend,
    target: TargetHead | torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler,
    settings: StepSettings,
    reducer: SumReducer,
    meter: StepMeter | None = None,
) -> dict:
    """Forward/backward every micro-batch, sum gradients over ranks, clip, step. Returns metrics;
    ``time_s`` holds the phases (forward, backward, the gradient sum's exposed wait, optimizer) and
    ``attention_s`` and ``loss_s`` inside them; with several ranks ``comm_bytes`` and ``comm_wait_s``
    per collective kind. ``meter`` (the attention backend's, if it has one) is started afresh here."""
    target = _as_target_head(target, model)
    device = target.device
    meter = meter if meter is not None else StepMeter.for_device(device)
    masks = _valid_masks(model, batches, target, settings)
    counts = torch.zeros(settings.ttt_length + 1, dtype=torch.int64, device=device)
    for valid in masks:
        counts[:-1] += torch.stack([v.sum() for v in valid])
    counts[-1] = len(batches)
    reducer.sum_(counts)  # before any forward: every loss is normalised by the global count
    # No micro-batch on any rank: no gradient anywhere. One device leaves them all None and AdamW
    # does nothing; every rank does the same (no zeros summed), decided from the global count.
    counts, any_batch = counts[:-1], bool(counts[-1] > 0)
    normalisers = counts.clamp(min=1).float()
    sums = torch.zeros(settings.ttt_length, dtype=torch.float32, device=device)
    correct = torch.zeros(settings.ttt_length, dtype=torch.int64, device=device)
    chains = torch.zeros(settings.ttt_length, dtype=torch.int64, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    buckets = reducer.bucketed(params, settings.grad_bucket_mb)
    optimizer.zero_grad(set_to_none=True)
    meter.start(device)
    for i, (batch, valid) in enumerate(zip(batches, masks)):
        with autocast_for(settings.precision, device):
            result = ttt_unroll(
                model,
                batch,
                valid,
                normalisers,
                target.draft_rows,
                backend,
                settings.loss_chunk_size,
                settings.activation_checkpointing,
                meter,
                settings.loss_precision,
                target.logits,
            )
        meter.lap("forward_s")
        if buckets is not None and i == len(batches) - 1:
            buckets.arm()  # the last backward starts each bucket's sum as soon as it is complete
        result.loss.backward()
        meter.lap("backward_s")
        sums += result.loss_sums
        correct += result.correct
        chains += result.chains
        del batch, result  # before the next micro-batch is copied in: one on the device at a time
    if buckets is not None and any_batch:
        buckets.finish()
    meter.lap("grad_sum_s")  # with buckets: only the part of the sum the backward did not hide
    max_norm = settings.max_grad_norm if settings.max_grad_norm > 0 else float("inf")  # 0: measure, never clip
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    lr = optimizer.param_groups[0]["lr"]
    finite = math.isfinite(grad_norm)
    if finite and any_batch:  # every rank holds the same summed gradients, so all skip or step together
        optimizer.step()
    scheduler.step()
    meter.lap("optimizer_s")
    reducer.sum_(sums)
    reducer.sum_(correct)
    reducer.sum_(chains)
    metrics = step_metrics(sums, correct, counts, chains)
    grad_bytes = sum(p.numel() for p in params) * 4 if reducer.group is not None else 0  # fp32 sums
    metrics.update(
        lr=lr, grad_norm=grad_norm, skipped_nonfinite=not finite, time_s=meter.time_s, grad_sum_bytes=grad_bytes
    )
    if reducer.group is not None:  # this rank's own view: its sends and its waits, per collective kind
        metrics.update(comm_bytes=dict(meter.comm_bytes), comm_wait_s=dict(meter.comm_wait_s))
    return metrics


@torch.no_grad()
def evaluate(
    model: Eagle3Draft,
    batches: list[ShardBatch],
    backend: AttentionBackend,
    target: TargetHead | torch.Tensor,
    settings: StepSettings,
    reducer: SumReducer,
) -> dict:
    """Held-out per-step loss/accuracy and simulated acceptance length, reduced as sums."""
    target = _as_target_head(target, model)
    device = target.device
    masks = _valid_masks(model, batches, target, settings)
    sums = torch.zeros(settings.ttt_length, dtype=torch.float32, device=device)
    correct = torch.zeros(settings.ttt_length, dtype=torch.int64, device=device)
    counts = torch.zeros(settings.ttt_length, dtype=torch.int64, device=device)
    chains = torch.zeros(settings.ttt_length, dtype=torch.int64, device=device)
    ones = torch.ones(settings.ttt_length, device=device)
    for batch, valid in zip(batches, masks):
        with autocast_for(settings.precision, device):
            result = ttt_unroll(
                model,
                batch,
                valid,
                ones,
                target.draft_rows,
                backend,
                settings.loss_chunk_size,
                loss_precision=settings.loss_precision,
                target_logits=target.logits,
            )
        sums += result.loss_sums
        correct += result.correct
        counts += result.counts
        chains += result.chains
    for t in (sums, correct, counts, chains):
        reducer.sum_(t)
    return step_metrics(sums, correct, counts, chains)
