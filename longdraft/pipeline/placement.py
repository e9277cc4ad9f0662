"""Where the actors run: one placement-group bundle per trainer rank, Ulysses groups on one node.

On a cluster with GPUs every trainer rank gets a GPU of its own (or ``1 - f`` of one when producers
take a fraction ``f < 0.5`` of the same GPU), so two trainer ranks never share a device. Each SP
group is packed on one node when some node can hold it, else each Ulysses group is (its all-to-alls
need the fast links); ring neighbours may then cross nodes. Producers ask for
``inference.gpus_per_producer`` GPUs and are restarted by Ray if their process dies; a vLLM producer
takes whole GPUs of its own (``tensor_parallel_size`` of them), never a share of a trainer's. The
τ evaluator (``eval.every``) holds an HF target like an HF producer and is counted with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from longdraft.config import Config
from longdraft.errors import UserError
from longdraft.parallel.mesh import grid_coords


class PlacementError(UserError):
    """The cluster cannot hold the trainers as asked; the message gives what was needed and what is there."""


@dataclass
class Placement:
    use_gpu: bool
    trainer_gpu: float  # GPUs per trainer rank (0 without GPUs)
    producer_gpu: float
    cpus: float
    evaluator_gpu: float = 0.0  # GPUs of the τ evaluator (eval.every)
    trainer_options: list[dict] = field(default_factory=list)  # Ray actor options per rank
    groups_ready: list = field(default_factory=list)  # the placement groups (removed at the end)

    def producer_options(self) -> dict:
        options = {"num_cpus": self.cpus, "max_restarts": -1, "max_task_retries": 0}
        if self.use_gpu and self.producer_gpu:
            options["num_gpus"] = self.producer_gpu
        return options

    def evaluator_options(self) -> dict:
        # Not restarted: an evaluator that dies is reported and training goes on without it.
        options = {"num_cpus": self.cpus, "max_restarts": 0}
        if self.evaluator_gpu:
            options["num_gpus"] = self.evaluator_gpu
        return options


def gpu_shares(cfg: Config, cluster_gpus: float) -> tuple[bool, float, float]:
    """(use_gpu, GPUs per trainer, GPUs per producer) for a cluster with ``cluster_gpus`` GPUs."""
    t, inf = cfg.training, cfg.inference
    if cfg.training.device == "cuda" and cluster_gpus < 1:
        raise PlacementError("training.device=cuda, but the Ray cluster has no GPU resources")
    use_gpu = t.device != "cpu" and cluster_gpus >= 1
    if not use_gpu:
        return False, 0.0, 0.0
    f = inf.gpus_per_producer
    if inf.engine == "vllm":
        return True, 1.0, vllm_producer_gpus(cfg, cluster_gpus)
    if f is None:
        whole = t.num_trainers + inf.num_producers + (1 if cfg.eval.every else 0)
        f = 1.0 if cluster_gpus >= whole else 0.25
    return True, (1.0 - f if 0 < f < 1 else 1.0), f


def vllm_share_problem(cfg: Config) -> str | None:
    """Why the configured GPUs per producer cannot hold a vLLM producer, from the config alone.

    vLLM takes ``gpu_memory_utilization`` of each of its GPUs and refuses to start unless that much
    is free, so it never shares a trainer's GPU; with tensor parallelism it needs exactly that many."""
    inf = cfg.inference
    f, tp = inf.gpus_per_producer, inf.tensor_parallel_size
    if f is not None and 0 < f < 1:
        return (
            f"inference.gpus_per_producer = {f}: a vLLM producer cannot share a trainer's GPU (vLLM claims "
            f"inference.gpu_memory_utilization = {inf.gpu_memory_utilization} of it at start-up); expected "
            f"{tp} (inference.tensor_parallel_size), 0 (CPU) or null"
        )
    if f is not None and f >= 1 and f != tp:
        return (
            f"inference.gpus_per_producer = {f} but inference.tensor_parallel_size = {tp}: a vLLM producer "
            f"uses exactly its tensor-parallel GPUs; expected gpus_per_producer = {tp} or null"
        )
    return None


def vllm_producer_gpus(cfg: Config, cluster_gpus: float) -> float:
    """Whole GPUs per vLLM producer (``tensor_parallel_size`` when auto), refused when the cluster
    cannot give every producer GPUs besides the trainers'."""
    problem = vllm_share_problem(cfg)
    if problem:
        raise PlacementError(problem)
    t, inf = cfg.training, cfg.inference
    f = inf.gpus_per_producer if inf.gpus_per_producer is not None else float(inf.tensor_parallel_size)
    if f and cluster_gpus < t.num_trainers + inf.num_producers * f:
        raise PlacementError(
            f"{inf.num_producers} vLLM producers of {f:g} GPUs each need GPUs of their own besides the "
            f"{t.num_trainers} trainers' ({t.num_trainers + inf.num_producers * f:g} in all), but the Ray cluster "
            f"has {cluster_gpus:g}: lower inference.num_producers, or set inference.gpus_per_producer = 0 (CPU)"
        )
    return f


