"""USP attention (Ulysses x ring, TTT diagonal) against the single-device reference, on gloo ranks.

Every rank builds the full inputs from one seed, runs the reference on the whole sequence, and
compares its own shard of the outputs and gradients. One spawn per world size runs all cases of
that size (spawning is the slow part); each case is then its own test.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist

from longdraft.attention.factory import make_attention_backend
from longdraft.attention.reference import ttt_attention_reference
from longdraft.attention.usp import USPAttentionBackend
from longdraft.parallel.mesh import USPMesh
from tests import layout_positions as shard_layout
from tests.rank_runs import cached_run_ranks

FP32_TOL = 1e-5
# bf16: each rounding to bf16 has relative error <= u = 2^-8. The reference rounds once (its output or the
# leaf gradient); the USP path also rounds every ring block's output and every block's dq/dk/dv
# to bf16 before merging/summing them in fp32, and the bf16 flash kernel rounds its probabilities.
# With up to R = 4 blocks plus the diagonal terms that is a handful of roundings, so the error is
# bounded relative to the largest magnitude of the compared tensor: 2^-5 of it (8 u). Measured
# worst case over the cases below: 9e-3 relative (about 2.3 u).
BF16_REL_TOL = 2.0**-5


@dataclass(frozen=True)
class Case:
    ulysses: int
    ring: int
    layout: str
    seq_len: int
    heads: int
    kv_heads: int
    ttt: int
    dtype: str = "float32"
    batch: int = 2
    head_dim: int = 8
    ring_mode: str = "ring"  # or "gather": step-0 K/V gathered once for all TTT steps

    @property
    def name(self) -> str:
        return (
            f"U{self.ulysses}R{self.ring}-{self.layout}-L{self.seq_len}-H{self.heads}kv{self.kv_heads}"
            f"-ttt{self.ttt}-{self.dtype}-{self.ring_mode}"
        )


ATTN_CASES = {
    2: [
        Case(2, 1, "contiguous", 13, 4, 2, 3),
        Case(2, 1, "contiguous", 10, 4, 1, 7),  # KV heads < U: replicated
        Case(1, 2, "contiguous", 13, 4, 2, 7),
        Case(1, 2, "zigzag", 11, 4, 1, 3),
        Case(1, 2, "zigzag", 16, 4, 4, 1),
        Case(2, 1, "zigzag", 9, 4, 2, 1),
        Case(2, 1, "contiguous", 13, 4, 2, 3, "bfloat16"),
        Case(1, 2, "zigzag", 14, 4, 2, 3, "bfloat16"),
        Case(1, 2, "contiguous", 13, 4, 2, 7, ring_mode="gather"),
        Case(1, 2, "zigzag", 11, 4, 1, 3, ring_mode="gather"),
        Case(1, 2, "zigzag", 14, 4, 2, 3, "bfloat16", ring_mode="gather"),
    ],
    4: [
        Case(2, 2, "contiguous", 17, 4, 2, 3),
        Case(2, 2, "zigzag", 18, 4, 1, 7),
        Case(4, 1, "contiguous", 10, 4, 2, 3),  # 2 KV heads over 4 Ulysses ranks
        Case(4, 1, "zigzag", 15, 4, 1, 1),
        Case(1, 4, "contiguous", 19, 4, 2, 7),
        Case(1, 4, "zigzag", 19, 4, 2, 3),
        Case(2, 1, "contiguous", 12, 4, 4, 3),  # DP = 2: two SP groups side by side
        Case(1, 2, "zigzag", 10, 4, 2, 3),  # DP = 2
        Case(2, 2, "zigzag", 18, 4, 2, 7, "bfloat16"),
        Case(1, 4, "contiguous", 16, 4, 1, 3, "bfloat16"),
        Case(2, 2, "zigzag", 18, 4, 1, 7, ring_mode="gather"),
        Case(1, 4, "contiguous", 19, 4, 2, 7, ring_mode="gather"),
        Case(1, 2, "zigzag", 10, 4, 2, 3, ring_mode="gather"),  # DP = 2
        Case(2, 2, "zigzag", 18, 4, 2, 7, "bfloat16", ring_mode="gather"),
    ],
}


def _mesh(cache: dict, case: Case) -> USPMesh:
    # Meshes are cached per (U, R): every rank runs the same case list, so creation order matches.
    key = (case.ulysses, case.ring)
    if key not in cache:
        cache[key] = USPMesh.build(case.ulysses, case.ring)
    return cache[key]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _scale(t: torch.Tensor) -> float:
    return t.float().abs().max().item()


def _run_attention_case(mesh: USPMesh, case: Case, seed: int) -> dict:
    U, R, K, L = case.ulysses, case.ring, case.ttt, case.seq_len
    dtype = getattr(torch, case.dtype)
    # Each DP replica gets its own data, like real training.
    gen = torch.Generator().manual_seed(1000 * seed + mesh.coords.dp)
    B, H, Hkv, D = case.batch, case.heads, case.kv_heads, case.head_dim

    def rand(heads: int) -> torch.Tensor:
        return torch.randn(B, heads, L, D, generator=gen).to(dtype)

    full_q = [rand(H).requires_grad_() for _ in range(K)]
    full_k = [rand(Hkv).requires_grad_() for _ in range(K)]
    full_v = [rand(Hkv).requires_grad_() for _ in range(K)]
    weights = [torch.randn(B, H, L, D, generator=gen) for _ in range(K)]
    ref_out, ref_loss = [], 0.0
    for k in range(K):
        out = ttt_attention_reference(full_q[k], full_k[: k + 1], full_v[: k + 1])
        ref_out.append(out.detach())
        ref_loss = ref_loss + (out.float() * weights[k]).sum()
    ref_loss.backward()

    sp = mesh.coords.sp_rank

    def shard(t: torch.Tensor) -> torch.Tensor:
        return shard_layout.scatter_sequence(t.detach(), U, R, case.layout, dim=2)[sp]

    loc_q = [shard(t).requires_grad_() for t in full_q]
    loc_k = [shard(t).requires_grad_() for t in full_k]
    loc_v = [shard(t).requires_grad_() for t in full_v]
    backend = USPAttentionBackend(mesh, H, Hkv, order=case.layout, ring_mode=case.ring_mode)
    valid = shard_layout.query_positions(L, U, R, sp, case.layout) < L
    keys, values, loss, result = [], [], 0.0, {"out": 0.0, "grad": 0.0, "out_rel": 0.0, "grad_rel": 0.0}
    for k in range(K):
        q, kk, vv = backend.prepare(loc_q[k], loc_k[k], loc_v[k])
        keys.append(kk)
        values.append(vv)
        out = backend.finish(backend.attend(q, keys, values))
        if out.dtype != dtype or out.shape != loc_q[k].shape:
            raise AssertionError(
                f"finish() returned {out.dtype} {tuple(out.shape)}, expected {dtype} {tuple(loc_q[k].shape)}"
            )
        err = _max_err(out[:, :, valid], shard(ref_out[k])[:, :, valid])
        result["out"] = max(result["out"], err)
        result["out_rel"] = max(result["out_rel"], err / _scale(ref_out[k]))
        loss = loss + (out.float() * shard(weights[k])).sum()
    loss.backward()
    for local, full in zip(loc_q + loc_k + loc_v, full_q + full_k + full_v):
        err = _max_err(local.grad, shard(full.grad))
        result["grad"] = max(result["grad"], err)
        result["grad_rel"] = max(result["grad_rel"], err / max(_scale(full.grad), 1e-12))
    return result


# --- a small model: Linear -> RoPE -> backend over the TTT steps -> o_proj ----------------------


class TinyDraftAttention(torch.nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = torch.nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = torch.nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = torch.nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = torch.nn.Linear(heads * head_dim, hidden, bias=False)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        inv_freq = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float32) / half))
        angles = positions.float()[:, None] * inv_freq[None, :]
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)

    def forward(self, inputs: list[torch.Tensor], positions: torch.Tensor, backend) -> list[torch.Tensor]:
        """Step k's input is ``inputs[k]`` plus the previous step's output (like the TTT unroll)."""
        keys, values, outs = [], [], []
        for k, x in enumerate(inputs):
            if outs:
                x = x + outs[-1]
            q = self._rope(self._heads(self.q_proj(x), self.heads), positions + k)
            kk = self._rope(self._heads(self.k_proj(x), self.kv_heads), positions + k)
            vv = self._heads(self.v_proj(x), self.kv_heads)
            q, kk, vv = backend.prepare(q, kk, vv)
            keys.append(kk)
            values.append(vv)
            out = backend.finish(backend.attend(q, keys, values))
            b, _, t, _ = out.shape
            outs.append(self.o_proj(out.transpose(1, 2).reshape(b, t, -1)))
        return outs


def _masked_loss(
    outs: list[torch.Tensor], weights: list[torch.Tensor], mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the masked positions (local), and the number of them."""
    total = outs[0].new_zeros(())
    for k, (out, w) in enumerate(zip(outs, weights)):
        total = total + 0.8**k * (out * w * mask[None, :, None]).sum()
    return total, mask.sum()


