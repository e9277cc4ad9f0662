"""Choose the draft's attention backend by ``training.attention_backend``.

``reference`` and ``fast`` hold the whole sequence on one device (``longdraft.model``); ``usp``
splits it over the SP group of a mesh.
"""

from __future__ import annotations

from longdraft.model.attention_backend import AttentionBackend, local_backend
from longdraft.parallel.mesh import USPMesh
from longdraft.parallel.stats import CommStats
from longdraft.parallel.usp_attention import USPAttentionBackend

BACKENDS = ("reference", "fast", "usp")


def make_attention_backend(
    name: str,
    *,
    num_heads: int,
    num_kv_heads: int,
    mesh: USPMesh | None = None,
    layout: str = "contiguous",
    stats: CommStats | None = None,
) -> AttentionBackend:
    if name in ("reference", "fast"):
        return local_backend(name)
    if name == "usp":
        if mesh is None:
            raise ValueError("training.attention_backend='usp' needs a USPMesh (built after init_process_group)")
        return USPAttentionBackend(mesh, num_heads, num_kv_heads, layout=layout, stats=stats)
    raise ValueError(f"training.attention_backend={name!r} is not one of {BACKENDS}")
