"""Hand-checked alignment of the TTT unroll: token, target row, loss-mask position, RoPE position."""

import torch

import longdraft.model.ttt as ttt
from longdraft.attention.factory import make_attention_backend
from longdraft.model.ttt import step_valid_masks, target_ok, ttt_unroll
from tests.draft_factory import HIDDEN, batch_of, random_samples, tiny_draft

L, K = 6, 3


def _spy_run(monkeypatch):
    model, target_head = tiny_draft(draft_vocab=50)  # full vocab: every target argmax is in vocab
    sample = random_samples([L])[0]
    sample["input_ids"] = torch.tensor([10, 11, 12, 13, 14, 15])
    sample["loss_mask"] = torch.tensor([0, 1, 1, 0, 1, 1], dtype=torch.bool)
    # Target row p is recognisable: its first coordinate is 100 + p.
    sample["last_hidden"][:, 0] = 100 + torch.arange(L, dtype=torch.float32)
    batch = batch_of([sample], K)
    seen = {"ids": [], "positions": [], "target_rows": []}
    embed, rope, loss = model.embed, model.rope, ttt.soft_cross_entropy_steps
    monkeypatch.setattr(model, "embed", lambda ids: (seen["ids"].append(ids.clone()), embed(ids))[1])
    monkeypatch.setattr(
        model, "rope", lambda x, pos, lengths: (seen["positions"].append(pos.clone()), rope(x, pos, lengths))[1]
    )

    def loss_spy(xs, rows, w, th, tw, chunk, meter=None, precision="fp32", target_logits=None):
        seen["target_rows"] += [th[r, 0].clone() for r in rows]
        return loss(xs, rows, w, th, tw, chunk, meter, precision, target_logits)

    monkeypatch.setattr(ttt, "soft_cross_entropy_steps", loss_spy)
    valid = step_valid_masks(batch, target_ok(batch, target_head, model.t2d, 4), K)
    ttt_unroll(model, batch, valid, torch.ones(K), target_head[model.draft_to_target], make_attention_backend("fast"))
    return seen, valid


def test_every_step_reads_the_right_positions(monkeypatch):
    seen, valid = _spy_run(monkeypatch)
    pad = 0  # tokens past the end of the sequence are padding id 0
    assert [ids[0].tolist() for ids in seen["ids"]] == [
        [11, 12, 13, 14, 15, pad],  # step 0: x[t+1]
        [12, 13, 14, 15, pad, pad],  # step 1: x[t+2]
        [13, 14, 15, pad, pad, pad],  # step 2: x[t+3]
    ]
    assert [p[0].tolist() for p in seen["positions"]] == [[t + k for t in range(L)] for k in range(K)]
    # loss_mask = 0 1 1 0 1 1; step k, query t: loss_mask[t+k] and a target row t+k+1 < L.
    assert [v[0].int().tolist() for v in valid] == [
        [0, 1, 1, 0, 1, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 0, 1, 0, 0, 0],
    ]
    # Target rows (first coordinate 100 + row) used by the valid queries of each step: row t+k+1.
    for k, rows in enumerate(seen["target_rows"]):
        queries = valid[k][0].nonzero().flatten()
        assert rows.tolist() == [100.0 + t + k + 1 for t in queries.tolist()]


def test_out_of_vocab_targets_are_dropped():
    model, target_head = tiny_draft(draft_vocab=30)
    sample = random_samples([L])[0]
    sample["loss_mask"][:] = True
    batch = batch_of([sample], K)
    ok = target_ok(batch, target_head, model.t2d, 4)
    argmax = (sample["last_hidden"] @ target_head.t()).argmax(-1)
    assert ok[0, 0, :L].tolist() == model.t2d[argmax].tolist()
    assert not ok[0, 0, L:].any()
    assert sample["last_hidden"].shape[1] == HIDDEN
