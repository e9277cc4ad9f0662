"""τ results in metrics.jsonl: when the last step brings an earlier evaluation's result besides its
own (the pipeline's evaluator was still measuring), both are written, each naming its step."""

from __future__ import annotations

import torch

from longdraft.attention.factory import make_attention_backend
from longdraft.parallel.reduction import SumReducer
from longdraft.step_meter import StepMeter
from longdraft.train.loop import train_loop
from longdraft.train.metrics_log import read_metrics
from longdraft.train.optim import build_optimizer, build_scheduler
from longdraft.train.rank_context import RankContext
from longdraft.train.setup import TrainParts
from tests.distributed.test_empty_step import STEPS, _config, _Source
from tests.draft_factory import tiny_draft


class _LateTau:
    """Step 2's evaluation is answered only at the last step, together with the last step's own."""

    def step(self, step, due, last, export):
        export()  # the weights are exported as for a real evaluator
        if not last:
            return []
        return [{"tau_step": 2, "tau@8": 1.5, "eval_tau_s": 0.1}, {"tau_step": step, "tau@8": 2.0, "eval_tau_s": 0.1}]


def test_an_earlier_result_arriving_with_the_last_step_gets_a_record_of_its_own(tmp_path):
    cfg = _config(str(tmp_path))
    model, head = tiny_draft()
    t = cfg.training
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], t.lr, t.weight_decay)
    parts = TrainParts(model, head, optimizer, build_scheduler(optimizer, t.warmup_steps, t.num_steps, t.lr, t.min_lr))
    meter = StepMeter()
    rank = RankContext(
        _Source(0, 1), make_attention_backend("fast", meter=meter), SumReducer(None), torch.device("cpu"), meter
    )
    rank.progress_bar, rank.tau = False, _LateTau()
    train_loop(cfg, parts, rank)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    measured = [(r["step"], r["tau_step"], r["tau@8"]) for r in records if "tau_step" in r]
    assert measured == [(STEPS, 2, 1.5), (STEPS, STEPS, 2.0)]
    assert "loss" in records[-1] and records[-1]["tau_step"] == STEPS  # the last step's record has its own τ