def evaluator_gpus(cfg: Config, cluster_gpus: float, trainer_gpu: float, producer_gpu: float) -> float:
    """GPUs of the τ evaluator (``eval.every``; 0 without it): it loads the target with the HF engine,
    so it takes an HF producer's share, or one whole GPU beside vLLM producers (on the CPU when the
    producers are). Refused at start-up when the trainers and producers leave too little: Ray would
    otherwise hold the actor back until ``cluster.run_timeout_s``."""
    t, inf = cfg.training, cfg.inference
    if not cfg.eval.every or not producer_gpu:
        return 0.0
    share = producer_gpu if inf.engine == "hf" else 1.0
    used = t.num_trainers * trainer_gpu + inf.num_producers * producer_gpu
    if used + share > cluster_gpus + 1e-9:
        raise PlacementError(
            f"eval.every = {cfg.eval.every}: the τ evaluator needs {share:g} GPU besides the {used:g} of "
            f"{t.num_trainers} trainers and {inf.num_producers} producers, but the Ray cluster has "
            f"{cluster_gpus:g}: lower inference.num_producers, or set eval.every = 0 (τ by context length "
            f"is still measured after training)"
        )
    return share


def trainer_groups(cfg: Config, per_node_capacity: int) -> list[list[int]]:
    """SP groups if one fits on a node, else Ulysses groups (contiguous ranks); refused if even a
    Ulysses group does not fit on any node."""
    t = cfg.training
    sp, u = cfg.sp_size, t.sp_ulysses_size
    size = sp if per_node_capacity >= sp else u
    if per_node_capacity < u:
        raise PlacementError(
            f"a Ulysses group of {u} trainer ranks must sit on one node, but the largest node "
            f"holds {per_node_capacity} of them"
        )
    return [list(range(start, start + size)) for start in range(0, t.num_trainers, size)]


def node_capacity(nodes: list[dict], use_gpu: bool, trainer_gpu: float, cpus: float) -> int:
    """Most trainer bundles any single alive node can hold."""
    best = 0
    for node in nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        res = node.get("Resources", {})
        by_cpu = int(res.get("CPU", 0) // cpus) if cpus else 1 << 30
        by_gpu = int(res.get("GPU", 0) // trainer_gpu) if use_gpu else 1 << 30
        best = max(best, min(by_cpu, by_gpu))
    return best


def place(cfg: Config, cpus: float) -> Placement:
    """Reserve the trainers' bundles (one STRICT_PACK placement group per group) and wait for them."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu, trainer_gpu, producer_gpu = gpu_shares(cfg, cluster_gpus)
    evaluator_gpu = evaluator_gpus(cfg, cluster_gpus, trainer_gpu, producer_gpu)  # 0 without GPUs
    groups = trainer_groups(cfg, node_capacity(ray.nodes(), use_gpu, trainer_gpu, cpus))
    bundle = {"CPU": cpus, **({"GPU": trainer_gpu} if use_gpu else {})}
    placement = Placement(use_gpu, trainer_gpu, producer_gpu, cpus, evaluator_gpu)
    options: dict[int, dict] = {}
    for ranks in groups:
        pg = placement_group([dict(bundle) for _ in ranks], strategy="STRICT_PACK")
        placement.groups_ready.append(pg)
        for index, rank in enumerate(ranks):
            options[rank] = {
                "num_cpus": cpus,
                "num_gpus": trainer_gpu if use_gpu else 0,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
            }
    ready, _ = ray.wait(
        [pg.ready() for pg in placement.groups_ready], num_returns=len(groups), timeout=cfg.cluster.placement_timeout_s
    )
    if len(ready) < len(groups):
        release(placement)
        raise PlacementError(
            f"the cluster did not grant {len(groups)} groups of {len(groups[0])} x {bundle} on one "
            f"node each within {cfg.cluster.placement_timeout_s:.0f} s; cluster resources: "
            f"{ray.cluster_resources()}"
        )
    placement.trainer_options = [options[r] for r in range(cfg.training.num_trainers)]
    return placement


def release(placement: Placement) -> None:
    from ray.util.placement_group import remove_placement_group

    for pg in placement.groups_ready:
        remove_placement_group(pg)
    placement.groups_ready.clear()


def rank_coordinates(cfg: Config, rank: int) -> dict:
    c = grid_coords(rank, cfg.training.sp_ulysses_size, cfg.training.sp_ring_size)
    return {"dp": c.dp, "ring": c.ring, "ulysses": c.ulysses}
