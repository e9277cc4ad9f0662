"""Incremental EAGLE-3 draft with a KV cache, run the way a serving engine runs it.

Committed entries: entry ``t`` is computed from the input token ``x[t+1]`` and the feature
``fc(aux[t])`` (aux from the target's forward over verified tokens), at RoPE position ``t``. Its
pre-norm output predicts ``x[t+2]``; at the last verified position that is the token after the
target's bonus token. Chain steps feed back the draft's own pre-norm output with the previously
drafted token at the next RoPE position and append their keys as temporary entries, attended to
causally together with the committed ones: the serving form of training's causal + diagonal mask.
A windowed draft (``config.sliding_window = N``) sees, as in training, only the last N committed
(step-0) entries up to its anchor: its own index for a committed entry, the last committed entry for
a chain step, whose chain entries (the TTT diagonal) stay visible. After verification the chain is discarded and the accepted tokens are committed from target features.

The decoder math is ``Eagle3Draft.layer_step`` itself; only the attention backend differs.
"""

from __future__ import annotations

import math

import torch

from longdraft.attention.heads import repeat_kv
from longdraft.model.draft import Eagle3Draft


class _CachedAttention:
    """Attention backend for ``layer_step``: new queries over cached keys plus their own, causally."""

    def __init__(
        self,
        past_keys: torch.Tensor | None,
        past_values: torch.Tensor | None,
        window: int | None = None,
        committed: int = 0,
    ):
        self.past_keys, self.past_values = past_keys, past_values
        self.window, self.committed = window, committed  # committed: entries that are committed after this call

    def prepare(self, q, k, v):
        return q, k, v

    def attend(self, q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        new_k, new_v = keys[-1], values[-1]
        if self.past_keys is not None:
            new_k = torch.cat([self.past_keys, new_k], dim=2)
            new_v = torch.cat([self.past_values, new_v], dim=2)
        n_rep = q.shape[1] // new_k.shape[1]
        k, v = repeat_kv(new_k, n_rep).float(), repeat_kv(new_v, n_rep).float()
        n_new, n_all = q.shape[2], k.shape[2]
        scores = torch.einsum("bhtd,bhsd->bhts", q.float(), k) / math.sqrt(q.shape[-1])
        # Query i sits at key index (n_all - n_new + i) and sees every key up to itself.
        own_index = n_all - n_new + torch.arange(n_new, device=q.device)
        key_index = torch.arange(n_all, device=q.device)[None, :]
        visible = key_index <= own_index[:, None]
        if self.window is not None:
            anchor = own_index.clamp(max=self.committed - 1)[:, None]
            visible &= (key_index >= self.committed) | (key_index > anchor - self.window)
        probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        return torch.einsum("bhts,bhsd->bhtd", probs, v).to(q.dtype)

    def finish(self, out):
        return out


class DraftRunner:
    """One sequence (batch 1) of incremental draft decoding."""

    def __init__(self, model: Eagle3Draft):
        self.model = model.eval()
        self.reset()

    def reset(self) -> None:
        self._keys: torch.Tensor | None = None  # [1, Hkv, committed + chain, D]
        self._values: torch.Tensor | None = None
        self.committed = 0  # entries computed from verified tokens and target features
        self.chain = 0  # temporary entries of the current draft chain

    @property
    def device(self) -> torch.device:
        return self.model.fc.weight.device

    def _run(self, tokens: torch.Tensor, feature: torch.Tensor, first_position: int, committing: bool) -> torch.Tensor:
        """Append entries for ``tokens`` [T] with pre-fc-applied ``feature`` [T, H]; return pre-norm [T, H]."""
        model = self.model
        n = tokens.shape[0]
        positions = torch.arange(first_position, first_position + n, device=self.device)[None]
        embedding = model.embed(tokens.to(self.device)[None])
        cos, sin = model.rope(feature[None], positions)
        committed = self.committed + (n if committing else 0)
        window = getattr(model.config, "sliding_window", None)
        backend = _CachedAttention(self._keys, self._values, window, committed)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        prenorm = model.layer_step(embedding, feature[None], cos, sin, keys, values, backend)
        self._keys = keys[-1] if self._keys is None else torch.cat([self._keys, keys[-1]], dim=2)
        self._values = values[-1] if self._values is None else torch.cat([self._values, values[-1]], dim=2)
        return prenorm[0]

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """Commit entries ``committed .. committed+T-1`` from input tokens ``x[t+1]`` [T] and target ``aux[t]`` [T, 3H]."""
        if self.chain:
            raise RuntimeError("extend() with an open draft chain; call discard_chain() first")
        if tokens.ndim != 1 or aux.ndim != 2 or tokens.shape[0] != aux.shape[0] or tokens.shape[0] == 0:
            raise ValueError(
                f"extend() needs tokens [T] and aux [T, 3H] with T >= 1, got {tuple(tokens.shape)} "
                f"and {tuple(aux.shape)}"
            )
        feature = self.model.fc(aux.to(self.device, self.model.fc.weight.dtype))
        prenorm = self._run(tokens, feature, self.committed, committing=True)
        self.committed += tokens.shape[0]
        return prenorm

    @torch.no_grad()
    def chain_step(self, token: int, feature: torch.Tensor) -> torch.Tensor:
        """One draft step past the last committed entry: input ``token``, the previous step's pre-norm ``feature`` [H]."""
        if self.committed == 0:
            raise RuntimeError("chain_step() before any committed entry")
        position = self.committed + self.chain  # last committed position + chain step index
        prenorm = self._run(torch.tensor([token]), feature[None], position, committing=False)
        self.chain += 1
        return prenorm[0]

    def discard_chain(self) -> None:
        if self.chain and self._keys is not None:
            self._keys = self._keys[:, :, : self.committed]
            self._values = self._values[:, :, : self.committed]
        self.chain = 0

    @torch.no_grad()
    def draft_token(self, prenorm: torch.Tensor) -> int:
        """Greedy draft token of a pre-norm state [H], as a target-vocab id (through ``d2t``)."""
        draft_id = int(self.model.logits(prenorm).argmax(-1))
        return int(self.model.draft_to_target[draft_id])
