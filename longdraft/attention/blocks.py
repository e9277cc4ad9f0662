"""One block of step-0 attention: which local query rows meet which key columns, and how.

A ``BlockPlan`` is a rectangle of (query rows, key columns) computed by one kernel call: in full,
causal (the same positions on both sides), or, for documents and sliding windows, with a band mask
(``band``: see ``band_bias``). ``forward_block`` merges the block's result into a running fp32
output and log-sum-exp; ``backward_block`` adds its gradients given the final output and LSE. The
ring, the gathered K/V and the one-device fast path all run their blocks through these two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longdraft.attention.kernels import block_attention_backward, block_attention_forward


@dataclass(frozen=True)
class BlockPlan:
    rows: slice  # query rows of this rank
    cols: slice  # key columns of the visiting block
    causal: bool
    # (offset, window): row i may see column j iff 0 <= i - j + offset < window (window None: no
    # upper bound); offset = global position of the first row minus that of the first column.
    band: tuple[int, int | None] | None = None


def band_bias(rows: int, cols: int, band: tuple[int, int | None], dtype, device) -> torch.Tensor:
    """Additive ``[rows, cols]`` mask of a band plan: 0 where allowed, -inf elsewhere."""
    offset, window = band
    distance = torch.arange(rows, device=device).unsqueeze(1) - torch.arange(cols, device=device) + offset
    allowed = distance >= 0
    if window is not None:
        allowed &= distance < window
    return torch.zeros(rows, cols, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))


def _bias(plan: BlockPlan, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    if plan.band is None:
        return None
    return band_bias(q.shape[2], k.shape[2], plan.band, q.dtype, q.device)


def merge_into(
    out: torch.Tensor, lse: torch.Tensor, rows: slice, block_out: torch.Tensor, block_lse: torch.Tensor
) -> None:
    """LSE-merge a block into ``out``/``lse`` rows. ``block_lse`` is finite (every planned row sees a
    key); ``lse`` may still be -inf (nothing merged yet), which ``logaddexp`` handles."""
    old_lse = lse[:, :, rows]
    new_lse = torch.logaddexp(old_lse, block_lse)
    out[:, :, rows] = (
        torch.exp(old_lse - new_lse).unsqueeze(-1) * out[:, :, rows]
        + torch.exp(block_lse - new_lse).unsqueeze(-1) * block_out.float()
    )
    lse[:, :, rows] = new_lse


def forward_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: BlockPlan,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
) -> None:
    """Attend ``q[rows]`` to the visiting block's ``k/v[cols]`` and merge into fp32 ``out``/``lse`` in place."""
    qb, kb = q[:, :, plan.rows].contiguous(), k[:, :, plan.cols].contiguous()
    block_out, block_lse = block_attention_forward(
        qb, kb, v[:, :, plan.cols].contiguous(), plan.causal, scale, _bias(plan, qb, kb)
    )
    merge_into(out, lse, plan.rows, block_out, block_lse)


def backward_block(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    plan: BlockPlan,
    scale: float,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
) -> None:
    """One block's gradients from the final ``out``/``lse``, added into fp32 ``dq``/``dk``/``dv`` in place."""
    r, c = plan.rows, plan.cols
    qb, kb = q[:, :, r].contiguous(), k[:, :, c].contiguous()
    dq_b, dk_b, dv_b = block_attention_backward(
        dout[:, :, r].contiguous(),
        qb,
        kb,
        v[:, :, c].contiguous(),
        out[:, :, r].contiguous(),
        lse[:, :, r].contiguous(),
        plan.causal,
        scale,
        _bias(plan, qb, kb),
    )
    dq[:, :, r] += dq_b.float()
    dk[:, :, c] += dk_b.float()
    dv[:, :, c] += dv_b.float()
