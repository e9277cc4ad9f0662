"""Tiny random drafts and batches for model-level tests (no target model needed)."""

import torch
from transformers import LlamaConfig

from longdraft.data.loss_mask import pack_loss_mask
from longdraft.model.draft import Eagle3Draft
from longdraft.model.draft_config import draft_config_from_target
from longdraft.sharding.reader import full_sequence_batch

HIDDEN, VOCAB = 32, 50


def tiny_target_config(**overrides) -> LlamaConfig:
    args = dict(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=8,
        vocab_size=VOCAB,
        max_position_embeddings=256,
    )
    args.update(overrides)
    return LlamaConfig(**args)


def tiny_draft(draft_vocab: int = 30, seed: int = 0, **overrides) -> tuple[Eagle3Draft, torch.Tensor]:
    """A draft with a pruned vocab and the target lm_head it trains against."""
    gen = torch.Generator().manual_seed(seed)
    config = draft_config_from_target(tiny_target_config(**overrides), draft_vocab)
    torch.manual_seed(seed)
    model = Eagle3Draft(config, torch.randn(config.vocab_size, config.hidden_size, generator=gen))
    kept = torch.randperm(config.vocab_size, generator=gen)[:draft_vocab].sort().values
    t2d = torch.zeros(config.vocab_size, dtype=torch.bool)
    t2d[kept] = True
    model.set_vocab_mapping(kept - torch.arange(draft_vocab), t2d)
    target_lm_head = torch.randn(config.vocab_size, config.hidden_size, generator=gen)
    return model, target_lm_head


def random_samples(lengths, seed=0, loss_fraction=0.7):
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for n in lengths:
        samples.append(
            dict(
                input_ids=torch.randint(0, VOCAB, (n,), generator=gen),
                loss_mask=torch.rand(n, generator=gen) < loss_fraction,
                aux_hidden=torch.randn(n, 3 * HIDDEN, generator=gen),
                last_hidden=torch.randn(n, HIDDEN, generator=gen),
            )
        )
    return samples


def batch_of(samples, ttt_length):
    tensors = [{k: s[k] for k in ("input_ids", "aux_hidden", "last_hidden")} for s in samples]
    return full_sequence_batch(tensors, [pack_loss_mask(s["loss_mask"].long().tolist()) for s in samples], ttt_length)
