"""One trainer rank: joins the process group, builds its part of the mesh, and runs the training
loop over its own shards (``pipeline/shard_source.py``) with USP attention.

The collectives of a step (USP all-to-alls and ring exchanges, count and gradient sums) are issued
in the same order on every rank of the group, by the loop's main thread only.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from longdraft.attention.ring_mode import agreed_ring_mode
from longdraft.config import Config
from longdraft.data.vocab import VocabMapping
from longdraft.device import resolve_device
from longdraft.parallel.reduction import SumReducer
from longdraft.pipeline.placement import rank_coordinates
from longdraft.pipeline.shard_source import ShardSource
from longdraft.pipeline.shared_output import write_marker
from longdraft.step_meter import StepMeter
from longdraft.train.loop import LoopResult, train_loop
from longdraft.train.rank_context import RankContext
from longdraft.train.setup import build_train_parts, target_spec


class TrainerRank:
    def __init__(
        self,
        rank: int,
        world_size: int,
        cfg: Config,
        queue,
        controller,
        store_factory,
        vocab_ids: torch.Tensor,
        start_position: int,
        checkpoint: str | None,
        tau_evaluator=None,
    ):
        import ray

        torch.set_num_threads(1)
        if cfg.cluster.socket_ifname:  # before any process group exists
            os.environ["GLOO_SOCKET_IFNAME"] = os.environ["NCCL_SOCKET_IFNAME"] = cfg.cluster.socket_ifname
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        self.sp_rank = rank % cfg.sp_size
        self.node_ip = ray.util.get_node_ip_address()
        self.queue, self.controller = queue, controller
        self.store_factory = store_factory
        self.vocab_ids = vocab_ids
        self.start_position = start_position
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.tau_evaluator = tau_evaluator  # rank 0's τ evaluator actor (eval.every), else None
        self.report = {
            "rank": rank,
            "sp_rank": self.sp_rank,
            **rank_coordinates(cfg, rank),
            "node_ip": self.node_ip,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "data_wait_s": 0.0,
            "step_s": 0.0,
            "peak_mem_bytes": [],
        }

    def sees_cuda(self) -> bool:
        """Whether this actor sees a CUDA device (the driver decides one device kind for all ranks)."""
        return torch.cuda.is_available()

    def mark_output(self, token: str) -> dict:
        """This run's marker in the directory the driver reads back (``pipeline/shared_output.py``)."""
        return write_marker(self.cfg, token, self.rank, self.node_ip)

    def rendezvous_address(self) -> str:
        """Rank 0: ``tcp://<this node's IP>:<a free port there>`` for every rank's process group."""
        with socket.socket() as s:
            s.bind((self.node_ip, 0))
            port = s.getsockname()[1]
        return f"tcp://{self.node_ip}:{port}"

    def setup(self, init_method: str, decided: Config) -> None:
        """``decided``: the config with the driver's device, precision and backend (``pipeline/decisions.py``)."""
        from longdraft.attention.factory import make_attention_backend
        from longdraft.parallel.mesh import USPMesh, process_group_backend

        self.cfg = decided
        t = self.cfg.training
        self.device = resolve_device(t.device)  # decided by the driver (pipeline/decisions.py)
        self.report["rendezvous"] = init_method
        dist.init_process_group(
            process_group_backend(self.device.type),
            init_method=init_method,
            rank=self.rank,
            world_size=self.world_size,
            timeout=timedelta(seconds=self.cfg.cluster.collective_timeout_s),
        )
        spec = target_spec(self.cfg)
        heads, kv_heads = spec.num_heads, spec.num_kv_heads
        self.mesh = USPMesh.build(t.sp_ulysses_size, t.sp_ring_size, heads, kv_heads)
        vocab = VocabMapping.from_draft_to_target(self.vocab_ids, spec.head_rows())
        self.parts = build_train_parts(self.cfg, vocab, self.device)
        self.report["ring_mode"] = ring_mode = agreed_ring_mode(t, spec, t.precision, self.device)
        self.meter = StepMeter.for_device(self.device)
        self.backend = make_attention_backend(
            self.cfg.attention_backend,
            mesh=self.mesh,
            num_heads=heads,
            num_kv_heads=kv_heads,
            order=t.shard_order,
            ring_mode=ring_mode,
            meter=self.meter,
            window=self.cfg.model.draft_window,
        )
        self.reducer = SumReducer(dist.group.WORLD, self.device)
        self.store = self.store_factory()
        self.source = ShardSource(
            self.cfg,
            self.rank,
            self.sp_rank,
            self.queue,
            self.controller,
            self.store,
            self.device,
            self.start_position,
        )

    def train(self) -> dict:
        role = RankContext(
            self.source,
            self.backend,
            self.reducer,
            self.device,
            self.meter,
            self.mesh,
            progress_bar=False,
            on_step=lambda step: self.controller.heartbeat.remote(self.rank, step),
            tau=self._tau(),
        )
        result: LoopResult = train_loop(self.cfg, self.parts, role, self.checkpoint)
        self.report["step_s"], self.report["data_wait_s"] = result.step_s, result.data_wait_s
        self.report["time_s_per_step"] = result.rank_time_s
        self.report["peak_mem_bytes"] = result.rank_peak_mem_bytes
        self.report["store"] = self.store.stats()
        self.report.update(self.source.counters())
        ranks_dir = Path(self.cfg.output.dir) / "ranks"
        ranks_dir.mkdir(parents=True, exist_ok=True)
        (ranks_dir / f"rank{self.rank}.json").write_text(json.dumps(self.report, indent=2) + "\n")
        return {"rank": self.rank, "report": self.report, "loop": result if self.rank == 0 else None}

    def _tau(self):
        if self.tau_evaluator is None:
            return None
        from longdraft.pipeline.tau_evaluator import ActorTau

        c = self.cfg.cluster  # the last step's wait: bounded by the run's own limit (else 10 minutes)
        return ActorTau(self.tau_evaluator, c.run_timeout_s or 600.0)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        self.store.close()
