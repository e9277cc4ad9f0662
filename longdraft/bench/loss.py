"""``longdraft bench loss``: the soft cross-entropy by ``training.loss_precision``, at Llama-3.1-8B dimensions.

Per precision, over ``rows`` query positions: the full-vocabulary pass that masks targets outside the
draft vocab (``target_argmax_in_vocab``) and the forward + backward of the K-step loss
(``soft_cross_entropy_steps``, every step scoring ``rows`` queries, as an unroll without padding does).
Reported: time per 1,024 positions, peak memory above the resident inputs at ``rows`` positions (the
default 1,024; part of it, the ``[Vd, H]`` gradient and casts, does not scale with rows), the resident frozen head
(full and draft rows, in the dtype setup keeps them in), and the deviation of loss, gradients and
mask from fp32 on the same inputs. Inputs are random with logits of standard deviation ~3; the
head is rounded to bf16 first, as a bf16 checkpoint holds it, so deviations come from the compute.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch

from longdraft.bench.memory import PeakMeter
from longdraft.model.loss import LOSS_PRECISIONS, frozen_dtype, soft_cross_entropy_steps, target_argmax_in_vocab
from longdraft.model.target_head import TargetHead

PER = 1024  # positions the times and peaks are scaled to


@dataclass
class LossBenchConfig:
    hidden: int = 4096
    target_vocab: int = 128256
    draft_vocab: int = 32000
    ttt_length: int = 7
    rows: int = 1024
    loss_chunk: int = 1024
    iters: int = 2
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    precisions: tuple[str, ...] = LOSS_PRECISIONS


def _inputs(cfg: LossBenchConfig, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    scale = 3 / cfg.hidden**0.5  # logits of std ~3

    def randn(*shape, s=1.0):
        return (torch.randn(*shape, generator=gen) * s).to(device)

    head = randn(cfg.target_vocab, cfg.hidden, s=scale).bfloat16().float()  # as a bf16 checkpoint holds it
    draft_to_target = torch.randperm(cfg.target_vocab, generator=gen)[: cfg.draft_vocab].sort().values.to(device)
    t2d = torch.zeros(cfg.target_vocab, dtype=torch.bool, device=device)
    t2d[draft_to_target] = True
    n = cfg.rows + cfg.ttt_length  # step k scores query t against target row t + k + 1
    target_hidden = randn(n, cfg.hidden).bfloat16()  # shard features are bf16
    lm_head = randn(cfg.draft_vocab, cfg.hidden, s=scale)
    xs = [randn(cfg.rows, cfg.hidden) for _ in range(cfg.ttt_length)]
    rows = [torch.arange(cfg.rows, device=device) + k + 1 for k in range(cfg.ttt_length)]
    return head, draft_to_target, t2d, target_hidden, lm_head, xs, rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(cfg, precision, target: TargetHead, t2d, target_hidden, lm_head, xs, rows):
    """One mask pass and one forward + backward: (mask, sums, grads, mask seconds, loss seconds)."""
    device = target_hidden.device
    weight = lm_head.detach().requires_grad_()
    leaves = [x.detach().requires_grad_() for x in xs]
    _sync(device)
    start = time.perf_counter()
    mask = target_argmax_in_vocab(target_hidden, target.full, t2d, cfg.loss_chunk, precision)
    _sync(device)
    mask_s = time.perf_counter() - start
    start = time.perf_counter()
    sums, _ = soft_cross_entropy_steps(
        leaves, rows, weight, target_hidden, target.draft_rows, cfg.loss_chunk, precision=precision
    )
    grads = torch.autograd.grad(sums.sum(), [weight, *leaves])
    _sync(device)
    return mask, sums.detach(), grads, mask_s, time.perf_counter() - start


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30))


def run_loss_bench(cfg: LossBenchConfig) -> list[dict]:
    device = torch.device(cfg.device)
    head, draft_to_target, t2d, target_hidden, lm_head, xs, rows = _inputs(cfg, device)
    reference = None
    out = []
    for precision in ("fp32", *(p for p in cfg.precisions if p != "fp32")):  # fp32 first: the reference
        target = TargetHead.cut(head.to(frozen_dtype(precision)), draft_to_target)
        resident = sum(t.numel() * t.element_size() for t in (target.full, target.draft_rows))
        meter, best = PeakMeter(device), None
        for _ in range(max(1, cfg.iters)):  # the first iteration warms up; the fastest one is kept
            meter.start()
            mask, sums, grads, mask_s, loss_s = _run(cfg, precision, target, t2d, target_hidden, lm_head, xs, rows)
            peak = meter.peak()
            if best is None or mask_s + loss_s < best[0] + best[1]:
                best = (mask_s, loss_s, peak)
        if reference is None:
            reference = (mask, sums, grads)
        ref_mask, ref_sums, ref_grads = reference
        scale = PER / cfg.rows
        out.append(
            dict(
                precision=precision,
                mask_s_per_1024=best[0] * scale,
                loss_fwd_bwd_s_per_1024=best[1] * scale,
                rows=cfg.rows,
                peak_bytes=int(best[2]),
                resident_head_bytes=resident,
                loss_rel_dev=_rel(sums, ref_sums),
                grad_lm_head_rel_dev=_rel(grads[0], ref_grads[0]),
                grad_x_rel_dev=max(_rel(g, r) for g, r in zip(grads[1:], ref_grads[1:])),
                mask_agreement=float((mask == ref_mask).float().mean()),
            )
        )
        if cfg.precisions and precision not in cfg.precisions:
            out.pop()  # fp32 was only the reference
        del target
    return out


def _return_freed_blocks_to_the_system() -> None:
    """CPU peaks are read from the resident set: glibc must map (and unmap) every block of 64 KiB or more,
    or freed tensors stay resident and the next precision's peak hides under them."""
    with contextlib.suppress(OSError):  # not glibc: peaks are upper bounds
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD


