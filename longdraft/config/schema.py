"""The typed sections of a run's configuration, with their defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from longdraft.attention.choice import choose_attention_backend
from longdraft.choices import AttentionBackendName, RingMode, ShardOrder
from longdraft.errors import UserError


class ConfigError(UserError, ValueError):
    """Invalid configuration: message names the key, the value and what was expected."""


def _path(default: Any = None, *, required: bool = False) -> Any:
    return field(default=default, metadata={"path": True, "required": required})


@dataclass
class DataConfig:
    train_path: str = _path(required=True)
    eval_path: str | None = _path()
    on_bad_row: Literal["error", "skip"] = "error"
    max_rows: int | None = None  # read only the first N rows of train_path
    shuffle_window: int = 4096  # rows shuffled together; the file streams one window at a time
    vocab_rows: int = 10_000  # training samples counted to choose the draft vocab


@dataclass
class ModelConfig:
    target_path: str = _path(required=True)
    draft_vocab_size: int | None = None  # None: the target vocab (identity mapping)
    aux_layers: list[int] | None = None  # None: [1, N/2-1, N-4]
    target_dtype: Literal["auto", "fp32", "bf16"] = "auto"


@dataclass
class TrainingConfig:
    max_seq_length: int = 2048
    ttt_length: int = 7
    batch_size: int = 8  # global batch of one optimizer step
    micro_batch_size: int = 1  # accumulation = batch_size / (micro_batch_size * dp)
    num_steps: int = 100
    lr: float = 1e-4
    warmup_steps: int = 0
    min_lr: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 0.5  # 0 disables clipping
    # Gradients are summed over ranks in buckets of this size, each started as soon as the backward
    # has finished it (overlapped); 0: one all-reduce after the backward.
    grad_bucket_mb: float = 25.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    resume: bool = False
    eval_every: int = 0
    log_every: int = 1
    attention_backend: AttentionBackendName = "auto"  # auto: usp when sp > 1
    num_trainers: int = 1
    sp_ulysses_size: int = 1
    sp_ring_size: int = 1
    shard_order: ShardOrder = "contiguous"  # was ring_layout (still read, with a warning, until 0.2)
    # gather: step-0 K/V exchanged once per layer for all TTT steps; ring: rotated every step;
    # auto: gather when the gathered K/V fit a memory estimate (attention/choice.py)
    ring_mode: RingMode = "auto"
    loss_chunk_size: int = 1024
    activation_checkpointing: bool = False
    min_loss_tokens: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = False


@dataclass
class InferenceConfig:
    engine: Literal["hf", "vllm"] = "hf"  # which engine prefills the target (engines/factory.py)
    num_producers: int = 1
    batch_size: int = 4
    # vLLM only. Tokens per engine step (chunked prefill); None: vLLM's default.
    max_num_batched_tokens: int | None = None
    # vLLM only. KV cache (and captured hidden states) in MiB; None: room for two batches of
    # training.max_seq_length tokens.
    kv_cache_mb: int | None = None
    # GPUs per producer on a GPU cluster. None: 1 when the cluster has a GPU for every trainer and
    # producer, else 0.25 (a producer shares a trainer's GPU). A fraction must stay below 0.5, so two
    # trainer ranks (1 - fraction each) can never share a GPU. 0: producers on CPU.
    gpus_per_producer: float | None = None


@dataclass
class ClusterConfig:
    address: str | None = None  # Ray cluster to join; None: $RAY_ADDRESS, else a private local Ray
    socket_ifname: str | None = None  # network interface of gloo/NCCL (GLOO_/NCCL_SOCKET_IFNAME)
    cpus_per_actor: float | None = None  # None: 1 on a cluster, 0.5 in a local Ray
    collective_timeout_s: float = 1800.0  # one collective (all-to-all, ring, all-reduce) at most
    data_timeout_s: float = 1800.0  # a trainer rank waits at most this long for its next shard
    stall_timeout_s: float = 1800.0  # a rank without a finished step for this long is reported by name
    run_timeout_s: float = 0.0  # whole run; 0: no limit
    placement_timeout_s: float = 300.0  # waiting for the cluster to grant the trainers' bundles


@dataclass
class MooncakeConfig:
    master_address: str | None = None  # None: start a local master
    metadata_server: str = "P2PHANDSHAKE"
    protocol: Literal["tcp", "rdma"] = "tcp"
    global_segment_size_mb: int | None = None  # per producer; None: room for 2 global batches of the longest samples
    local_buffer_size_mb: int | None = None  # per client; None: the largest shard (from max_seq_length)
    put_timeout_s: float = 600.0  # a put into a full pool waits this long for readers to drain it
    # Whose memory the pool lives in: trainers (shards outlive a producer that dies) or producers.
    segments_on: Literal["trainers", "producers"] = "trainers"
    device_name: str = ""
    # Where a master longdraft starts listens; it has no authentication, so keep it on a private
    # network. auto: the driver's node IP (127.0.0.1 in a local Ray); or an IPv4 address of the
    # driver's machine, or one of its interface names (e.g. eth1: its IPv4 address).
    master_bind: str = "auto"


@dataclass
class StoreConfig:
    backend: Literal["ray", "mooncake"] = "ray"
    # Bytes of produced but not yet trained samples; producers wait beyond it (one global batch is
    # always let through). None: half the Ray object store, or the Mooncake pool.
    max_inflight_mb: int | None = None
    mooncake: MooncakeConfig = field(default_factory=MooncakeConfig)


@dataclass
class EvalConfig:
    max_new_tokens: int = 64
    num_prompts: int = 16
    enabled: bool = False
    # Also measure acceptance after prompts of exactly these many tokens of held-out text
    # (eval_context.json, eval_context.png); None: not measured.
    context_lengths: list[int] | None = None
    # Documents to cut those prompts from (long ones); None: data.eval_path (else the training data).
    context_path: str | None = _path()


@dataclass
class OutputConfig:
    dir: str = _path(required=True)
    plot: bool = True
    # A directory that every node and the driver share (e.g. NFS): trainer rank 0 writes checkpoints/,
    # final/ and metrics.jsonl there, and the driver resumes and evaluates from it. None: output.dir,
    # which must then be shared (a pipeline run checks that at start-up).
    checkpoint_dir: str | None = _path()

    @property
    def shared_dir(self) -> str:
        """Where trainer rank 0 writes checkpoints/, final/ and metrics.jsonl, and the driver reads them."""
        return self.checkpoint_dir or self.dir


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def sp_size(self) -> int:
        return self.training.sp_ulysses_size * self.training.sp_ring_size

    @property
    def dp_size(self) -> int:
        return self.training.num_trainers // self.sp_size

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches each DP replica runs per optimizer step."""
        return self.training.batch_size // (self.training.micro_batch_size * self.dp_size)

    @property
    def evaluates_during_training(self) -> bool:
        """Held-out metrics every ``training.eval_every`` steps (needs ``data.eval_path``)."""
        return bool(self.training.eval_every and self.data.eval_path)

    @property
    def attention_backend(self) -> str:
        """``training.attention_backend`` with ``auto`` resolved from the layout."""
        return choose_attention_backend(self.training.attention_backend, self.sp_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
