"""Outputs without a shared filesystem: two Ray nodes (127.0.0.1 and 127.0.0.2) whose ``output.dir``
differ, because the worker node runs in a mount namespace of its own with a tmpfs over that path.

Rank 0 writes checkpoints and ``final/`` on its own node while the driver resumes and evaluates on its
node, so such a run must be refused at start-up, naming the node it cannot see; with
``output.checkpoint_dir`` on storage both nodes share, the same cluster trains."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from longdraft.engines.tiny import build_tiny_target, write_tiny_jsonl
from tests.ray_cluster import live_session_procs, private_dir_prefix, ray_env, two_node_cluster


def _config(root: Path, out: Path, checkpoint_dir: Path | None = None) -> dict:
    return {
        "data": {"train_path": str(root / "train.jsonl")},
        "model": {"target_path": str(root / "target"), "draft_vocab_size": 200},
        # DP 2: with one GPU per node and producers sharing one, each node holds one trainer rank.
        "training": {"max_seq_length": 32, "ttt_length": 2, "batch_size": 2, "num_steps": 2, "num_trainers": 2},
        "inference": {"batch_size": 2},
        "cluster": {"socket_ifname": "lo", "cpus_per_actor": 0.5, "run_timeout_s": 150},
        "output": {"dir": str(out), "plot": False, "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None},
    }


def _train(cluster, path: Path) -> subprocess.CompletedProcess:
    env = {**ray_env(), "RAY_ADDRESS": cluster.address}
    return subprocess.run(
        [sys.executable, "-m", "longdraft.cli", "train", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        cwd=os.getcwd(),
    )


@pytest.mark.timeout(330)
def test_output_dir_not_shared_is_refused_and_checkpoint_dir_trains(tmp_path):
    build_tiny_target(tmp_path / "target", seed=2)
    write_tiny_jsonl(tmp_path / "train.jsonl", num_conversations=6, num_texts=2, seed=3)
    out = tmp_path / "out"
    with two_node_cluster(num_cpus=4, num_gpus=1, worker_prefix=private_dir_prefix(out)) as cluster:
        refused = tmp_path / "refused.yaml"
        refused.write_text(yaml.safe_dump(_config(tmp_path, out)))
        done = _train(cluster, refused)
        print(done.stderr[-2000:])
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode != 0
        assert last.startswith("longdraft: error: output.dir = ") and "must be shared storage" in last, last
        assert "node 127.0.0.2 (trainer rank" in last and "node 127.0.0.1 (trainer" not in last, last
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()  # refused before training

        shared = tmp_path / "shared"
        good = tmp_path / "good.yaml"
        good.write_text(yaml.safe_dump(_config(tmp_path, out, checkpoint_dir=shared)))
        done = _train(cluster, good)
        assert done.returncode == 0, done.stderr[-4000:]
        assert (shared / "final" / "model.safetensors").is_file()
        assert (shared / "checkpoints" / "step_2").is_dir() and (shared / "metrics.jsonl").is_file()
        assert not (shared / ".shared_check").exists()  # the markers are removed once seen
    assert not live_session_procs(cluster)
