"""The vLLM engine on a tiny target: its features equal the HF engine's, and its worker writes each
SP rank exactly its own shard into a real Mooncake store."""

import json
import shutil

import pytest
import torch
import vllm  # noqa: F401  (a broken install must fail, not skip)

from longdraft.engines.base import ShardRequest
from longdraft.engines.hf import HFTargetEngine
from longdraft.engines.vllm_engine import EngineError, VLLMTargetEngine
from longdraft.errors import UserError
from longdraft.sharding.header import HEADER_KEY
from longdraft.sharding.layout import ShardLayout
from longdraft.sharding.split import split_sample
from longdraft.store.mooncake_master import MooncakeMaster
from longdraft.store.mooncake_store import MooncakeStoreOptions, MooncakeTensorStore

MiB = 1 << 20
MAX_LENGTH = 200
# Several lengths in one batch; with 32 tokens per engine step the longer ones are prefilled in chunks.
LENGTHS = [1, 5, 37, 130]
# Not the default [1, 3, 4]: the last layer's output is both an aux layer and the last hidden state's
# input, one id that vLLM captures once (the pipeline tests run the default layers).
AUX = [0, 4, 7]


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 384, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.fixture(scope="module")
def master():
    with MooncakeMaster() as m:
        yield m


@pytest.fixture(scope="module")
def lender(master):
    """The trainers' side: lends the pool its memory and reads the shards back."""
    with MooncakeTensorStore(
        MooncakeStoreOptions(master.address, global_segment_size=32 * MiB, local_buffer_size=16 * MiB)
    ) as s:
        yield s


@pytest.fixture(scope="module")
def engine(vllm_target, lender, master):
    writer = MooncakeTensorStore(
        MooncakeStoreOptions(master.address, global_segment_size=0, local_buffer_size=16 * MiB)
    )
    eng = VLLMTargetEngine(
        vllm_target, AUX, dtype="fp32", max_length=MAX_LENGTH, store=writer, max_num_batched_tokens=32
    )
    yield eng, writer
    eng.close()
    writer.close()


@pytest.fixture(scope="module")
def hf(vllm_target):
    return HFTargetEngine(vllm_target, AUX, dtype="fp32")


@pytest.mark.timeout(240)
def test_features_equal_hf_engine(engine, hf):
    eng, _ = engine
    batch = [_ids(n, seed) for seed, n in enumerate(LENGTHS)]
    got, want = eng.prefill(batch), hf.prefill(batch)
    assert eng.aux_layers == hf.aux_layers == AUX
    for g, w, n in zip(got, want, LENGTHS):
        assert g.aux_hidden.shape == w.aux_hidden.shape == (n, 3 * 64)
        assert g.last_hidden.shape == w.last_hidden.shape == (n, 64)
        assert _rel(g.aux_hidden, w.aux_hidden) < 1e-4 and _rel(g.last_hidden, w.last_hidden) < 1e-4
    # The capture numbering is right only if a neighbouring layer would be clearly different.
    assert _rel(got[-1].aux_hidden[:, 64:128], want[-1].aux_hidden[:, 128:]) > 1e-2


@pytest.mark.timeout(240)
def test_worker_writes_each_rank_its_own_shard(engine, hf, lender, master):
    eng, writer = engine
    layouts = [ShardLayout(37, 2, 1, 3), ShardLayout(130, 2, 2, 3, "zigzag")]
    requests = [ShardRequest(f"vllm_test_{i}", _ids(lay.length, 10 + i), lay) for i, lay in enumerate(layouts)]
    written = eng.prefill_to_store(requests, writer)
    want = hf.prefill([r.input_ids for r in requests])
    for req, w, feat in zip(requests, written, want):
        L = req.layout.length
        assert w.shapes == {"input_ids": (L,), "aux_hidden": (L, 192), "last_hidden": (L, 64)}
        assert w.dtypes == {"input_ids": "int64", "aux_hidden": "float32", "last_hidden": "float32"}
        full = {
            "input_ids": torch.tensor(req.input_ids),
            "aux_hidden": feat.aux_hidden,
            "last_hidden": feat.last_hidden,
        }
        expected = split_sample(full, req.layout)
        assert w.handle.num_shards == req.layout.sp_size
        for r in range(req.layout.sp_size):
            shard = lender.get_shard(w.handle, r)
            assert torch.equal(shard[HEADER_KEY], expected[r][HEADER_KEY])
            assert torch.equal(shard["input_ids"], expected[r]["input_ids"])
            assert shard["aux_hidden"].shape == (req.layout.local_length, 192)
            for name in ("aux_hidden", "last_hidden"):
                assert _rel(shard[name], expected[r][name]) < 1e-4, (req.key, r, name)
    stats = writer.stats()
    assert stats["keys_put"] == 2 + 4 and stats["bytes_put"] > 0
    assert master.key_count() == 0  # every shard was read and deleted


@pytest.mark.timeout(120)
def test_prompt_longer_than_the_engine_limit_is_refused(engine):
    eng, _ = engine
    with pytest.raises(
        ValueError, match=rf"batch index 1: {MAX_LENGTH + 1} tokens; the vLLM engine takes 1 to {MAX_LENGTH}"
    ):
        eng.prefill([[1, 2], list(range(MAX_LENGTH + 1))])


def test_training_length_beyond_the_target_positions_is_refused_before_vllm_starts(vllm_target):
    with pytest.raises(
        UserError, match=r"need a vLLM context of 601, more than the target's max_position_embeddings = 512"
    ):
        VLLMTargetEngine(vllm_target, max_length=600)


@pytest.mark.timeout(120)
def test_an_engine_that_cannot_start_names_vllms_reason(vllm_target, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(vllm_target, bad)
    config = json.loads((bad / "config.json").read_text())
    config["architectures"] = ["NoSuchForCausalLM"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match=r"vLLM could not start the target .*NoSuchForCausalLM.*not supported"):
        VLLMTargetEngine(bad, dtype="fp32", max_length=64)


@pytest.mark.timeout(120)
def test_an_engine_that_dies_fails_the_prefill_with_an_error(engine):
    """Runs last in this module: it kills the shared engine's core process."""
    import psutil

    eng, _ = engine
    cores = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(p.cmdline() + [p.name()])]
    assert cores, "no vLLM engine-core process found"
    for p in cores:
        p.kill()
    psutil.wait_procs(cores, timeout=30)
    # Either vLLM has noticed (EngineDeadError), or its client would wait forever on the request
    # and the engine's watch of its processes raises instead.
    with pytest.raises(
        EngineError,
        match=r"vLLM failed during prefill of 2 prompts: (its process .*EngineCore.* "
        r"exited|EngineDeadError)",
    ):
        eng.prefill([[1, 2, 3], [4, 5]])
    with pytest.raises(
        EngineError,
        match=r"the vLLM engine is dead \((its process .*EngineCore.*|its engine core) "
        r"exited\); start a new one",
    ):
        eng.prefill([[1, 2, 3]])
