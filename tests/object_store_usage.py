"""What the local Ray object store holds, to see that shards are freed. Uses a Ray-private API, so
it lives with the tests, not in the package."""

from __future__ import annotations


def local_object_store_usage() -> tuple[int, int]:
    """(objects, bytes) held by the local node's object store. Ray frees dropped objects
    asynchronously (about a second)."""
    import ray
    from ray._private import internal_api

    # the connected cluster's address: autodetection would trip over other Ray instances on the host
    state = internal_api.get_state_from_address(ray.get_runtime_context().gcs_address)
    stats = internal_api.get_memory_info_reply(state).store_stats
    return int(stats.num_local_objects), int(stats.object_store_bytes_used)
