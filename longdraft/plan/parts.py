"""What one rank's step needs, built from the config alone: the draft and the frozen target head with
the target's real shapes (random values from ``config.json``, or the checkpoint's own), the optimizer
and schedule the run builds, this rank's micro-batches of full-length samples, the mesh and the
attention backend.

The plan is the worst case for memory: every sample is ``training.max_seq_length`` tokens and every
position carries loss (the vocab mapping keeps every target argmax in the draft vocab). The draft and
the head are built as ``train/setup.py`` builds them (fp32 embedding buffer and head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longdraft.attention.choice import choose_ring_mode
from longdraft.attention.factory import AttentionBackend, make_attention_backend
from longdraft.attention.ring_mode import gathered_kv_bytes
from longdraft.config import Config
from longdraft.model.draft import Eagle3Draft
from longdraft.model.draft_config import draft_config_from_target
from longdraft.parallel.mesh import USPMesh
from longdraft.parallel.reduction import SumReducer
from longdraft.sharding.batch import ShardBatch
from longdraft.sharding.device_batches import DeviceBatches, batch_bytes
from longdraft.sharding.layout import ShardGrid
from longdraft.target.spec import TargetSpec
from longdraft.train.optim import build_optimizer, build_scheduler
from longdraft.train.setup import target_spec
from longdraft.train.step import StepSettings


@dataclass
class PlanParts:
    model: Eagle3Draft
    head: torch.Tensor
    optimizer: torch.optim.Optimizer
    scheduler: object
    settings: StepSettings
    batches: list[ShardBatch]
    backend: AttentionBackend
    reducer: SumReducer
    mesh: USPMesh
    ring_mode: str
    device: torch.device  # where the step runs; ``batches`` stay on the host, as a trainer rank keeps them
    ahead: bool  # the next micro-batch is copied while the step computes (CUDA's side stream)

    def step_batches(self, on_copy=None) -> DeviceBatches:
        """The step's micro-batches as a trainer rank hands them: each copied to the device when read."""
        return DeviceBatches(self.batches, self.device, self.ahead, on_copy, copy=True)

    def micro_batch_bytes(self) -> int:
        return batch_bytes(self.batches[0])

    def host_bytes(self, cfg: Config) -> dict[str, int]:
        """What the rank holds on the host at the defaults: the step's micro-batches, the read-ahead
        queue (``training.prefetch_mb``, plus the one sample it may pass it by) and the held-out set
        (``eval.num_prompts x 4`` samples, the most it keeps) when the run evaluates."""
        per_sample = self.micro_batch_bytes() // cfg.training.micro_batch_size
        held_out = cfg.eval.num_prompts * 4 * per_sample if cfg.training.eval_every else 0
        prefetch = int(cfg.training.prefetch_mb * (1 << 20)) + per_sample
        step = sum(batch_bytes(b) for b in self.batches)
        return {"step_batches": step, "prefetch": prefetch, "held_out": held_out, "total": step + prefetch + held_out}


def feature_dtype(cfg: Config, spec: TargetSpec) -> torch.dtype:
    """The dtype the producers store hidden states in (``pipeline/sizes.py``'s rule)."""
    if cfg.model.target_dtype != "auto":
        return torch.bfloat16 if cfg.model.target_dtype == "bf16" else torch.float32
    return spec.torch_dtype


def _weights(spec: TargetSpec, random: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if random:
        vocab, hidden = spec.vocab_size, spec.hidden_size
        return torch.randn(vocab, hidden) * 0.02, torch.randn(vocab, hidden) * 0.02
    return spec.embedding_and_head()


def _draft(cfg: Config, spec: TargetSpec, embedding: torch.Tensor) -> Eagle3Draft:
    config = draft_config_from_target(spec, cfg.model.draft_vocab_size, cfg.model.aux_layers, cfg.model.draft_window)
    torch.manual_seed(cfg.training.seed)
    model = Eagle3Draft(config, embedding)
    draft_vocab, vocab = config.draft_vocab_size, config.vocab_size
    model.set_vocab_mapping(torch.zeros(draft_vocab, dtype=torch.int64), torch.ones(vocab, dtype=torch.bool))
    return model


def _micro_batch(cfg: Config, sp_rank: int, dtype: torch.dtype, hidden: int, vocab: int) -> ShardBatch:
    t = cfg.training
    layout = ShardGrid.from_training(t).for_length(t.max_seq_length)
    b, n_seg, seg = t.micro_batch_size, layout.num_segments, layout.segment_length
    real = layout.valid_mask(sp_rank).view(1, n_seg, seg).expand(b, n_seg, seg).clone()
    return ShardBatch(
        input_ids=torch.randint(0, vocab, (b, n_seg, seg)),
        aux_hidden=torch.randn(b, n_seg, seg, 3 * hidden, dtype=dtype),
        last_hidden=torch.randn(b, n_seg, seg, hidden, dtype=dtype),
        loss_mask=real.clone(),
        is_real=real,
        positions=layout.query_positions(sp_rank),
        lengths=(t.max_seq_length,) * b,
    )


def build_plan_parts(
    cfg: Config, device: torch.device, planned_device: torch.device, device_memory: int, random_weights: bool
) -> PlanParts:
    """Everything on ``device`` (the planned device, or CPU under the estimate's fake tensors);
    precision and ``ring_mode: auto`` follow ``planned_device`` and its ``device_memory``."""
    t = cfg.training
    spec = target_spec(cfg)
    heads, kv_heads = spec.num_heads, spec.num_kv_heads
    mesh = USPMesh.build(t.sp_ulysses_size, t.sp_ring_size, heads, kv_heads)
    settings = StepSettings.from_config(cfg, planned_device)
    embedding, head = _weights(spec, random_weights)
    model = _draft(cfg, spec, embedding.float())
    if device.type != "cpu":
        model, head = model.to(device), head.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, t.lr, t.weight_decay)
    scheduler = build_scheduler(optimizer, t.warmup_steps, t.num_steps, t.lr, t.min_lr)
    _create_optimizer_state(params, optimizer)
    ring_mode = choose_ring_mode(t.ring_mode, gathered_kv_bytes(t, spec, settings.precision), device_memory // 20)
    backend = make_attention_backend(
        cfg.attention_backend,
        mesh=mesh,
        num_heads=heads,
        num_kv_heads=kv_heads,
        order=t.shard_order,
        ring_mode=ring_mode,
        window=cfg.model.draft_window,
    )
    dtype, hidden = feature_dtype(cfg, spec), spec.hidden_size
    batches = [
        _micro_batch(cfg, mesh.coords.sp_rank, dtype, hidden, spec.vocab_size) for _ in range(cfg.accumulation_steps)
    ]
    group = torch.distributed.group.WORLD if mesh.world_size > 1 else None  # one trainer: the local run's reducer
    return PlanParts(
        model,
        head,
        optimizer,
        scheduler,
        settings,
        batches,
        backend,
        SumReducer(group, device),
        mesh,
        ring_mode,
        device,
        planned_device.type == "cuda",
    )


def _create_optimizer_state(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """AdamW creates its state at its first step; a step with zero gradients creates it now, so the
    planned step holds it as every step after the first does."""
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
