"""One trainer rank: reads only its own shards, trains the draft with USP attention.

Data arrives as metadata on this rank's queue; a background thread fetches the rank's shard from
the store and rebuilds the local batch (no collectives there). The main thread runs the steps,
whose collectives (USP all-to-alls and ring exchanges, count and gradient sums) are issued in the
same order on every rank of the group.
"""

from __future__ import annotations

import json
import math
import queue as local_queue
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoConfig

from longdraft.config import Config
from longdraft.data.vocab import VocabMapping
from longdraft.pipeline.records import EndOfRun, SampleMeta
from longdraft.pipeline.shard_batch import shard_batch
from longdraft.shard import should_skip
from longdraft.target.head_weights import load_embedding_and_head
from longdraft.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from longdraft.train.export import export_config_dict, export_draft
from longdraft.train.metrics_log import MetricsLog, peak_memory
from longdraft.train.optim import build_optimizer, build_scheduler
from longdraft.train.reduction import SumReducer
from longdraft.train.setup import build_draft
from longdraft.train.step import StepSettings, train_step

QUEUE_TIMEOUT_S = 300.0


class TrainerRank:
    def __init__(self, rank: int, world_size: int, cfg: Config, master_port: int, queue, controller,
                 store_factory, vocab_ids: torch.Tensor, start_step: int):
        torch.set_num_threads(1)
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        self.sp_size = cfg.sp_size
        self.sp_rank = rank % self.sp_size
        self.master_port = master_port
        self.queue, self.controller = queue, controller
        self.store_factory = store_factory
        self.vocab_ids = vocab_ids
        self.start_step = start_step
        self.report = {"rank": rank, "sp_rank": self.sp_rank, "samples_read": 0, "samples_skipped": 0,
                       "bytes_read": 0, "full_sample_bytes": 0, "rows_read": 0, "sample_rows": 0, "keys_deleted": 0, "data_wait_s": 0.0,
                       "step_s": 0.0, "peak_mem_bytes": []}

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self) -> None:
        from longdraft.parallel.backends import make_attention_backend
        from longdraft.parallel.mesh import USPMesh

        t = self.cfg.training
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() and t.device != "cpu" else torch.device("cpu")
        self.device = device
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{self.master_port}",
            rank=self.rank, world_size=self.world_size, timeout=timedelta(seconds=QUEUE_TIMEOUT_S),
        )
        target_config = AutoConfig.from_pretrained(self.cfg.model.target_path, local_files_only=True)
        text_config = target_config.get_text_config()
        embedding, head = load_embedding_and_head(self.cfg.model.target_path)
        vocab = VocabMapping.from_draft_to_target(self.vocab_ids, head.shape[0])
        self.model = build_draft(target_config, embedding, vocab, device, t.seed)
        self.target_head = head.to(device)
        heads = text_config.num_attention_heads
        kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
        self.mesh = USPMesh.build(t.sp_ulysses_size, t.sp_ring_size, heads, kv_heads)
        # One rank per sequence needs no USP exchange even when the config says usp.
        name = "fast" if self.sp_size == 1 and t.attention_backend == "usp" else t.attention_backend
        self.backend = make_attention_backend(name, num_heads=heads, num_kv_heads=kv_heads, mesh=self.mesh,
                                              layout=t.ring_layout)
        self.reducer = SumReducer(dist.group.WORLD if self.world_size > 1 else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, t.lr, t.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, t.warmup_steps, t.num_steps, t.lr, t.min_lr)
        self.settings = StepSettings(t.ttt_length, t.loss_chunk_size, t.activation_checkpointing, t.max_grad_norm, t.precision)
        self.store = self.store_factory()
        self.resume_state = None
        if self.start_step:
            path = Path(self.cfg.output.dir) / "checkpoints" / f"step_{self.start_step}"
            self.resume_state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)

    # -- data -----------------------------------------------------------------------------------
    def _prefetch(self, out: local_queue.Queue, stop: threading.Event) -> None:
        """Fetch this rank's shards ahead of the steps. No collectives here (DESIGN.md, invariant 2)."""
        try:
            while not stop.is_set():
                item = self.queue.get(block=True, timeout=QUEUE_TIMEOUT_S)
                if isinstance(item, EndOfRun):
                    out.put(item)
                    return
                out.put(self._load(item))
        except BaseException as exc:  # handed to the main thread, which raises it
            out.put(exc)

    def _load(self, meta: SampleMeta):
        shard = self.store.get_shard(meta.handle, self.sp_rank, delete=True)
        self.report["samples_read"] += 1
        self.report["keys_deleted"] += 1
        self.report["bytes_read"] += sum(t.numel() * t.element_size() for t in shard.values())
        self.report["full_sample_bytes"] += _full_bytes(meta)
        self.report["rows_read"] += int(shard["input_ids"].shape[0])
        self.report["sample_rows"] += meta.length
        if should_skip(meta.packed_loss_mask, self.cfg.training.min_loss_tokens, meta.length):
            self.report["samples_skipped"] += 1
            return meta, None  # decided from the GLOBAL mask: every rank of the group skips alike
        return meta, shard_batch(meta, shard, self.sp_rank).to(self.device)

    def _next(self, prefetched: local_queue.Queue):
        start = time.perf_counter()
        item = prefetched.get(timeout=QUEUE_TIMEOUT_S)
        self.report["data_wait_s"] += time.perf_counter() - start
        if isinstance(item, BaseException):
            raise RuntimeError(f"trainer rank {self.rank}: data loading failed: {item!r}") from item
        return item

    # -- training -------------------------------------------------------------------------------
    def train(self) -> dict:
        t, cfg = self.cfg.training, self.cfg
        accumulation = t.batch_size // self.mesh.dp_size
        prefetched: local_queue.Queue = local_queue.Queue(maxsize=2 * accumulation)
        stop = threading.Event()
        threading.Thread(target=self._prefetch, args=(prefetched, stop), daemon=True).start()
        is_root = self.rank == 0
        log = MetricsLog(cfg.output.dir, resume_after_step=self.start_step or None, tensorboard=t.tensorboard) if is_root else None
        started = time.perf_counter() - (self.resume_state or {}).get("elapsed_s", 0.0)
        samples_consumed = (self.resume_state or {}).get("samples_consumed", 0)
        history = []
        try:
            for step in range(self.start_step, t.num_steps):
                items = [self._next(prefetched) for _ in range(accumulation)]
                step_start = time.perf_counter()
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                batches = [b for _, b in items if b is not None]
                skipped = [m.seq for m, b in items if b is None]
                if self.sp_rank == 0:
                    self.controller.mark.remote([m.seq for m, b in items if b is not None], "trained")
                    if skipped:
                        self.controller.mark.remote(skipped, "skipped:too_few_loss_tokens")
                metrics = train_step(self.model, batches, self.backend, self.target_head, self.optimizer,
                                     self.scheduler, self.settings, self.reducer)
                step_s = time.perf_counter() - step_start
                self.report["step_s"] += step_s
                mem, kind = peak_memory(self.device)
                self.report["peak_mem_bytes"].append(mem)
                totals = torch.tensor([mem, len(batches), len(skipped), sum(b.query_tokens() for b in batches)],
                                      dtype=torch.float64)
                peak = totals[:1].clone()
                self.reducer.sum_(totals)
                if self.reducer.distributed:
                    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
                samples_consumed += t.batch_size
                # SP ranks each count their own shard's tokens and the sample once per rank.
                metrics.update(step=step + 1, samples=int(totals[1]) // self.sp_size,
                               samples_skipped=int(totals[2]) // self.sp_size, tokens=int(totals[3]),
                               tokens_per_s=int(totals[3]) / step_s, elapsed_s=time.perf_counter() - started,
                               peak_mem_bytes=int(peak), peak_mem_kind=kind)
                history.append(metrics)
                if is_root:
                    log.write(metrics)
                    if (step + 1) % t.log_every == 0 or step + 1 == t.num_steps:  # progress, via Ray's log stream
                        print(f"step {step + 1}/{t.num_steps} loss {metrics['loss']:.3f} acc0 {metrics['acc_k'][0]:.3f} "
                              f"{metrics['tokens_per_s']:.0f} tok/s", flush=True)
                    if (t.save_every and (step + 1) % t.save_every == 0) or step + 1 == t.num_steps:
                        extra = {"samples_consumed": samples_consumed, "elapsed_s": metrics["elapsed_s"], "skipped": {},
                                 "draft_config": export_config_dict(self.model.config, torch.float32)}
                        save_checkpoint(cfg.output.dir, step + 1, self.model, self.optimizer, self.scheduler, extra)
            end = self._next(prefetched)
            if not isinstance(end, EndOfRun):
                raise RuntimeError(f"trainer rank {self.rank}: more samples than steps arrived (sample {end[0].seq})")
        finally:
            stop.set()
            if log is not None:
                log.close()
        final = str(export_draft(self.model, Path(cfg.output.dir) / "final")) if is_root else None
        self.report["store"] = self.store.stats()
        ranks_dir = Path(cfg.output.dir) / "ranks"
        ranks_dir.mkdir(parents=True, exist_ok=True)
        (ranks_dir / f"rank{self.rank}.json").write_text(json.dumps(self.report, indent=2) + "\n")
        return {"rank": self.rank, "metrics": history, "report": self.report, "final_dir": final}

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        self.store.close()


def _full_bytes(meta: SampleMeta) -> int:
    """Bytes of the whole sample's tensors, from the metadata's global shapes and dtypes."""
    return sum(math.prod(shape) * getattr(torch, meta.dtypes[name]).itemsize for name, shape in meta.shapes.items())


def latest_step(output_dir: str) -> int:
    path = latest_checkpoint(output_dir)
    return int(path.name.split("_")[1]) if path else 0
