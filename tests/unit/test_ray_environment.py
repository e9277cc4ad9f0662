"""Ray's authentication is turned off only for the private local Ray a run starts itself."""

from longdraft.pipeline.ray_runtime import ray_environment


def test_auth_disabled_only_for_the_private_local_ray():
    assert ray_environment(None) == {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    assert "RAY_AUTH_MODE" not in ray_environment("10.0.0.1:6379")
    assert "RAY_AUTH_MODE" not in ray_environment("auto")  # Ray enables token auth here when a token exists
