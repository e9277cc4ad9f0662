"""Config: YAML + overrides, path resolution, validation errors that name key, value and place."""

from __future__ import annotations

from pathlib import Path

import pytest

from longdraft.config import Config, ConfigError, config_from_dict, load_config, save_config

BASE_YAML = """\
data:
  train_path: data/train.jsonl
model:
  target_path: /abs/target
training:
  lr: 1e-4
  batch_size: 8
output:
  dir: out
"""


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    p = tmp_path / "cfg" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def error_of(path: Path | None, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return str(e.value)


def test_defaults_paths_and_scientific_floats(tmp_path):
    cfg = load_config(write(tmp_path, BASE_YAML), [])
    assert isinstance(cfg, Config)
    # Relative paths resolve against the YAML file's directory, absolute ones stay.
    assert cfg.data.train_path == str((tmp_path / "cfg" / "data" / "train.jsonl").resolve())
    assert cfg.output.dir == str((tmp_path / "cfg" / "out").resolve())
    assert cfg.model.target_path == "/abs/target"
    assert cfg.data.eval_path is None
    # Plain YAML 1.1 would read `1e-4` as a string.
    assert cfg.training.lr == pytest.approx(1e-4) and isinstance(cfg.training.lr, float)
    t = cfg.training
    assert (t.max_seq_length, t.ttt_length, t.micro_batch_size, t.max_grad_norm) == (2048, 7, 1, 0.5)
    assert (t.attention_backend, t.precision, t.shard_order, t.device) == ("auto", "auto", "contiguous", "auto")
    assert cfg.attention_backend == "fast" and cfg.inference.engine == "hf"
    assert cfg.store.backend == "ray" and cfg.store.mooncake.metadata_server == "P2PHANDSHAKE"
    assert cfg.store.mooncake.master_address is None and cfg.store.mooncake.global_segment_size_mb is None
    assert cfg.inference.batch_size == 4 and cfg.eval.max_new_tokens == 64 and cfg.output.plot is True
    assert (cfg.sp_size, cfg.dp_size, cfg.accumulation_steps) == (1, 1, 8)


def test_overrides_parse_yaml_scalars_and_nested_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        write(tmp_path, BASE_YAML),
        [
            "training.lr=3e-4",
            "training.resume=true",
            "model.aux_layers=[1, 3, 4]",
            "store.backend=mooncake",
            "store.mooncake.protocol=rdma",
            "store.mooncake.master_address=127.0.0.1:50051",
            "training.num_trainers=8",
            "training.sp_ulysses_size=2",
            "training.sp_ring_size=2",
            "training.attention_backend=usp",
            "training.micro_batch_size=1",
            "training.batch_size=8",
            "data.eval_path=eval.jsonl",
            "training.max_grad_norm=1",
        ],
    )
    assert cfg.training.lr == pytest.approx(3e-4)
    assert cfg.training.resume is True
    assert cfg.model.aux_layers == [1, 3, 4]
    assert cfg.store.backend == "mooncake" and cfg.store.mooncake.protocol == "rdma"
    assert cfg.store.mooncake.master_address == "127.0.0.1:50051"
    assert (cfg.sp_size, cfg.dp_size, cfg.accumulation_steps) == (4, 2, 4)
    assert cfg.data.eval_path == str(tmp_path / "eval.jsonl")  # override paths: relative to the CWD
    assert cfg.training.max_grad_norm == 1.0 and isinstance(cfg.training.max_grad_norm, float)


def test_override_can_fix_a_bad_file_value(tmp_path):
    path = write(tmp_path, BASE_YAML + "eval:\n  num_prompts: many\n")
    assert "eval.num_prompts" in error_of(path, [])
    assert load_config(path, ["eval.num_prompts=3"]).eval.num_prompts == 3


def test_unknown_keys_name_the_key_and_yaml_line(tmp_path):
    path = write(tmp_path, BASE_YAML.replace("  batch_size: 8\n", "  batch_size: 8\n  btach_size: 4\n"))
    msg = error_of(path, [])
    assert f"{path}:8" in msg and "training.btach_size" in msg and "batch_size" in msg
    msg = error_of(write(tmp_path, BASE_YAML + "extra:\n  a: 1\n"), [])
    assert ":10" in msg and "'extra'" in msg and "training" in msg
    msg = error_of(write(tmp_path, BASE_YAML), ["store.mooncake.port=5"])
    assert "store.mooncake.port=5" in msg and "master_address" in msg
    assert "section.key=value" in error_of(None, ["training.lr"])


