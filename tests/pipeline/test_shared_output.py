"""Joining a user's cluster safely: two Ray nodes (127.0.0.1 and 127.0.0.2) whose ``output.dir``
differ, because the worker node runs in a mount namespace of its own with a tmpfs over that path.

Rank 0 writes checkpoints and ``final/`` on its own node while the driver resumes and evaluates on its
node, so such a run must be refused at start-up, naming the node it cannot see; with
``output.checkpoint_dir`` on storage both nodes share, the same cluster trains. Joining the cluster
leaves its authentication alone (``RAY_AUTH_MODE`` is only turned off for a private local Ray)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from longdraft.testing.tiny_target import build_tiny_target, write_tiny_jsonl
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster_safety")
    build_tiny_target(root / "target", seed=2)
    write_tiny_jsonl(root / "train.jsonl", num_conversations=6, num_texts=2, seed=3)
    with two_node_cluster(num_cpus=4, num_gpus=1, worker_prefix=private_dir_prefix(root / "out")) as info:
        yield info, root
    assert not live_session_procs(info)


@pytest.mark.timeout(330)
def test_output_dir_not_shared_is_refused_and_checkpoint_dir_trains(cluster):
    cluster, root = cluster
    out = root / "out"  # a tmpfs of its own on the worker node
    refused = root / "refused.yaml"
    refused.write_text(yaml.safe_dump(_config(root, out)))
    done = _train(cluster, refused)
    print(done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode != 0
    assert last.startswith("longdraft: error: output.dir = ") and "must be shared storage" in last, last
    assert "node 127.0.0.2 (trainer rank" in last and "node 127.0.0.1 (trainer" not in last, last
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()  # refused before training

    shared = root / "shared"
    good = root / "good.yaml"
    good.write_text(yaml.safe_dump(_config(root, out, checkpoint_dir=shared)))
    done = _train(cluster, good)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (shared / "final" / "model.safetensors").is_file()
    assert (shared / "checkpoints" / "step_2").is_dir() and (shared / "metrics.jsonl").is_file()
    assert not (shared / ".shared_check").exists()  # the markers are removed once seen


JOIN = """
import json, os, sys
import ray
from longdraft.config import config_from_dict
from longdraft.pipeline.ray_runtime import start_ray
cfg = config_from_dict({"data": {"train_path": "t"}, "model": {"target_path": "m"}, "output": {"dir": "o"},
                        "cluster": {"address": sys.argv[1]}})
started = start_ray(cfg)
print(json.dumps({"started": started, "auth": os.environ.get("RAY_AUTH_MODE"), "nodes": len(ray.nodes())}))
ray.shutdown()
"""


@pytest.mark.timeout(120)
def test_joining_a_cluster_keeps_its_authentication(cluster):
    cluster, _ = cluster
    env = {k: v for k, v in ray_env().items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    done = subprocess.run(
        [sys.executable, "-c", JOIN, cluster.address], env=env, capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr[-3000:]
    joined = json.loads(done.stdout.strip().splitlines()[-1])
    assert joined == {"started": True, "auth": None, "nodes": 2}  # joined, and authentication not turned off
