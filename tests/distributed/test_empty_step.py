"""A globally empty step (every sample of the global batch below ``training.min_loss_tokens``) does
on every rank what it does on one device: no gradient anywhere, so no optimizer step (AdamW's
momentum must not move the weights, its step count must not advance), while the schedule advances.

The real ``train_loop`` runs 5 steps of 4 samples, the third all skipped, on one device and on two
gloo ranks (DP = 2, each rank half of every global batch); per-step losses and the final weights
and optimizer state of the two runs must agree within 1e-6 (fp32).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from longdraft.attention.factory import make_attention_backend
from longdraft.config import Config
from longdraft.data.loss_mask import pack_loss_mask
from longdraft.parallel.launch import run_ranks
from longdraft.parallel.mesh import USPMesh
from longdraft.parallel.reduction import SumReducer
from longdraft.sharding.reader import should_skip
from longdraft.step_meter import StepMeter
from longdraft.train.batch_source import StepBatches
from longdraft.train.loop import train_loop
from longdraft.train.optim import build_optimizer, build_scheduler
from longdraft.train.rank_context import RankContext
from longdraft.train.setup import TrainParts
from tests.draft_factory import batch_of, random_samples, tiny_draft

K, STEPS, BATCH, MIN_LOSS_TOKENS, EMPTY_STEP = 3, 5, 4, 4, 2  # EMPTY_STEP: 0-based


def _global_batches() -> list[list[dict]]:
    steps = []
    for step in range(STEPS):
        samples = random_samples([11, 9, 12, 10], seed=100 + step, loss_fraction=0.8)
        for s in samples:
            s["loss_mask"][:] = step != EMPTY_STEP
            if step == EMPTY_STEP:
                s["loss_mask"][3] = True  # one loss token: below min_loss_tokens
        steps.append(samples)
    return steps


class _Source:
    """Rank ``rank`` of ``world`` reads every ``world``-th sample of each global batch, one micro-batch each."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world, self.position = rank, world, 0
        self.steps = _global_batches()

    def resume_at(self, stream_position: int) -> None:
        raise AssertionError("no resume in this test")

    def eval_batches(self):
        return []

    def next_step(self) -> StepBatches:
        mine = self.steps[self.position][self.rank :: self.world]
        self.position += 1
        kept = [
            s
            for s in mine
            if not should_skip(pack_loss_mask(s["loss_mask"].long().tolist()), MIN_LOSS_TOKENS, len(s["loss_mask"]))
        ]
        return StepBatches([batch_of([s], K) for s in kept], len(kept), len(mine) - len(kept))

    @property
    def stream_position(self) -> int:
        return self.position

    @property
    def epoch(self) -> int:
        return 0

    def finish(self) -> None:
        pass


def _config(out: str) -> Config:
    cfg = Config()
    cfg.output.dir = out
    t = cfg.training
    t.num_steps, t.batch_size, t.ttt_length, t.min_loss_tokens = STEPS, BATCH, K, MIN_LOSS_TOKENS
    t.max_seq_length, t.loss_chunk_size, t.precision, t.device = 64, 4, "fp32", "cpu"
    t.lr, t.warmup_steps, t.min_lr, t.weight_decay, t.max_grad_norm = 1e-2, 0, 1e-3, 0.01, 0.0
    t.grad_bucket_mb = 1 / 1024
    return cfg


def _run(rank: int, world: int, out: str, one_device: bool) -> dict:
    cfg = _config(f"{out}/{'one' if one_device else 'dp'}{rank}")
    model, head = tiny_draft()
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.training
    optimizer = build_optimizer(params, t.lr, t.weight_decay)
    parts = TrainParts(model, head, optimizer, build_scheduler(optimizer, t.warmup_steps, t.num_steps, t.lr, t.min_lr))
    meter = StepMeter()
    device = torch.device("cpu")
    if one_device:
        role = RankContext(_Source(0, 1), make_attention_backend("fast", meter=meter), SumReducer(None), device, meter)
    else:
        mesh = USPMesh.build(1, 1)
        reducer = SumReducer(dist.group.WORLD, device)
        role = RankContext(
            _Source(rank, world), make_attention_backend("fast", meter=meter), reducer, device, meter, mesh
        )
    role.progress_bar = False
    result = train_loop(cfg, parts, role)
    steps_taken = {int(s["step"]) for s in optimizer.state.values()}
    return {
        "loss": [m["loss"] for m in result.history],
        "samples": [m["samples"] for m in result.history],
        "lr": [m["lr"] for m in result.history],
        "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
        "adam_steps": sorted(steps_taken),
    }


@pytest.mark.timeout(240)
def test_a_globally_empty_step_matches_one_device(tmp_path):
    (one,) = run_ranks(_run, 1, (str(tmp_path), True), timeout_s=200)
    ranks = run_ranks(_run, 2, (str(tmp_path), False), timeout_s=200)
    assert one["samples"][EMPTY_STEP] == 0 and all(n == BATCH for i, n in enumerate(one["samples"]) if i != EMPTY_STEP)
    assert one["adam_steps"] == [STEPS - 1], one["adam_steps"]  # the empty step did not step AdamW
    for r in ranks:
        assert r["samples"] == one["samples"] and r["lr"] == one["lr"]
        assert r["adam_steps"] == one["adam_steps"], r["adam_steps"]
        for a, b in zip(r["loss"], one["loss"]):
            assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), (r["loss"], one["loss"])
        worst = max((r["weights"][n] - w).abs().max().item() for n, w in one["weights"].items())
        assert worst < 1e-6, worst
