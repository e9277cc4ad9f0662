"""Random per-sample tensors with the shapes a producer writes (for store tests)."""

import torch


def make_sample(length: int, hidden: int, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 1000, (length,), generator=g),
        "aux_hidden": torch.randn(length, 3 * hidden, generator=g).to(dtype),
        "last_hidden": torch.randn(length, hidden, generator=g).to(dtype),
    }