def _run_model_case(mesh: USPMesh, case: Case, seed: int, empty_rank: int) -> dict:
    """The SP rank ``empty_rank`` holds no loss tokens; the others do."""
    U, R, K, L = case.ulysses, case.ring, case.ttt, case.seq_len
    hidden, B = 16, case.batch
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyDraftAttention(hidden, case.heads, case.kv_heads, case.head_dim)
    ref_model = TinyDraftAttention(hidden, case.heads, case.kv_heads, case.head_dim)
    ref_model.load_state_dict(model.state_dict())
    full_inputs = [torch.randn(B, L, hidden, generator=gen).requires_grad_() for _ in range(K)]
    weights = [torch.randn(B, L, hidden, generator=gen) for _ in range(K)]
    sp = mesh.coords.sp_rank
    positions = shard_layout.query_positions(L, U, R, sp, case.layout)
    empty_positions = shard_layout.query_positions(L, U, R, empty_rank, case.layout)
    full_mask = torch.ones(L)
    full_mask[empty_positions[empty_positions < L]] = 0.0

    ref_outs = ref_model(full_inputs, torch.arange(L), make_attention_backend("reference"))
    ref_sum, ref_count = _masked_loss(ref_outs, weights, full_mask)
    (ref_sum / ref_count).backward()

    def shard(t: torch.Tensor) -> torch.Tensor:
        return shard_layout.scatter_sequence(t.detach(), U, R, case.layout, dim=1)[sp]

    loc_inputs = [shard(t).requires_grad_() for t in full_inputs]
    loc_mask = shard(full_mask[None])[0]
    backend = USPAttentionBackend(mesh, case.heads, case.kv_heads, order=case.layout, ring_mode=case.ring_mode)
    outs = model(loc_inputs, positions, backend)
    local_sum, local_count = _masked_loss(outs, [shard(w) for w in weights], loc_mask)
    count = local_count.clone()
    assert mesh.sp_size == mesh.world_size  # the SP group is the whole world
    dist.all_reduce(count)
    if local_count.item() == 0:
        # As a trainer does for a shard without loss tokens: a loss that does not depend on the
        # attention output. The guard keeps every step's attention in the graph so this rank
        # still runs the backward collectives its peers run.
        local_sum = sum(p.sum() for p in model.parameters()) * 0.0
    loss = local_sum / count + sum(o.sum() for o in outs) * 0.0
    loss.backward()

    total = loss.detach().clone()
    dist.all_reduce(total)
    grad_err = 0.0
    for p, ref_p in zip(model.parameters(), ref_model.parameters()):
        g = p.grad.clone()
        dist.all_reduce(g)  # the gradient of the sample is the SUM over SP
        grad_err = max(grad_err, _max_err(g, ref_p.grad))
    input_err = max(_max_err(loc.grad, shard(full.grad)) for loc, full in zip(loc_inputs, full_inputs))
    valid = positions < L
    out_err = max(_max_err(o[:, valid], shard(r)[:, valid]) for o, r in zip(outs, ref_outs))
    return {
        "loss": abs(total.item() - (ref_sum / ref_count).item()),
        "out": out_err,
        "weight_grad": grad_err,
        "input_grad": input_err,
        "local_tokens": local_count.item(),
    }


