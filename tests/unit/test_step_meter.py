"""StepMeter's laps synchronise the device only when the meter times."""

from __future__ import annotations

import time

import pytest
import torch

from longdraft.step_meter import StepMeter

CUDA = torch.device("cuda", 0)  # never touched: synchronize is replaced by a spy below


@pytest.fixture
def sync_calls(monkeypatch):
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    return calls


def test_untimed_laps_on_cuda_never_synchronise_and_report_host_time(sync_calls):
    meter = StepMeter.for_device(CUDA)
    assert not meter.timing
    meter.start(CUDA)
    time.sleep(0.01)
    meter.lap("forward_s")
    meter.lap("backward_s")
    assert sync_calls == []
    assert meter.time_s["forward_s"] >= 0.01 and meter.time_s["backward_s"] >= 0.0


def test_timed_laps_on_cuda_synchronise_once_each(sync_calls):
    meter = StepMeter(timing=True)
    meter.start(CUDA)
    meter.lap("forward_s")
    meter.lap("backward_s")
    assert sync_calls == [CUDA, CUDA, CUDA]  # start and two laps
