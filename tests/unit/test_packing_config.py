"""``training.tokens_per_micro_batch``: off by default, bounded, and refused where it cannot hold."""

import pytest

from longdraft.config import load_config
from tests.unit.test_config import BASE_YAML, error_of, write


def test_off_by_default_and_accepted_when_it_fits(tmp_path):
    path = write(tmp_path, BASE_YAML)
    assert load_config(path, []).training.tokens_per_micro_batch is None
    cfg = load_config(
        path, ["training.tokens_per_micro_batch=4096", "training.num_trainers=4", "training.sp_ring_size=4"]
    )
    assert cfg.training.tokens_per_micro_batch == 4096


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["training.tokens_per_micro_batch=1"], ">= 2"),
        (["training.tokens_per_micro_batch=0"], ">= 2"),
        (
            ["training.tokens_per_micro_batch=3", "training.num_trainers=4", "training.sp_ulysses_size=4"],
            ">= sp_ulysses_size*sp_ring_size = 4",
        ),
    ],
)
def test_a_budget_out_of_range_is_refused(tmp_path, overrides, fragment):
    msg = error_of(write(tmp_path, BASE_YAML), overrides)
    assert "training.tokens_per_micro_batch" in msg and fragment in msg


def test_micro_batch_size_must_stay_one(tmp_path):
    msg = error_of(write(tmp_path, BASE_YAML), ["training.tokens_per_micro_batch=512", "training.micro_batch_size=2"])
    assert "training.micro_batch_size" in msg and "tokens_per_micro_batch" in msg
