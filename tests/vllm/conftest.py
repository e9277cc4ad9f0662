"""A tiny target vLLM's CPU attention accepts (head_dim 32; it refuses 8), built once per session."""

import pytest


@pytest.fixture(scope="session")
def vllm_target(tmp_path_factory):
    from longdraft.testing.tiny_target import build_tiny_target

    return build_tiny_target(
        tmp_path_factory.mktemp("vllm_target"),
        hidden_size=64,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=128,
        max_position_embeddings=512,
        initializer_range=0.3,
        seed=2,
    )