MODEL_CASES = {
    2: [
        (Case(1, 2, "zigzag", 14, 4, 2, 3, batch=1), 0),
        (Case(2, 1, "contiguous", 11, 4, 1, 3, batch=1), 1),
        (Case(1, 2, "contiguous", 12, 4, 2, 3, batch=1), 0),
    ],
    4: [
        (Case(2, 2, "contiguous", 15, 4, 2, 3, batch=1), 1),
        (Case(2, 2, "zigzag", 16, 4, 1, 2, batch=1), 2),
    ],
}


def _worker(rank: int, world: int) -> dict:
    meshes: dict = {}
    results = {}
    for i, case in enumerate(ATTN_CASES[world]):
        results[case.name] = _run_attention_case(_mesh(meshes, case), case, seed=i)
    for i, (case, empty_rank) in enumerate(MODEL_CASES[world]):
        results["model-" + case.name] = _run_model_case(_mesh(meshes, case), case, seed=100 + i, empty_rank=empty_rank)
    return results


def _results(world: int) -> list[dict]:
    return cached_run_ranks(_worker, world, timeout_s=100)


def _attn_params():
    return [pytest.param(w, c, id=f"w{w}-{c.name}") for w, cases in ATTN_CASES.items() for c in cases]


def _model_params():
    return [pytest.param(w, c, e, id=f"w{w}-{c.name}-empty{e}") for w, cases in MODEL_CASES.items() for c, e in cases]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("world,case", _attn_params())
