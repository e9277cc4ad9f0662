"""Run-length packed 0/1 loss masks.

Runs alternate 0,1,0,1,... and always start with a 0-run (which may have length 0), so
`0011100110` packs to `[2, 3, 2, 2, 1]`. An empty mask packs to `[]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pack_loss_mask(mask: Sequence[int] | Sequence[bool] | torch.Tensor | np.ndarray) -> list[int]:
    """Run-length encode a 0/1 mask; the first run counts zeros (possibly 0 of them).

    Vectorised (a 32K-token mask per sample): values are truncated to integers as ``int()`` does."""
    values = mask.detach().flatten().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask).reshape(-1)
    if values.size == 0:
        return []
    bits = values.astype(np.int64)
    bad = np.flatnonzero((bits != 0) & (bits != 1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"loss mask value at position {i} is {values[i].item()!r}; expected 0 or 1")
    changes = np.flatnonzero(bits[1:] != bits[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [bits.size]))).tolist()
    return [0, *runs] if bits[0] == 1 else runs


def _check_runs(runs: Sequence[int]) -> None:
    for i, n in enumerate(runs):
        if n < 0:
            raise ValueError(f"packed loss mask run {i} has negative length {n}")


def unpack_loss_mask(packed: Sequence[int], length: int | None = None, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Expand a packed mask to a 1-D tensor; with `length`, truncate or zero-pad to it."""
    runs = [int(n) for n in packed]
    _check_runs(runs)
    bits = (torch.arange(len(runs)) % 2).to(dtype)
    mask = torch.repeat_interleave(bits, torch.tensor(runs, dtype=torch.long)) if runs else torch.zeros(0, dtype=dtype)
    if length is not None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if mask.numel() >= length:
            mask = mask[:length]
        else:
            mask = torch.cat([mask, torch.zeros(length - mask.numel(), dtype=dtype)])
    return mask
