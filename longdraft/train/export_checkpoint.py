"""``longdraft export CHECKPOINT_DIR OUT_DIR``: a training checkpoint to the serving layout."""

from __future__ import annotations

from pathlib import Path

import torch

from longdraft.model.draft import Eagle3Draft
from longdraft.train.checkpoint import read_checkpoint
from longdraft.train.export import draft_config_from_export, export_draft


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    state = read_checkpoint(checkpoint_dir)
    config = draft_config_from_export(state["extra"]["draft_config"])
    # The embedding is not part of the export (engines use the target's); a placeholder suffices.
    model = Eagle3Draft(config, torch.zeros(config.vocab_size, config.hidden_size))
    model.load_state_dict(state["model"])
    return export_draft(model, out_dir)  # in the target's dtype, which the checkpoint's config records
