"""What the controller issues, in dispatch order, as units: held-out prompts first, then the training
stream, one prompt per unit, or with ``training.tokens_per_micro_batch`` each step's packed
micro-batches (`PackedGroup`) followed by its `StepEnd`.

Packing lays out the samples an unpacked step trains, never others: a step's prompts are those of
its global batch, minus the ones below ``training.min_loss_tokens`` (skipped exactly as unpacked,
decided here from the global mask), packed by the one-device packer and spread over the DP
replicas by token count. Metadata only: no tensor is touched here.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence

from longdraft.pipeline.records import PackedGroup, PromptItem, StepEnd
from longdraft.sharding.layout import ShardGrid
from longdraft.sharding.packing import balanced_order, plan_micro_batches
from longdraft.sharding.reader import should_skip


def balance_replicas(tokens: Sequence[int], replicas: int) -> list[int]:
    """The replica of each micro-batch: largest first, each to the replica with the fewest tokens so
    far (ties: the lowest replica). At most 4/3 of the optimal largest replica load (LPT)."""
    loads = [(0, r) for r in range(replicas)]
    owner = [0] * len(tokens)
    for i in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        load, r = heapq.heappop(loads)
        owner[i] = r
        heapq.heappush(loads, (load + tokens[i], r))
    return owner


def plan_step(
    items: list[PromptItem], tokens_per_micro_batch: int, replicas: int, min_loss_tokens: int, grid: ShardGrid
) -> tuple[list[PackedGroup], list[PromptItem]]:
    """One global batch as packed micro-batches (each with its replica), and the skipped prompts.
    Each micro-batch's documents are ordered to even the ring ranks' attention work (``grid``)."""
    skips = [should_skip(i.packed_loss_mask, min_loss_tokens, len(i.input_ids)) for i in items]
    kept = [i for i, skip in zip(items, skips) if not skip]
    skipped = [i for i, skip in zip(items, skips) if skip]
    packs = plan_micro_batches([len(i.input_ids) for i in kept], tokens_per_micro_batch)
    groups = []
    for pack in packs:
        order = balanced_order([len(kept[d].input_ids) for d in pack], grid)
        groups.append([kept[pack[i]] for i in order])
    owners = balance_replicas([sum(len(i.input_ids) for i in g) for g in groups], replicas)
    return [PackedGroup(g, r) for g, r in zip(groups, owners)], skipped


class UnitFeed:
    """``take(count)``: the next units for one producer call (never mixing held-out and training); with
    packing, one `PackedGroup` or one `StepEnd` (which needs no producer). ``on_skip(seqs)`` hears of
    the prompts packing leaves out."""

    def __init__(
        self,
        feed,
        held_out: list[PromptItem],
        tokens_per_micro_batch: int | None,
        replicas: int,
        min_loss_tokens: int,
        on_skip: Callable[[list[int]], None],
        grid: ShardGrid,
    ):
        self.feed, self.held_out, self.grid = feed, deque(held_out), grid
        self.budget, self.replicas, self.min_loss_tokens = tokens_per_micro_batch, replicas, min_loss_tokens
        self.on_skip = on_skip
        self._taken = 0  # training prompts drawn from the feed
        self._units: deque = deque()
        self.steps, self.micro_batches, self.max_load, self.tokens = 0, 0, 0, 0  # for `packing_summary`

    @property
    def exhausted(self) -> bool:
        return not self.held_out and not self._units and self._taken >= self.feed.total

    def take(self, count: int) -> list:
        if self.held_out:
            return [self.held_out.popleft() for _ in range(min(count, len(self.held_out)))]
        if self.budget is None:
            items = self.feed.take(count)
            self._taken += len(items)
            return items
        if not self._units and self._taken < self.feed.total:
            self._plan_next_step()
        return [self._units.popleft()] if self._units else []

    def _plan_next_step(self) -> None:
        items = self.feed.take(self.feed.batch_size)  # the feed draws whole global batches
        self._taken += len(items)
        groups, skipped = plan_step(items, self.budget, self.replicas, self.min_loss_tokens, self.grid)
        if skipped:
            self.on_skip([i.seq for i in skipped])
        self._units.extend(groups)
        loads = [0] * self.replicas
        for g in groups:
            loads[g.replica] += sum(len(i.input_ids) for i in g.items)
        self.steps, self.micro_batches = self.steps + 1, self.micro_batches + len(groups)
        self.max_load, self.tokens = self.max_load + max(loads), self.tokens + sum(loads)
        self._units.append(StepEnd(items[-1].stream_position, items[-1].epoch, skipped=len(skipped)))

    def packing_summary(self) -> dict:
        """Micro-batches laid out, and how far the busiest replica's tokens exceed the mean replica's
        (summed over steps; 0 is perfect balance), for the run's summary."""
        if self.budget is None:
            return {}
        mean = self.tokens / self.replicas
        return {
            "packed_micro_batches": self.micro_batches,
            "packed_steps": self.steps,
            "replica_token_excess": self.max_load / mean - 1 if mean else 0.0,
        }
