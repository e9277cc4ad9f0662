"""The run's store service starts its Mooncake master on the address ``store.mooncake.master_bind``
names: seen on the master's own command line, and in the address the clients are given."""

from pathlib import Path

import pytest

from longdraft.config import config_from_dict
from longdraft.errors import UserError
from longdraft.pipeline.sizes import sample_sizes
from longdraft.pipeline.stores import StoreService


def _cfg(target, **mooncake):
    return config_from_dict(
        {
            "data": {"train_path": "x.jsonl"},
            "model": {"target_path": str(target)},
            "training": {"max_seq_length": 64, "num_trainers": 2, "sp_ulysses_size": 2, "batch_size": 2},
            "store": {"backend": "mooncake", "mooncake": mooncake},
            "output": {"dir": "o"},
        }
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("setting", "host"), [("127.0.0.2", "127.0.0.2"), ("lo", "127.0.0.1")])
def test_master_bind_reaches_the_masters_command_line(tiny_target, setting, host):
    cfg = _cfg(tiny_target(), master_bind=setting)
    service = StoreService(cfg, sizes=sample_sizes(cfg))  # no Ray: the setting alone chooses the address
    try:
        args = Path(f"/proc/{service.master._proc.pid}/cmdline").read_bytes().decode().split("\0")
        assert f"--rpc_address={host}" in args and f"--metrics_host={host}" in args
        assert service.master_address.startswith(f"{host}:") and service.master.key_count() == 0
    finally:
        service.close()


def test_master_bind_with_a_running_master_is_refused(tiny_target):
    cfg = _cfg(tiny_target(), master_bind="lo", master_address="127.0.0.1:50051")
    with pytest.raises(UserError, match=r"^store.mooncake.master_bind = lo: only a master that longdraft starts"):
        StoreService(cfg, sizes=sample_sizes(cfg))
