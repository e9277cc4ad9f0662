"""Run inside a subprocess connected to the two-node cluster (``python -m tests.pipeline.store_locality_checks
ADDRESS ROOT``): real producers, one pinned to each node, the run's store service and a real controller.
Prints one JSON object of what Ray itself reports; `test_store_locality.py` asserts on it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ray
from ray.util.queue import Empty, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from longdraft.config import config_from_dict
from longdraft.pipeline.actors import controller_actor, producer_actor, shard_owners_actor
from longdraft.pipeline.inflight import InflightBudget, node_store_budgets, nodes_of
from longdraft.pipeline.prompt_feed import FeedSpec
from longdraft.pipeline.records import EndOfRun, PromptItem
from longdraft.pipeline.sizes import sample_sizes
from longdraft.pipeline.stores import StoreService
from longdraft.store.ray_store import RayTensorStore

LENGTH = 64  # every training row is longer: truncated to this, so every sample has the same bytes
HEAD_SAMPLES, WORKER_SAMPLES = 2, 5  # the per-node budgets of the budget check, in samples


@ray.remote(num_cpus=0)
class Reader:
    def read(self, handle, r: int) -> list[int]:
        return list(RayTensorStore().get_shard(handle, r)["aux_hidden"].shape)


def _config(root: Path):
    return config_from_dict(
        {
            "data": {"train_path": str(root / "train.jsonl")},
            "model": {"target_path": str(root / "target"), "draft_vocab_size": 200},
            "training": {
                "max_seq_length": LENGTH,
                "ttt_length": 3,
                "batch_size": 2,
                "num_steps": 8,
                "num_trainers": 2,
                "sp_ulysses_size": 2,
                "device": "cpu",
            },
            "inference": {"batch_size": 1},
            "output": {"dir": str(root / "out"), "plot": False},
        }
    )


def _locations(refs) -> list[list[str]]:
    found = ray.experimental.get_object_locations(refs)
    return [sorted(found[ref]["node_ids"]) for ref in refs]


def _wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)
    return value


def main(address: str, root: Path) -> dict:
    ray.init(address=address, configure_logging=False, log_to_driver=False)
    by_ip = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    head, worker = by_ip["127.0.0.1"], by_ip["127.0.0.2"]
    cfg, out = _config(root), {"head": head, "worker": worker}
    out["node_budgets"] = node_store_budgets()
    out["object_store"] = {n["NodeID"]: n["Resources"]["object_store_memory"] for n in ray.nodes() if n["Alive"]}
    owners = shard_owners_actor().remote()
    service = StoreService(cfg, owners, sample_sizes(cfg))
    producers = [
        producer_actor(
            {"num_cpus": 0.5, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
        ).remote(i, cfg, service.producer_factory(), "loc")
        for i, node in enumerate([head, worker])
    ]
    out["producer_nodes"] = nodes_of(producers)

    # 1. Where the shards are: on the producer's node, owned by that node's owner.
    items = [PromptItem(1000 + i, f"loc:{i}", list(range(5, 45)), [0, 40]) for i in range(2)]
    metas = [ray.get(p.produce.remote([item]))[0] for p, item in zip(producers, items)]
    out["handle_nodes"] = [m.handle.node for m in metas]
    out["shard_locations"] = [_locations(m.handle.refs) for m in metas]
    node_owners = ray.get(owners.owners.remote())
    out["owner_nodes"] = dict(zip(node_owners, nodes_of(list(node_owners.values()))))

    # 2. The per-node budget: nothing is trained (this process plays the trainers), so the head's
    # producer stops at its budget while the worker's goes on to its own.
    sizes = sample_sizes(cfg)
    one = sizes.sample_bytes(LENGTH)
    budget = InflightBudget(per_node={head: HEAD_SAMPLES * one, worker: WORKER_SAMPLES * one}, floor=2)
    queues = [[Queue(maxsize=100, actor_options={"num_cpus": 0}) for _ in range(2)]]
    controller = controller_actor().remote(
        FeedSpec(cfg, 0, 0), producers, queues, 2, pool_size=16, producer_batch=1, budget=budget, sizes=sizes
    )
    running = controller.run.remote()
    full = (HEAD_SAMPLES + WORKER_SAMPLES) * one
    summary = _wait(
        lambda: (
            (s := ray.get(controller.summary.remote()))["budget_waits"] > 5
            and sum(v["held"] for v in s["inflight_by_node"].values()) == full
            and s
        ),
        90,
        "the controller never filled both nodes' budgets",
    )
    out["held_when_full"] = {node: v["held"] // one for node, v in summary["inflight_by_node"].items()}
    out["issued_when_full"] = summary["produced"]
    time.sleep(1.0)  # nothing more is issued while nothing is trained
    out["issued_after_wait"] = ray.get(controller.summary.remote())["produced"]
    seen, trained_nodes = 0, []
    while True:
        meta = queues[0][0].get(timeout=60)
        for r in (1,):  # the other SP rank's copy: drop it too
            queues[0][r].get(timeout=60)
        if isinstance(meta, EndOfRun):
            break
        trained_nodes.append(meta.handle.node)
        ray.get(controller.mark.remote([meta.seq], "trained"))
        seen += 1
    ray.get(running)
    final = ray.get(controller.summary.remote())  # after the last mark (run() returned before it)
    out["trained"], out["lost"] = final["trained"], final["lost"]
    out["peak_by_node"] = {node: v["peak"] / one for node, v in final["inflight_by_node"].items()}
    out["trained_by_node"] = {node: trained_nodes.count(node) for node in (head, worker)}
    with_queue_empty = True
    try:
        queues[0][1].get_nowait()
        with_queue_empty = False
    except Empty:
        pass
    out["queues_empty"] = with_queue_empty

    # 3. The worker's producer dies: its shards stay on its node, and a trainer on the head reads them.
    ray.kill(producers[1], no_restart=True)
    _wait(lambda: _dead(producers[1]), 30, "the killed producer still answers")
    out["after_kill_locations"] = _locations(metas[1].handle.refs)
    reader = Reader.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
    out["read_after_kill"] = [ray.get(reader.read.remote(metas[1].handle.for_rank(r), r)) for r in range(2)]
    out["aux_shape"] = list(metas[1].shapes["aux_hidden"])
    return out


def _dead(actor) -> bool:
    try:
        ray.get(actor.report.remote(), timeout=5)
    except ray.exceptions.RayActorError:
        return True
    except ray.exceptions.GetTimeoutError:
        return False
    return False


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], Path(sys.argv[2]))))
