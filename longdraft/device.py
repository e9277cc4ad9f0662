"""The one place a device name becomes a ``torch.device``.

``auto`` is this process's current CUDA device when it sees one, else the CPU; ``cuda`` without an
index is the current CUDA device. A Ray actor sees the GPUs its placement gave it, so the pipeline's
actors resolve ``placed_device`` (``auto`` unless the config says ``cpu``): producers placed without
a GPU run on the CPU, and ``pipeline/placement.py`` refuses ``cuda`` on a cluster without GPUs.
"""

from __future__ import annotations

import torch

from longdraft.errors import UserError


def resolve_device(device: str | torch.device) -> torch.device:
    name = "cuda" if str(device) == "auto" and torch.cuda.is_available() else str(device)
    resolved = torch.device("cpu" if name == "auto" else name)
    if resolved.type == "cuda" and resolved.index is None:
        if not torch.cuda.is_available():
            raise UserError(f"device {str(device)!r}: this process sees no CUDA device (use 'auto' or 'cpu')")
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def placed_device(configured: str) -> torch.device:
    """The device of a pipeline actor: the GPU its placement gave it, unless ``configured`` is ``cpu``."""
    return resolve_device("cpu" if configured == "cpu" else "auto")
