"""The controller's packed layout of a step: micro-batches spread over DP replicas by token count,
the step's samples all trained or skipped exactly as unpacked, and a `StepEnd` after each step."""

import itertools
import random

from longdraft.data.loss_mask import pack_loss_mask
from longdraft.pipeline.packed_steps import UnitFeed, balance_replicas, plan_step
from longdraft.pipeline.records import PackedGroup, PromptItem, StepEnd
from longdraft.sharding.layout import ShardGrid


def _loads(tokens, owners, replicas):
    loads = [0] * replicas
    for n, r in zip(tokens, owners):
        loads[r] += n
    return loads


def _optimal_max_load(tokens, replicas):
    return min(
        max(_loads(tokens, owners, replicas)) for owners in itertools.product(range(replicas), repeat=len(tokens))
    )


def test_one_long_micro_batch_gets_a_replica_of_its_own():
    # By sample count each replica would get two micro-batches: 100 + 10 = 110 tokens on one.
    tokens = [100, 10, 10, 10]
    loads = _loads(tokens, balance_replicas(tokens, 2), 2)
    assert max(loads) == 100 == _optimal_max_load(tokens, 2)
    assert sorted(loads) == [30, 100]


def test_balance_is_within_the_greedy_bound_of_the_optimum():
    rng = random.Random(0)
    worst = 1.0
    for _ in range(200):
        replicas = rng.choice([2, 3])
        tokens = [int(rng.lognormvariate(5, 1)) + 1 for _ in range(rng.randint(1, 8))]
        owners = balance_replicas(tokens, replicas)
        assert all(0 <= r < replicas for r in owners)
        ratio = max(_loads(tokens, owners, replicas)) / _optimal_max_load(tokens, replicas)
        assert ratio <= 4 / 3 + 1e-9  # largest-first greedy (LPT)
        worst = max(worst, ratio)
    print(f"worst max-replica load / optimum over 200 random steps: {worst:.3f}")


def _item(seq, length, loss_tokens):
    mask = [0] * (length - loss_tokens) + [1] * loss_tokens
    return PromptItem(seq, f"f:{seq}", list(range(length)), pack_loss_mask(mask), stream_position=seq // 4 * 4 + 4)


def test_a_step_packs_every_kept_sample_once_and_skips_the_rest():
    items = [_item(0, 30, 5), _item(1, 12, 0), _item(2, 25, 3), _item(3, 9, 9), _item(4, 70, 1)]
    groups, skipped = plan_step(items, 40, 2, 2, ShardGrid(1, 2, 3))
    assert [i.seq for i in skipped] == [1, 4]  # no loss tokens; one, below min_loss_tokens
    assert sorted(seq for g in groups for seq in g.seqs) == [0, 2, 3]
    assert all(sum(len(i.input_ids) for i in g.items) <= 40 or len(g.items) == 1 for g in groups)
    assert sorted(g.replica for g in groups) == [0, 1]  # 30 + 9 on one replica, 25 on the other


class _Feed:
    """Two global batches of four prompts, drawn a whole batch at a time (as `PromptFeed`)."""

    def __init__(self, items):
        self.items, self.total, self.batch_size = list(items), len(items), 4

    def take(self, count):
        out, self.items = self.items[:count], self.items[count:]
        return out


def test_units_end_every_step_even_one_with_nothing_to_train():
    lengths = [10, 20, 30, 5, 8, 8, 8, 8]
    items = [_item(s, n, 0 if s >= 4 else 2) for s, n in enumerate(lengths)]  # the second step: all skipped
    held = [PromptItem(0, "e:0", [1, 2, 3], [0, 3], held_out=True)]
    heard = []
    feed = UnitFeed(_Feed(items), held, 32, 2, 1, heard.extend, ShardGrid(1, 1, 3))
    units = []
    while not feed.exhausted:
        units.extend(feed.take(3))
    assert units[0] is held[0]
    ends = [i for i, u in enumerate(units) if isinstance(u, StepEnd)]
    assert len(ends) == 2 and ends[1] == len(units) - 1 == ends[0] + 1  # the empty step is its end alone
    assert all(isinstance(u, PackedGroup) for u in units[1 : ends[0]])
    assert sorted(s for u in units[1 : ends[0]] for s in u.seqs) == [0, 1, 2, 3]
    assert heard == [4, 5, 6, 7] and units[ends[1]].skipped == 4 and units[ends[0]].skipped == 0
    assert units[ends[0]].stream_position == 4 and units[ends[1]].stream_position == 8


def test_a_packed_micro_batch_is_sized_by_its_own_layout_and_sizes_the_store(tiny_target):
    from longdraft.config import config_from_dict
    from longdraft.pipeline.sizes import sample_sizes
    from longdraft.pipeline.stores import mooncake_sizes

    def cfg(tokens_per_micro_batch):
        training = {"max_seq_length": 1024, "ttt_length": 7, "num_trainers": 2, "sp_ulysses_size": 2}
        return config_from_dict(
            {
                "data": {"train_path": "x.jsonl"},
                "model": {"target_path": str(tiny_target(hidden_size=32)), "target_dtype": "fp32"},
                "training": {**training, "tokens_per_micro_batch": tokens_per_micro_batch},
                "store": {"backend": "mooncake"},
                "output": {"dir": "o"},
            }
        )

    sizes = sample_sizes(cfg(65536))
    # Three documents of 1000 tokens: S = 2 shards of 1500 queries + 7 look-ahead rows, not 3 samples' shards.
    assert sizes.packed_bytes([1000, 1000, 1000]) == sizes.sample_bytes(3000) < 3 * sizes.sample_bytes(1000)
    # The store's buffer holds a shard of the largest micro-batch, which is longer than any sample.
    _, buffer = mooncake_sizes(cfg(65536), sizes)
    _, unpacked_buffer = mooncake_sizes(cfg(None), sizes)
    assert buffer << 20 >= sizes.shard_bytes(65536) > unpacked_buffer << 20
