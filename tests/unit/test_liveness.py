"""The driver names a trainer rank that stops finishing steps."""

from longdraft.pipeline.launch import stalled_rank


def test_a_rank_without_progress_is_named_with_the_others_steps():
    progress = {0: (7, 2.0), 1: (3, 95.0), 2: (7, 1.0)}
    reason = stalled_rank(progress, world=3, stall_timeout_s=60, since_start=400)
    assert reason.startswith("trainer rank 1 finished no step for 95 s") and "last step was 3" in reason
    assert "{0: 7, 2: 7}" in reason


def test_ranks_that_never_reported_count_from_the_start():
    assert stalled_rank({0: (1, 1.0)}, world=2, stall_timeout_s=60, since_start=30) is None
    assert "trainer rank 1" in stalled_rank({0: (1, 1.0)}, world=2, stall_timeout_s=60, since_start=61)


def test_all_ranks_busy_is_not_a_stall():
    assert stalled_rank({0: (5, 59.0), 1: (5, 0.5)}, world=2, stall_timeout_s=60, since_start=1e4) is None