def main(argv: list[str] | None = None) -> int:
    d = LossBenchConfig()
    p = argparse.ArgumentParser(prog="longdraft bench loss", description=__doc__.split("\n\n")[0])
    for name in ("hidden", "target_vocab", "draft_vocab", "ttt_length", "rows", "loss_chunk", "iters"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--device", choices=["cpu", "cuda"], default=d.device)
    p.add_argument("--precisions", default=",".join(d.precisions), help=f"comma-separated subset of {LOSS_PRECISIONS}")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print only the JSON list")
    args = p.parse_args(argv)
    precisions = tuple(x for x in args.precisions.split(",") if x)
    unknown = set(precisions) - set(LOSS_PRECISIONS)
    if unknown:
        p.error(f"--precisions: {sorted(unknown)} not in {LOSS_PRECISIONS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        _return_freed_blocks_to_the_system()
    cfg = LossBenchConfig(**{k: v for k, v in vars(args).items() if k in LossBenchConfig.__dataclass_fields__})
    cfg.precisions = precisions
    rows = run_loss_bench(cfg)
    if not args.json:
        print(json.dumps(asdict(cfg)), file=sys.stderr)
        for r in rows:
            print(
                f"{r['precision']}: mask {r['mask_s_per_1024']:.3f} s, loss fwd+bwd {r['loss_fwd_bwd_s_per_1024']:.3f} s, "
                f"per 1024 positions; peak {r['peak_bytes'] / 2**20:.0f} MiB at {r['rows']}; head {r['resident_head_bytes'] / 2**20:.0f} MiB; "
                f"dev loss {r['loss_rel_dev']:.1e} grad W {r['grad_lm_head_rel_dev']:.1e} grad x {r['grad_x_rel_dev']:.1e}",
                file=sys.stderr,
            )
    print(json.dumps(rows, indent=None if args.json else 2))
    return 0
