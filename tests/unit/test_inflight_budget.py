"""The in-flight byte budget: per node, a total cap, and one global batch that always fits."""

import pickle

import pytest

from longdraft.pipeline.inflight import InflightBudget

pytestmark = pytest.mark.unit


def test_a_full_node_refuses_while_another_node_still_takes_samples():
    budget = InflightBudget(per_node={"a": 200, "b": 500}, floor=1)
    assert budget.reserve({0: 100}, "a") and budget.reserve({1: 100}, "a")
    assert not budget.reserve({2: 100}, "a")  # node a is full
    assert budget.reserve({2: 100}, "b") and budget.reserve({3: 300}, "b")
    assert not budget.reserve({4: 200}, "b")
    assert budget.held_by_node() == {"a": 200, "b": 400}
    budget.release([0])
    assert budget.reserve({4: 100}, "a")  # a trained sample frees its node
    summary = budget.summary()
    assert summary["inflight_by_node"]["a"] == {"budget": 200, "peak": 200, "held": 200}
    assert summary["peak_inflight_bytes"] == 600 and summary["max_inflight_bytes"] == 700


def test_the_floor_lets_one_global_batch_through_and_the_total_caps_all_nodes():
    budget = InflightBudget(per_node={"a": 10}, total=250, floor=2)
    assert budget.reserve({0: 100}, "a") and budget.reserve({1: 100}, "a")  # below the floor: always
    assert not budget.reserve({2: 1}, "a")
    assert budget.reserve({2: 40}, "unknown") is False  # a node joined later: the smallest budget (10)
    assert InflightBudget(total=250).reserve({0: 300}, None)  # floor 1: the first sample always fits
    capped = InflightBudget(per_node={"a": 1000, "b": 1000}, total=250)
    assert capped.reserve({0: 200}, "a") and not capped.reserve({1: 100}, "b")


def test_a_sample_moves_to_the_node_that_wrote_it_and_the_budget_pickles():
    budget = InflightBudget(per_node={"a": 100, "b": 100})
    assert budget.reserve({0: 100}, "a")
    budget.move(0, "b")  # its producer was restarted on node b
    assert budget.held_by_node() == {"b": 100}
    assert budget.reserve({1: 100}, "a")
    copy = pickle.loads(pickle.dumps(budget))
    assert copy.held_by_node() == {"a": 100, "b": 100} and not copy.reserve({2: 1}, "a")