def test_wrong_types_name_key_value_expected_and_line(tmp_path):
    path = write(tmp_path, BASE_YAML.replace("  batch_size: 8\n", "  batch_size: eight\n"))
    msg = error_of(path, [])
    assert f"{path}:7" in msg and "training.batch_size" in msg and "'eight'" in msg and "integer" in msg
    msg = error_of(write(tmp_path, BASE_YAML + "eval:\n  enabled: 1\n"), [])
    assert ":11" in msg and "eval.enabled" in msg and "true/false" in msg
    msg = error_of(write(tmp_path, BASE_YAML), ["training.max_seq_length=1.5"])
    assert "training.max_seq_length" in msg and "1.5" in msg
    msg = error_of(write(tmp_path, BASE_YAML), ["model.aux_layers=[1, x, 3]"])
    assert "model.aux_layers" in msg and "list of an integer" in msg
    msg = error_of(write(tmp_path, BASE_YAML), ["training=3"])
    assert "'training' is a section" in msg


@pytest.mark.parametrize(
    "override,key,choices",
    [
        ("training.precision=fp16", "training.precision", "'auto', 'fp32', 'bf16'"),
        ("training.attention_backend=flash", "training.attention_backend", "'auto', 'fast', 'reference', 'usp'"),
        ("inference.engine=sglang", "inference.engine", "'hf'"),
        ("training.shard_order=striped", "training.shard_order", "'contiguous', 'zigzag'"),
        ("data.on_bad_row=ignore", "data.on_bad_row", "'error', 'skip'"),
        ("store.backend=redis", "store.backend", "'ray', 'mooncake'"),
        ("model.target_dtype=fp16", "model.target_dtype", "'auto', 'fp32', 'bf16'"),
        ("training.device=tpu", "training.device", "'auto', 'cpu', 'cuda'"),
    ],
)
def test_bad_enums_list_the_valid_choices(tmp_path, override, key, choices):
    msg = error_of(write(tmp_path, BASE_YAML), [override])
    value = override.split("=")[1]
    assert key in msg and repr(value) in msg and choices in msg


def test_the_old_ring_layout_key_is_read_as_shard_order_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match=r"'training.ring_layout' is now 'training.shard_order'") as caught:
        cfg = load_config(write(tmp_path, BASE_YAML), ["training.ring_layout=zigzag"])
    assert cfg.training.shard_order == "zigzag" and len(caught) == 1 and "\n" not in str(caught[0].message)
    with pytest.warns(FutureWarning):
        msg = error_of(write(tmp_path, BASE_YAML), ["training.ring_layout=striped"])
    assert "training.shard_order" in msg and "'striped'" in msg


@pytest.mark.parametrize(
    "overrides,key,fragment",
    [
        (
            ["training.num_trainers=3", "training.sp_ulysses_size=2", "training.attention_backend=usp"],
            "training.num_trainers",
            "multiple of sp_ulysses_size*sp_ring_size",
        ),
        (
            ["training.num_trainers=2", "training.sp_ring_size=2", "training.attention_backend=fast"],
            "training.attention_backend",
            "'usp' or 'auto' when a sequence spans ranks",
        ),
        (
            ["training.attention_backend=usp"],
            "training.attention_backend",
            "'usp' needs sp_ulysses_size*sp_ring_size > 1",
        ),
        (["training.batch_size=6", "training.num_trainers=4"], "training.batch_size", "micro_batch_size*dp = 1*4"),
        (["training.batch_size=3", "training.micro_batch_size=2"], "training.batch_size", "= 2"),
        (["training.ttt_length=0"], "training.ttt_length", ">= 1"),
        (["training.lr=-1e-4"], "training.lr", ">= 0"),
        (["training.min_lr=1e-3"], "training.min_lr", "<= training.lr"),
        (["model.aux_layers=[1, 1, 2]"], "model.aux_layers", "3 distinct"),
        (["model.draft_vocab_size=0"], "model.draft_vocab_size", ">= 1"),
        (["data.max_rows=0"], "data.max_rows", ">= 1"),
    ],
)
def test_impossible_combinations(tmp_path, overrides, key, fragment):
    msg = error_of(write(tmp_path, BASE_YAML), overrides)
    assert key in msg and fragment in msg


