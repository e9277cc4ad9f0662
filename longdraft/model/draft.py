"""The EAGLE-3 draft model: ``fc``, one Llama decoder layer over [embedding, feature], ``norm``, ``lm_head``.

Parameter names equal the exported checkpoint keys (``fc.weight``, ``midlayer.*``, ``norm.weight``,
``lm_head.weight``) so export is a plain state-dict copy. The target's embedding is a frozen buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from longdraft.attention.factory import AttentionBackend


class SampleRotary(nn.Module):
    """RoPE of whole samples: cos/sin at global positions, with the frequencies that the sample's
    global length ``L`` selects.

    transformers' rotary module picks ``dynamic`` and ``longrope`` frequencies from the largest
    position of each call, and keeps them as state. A rank holding some positions of a sample, or a
    TTT step (positions + k), would then rotate with other frequencies than one device holding the
    sample. Here the frequencies are a pure function of (config, L): the ones transformers' module
    uses when handed positions ``0..L-1`` in one call, from a fresh start.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        self._init = (
            LlamaRotaryEmbedding.compute_default_rope_parameters
            if self.rope_type == "default"
            else ROPE_INIT_FUNCTIONS[self.rope_type]
        )
        inv_freq, self.attention_scaling = self._init(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def frequencies(self, length: int) -> tuple[torch.Tensor, float]:
        """(inverse frequencies, cos/sin scale) for a sample of ``length`` tokens."""
        device = self.inv_freq.device
        if "dynamic" in self.rope_type and length > self.config.max_position_embeddings:
            # seq_len as a tensor, as transformers passes it: the same rounding of the new base
            return self._init(self.config, device, seq_len=torch.tensor(length, device=device))
        if self.rope_type == "longrope":
            original = self.config.rope_parameters["original_max_position_embeddings"]
            if length > original:
                return self._init(self.config, device, seq_len=original + 1)[0], self.attention_scaling
        return self.inv_freq, self.attention_scaling

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, lengths: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[B, T, D]`` at ``positions`` ``[B, T]``; row ``b`` uses the frequencies of a
        sample of ``lengths[b]`` tokens (None: the largest position + 1, transformers' rule for a
        call that holds the whole sequence, as serving does)."""
        if lengths is None:
            lengths = [int(positions.max()) + 1] * positions.shape[0]
        if len(lengths) != positions.shape[0]:
            raise ValueError(f"{len(lengths)} sample lengths for {positions.shape[0]} rows of positions")
        if len(set(lengths)) == 1:
            return self._cos_sin(x, positions, *self.frequencies(lengths[0]))
        rows = [self._cos_sin(x, positions[b : b + 1], *self.frequencies(n)) for b, n in enumerate(lengths)]
        return torch.cat([c for c, _ in rows]), torch.cat([s for _, s in rows])

    @torch.no_grad()
    def documents(
        self, x: torch.Tensor, positions: torch.Tensor, doc_ids: torch.Tensor, doc_lengths: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[1, T, D]`` of one packed row: position ``i`` (``positions[0, i]``, inside its
        document) rotates with the frequencies of its document's length (``doc_ids[i]``; -1, tail
        padding, takes the last document's), as that document alone would."""
        freqs = [self.frequencies(n) for n in doc_lengths]
        if all(f[0] is self.inv_freq for f in freqs):  # frequencies that do not depend on the length
            return self._cos_sin(x, positions, self.inv_freq, self.attention_scaling)
        doc_ids = torch.where(doc_ids >= 0, doc_ids, torch.full_like(doc_ids, len(doc_lengths) - 1))
        cos = torch.empty((*positions.shape, self.inv_freq.numel() * 2), dtype=x.dtype, device=x.device)
        sin = torch.empty_like(cos)
        for d, (inv_freq, scale) in enumerate(freqs):
            rows = doc_ids == d
            if bool(rows.any()):
                cos[:, rows], sin[:, rows] = self._cos_sin(x, positions[:, rows], inv_freq, scale)
        return cos, sin

    @staticmethod
    def _cos_sin(x, positions, inv_freq, scale):
        # The same operations, in the same order, as transformers' module: bit-identical cos/sin.
        freqs = positions[..., None].float() * inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scale).to(dtype=x.dtype), (emb.sin() * scale).to(dtype=x.dtype)


class DraftAttention(nn.Module):
    """Llama attention whose q/k/v read the 2H-wide [embedding, feature] input."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        width = 2 * config.hidden_size
        self.q_proj = nn.Linear(width, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def output(self, attn: torch.Tensor) -> torch.Tensor:
        batch, _, seq, _ = attn.shape
        return self.o_proj(attn.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))


class DraftDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.hidden_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = DraftAttention(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)


class Eagle3Draft(nn.Module):
    def __init__(self, config: LlamaConfig, target_embedding: torch.Tensor):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        if tuple(target_embedding.shape) != (config.vocab_size, hidden):
            raise ValueError(
                f"target embedding has shape {tuple(target_embedding.shape)}, expected ({config.vocab_size}, {hidden})"
            )
        self.register_buffer("embed_tokens", target_embedding.detach().clone(), persistent=False)
        self.fc = nn.Linear(3 * config.target_hidden_size, hidden, bias=False)
        self.midlayer = DraftDecoderLayer(config)
        self.norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False)
        self.rotary = SampleRotary(config)
        vocab, draft_vocab = config.vocab_size, config.draft_vocab_size
        self.register_buffer("d2t", torch.zeros(draft_vocab, dtype=torch.int64))
        self.register_buffer(
            "t2d", torch.ones(vocab, dtype=torch.bool) if vocab == draft_vocab else torch.zeros(vocab, dtype=torch.bool)
        )

    def set_vocab_mapping(self, d2t: torch.Tensor, t2d: torch.Tensor) -> None:
        if d2t.shape != self.d2t.shape or t2d.shape != self.t2d.shape:
            raise ValueError(
                f"vocab mapping shapes {tuple(d2t.shape)}/{tuple(t2d.shape)} do not match the draft's {tuple(self.d2t.shape)}/{tuple(self.t2d.shape)}"
            )
        self.d2t.copy_(d2t)
        self.t2d.copy_(t2d)

    @property
    def draft_to_target(self) -> torch.Tensor:
        return torch.arange(self.config.draft_vocab_size, device=self.d2t.device) + self.d2t

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.embed_tokens)

    def rope(self, x: torch.Tensor, positions: torch.Tensor, lengths: Sequence[int] | None = None):
        """cos/sin at global ``positions`` ``[B, T]``; ``lengths``: each row's sample length (training
        always passes it, see ``SampleRotary``)."""
        return self.rotary(x, positions, lengths)

    def layer_step(
        self,
        embedding: torch.Tensor,
        feature: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        backend: AttentionBackend,
    ) -> torch.Tensor:
        """One TTT step of the decoder layer; appends this step's prepared k/v to ``keys``/``values``.

        Returns the pre-norm output, which is both the next step's feature and the input of ``logits``.
        """
        layer = self.midlayer
        x = torch.cat([layer.input_layernorm(embedding), layer.hidden_norm(feature)], dim=-1)
        q, k, v = layer.self_attn.project(x, cos, sin)
        q, k, v = backend.prepare(q, k, v)
        keys.append(k)
        values.append(v)
        attn = backend.finish(backend.attend(q, keys, values))
        hidden = feature + layer.self_attn.output(attn)
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def logits(self, prenorm: torch.Tensor) -> torch.Tensor:
        """Draft-vocab logits of pre-norm hidden states."""
        return self.lm_head(self.norm(prenorm))
