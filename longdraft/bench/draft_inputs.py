"""A random draft, target head and shards for the benchmarks (no checkpoint needed)."""

from __future__ import annotations

import torch


def bench_draft(
    hidden: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    draft_vocab: int,
    target_vocab: int,
    max_positions: int,
    device: torch.device,
):
    """``(model, target_head)``: an EAGLE-3 draft for a random Llama-shaped target (seed 0)."""
    from transformers import LlamaConfig

    from longdraft.model.draft import Eagle3Draft
    from longdraft.model.draft_config import draft_config_from_target

    target = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=8,
        vocab_size=target_vocab,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = Eagle3Draft(draft_config_from_target(target, draft_vocab), torch.randn(target_vocab, hidden) * 0.02)
    t2d = torch.zeros(target_vocab, dtype=torch.bool)
    t2d[:draft_vocab] = True
    model.set_vocab_mapping(torch.zeros(draft_vocab, dtype=torch.int64), t2d)
    head = torch.randn(target_vocab, hidden) * 0.02
    return model.to(device), head.to(device, dtype)


def bench_shard(layout, sp_rank: int, hidden: int, target_vocab: int, device: torch.device, dtype, seed: int = 0):
    """Rank ``sp_rank``'s shard of one random sequence split by ``layout`` (a ``ShardLayout``), every
    real position in the loss."""
    from longdraft.sharding.batch import ShardBatch

    n_seg, seg = layout.num_segments, layout.segment_length
    gen = torch.Generator().manual_seed(seed * 1000 + sp_rank)
    real = layout.valid_mask(sp_rank).view(1, n_seg, seg)
    return ShardBatch(
        input_ids=torch.randint(0, target_vocab, (1, n_seg, seg), generator=gen).to(device),
        aux_hidden=torch.randn(1, n_seg, seg, 3 * hidden, generator=gen).to(device, dtype),
        last_hidden=torch.randn(1, n_seg, seg, hidden, generator=gen).to(device, dtype),
        loss_mask=real.clone().to(device),
        is_real=real.to(device),
        positions=layout.query_positions(sp_rank).to(device),
        lengths=(layout.length,),
    )