def test_the_backend_follows_the_layout(tmp_path):
    path = write(tmp_path, BASE_YAML)
    cfg = load_config(path, ["training.num_trainers=4", "training.sp_ring_size=2", "training.batch_size=4"])
    assert (cfg.sp_size, cfg.dp_size, cfg.accumulation_steps) == (2, 2, 2)
    assert cfg.training.attention_backend == "auto" and cfg.attention_backend == "usp"
    cfg = load_config(path, ["training.attention_backend=usp", "training.num_trainers=2", "training.sp_ulysses_size=2"])
    assert cfg.attention_backend == "usp"
    assert load_config(path, ["training.attention_backend=reference"]).attention_backend == "reference"
    assert load_config(path, ["training.lr=0", "training.min_lr=0"]).training.lr == 0.0  # a frozen draft
    msg = error_of(path, ["training.num_trainers=2", "training.micro_batch_size=2", "training.batch_size=4"])
    assert "training.micro_batch_size" in msg and "1 when training.num_trainers > 1" in msg


def test_required_keys(tmp_path):
    msg = error_of(write(tmp_path, BASE_YAML.replace("output:\n  dir: out\n", "")), [])
    assert "output.dir is required" in msg
    msg = error_of(None, ["data.train_path=x", "output.dir=o"])
    assert "model.target_path is required" in msg
    cfg = load_config(None, ["data.train_path=x", "output.dir=o", "model.target_path=t"])
    assert Path(cfg.data.train_path).is_absolute()


def test_save_config_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, BASE_YAML), ["model.aux_layers=[1,2,3]", "store.mooncake.device_name=mlx5"])
    out = save_config(cfg)
    assert out == Path(cfg.output.dir) / "config.yaml"
    again = load_config(out, [])
    assert again.to_dict() == cfg.to_dict()
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_ring_mode_auto_gathers_when_the_gathered_kv_fit(tmp_path):
    from types import SimpleNamespace

    from longdraft.attention.choice import choose_ring_mode
    from longdraft.attention.ring_mode import gathered_kv_bytes

    cfg = load_config(write(tmp_path, BASE_YAML), ["training.num_trainers=2", "training.sp_ring_size=2"])
    assert cfg.training.ring_mode == "auto"
    llama_8b = SimpleNamespace(num_kv_heads=8, head_dim=128)  # the TargetSpec fields it reads
    cfg.training.max_seq_length = 131072
    # 8 KV heads x 128K positions x 128 dims, K and V, fp32 values + fp32 gradients
    assert gathered_kv_bytes(cfg.training, llama_8b) == 2 * 8 * 131072 * 128 * 8
    assert choose_ring_mode("auto", 10, 100) == "gather" and choose_ring_mode("auto", 101, 100) == "ring"
    assert choose_ring_mode("ring", 10, 100) == "ring"
    assert gathered_kv_bytes(cfg.training, llama_8b, "bf16") == 2 * 8 * 131072 * 128 * 6
    import torch

    from longdraft.train.step import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    assert "ring_mode" in error_of(write(tmp_path, BASE_YAML), ["training.ring_mode=hops"])


def test_training_longer_than_the_target_positions_is_refused_before_it_starts(tiny_target, tmp_path):
    from longdraft.errors import UserError
    from longdraft.run import run_training

    target = tiny_target(max_position_embeddings=64)
    cfg = config_from_dict(
        {
            "data": {"train_path": str(tmp_path / "unused.jsonl")},
            "model": {"target_path": str(target)},
            "training": {"max_seq_length": 65, "num_steps": 1, "device": "cpu"},
            "output": {"dir": str(tmp_path / "run"), "plot": False},
        }
    )
    with pytest.raises(
        UserError,
        match=r"training.max_seq_length = 65 is longer than the target's "
        r"max_position_embeddings = 64 .*lower it to at most 64",
    ):
        run_training(cfg)
    assert not (tmp_path / "run").exists()
