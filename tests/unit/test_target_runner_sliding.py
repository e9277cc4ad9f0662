"""The evaluator's target cache rolls back rejected drafts on sliding-window targets (Gemma-3, gpt-oss)
past their window, gives the features of one full prefill, and keeps the sliding layers to their window."""

import pytest
import torch

from longdraft.engines.hf import HFTargetEngine, load_causal_lm
from longdraft.eval.target_runner import TargetRunner
from longdraft.testing.families import SLIDING_WINDOW, build_family_target


@pytest.mark.parametrize("name", ["gemma-3", "gpt-oss"])
def test_crop_past_the_sliding_window_equals_one_prefill(name, tmp_path):
    target = build_family_target(name, tmp_path / name)
    ids = torch.randint(10, 380, (3 * SLIDING_WINDOW,), generator=torch.Generator().manual_seed(0)).tolist()
    engine = HFTargetEngine(target)
    expected = engine.prefill([ids])[0].aux_hidden
    engine.close()

    runner = TargetRunner(load_causal_lm(target, torch.device("cpu"), torch.float32))
    start = SLIDING_WINDOW + 4  # the window is full before the first rollback
    parts = [runner.start(ids[:start]).aux]
    runner.forward(ids[start : start + 6][::-1])  # rejected drafts
    runner.crop(start)
    for t in range(start, len(ids), 3):  # verify steps of 3, one of them rejected each time
        parts.append(runner.forward(ids[t : t + 3] + [7]).aux[: len(ids[t : t + 3])])
        runner.crop(min(t + 3, len(ids)))
    got = torch.cat(parts)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    runner.forward([5])  # every draft accepted: the crop removes nothing but still trims the windows
    runner.crop(len(ids) + 1)
    kept = {layer.keys.shape[-2] for layer in runner.cache.layers}
    assert kept == {SLIDING_WINDOW - 1, len(ids) + 1}, kept  # sliding layers trimmed back, full layers whole
    runner.close()
