"""Greedy (temperature 0) chain speculative decoding, and plain greedy decoding to check it against.

One verification step: the target runs its last verified token plus the ``k`` drafts against its KV
cache; the longest draft prefix equal to the target's greedy tokens is accepted and the target's own
next token (the bonus) follows, so a step emits ``accepted + 1`` tokens. The target's first token comes
from the prompt prefill, which is not a verification step.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch

from longdraft.eval.proposers import Proposer
from longdraft.eval.target_runner import TargetRunner


@dataclass
class GenerationResult:
    output: list[int]  # generated ids: up to max_new_tokens, ending at the first stop id (included)
    accepted: list[int] = field(default_factory=list)  # accepted drafts per verification step

    @property
    def verify_steps(self) -> int:
        return len(self.accepted)

    @property
    def step_tokens(self) -> int:
        """Tokens the verification steps emitted (accepted + bonus), before output truncation."""
        return sum(self.accepted) + len(self.accepted)


def _finished(output: list[int], max_new_tokens: int, stop_ids: Collection[int]) -> bool:
    return len(output) >= max_new_tokens or any(t in stop_ids for t in output)


def _truncate(output: list[int], max_new_tokens: int, stop_ids: Collection[int]) -> list[int]:
    for i, t in enumerate(output):
        if t in stop_ids:
            output = output[: i + 1]
            break
    return output[:max_new_tokens]


def _check_budget(target: TargetRunner, prompt_ids: list[int], max_new_tokens: int, k: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    if not prompt_ids:
        raise ValueError("empty prompt")
    needed = len(prompt_ids) + max_new_tokens + k
    if needed > target.max_positions:
        raise ValueError(
            f"prompt of {len(prompt_ids)} tokens + max_new_tokens={max_new_tokens} + {k} drafts needs "
            f"{needed} positions, more than the target's max_position_embeddings={target.max_positions}"
        )


def speculative_generate(
    target: TargetRunner,
    proposer: Proposer,
    prompt_ids: list[int],
    max_new_tokens: int,
    num_draft_tokens: int,
    stop_ids: Collection[int] = (),
) -> GenerationResult:
    k = num_draft_tokens
    if k < 1:
        raise ValueError(f"num_draft_tokens={k}: expected >= 1")
    _check_budget(target, prompt_ids, max_new_tokens, k)
    proposer.reset()
    first = target.start(prompt_ids)
    aux = first.aux  # features of tokens[:-1]
    tokens = list(prompt_ids) + [first.greedy[-1]]
    result = GenerationResult(output=[first.greedy[-1]])
    while not _finished(result.output, max_new_tokens, stop_ids):
        drafts = [int(d) for d in proposer.propose(tokens, aux, k)]
        if len(drafts) != k or not all(0 <= d < target.vocab_size for d in drafts):
            raise ValueError(f"proposer returned {drafts}: expected {k} ids in [0, {target.vocab_size})")
        verified = target.forward([tokens[-1]] + drafts)
        accepted = 0
        while accepted < k and drafts[accepted] == verified.greedy[accepted]:
            accepted += 1
        new = drafts[:accepted] + [verified.greedy[accepted]]
        target.crop(len(tokens) + accepted)  # keep the last verified token and the accepted drafts
        aux = torch.cat([aux, verified.aux[: accepted + 1]])
        tokens += new
        result.output += new
        result.accepted.append(accepted)
    result.output = _truncate(result.output, max_new_tokens, stop_ids)
    return result


def greedy_generate(
    target: TargetRunner, prompt_ids: list[int], max_new_tokens: int, stop_ids: Collection[int] = ()
) -> list[int]:
    """Plain greedy decoding, one target forward per token."""
    _check_budget(target, prompt_ids, max_new_tokens, 0)
    output = [target.start(prompt_ids).greedy[-1]]
    while not _finished(output, max_new_tokens, stop_ids):
        output.append(target.forward([output[-1]]).greedy[-1])
    return output
