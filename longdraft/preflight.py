"""Mistakes a run would otherwise meet only after Ray, placement and the engines have started
(minutes on a cluster, and then wrapped in an actor's failure), checked before anything starts.

``run.py`` calls ``preflight(cfg)`` before it chooses one device or the pipeline. Every check reads
only files (the target's `TargetSpec` and safetensors header, the data file's first rows) and
fails with a one-line ``UserError`` naming the key, the value and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from longdraft.cli_args import existing_dir, existing_file
from longdraft.config import Config
from longdraft.errors import UserError

if TYPE_CHECKING:
    from longdraft.target.spec import TargetSpec


def preflight(cfg: Config) -> None:
    spec = _target(cfg)
    _data_files(cfg)
    _draft_shape(cfg, spec)
    _heads_split_over_ulysses(cfg, spec)
    if cfg.inference.engine == "vllm":
        _vllm_length(cfg, spec)
        _vllm_own_gpus(cfg)
    if cfg.training.num_trainers > 1 and cfg.store.backend == "mooncake":
        from longdraft.pipeline.sizes import sample_sizes
        from longdraft.pipeline.stores import mooncake_sizes

        mooncake_sizes(cfg, sample_sizes(cfg))  # raises StoreCapacityError (a UserError)
    _first_global_batch(cfg)


def _target(cfg: Config) -> TargetSpec:
    """The target's spec: its directory must hold a config; a family quirk longdraft does not know is
    refused here, by name (``target/spec.py``)."""
    from longdraft.target.spec import TargetSpec

    path = existing_dir(cfg.model.target_path, "model.target_path", ["config.json"], "a local Hugging Face model")
    return TargetSpec.load(path)


def _data_files(cfg: Config) -> None:
    existing_file(cfg.data.train_path, "data.train_path")
    if cfg.data.eval_path:
        existing_file(cfg.data.eval_path, "data.eval_path")
    if cfg.eval.enabled and cfg.eval.context_lengths and cfg.eval.context_path:
        existing_file(cfg.eval.context_path, "eval.context_path")


def _draft_shape(cfg: Config, spec: TargetSpec) -> None:
    """The draft's vocab and aux layers against the target (the trainers' draft config refuses them later)."""
    vocab, draft_vocab = spec.vocab_size, cfg.model.draft_vocab_size
    if draft_vocab is not None and draft_vocab > vocab:
        raise UserError(
            f"model.draft_vocab_size = {draft_vocab} is larger than the target's vocab of {vocab} tokens "
            f"({spec.source}); expected at most {vocab}, or null for the whole vocab"
        )
    try:
        spec.aux_layers(cfg.model.aux_layers)
    except ValueError as e:
        raise UserError(f"model.aux_layers = {cfg.model.aux_layers}: {e}") from None


def _heads_split_over_ulysses(cfg: Config, spec: TargetSpec) -> None:
    """The draft has the target's heads; each Ulysses rank takes ``heads / U`` of them."""
    from longdraft.parallel.mesh import validate_usp_sizes

    t = cfg.training
    try:
        validate_usp_sizes(t.num_trainers, t.sp_ulysses_size, t.sp_ring_size, spec.num_heads, spec.num_kv_heads)
    except ValueError as e:
        raise UserError(
            f"training.sp_ulysses_size = {t.sp_ulysses_size} does not fit the draft's heads (those of "
            f"{spec.source}): {e}"
        ) from None


def _vllm_length(cfg: Config, spec: TargetSpec) -> None:
    """vLLM needs room for the one token it generates after each prompt (``engines/vllm_engine.py``)."""
    limit = spec.max_position_embeddings
    length = cfg.training.max_seq_length
    if limit is not None and length + 1 > limit:
        raise UserError(
            f"training.max_seq_length = {length}: the vLLM engine needs a context of {length + 1}, more than "
            f"the target's max_position_embeddings = {limit}; expected at most {limit - 1}"
        )


def _vllm_own_gpus(cfg: Config) -> None:
    """A vLLM producer configured to share a trainer's GPU (``pipeline/placement.py``)."""
    from longdraft.pipeline.placement import vllm_share_problem

    problem = vllm_share_problem(cfg) if cfg.training.device != "cpu" and cfg.training.num_trainers > 1 else None
    if problem:
        raise UserError(problem)


def _first_global_batch(cfg: Config) -> None:
    """Draw the first global batch exactly as training will (the same stream, from the resume point).

    Only that far: the file is streamed lazily by design, and reading all of it here would cost as
    long as tokenizing an epoch, before the first step, for a file of any size. The first batch costs
    what the first step reads anyway; a bad row later in the file stops the run when it is reached,
    naming its file:line. With ``data.on_bad_row: skip`` a file without a single usable row is
    refused here too (after one pass over it, which is what training would do)."""
    from longdraft.train.checkpoint import checkpoint_extra, latest_checkpoint
    from longdraft.train.setup import load_tokenizer, training_stream

    try:
        tokenizer = load_tokenizer(cfg)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model.target_path {cfg.model.target_path}: cannot load its tokenizer: {first}") from None
    checkpoint = latest_checkpoint(Path(cfg.output.dir)) if cfg.training.resume else None
    position = checkpoint_extra(checkpoint)["stream_position"] if checkpoint is not None else 0
    stream = training_stream(cfg, tokenizer, position)
    try:
        stream.take(cfg.training.batch_size)
    finally:
        stream.close()  # its tokenizer pool, if any
