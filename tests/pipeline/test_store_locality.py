"""On two real Ray nodes (127.0.0.1 and 127.0.0.2): Ray-store shards stay in the object store of the
node whose producer wrote them until a trainer reads them (Ray's own object-location API says
where), each such node has an owner of its own that outlives a killed producer, and the in-flight
budget is per node: a full node holds its producer back while the other node's still issues."""

import json
import os
import subprocess
import sys

import pytest

from longdraft.testing.tiny_target import build_tiny_target, write_tiny_jsonl
from tests.ray_cluster import ray_env, two_node_cluster

OBJECT_STORE = 100_000_000


@pytest.mark.timeout(240)
def test_shards_stay_on_their_producers_node_and_the_budget_is_per_node(tmp_path):
    build_tiny_target(tmp_path / "target", initializer_range=0.3, seed=2)
    write_tiny_jsonl(tmp_path / "train.jsonl", [{"text": "the sea is wide and the wind is free " * 12}] * 20)
    with two_node_cluster(num_cpus=2, object_store_bytes=OBJECT_STORE) as cluster:
        done = subprocess.run(
            [sys.executable, "-m", "tests.pipeline.store_locality_checks", cluster.address, str(tmp_path)],
            env={**ray_env(), "PYTHONPATH": os.getcwd(), "TOKENIZERS_PARALLELISM": "false"},
            capture_output=True,
            text=True,
            timeout=200,
            cwd=os.getcwd(),
        )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    print({k: v for k, v in out.items() if k not in ("node_budgets", "object_store")})
    head, worker = out["head"], out["worker"]

    # The budget of each node is half of its own object store.
    assert out["node_budgets"] == {n: int(b * 0.5) for n, b in out["object_store"].items()}
    assert set(out["node_budgets"]) == {head, worker}

    # Every shard sits only on its producer's node (the old single owner put them all on its own).
    assert out["producer_nodes"] == [head, worker]
    assert out["handle_nodes"] == [head, worker]
    for node, shards in zip([head, worker], out["shard_locations"]):
        assert shards == [[node], [node]], (node, shards)
    assert out["owner_nodes"] == {head: head, worker: worker}  # one owner per producer node, on it

    # Per-node budget: the head's producer held back at 2 samples while the worker's went on to 5.
    assert out["held_when_full"] == {head: 2, worker: 5}
    assert out["issued_when_full"] == out["issued_after_wait"] == 7
    assert out["peak_by_node"][head] <= 2 and out["peak_by_node"][worker] <= 5
    assert out["trained"] == 16 and out["lost"] == 0 and out["queues_empty"]
    assert min(out["trained_by_node"].values()) > 0 and sum(out["trained_by_node"].values()) == 16

    # The worker's producer was killed: its shards are still on its node, and read from the head.
    assert out["after_kill_locations"] == [[worker], [worker]]
    assert all(shape[1] == out["aux_shape"][1] for shape in out["read_after_kill"])
