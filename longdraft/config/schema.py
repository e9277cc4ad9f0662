"""The typed sections of a run's configuration, with their defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from longdraft.attention.choice import choose_attention_backend
from longdraft.choices import AttentionBackendName, RingMode, ShardOrder
from longdraft.errors import UserError


class ConfigError(UserError, ValueError):
    """Invalid configuration: message names the key, the value and what was expected."""


def _path(default: Any = None, *, required: bool = False, data: bool = False) -> Any:
    """A path resolved against the config's folder; ``data``: a data path (``data/sources.py``), which
    may instead name a Hugging Face dataset, ``hf:org/name[:split]``, kept as written."""
    return field(default=default, metadata={"path": True, "required": required, "data": data})


def _bounded(
    default: Any, *, min: float | None = None, above: float | None = None, max: float | None = None, **text: str
) -> Any:
    """A value with bounds, checked by ``config/field_checks.py`` (``null`` always passes); ``text``:
    ``unit`` ("seconds"), ``note`` (after the bound) and ``null`` (what null means)."""
    return field(default=default, metadata={"min": min, "above": above, "max": max, **text})


def _rule(default: Any, holds: Callable[[Any], bool], expected: str) -> Any:
    """A value with a rule of its own that is not a range; ``expected`` says what it accepts."""
    return field(default=default, metadata={"rule": holds, "expected": expected})


def _three_distinct_layers(layers: list[int]) -> bool:
    return len(layers) == 3 and len(set(layers)) == 3 and min(layers) >= 0


def _token_counts(lengths: list[int]) -> bool:
    return bool(lengths) and all(n >= 2 for n in lengths)


def _gpu_share(f: float) -> bool:
    # a fraction below 0.5 so two trainer ranks (1 - f each) never share a GPU
    return f == 0 or 0 < f < 0.5 or (f >= 1 and f == int(f))


@dataclass
class DataConfig:
    # JSONL, Parquet file or folder, datasets.save_to_disk folder, or hf:org/name[:split]
    train_path: str = _path(required=True, data=True)
    eval_path: str | None = _path(data=True)
    on_bad_row: Literal["error", "skip"] = "error"
    max_rows: int | None = _bounded(None, min=1, null="all rows")  # read only the first N rows of train_path
    shuffle_window: int = _bounded(4096, min=1)  # rows shuffled together; the file streams one window at a time
    vocab_rows: int = _bounded(10_000, min=1)  # training samples counted to choose the draft vocab
    tokenizer_workers: int = _bounded(0, min=0, max=64)  # processes tokenising the stream ahead; 0: in the controller


@dataclass
class ModelConfig:
    target_path: str = _path(required=True)
    draft_vocab_size: int | None = _bounded(
        None, min=1, null="= target vocab"
    )  # None: the target vocab (identity mapping)
    aux_layers: list[int] | None = _rule(
        None, _three_distinct_layers, "3 distinct layer ids >= 0, or null for [1, N/2-1, N-4]"
    )
    target_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    # Sliding-window draft: a query sees at most the last N step-0 keys (plus its TTT diagonal).
    draft_window: int | None = _bounded(None, min=1, null="full causal attention")


@dataclass
class TrainingConfig:
    max_seq_length: int = _bounded(2048, min=1)
    ttt_length: int = _bounded(7, min=1)
    batch_size: int = _bounded(8, min=1)  # global batch of one optimizer step
    micro_batch_size: int = _bounded(1, min=1)  # accumulation = batch_size / (micro_batch_size * dp)
    # Pack whole documents into micro-batches of at most this many tokens (longest first; a longer
    # document is a micro-batch of its own). Changes the layout of a step's samples, never which
    # samples it trains. None: one sample per micro-batch (micro_batch_size).
    tokens_per_micro_batch: int | None = _bounded(None, min=2, null="off: micro_batch_size samples per micro-batch")
    num_steps: int = _bounded(100, min=1)
    lr: float = _bounded(1e-4, min=0, note="0 measures a frozen draft")
    warmup_steps: int = _bounded(0, min=0)
    min_lr: float = _bounded(0.0, min=0)
    weight_decay: float = _bounded(0.0, min=0)
    max_grad_norm: float = _bounded(0.5, min=0)  # 0 disables clipping
    # Gradients are summed over ranks in buckets of this size, each started as soon as the backward
    # has finished it (overlapped); 0: one all-reduce after the backward.
    grad_bucket_mb: float = _bounded(25.0, min=0)
    # Read shards a trainer rank holds ahead of its steps, in (pinned) host memory; at least one is always held.
    prefetch_mb: float = _bounded(4096.0, min=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    save_every: int = _bounded(0, min=0)  # 0: only at the end
    resume: bool = False
    eval_every: int = _bounded(0, min=0)
    log_every: int = _bounded(1, min=1)
    attention_backend: AttentionBackendName = "auto"  # auto: usp when sp > 1
    num_trainers: int = _bounded(1, min=1)
    sp_ulysses_size: int = _bounded(1, min=1)
    sp_ring_size: int = _bounded(1, min=1)
    shard_order: ShardOrder = "contiguous"  # was ring_layout (still read, with a warning, until 0.2)
    # gather: step-0 K/V exchanged once per layer for all TTT steps; ring: rotated every step;
    # auto: gather when the gathered K/V fit a memory estimate (attention/choice.py)
    ring_mode: RingMode = "auto"
    loss_chunk_size: int = _bounded(1024, min=1)
    # auto: bf16 logits matmuls on CUDA (fp32 log-sum-exp/softmax; frozen head and embedding in bf16), fp32 on CPU
    loss_precision: Literal["auto", "fp32", "tf32", "bf16"] = "auto"
    activation_checkpointing: bool = False
    min_loss_tokens: int = _bounded(1, min=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = False


@dataclass
class InferenceConfig:
    engine: Literal["hf", "vllm"] = "hf"  # which engine prefills the target (engines/factory.py)
    num_producers: int = _bounded(1, min=1)
    batch_size: int = _bounded(4, min=1)
    # vLLM only. Tokens per engine step (chunked prefill); None: vLLM's default.
    max_num_batched_tokens: int | None = _bounded(None, min=1, null="auto")
    # vLLM only. KV cache (and captured hidden states) in MiB; None: room for two batches of
    # training.max_seq_length tokens.
    kv_cache_mb: int | None = _bounded(None, min=1, null="auto")
    # GPUs per producer on a GPU cluster. None: 1 when the cluster has a GPU for every trainer and
    # producer, else 0.25 (a producer shares a trainer's GPU). A fraction must stay below 0.5, so two
    # trainer ranks (1 - fraction each) can never share a GPU. 0: producers on CPU.
    gpus_per_producer: float | None = _rule(
        None,
        _gpu_share,
        "null (auto), 0 (CPU), a fraction below 0.5 (shares a trainer's GPU) or a whole number >= 1",
    )
    # vLLM on GPU only: the share of each of its GPUs' memory vLLM takes (weights, activations and
    # the KV cache in what is left); vLLM refuses to start unless that much is free.
    gpu_memory_utilization: float = _bounded(0.9, above=0, max=1)
    # vLLM only: GPUs one producer shards the target over; its placement takes that many GPUs.
    tensor_parallel_size: int = _bounded(1, min=1)
    # vLLM only: no CUDA graphs. auto: on on CPU, off on GPU.
    enforce_eager: bool | Literal["auto"] = "auto"
    # HF only: transformers' device_map for the target. null: "auto" (spread over the producer's GPUs)
    # when a producer has more than one GPU, else the whole target on its one device.
    device_map: str | None = None


@dataclass
class ClusterConfig:
    address: str | None = None  # Ray cluster to join; None: $RAY_ADDRESS, else a private local Ray
    socket_ifname: str | None = None  # network interface of gloo/NCCL (GLOO_/NCCL_SOCKET_IFNAME)
    cpus_per_actor: float | None = _bounded(None, above=0)  # None: 1 on a cluster, 0.5 in a local Ray
    collective_timeout_s: float = _bounded(
        1800.0, above=0, unit="seconds"
    )  # one collective (all-to-all, ring, all-reduce) at most
    data_timeout_s: float = _bounded(
        1800.0, above=0, unit="seconds"
    )  # a trainer rank waits at most this long for its next shard
    stall_timeout_s: float = _bounded(
        1800.0, above=0, unit="seconds"
    )  # a rank without a finished step for this long is reported by name
    run_timeout_s: float = _bounded(0.0, min=0, unit="seconds", note="0: no limit")  # whole run; 0: no limit
    placement_timeout_s: float = _bounded(
        300.0, above=0, unit="seconds"
    )  # waiting for the cluster to grant the trainers' bundles


@dataclass
class MooncakeConfig:
    master_address: str | None = None  # None: start a local master
    metadata_server: str = "P2PHANDSHAKE"
    protocol: Literal["tcp", "rdma"] = "tcp"
    # Per producer; None: room for 2 global batches of the longest samples. Mooncake refuses less than 16.
    global_segment_size_mb: int | None = _bounded(None, min=16, note="MiB")
    local_buffer_size_mb: int | None = _bounded(
        None, min=1
    )  # per client; None: the largest shard (from max_seq_length)
    put_timeout_s: float = _bounded(
        600.0, above=0, unit="seconds"
    )  # a put into a full pool waits this long for readers to drain it
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
    # Bytes of produced but not yet trained samples, in all; producers wait beyond it (one global batch
    # is always let through). None: the Mooncake pool; the Ray store's bound is per node, always
    # (half of each node's object store).
    max_inflight_mb: int | None = _bounded(None, min=1, note="MiB")
    mooncake: MooncakeConfig = field(default_factory=MooncakeConfig)


@dataclass
class EvalConfig:
    max_new_tokens: int = _bounded(64, min=1)
    num_prompts: int = _bounded(16, min=1)
    enabled: bool = False
    # Also measure acceptance after prompts of exactly these many tokens of held-out text
    # (eval_context.json, eval_context.png); None: not measured.
    context_lengths: list[int] | None = _rule(
        None, _token_counts, "a list of token counts >= 2, e.g. [256, 1024, 2048], or null"
    )
    # Documents to cut those prompts from (long ones); None: data.eval_path (else the training data).
    context_path: str | None = _path(data=True)
    # Also measure that real τ at each of context_lengths every N steps and at the last, while training
    # (metrics.jsonl tau@L); 0: never. One device: between steps; pipeline: an evaluator actor.
    every: int = _bounded(0, min=0, unit="steps", note="0: never")


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