def test_usp_attention_matches_reference(world: int, case: Case) -> None:
    per_rank = [r[case.name] for r in _results(world)]
    if case.dtype == "float32":
        worst_out = max(r["out"] for r in per_rank)
        worst_grad = max(r["grad"] for r in per_rank)
        assert worst_out <= FP32_TOL and worst_grad <= FP32_TOL, (
            f"{case.name}: max |out - ref| = {worst_out:.2e}, max |grad - ref| = {worst_grad:.2e} (tol {FP32_TOL})"
        )
    else:
        worst_out = max(r["out_rel"] for r in per_rank)
        worst_grad = max(r["grad_rel"] for r in per_rank)
        assert worst_out <= BF16_REL_TOL and worst_grad <= BF16_REL_TOL, (
            f"{case.name}: relative max error out {worst_out:.2e}, grads {worst_grad:.2e} (tol {BF16_REL_TOL:.2e})"
        )


@pytest.mark.timeout(150)
@pytest.mark.parametrize("world,case,empty_rank", _model_params())
def test_model_gradients_with_a_rank_without_loss_tokens(world: int, case: Case, empty_rank: int) -> None:
    per_rank = [r["model-" + case.name] for r in _results(world)]
    assert per_rank[empty_rank]["local_tokens"] == 0
    assert all(r["local_tokens"] > 0 for i, r in enumerate(per_rank) if i % (case.ulysses * case.ring) != empty_rank)
    for key in ("loss", "out", "weight_grad", "input_grad"):
        worst = max(r[key] for r in per_rank)
        assert worst <= FP32_TOL, f"{case.name}: {key} deviates by {worst:.2e} from the reference (tol {FP32_TOL})"
