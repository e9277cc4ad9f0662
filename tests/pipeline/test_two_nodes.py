"""A real two-node Ray cluster on this machine (127.0.0.1 and 127.0.0.2, 2 GPUs declared on each):
the CLI joins it through RAY_ADDRESS, every trainer rank gets a (node, GPU) of its own, every
Ulysses group sits on one node, ranks meet at rank 0's node IP, and the losses equal one device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from longdraft.config import config_from_dict
from longdraft.run import run_training
from longdraft.testing.tiny_target import build_tiny_target, write_tiny_jsonl
from longdraft.train.metrics_log import read_metrics
from tests.ray_cluster import live_session_procs, ray_env, two_node_cluster

STEPS = 3


def _config(root: Path, out: Path, dp: int, u: int, r: int) -> dict:
    return {
        "data": {"train_path": str(root / "train.jsonl")},
        "model": {"target_path": str(root / "target"), "draft_vocab_size": 200},
        "training": {
            "max_seq_length": 40,
            "ttt_length": 3,
            "batch_size": 4,
            "num_steps": STEPS,
            "lr": 3e-3,
            "num_trainers": dp * u * r,
            "sp_ulysses_size": u,
            "sp_ring_size": r,
        },
        "inference": {"batch_size": 4},
        "cluster": {"socket_ifname": "lo", "cpus_per_actor": 0.5, "run_timeout_s": 240},
        "output": {"dir": str(out), "plot": False},
    }


@pytest.mark.timeout(420)
def test_two_node_placement_and_exactness(tmp_path):
    build_tiny_target(tmp_path / "target", initializer_range=0.3, seed=2)
    write_tiny_jsonl(tmp_path / "train.jsonl", num_conversations=12, num_texts=4, seed=3)
    local = config_from_dict(_config(tmp_path, tmp_path / "local", 1, 1, 1))
    run_training(local)
    expected = read_metrics(tmp_path / "local")
    with two_node_cluster(num_cpus=4, num_gpus=2) as cluster:
        for dp, u, r in [(1, 2, 2), (2, 2, 1)]:
            out = tmp_path / f"two_nodes_{dp}{u}{r}"
            path = tmp_path / f"{out.name}.yaml"
            path.write_text(yaml.safe_dump(_config(tmp_path, out, dp, u, r)))
            env = {**ray_env(), "RAY_ADDRESS": cluster.address}
            done = subprocess.run(
                [sys.executable, "-m", "longdraft.cli", "train", str(path)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                cwd=os.getcwd(),
            )
            assert done.returncode == 0, done.stderr[-4000:]
            ranks = [json.loads((out / "ranks" / f"rank{n}.json").read_text()) for n in range(4)]
            places = [(rk["node_ip"], tuple(rk["gpu_ids"])) for rk in ranks]
            print((dp, u, r), [(rk["rank"], rk["dp"], rk["ring"], rk["ulysses"], *p) for rk, p in zip(ranks, places)])
            assert len(set(places)) == 4 and all(len(g) == 1 for _, g in places)  # a GPU of its own
            assert {ip for ip, _ in places} == {"127.0.0.1", "127.0.0.2"}
            for first in range(0, 4, u):  # Ulysses groups are contiguous ranks
                assert len({ranks[n]["node_ip"] for n in range(first, first + u)}) == 1
            assert all(rk["rendezvous"].startswith(f"tcp://{ranks[0]['node_ip']}:") for rk in ranks)
            got = read_metrics(out)
            assert [m["step"] for m in got] == list(range(1, STEPS + 1))
            for g, e in zip(got, expected):
                assert abs(g["loss"] - e["loss"]) <= 1e-5 * max(1.0, abs(e["loss"])), (g["step"], g["loss"], e["loss"])
                assert g["count_k"] == e["count_k"]
    assert not live_session_procs(cluster)
