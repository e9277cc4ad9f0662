"""The final evaluation runs where the driver is; an export it cannot see (written by rank 0 on another
node's disk) is refused in one line naming the key to fix, not as an evaluator crash."""

from types import SimpleNamespace

import pytest

from longdraft.config import config_from_dict
from longdraft.errors import UserError
from longdraft.eval.after_training import final_evaluation


def test_an_export_the_driver_cannot_see_names_shared_storage(tmp_path):
    cfg = config_from_dict(
        {
            "data": {"train_path": "t.jsonl"},
            "model": {"target_path": "m"},
            "output": {"dir": str(tmp_path), "checkpoint_dir": str(tmp_path / "nfs")},
        }
    )
    result = SimpleNamespace(output_dir=tmp_path / "nfs", final_dir=tmp_path / "nfs" / "final", last_eval=None)
    with pytest.raises(UserError, match=r"output.checkpoint_dir must be storage that every node and the driver share"):
        final_evaluation(cfg, result)
