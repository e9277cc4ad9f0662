"""Start a private local Ray, or join a cluster: explicit, never by accident.

A cluster is joined only when ``cluster.address`` or ``$RAY_ADDRESS`` names one. Otherwise the run
starts its own Ray on 127.0.0.1 (``address="local"``), so an address file left behind by an earlier
``ray start`` on the machine is never picked up, and only that private Ray runs without authentication.
"""

from __future__ import annotations

import os

from longdraft.config import Config


def cluster_address(cfg: Config) -> str | None:
    return cfg.cluster.address or os.environ.get("RAY_ADDRESS") or None


def ray_environment(address: str | None) -> dict[str, str]:
    """Defaults for Ray's environment variables (the user's own settings win).

    Token authentication is turned off only for the private Ray that this run starts on 127.0.0.1
    and that nothing else joins; joining a user's cluster keeps whatever authentication it uses."""
    defaults = {"RAY_USAGE_STATS_ENABLED": "0"}
    if not address:
        defaults["RAY_AUTH_MODE"] = "disabled"
    return defaults


def start_ray(cfg: Config) -> bool:
    """Connect this driver to Ray; returns whether it started (and so must shut down) Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(cfg)
    for name, value in ray_environment(address).items():
        os.environ.setdefault(name, value)
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
