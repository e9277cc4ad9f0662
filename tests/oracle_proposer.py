"""A proposer that drafts the target's own greedy continuation: every draft is accepted (τ = k + 1),
so speculative decoding with it must reproduce greedy decoding token for token."""

from __future__ import annotations

import torch

from longdraft.eval.target_runner import forward_with_cache, new_cache


class OracleProposer:
    def __init__(self, target_model):
        self.model = target_model

    def reset(self) -> None:
        pass

    @torch.no_grad()  # not inference_mode: callers may mix the outputs with autograd tensors
    def propose(self, tokens: list[int], aux: torch.Tensor, k: int) -> list[int]:
        device = self.model.get_output_embeddings().weight.device
        cache = new_cache(self.model)
        out = forward_with_cache(self.model, torch.tensor([tokens], device=device), cache)
        drafts = [int(out.logits[0, -1].argmax())]
        for _ in range(k - 1):
            out = forward_with_cache(self.model, torch.tensor([[drafts[-1]]], device=device), cache)
            drafts.append(int(out.logits[0, -1].argmax()))
        return drafts
