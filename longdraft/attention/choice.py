"""Which attention backend a layout uses: ``auto`` follows from the sequence-parallel size.

Pure (no torch import), so config validation refuses a bad combination at start-up with the
same rule the factory applies.
"""

from __future__ import annotations

from longdraft.choices import ATTENTION_BACKENDS as BACKENDS
from longdraft.choices import RING_MODES


def choose_attention_backend(name: str, sp_size: int) -> str:
    """``auto``: ``usp`` when a sequence spans ranks (``sp_size > 1``), else ``fast``.

    Raises ``ValueError`` whose message says what fits, for a name that cannot run this layout.
    """
    if name not in BACKENDS:
        raise ValueError(f"one of {BACKENDS}, not {name!r}")
    if name == "auto":
        return "usp" if sp_size > 1 else "fast"
    if sp_size > 1 and name != "usp":
        raise ValueError(
            f"'usp' or 'auto' when a sequence spans ranks (sp_ulysses_size*sp_ring_size = {sp_size}); "
            f"'{name}' holds the whole sequence on one device"
        )
    if sp_size == 1 and name == "usp":
        raise ValueError(
            "'fast', 'reference' or 'auto' with one rank per sequence; 'usp' needs sp_ulysses_size*sp_ring_size > 1"
        )
    return name


def choose_ring_mode(mode: str, gathered_bytes: int, budget_bytes: int) -> str:
    """``auto``: ``gather`` (step-0 K/V exchanged once per layer) when the gathered K/V and their
    gradients, ``gathered_bytes``, fit in ``budget_bytes``; else ``ring`` (one block at a time)."""
    if mode not in RING_MODES:
        raise ValueError(f"one of {RING_MODES}, not {mode!r}")
    if mode != "auto":
        return mode
    return "gather" if gathered_bytes <= budget_bytes else "ring"
