"""What travels between the producer and the capture connector (``engines/vllm_capture.py``): each
request's `CapturePlan` and the spool files named after its prefix. Plain Python: the producer side
reads it without importing vLLM."""

from __future__ import annotations

from dataclasses import dataclass

PLAN_KEY = "longdraft"  # the entry of a request's kv_transfer_params that carries its capture plan


@dataclass
class CapturePlan:
    """What to do with one request's features (travels from the producer in kv_transfer_params)."""

    prefix: str  # spool path without suffix: .lock, .json, .safetensors
    key: str | None = None  # store key: write shards there (store mode); None: hand back
    layout: dict | None = None  # ShardLayout fields, for store mode

    @classmethod
    def from_params(cls, params: dict | None) -> CapturePlan | None:
        plan = (params or {}).get(PLAN_KEY)
        return cls(**plan) if plan else None

    def as_params(self) -> dict:
        return {PLAN_KEY: {"prefix": self.prefix, "key": self.key, "layout": self.layout}}


def lock_path(prefix: str) -> str:
    return prefix + ".lock"


def status_path(prefix: str) -> str:
    return prefix + ".json"


def features_path(prefix: str) -> str:
    return prefix + ".safetensors"
