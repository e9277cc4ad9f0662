"""Draft proposers for chain speculative decoding.

A proposer sees the verified sequence and the target's aux features of every verified token but
the last (the last one is the target's bonus token, not yet run through the target) and proposes
``k`` next tokens as target-vocab ids. ``reset()`` starts a new prompt.
"""

from __future__ import annotations

from typing import Protocol

import torch

from longdraft.eval.draft_runner import DraftRunner
from longdraft.model.draft import Eagle3Draft


class Proposer(Protocol):
    def reset(self) -> None: ...

    def propose(self, tokens: list[int], aux: torch.Tensor, k: int) -> list[int]:
        """``tokens``: verified ids (length n); ``aux``: [n-1, 3H] target features of ``tokens[:-1]``."""
        ...


class Eagle3Proposer:
    """The exported EAGLE-3 draft: commit newly verified positions, then a greedy chain of ``k`` tokens."""

    def __init__(self, model: Eagle3Draft):
        self.runner = DraftRunner(model)

    def reset(self) -> None:
        self.runner.reset()

    def propose(self, tokens: list[int], aux: torch.Tensor, k: int) -> list[int]:
        runner = self.runner
        runner.discard_chain()
        n = runner.committed
        if aux.shape[0] != len(tokens) - 1 or len(tokens) - 1 <= n:
            raise ValueError(
                f"propose() got {len(tokens)} tokens and {aux.shape[0]} aux rows with {n} positions "
                "already committed; expected len(tokens) - 1 aux rows and new verified tokens"
            )
        # Entry t reads token x[t+1] and aux[t]: the new entries n .. len-2 read tokens n+1 .. len-1.
        prenorm = runner.extend(torch.tensor(tokens[n + 1 :]), aux[n:])[-1]
        drafts = [runner.draft_token(prenorm)]
        for _ in range(k - 1):
            prenorm = runner.chain_step(drafts[-1], prenorm)
            drafts.append(runner.draft_token(prenorm))
        return drafts
