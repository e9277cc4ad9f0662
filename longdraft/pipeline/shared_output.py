"""Refuse a pipeline run whose output directory the driver does not share with every trainer node.

Trainer rank 0 writes checkpoints, ``final/`` and ``metrics.jsonl`` on its own node, while the driver
resumes from those checkpoints and evaluates that export on its node. Without a shared directory,
resume would silently start from scratch and the final evaluation would fail after the training.
So before any rank builds its model, every rank writes a marker named by this run's token, and the
driver checks that it sees all of them.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from longdraft.config import Config
from longdraft.errors import UserError

MARKER_DIR = ".shared_check"
SEE_WAIT_S = 5.0  # a network filesystem may show a file written on another node a little later


class OutputNotShared(UserError):
    """The driver cannot see what the trainer ranks write into the run's shared directory."""


def shared_key(cfg: Config) -> str:
    return "output.checkpoint_dir" if cfg.output.checkpoint_dir else "output.dir"


def shared_root(cfg: Config) -> Path:
    """Where rank 0 writes what the driver reads back (checkpoints, ``final/``, metrics)."""
    return Path(cfg.output.shared_dir)


def _marker(cfg: Config, token: str, rank: int) -> Path:
    # One name per run and rank, looked up by name: a network filesystem's directory listing may
    # be cached, a lookup of a name never seen before is not.
    return shared_root(cfg) / MARKER_DIR / f"{token}.rank{rank}.json"


def write_marker(cfg: Config, token: str, rank: int, node_ip: str) -> dict:
    """On a trainer rank: leave this run's marker; returns what the driver needs to name this rank."""
    mark = {"rank": rank, "node_ip": node_ip, "error": None}
    path = _marker(cfg, token, rank)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"token": token, "rank": rank, "node_ip": node_ip}) + "\n")
    except OSError as exc:
        mark["error"] = f"{type(exc).__name__}: {exc}"
    return mark


def unseen_marks(cfg: Config, token: str, marks: list[dict], wait_s: float = SEE_WAIT_S) -> list[dict]:
    """The ranks' marks whose marker this process cannot see (after waiting up to ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while True:
        unseen = [m for m in marks if m["error"] or not _seen(cfg, token, m["rank"])]
        if not unseen or time.monotonic() > deadline:
            return unseen
        time.sleep(0.2)


def _seen(cfg: Config, token: str, rank: int) -> bool:
    try:
        return json.loads(_marker(cfg, token, rank).read_text())["token"] == token
    except (OSError, ValueError, KeyError):
        return False


def refusal(cfg: Config, unseen: list[dict], driver_ip: str) -> str:
    """The one line that refuses the run, naming the nodes whose markers the driver cannot see."""
    key = shared_key(cfg)
    nodes: dict[str, list[int]] = {}
    for m in unseen:
        nodes.setdefault(m["node_ip"], []).append(m["rank"])
    where = ", ".join(
        f"node {ip} (trainer rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))})"
        for ip, ranks in nodes.items()
    )
    errors = "; ".join(f"rank {m['rank']}: {m['error']}" for m in unseen if m["error"])
    advice = (
        "it must be storage that every node and the driver share"
        if key == "output.checkpoint_dir"
        else "output.dir must be shared storage (or set output.checkpoint_dir to a directory that is)"
    )
    return (
        f"{key} = {shared_root(cfg)} is not shared with the driver (node {driver_ip}): it cannot see the "
        f"markers written there by {where}{f' ({errors})' if errors else ''}; {advice}"
    )


def _remove_markers(cfg: Config, token: str, marks: list[dict]) -> None:
    for m in marks:
        _marker(cfg, token, m["rank"]).unlink(missing_ok=True)
    # Left when not empty: another run's markers, or a stale one of a refused run on this node.
    with contextlib.suppress(OSError):
        (shared_root(cfg) / MARKER_DIR).rmdir()


def check_shared_output(cfg: Config, trainers: list, token: str, wait) -> None:
    """On the driver: every trainer rank actor writes its marker (``mark_output``), the driver must
    see them all. ``wait({future: name})`` waits for the actors (and names one that fails)."""
    import ray

    (shared_root(cfg) / MARKER_DIR).mkdir(parents=True, exist_ok=True)
    marks = list(
        wait(
            {t.mark_output.remote(token): f"trainer rank {r} (output marker)" for r, t in enumerate(trainers)}
        ).values()
    )
    unseen = unseen_marks(cfg, token, marks)
    _remove_markers(cfg, token, marks)
    if unseen:
        raise OutputNotShared(refusal(cfg, unseen, ray.util.get_node_ip_address()))
