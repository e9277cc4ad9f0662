"""Start a private local Ray, or join a cluster: explicit, never by accident.

A cluster is joined only when ``cluster.address`` or ``$RAY_ADDRESS`` names one. Otherwise the run
starts its own Ray on 127.0.0.1 (``address="local"``), so an address file left behind by an earlier
``ray start`` on the machine is never picked up.
"""

from __future__ import annotations

import os

from longdraft.config import Config


def cluster_address(cfg: Config) -> str | None:
    return cfg.cluster.address or os.environ.get("RAY_ADDRESS") or None


def start_ray(cfg: Config) -> bool:
    """Connect this driver to Ray; returns whether it started (and so must shut down) Ray."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cluster_address(cfg)
    if address:
        ray.init(address=address, configure_logging=False)
    else:
        ray.init(
            address="local",
            num_cpus=max(4, os.cpu_count() or 1),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
        )
    return True


def actor_cpus(cfg: Config) -> float:
    if cfg.cluster.cpus_per_actor is not None:
        return cfg.cluster.cpus_per_actor
    return 1.0 if cluster_address(cfg) else 0.5  # a local Ray shares this machine's few cores
