"""The one device resolver: ``auto``, ``cpu``, ``cuda`` and the pipeline actors' rule."""

import pytest
import torch

from longdraft.device import placed_device, resolve_device
from longdraft.errors import UserError


def test_auto_follows_what_this_process_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    assert placed_device("cuda") == torch.device("cpu")  # an actor placed without a GPU (a CPU producer)
    with pytest.raises(UserError, match="'cuda': this process sees no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    # Every path names the index, so a rank's device and its collectives agree on which GPU.
    assert resolve_device("auto") == resolve_device("cuda") == placed_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and placed_device("cpu") == torch.device("cpu")
