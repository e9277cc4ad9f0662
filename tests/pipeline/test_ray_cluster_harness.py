"""The two-node Ray harness: GPU actors in STRICT_PACK placement groups land on both nodes."""

import json
import subprocess
import sys

import pytest

from tests.ray_cluster import ClusterInfo, live_session_procs, ray_env, two_node_cluster

# Runs as its own driver: the pytest process may already hold a local ray.init session.
PLACE_ACTORS = r"""
import json, sys
import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)

@ray.remote(num_gpus=1, num_cpus=0.5)
class Probe:
    def where(self):
        return ray.util.get_node_ip_address(), [str(g) for g in ray.get_gpu_ids()]

# Each node has 2 GPUs, so each 2-GPU STRICT_PACK group fills one node and the two groups
# are forced onto different nodes.
pgs = [placement_group([{"GPU": 1, "CPU": 0.5}] * 2, strategy="STRICT_PACK") for _ in range(2)]
ray.get([pg.ready() for pg in pgs], timeout=60)
actors = [(g, b, Probe.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
              placement_group=pg, placement_group_bundle_index=b)).remote())
          for g, pg in enumerate(pgs) for b in range(2)]
out = [{"pg": g, "bundle": b, "where": ray.get(a.where.remote(), timeout=60)} for g, b, a in actors]
print("RESULT " + json.dumps(out))
"""


def place_actors(info: ClusterInfo) -> list[dict]:
    r = subprocess.run([sys.executable, "-c", PLACE_ACTORS, info.address], env=ray_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"driver failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.timeout(180)
def test_two_node_cluster_places_gpu_actors_on_both_nodes():
    with two_node_cluster(num_cpus=4, num_gpus=2) as info:
        assert info.address.startswith("127.0.0.1:")
        assert info.node_ips == ["127.0.0.1", "127.0.0.2"]
        assert live_session_procs(info)  # sanity: the liveness probe sees the running cluster
        placed = place_actors(info)

    assert not live_session_procs(info), "Ray processes of the started sessions survived"

    assert len(placed) == 4
    pairs = [(p["where"][0], gpu) for p in placed for gpu in p["where"][1]]
    assert all(len(p["where"][1]) == 1 for p in placed), placed  # one GPU per actor
    assert len(set(pairs)) == 4, placed  # no (node, GPU) handed out twice
    assert {ip for ip, _ in pairs} == {"127.0.0.1", "127.0.0.2"}, placed
    for g in (0, 1):
        assert len({p["where"][0] for p in placed if p["pg"] == g}) == 1, placed  # STRICT_PACK
