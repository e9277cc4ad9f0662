"""Collectives live in ``parallel/`` (and the attention kernels' own exchanges in ``attention/``, the
benchmarks' in ``bench/``): every other module reduces through ``parallel/``'s helpers, which put the
tensors on the device the group's backend takes (ARCHITECTURE.md, "Rank grid and reductions").

The scan reads every module of ``longdraft/`` with ``ast`` and names each file and line that calls
(or hands on, as ``P2POp(dist.isend, ...)`` does) a ``torch.distributed`` collective.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "longdraft"
ALLOWED = ("parallel", "attention", "bench")
COLLECTIVES = {
    "all_reduce",
    "all_reduce_coalesced",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_gather_coalesced",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
    "broadcast_object_list",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "gather_object",
    "scatter",
    "scatter_object_list",
    "send",
    "recv",
    "isend",
    "irecv",
    "batch_isend_irecv",
    "barrier",
    "monitored_barrier",
}

pytestmark = pytest.mark.unit


def collective_uses(source: str) -> list[tuple[int, str]]:
    """(line, name) of every use of a ``torch.distributed`` collective in ``source``."""
    tree = ast.parse(source)
    modules, direct = {"torch.distributed"}, {}  # names bound to torch.distributed; name -> collective
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch.distributed" and alias.asname:
                    modules.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if node.module == "torch" and alias.name == "distributed":
                    modules.add(alias.asname or alias.name)
                elif node.module.startswith("torch.distributed") and alias.name in COLLECTIVES:
                    direct[alias.asname or alias.name] = alias.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES and ast.unparse(node.value) in modules:
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Name) and node.id in direct and isinstance(node.ctx, ast.Load):
            found.append((node.lineno, direct[node.id]))
    return sorted(found)


def test_the_scan_sees_every_spelling():
    source = (
        "import torch\nimport torch.distributed as dist\nfrom torch import distributed as d2\n"
        "from torch.distributed import all_gather as ag\n"
        "dist.all_reduce(t)\ntorch.distributed.barrier()\nd2.broadcast(t, 0)\nag(parts, t)\n"
        "ops = [dist.P2POp(dist.isend, t, peer=1)]\nx = dist.get_rank()\n"
    )
    assert collective_uses(source) == [
        (5, "all_reduce"),
        (6, "barrier"),
        (7, "broadcast"),
        (8, "all_gather"),
        (9, "isend"),
    ]


def test_only_parallel_attention_and_bench_call_collectives():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ALLOWED:
            continue
        for line, name in collective_uses(path.read_text()):
            offenders.append(f"longdraft/{relative}:{line}: torch.distributed.{name}")
    assert not offenders, "collectives outside parallel/, attention/, bench/ (use parallel/'s helpers):\n" + "\n".join(
        offenders
    )
