"""A target checkpoint that lacks a tensor the trainers or the vLLM capture need is refused with one
line naming the file, the tensor names looked for and what was expected."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from longdraft.errors import UserError
from longdraft.target.spec import TargetSpec
from longdraft.target.weights import head_rows, load_embedding_and_head, load_final_norm

V, H = 16, 4


def _checkpoint(path, tensors: dict, config: dict | None = None, sharded: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config if config is not None else {"rms_norm_eps": 1e-6}))
    name = "model-00001-of-00001.safetensors" if sharded else "model.safetensors"
    save_file(tensors, str(path / name))
    if sharded:
        index = {"metadata": {}, "weight_map": dict.fromkeys(tensors, name)}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


def test_no_head_and_no_embedding(tmp_path):
    target = _checkpoint(tmp_path, {"model.norm.weight": torch.ones(H)})
    with pytest.raises(UserError) as err:
        head_rows(target)
    message = str(err.value)
    assert "\n" not in message and str(target / "model.safetensors") in message
    assert "lm_head.weight or model.embed_tokens.weight" in message and "expected the target's lm_head" in message


def test_no_embedding(tmp_path):
    target = _checkpoint(tmp_path, {"lm_head.weight": torch.ones(V, H)}, sharded=True)
    with pytest.raises(
        UserError, match=r"model\.safetensors\.index\.json: no tensor named model\.embed_tokens\.weight"
    ):
        load_embedding_and_head(target, tied=False)
    with pytest.raises(UserError, match="expected the target's input embedding"):
        load_embedding_and_head(target, tied=True)


def test_no_head_and_untied(tmp_path):
    target = _checkpoint(tmp_path, {"model.embed_tokens.weight": torch.ones(V, H)}, {"tie_word_embeddings": False})
    with pytest.raises(UserError, match=r"no tensor named lm_head\.weight; .*tie_word_embeddings is false"):
        load_embedding_and_head(target, tied=False)
    tied = _checkpoint(
        tmp_path / "tied", {"model.embed_tokens.weight": torch.ones(V, H)}, {"tie_word_embeddings": True}
    )
    embedding, head = load_embedding_and_head(tied, tied=True)
    assert head is embedding  # a tied target reuses its embedding


def test_no_final_norm(tmp_path):
    target = _checkpoint(tmp_path, {"lm_head.weight": torch.ones(V, H)})
    with pytest.raises(UserError, match=r"model\.safetensors: no tensor named model\.norm\.weight or .*final RMSNorm"):
        load_final_norm(target)


def test_no_norm_epsilon(tmp_path):
    config = {"model_type": "llama", "hidden_size": H, "num_attention_heads": 1}
    target = _checkpoint(tmp_path, {"model.norm.weight": torch.ones(H)}, config)
    spec = TargetSpec.load(target)
    assert torch.equal(spec.final_norm_weight(), torch.ones(H))
    spec = dataclasses.replace(spec, rms_norm_eps=None)  # a config without it (transformers' own classes have it)
    with pytest.raises(UserError, match=r"config\.json: no rms_norm_eps; expected"):
        _ = spec.final_norm_eps
