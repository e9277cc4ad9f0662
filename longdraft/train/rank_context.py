"""Who this process is in a run: what it reads, how it attends and reduces, whether it writes.

One device is the rank-0-of-1 case (no mesh, a reducer without a group); a pipeline trainer rank
fills in its shard source, USP backend, mesh and world reducer. The loop reads nothing else about
its place in the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from longdraft.attention.factory import AttentionBackend
from longdraft.parallel.mesh import USPMesh
from longdraft.parallel.reduction import SumReducer
from longdraft.step_meter import StepMeter
from longdraft.train.batch_source import BatchSource
from longdraft.train.tau_during_training import TauDuringTraining


@dataclass
class RankContext:
    source: BatchSource
    backend: AttentionBackend
    reducer: SumReducer
    device: torch.device
    meter: StepMeter
    mesh: USPMesh | None = None  # None: the whole sequence on this rank (S = 1)
    progress_bar: bool = True  # the writer's console: a bar (a terminal) or log lines (a rank actor)
    on_step: Callable[[int], None] | None = None  # after every finished step (a pipeline rank's heartbeat)
    tau: TauDuringTraining | None = None  # the writer's real τ by context length (eval.every), else None

    @property
    def rank(self) -> int:
        return self.mesh.rank if self.mesh is not None else 0

    @property
    def sp_size(self) -> int:
        return self.mesh.sp_size if self.mesh is not None else 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes metrics, checkpoints and the export."""
        return self.rank == 0
