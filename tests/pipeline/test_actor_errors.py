"""An actor's user mistake reaches the driver as the one-line UserError it raised; any
other failure keeps naming its type. Real Ray actors, the shared local Ray session."""

from __future__ import annotations

import pytest

from longdraft.data.errors import UNKNOWN_ROLE, DataError
from longdraft.errors import UserError
from longdraft.pipeline.launch import _wait_all


def _failing_actor(ray, exc: Exception):
    @ray.remote(num_cpus=0.01)
    class Failing:
        def run(self):
            raise exc

    return Failing.remote()


def test_a_user_mistake_in_an_actor_stays_a_user_error(ray_session) -> None:
    ray = ray_session
    bad_row = DataError(UNKNOWN_ROLE, "role 'robot': expected user, assistant or system", "train.jsonl:7")
    actor = _failing_actor(ray, bad_row)
    with pytest.raises(UserError) as caught:
        _wait_all({actor.run.remote(): "controller"}, [actor], timeout_s=60)
    message = str(caught.value)
    assert message.startswith("controller: ") and "train.jsonl:7" in message
    assert "DataError" not in message and "failed;" not in message


def test_other_failures_name_their_type(ray_session) -> None:
    ray = ray_session
    actor = _failing_actor(ray, ValueError("boom"))
    with pytest.raises(RuntimeError, match=r"trainer rank 1 failed; the run was stopped: ValueError: boom"):
        _wait_all({actor.run.remote(): "trainer rank 1"}, [actor], timeout_s=60)
